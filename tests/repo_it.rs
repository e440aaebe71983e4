//! Repository tests on real filesystems: install and materialize across devices (a tmpfs mount),
//! concurrent identical puts from many threads, and corruption found by verify.
//!
//! Mounting needs root; CI runs as root. Without root these tests fail loudly rather than skip,
//! because a silently skipped cross-device test proves nothing.
#![cfg(feature = "integration")]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use reflow_agent::digest::Digest;
use reflow_agent::error::{Classify, Kind};
use reflow_agent::repo::{FileRepository, RepoError, no_progress};

/// A tmpfs mounted for the life of the value.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path) -> Tmpfs {
        fs::create_dir_all(path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(st.success(), "mounting a tmpfs needs root");
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn install_across_devices_copies_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let repo = FileRepository::open(dir.path().join("objects")).unwrap();
    let mnt = Tmpfs::mount(&dir.path().join("mnt"));
    let src = mnt.path.join("tree");
    fs::create_dir_all(src.join("sub")).unwrap();
    // Several files, so a "stop after the first copy" bug (Reflow's materializer) would show.
    let contents: Vec<Vec<u8>> = (0..5u8)
        .map(|i| vec![i; 100_000 + usize::from(i)])
        .collect();
    for (i, c) in contents.iter().enumerate() {
        fs::write(src.join("sub").join(format!("f{i}")), c).unwrap();
    }
    assert_ne!(
        fs::metadata(&src).unwrap().dev(),
        fs::metadata(repo.root()).unwrap().dev()
    );

    let fileset = repo.install_tree(&src, false, &no_progress).unwrap();
    assert_eq!(fileset.n(), 5);
    for (i, c) in contents.iter().enumerate() {
        let f = &fileset.map[&format!("sub/f{i}")];
        assert_eq!(f.id, Digest::of(c));
        assert_eq!(f.size, c.len() as u64);
        let obj = repo.path(&f.id);
        // A copy, not a link: different device, and the source is untouched.
        assert_ne!(
            fs::metadata(&obj).unwrap().dev(),
            fs::metadata(src.join(format!("sub/f{i}"))).unwrap().dev()
        );
        assert_eq!(&fs::read(&obj).unwrap(), c);
        repo.verify(&f.id, &no_progress).unwrap();
    }
    assert!(
        fs::read_dir(repo.root().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "no temp files left"
    );

    // And back out across devices: every file of the set is materialized.
    for (key, f) in &fileset.map {
        let dst = mnt.path.join("out").join(key);
        repo.link_out(&f.id, &dst).unwrap();
        assert_eq!(Digest::of(&fs::read(&dst).unwrap()), f.id);
    }
}

#[test]
fn concurrent_identical_puts_from_threads_leave_one_object() {
    let dir = tempfile::tempdir().unwrap();
    let repo = FileRepository::open(dir.path().join("objects")).unwrap();
    let data: Vec<u8> = (0..8_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| repo.put_bytes(&data).unwrap()))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().id, Digest::of(&data));
        }
    });
    assert_eq!(repo.walk().unwrap(), vec![Digest::of(&data)]);
    repo.verify(&Digest::of(&data), &no_progress).unwrap();
}

#[test]
fn verify_finds_a_corrupted_object_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = FileRepository::open(dir.path().join("objects")).unwrap();
    let objs: Vec<_> = (0..20u8)
        .map(|i| repo.put_bytes(&[i; 4096]).unwrap())
        .collect();
    let victim = objs[7].id;
    // Flip one byte in place, as a failing disk would.
    let p = repo.path(&victim);
    let mut bytes = fs::read(&p).unwrap();
    bytes[1000] ^= 0x40;
    fs::write(&p, &bytes).unwrap();
    let errs = repo.verify_many(&repo.walk().unwrap(), &no_progress);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].kind(), Kind::Integrity);
    match &errs[0] {
        RepoError::Integrity { expected, actual } => {
            assert_eq!(*expected, victim);
            assert_eq!(*actual, Digest::of(&bytes));
        }
        other => panic!("unexpected {other:?}"),
    }
}
