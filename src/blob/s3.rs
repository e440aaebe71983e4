//! The S3 blob store (aws-sdk-s3). Endpoint, region and credentials come from the SDK's standard
//! chain and `[aws]`; `force_path_style` addresses buckets by path, as S3-compatible services and
//! emulators need.
//!
//! - Downloads larger than one part are split into `PART` ranges fetched `CONCURRENCY` at a time,
//!   each conditional on the object's ETag (`If-Match`), written at its offset; a range that
//!   fails transiently is fetched again (up to `ATTEMPTS` times).
//! - Uploads larger than one part are multipart, `CONCURRENCY` parts at a time; each part's body
//!   is re-opened from the file on every attempt, so a retry never reads a consumed stream. A
//!   failed multipart upload is aborted.
//! - Every upload carries the user metadata `Content-Sha256`, and every request body its CRC32
//!   (`x-amz-checksum-crc32`, computed from the file before the request): S3 rejects a body that
//!   arrived damaged (the request is retried), and a multipart object's checksum is the
//!   COMPOSITE of its parts' CRC32s.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart};
use futures_util::StreamExt;

use super::{BlobError, BlobInfo, BlobStore, Progress};
use crate::digest::Digest;

/// Part size of ranged downloads and multipart uploads (grown so there are at most 10,000).
pub const PART: u64 = 16 << 20;
/// Parts in flight per transfer.
pub const CONCURRENCY: usize = 8;
/// Attempts per part.
pub const ATTEMPTS: u32 = 3;
/// The user metadata key (S3 lowercases it; `x-amz-meta-content-sha256` on the wire).
pub const META_SHA256: &str = "content-sha256";

fn part_size(size: u64) -> u64 {
    PART.max(size.div_ceil(10_000))
}

/// Maps an SDK error to the seed's kinds.
fn map<E, R>(op: &'static str, url: String) -> impl FnOnce(SdkError<E, R>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    move |e| {
        let status = match &e {
            SdkError::ServiceError(s) => Some(raw_status(s.raw())),
            _ => None,
        };
        let code = e.code().unwrap_or_default().to_string();
        match (status, code.as_str()) {
            (Some(404), _) | (_, "NoSuchKey" | "NoSuchBucket" | "NotFound") => {
                BlobError::NotExist { op, url }
            }
            (Some(403), _) | (_, "AccessDenied") => BlobError::NotAllowed { op, url },
            (Some(412), _) | (_, "PreconditionFailed") => BlobError::Changed { op, url },
            _ => BlobError::Unavailable {
                op,
                url,
                message: aws_sdk_s3::error::DisplayErrorContext(&e)
                    .to_string()
                    .chars()
                    .take(500)
                    .collect(),
            },
        }
    }
}

fn raw_status<R: std::fmt::Debug>(r: &R) -> u16 {
    // The raw response type differs between operations; its Debug form names the status.
    let text = format!("{r:?}");
    text.split("status: StatusCode(")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// S3 through the official SDK.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
}

impl S3Store {
    /// A store from an SDK configuration (path-style addressing).
    pub fn new(sdk: &aws_config::SdkConfig) -> S3Store {
        // The SDK's own CRC checksums are computed only where S3 requires them: every object
        // carries its SHA-256 (Content-Sha256), which every reader here verifies end to end, and
        // a second per-byte checksum (sent as aws-chunked trailers) costs CPU on both sides.
        let conf = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .interceptor(crate::aws::CountRequests)
            .build();
        S3Store {
            client: Client::from_conf(conf),
        }
    }

