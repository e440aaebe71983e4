//! An in-memory [`BlobStore`] for component tests of `s3://` jobs, with the faults a real
//! store shows: metadata that lies about the content, a key that is gone, and an object
//! replaced while it is being read (which S3's conditional ranged GETs report as
//! [`BlobError::Changed`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::{BlobError, BlobInfo, BlobStore, Progress};
use crate::digest::Digest;
use crate::par::lock;

#[derive(Debug, Clone)]
struct Object {
    data: Vec<u8>,
    etag: String,
    sha256: Option<Digest>,
}

/// Buckets of objects in memory. Every bucket exists.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<(String, String), Object>>,
    /// Contents that replace an object once its next download has begun.
    replace_on_download: Mutex<HashMap<(String, String), Vec<u8>>>,
    versions: AtomicU64,
    requests: AtomicU64,
}

fn at(bucket: &str, key: &str) -> (String, String) {
    (bucket.to_string(), key.to_string())
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Puts `data` at `key` with its true `Content-Sha256`.
    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        self.put_with_sha256(bucket, key, data, Some(Digest::of(data)));
    }

    /// Puts `data` at `key` with `sha256` as its `Content-Sha256` metadata, true or not (absent:
    /// none, as an object another tool wrote).
    pub fn put_with_sha256(&self, bucket: &str, key: &str, data: &[u8], sha256: Option<Digest>) {
        let etag = format!("\"v{}\"", self.versions.fetch_add(1, Ordering::Relaxed));
        lock(&self.objects).insert(
            at(bucket, key),
            Object {
                data: data.to_vec(),
                etag,
                sha256,
            },
        );
    }

    /// Removes `key`.
    pub fn remove(&self, bucket: &str, key: &str) {
        lock(&self.objects).remove(&at(bucket, key));
    }

    /// The content at `key`, with its `Content-Sha256` metadata.
    pub fn get(&self, bucket: &str, key: &str) -> Option<(Vec<u8>, Option<Digest>)> {
        lock(&self.objects)
            .get(&at(bucket, key))
            .map(|o| (o.data.clone(), o.sha256))
    }

    /// Every key of `bucket`, in order.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        lock(&self.objects)
            .keys()
            .filter(|(b, _)| b == bucket)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Replaces `key` with `data` (and its true digest) once its next download has begun, after
    /// the caller read its size and ETag.
    pub fn replace_during_next_download(&self, bucket: &str, key: &str, data: &[u8]) {
        lock(&self.replace_on_download).insert(at(bucket, key), data.to_vec());
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn info(&self, bucket: &str, key: &str, with_sha: bool) -> Result<BlobInfo, BlobError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let objects = lock(&self.objects);
        let o = objects
            .get(&at(bucket, key))
            .ok_or_else(|| BlobError::NotExist {
                op: "head",
                url: format!("s3://{bucket}/{key}"),
            })?;
        Ok(BlobInfo {
            key: key.to_string(),
            size: o.data.len() as u64,
            etag: o.etag.clone(),
            last_modified: None,
            content_sha256: if with_sha { o.sha256 } else { None },
        })
    }

    fn listing(&self, bucket: &str, prefix: &str, with_sha: bool) -> Vec<BlobInfo> {
        let keys: Vec<String> = self
            .keys(bucket)
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.iter()
            .filter_map(|k| self.info(bucket, k, with_sha).ok())
            .collect()
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    async fn head(&self, bucket: &str, key: &str) -> Result<BlobInfo, BlobError> {
        self.info(bucket, key, true)
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<BlobInfo>, BlobError> {
        Ok(self.listing(bucket, prefix, true))
    }

    async fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<BlobInfo>, BlobError> {
        Ok(self.listing(bucket, prefix, false))
    }

    async fn download(
        &self,
        bucket: &str,
        info: &BlobInfo,
        dst: &Path,
        progress: &Progress,
    ) -> Result<Option<Digest>, BlobError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let url = format!("s3://{bucket}/{}", info.key);
        if let Some(data) = lock(&self.replace_on_download).remove(&at(bucket, &info.key)) {
            self.put(bucket, &info.key, &data);
        }
        let o = lock(&self.objects)
            .get(&at(bucket, &info.key))
            .cloned()
            .ok_or_else(|| BlobError::NotExist {
                op: "get",
                url: url.clone(),
            })?;
        // S3Store makes each ranged GET conditional on the ETag it listed.
        if o.etag != info.etag {
            return Err(BlobError::Changed { op: "get", url });
        }
        std::fs::write(dst, &o.data).map_err(|source| BlobError::Io {
            op: "write",
            path: dst.to_path_buf(),
            source,
        })?;
        progress.fetch_add(o.data.len() as u64, Ordering::Relaxed);
        Ok(o.sha256)
    }

    async fn upload(
        &self,
        bucket: &str,
        key: &str,
        src: &Path,
        sha256: &Digest,
        progress: &Progress,
    ) -> Result<(), BlobError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let data = std::fs::read(src).map_err(|source| BlobError::Io {
            op: "read",
            path: src.to_path_buf(),
            source,
        })?;
        progress.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.put_with_sha256(bucket, key, &data, Some(*sha256));
        Ok(())
    }
}
