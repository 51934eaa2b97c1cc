use super::*;
use crate::core::versioning::{Kind, HOUR};
use std::os::unix::fs::MetadataExt;

fn store(root: &Path, policy: Policy) -> VersionStore {
    VersionStore::new(root, None, policy)
}

#[test]
fn a_kept_version_is_the_same_inode_and_survives_the_replace() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("d")).unwrap();
    let file = root.path().join("d/report.txt");
    std::fs::write(&file, b"old").unwrap();
    let inode = std::fs::metadata(&file).unwrap().ino();
    let s = store(root.path(), Policy::DEFAULT);
    let kept = s.keep(&file, "d/report.txt", Reason::Replaced, "ABCDEFG").unwrap().unwrap();
    std::fs::write(root.path().join("new"), b"new content").unwrap();
    std::fs::rename(root.path().join("new"), &file).unwrap();
    assert_eq!(std::fs::metadata(&kept).unwrap().ino(), inode);
    assert_eq!(std::fs::read(&kept).unwrap(), b"old");
    let listed = s.list(None).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].path.as_str(), listed[0].size, listed[0].reason, listed[0].by.as_str()),
        ("d/report.txt", 3, Reason::Replaced, "ABCDEFG")
    );
    assert_eq!(s.usage(), (1, 3));
}

#[test]
fn a_file_replaced_by_a_directory_or_deleted_by_a_peer_is_kept() {
    use crate::core::record::fixtures::file;
    let root = tempfile::tempdir().unwrap();
    let s = store(root.path(), Policy::DEFAULT);
    std::fs::write(root.path().join("x"), b"was a file").unwrap();
    std::fs::write(root.path().join("y"), b"deleted").unwrap();
    let disk = |p: &str| DiskState::read(&root.path().join(p)).unwrap().unwrap();
    let local = |p: &str| FileRecord {
        size: disk(p).size,
        mtime_ns: disk(p).mtime_ns,
        permissions: disk(p).permissions,
        ..file(p, 1, &[(1, 1)], 0, 1)
    };
    let (lx, ly) = (local("x"), local("y"));
    let dir = FileRecord { kind: FileKind::Directory, chunks: Vec::new(), size: 0, ..file("x", 1, &[(1, 2)], 0, 2) };
    apply::make_dir_keeping(root.path(), &dir, Some(&lx), Some((&s as &dyn apply::Keeper, ShortId(2)))).unwrap();
    assert!(root.path().join("x").is_dir());
    assert!(apply::remove_keeping(root.path(), "y", Some(&ly), Some((&s as &dyn apply::Keeper, ShortId(2)))).unwrap());
    let kept: Vec<(String, Reason)> = s.list(None).unwrap().into_iter().map(|v| (v.path, v.reason)).collect();
    assert!(
        kept.contains(&("x".into(), Reason::Replaced)) && kept.contains(&("y".into(), Reason::Deleted)),
        "{kept:?}"
    );
}

#[test]
fn nothing_is_kept_without_versioning() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("x"), b"x").unwrap();
    let s = store(root.path(), Policy { kind: Kind::None, ..Policy::DEFAULT });
    assert_eq!(s.keep(&root.path().join("x"), "x", Reason::Deleted, "local").unwrap(), None);
    assert!(!root.path().join(paths::VERSIONS_DIR).exists());
}

#[test]
fn versions_are_listed_newest_first_and_by_path() {
    let root = tempfile::tempdir().unwrap();
    let s = store(root.path(), Policy::DEFAULT);
    for (rel, content) in [("a.txt", "1"), ("a.txt", "22"), ("sub/b.txt", "333"), ("a.txt.bak", "4444")] {
        let full = root.path().join(rel);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, content).unwrap();
        s.keep(&full, rel, Reason::Deleted, "local").unwrap();
        std::fs::remove_file(&full).unwrap();
    }
    let all = s.list(None).unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].time_ms >= w[1].time_ms));
    let a: Vec<u64> = s.list(Some("a.txt")).unwrap().iter().map(|v| v.size).collect();
    assert_eq!(a, vec![2, 1]);
    assert_eq!(s.list(Some("sub")).unwrap().len(), 1);
    assert!(s.list(Some("nothing/here")).unwrap().is_empty());
}

