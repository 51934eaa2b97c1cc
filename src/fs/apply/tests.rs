use super::*;
use crate::core::record::fixtures::file;
use crate::fs::versions::VersionStore;

fn temp_files(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".syncnode-tmp-"))
        .map(|e| e.into_path())
        .collect()
}

#[test]
fn a_download_is_invisible_until_committed() {
    let root = tempfile::tempdir().unwrap();
    let record = file("d/x.bin", 1, &[(1, 1)], 1_600_000_000, 1);
    let temp = TempFile::create(root.path(), &record.path, 5).unwrap();
    temp.write_at(0, b"hello").unwrap();
    assert!(!root.path().join("d/x.bin").exists());
    assert_eq!(temp_files(root.path()).len(), 1);
    let state = temp.commit(&record, None).unwrap();
    assert_eq!(std::fs::read(root.path().join("d/x.bin")).unwrap(), b"hello");
    assert_eq!(state.mtime_ns, record.mtime_ns);
    assert!(temp_files(root.path()).is_empty());
}

#[test]
fn a_path_behind_a_link_is_a_permanent_refusal() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
    let e = TempFile::create(root.path(), "link/x", 5).err().unwrap();
    assert!(e.is_permanent(), "{e}");
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none(), "nothing written outside");
    assert!(!ApplyError::LocalChange("x".into()).is_permanent());
}

#[test]
fn setuid_setgid_and_sticky_bits_are_never_applied() {
    let root = tempfile::tempdir().unwrap();
    let mut record = file("x", 1, &[(1, 1)], 1_600_000_000, 1);
    record.size = 5;
    record.permissions = 0o7755;
    let temp = TempFile::create(root.path(), "x", 5).unwrap();
    temp.write_at(0, b"hello").unwrap();
    let state = temp.commit(&record, None).unwrap();
    assert_eq!(std::fs::metadata(root.path().join("x")).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(state.permissions, 0o755);
    let dir = FileRecord {
        path: "d".into(),
        kind: FileKind::Directory,
        size: 0,
        chunks: vec![],
        permissions: 0o3777,
        ..record
    };
    make_dir(root.path(), &dir, None).unwrap();
    assert_eq!(std::fs::metadata(root.path().join("d")).unwrap().permissions().mode() & 0o7777, 0o777);
}

#[test]
fn two_downloads_of_one_path_never_share_a_temp_file() {
    let root = tempfile::tempdir().unwrap();
    let record = file("x", 1, &[(1, 1)], 1_600_000_000, 1);
    let first = TempFile::create(root.path(), "x", 5).unwrap();
    first.write_at(0, b"hello").unwrap();
    // A second writer of the same path starts (and fails) meanwhile.
    let second = TempFile::create(root.path(), "x", 5).unwrap();
    assert_eq!(temp_files(root.path()).len(), 2);
    second.abandon();
    first.commit(&record, None).unwrap();
    assert_eq!(std::fs::read(root.path().join("x")).unwrap(), b"hello");
    assert!(temp_files(root.path()).is_empty());
}

#[test]
fn a_batch_commits_each_file_unless_its_target_changed() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("edited.txt"), b"a local edit").unwrap();
    let batch: Vec<_> = ["a.txt", "edited.txt", "b/c.txt"]
        .iter()
        .map(|name| {
            let record = file(name, 1, &[(1, 1)], 1_600_000_000, 1);
            let temp = TempFile::create(root.path(), name, 3).unwrap();
            temp.write_at(0, &name.as_bytes()[..3]).unwrap();
            // We hold no record of `edited.txt`, so the file on disk is someone's edit.
            (temp, record, None)
        })
        .collect();
    let results = commit_all(batch);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(matches!(results[1], Err(ApplyError::LocalChange(_))), "{results:?}");
    assert_eq!(std::fs::read(root.path().join("a.txt")).unwrap(), b"a.t");
    assert_eq!(std::fs::read(root.path().join("b/c.txt")).unwrap(), b"b/c");
    assert_eq!(std::fs::read(root.path().join("edited.txt")).unwrap(), b"a local edit");
    assert!(temp_files(root.path()).is_empty(), "temp files left");
}

#[test]
fn a_conflict_copy_never_replaces_another() {
    let root = tempfile::tempdir().unwrap();
    let copy = "d/x.sync-conflict-20240101-000000-ABCDEFG.txt";
    std::fs::create_dir(root.path().join("d")).unwrap();
    std::fs::write(root.path().join(copy), b"first loser").unwrap();
    std::fs::write(root.path().join("d/x.txt"), b"second loser").unwrap();
    let moved = move_aside(root.path(), "d/x.txt", copy).unwrap();
    assert_eq!(moved, "d/x.sync-conflict-20240101-000000-ABCDEFG-2.txt");
    assert_eq!(std::fs::read(root.path().join(copy)).unwrap(), b"first loser");
    assert_eq!(std::fs::read(root.path().join(moved)).unwrap(), b"second loser");
}

