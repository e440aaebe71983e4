//! The blob store port: what the agent needs from an object store (S3) to move job data, and
//! the content-addressed repository layout on top of it.
//!
//! A repository URL `s3://bucket/prefix` holds object `d` at key `prefix/<2 hex>/<62 hex>`, the
//! same layout as a local repository directory. Every object written carries the user metadata
//! `Content-Sha256` (its digest, hex), which readers verify.

#[cfg(any(test, feature = "test-util"))]
pub mod memory;
#[cfg(feature = "s3")]
pub mod s3;
pub mod transfer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use async_trait::async_trait;
use thiserror::Error;

use crate::digest::Digest;
use crate::error::{Classify, Kind};
use crate::time::Time;

/// Blob store failures, mapped to Reflow's kinds.
#[derive(Debug, Error)]
pub enum BlobError {
    /// No such object (or bucket).
    #[error("{op} {url}: does not exist")]
    NotExist {
        /// What was being done.
        op: &'static str,
        /// The object (`s3://bucket/key`).
        url: String,
    },
    /// Access denied.
    #[error("{op} {url}: access denied")]
    NotAllowed {
        /// What was being done.
        op: &'static str,
        /// The object.
        url: String,
    },
    /// The object changed while it was read (its ETag no longer matches).
    #[error("{op} {url}: the object changed while it was read")]
    Changed {
        /// What was being done.
        op: &'static str,
        /// The object.
        url: String,
    },
    /// Content does not match its digest or size.
    #[error("{url}: integrity error: {detail}")]
    Integrity {
        /// The object.
        url: String,
        /// `digest X (expected) != Y (actual)` or the size equivalent.
        detail: String,
    },
    /// The service failed or could not be reached (after retries).
    #[error("{op} {url}: {message}")]
    Unavailable {
        /// What was being done.
        op: &'static str,
        /// The object.
        url: String,
        /// The service's or client's message.
        message: String,
    },
    /// A local file could not be read or written.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The URL is not a blob URL this agent supports.
    #[error("unsupported blob URL {url:?}: {reason} (want s3://bucket/key-or-prefix)")]
    Url {
        /// The URL (truncated).
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Classify for BlobError {
    fn kind(&self) -> Kind {
        match self {
            BlobError::NotExist { .. } => Kind::NotExist,
            BlobError::NotAllowed { .. } => Kind::NotAllowed,
            BlobError::Changed { .. } => Kind::Temporary,
            BlobError::Integrity { .. } => Kind::Integrity,
            BlobError::Io { source, .. } => crate::error::io_kind(source),
            BlobError::Unavailable { .. } => Kind::Unavailable,
            BlobError::Url { .. } => Kind::Invalid,
        }
    }
}

/// What a HEAD or a listing says about an object.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobInfo {
    /// The key.
    pub key: String,
    /// Size, bytes.
    pub size: u64,
    /// The ETag (quotes kept, as the service gives it).
    pub etag: String,
    /// Last modification.
    pub last_modified: Option<Time>,
    /// The `Content-Sha256` user metadata, when present and well formed.
    pub content_sha256: Option<Digest>,
}

/// Byte counters of transfers in progress (for progress bars and inspect gauges).
pub type Progress = Arc<AtomicU64>;

/// An object store.
#[async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// The object `key` of `bucket`, with its user metadata.
    async fn head(&self, bucket: &str, key: &str) -> Result<BlobInfo, BlobError>;
    /// Every object under `prefix`, with metadata (paginated internally; one HEAD per object
    /// for the user metadata).
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<BlobInfo>, BlobError>;
    /// Every object under `prefix`, from the listing alone: no `content_sha256` (a download
    /// reports it).
    async fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<BlobInfo>, BlobError>;
    /// Downloads `info` (ranged, concurrent, each range conditional on its ETag) into `dst`,
    /// adding transferred bytes to `progress`. Returns the `Content-Sha256` the object carries.
    async fn download(
        &self,
        bucket: &str,
        info: &BlobInfo,
        dst: &Path,
        progress: &Progress,
    ) -> Result<Option<Digest>, BlobError>;
    /// Uploads the file `src` to `key` with `Content-Sha256 = sha256` (multipart when large).
    async fn upload(
        &self,
        bucket: &str,
        key: &str,
        src: &Path,
        sha256: &Digest,
        progress: &Progress,
    ) -> Result<(), BlobError>;
}

