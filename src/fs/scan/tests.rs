use super::*;
use std::collections::BTreeMap;

struct Known(BTreeMap<String, FileRecord>);

impl KnownRecords for Known {
    fn get(&self, path: &str) -> Option<FileRecord> {
        self.0.get(path).cloned()
    }
    fn each_under(&self, dir: &str, f: &mut dyn FnMut(FileRecord)) {
        self.0.values().filter(|r| dir.is_empty() || paths::is_inside(&r.path, dir)).cloned().for_each(f)
    }
    fn children<'a>(&'a self, dir: &str) -> Box<dyn Iterator<Item = Listed> + 'a> {
        // As the store lists them: in key order, a mark for each run of deeper records.
        let mut listed: Vec<Listed> = Vec::new();
        for (path, r) in &self.0 {
            let rest = if dir.is_empty() {
                path.as_str()
            } else if let Some(rest) = path.strip_prefix(&format!("{dir}/")) {
                rest
            } else {
                continue;
            };
            match rest.split_once('/') {
                None => listed.push(Listed::Record(r.clone())),
                Some((name, _)) => {
                    if listed.last() != Some(&Listed::Below(name.to_string())) {
                        listed.push(Listed::Below(name.to_string()));
                    }
                }
            }
        }
        Box::new(listed.into_iter())
    }
}

fn scanner(root: &Path) -> Scanner {
    Scanner {
        root: root.to_path_buf(),
        params: ChunkParams::new(4096),
        me: ShortId(1),
        ignore: IgnoreRules::load(root),
        busy: HashSet::new(),
        unreadable: Default::default(),
        links: true,
        progress: None,
        clock: None,
        settling: Default::default(),
    }
}

fn ignoring_links(root: &Path) -> Scanner {
    Scanner { links: false, ..scanner(root) }
}

#[test]
fn a_rescan_of_an_unchanged_folder_finds_nothing_and_a_removal_is_a_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
    std::fs::write(dir.path().join("a/b/f.txt"), b"hello").unwrap();
    std::fs::write(dir.path().join("empty"), b"").unwrap();
    let s = scanner(dir.path());
    let first = s.scan(&["".into()], &Known(BTreeMap::new()), 100).unwrap();
    let mut names: Vec<_> = first.iter().map(|r| r.path.as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["a", "a/b", "a/b/f.txt", "empty"]);
    let known = Known(first.into_iter().map(|r| (r.path.clone(), r)).collect());
    assert!(s.scan(&["".into()], &known, 101).unwrap().is_empty());
    std::fs::remove_dir_all(dir.path().join("a")).unwrap();
    let gone = s.scan(&["a".into()], &known, 102).unwrap();
    assert_eq!(gone.len(), 3);
    assert!(gone.iter().all(|r| r.deleted));
}

/// Names that sort around a directory's children in key order: `a-b` and `a.txt` come before
/// `a/...` and `a0` after it.
const NAMES: [&str; 5] = ["a", "a-b", "a.txt", "a0", "b"];

/// A path of one to three of `NAMES`.
fn path_of(ix: &[usize]) -> String {
    ix.iter().map(|i| NAMES[i % NAMES.len()]).collect::<Vec<_>>().join("/")
}

/// What is on disk under `root` (never through a link): path, kind, size.
fn on_disk(root: &Path) -> BTreeMap<String, (FileKind, u64)> {
    let mut tree = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).follow_links(false).into_iter().flatten() {
        let rel = e.path().strip_prefix(root).unwrap().to_str().unwrap().to_string();
        let state = DiskState::of(&e.metadata().unwrap()).unwrap();
        tree.insert(rel, (state.kind, state.size));
    }
    tree
}