    /// The SDK client (tests create buckets with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn get_range(
        &self,
        bucket: &str,
        info: &BlobInfo,
        range: Option<(u64, u64)>,
        file: &std::fs::File,
        progress: &Progress,
    ) -> Result<Option<Digest>, BlobError> {
        let url = format!("s3://{bucket}/{}", info.key);
        let mut req = self
            .client
            .get_object()
            .bucket(bucket)
            .key(&info.key)
            .if_match(&info.etag);
        if let Some((start, end)) = range {
            req = req.range(format!("bytes={start}-{}", end - 1));
        }
        let out = req.send().await.map_err(map("download", url.clone()))?;
        let sha = out
            .metadata
            .as_ref()
            .and_then(|m| m.get(META_SHA256))
            .and_then(|v| Digest::parse(v).ok());
        let mut offset = range.map_or(0, |r| r.0);
        let mut body = out.body;
        while let Some(chunk) = body.try_next().await.map_err(|e| BlobError::Unavailable {
            op: "download",
            url: url.clone(),
            message: e.to_string(),
        })? {
            file.write_all_at(&chunk, offset)
                .map_err(|source| BlobError::Io {
                    op: "write",
                    path: Default::default(),
                    source,
                })?;
            offset += chunk.len() as u64;
            progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let want = range.map_or(info.size, |r| r.1);
        if offset != want {
            return Err(BlobError::Unavailable {
                op: "download",
                url,
                message: format!("short read: {offset} of {want} bytes"),
            });
        }
        Ok(sha)
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        src: &Path,
        (n, start, len): (i32, u64, u64),
    ) -> Result<CompletedPart, BlobError> {
        let url = format!("s3://{bucket}/{key}");
        let crc = file_crc32(src, start, len).await?;
        let mut last = None;
        for attempt in 1..=ATTEMPTS {
            // A fresh body from the file on every attempt.
            let body = file_body(src, start, len).await?;
            match self
                .client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(n)
                .content_length(i64::try_from(len).unwrap_or(i64::MAX))
                .checksum_crc32(&crc)
                .body(body)
                .send()
                .await
            {
                Ok(out) => {
                    return Ok(CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(out.e_tag)
                        .checksum_crc32(crc)
                        .build());
                }
                Err(e) => {
                    let e = map("upload part", url.clone())(e);
                    tracing::debug!(part = n, attempt, error = %crate::error::chain(&e), "Upload part failed.");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(BlobError::Unavailable {
            op: "upload part",
            url,
            message: "no attempt".into(),
        }))
    }
}

/// The base64 CRC32 of `len` bytes of `src` from `offset` (the `x-amz-checksum-crc32` value).
async fn file_crc32(src: &Path, offset: u64, len: u64) -> Result<String, BlobError> {
    let path = src.to_path_buf();
    let crc = tokio::task::spawn_blocking(move || -> std::io::Result<u32> {
        let file = std::fs::File::open(&path)?;
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; (1 << 20).min(usize::try_from(len).unwrap_or(usize::MAX))];
        let mut at = offset;
        while at < offset + len {
            let want = usize::try_from(offset + len - at)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = file.read_at(&mut buf[..want], at)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        Ok(hasher.finalize())
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r)
    .map_err(|source| BlobError::Io {
        op: "read",
        path: src.to_path_buf(),
        source,
    })?;
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes()))
}

/// A request body reading `len` bytes of `src` from `offset`, opened anew for each call.
async fn file_body(src: &Path, offset: u64, len: u64) -> Result<ByteStream, BlobError> {
    ByteStream::read_from()
        .path(src)
        .offset(offset)
        .length(Length::Exact(len))
        // The default reads 4 KiB at a time, which bounds uploads by syscalls and tiny frames.
        .buffer_size(1 << 20)
        .build()
        .await
        .map_err(|e| BlobError::Io {
            op: "read",
            path: src.to_path_buf(),
            source: std::io::Error::other(e),
        })
}

fn info_from(
    key: &str,
    size: Option<i64>,
    etag: Option<&str>,
    modified: Option<&aws_sdk_s3::primitives::DateTime>,
    meta: Option<&std::collections::HashMap<String, String>>,
) -> BlobInfo {
    BlobInfo {
        key: key.to_string(),
        size: size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
        etag: etag.unwrap_or_default().to_string(),
        last_modified: modified
            .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
        content_sha256: meta
            .and_then(|m| m.get(META_SHA256))
            .and_then(|v| Digest::parse(v).ok()),
    }
}

#[async_trait]
impl BlobStore for S3Store {
    async fn head(&self, bucket: &str, key: &str) -> Result<BlobInfo, BlobError> {
        let out = self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(map("head", format!("s3://{bucket}/{key}")))?;
        Ok(info_from(
            key,
            out.content_length,
            out.e_tag.as_deref(),
            out.last_modified.as_ref(),
            out.metadata.as_ref(),
        ))
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<BlobInfo>, BlobError> {
        let keys: Vec<String> = self
            .list_keys(bucket, prefix)
            .await?
            .into_iter()
            .map(|i| i.key)
            .collect();
        // Listings carry no user metadata; each object's comes from a HEAD, a few at a time.
        let heads: Vec<Result<BlobInfo, BlobError>> = futures_util::stream::iter(keys)
            .map(|k| async move { self.head(bucket, &k).await })
            .buffered(16)
            .collect()
            .await;
        heads.into_iter().collect()
    }

    async fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<BlobInfo>, BlobError> {
        let url = format!("s3://{bucket}/{prefix}");
        let mut infos = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(map("list", url.clone()))?;
            infos.extend(
                page.contents
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|o| {
                        let key = o.key?;
                        Some(info_from(
                            &key,
                            o.size,
                            o.e_tag.as_deref(),
                            o.last_modified.as_ref(),
                            None,
                        ))
                    }),
            );
        }
        Ok(infos)
    }

    async fn download(
        &self,
        bucket: &str,
        info: &BlobInfo,
        dst: &Path,
        progress: &Progress,
    ) -> Result<Option<Digest>, BlobError> {
        let file = std::fs::File::create(dst).map_err(|source| BlobError::Io {
            op: "create",
            path: dst.to_path_buf(),
            source,
        })?;
        let part = part_size(info.size);
        let ranges: Vec<Option<(u64, u64)>> = if info.size <= part {
            vec![None]
        } else {
            (0..info.size)
                .step_by(usize::try_from(part).unwrap_or(usize::MAX))
                .map(|s| Some((s, (s + part).min(info.size))))
                .collect()
        };
        let file = &file;
        let results: Vec<Result<Option<Digest>, BlobError>> = futures_util::stream::iter(ranges)
            .map(|r| async move {
                let mut attempt = 1;
                loop {
                    match self.get_range(bucket, info, r, file, progress).await {
                        Err(BlobError::Unavailable { .. }) if attempt < ATTEMPTS => attempt += 1,
                        other => return other,
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let shas = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        file.sync_all().map_err(|source| BlobError::Io {
            op: "fsync",
            path: dst.to_path_buf(),
            source,
        })?;
        Ok(shas.into_iter().flatten().next())
    }

    async fn upload(
        &self,
        bucket: &str,
        key: &str,
        src: &Path,
        sha256: &Digest,
        progress: &Progress,
    ) -> Result<(), BlobError> {
        let url = format!("s3://{bucket}/{key}");
        let size = std::fs::metadata(src)
            .map_err(|source| BlobError::Io {
                op: "stat",
                path: src.to_path_buf(),
                source,
            })?
            .len();
        let part = part_size(size);
        if size <= part {
            let crc = file_crc32(src, 0, size).await?;
            let mut last = None;
            for _ in 0..ATTEMPTS {
                let body = file_body(src, 0, size).await?;
                match self
                    .client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .content_length(i64::try_from(size).unwrap_or(i64::MAX))
                    .metadata(META_SHA256, sha256.hex())
                    .checksum_crc32(&crc)
                    .body(body)
                    .send()
                    .await
                {
                    Ok(_) => {
                        progress.fetch_add(size, Ordering::Relaxed);
                        return Ok(());
                    }
                    Err(e) => last = Some(map("upload", url.clone())(e)),
                }
            }
            return Err(last.unwrap_or(BlobError::Unavailable {
                op: "upload",
                url,
                message: "no attempt".into(),
            }));
        }
        let created = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .metadata(META_SHA256, sha256.hex())
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .checksum_type(ChecksumType::Composite)
            .send()
            .await
            .map_err(map("create multipart upload", url.clone()))?;
        let upload_id = created.upload_id.unwrap_or_default();
        let parts: Vec<(i32, u64, u64)> = (0..size)
            .step_by(usize::try_from(part).unwrap_or(usize::MAX))
            .enumerate()
            .map(|(i, s)| {
                (
                    i32::try_from(i + 1).unwrap_or(i32::MAX),
                    s,
                    part.min(size - s),
                )
            })
            .collect();
        let uid = upload_id.as_str();
        let done: Vec<Result<CompletedPart, BlobError>> = futures_util::stream::iter(parts)
            .map(|p| async move {
                let r = self.upload_part(bucket, key, uid, src, p).await;
                if r.is_ok() {
                    progress.fetch_add(p.2, Ordering::Relaxed);
                }
                r
            })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        let completed: Result<Vec<CompletedPart>, BlobError> = done.into_iter().collect();
        let result = match completed {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(uid)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(map("complete multipart upload", url.clone())),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(uid)
                .send()
                .await;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn crc32_of_a_file_range_is_the_s3_header_value() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"xx123456789yy").unwrap();
        // The CRC-32 check value of "123456789" is 0xCBF43926.
        assert_eq!(file_crc32(&f, 2, 9).await.unwrap(), "y/Q5Jg==");
        assert_eq!(file_crc32(&f, 0, 0).await.unwrap(), "AAAAAA==");
        assert!(matches!(
            file_crc32(&f, 10, 9).await,
            Err(BlobError::Io { op: "read", .. })
        ));
    }

    #[test]
    fn parts_stay_within_the_service_limit() {
        assert_eq!(part_size(1), PART);
        assert_eq!(part_size(PART * 10_000), PART);
        assert!(part_size(10 << 40).div_ceil(1).saturating_mul(10_000) >= 10 << 40);
    }
}

/// An [`S3Store`] made on first use from a [`crate::aws::LazySdk`], so an agent that never
/// touches S3 never loads the SDK configuration.
#[derive(Debug)]
pub struct LazyS3Store {
    sdk: std::sync::Arc<crate::aws::LazySdk>,
    store: tokio::sync::OnceCell<S3Store>,
}

impl LazyS3Store {
    /// A store that loads `sdk` when first used.
    pub fn new(sdk: std::sync::Arc<crate::aws::LazySdk>) -> Self {
        LazyS3Store {
            sdk,
            store: tokio::sync::OnceCell::new(),
        }
    }

    async fn store(&self) -> &S3Store {
        self.store
            .get_or_init(|| async { S3Store::new(self.sdk.get().await) })
            .await
    }
}

#[async_trait::async_trait]
impl BlobStore for LazyS3Store {
    async fn head(&self, bucket: &str, key: &str) -> Result<BlobInfo, BlobError> {
        self.store().await.head(bucket, key).await
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<BlobInfo>, BlobError> {
        self.store().await.list(bucket, prefix).await
    }

    async fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<BlobInfo>, BlobError> {
        self.store().await.list_keys(bucket, prefix).await
    }

    async fn download(
        &self,
        bucket: &str,
        info: &BlobInfo,
        dst: &std::path::Path,
        progress: &Progress,
    ) -> Result<Option<Digest>, BlobError> {
        self.store()
            .await
            .download(bucket, info, dst, progress)
            .await
    }

    async fn upload(
        &self,
        bucket: &str,
        key: &str,
        src: &std::path::Path,
        sha256: &Digest,
        progress: &Progress,
    ) -> Result<(), BlobError> {
        self.store()
            .await
            .upload(bucket, key, src, sha256, progress)
            .await
    }
}