#[test]
fn a_restore_puts_the_file_back_and_never_overwrites_a_changed_one() {
    let root = tempfile::tempdir().unwrap();
    let s = store(root.path(), Policy::DEFAULT);
    let file = root.path().join("notes.txt");
    std::fs::write(&file, b"version one").unwrap();
    s.keep(&file, "notes.txt", Reason::Deleted, "ABCDEFG").unwrap();
    std::fs::remove_file(&file).unwrap();
    // Deleted: it comes back as it was, and leaves the store.
    let r = s.restore("notes.txt", None, ShortId(7)).unwrap();
    assert!(r.conflict_copy.is_none() && !r.unchanged);
    assert_eq!(std::fs::read(&file).unwrap(), b"version one");
    assert!(s.list(None).unwrap().is_empty());
    // Replaced meanwhile: the newer file becomes a conflict copy, the version goes back.
    s.keep(&file, "notes.txt", Reason::Replaced, "ABCDEFG").unwrap();
    std::fs::write(root.path().join("tmp"), b"version two").unwrap();
    std::fs::rename(root.path().join("tmp"), &file).unwrap();
    let r = s.restore("notes.txt", None, ShortId(7)).unwrap();
    let copy = r.conflict_copy.unwrap();
    assert!(copy.starts_with("notes.sync-conflict-") && copy.ends_with(".txt"), "{copy}");
    assert_eq!(std::fs::read(root.path().join(&copy)).unwrap(), b"version two");
    assert_eq!(std::fs::read(&file).unwrap(), b"version one");
    // Nothing left to restore.
    assert!(matches!(s.restore("notes.txt", None, ShortId(7)), Err(VersionError::NotFound { .. })));
}

#[test]
fn restore_at_a_time_takes_the_newest_kept_by_then() {
    let root = tempfile::tempdir().unwrap();
    let s = store(root.path(), Policy::DEFAULT);
    let dir = root.path().join(paths::VERSIONS_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    let t0 = 1_700_000_000_000;
    for (i, content) in ["first", "second", "third"].iter().enumerate() {
        std::fs::write(dir.join(version_name("f.txt", t0 + i as u64 * HOUR, Reason::Replaced, "ABCDEFG")), content)
            .unwrap();
    }
    s.restore("f.txt", Some(t0 + HOUR + 5), ShortId(1)).unwrap();
    assert_eq!(std::fs::read(root.path().join("f.txt")).unwrap(), b"second");
    assert!(matches!(s.restore("f.txt", Some(t0 - 1), ShortId(1)), Err(VersionError::NotFound { .. })));
}

#[test]
fn cleanup_applies_the_policy_and_the_size_cap() {
    let root = tempfile::tempdir().unwrap();
    let now = 1_800_000_000_000;
    let policy = Policy { kind: Kind::Simple, keep: 2, max_age: Some(30 * DAY), max_size: Some(250) };
    let s = store(root.path(), policy);
    let dir = root.path().join(paths::VERSIONS_DIR).join("a/b");
    std::fs::create_dir_all(&dir).unwrap();
    // Three versions of x (one too many), one too old, one of y: 100 bytes each.
    for (name, age) in [("x", HOUR), ("x", 2 * HOUR), ("x", 3 * HOUR), ("x", 31 * DAY), ("y", 4 * HOUR)] {
        std::fs::write(dir.join(version_name(name, now - age, Reason::Replaced, "ABCDEFG")), [0u8; 100]).unwrap();
    }
    std::fs::create_dir_all(root.path().join(paths::VERSIONS_DIR).join("empty/dir")).unwrap();
    let first = s.cleanup(now).unwrap();
    assert_eq!((first.files, first.bytes, first.removed, first.again), (3, 300, 2, true));
    assert!(!root.path().join(paths::VERSIONS_DIR).join("empty").exists());
    // The cap: the oldest (y) goes.
    let mut last = first;
    for _ in 0..6 {
        if !last.again {
            break;
        }
        last = s.cleanup(now).unwrap();
    }
    assert_eq!((last.files, last.bytes, last.again), (2, 200, false));
    let left: Vec<String> = s.list(None).unwrap().into_iter().map(|v| v.path).collect();
    assert_eq!(left, vec!["a/b/x", "a/b/x"]);
    assert_eq!(s.usage(), (2, 200));
}