/// One change to the tree: a file written (its parents made directories), a directory made,
/// or whatever is at the path removed.
fn change(root: &Path, op: u8, path: &str, n: usize) {
    let full = root.join(path);
    let clear = |p: &Path| {
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(p).unwrap();
        } else if p.symlink_metadata().is_ok() {
            std::fs::remove_file(p).unwrap();
        }
    };
    // Parents must be directories: a file in the way goes.
    let mut parent = PathBuf::new();
    for part in Path::new(path).parent().into_iter().flat_map(|p| p.components()) {
        parent.push(part);
        let p = root.join(&parent);
        if p.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
            clear(&p);
        }
    }
    match op % 3 {
        0 => {
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            if full.is_dir() {
                clear(&full);
            }
            std::fs::write(&full, vec![b'x'; n % 7]).unwrap();
        }
        1 => {
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            if full.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                clear(&full);
            }
            std::fs::create_dir_all(&full).unwrap();
        }
        _ => clear(&full),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever changed, a full scan against the records of the scans before it leaves records
    /// whose live ones are exactly what is on disk: every new or changed entry recorded, every
    /// gone one (however deep, whatever replaced its parent) a tombstone, nothing else touched.
    #[test]
    fn a_full_scan_leaves_records_that_match_the_disk(
        rounds in proptest::collection::vec(
            proptest::collection::vec((0u8..3, proptest::collection::vec(0usize..5, 1..4), 0usize..10), 1..8),
            1..5,
        )
    ) {
        let dir = tempfile::tempdir().unwrap();
        let s = scanner(dir.path());
        let mut known = Known(BTreeMap::new());
        for (round, changes) in rounds.into_iter().enumerate() {
            for (op, ix, n) in changes {
                change(dir.path(), op, &path_of(&ix), n);
            }
            for r in s.scan(&["".into()], &known, 100 + round as u64).unwrap() {
                known.0.insert(r.path.clone(), r);
            }
            let live: BTreeMap<String, (FileKind, u64)> =
                known.0.values().filter(|r| !r.deleted).map(|r| (r.path.clone(), (r.kind, r.size))).collect();
            proptest::prop_assert_eq!(live, on_disk(dir.path()));
            // And a second scan finds nothing more.
            proptest::prop_assert!(s.scan(&["".into()], &known, 200).unwrap().is_empty());
        }
    }
}

#[test]
fn a_long_walk_hands_over_its_records_in_batches_and_the_rest_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let n = SCAN_BATCH + 5;
    for d in 0..4 {
        std::fs::create_dir(dir.path().join(format!("d{d}"))).unwrap();
    }
    for i in 0..n {
        std::fs::write(dir.path().join(format!("d{}/f{i}", i % 4)), i.to_string()).unwrap();
    }
    let all = scanner(dir.path()).scan(&["".into()], &Known(BTreeMap::new()), 100).unwrap();
    assert_eq!(all.len(), n + 4);
    let handed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = Scanner {
        progress: Some(Box::new({
            let handed = handed.clone();
            move |records| handed.lock().unwrap().push(records)
        })),
        ..scanner(dir.path())
    };
    let rest = s.scan(&["".into()], &Known(BTreeMap::new()), 100).unwrap();
    let batches = std::mem::take(&mut *handed.lock().unwrap());
    assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), vec![SCAN_BATCH]);
    let mut paths: Vec<String> = batches.into_iter().flatten().chain(rest).map(|r| r.path).collect();
    paths.sort();
    let mut expected: Vec<String> = all.into_iter().map(|r| r.path).collect();
    expected.sort();
    assert_eq!(paths, expected, "every record once, batched or at the end");
}