/// A folder, a directory outside it holding `secret`, and a version store.
fn with_outside() -> (tempfile::TempDir, tempfile::TempDir, VersionStore) {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"outside").unwrap();
    let store = VersionStore::new(root.path(), None, crate::core::versioning::Policy::DEFAULT);
    (root, outside, store)
}

fn target_of(root: &Path, rel: &str) -> String {
    std::fs::read_link(root.join(rel)).unwrap().to_str().unwrap().to_string()
}

#[test]
fn a_link_is_made_as_the_same_link_whatever_it_points_to() {
    use crate::core::record::fixtures::link;
    let (root, outside, store) = with_outside();
    let secret = outside.path().join("secret").display().to_string();
    let by = Some((&store as &dyn Keeper, ShortId(2)));
    for (rel, target) in [("d/rel", "../x"), ("abs", secret.as_str()), ("dangling", "no/such"), ("up", "../../..")] {
        let record = link(rel, target, &[(2, 1)], 1_600_000_000, 2);
        let state = make_link_keeping(root.path(), &record, None, by).unwrap();
        assert_eq!(state.kind, FileKind::Symlink);
        assert_eq!(target_of(root.path(), rel), target);
        let mtime = std::fs::symlink_metadata(root.path().join(rel)).unwrap().mtime();
        assert_eq!(mtime, 1_600_000_000, "the record's mtime is set on the link itself");
    }
    assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"outside");
    assert!(temp_files(root.path()).is_empty());
    // Retargeting replaces the link; the old link is kept in the store as the link.
    let old = link("abs", &secret, &[(2, 1)], 1_600_000_000, 2);
    let new = link("abs", "elsewhere", &[(2, 2)], 1_600_000_001, 2);
    make_link_keeping(root.path(), &new, Some(&old), by).unwrap();
    assert_eq!(target_of(root.path(), "abs"), "elsewhere");
    let kept = store.list(Some("abs")).unwrap();
    assert_eq!(kept.len(), 1);
    let kept_path = store.dir().join(&kept[0].stored);
    assert_eq!(std::fs::read_link(kept_path).unwrap().to_str().unwrap(), secret);
    // A link we do not hold as one (an ignored link, or one not scanned yet) is refused.
    let e = make_link_keeping(root.path(), &link("abs", "x", &[(2, 3)], 1, 2), None, by).unwrap_err();
    assert!(e.is_permanent(), "{e}");
    // A link whose target changed since its scan is a local change, not replaced.
    let e = make_link_keeping(root.path(), &link("abs", "x", &[(2, 3)], 1, 2), Some(&old), by).unwrap_err();
    assert!(matches!(e, ApplyError::LocalChange(_)), "{e}");
    assert_eq!(target_of(root.path(), "abs"), "elsewhere");
    // Never a link below a link.
    std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
    let e = make_link_keeping(root.path(), &link("out/l", "x", &[(2, 1)], 1, 2), None, by).unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1, "nothing made outside");
}

#[test]
fn a_file_replaces_a_link_without_writing_through_it_and_a_delete_removes_only_the_link() {
    use crate::core::record::fixtures::link;
    let (root, outside, store) = with_outside();
    let secret = outside.path().join("secret");
    std::os::unix::fs::symlink(&secret, root.path().join("l")).unwrap();
    let held = link("l", secret.to_str().unwrap(), &[(1, 1)], 1, 1);
    // Not held as a link: refused before anything is written.
    assert!(TempFile::create_replacing(root.path(), "l", 5, None).err().unwrap().is_permanent());
    // Held as a link: the file replaces the link itself, which goes to the store.
    let record = FileRecord { size: 5, ..file("l", 1, &[(1, 2)], 1_600_000_000, 2) };
    let temp = TempFile::create_replacing(root.path(), "l", 5, Some(&held)).unwrap();
    temp.write_at(0, b"hello").unwrap();
    let state = commit_all_keeping(vec![(temp, record.clone(), Some(held.clone()))], Some(&store)).pop().unwrap();
    assert_eq!(state.unwrap().kind, FileKind::File);
    assert_eq!(std::fs::read(root.path().join("l")).unwrap(), b"hello");
    assert_eq!(std::fs::read(&secret).unwrap(), b"outside", "written through the link");
    let kept = store.list(Some("l")).unwrap();
    assert_eq!(kept.len(), 1);
    assert!(std::fs::symlink_metadata(store.dir().join(&kept[0].stored)).unwrap().file_type().is_symlink());
    // A link deleted by a peer: the link goes, its target stays, the store keeps the link.
    std::os::unix::fs::symlink(&secret, root.path().join("m")).unwrap();
    let m = link("m", secret.to_str().unwrap(), &[(1, 1)], 1, 1);
    assert!(remove_keeping(root.path(), "m", Some(&m), Some((&store as &dyn Keeper, ShortId(2)))).unwrap());
    assert!(std::fs::symlink_metadata(root.path().join("m")).is_err());
    assert_eq!(std::fs::read(&secret).unwrap(), b"outside");
    assert_eq!(store.list(Some("m")).unwrap().len(), 1);
    // Restored, it is the same link again.
    store.restore("m", None, ShortId(1)).unwrap();
    assert_eq!(target_of(root.path(), "m"), secret.to_str().unwrap());
    // A directory from a peer where we hold a link: the link is kept and replaced.
    let n = link("n", "/", &[(1, 1)], 1, 1);
    std::os::unix::fs::symlink("/", root.path().join("n")).unwrap();
    let dir = FileRecord { kind: FileKind::Directory, size: 0, chunks: vec![], ..file("n", 0, &[(1, 2)], 1, 2) };
    make_dir_keeping(root.path(), &dir, Some(&n), Some((&store as &dyn Keeper, ShortId(2)))).unwrap();
    assert!(std::fs::symlink_metadata(root.path().join("n")).unwrap().is_dir());
    // Conflict copies of links: a link is compared by its target, never read through.
    std::os::unix::fs::symlink(&secret, root.path().join("c1")).unwrap();
    std::os::unix::fs::symlink(&secret, root.path().join("c2")).unwrap();
    std::fs::write(root.path().join("c3"), b"outside").unwrap();
    assert!(same_bytes(&root.path().join("c1"), &root.path().join("c2")));
    assert!(!same_bytes(&root.path().join("c1"), &root.path().join("c3")), "a link is not its target's bytes");
    let moved = move_aside(root.path(), "c1", "c1.sync-conflict-x").unwrap();
    assert_eq!(target_of(root.path(), &moved), secret.to_str().unwrap());
}

