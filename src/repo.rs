//! The content-addressed file repository: objects named by their SHA-256, on a real filesystem.
//!
//! Layout under the repository root (an executor's `objects/` directory):
//! ```text
//! <2 hex>/<62 hex>      an object; never changed in place
//! tmp/                  uncommitted temp files of puts and copies (removed by `clean_tmp`)
//! ```
//! Anything else under the root (e.g. `temp-load*` directories) is ignored by [`FileRepository::walk`].
//!
//! A put streams into `tmp/` while hashing, fsyncs, renames to the object path only if no object
//! is there (`renameat2(RENAME_NOREPLACE)`), then fsyncs the directory; two concurrent puts of the
//! same content both succeed and leave one object. An install from a path hashes the file, then
//! hard-links it into place, or copies it (re-hashing the copy) when the link crosses devices.
//!
//! This module blocks; async callers run it on a blocking thread.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::digest::{DIGEST_LEN, Digest, Hasher};
use crate::error::{Classify, Kind};
use crate::fileset::{File as RFile, Fileset};
use crate::par;
use crate::persist::sync_dir;

/// Name of the temp directory under the repository root.
pub const TMP_DIR: &str = "tmp";

/// Repository errors.
#[derive(Debug, Error)]
pub enum RepoError {
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// No object with this digest.
    #[error("object {digest} does not exist")]
    NotExist {
        /// The digest asked for.
        digest: Digest,
    },
    /// An object's content does not match its name.
    #[error("object {expected} has content {actual}")]
    Integrity {
        /// The object's name.
        expected: Digest,
        /// The digest of its content.
        actual: Digest,
    },
    /// A file changed while it was being installed.
    #[error("{path} changed while being installed: hashed {expected}, copied {actual}")]
    SourceChanged {
        /// The source.
        path: PathBuf,
        /// Digest when first hashed.
        expected: Digest,
        /// Digest of the copy.
        actual: Digest,
    },
    /// A path under an installed tree is not valid UTF-8, so it cannot be a fileset key.
    #[error("{path} is not valid UTF-8")]
    NonUtf8 {
        /// The path.
        path: PathBuf,
    },
    /// A symbolic link under an installed tree points outside it, or at a directory.
    #[error("symlink {path} points outside the tree or at a directory")]
    SymlinkEscape {
        /// The link.
        path: PathBuf,
    },
}

impl RepoError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        RepoError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl Classify for RepoError {
    fn kind(&self) -> Kind {
        match self {
            RepoError::Io { source, .. } => crate::error::io_kind(source),
            RepoError::NotExist { .. } => Kind::NotExist,
            RepoError::Integrity { .. } | RepoError::SourceChanged { .. } => Kind::Integrity,
            RepoError::NonUtf8 { .. } | RepoError::SymlinkEscape { .. } => Kind::Invalid,
        }
    }
}

/// Progress callback: called with a number of bytes processed.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// A progress callback that ignores progress.
pub fn no_progress(_: u64) {}

/// A content-addressed repository rooted at a directory.
#[derive(Debug, Clone)]
pub struct FileRepository {
    root: PathBuf,
    threads: usize,
}

/// Whether a hard-link error means "copy instead": across devices, or not permitted
/// (e.g. `fs.protected_hardlinks` on a file owned by someone else).
fn link_needs_copy(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::CrossesDevices || e.kind() == io::ErrorKind::PermissionDenied
}

/// What an install left to fsync: the object's directory when a link was made in it, and the
/// root when that directory was new.
#[derive(Debug, Default)]
struct Unsynced {
    dir: Option<PathBuf>,
    root: bool,
}

impl Unsynced {
    /// The directories to fsync, the object's first.
    fn dirs<'a>(&'a self, root: &'a Path) -> impl Iterator<Item = &'a Path> {
        self.dir
            .as_deref()
            .into_iter()
            .chain(self.root.then_some(root))
    }
}