#[test]
fn nothing_behind_a_symlink_is_scanned_or_announced() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(outside.path().join("sub")).unwrap();
    std::fs::write(outside.path().join("sub/secret"), b"outside").unwrap();
    std::fs::write(outside.path().join("top"), b"outside").unwrap();
    std::fs::write(dir.path().join("mine"), b"inside").unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("top"), dir.path().join("filelink")).unwrap();
    let none = Known(BTreeMap::new());
    let outside_text = outside.path().to_str().unwrap().to_string();
    // The whole folder, and every scope a refused pull or a watcher event could name: with
    // links synced, the two links are announced as links (their target text, no content), and
    // nothing they point to; with links ignored, not even that.
    for s in [scanner(dir.path()), ignoring_links(dir.path())] {
        for scope in ["", "link", "link/sub", "link/sub/secret", "link/top", "filelink", "link/nope/x"] {
            let found = s.scan(&[scope.into()], &none, 100).unwrap();
            for r in &found {
                match r.path.as_str() {
                    "mine" => assert!(r.is_file()),
                    "link" if s.links => assert_eq!(r.link_target, outside_text),
                    "filelink" if s.links => assert_eq!(r.link_target, format!("{outside_text}/top")),
                    other => panic!("scope `{scope}` announced `{other}` (links: {})", s.links),
                }
                assert!(r.chunks.is_empty() || r.path == "mine", "{r:?}");
                assert!(r.size == 0 || r.path == "mine", "{r:?}");
            }
        }
    }
    let s = ignoring_links(dir.path());
    // A directory we had, replaced by a link: its records become tombstones, and nothing of
    // what the link points to takes their place.
    std::fs::create_dir(dir.path().join("was")).unwrap();
    std::fs::write(dir.path().join("was/top"), b"inside").unwrap();
    let first = s.scan(&["".into()], &none, 101).unwrap();
    let known = Known(first.into_iter().map(|r| (r.path.clone(), r)).collect());
    std::fs::remove_dir_all(dir.path().join("was")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("was")).unwrap();
    for scope in ["was/top", ""] {
        let after = s.scan(&[scope.into()], &known, 102).unwrap();
        assert!(
            !after.is_empty() && after.iter().all(|r| r.deleted && r.path.starts_with("was")),
            "scope `{scope}`: {after:?}"
        );
    }
    // Synced as links, the same change is a directory replaced by a link: the children are
    // gone, and the link takes the directory's place.
    let s = scanner(dir.path());
    let after = s.scan(&["".into()], &known, 102).unwrap();
    let was: Vec<_> = after.iter().filter(|r| r.path.starts_with("was")).collect();
    assert_eq!(was.len(), 2, "{after:?}");
    assert!(was.iter().any(|r| r.path == "was/top" && r.deleted));
    assert!(was.iter().any(|r| r.path == "was" && r.is_link() && r.link_target == outside_text));
}

#[test]
fn a_link_is_recorded_by_its_target_and_every_change_of_kind_or_target_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let s = scanner(dir.path());
    let link = |target: &str, at: &str| {
        let _ = std::fs::remove_file(dir.path().join(at));
        std::os::unix::fs::symlink(target, dir.path().join(at)).unwrap();
    };
    link("../../outside", "rel");
    link("/nonexistent/abs", "abs");
    std::fs::write(dir.path().join("f"), b"file").unwrap();
    let first = s.scan(&["".into()], &Known(BTreeMap::new()), 100).unwrap();
    let target = |rs: &[FileRecord], p: &str| rs.iter().find(|r| r.path == p).map(|r| r.link_target.clone());
    assert_eq!(target(&first, "rel").as_deref(), Some("../../outside"));
    assert_eq!(target(&first, "abs").as_deref(), Some("/nonexistent/abs"));
    let mut known = Known(first.into_iter().map(|r| (r.path.clone(), r)).collect());
    assert!(s.scan(&["".into()], &known, 101).unwrap().is_empty(), "unchanged links are no change");
    // Recreated with the same target (a new mtime): still no change.
    link("../../outside", "rel");
    assert!(s.scan(&["rel".into()], &known, 101).unwrap().is_empty());
    // Retargeted, with a target of the same length: a change, found by reading the link.
    link("../../outsidf", "rel");
    // A file replaced by a link, and a link by a file.
    std::fs::remove_file(dir.path().join("f")).unwrap();
    link("f-target", "f");
    std::fs::remove_file(dir.path().join("abs")).unwrap();
    std::fs::write(dir.path().join("abs"), b"now a file").unwrap();
    for scope in [vec!["".to_string()], vec!["rel".into(), "f".into(), "abs".into()]] {
        let changed = s.scan(&scope, &known, 102).unwrap();
        let by: BTreeMap<_, _> = changed.iter().map(|r| (r.path.as_str(), r)).collect();
        assert_eq!(by.len(), 3, "{scope:?}: {changed:?}");
        assert_eq!(by["rel"].link_target, "../../outsidf");
        assert!(by["f"].is_link() && by["f"].link_target == "f-target");
        assert!(by["abs"].is_file() && by["abs"].link_target.is_empty() && by["abs"].size == 10);
        assert!(changed.iter().all(|r| r.version.get(ShortId(1)) == 102));
    }
    // A link that is gone is a tombstone, whatever it pointed to.
    let all = s.scan(&["".into()], &known, 102).unwrap();
    known.0.extend(all.into_iter().map(|r| (r.path.clone(), r)));
    std::fs::remove_file(dir.path().join("rel")).unwrap();
    let gone = s.scan(&["rel".into()], &known, 103).unwrap();
    assert!(gone.len() == 1 && gone[0].deleted && gone[0].kind == FileKind::Symlink, "{gone:?}");
    known.0.extend(gone.into_iter().map(|r| (r.path.clone(), r)));
    // Ignored links are no record and no tombstone.
    assert!(ignoring_links(dir.path()).scan(&["".into(), "f".into()], &known, 104).unwrap().is_empty());
}

