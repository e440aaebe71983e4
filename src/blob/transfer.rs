//! Moving files between a [`BlobStore`] and this machine, in one place: listing what a URL
//! names, mapping keys to paths and back, bounded-parallel upload and download, verification
//! against size and `Content-Sha256`, and installing into a content-addressed repository.
//!
//! `s3 cp`, intern and extern execs, `load` from an `s3://` repository and a job's outputs all
//! call it; none of them talks to the store for transfers on its own.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;

use super::{BlobError, BlobInfo, BlobStore, BlobUrl, Progress, verify};
use crate::digest::Digest;
use crate::fileset::File;
use crate::repo::FileRepository;

/// Objects (or files) in flight at once unless the caller says otherwise.
pub const CONCURRENCY: usize = 8;

/// The key of `path` under `url`: a fileset path (`.` or empty for the URL's own key) joined
/// to the URL's key with one `/`.
pub fn key_of(url: &BlobUrl, path: &str) -> String {
    let prefix = url.key.trim_end_matches('/');
    match (prefix, path) {
        (p, "." | "") => p.to_string(),
        ("", r) => r.to_string(),
        (p, r) => format!("{p}/{r}"),
    }
}

/// The path of `key` relative to `url`: the rest of the key under a prefix, `.` for the URL's
/// own key, and `None` for a directory marker (`a/`) or a key outside the URL.
pub fn path_of(url: &BlobUrl, key: &str) -> Option<String> {
    if key.ends_with('/') {
        return None;
    }
    if url.is_prefix() {
        key.strip_prefix(url.key.as_str())
            .filter(|rest| !rest.is_empty())
            .map(str::to_string)
    } else {
        (key == url.key).then(|| ".".to_string())
    }
}

/// How much a listing says about each object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// With the `Content-Sha256` user metadata (a HEAD per object under a prefix).
    WithDigests,
    /// From the listing alone; a download reports the digest it is then verified against.
    KeysOnly,
}

/// The objects `url` names: every object under a prefix (directory markers and keys outside
/// it dropped) or the one key (a HEAD, so a missing key is [`BlobError::NotExist`]).
///
/// # Errors
/// The store's errors.
pub async fn objects(
    store: &dyn BlobStore,
    url: &BlobUrl,
    listing: Listing,
) -> Result<Vec<BlobInfo>, BlobError> {
    let infos = if !url.is_prefix() {
        vec![store.head(&url.bucket, &url.key).await?]
    } else if listing == Listing::WithDigests {
        store.list(&url.bucket, &url.key).await?
    } else {
        store.list_keys(&url.bucket, &url.key).await?
    };
    Ok(infos
        .into_iter()
        .filter(|i| path_of(url, &i.key).is_some())
        .collect())
}

/// One file to upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    /// The object's key.
    pub key: String,
    /// The local file.
    pub path: PathBuf,
    /// Its SHA-256, when known (otherwise the file is hashed first).
    pub digest: Option<Digest>,
    /// Its size, when known (used to skip an object already there).
    pub size: Option<u64>,
}

/// What an upload does with an object already under its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Write it again.
    Replace,
    /// Keep it when its size and `Content-Sha256` match (a content-addressed repository).
    KeepSame,
}

/// Uploads `files` to `bucket`, `jobs` at once, each with its `Content-Sha256`; stops at the
/// first failure (uploads in flight finish).
///
/// # Errors
/// The store's errors, or I/O hashing a file.
pub async fn upload_all(
    store: &dyn BlobStore,
    bucket: &str,
    files: Vec<Upload>,
    jobs: usize,
    existing: Existing,
    progress: &Progress,
) -> Result<(), BlobError> {
    let mut done = futures_util::stream::iter(files)
        .map(|f| async move {
            let digest = match f.digest {
                Some(d) => d,
                None => hash_file(&f.path).await?.0,
            };
            if existing == Existing::KeepSame
                && let Ok(i) = store.head(bucket, &f.key).await
                && Some(i.size) == f.size
                && i.content_sha256 == Some(digest)
            {
                return Ok(());
            }
            store
                .upload(bucket, &f.key, &f.path, &digest, progress)
                .await
        })
        .buffer_unordered(jobs.max(1));
    while let Some(r) = done.next().await {
        r?;
    }
    Ok(())
}

/// Uploads files of repository `repo`, each `(key, file)` to `key` of `bucket` with the
/// file's digest, as [`upload_all`] does.
///
/// # Errors
/// As [`upload_all`].
pub async fn upload_from_repo(
    store: &dyn BlobStore,
    bucket: &str,
    repo: &FileRepository,
    files: impl IntoIterator<Item = (String, File)>,
    existing: Existing,
    progress: &Progress,
) -> Result<(), BlobError> {
    let uploads = files
        .into_iter()
        .map(|(key, f)| Upload {
            key,
            path: repo.path(&f.id),
            digest: Some(f.id),
            size: Some(f.size),
        })
        .collect();
    upload_all(store, bucket, uploads, CONCURRENCY, existing, progress).await
}