#[test]
fn a_local_edit_is_not_overwritten() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("x"), b"mine").unwrap();
    let record = file("x", 1, &[(1, 1)], 1, 1);
    let temp = TempFile::create(root.path(), "x", 5).unwrap();
    assert!(matches!(temp.commit(&record, None), Err(ApplyError::LocalChange(_))));
    assert_eq!(std::fs::read(root.path().join("x")).unwrap(), b"mine");
    assert!(temp_files(root.path()).is_empty());
}

#[test]
fn a_loser_already_kept_under_another_seconds_name_is_not_kept_again() {
    use crate::core::conflict::conflict_name;
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("d")).unwrap();
    // The same content lost at two mtimes: one copy, whichever name it got first.
    let (first, later) = (file("d/x.txt", 1, &[(1, 1)], 100, 1), file("d/x.txt", 1, &[(2, 1)], 200, 2));
    std::fs::write(root.path().join(conflict_name(&first)), b"loser").unwrap();
    std::fs::write(root.path().join("d/x.txt"), b"loser").unwrap();
    let kept = move_aside(root.path(), "d/x.txt", &conflict_name(&later)).unwrap();
    assert_eq!(kept, conflict_name(&later), "ours dropped: the same bytes are kept");
    assert!(!root.path().join("d/x.txt").exists() && !root.path().join(conflict_name(&later)).exists());
    // Other bytes under the same content id (a copy the user edited) are no reason to drop ours.
    std::fs::write(root.path().join(conflict_name(&first)), b"edited").unwrap();
    std::fs::write(root.path().join("d/x.txt"), b"loser").unwrap();
    assert_eq!(move_aside(root.path(), "d/x.txt", &conflict_name(&later)).unwrap(), conflict_name(&later));
    assert_eq!(std::fs::read(root.path().join(conflict_name(&later))).unwrap(), b"loser");
}

#[test]
fn a_loser_is_moved_aside_only_while_it_is_what_the_index_recorded() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("x"), b"v1").unwrap();
    let disk = DiskState::read(&root.path().join("x")).unwrap().unwrap();
    let recorded = FileRecord {
        size: disk.size,
        mtime_ns: disk.mtime_ns,
        permissions: disk.permissions,
        ..file("x", 1, &[(1, 1)], 1, 1)
    };
    // A local edit the scan has not seen: not put under the recorded loser's name.
    std::fs::write(root.path().join("x"), b"v2, longer").unwrap();
    assert!(matches!(
        move_aside_recorded(root.path(), "x", Some(&recorded), "x.copy"),
        Err(ApplyError::LocalChange(_))
    ));
    assert!(matches!(move_aside_recorded(root.path(), "x", None, "x.copy"), Err(ApplyError::LocalChange(_))));
    assert!(root.path().join("x").exists() && !root.path().join("x.copy").exists());
    let now = DiskState::read(&root.path().join("x")).unwrap().unwrap();
    let recorded = FileRecord { size: now.size, mtime_ns: now.mtime_ns, ..recorded };
    assert_eq!(move_aside_recorded(root.path(), "x", Some(&recorded), "x.copy").unwrap(), "x.copy");
    assert_eq!(std::fs::read(root.path().join("x.copy")).unwrap(), b"v2, longer");
}
