//! `reflow-agent s3 cp`: copies files and trees to and from S3 with bounded parallelism and checked digests.

use super::*;

/// Options of `s3 cp`.
#[derive(Debug, clap::Args)]
pub struct S3CpOptions {
    /// Source: a local file or directory, or `s3://bucket/key-or-prefix/`.
    pub src: String,
    /// Destination: `s3://bucket/key-or-prefix/`, or a local file or directory.
    pub dst: String,
    /// Objects (or files) in flight at once.
    #[arg(long, default_value_t = 8)]
    pub jobs: usize,
}

/// Files under `root` (or `root` itself), with their paths relative to it.
fn walk_files(root: &Path) -> Result<Vec<(String, PathBuf)>, CliError> {
    if root.is_file() {
        return Ok(vec![(String::new(), root.to_path_buf())]);
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(CliError::Output)?;
        for e in rd {
            let e = e.map_err(CliError::Output)?;
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                let rel = p
                    .strip_prefix(root)
                    .map(|r| r.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push((rel, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The SHA-256 and size of the file at `path`, hashed off the async threads.
async fn hash_file(path: PathBuf) -> Result<(Digest, u64), CliError> {
    tokio::task::spawn_blocking(move || std::fs::File::open(&path).and_then(Digest::of_reader))
        .await
        .map_err(|e| CliError::Output(io::Error::other(e)))?
        .map_err(CliError::Output)
}

/// The S3 store for `s3 cp`, configured by the SDK's standard chain.
async fn s3_store() -> Result<Arc<dyn crate::blob::BlobStore>, CliError> {
    #[cfg(feature = "s3")]
    return Ok(Arc::new(crate::blob::s3::S3Store::new(
        &crate::aws::sdk_config(&Default::default()).await,
    )));
    #[cfg(not(feature = "s3"))]
    Err(CliError::NotBuilt {
        what: "s3 cp",
        feature: "s3",
    })
}

/// Copies between local files and S3 with a progress bar: uploads carry `Content-Sha256`,
/// downloads are verified against it.
///
/// # Errors
/// Blob store, I/O and integrity errors.
pub fn run_s3_cp(opts: &S3CpOptions) -> Result<(), CliError> {
    use crate::blob::{BlobUrl, Progress};
    use futures_util::StreamExt;
    runtime()?.block_on(async {
        let store = s3_store().await?;
        let progress = Progress::default();
        let jobs = opts.jobs.max(1);
        if opts.dst.starts_with("s3://") {
            let url = BlobUrl::parse(&opts.dst)?;
            let files = walk_files(Path::new(&opts.src))?;
            let total: u64 = files
                .iter()
                .filter_map(|(_, p)| p.metadata().ok())
                .map(|m| m.len())
                .sum();
            let bar = progress_bar(total, "upload");
            let (store, url, progress, bar) = (&store, &url, &progress, &bar);
            let done: Vec<Result<(), CliError>> = futures_util::stream::iter(files)
                .map(|(rel, path)| async move {
                    let (d, _) = hash_file(path.clone()).await?;
                    let key = match (url.key.trim_end_matches('/'), rel.as_str()) {
                        (k, "") => k.to_string(),
                        ("", r) => r.to_string(),
                        (k, r) => format!("{k}/{r}"),
                    };
                    store.upload(&url.bucket, &key, &path, &d, progress).await?;
                    bar.set_position(progress.load(std::sync::atomic::Ordering::Relaxed));
                    Ok(())
                })
                .buffer_unordered(jobs)
                .collect()
                .await;
            bar.finish_and_clear();
            done.into_iter().collect::<Result<(), _>>()?;
        } else {
            // Neither side is s3://: name the destination, the likelier typo (`s3:/bucket`).
            let remote = if opts.src.starts_with("s3://") {
                &opts.src
            } else {
                &opts.dst
            };
            let url = BlobUrl::parse(remote)?;
            // The listing alone (no HEAD per object): each GET reports the Content-Sha256 that
            // the download is then verified against.
            let infos = if url.is_prefix() {
                store.list_keys(&url.bucket, &url.key).await?
            } else {
                vec![store.head(&url.bucket, &url.key).await?]
            };
            let total: u64 = infos.iter().map(|i| i.size).sum();
            let bar = progress_bar(total, "download");
            let (store, url, progress, bar) = (&store, &url, &progress, &bar);
            let dst = PathBuf::from(&opts.dst);
            let dst = &dst;
            let done: Vec<Result<(), CliError>> = futures_util::stream::iter(infos)
                .filter(|i| {
                    let keep = !i.key.ends_with('/');
                    async move { keep }
                })
                .map(|info| async move {
                    let target = if url.is_prefix() {
                        dst.join(&info.key[url.key.len()..])
                    } else {
                        dst.clone()
                    };
                    // Into a temporary file beside the target, renamed once verified: a
                    // failed or corrupt download never leaves a file under the target's name.
                    let parent = match target.parent() {
                        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                        _ => PathBuf::from("."),
                    };
                    std::fs::create_dir_all(&parent).map_err(CliError::Output)?;
                    let tmp = tempfile::Builder::new()
                        .prefix(".reflow-s3-cp.")
                        // The mode a plain create gives (0666 less the umask), not 0600.
                        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
                        .tempfile_in(&parent)
                        .map_err(CliError::Output)?;
                    let sha = store
                        .download(&url.bucket, &info, tmp.path(), progress)
                        .await?;
                    bar.set_position(progress.load(std::sync::atomic::Ordering::Relaxed));
                    if let Some(sha) = sha {
                        let info = crate::blob::BlobInfo {
                            content_sha256: Some(sha),
                            ..info
                        };
                        let (d, n) = hash_file(tmp.path().to_path_buf()).await?;
                        crate::blob::verify(&url.display(&info.key), &info, n, &d)?;
                    }
                    tmp.persist(&target)
                        .map_err(|e| CliError::Output(e.error))?;
                    Ok(())
                })
                .buffer_unordered(jobs)
                .collect()
                .await;
            bar.finish_and_clear();
            done.into_iter().collect::<Result<(), _>>()?;
        }
        Ok(())
    })
}