/// Downloads `info` from `bucket` into repository `repo` (through a temp file in its `tmp/`,
/// installed by digest, the temp file removed) and verifies size and `Content-Sha256`. Returns
/// the installed file with its source, ETag and modification time.
///
/// # Errors
/// The store's errors, I/O, or [`BlobError::Integrity`] (the object stays installed under its
/// real digest, as Reflow does; nothing refers to it).
pub async fn fetch_into(
    store: &dyn BlobStore,
    bucket: &str,
    info: &BlobInfo,
    repo: &FileRepository,
    progress: &Progress,
) -> Result<File, BlobError> {
    let url = format!("s3://{bucket}/{}", info.key);
    let tmp_dir = repo.root().join(crate::repo::TMP_DIR);
    std::fs::create_dir_all(&tmp_dir).map_err(|source| BlobError::Io {
        op: "create",
        path: tmp_dir.clone(),
        source,
    })?;
    let tmp = tempfile::Builder::new()
        .prefix("s3-")
        .tempfile_in(&tmp_dir)
        .map_err(|source| BlobError::Io {
            op: "create",
            path: tmp_dir.clone(),
            source,
        })?
        .into_temp_path();
    store.download(bucket, info, &tmp, progress).await?;
    let (repo2, path) = (repo.clone(), tmp.to_path_buf());
    let install_err = |e: String| BlobError::Io {
        op: "install",
        path: path.clone(),
        source: std::io::Error::other(e),
    };
    let got = tokio::task::spawn_blocking({
        let path = path.clone();
        move || repo2.install(&path, &crate::repo::no_progress)
    })
    .await
    .map_err(|e| install_err(e.to_string()))?
    .map_err(|e| install_err(crate::error::chain(&e).to_string()))?;
    drop(tmp);
    verify(&url, info, got.size, &got.id)?;
    let mut f = got;
    f.source = url;
    f.etag = info.etag.clone();
    if let Some(t) = info.last_modified {
        f.last_modified = t;
    }
    Ok(f)
}

/// Downloads each of `infos` into `repo`, `jobs` at once, as [`fetch_into`] does; an object
/// for which `held` returns a file (content the caller already has) is not downloaded. Returns
/// each object's path under `url` ([`path_of`]) with its file, sources set to the objects.
///
/// # Errors
/// The first failure of [`fetch_into`], or of `held`.
pub async fn fetch_all_into<H>(
    store: &dyn BlobStore,
    url: &BlobUrl,
    infos: Vec<BlobInfo>,
    repo: &FileRepository,
    jobs: usize,
    held: H,
    progress: &Progress,
) -> Result<Vec<(String, File)>, BlobError>
where
    H: Fn(&Digest) -> Result<Option<File>, BlobError>,
{
    let held = &held;
    let mut done = futures_util::stream::iter(infos)
        .filter_map(|info| std::future::ready(path_of(url, &info.key).map(|p| (p, info))))
        .map(|(path, info)| async move {
            if let Some(d) = info.content_sha256
                && let Some(mut f) = held(&d)?
            {
                f.source = url.display(&info.key);
                f.etag = info.etag.clone();
                if let Some(t) = info.last_modified {
                    f.last_modified = t;
                }
                return Ok((path, f));
            }
            let f = fetch_into(store, &url.bucket, &info, repo, progress).await?;
            Ok((path, f))
        })
        .buffer_unordered(jobs.max(1));
    let mut out = Vec::new();
    while let Some(r) = done.next().await {
        out.push(r?);
    }
    Ok(out)
}

/// Downloads the objects of the content-addressed repository at `url` that hold `files` into
/// `repo`, `jobs` at once, each verified against its file's digest (the object's name) and
/// size. Returns one outcome per file, in no particular order.
pub async fn fetch_objects(
    store: &dyn BlobStore,
    url: &BlobUrl,
    files: Vec<File>,
    repo: &FileRepository,
    jobs: usize,
    progress: &Progress,
) -> Vec<(Digest, Result<File, BlobError>)> {
    futures_util::stream::iter(files)
        .map(|f| async move {
            let r = async {
                let key = url.object_key(&f.id);
                let info = store.head(&url.bucket, &key).await?;
                // Verified against the fileset, whatever the object's metadata says.
                let expected = BlobInfo {
                    content_sha256: Some(f.id),
                    ..info
                };
                let got = fetch_into(store, &url.bucket, &expected, repo, progress).await?;
                if got.size != f.size {
                    return Err(BlobError::Integrity {
                        url: url.display(&key),
                        detail: format!("size {} (expected) != {} (actual)", f.size, got.size),
                    });
                }
                Ok(got)
            }
            .await;
            (f.id, r)
        })
        .buffer_unordered(jobs.max(1))
        .collect()
        .await
}