impl FileRepository {
    /// Opens (creating if needed) the repository at `root`.
    ///
    /// # Errors
    /// Creating the root.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, RepoError> {
        let root = root.into();
        // `tmp/` is made when a temp file first needs it: most repositories (an exec's
        // staging, a job's alloc) only ever take links.
        fs::create_dir_all(&root).map_err(|e| RepoError::io("create", &root, e))?;
        Ok(FileRepository {
            root,
            threads: par::default_threads(),
        })
    }

    /// Opens an existing repository, e.g. a source to load from, creating nothing.
    ///
    /// # Errors
    /// [`RepoError::Io`] (NotExist) when `root` is not a directory.
    pub fn existing(root: impl Into<PathBuf>) -> Result<Self, RepoError> {
        let root = root.into();
        if !root.is_dir() {
            return Err(RepoError::io(
                "open repository",
                &root,
                io::Error::from(io::ErrorKind::NotFound),
            ));
        }
        Ok(FileRepository {
            root,
            threads: par::default_threads(),
        })
    }

    /// Sets the number of threads used by the parallel operations.
    #[must_use]
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The repository root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the object `d` lives (whether or not it exists).
    pub fn path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    /// Whether object `d` exists.
    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// The object `d` as a resolved file with its size.
    ///
    /// # Errors
    /// [`RepoError::NotExist`] when absent.
    pub fn stat(&self, d: &Digest) -> Result<RFile, RepoError> {
        match fs::metadata(self.path(d)) {
            Ok(m) => Ok(RFile::resolved(*d, m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(RepoError::NotExist { digest: *d })
            }
            Err(e) => Err(RepoError::io("stat", &self.path(d), e)),
        }
    }

    /// Opens object `d` for reading.
    ///
    /// # Errors
    /// [`RepoError::NotExist`] when absent.
    pub fn open_object(&self, d: &Digest) -> Result<File, RepoError> {
        let p = self.path(d);
        File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => RepoError::NotExist { digest: *d },
            _ => RepoError::io("open", &p, e),
        })
    }

    /// Copies object `d` into `w`; returns the number of bytes.
    ///
    /// # Errors
    /// [`RepoError::NotExist`], or a read or write error.
    pub fn get(&self, d: &Digest, w: &mut impl Write) -> Result<u64, RepoError> {
        let mut f = self.open_object(d)?;
        io::copy(&mut f, w).map_err(|e| RepoError::io("copy", &self.path(d), e))
    }

    fn temp_file(&self, prefix: &str) -> Result<tempfile::NamedTempFile, RepoError> {
        self.in_tmp(|dir| tempfile::Builder::new().prefix(prefix).tempfile_in(dir))
    }

    /// What `make` creates in the repository's temp directory, which is made when missing.
    fn in_tmp<T>(&self, make: impl Fn(&Path) -> io::Result<T>) -> Result<T, RepoError> {
        let dir = self.root.join(TMP_DIR);
        match make(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&dir).map_err(|e| RepoError::io("create", &dir, e))?;
                make(&dir)
            }
            r => r,
        }
        .map_err(|e| RepoError::io("create temp in", &dir, e))
    }

    /// Makes the object's parent directory, fsyncing the root if it was new.
    fn ensure_parent(&self, obj: &Path) -> Result<PathBuf, RepoError> {
        let (parent, created) = self.ensure_parent_unsynced(obj)?;
        if created {
            sync_dir(&self.root).map_err(|e| RepoError::io("fsync dir", &self.root, e))?;
        }
        Ok(parent)
    }

    /// Makes the object's parent directory; also says whether it was new, in which case the
    /// root needs an fsync before the object can be called durable.
    fn ensure_parent_unsynced(&self, obj: &Path) -> Result<(PathBuf, bool), RepoError> {
        let parent = obj.parent().unwrap_or(&self.root).to_path_buf();
        match fs::create_dir(&parent) {
            Ok(()) => Ok((parent, true)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok((parent, false)),
            Err(e) => Err(RepoError::io("create", &parent, e)),
        }
    }

    /// Commits a fully written and fsynced temp file as object `d`, unless it already exists.
    fn commit(&self, tmp: tempfile::NamedTempFile, d: &Digest) -> Result<(), RepoError> {
        let obj = self.path(d);
        let parent = self.ensure_parent(&obj)?;
        match tmp.persist_noclobber(&obj) {
            Ok(_) => sync_dir(&parent).map_err(|e| RepoError::io("fsync dir", &parent, e)),
            // Someone else committed the same content first; ours is dropped (and deleted).
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(RepoError::io("rename onto", &obj, e.error)),
        }
    }

    /// Streams `r` into a temp file while hashing; returns the fsynced temp file and the digest.
    fn spool(
        &self,
        prefix: &str,
        mut r: impl Read,
        progress: Progress,
    ) -> Result<(tempfile::NamedTempFile, Digest, u64), RepoError> {
        let mut tmp = self.temp_file(prefix)?;
        let mut h = Hasher::new();
        crate::digest::with_buffer(|buf| {
            loop {
                let n = match r.read(buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(RepoError::io("read source for", tmp.path(), e)),
                };
                h.update(&buf[..n]);
                tmp.write_all(&buf[..n])
                    .map_err(|e| RepoError::io("write", tmp.path(), e))?;
                progress(n as u64);
            }
        })?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| RepoError::io("fsync", tmp.path(), e))?;
        let (d, size) = h.finish();
        Ok((tmp, d, size))
    }

    /// Stores everything `r` yields as an object.
    ///
    /// # Errors
    /// Read, write, fsync or rename errors; on error nothing is committed.
    pub fn put(&self, r: impl Read) -> Result<RFile, RepoError> {
        let (tmp, d, size) = self.spool("put-", r, &no_progress)?;
        self.commit(tmp, &d)?;
        Ok(RFile::resolved(d, size))
    }

    /// Stores `bytes` as an object.
    ///
    /// # Errors
    /// As [`FileRepository::put`].
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<RFile, RepoError> {
        self.put(bytes)
    }

    /// Installs the file at `path` as an object: hash it, then hard-link it into place (copy and
    /// verify when the link crosses devices or is not permitted). Durable on return.
    ///
    /// # Errors
    /// I/O errors, or [`RepoError::SourceChanged`] when a copy does not match the first hash.
    pub fn install(&self, path: &Path, progress: Progress) -> Result<RFile, RepoError> {
        let (file, unsynced) = self.install_unsynced(path, progress)?;
        self.sync_dirs(unsynced.dirs(&self.root), 1)?;
        Ok(file)
    }

    /// Fsyncs each of `dirs`, `threads` at a time.
    fn sync_dirs<'a>(
        &self,
        dirs: impl IntoIterator<Item = &'a Path>,
        threads: usize,
    ) -> Result<(), RepoError> {
        let dirs: Vec<&Path> = dirs.into_iter().collect();
        for r in par::map(&dirs, threads, |d| {
            sync_dir(d).map_err(|e| RepoError::io("fsync dir", d, e))
        }) {
            r?;
        }
        Ok(())
    }

    /// [`FileRepository::install`] without the final directory fsyncs: returns the directories
    /// that still need one, so a caller installing many files fsyncs each directory once (and
    /// the root once, not once per object directory it made).
    fn install_unsynced(
        &self,
        path: &Path,
        progress: Progress,
    ) -> Result<(RFile, Unsynced), RepoError> {
        let f = File::open(path).map_err(|e| RepoError::io("open", path, e))?;
        let (d, size) = Digest::of_reader(f).map_err(|e| RepoError::io("read", path, e))?;
        progress(size);
        let file = RFile::resolved(d, size);
        let obj = self.path(&d);
        let mut unsynced = Unsynced::default();
        // The link first: its directory exists but for the first object there, and an object
        // already held fails it as AlreadyExists. One system call per file in the usual case.
        let mut linked = fs::hard_link(path, &obj);
        if matches!(&linked, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            unsynced.root = self.ensure_parent_unsynced(&obj)?.1;
            linked = fs::hard_link(path, &obj);
        }
        match linked {
            Ok(()) => {
                unsynced.dir = obj.parent().map(Path::to_path_buf);
                Ok((file, unsynced))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok((file, unsynced)),
            Err(e) if link_needs_copy(&e) => {
                let src = File::open(path).map_err(|e| RepoError::io("open", path, e))?;
                let (tmp, copied, _) = self.spool("copy-", src, &no_progress)?;
                if copied != d {
                    return Err(RepoError::SourceChanged {
                        path: path.to_path_buf(),
                        expected: d,
                        actual: copied,
                    });
                }
                self.commit(tmp, &d)?;
                Ok((file, unsynced))
            }
            Err(e) => Err(RepoError::io("hard link to", &obj, e)),
        }
    }

    /// Installs every regular file under `root` in parallel and returns the fileset of their
    /// paths relative to `root` (a regular file at `root` itself is key `.`; a missing `root` is
    /// an empty fileset). Symbolic links are followed only to regular files inside `root`.
    /// With `replace`, each original is then replaced by a symlink whose target text is its
    /// digest, as Reflow does.
    ///
    /// # Errors
    /// The first failure (all files are attempted).
    pub fn install_tree(
        &self,
        root: &Path,
        replace: bool,
        progress: Progress,
    ) -> Result<Fileset, RepoError> {
        // With `replace`, a digest symlink to an object of this repository is a file an earlier
        // install already replaced (one a crash interrupted before its result was recorded):
        // it counts as that object, so installing again is idempotent.
        let done = |p: &Path| {
            if replace {
                self.installed_link(p)
            } else {
                None
            }
        };
        let entries = match walk_tree(root, &|p| done(p).is_some())? {
            Some(e) => e,
            None => return Ok(Fileset::default()),
        };
        let results = par::map(&entries, self.threads, |(_, p)| match done(p) {
            Some(file) => Ok((file, Unsynced::default())),
            None => self.install_unsynced(p, progress),
        });
        let mut fs = Fileset::default();
        let mut dirs = std::collections::BTreeSet::new();
        let mut root = false;
        for ((key, _), r) in entries.iter().zip(results) {
            let (file, unsynced) = r?;
            fs.map.insert(key.clone(), file);
            root |= unsynced.root;
            dirs.extend(unsynced.dir);
        }
        // One fsync per object directory (at most 256), not one per file, and the root once.
        // (Syncing directories from a helper thread while the files are hashed was slower: each
        // fsync of a directory still being linked into forces a journal commit of its own.)
        self.sync_dirs(dirs.iter().map(PathBuf::as_path), self.threads)?;
        if root {
            self.sync_dirs([self.root.as_path()], 1)?;
        }
        if replace {
            for (key, p) in &entries {
                let d = fs.map[key].id;
                if done(p).is_some() {
                    continue;
                }
                self.replace_with_link(p, &d)?;
            }
        }
        Ok(fs)
    }

    /// Replaces the file at `p` by a symlink whose target text is digest `d`, in one rename: a
    /// crash leaves the file or the link, never neither. An install resumed after it reads the
    /// link as its object (see [`FileRepository::installed_link`]), where a missing file would
    /// read as no output at all. The link is made in the repository's temp directory; where a
    /// rename cannot reach `p` (another filesystem), the file is removed first.
    fn replace_with_link(&self, p: &Path, d: &Digest) -> Result<(), RepoError> {
        let target = d.to_string();
        let link = self.in_tmp(|dir| {
            tempfile::Builder::new()
                .prefix("link-")
                .make_in(dir, |tmp| std::os::unix::fs::symlink(&target, tmp))
        })?;
        match link.persist(p) {
            Ok(()) => Ok(()),
            Err(e) if link_needs_copy(&e.error) => {
                drop(e); // (removes the temp link)
                fs::remove_file(p).map_err(|e| RepoError::io("remove", p, e))?;
                std::os::unix::fs::symlink(&target, p).map_err(|e| RepoError::io("symlink", p, e))
            }
            Err(e) => Err(RepoError::io("rename over", p, e.error)),
        }
    }

    /// The object a digest symlink at `p` (as [`FileRepository::install_tree`] leaves with
    /// `replace`) names, when `p` is such a link and this repository holds the object.
    fn installed_link(&self, p: &Path) -> Option<RFile> {
        let meta = fs::symlink_metadata(p).ok()?;
        if !meta.file_type().is_symlink() {
            return None;
        }
        let d = Digest::parse(fs::read_link(p).ok()?.to_str()?).ok()?;
        let obj = fs::metadata(self.path(&d))
            .ok()
            .filter(fs::Metadata::is_file)?;
        Some(RFile::resolved(d, obj.len()))
    }

    /// Links the file at `src`, whose digest is already known to be `d` (e.g. an object of
    /// another repository), into place as object `d`; copies across devices. Not re-hashed.
    ///
    /// # Errors
    /// I/O errors.
    pub fn link_in(&self, src: &Path, d: &Digest) -> Result<(), RepoError> {
        let obj = self.path(d);
        let parent = self.ensure_parent(&obj)?;
        match fs::hard_link(src, &obj) {
            Ok(()) => sync_dir(&parent).map_err(|e| RepoError::io("fsync dir", &parent, e)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) if link_needs_copy(&e) => {
                let f = File::open(src).map_err(|e| RepoError::io("open", src, e))?;
                let (tmp, copied, _) = self.spool("copy-", f, &no_progress)?;
                if copied != *d {
                    return Err(RepoError::SourceChanged {
                        path: src.to_path_buf(),
                        expected: *d,
                        actual: copied,
                    });
                }
                self.commit(tmp, d)
            }
            Err(e) => Err(RepoError::io("hard link to", &obj, e)),
        }
    }

    /// Materializes object `d` at `dst` (a hard link, or a copy across devices), creating parent
    /// directories. An existing `dst` is an error.
    ///
    /// # Errors
    /// [`RepoError::NotExist`] or I/O errors.
    pub fn link_out(&self, d: &Digest, dst: &Path) -> Result<(), RepoError> {
        let obj = self.path(d);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(|e| RepoError::io("create", parent, e))?;
        }
        match fs::hard_link(&obj, dst) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !obj.exists() => {
                Err(RepoError::NotExist { digest: *d })
            }
            Err(e) if link_needs_copy(&e) => {
                let mut src = self.open_object(d)?;
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(dst)
                    .map_err(|e| RepoError::io("create", dst, e))?;
                io::copy(&mut src, &mut out).map_err(|e| RepoError::io("copy to", dst, e))?;
                Ok(())
            }
            Err(e) => Err(RepoError::io("hard link to", dst, e)),
        }
    }

    /// Removes object `d`; returns whether it existed.
    ///
    /// # Errors
    /// I/O errors other than "not found".
    pub fn delete(&self, d: &Digest) -> Result<bool, RepoError> {
        let p = self.path(d);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(RepoError::io("remove", &p, e)),
        }
    }

    /// All objects, sorted. Temp files and anything not shaped like an object are ignored.
    ///
    /// # Errors
    /// Listing a directory.
    pub fn walk(&self) -> Result<Vec<Digest>, RepoError> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.root).map_err(|e| RepoError::io("list", &self.root, e))?;
        for top in rd {
            let top = top.map_err(|e| RepoError::io("list", &self.root, e))?;
            let name = top.file_name();
            let Some(prefix) = name.to_str() else {
                continue;
            };
            if prefix.len() != 2
                || !prefix.bytes().all(|b| b.is_ascii_hexdigit())
                || !top.path().is_dir()
            {
                continue;
            }
            let dir = top.path();
            for obj in fs::read_dir(&dir).map_err(|e| RepoError::io("list", &dir, e))? {
                let obj = obj.map_err(|e| RepoError::io("list", &dir, e))?;
                let name = obj.file_name();
                let Some(rest) = name.to_str() else { continue };
                if rest.len() != 2 * DIGEST_LEN - 2 {
                    continue;
                }
                if let Ok(d) = Digest::parse(&format!("{prefix}{rest}")) {
                    out.push(d);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Re-hashes object `d` and checks it against its name.
    ///
    /// # Errors
    /// [`RepoError::Integrity`] on a mismatch, [`RepoError::NotExist`] when absent.
    pub fn verify(&self, d: &Digest, progress: Progress) -> Result<(), RepoError> {
        let f = self.open_object(d)?;
        let (actual, size) =
            Digest::of_reader(f).map_err(|e| RepoError::io("read", &self.path(d), e))?;
        progress(size);
        if actual != *d {
            return Err(RepoError::Integrity {
                expected: *d,
                actual,
            });
        }
        Ok(())
    }

    /// Verifies many objects in parallel; returns the failures (empty when all are intact).
    pub fn verify_many(&self, ds: &[Digest], progress: Progress) -> Vec<RepoError> {
        par::map(ds, self.threads, |d| self.verify(d, progress))
            .into_iter()
            .filter_map(Result::err)
            .collect()
    }

    /// Removes uncommitted temp files (left by a crash); returns how many. Call only when no
    /// other writer uses the repository, i.e. when its owner starts.
    ///
    /// # Errors
    /// Listing or removing.
    pub fn clean_tmp(&self) -> Result<usize, RepoError> {
        let dir = self.root.join(TMP_DIR);
        let mut n = 0;
        let entries = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(RepoError::io("list", &dir, e)),
        };
        for e in entries {
            let e = e.map_err(|e| RepoError::io("list", &dir, e))?;
            fs::remove_file(e.path()).map_err(|err| RepoError::io("remove", &e.path(), err))?;
            n += 1;
        }
        if n > 0 {
            tracing::warn!(removed = n, dir = %dir.display(), "Removed uncommitted repository temp files left by a crash.");
        }
        Ok(n)
    }
}

/// Bytes of the regular files under `p` (links are not followed; 0 when missing).
pub fn tree_bytes(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if m.is_dir() {
        fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| tree_bytes(&e.path())).sum())
            .unwrap_or(0)
    } else if m.is_file() {
        m.len()
    } else {
        0
    }
}

