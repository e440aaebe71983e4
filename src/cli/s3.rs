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
    use crate::blob::{BlobUrl, Progress, transfer};
    runtime()?.block_on(async {
        let store = s3_store().await?;
        let progress = Progress::default();
        let jobs = opts.jobs.max(1);
        if opts.dst.starts_with("s3://") {
            let url = BlobUrl::parse(&opts.dst)?;
            let files = walk_files(Path::new(&opts.src))?;
            let mut total = 0;
            let mut uploads = Vec::new();
            for (rel, path) in files {
                let size = path.metadata().map(|m| m.len()).ok();
                total += size.unwrap_or(0);
                uploads.push(transfer::Upload {
                    key: transfer::key_of(&url, &rel),
                    path,
                    digest: None,
                    size,
                });
            }
            let bar = progress_bar(total, "upload");
            let work = transfer::upload_all(
                store.as_ref(),
                &url.bucket,
                uploads,
                jobs,
                transfer::Existing::Replace,
                &progress,
            );
            with_bar(work, &bar, &progress).await?;
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
            let infos =
                transfer::objects(store.as_ref(), &url, transfer::Listing::KeysOnly).await?;
            let total: u64 = infos.iter().map(|i| i.size).sum();
            let bar = progress_bar(total, "download");
            let work = transfer::download_all_to(
                store.as_ref(),
                &url,
                infos,
                Path::new(&opts.dst),
                jobs,
                &progress,
            );
            with_bar(work, &bar, &progress).await?;
        }
        Ok(())
    })
}

/// Drives `work`, moving `bar` to the bytes `progress` counts as they move.
async fn with_bar<T>(
    work: impl std::future::Future<Output = T>,
    bar: &indicatif::ProgressBar,
    progress: &crate::blob::Progress,
) -> T {
    tokio::pin!(work);
    let r = loop {
        tokio::select! {
            r = &mut work => break r,
            () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                bar.set_position(progress.load(std::sync::atomic::Ordering::Relaxed));
            }
        }
    };
    bar.finish_and_clear();
    r
}
