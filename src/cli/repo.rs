//! `reflow-agent repo`: offline tools over a content-addressed repository directory.

use super::*;

/// Repository subcommands.
#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Store a file (or stdin with `-`) as an object; prints the file as JSON.
    Put {
        /// The file, or `-` for stdin.
        path: PathBuf,
    },
    /// Install a file or directory tree (hard links where possible); prints the fileset as JSON.
    Ingest {
        /// The file or directory.
        path: PathBuf,
    },
    /// Re-hash objects and check them against their names (all objects when none are named).
    Verify {
        /// Digests to check.
        digests: Vec<String>,
    },
    /// List all objects.
    Ls,
    /// Write an object to stdout.
    Cat {
        /// The object's digest.
        digest: String,
    },
}

/// Runs a repository subcommand against the repository at `dir`.
///
/// # Errors
/// Repository, argument and output errors; [`CliError::VerifyFailed`] when objects are corrupt.
pub fn run_repo(dir: &Path, cmd: RepoCommand) -> Result<(), CliError> {
    let repo = FileRepository::open(dir)?;
    match cmd {
        RepoCommand::Put { path } => {
            let f = if path.as_os_str() == "-" {
                repo.put(io::stdin().lock())?
            } else {
                repo.install(&path, &|_| {})?
            };
            print_json(&f)
        }
        RepoCommand::Ingest { path } => {
            let pb = progress_bar(0, "ingest");
            // The total is one more walk of the tree: only for a bar someone sees.
            if !pb.is_hidden() {
                pb.set_length(crate::repo::tree_bytes(&path));
            }
            let fs = repo.install_tree(&path, false, &|n| pb.inc(n))?;
            pb.finish_and_clear();
            tracing::info!(files = fs.n(), bytes = fs.size(), "Ingested.");
            print_json(&fs)
        }
        RepoCommand::Verify { digests } => {
            let ds: Vec<Digest> = if digests.is_empty() {
                repo.walk()?
            } else {
                digests
                    .iter()
                    .map(|s| Digest::parse(s))
                    .collect::<Result<_, _>>()?
            };
            let pb = progress_bar(0, "verify");
            // The total is one more stat per object: only for a bar someone sees.
            if !pb.is_hidden() {
                pb.set_length(
                    par::map(&ds, par::default_threads(), |d| {
                        repo.stat(d).map(|f| f.size).unwrap_or(0)
                    })
                    .iter()
                    .sum(),
                );
            }
            let errs = repo.verify_many(&ds, &|n| pb.inc(n));
            pb.finish_and_clear();
            for e in &errs {
                tracing::error!(error = %crate::error::chain(&e), "Object failed verification.");
            }
            if errs.is_empty() {
                tracing::info!(objects = ds.len(), "All objects verified.");
                Ok(())
            } else {
                Err(CliError::VerifyFailed {
                    failed: errs.len(),
                    total: ds.len(),
                })
            }
        }
        RepoCommand::Ls => {
            let mut out = io::BufWriter::new(io::stdout().lock());
            for d in repo.walk()? {
                writeln!(out, "{d}").map_err(CliError::Output)?;
            }
            out.flush().map_err(CliError::Output)
        }
        RepoCommand::Cat { digest } => {
            let d = Digest::parse(&digest)?;
            repo.get(&d, &mut io::stdout().lock())?;
            Ok(())
        }
    }
}
