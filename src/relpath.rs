//! Validation of untrusted relative paths (fileset keys, output names) before any filesystem join.
//!
//! A valid path is `.` (the single-file key) or `/`-separated components that are each non-empty,
//! not `.` and not `..`, with no NUL byte and no leading `/`. Anything else is rejected with a
//! [`PathError`] of kind `Invalid`, before it gets near `Path::join`.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::error::{Classify, Kind};

/// Longest accepted path, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// Why a relative path was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PathError {
    /// The path is empty.
    #[error("invalid path: empty")]
    Empty,
    /// The path is absolute.
    #[error("invalid path {path:?}: absolute paths are not allowed")]
    Absolute {
        /// The offending path (truncated).
        path: String,
    },
    /// The path has a `..` component.
    #[error("invalid path {path:?}: '..' components are not allowed")]
    ParentComponent {
        /// The offending path (truncated).
        path: String,
    },
    /// The path has an empty component (`a//b`, trailing `/`) or a `.` component.
    #[error("invalid path {path:?}: empty or '.' components are not allowed")]
    EmptyComponent {
        /// The offending path (truncated).
        path: String,
    },
    /// The path has a NUL byte.
    #[error("invalid path {path:?}: NUL bytes are not allowed")]
    Nul {
        /// The offending path (truncated, NUL shown escaped).
        path: String,
    },
    /// The path is longer than [`MAX_PATH_LEN`].
    #[error("invalid path: {len} bytes is longer than {MAX_PATH_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
}

impl Classify for PathError {
    fn kind(&self) -> Kind {
        Kind::Invalid
    }
}

fn excerpt(p: &str) -> String {
    p.chars().take(120).collect()
}

/// Checks that `p` is a safe relative path (see the module docs).
///
/// # Errors
/// The first rule `p` breaks.
pub fn validate(p: &str) -> Result<(), PathError> {
    if p.is_empty() {
        return Err(PathError::Empty);
    }
    if p.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong { len: p.len() });
    }
    if p.contains('\0') {
        return Err(PathError::Nul { path: excerpt(p) });
    }
    if p == "." {
        return Ok(());
    }
    if p.starts_with('/') {
        return Err(PathError::Absolute { path: excerpt(p) });
    }
    for c in p.split('/') {
        match c {
            ".." => return Err(PathError::ParentComponent { path: excerpt(p) }),
            "" | "." => return Err(PathError::EmptyComponent { path: excerpt(p) }),
            _ => {}
        }
    }
    Ok(())
}

/// Joins a validated relative path onto `base`; `.` yields `base` itself.
///
/// # Errors
/// As [`validate`].
pub fn join(base: &Path, p: &str) -> Result<PathBuf, PathError> {
    validate(p)?;
    Ok(if p == "." {
        base.to_path_buf()
    } else {
        base.join(p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = [
            ".", "a", "a/b/c", "a.txt", "..a", "a..", ".hidden", "a/.b", "x y/z",
        ];
        for p in ok {
            assert_eq!(validate(p), Ok(()), "{p:?}");
        }
        type IsExpected = fn(&PathError) -> bool;
        let cases: &[(&str, IsExpected)] = &[
            ("", |e| matches!(e, PathError::Empty)),
            ("/etc/passwd", |e| matches!(e, PathError::Absolute { .. })),
            ("..", |e| matches!(e, PathError::ParentComponent { .. })),
            ("a/../../b", |e| {
                matches!(e, PathError::ParentComponent { .. })
            }),
            ("a/..", |e| matches!(e, PathError::ParentComponent { .. })),
            ("a//b", |e| matches!(e, PathError::EmptyComponent { .. })),
            ("a/", |e| matches!(e, PathError::EmptyComponent { .. })),
            ("./a", |e| matches!(e, PathError::EmptyComponent { .. })),
            ("a/./b", |e| matches!(e, PathError::EmptyComponent { .. })),
            ("a\0b", |e| matches!(e, PathError::Nul { .. })),
        ];
        for (p, want) in cases {
            let e = validate(p).unwrap_err();
            assert!(want(&e), "{p:?} -> {e:?}");
            assert_eq!(e.kind(), Kind::Invalid);
        }
        assert!(matches!(
            validate(&"a".repeat(5000)),
            Err(PathError::TooLong { len: 5000 })
        ));
    }

    #[test]
    fn join_stays_inside() {
        let base = Path::new("/base");
        assert_eq!(join(base, ".").unwrap(), PathBuf::from("/base"));
        assert_eq!(join(base, "a/b").unwrap(), PathBuf::from("/base/a/b"));
        assert!(join(base, "/abs").is_err());
        assert!(join(base, "../x").is_err());
    }
}
