//! Durable state files: the only code that writes `manifest.json`, `state.json` and `meta.json`.
//!
//! [`write_json_atomic`] serializes, writes a temp file in the same directory (`.NAME.XXXXXX.tmp`),
//! fsyncs it, renames it over the target and fsyncs the directory, so a crash leaves either the old
//! file or the new one, never a torn one. A crash before the rename leaves a temp file, which
//! [`clean_leftovers`] removes at start-up (it was never committed). [`read_json`] refuses files
//! larger than a limit before reading them.
//!
//! These functions block; async callers run them on a blocking thread.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::error::{Classify, Kind};

/// Suffix of uncommitted temp files.
pub const TMP_SUFFIX: &str = ".tmp";

/// Errors of durable state files.
#[derive(Debug, Error)]
pub enum PersistError {
    /// The value could not be serialized.
    #[error("serialize {path}")]
    Serialize {
        /// Target file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The target has no parent directory.
    #[error("{path} has no parent directory")]
    NoParent {
        /// Target file.
        path: PathBuf,
    },
    /// An I/O step failed.
    #[error("{op} {path}")]
    Io {
        /// The step: create temp, write, fsync, rename, fsync dir, open, read.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The file is larger than the caller's limit.
    #[error("{path} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The file is not valid JSON for the type.
    #[error("decode {path}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

impl PersistError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        PersistError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the file did not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, PersistError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

impl Classify for PersistError {
    fn kind(&self) -> Kind {
        match self {
            PersistError::Io { source, .. } => crate::error::io_kind(source),
            PersistError::Serialize { .. } | PersistError::NoParent { .. } => Kind::Fatal,
            PersistError::TooLarge { .. } | PersistError::Decode { .. } => Kind::Invalid,
        }
    }
}

/// fsyncs a directory, so a rename or create inside it is durable.
///
/// # Errors
/// Opening or syncing the directory.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Atomically replaces `path` with `bytes` (temp file, fsync, rename, fsync of the directory).
///
/// # Errors
/// [`PersistError::Io`] naming the step that failed; the target is then unchanged.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    let dir = replace_unsynced(path, bytes)?;
    sync_dir(dir).map_err(|e| PersistError::io("fsync dir", dir, e))
}

/// Most threads [`write_atomic_all`] fsyncs on at once.
const MAX_SYNC_THREADS: usize = 8;

/// Atomically replaces each file of `files` with its bytes: each is written to a temp file, the
/// temp files are fsynced side by side (on up to 8 threads, so the filesystem can commit them
/// together), then each is renamed onto its target and each directory is fsynced once for all.
/// When a write or fsync fails nothing is replaced; when a rename fails, the files before the
/// failing one may have been.
///
/// # Errors
/// [`PersistError::Io`] naming the step that failed.
pub fn write_atomic_all(files: &[(PathBuf, Vec<u8>)]) -> Result<(), PersistError> {
    let temps = files
        .iter()
        .map(|(path, bytes)| write_temp(path, bytes))
        .collect::<Result<Vec<_>, _>>()?;
    crate::par::map(&temps, MAX_SYNC_THREADS, |(_, tmp)| sync_temp(tmp))
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
    let mut dirs: Vec<&Path> = Vec::new();
    for ((path, _), (dir, tmp)) in files.iter().zip(temps) {
        rename_temp(tmp, path)?;
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for dir in dirs {
        sync_dir(dir).map_err(|e| PersistError::io("fsync dir", dir, e))?;
    }
    Ok(())
}

/// Writes `bytes` to a temp file beside `path`, fsyncs it and renames it onto `path`; the
/// rename is durable once the returned directory is fsynced.
fn replace_unsynced<'a>(path: &'a Path, bytes: &[u8]) -> Result<&'a Path, PersistError> {
    let (dir, tmp) = write_temp(path, bytes)?;
    sync_temp(&tmp)?;
    rename_temp(tmp, path)?;
    Ok(dir)
}

/// fsyncs a temp file of [`write_temp`]'s.
fn sync_temp(tmp: &tempfile::NamedTempFile) -> Result<(), PersistError> {
    tmp.as_file()
        .sync_all()
        .map_err(|e| PersistError::io("fsync", tmp.path(), e))
}

/// Renames a temp file of [`write_temp`]'s onto `path`.
fn rename_temp(tmp: tempfile::NamedTempFile, path: &Path) -> Result<(), PersistError> {
    tmp.persist(path)
        .map(|_| ())
        .map_err(|e| PersistError::io("rename onto", path, e.error))
}

/// Writes `bytes` to a new temp file beside `path` (not fsynced), and names `path`'s directory.
fn write_temp<'a>(
    path: &'a Path,
    bytes: &[u8],
) -> Result<(&'a Path, tempfile::NamedTempFile), PersistError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        Some(_) => Path::new("."),
        None => {
            return Err(PersistError::NoParent {
                path: path.to_path_buf(),
            });
        }
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(TMP_SUFFIX)
        .tempfile_in(dir)
        .map_err(|e| PersistError::io("create temp in", dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| PersistError::io("write", tmp.path(), e))?;
    Ok((dir, tmp))
}

/// Atomically replaces `path` with the pretty JSON of `value`; see [`write_atomic`].
///
/// # Errors
/// [`PersistError::Serialize`] or the I/O errors of [`write_atomic`].
pub fn write_json_atomic<T: Serialize + ?Sized>(
    path: &Path,
    value: &T,
) -> Result<(), PersistError> {
    write_atomic(path, &json_bytes(path, value)?)
}

/// [`write_atomic_all`] of each value as pretty JSON, the way [`write_json_atomic`] writes one.
///
/// # Errors
/// [`PersistError::Serialize`] (nothing written) or [`PersistError::Io`].
pub fn write_json_atomic_all<T: Serialize>(files: &[(PathBuf, &T)]) -> Result<(), PersistError> {
    let files = files
        .iter()
        .map(|(path, value)| Ok((path.clone(), json_bytes(path, *value)?)))
        .collect::<Result<Vec<_>, PersistError>>()?;
    write_atomic_all(&files)
}

/// `value` as pretty JSON, for the file at `path`.
///
/// # Errors
/// [`PersistError::Serialize`].
pub fn json_bytes<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<Vec<u8>, PersistError> {
    serde_json::to_vec_pretty(value).map_err(|source| PersistError::Serialize {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `path`, refusing files larger than `limit` bytes.
///
/// # Errors
/// [`PersistError::Io`] (NotExist when missing) or [`PersistError::TooLarge`].
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, PersistError> {
    let f = File::open(path).map_err(|e| PersistError::io("open", path, e))?;
    let size = f
        .metadata()
        .map_err(|e| PersistError::io("stat", path, e))?
        .len();
    if size > limit {
        return Err(PersistError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // take() guards against a file that grows after the stat.
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| PersistError::io("read", path, e))?;
    if buf.len() as u64 > limit {
        return Err(PersistError::TooLarge {
            path: path.to_path_buf(),
            size: buf.len() as u64,
            limit,
        });
    }
    Ok(buf)
}

/// Reads and decodes JSON from `path`, refusing files larger than `limit` bytes.
///
/// # Errors
/// As [`read_bounded`], or [`PersistError::Decode`].
pub fn read_json<T: DeserializeOwned>(path: &Path, limit: u64) -> Result<T, PersistError> {
    let bytes = read_bounded(path, limit)?;
    serde_json::from_slice(&bytes).map_err(|source| PersistError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

/// Whether `name` is an uncommitted temp file of [`write_atomic`].
pub fn is_leftover(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TMP_SUFFIX)
}

/// Removes uncommitted temp files that a crash left in `dir`; returns how many were removed.
/// Each removal is logged as a warning. A missing directory has none.
///
/// # Errors
/// Listing the directory or removing a file.
pub fn clean_leftovers(dir: &Path) -> io::Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_leftover(name) && entry.file_type()?.is_file() {
            tracing::warn!(path = %entry.path().display(), "Removing uncommitted temp file left by a crash.");
            fs::remove_file(entry.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Removes the `*.json` files in `dir` last written before `before`, and the temp files an
/// interrupted atomic write left (once they are an hour old, so no write in progress is
/// touched); returns how many `*.json` were removed. Only file metadata is read, so pruning a
/// large directory costs one `stat` per file. (Large directories are cleaned here, in the
/// background, rather than at open, which would make a start cost one `stat` per file ever
/// written.)
///
/// # Errors
/// Listing the directory.
pub fn prune_older(dir: &Path, before: std::time::SystemTime) -> Result<usize, PersistError> {
    let mut n = 0;
    for e in fs::read_dir(dir)
        .map_err(|source| PersistError::Io {
            op: "list",
            path: dir.to_path_buf(),
            source,
        })?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let modified = e.metadata().and_then(|m| m.modified());
        if is_leftover(&name) {
            let stale = modified.is_ok_and(|t| {
                t.elapsed()
                    .is_ok_and(|age| age > std::time::Duration::from_secs(3600))
            });
            if stale {
                let _ = fs::remove_file(e.path());
            }
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        let old = modified.is_ok_and(|t| t < before);
        if old && e.file_type().is_ok_and(|t| t.is_file()) {
            match fs::remove_file(e.path()) {
                Ok(()) => n += 1,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(PersistError::Io {
                        op: "remove",
                        path: e.path(),
                        source,
                    });
                }
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        a: u32,
        b: String,
    }

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_json_atomic(
            &p,
            &S {
                a: 1,
                b: "x".into(),
            },
        )
        .unwrap();
        write_json_atomic(
            &p,
            &S {
                a: 2,
                b: "y".into(),
            },
        )
        .unwrap();
        assert_eq!(
            read_json::<S>(&p, 1024).unwrap(),
            S {
                a: 2,
                b: "y".into()
            }
        );
        // Nothing but the target is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn many_files_written_at_once_replace_each_and_leave_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        fs::write(&a, b"old").unwrap();
        write_atomic_all(&[(a.clone(), b"1".to_vec()), (b.clone(), b"2".to_vec())]).unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"1");
        assert_eq!(fs::read(&b).unwrap(), b"2");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["a.json", "b.json"]);
        // A file whose directory is missing fails, naming the step, and replaces nothing: not
        // the files before it either, and no temp file is left.
        let err = write_atomic_all(&[
            (a.clone(), b"replaced".to_vec()),
            (dir.path().join("gone/c.json"), b"3".to_vec()),
        ]);
        assert!(err.unwrap_err().to_string().contains("create temp in"));
        assert_eq!(fs::read(&a).unwrap(), b"1");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn crash_leftovers_are_ignored_and_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("manifest.json");
        write_json_atomic(
            &p,
            &S {
                a: 1,
                b: "committed".into(),
            },
        )
        .unwrap();
        // A crash between writing the temp file and the rename leaves this behind, possibly torn.
        fs::write(
            dir.path().join(".manifest.json.AbC123.tmp"),
            b"{\"a\": 2, \"b\": \"unc",
        )
        .unwrap();
        // An unrelated file that merely looks similar is kept.
        fs::write(dir.path().join("notes.tmp"), b"keep").unwrap();
        assert_eq!(read_json::<S>(&p, 1024).unwrap().b, "committed");
        assert_eq!(clean_leftovers(dir.path()).unwrap(), 1);
        assert!(dir.path().join("notes.tmp").exists());
        assert!(!dir.path().join(".manifest.json.AbC123.tmp").exists());
        assert_eq!(clean_leftovers(&dir.path().join("missing")).unwrap(), 0);
    }

    #[test]
    fn read_limits_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.json");
        fs::write(&p, vec![b' '; 2048]).unwrap();
        let e = read_json::<S>(&p, 1024).unwrap_err();
        assert!(matches!(
            e,
            PersistError::TooLarge {
                size: 2048,
                limit: 1024,
                ..
            }
        ));
        assert_eq!(e.kind(), Kind::Invalid);
        let missing = read_json::<S>(&dir.path().join("nope.json"), 1024).unwrap_err();
        assert!(missing.is_not_found());
        assert_eq!(missing.kind(), Kind::NotExist);
        fs::write(&p, b"{\"a\": \"not a number\"}").unwrap();
        let e = read_json::<S>(&p, 1024).unwrap_err();
        assert!(matches!(e, PersistError::Decode { .. }));
        assert_eq!(e.kind(), Kind::Invalid);
    }

    #[test]
    fn failed_write_leaves_target_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gone").join("state.json");
        let e = write_json_atomic(
            &p,
            &S {
                a: 1,
                b: "x".into(),
            },
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                PersistError::Io {
                    op: "create temp in",
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