/// Counts the listings a scan asks for (each is an iterator over the store).
struct Listings<'a>(&'a Known, std::cell::Cell<usize>);

impl KnownRecords for Listings<'_> {
    fn get(&self, path: &str) -> Option<FileRecord> {
        self.0.get(path)
    }
    fn each_under(&self, dir: &str, f: &mut dyn FnMut(FileRecord)) {
        self.1.set(self.1.get() + 1);
        self.0.each_under(dir, f)
    }
    fn children<'a>(&'a self, dir: &str) -> Box<dyn Iterator<Item = Listed> + 'a> {
        self.0.children(dir)
    }
}

#[test]
fn a_directory_replaced_by_a_file_loses_its_children_and_a_file_needs_no_listing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("x")).unwrap();
    std::fs::write(dir.path().join("x/y"), b"inside").unwrap();
    std::fs::write(dir.path().join("f"), b"file").unwrap();
    let s = scanner(dir.path());
    let first = s.scan(&["".into()], &Known(BTreeMap::new()), 100).unwrap();
    let known = Known(first.into_iter().map(|r| (r.path.clone(), r)).collect());
    // The directory becomes a file: a path scan of it tombstones what was below it.
    std::fs::remove_dir_all(dir.path().join("x")).unwrap();
    std::fs::write(dir.path().join("x"), b"now a file").unwrap();
    let listings = Listings(&known, std::cell::Cell::new(0));
    let changed = s.scan(&["x".into()], &listings, 101).unwrap();
    let by: BTreeMap<_, _> = changed.iter().map(|r| (r.path.as_str(), r)).collect();
    assert!(by["x"].is_file() && by["x/y"].deleted, "{changed:?}");
    assert_eq!(listings.1.get(), 1);
    // A file whose record is a file (changed or not): nothing can be below it, nothing is listed.
    std::fs::write(dir.path().join("f"), b"edited").unwrap();
    let listings = Listings(&known, std::cell::Cell::new(0));
    let changed = s.scan(&["f".into()], &listings, 102).unwrap();
    assert!(changed.len() == 1 && changed[0].size == 6, "{changed:?}");
    assert_eq!(listings.1.get(), 0);
}

#[test]
fn a_full_scan_leaves_a_file_modified_under_a_second_ago_until_it_has_settled() {
    let dir = tempfile::tempdir().unwrap();
    let at = |secs: i64| filetime::FileTime::from_unix_time(secs, 0);
    let now = 1_800_000_000i64;
    for (name, mtime) in [("fresh", now), ("old", now - 3600), ("future", now + 3600)] {
        std::fs::write(dir.path().join(name), name).unwrap();
        filetime::set_file_mtime(dir.path().join(name), at(mtime)).unwrap();
    }
    let clocked = |secs: i64| Scanner { clock: Some(Box::new(move || secs * 1_000_000_000)), ..scanner(dir.path()) };
    let s = clocked(now);
    let found = s.scan(&["".into()], &Known(BTreeMap::new()), 100).unwrap();
    let mut names: Vec<_> = found.iter().map(|r| r.path.as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["future", "old"]);
    assert_eq!(*s.settling.lock().unwrap(), vec!["fresh".to_string()]);
    // A recorded file that changes again is left too, and left is not gone: no tombstone.
    let mut known = Known(found.into_iter().map(|r| (r.path.clone(), r)).collect());
    let fresh = scanner(dir.path()).scan(&["fresh".into()], &known, 101).unwrap().pop().unwrap();
    known.0.insert("fresh".into(), fresh);
    std::fs::write(dir.path().join("fresh"), "fresh, now whole").unwrap();
    filetime::set_file_mtime(dir.path().join("fresh"), at(now)).unwrap();
    let s = clocked(now);
    assert!(s.scan(&["".into()], &known, 102).unwrap().is_empty());
    assert_eq!(*s.settling.lock().unwrap(), vec!["fresh".to_string()]);
    // A second later it has settled, and a full scan takes it in.
    let s = clocked(now + 1);
    let found = s.scan(&["".into()], &known, 103).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].path.as_str(), found[0].size), ("fresh", 16));
    assert!(s.settling.lock().unwrap().is_empty());
}