/// Lists the regular files under `root` as (relative key, path); `None` when `root` is missing.
/// Paths for which `keep` holds are listed as they are, whatever they are.
fn walk_tree(
    root: &Path,
    keep: &dyn Fn(&Path) -> bool,
) -> Result<Option<Vec<(String, PathBuf)>>, RepoError> {
    if keep(root) {
        return Ok(Some(vec![(".".to_string(), root.to_path_buf())]));
    }
    let meta = match fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RepoError::io("stat", root, e)),
    };
    if meta.is_file() {
        return Ok(Some(vec![(".".to_string(), root.to_path_buf())]));
    }
    let canon_root = fs::canonicalize(root).map_err(|e| RepoError::io("resolve", root, e))?;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| RepoError::io("list", &dir, e))? {
            let entry = entry.map_err(|e| RepoError::io("list", &dir, e))?;
            let path = entry.path();
            let ft = entry
                .file_type()
                .map_err(|e| RepoError::io("stat", &path, e))?;
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            if ft.is_symlink() && keep(&path) {
                // Accepted as it is (see the caller).
            } else if ft.is_symlink() {
                let target =
                    fs::canonicalize(&path).map_err(|e| RepoError::io("resolve", &path, e))?;
                if !target.starts_with(&canon_root) || !target.is_file() {
                    return Err(RepoError::SymlinkEscape { path });
                }
            } else if !ft.is_file() {
                continue; // sockets, fifos, devices: not data
            }
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let key = rel
                .to_str()
                .ok_or_else(|| RepoError::NonUtf8 { path: path.clone() })?;
            out.push((key.to_string(), path.clone()));
        }
    }
    out.sort();
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> (tempfile::TempDir, FileRepository) {
        let dir = tempfile::tempdir().unwrap();
        let r = FileRepository::open(dir.path().join("objects")).unwrap();
        (dir, r)
    }

    #[test]
    fn put_get_stat_delete_walk() {
        let (_d, r) = repo();
        let f = r.put_bytes(b"foobar\n").unwrap();
        assert_eq!(
            f.id.hex(),
            "aec070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f"
        );
        assert_eq!(f.size, 7);
        let p = r.path(&f.id);
        assert!(p.ends_with("ae/c070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f"));
        assert_eq!(r.stat(&f.id).unwrap(), f);
        let mut out = Vec::new();
        assert_eq!(r.get(&f.id, &mut out).unwrap(), 7);
        assert_eq!(out, b"foobar\n");
        // Idempotent put; the walk ignores tmp/ and foreign entries.
        r.put_bytes(b"foobar\n").unwrap();
        fs::create_dir_all(r.root().join(TMP_DIR)).unwrap();
        fs::write(r.root().join(TMP_DIR).join("put-leftover"), b"junk").unwrap();
        fs::create_dir_all(r.root().join("temp-load123")).unwrap();
        fs::write(r.root().join("ae").join("short"), b"junk").unwrap();
        assert_eq!(r.walk().unwrap(), vec![f.id]);
        assert!(r.delete(&f.id).unwrap());
        assert!(!r.delete(&f.id).unwrap());
        let e = r.stat(&f.id).unwrap_err();
        assert!(matches!(e, RepoError::NotExist { .. }));
        assert_eq!(e.kind(), Kind::NotExist);
        assert_eq!(r.clean_tmp().unwrap(), 1);
    }

    #[test]
    fn install_links_and_tree() {
        let (d, r) = repo();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("x"), b"x").unwrap();
        fs::write(src.join("a/b/y"), b"foobar\n").unwrap();
        fs::write(src.join("a/dup"), b"x").unwrap();
        std::os::unix::fs::symlink("../x", src.join("a/inside")).unwrap();
        let fs_ = r.install_tree(&src, false, &no_progress).unwrap();
        assert_eq!(
            fs_.map.keys().collect::<Vec<_>>(),
            vec!["a/b/y", "a/dup", "a/inside", "x"]
        );
        assert_eq!(fs_.map["x"].id, Digest::of(b"x"));
        assert_eq!(r.walk().unwrap().len(), 2);
        // Same filesystem: the object is a hard link of the source.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(src.join("a/b/y")).unwrap().ino(),
            fs::metadata(r.path(&Digest::of(b"foobar\n")))
                .unwrap()
                .ino()
        );
        // A single file is key "."; a missing root is empty.
        assert_eq!(
            r.install_tree(&src.join("x"), false, &no_progress)
                .unwrap()
                .file()
                .unwrap()
                .id,
            Digest::of(b"x")
        );
        assert!(
            r.install_tree(&d.path().join("missing"), false, &no_progress)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn install_replace_leaves_digest_symlinks() {
        let (d, r) = repo();
        let out = d.path().join("return");
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("o"), b"foobar\n").unwrap();
        let fs_ = r.install_tree(&out, true, &no_progress).unwrap();
        let target = fs::read_link(out.join("o")).unwrap();
        assert_eq!(target.to_str().unwrap(), fs_.map["o"].id.to_string());
        assert!(r.verify(&fs_.map["o"].id, &no_progress).is_ok());
    }

    /// A crash between an install with `replace` and the recording of its result leaves digest
    /// symlinks; installing again must give the same fileset, not an empty one.
    #[test]
    fn install_replace_again_is_idempotent() {
        let (d, r) = repo();
        let out = d.path().join("return");
        fs::create_dir_all(out.join("sub")).unwrap();
        fs::write(out.join("o"), b"foobar\n").unwrap();
        fs::write(out.join("sub/p"), b"other").unwrap();
        let first = r.install_tree(&out, true, &no_progress).unwrap();
        let again = r.install_tree(&out, true, &no_progress).unwrap();
        assert_eq!(again, first);
        assert_eq!(again.map.len(), 2);
        // A single output file at the root, as `return/default` is.
        let single = d.path().join("default");
        fs::write(&single, b"single").unwrap();
        let first = r.install_tree(&single, true, &no_progress).unwrap();
        assert_eq!(r.install_tree(&single, true, &no_progress).unwrap(), first);
        assert_eq!(first.map["."].size, 6);
        // Each link was renamed into place from the temp directory, which is left empty.
        assert!(
            fs::symlink_metadata(&single)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_dir(r.root().join(TMP_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn digest_link_without_its_object_is_an_escape() {
        let (d, r) = repo();
        let out = d.path().join("return");
        fs::create_dir_all(&out).unwrap();
        let absent = Digest::of(b"not in the repository");
        std::os::unix::fs::symlink(absent.to_string(), out.join("o")).unwrap();
        let e = r.install_tree(&out, true, &no_progress).unwrap_err();
        assert!(
            matches!(e, RepoError::SymlinkEscape { .. } | RepoError::Io { .. }),
            "{e:?}"
        );
    }

    #[test]
    fn symlink_escape_is_rejected() {
        let (d, r) = repo();
        let out = d.path().join("return");
        fs::create_dir_all(&out).unwrap();
        fs::write(d.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), out.join("leak")).unwrap();
        let e = r.install_tree(&out, false, &no_progress).unwrap_err();
        assert!(matches!(e, RepoError::SymlinkEscape { .. }), "{e:?}");
        assert_eq!(e.kind(), Kind::Invalid);
    }

    #[test]
    fn verify_detects_corruption() {
        let (_d, r) = repo();
        let good = r.put_bytes(b"good").unwrap();
        let bad = r.put_bytes(b"soon corrupted").unwrap();
        fs::write(r.path(&bad.id), b"flipped bits").unwrap();
        let errs = r.verify_many(&r.walk().unwrap(), &no_progress);
        assert_eq!(errs.len(), 1);
        match &errs[0] {
            RepoError::Integrity { expected, actual } => {
                assert_eq!(*expected, bad.id);
                assert_eq!(*actual, Digest::of(b"flipped bits"));
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(errs[0].kind(), Kind::Integrity);
        assert!(r.verify(&good.id, &no_progress).is_ok());
    }

    #[test]
    fn concurrent_identical_puts() {
        let (_d, r) = repo();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let results = par::map(&(0..16).collect::<Vec<_>>(), 16, |_| {
            r.put_bytes(&data).unwrap()
        });
        assert!(results.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(r.walk().unwrap(), vec![Digest::of(&data)]);
        assert!(r.verify(&Digest::of(&data), &no_progress).is_ok());
        assert_eq!(fs::read_dir(r.root().join(TMP_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn link_out_materializes() {
        let (d, r) = repo();
        let f = r.put_bytes(b"in").unwrap();
        let dst = d.path().join("arg/0/0/nested/file");
        r.link_out(&f.id, &dst).unwrap();
        assert_eq!(fs::read(&dst).unwrap(), b"in");
        assert!(r.link_out(&f.id, &dst).is_err(), "existing destination");
        let e = r
            .link_out(&Digest::of(b"absent"), &d.path().join("z"))
            .unwrap_err();
        assert!(matches!(e, RepoError::NotExist { .. }), "{e:?}");
    }
}