/// A parsed `s3://bucket/key-or-prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobUrl {
    /// The bucket.
    pub bucket: String,
    /// The key or prefix (may be empty: the whole bucket).
    pub key: String,
}

impl BlobUrl {
    /// Parses `s3://bucket/key`.
    ///
    /// # Errors
    /// Another scheme, or a bucket name S3 would refuse.
    pub fn parse(url: &str) -> Result<BlobUrl, BlobError> {
        let bad = |reason| BlobError::Url {
            url: url.chars().take(200).collect(),
            reason,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("not an s3:// URL"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !ok {
            return Err(bad("a bucket name is 3 to 63 of a-z, 0-9, '.' and '-'"));
        }
        if key.len() > 1024 {
            return Err(bad("a key is at most 1024 bytes"));
        }
        Ok(BlobUrl {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    /// Whether the URL names a prefix (a "directory").
    pub fn is_prefix(&self) -> bool {
        self.key.is_empty() || self.key.ends_with('/')
    }

    /// The key of content-addressed object `d` in the repository at this URL.
    pub fn object_key(&self, d: &Digest) -> String {
        let hex = d.hex();
        let prefix = self.key.trim_end_matches('/');
        if prefix.is_empty() {
            format!("{}/{}", &hex[..2], &hex[2..])
        } else {
            format!("{prefix}/{}/{}", &hex[..2], &hex[2..])
        }
    }

    /// `s3://bucket/key` for `key`.
    pub fn display(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// The integrity check of downloaded content against what the store said (size wins).
///
/// # Errors
/// [`BlobError::Integrity`] naming the mismatch.
pub fn verify(url: &str, expected: &BlobInfo, size: u64, actual: &Digest) -> Result<(), BlobError> {
    if size != expected.size {
        return Err(BlobError::Integrity {
            url: url.to_string(),
            detail: format!("size {} (expected) != {size} (actual)", expected.size),
        });
    }
    if let Some(want) = expected.content_sha256
        && want != *actual
    {
        return Err(BlobError::Integrity {
            url: url.to_string(),
            detail: format!("digest {want} (expected) != {actual} (actual)"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_object_keys() {
        let u = BlobUrl::parse("s3://my-bucket/repo/").unwrap();
        assert!(u.is_prefix());
        let d = Digest::of(b"x");
        let hex = d.hex();
        assert_eq!(
            u.object_key(&d),
            format!("repo/{}/{}", &hex[..2], &hex[2..])
        );
        assert_eq!(
            BlobUrl::parse("s3://b-1.x").unwrap().object_key(&d),
            format!("{}/{}", &hex[..2], &hex[2..])
        );
        assert!(!BlobUrl::parse("s3://bkt/a/b.txt").unwrap().is_prefix());
        for bad in ["s3://", "s3://UPPER/x", "file:///x", "s3://ab/x"] {
            assert!(BlobUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn verification_names_size_first_then_digest() {
        let info = BlobInfo {
            key: "k".into(),
            size: 3,
            etag: "\"e\"".into(),
            last_modified: None,
            content_sha256: Some(Digest::of(b"abc")),
        };
        verify("s3://b/k", &info, 3, &Digest::of(b"abc")).unwrap();
        let e = verify("s3://b/k", &info, 4, &Digest::of(b"abcd")).unwrap_err();
        assert!(
            e.to_string().contains("size 3 (expected) != 4 (actual)"),
            "{e}"
        );
        let e = verify("s3://b/k", &info, 3, &Digest::of(b"xyz")).unwrap_err();
        assert!(e.to_string().contains("(expected) != sha256:"), "{e}");
        assert_eq!(e.kind(), Kind::Integrity);
    }
}