/// Downloads `info` to the local file `target`, through a temporary file beside it that is
/// renamed once verified: a failed or corrupt download never leaves a file under the target's
/// name. The file gets the mode a plain create gives (0666 less the umask).
///
/// # Errors
/// The store's errors, I/O, or [`BlobError::Integrity`].
pub async fn download_to(
    store: &dyn BlobStore,
    bucket: &str,
    info: BlobInfo,
    target: &Path,
    progress: &Progress,
) -> Result<(), BlobError> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| BlobError::Io { op, path, source }
    };
    std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".reflow-s3-cp.")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(&parent)
        .map_err(io("create", &parent))?;
    let sha = store.download(bucket, &info, tmp.path(), progress).await?;
    let info = BlobInfo {
        content_sha256: sha.or(info.content_sha256),
        ..info
    };
    let shown = format!("s3://{bucket}/{}", info.key);
    if info.content_sha256.is_some() {
        let (d, n) = hash_file(tmp.path()).await?;
        verify(&shown, &info, n, &d)?;
    } else {
        // No digest to check against: the size still must match what the store said.
        let n = tmp
            .as_file()
            .metadata()
            .map_err(io("stat", tmp.path()))?
            .len();
        if n != info.size {
            return Err(BlobError::Integrity {
                url: shown,
                detail: format!("size {} (expected) != {n} (actual)", info.size),
            });
        }
    }
    tmp.persist(target)
        .map_err(|e| io("rename", target)(e.error))?;
    Ok(())
}

/// Downloads each of `infos` (objects under `url`) to `dst`, `jobs` at once: under a prefix,
/// each to its path beneath `dst`; a single key to `dst` itself.
///
/// # Errors
/// The first failure of [`download_to`].
pub async fn download_all_to(
    store: &dyn BlobStore,
    url: &BlobUrl,
    infos: Vec<BlobInfo>,
    dst: &Path,
    jobs: usize,
    progress: &Progress,
) -> Result<(), BlobError> {
    let mut done = futures_util::stream::iter(infos)
        .filter_map(|info| std::future::ready(path_of(url, &info.key).map(|p| (p, info))))
        .map(|(path, info)| async move {
            let target = if path == "." {
                dst.to_path_buf()
            } else {
                dst.join(path)
            };
            download_to(store, &url.bucket, info, &target, progress).await
        })
        .buffer_unordered(jobs.max(1));
    while let Some(r) = done.next().await {
        r?;
    }
    Ok(())
}

/// The SHA-256 and size of the file at `path`, hashed off the async threads.
///
/// # Errors
/// I/O reading the file.
pub async fn hash_file(path: &Path) -> Result<(Digest, u64), BlobError> {
    let p = path.to_path_buf();
    let r =
        tokio::task::spawn_blocking(move || std::fs::File::open(&p).and_then(Digest::of_reader))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
    r.map_err(|source| BlobError::Io {
        op: "hash",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_paths_map_both_ways() {
        let prefix = BlobUrl::parse("s3://bkt/data/").unwrap();
        let one = BlobUrl::parse("s3://bkt/data/a.txt").unwrap();
        let root = BlobUrl::parse("s3://bkt").unwrap();
        let cases: &[(&BlobUrl, &str, &str)] = &[
            (&prefix, "a.txt", "data/a.txt"),
            (&prefix, "sub/c.txt", "data/sub/c.txt"),
            (&prefix, ".", "data"),
            (&one, ".", "data/a.txt"),
            (&one, "", "data/a.txt"),
            (&root, "x/y", "x/y"),
        ];
        for (url, path, key) in cases {
            assert_eq!(key_of(url, path), *key, "{url:?} {path}");
        }
        assert_eq!(path_of(&prefix, "data/a.txt").as_deref(), Some("a.txt"));
        assert_eq!(
            path_of(&prefix, "data/sub/c.txt").as_deref(),
            Some("sub/c.txt")
        );
        assert_eq!(path_of(&prefix, "data/sub/"), None, "a directory marker");
        assert_eq!(path_of(&prefix, "data/"), None, "the prefix itself");
        assert_eq!(path_of(&prefix, "other/a.txt"), None, "outside the prefix");
        assert_eq!(path_of(&one, "data/a.txt").as_deref(), Some("."));
        assert_eq!(path_of(&one, "data/a.txt.bak"), None, "a sibling");
        assert_eq!(path_of(&root, "k").as_deref(), Some("k"));
    }
}
