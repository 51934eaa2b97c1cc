use super::*;
use crate::core::record::fixtures::file;
use proptest::prelude::*;

#[derive(Default)]
struct Mem {
    local: BTreeMap<String, FileRecord>,
    remote: BTreeMap<DeviceId, BTreeMap<String, FileRecord>>,
}

impl Records for Mem {
    type Error = std::convert::Infallible;
    fn local(&self, path: &str) -> Result<Option<FileRecord>, Self::Error> {
        Ok(self.local.get(path).cloned())
    }
    fn remote(&self, device: &DeviceId, path: &str) -> Result<Option<FileRecord>, Self::Error> {
        Ok(self.remote.get(device).and_then(|m| m.get(path)).cloned())
    }
    fn remote_page(
        &self,
        device: &DeviceId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FileRecord>, Self::Error> {
        Ok(page_of(self.remote.get(device), after, limit))
    }
}

fn dev(n: u8) -> DeviceId {
    DeviceId([n; 32])
}

#[test]
fn the_clock_never_repeats_and_follows_the_time() {
    let mut c = Clock::default();
    assert_eq!(c.tick(1000), 1000);
    assert_eq!(c.tick(1000), 1001);
    assert_eq!(c.tick(500), 1002, "a clock set back still issues new values");
    assert_eq!(c.tick(5000), 5000);
}

#[test]
fn a_scan_makes_a_new_version_only_for_what_is_synced() {
    let prev = file("a", 1, &[(1, 3)], 10, 1);
    let same = Seen {
        kind: FileKind::File,
        size: prev.size,
        mtime_ns: prev.mtime_ns,
        permissions: prev.permissions,
        chunks: prev.chunks.clone(),
        link_target: String::new(),
    };
    assert_eq!(scanned("a", same.clone(), Some(&prev), ShortId(2), 100), None);
    let touched = Seen { mtime_ns: prev.mtime_ns + 1, ..same.clone() };
    let r = scanned("a", touched, Some(&prev), ShortId(2), 100).expect("a touch is a version");
    assert!(r.version.dominates(&prev.version) && r.version != prev.version);
    assert_eq!((r.sequence, r.modified_by, r.version.get(ShortId(2))), (prev.sequence, ShortId(2), 100));
    // A file where a tombstone was descends from the tombstone.
    let dead = prev.tombstone(ShortId(1), 50);
    let back = scanned("a", same, Some(&dead), ShortId(1), 60).expect("a file is back");
    assert!(back.version.dominates(&dead.version) && !back.deleted);
}

#[test]
fn a_scan_result_is_stale_once_its_record_moved_on() {
    let mut r = file("a", 1, &[(1, 1)], 10, 1);
    r.sequence = 4;
    let mut current = r.clone();
    assert_eq!(judge_scanned(&r, Some(&current)), ScanVerdict::Commit);
    current.sequence = 5;
    assert_eq!(judge_scanned(&r, Some(&current)), ScanVerdict::Stale);
    r.sequence = 0;
    assert_eq!(judge_scanned(&r, None), ScanVerdict::Commit);
    let t = current.tombstone(ShortId(1), 20);
    assert_eq!(judge_scanned(&t, Some(&current)), ScanVerdict::HoldDelete);
    assert!(delete_still_holds(&t, Some(&current), true));
    assert!(!delete_still_holds(&t, Some(&current), false));
}

#[test]
fn needs_pick_the_newest_version_and_every_source_of_it() {
    let mut m = Mem::default();
    let old = file("a", 1, &[(1, 1)], 10, 1);
    let new = file("a", 2, &[(1, 2)], 11, 1);
    m.remote.entry(dev(1)).or_default().insert("a".into(), old.clone());
    m.remote.entry(dev(2)).or_default().insert("a".into(), new.clone());
    m.remote.entry(dev(3)).or_default().insert("a".into(), new.clone());
    let n = needs(&m, &[dev(1), dev(2), dev(3)], None).unwrap();
    assert_eq!(n.len(), 1);
    assert_eq!((n[0].action.clone(), &n[0].remote, n[0].sources.clone()), (Action::Take, &new, vec![dev(2), dev(3)]));
    // A device the folder is no longer shared with is neither a source nor considered.
    assert_eq!(needs(&m, &[dev(1)], None).unwrap()[0].remote, old);
    // What we have already is no need.
    m.local.insert("a".into(), new.clone());
    assert!(needs(&m, &[dev(1), dev(2)], None).unwrap().is_empty());
}

/// Found by the simulation (`SIM_SEED` 9629236930949261617): we deleted a file, one peer took
/// our delete and another edited the file concurrently. The peer holding our delete was read
/// first, its record (ours) decided nothing, and the concurrent edit behind it was never
/// considered: while that peer kept the delete (its folder stopped), the edit never came back.
#[test]
fn a_peer_holding_our_own_version_does_not_hide_a_concurrent_edit() {
    let mut m = Mem::default();
    let base = file("a", 1, &[(1, 1), (2, 1)], 10, 1);
    let ours = base.tombstone(ShortId(1), 20);
    let edit = file("a", 2, &[(1, 1), (2, 30)], 30, 2);
    assert!(!ours.version.dominates(&edit.version) && !edit.version.dominates(&ours.version));
    m.local.insert("a".into(), ours.clone());
    m.remote.entry(dev(1)).or_default().insert("a".into(), ours.clone());
    m.remote.entry(dev(2)).or_default().insert("a".into(), edit.clone());
    for announced in [None, Some(std::slice::from_ref(&ours))] {
        let n = needs(&m, &[dev(1), dev(2)], announced).unwrap();
        assert_eq!(n.len(), 1, "{announced:?}");
        assert_eq!((&n[0].remote, n[0].sources.clone()), (&edit, vec![dev(2)]));
        assert_ne!(n[0].action, Action::Skip);
    }
    assert_eq!(needs_at(&m, &[dev(1), dev(2)], &["a".to_string()]).unwrap()[0].remote, edit);
}

#[test]
fn merges_and_unknown_tombstones_settle_without_the_puller() {
    let local = file("a", 1, &[(1, 1)], 10, 1);
    let same = file("a", 1, &[(2, 1)], 20, 2);
    let tomb = file("b", 1, &[(2, 3)], 20, 2).tombstone(ShortId(2), 4);
    let edit = file("c", 3, &[(2, 1)], 20, 2);
    let items = vec![
        Need { action: decide(Some(&local), &same), remote: same.clone(), local: Some(local.clone()), sources: vec![] },
        Need { action: decide(None, &tomb), remote: tomb.clone(), local: None, sources: vec![] },
        Need { action: Action::Take, remote: edit.clone(), local: None, sources: vec![] },
    ];
    let d = dispatch(items.clone(), false, vec!["z".into()], false, &|_| false);
    assert_eq!(d.commit.len(), 2);
    assert_eq!(d.commit[0].version, local.version.merged(&same.version));
    assert_eq!(d.commit[1].path, "b");
    assert_eq!(d.work.len(), 1);
    assert_eq!(d.settled, vec!["z".to_string(), "a".into(), "b".into()]);
    // Send-only: the edit is not taken; ignored: nothing at all.
    assert!(dispatch(items.clone(), true, vec![], true, &|_| false).work.is_empty());
    let none = dispatch(items, true, vec![], false, &|_| true);
    assert!(none.commit.is_empty() && none.work.is_empty());
}

#[test]
fn outcomes_keep_the_disk_metadata_and_reissue_above_both() {
    let mut current = file("a", 1, &[(1, 1)], 10, 1);
    current.sequence = 9;
    let remote = file("a", 2, &[(2, 5)], 20, 2);
    let r = took(remote.clone(), Some(&current), Some((7, 0o600)));
    assert_eq!((r.sequence, r.mtime_ns, r.permissions, &r.version), (9, 7, 0o600, &remote.version));
    let re = reissued(current.clone(), &remote.version, ShortId(1), 100);
    assert!(re.version.dominates(&remote.version) && re.version.dominates(&current.version));
    assert_eq!((&re.chunks, re.modified_by, re.mtime_ns), (&current.chunks, current.modified_by, current.mtime_ns));
    // A pull that ends after our record merged a version it did not see: decided again.
    let mut merged = current.clone();
    merged.version = current.version.merged(&crate::core::VersionVector::from_counters([(ShortId(3), 4)]));
    let newer = file("a", 1, &[(1, 2)], 30, 1);
    assert!(overtaken(&newer, Some(&merged)));
    assert!(!overtaken(&newer, Some(&current)) && !overtaken(&newer, None));
    assert_eq!(took(newer.clone(), Some(&merged), None).version, newer.version);
}

#[test]
fn tombstones_expire_by_the_deleting_devices_counter() {
    let t = file("a", 1, &[], 0, 1).tombstone(ShortId(1), 1_700_000_000_000);
    assert!(!expired(&t, tombstone_cutoff(1_700_000_000_500, 1_000)));
    assert!(expired(&t, tombstone_cutoff(1_700_000_002_000, 1_000)));
    let seconds = file("a", 1, &[], 0, 1).tombstone(ShortId(1), 1_700_000_000);
    assert_eq!(deleted_at(&seconds), 1_700_000_000_000);
    assert!(!expired(&file("a", 1, &[(1, 1)], 0, 1), u64::MAX), "a live record never expires");
}

/// Records as the proptests generate them: (path number, holder, content, counter), holder 3
/// being us and 0–2 the devices.
fn holding(held: Vec<(u8, u8, u8, u64)>, path_of: impl Fn(u8) -> String) -> Mem {
    let mut m = Mem::default();
    for (p, holder, content, counter) in held {
        let path = path_of(p);
        let record = file(&path, content, &[(u64::from(holder) + 1, counter)], 1, 1);
        if holder == 3 {
            m.local.insert(path, record);
        } else {
            m.remote.entry(dev(holder)).or_default().insert(path, record);
        }
    }
    m
}

proptest! {
    /// Whatever two replicas hold, the first device's `needs` and the second's agree on the
    /// winner, and a re-issue always dominates both sides.
    #[test]
    fn both_sides_agree_and_reissues_dominate(a in 0u8..4, b in 0u8..4, va in 1u64..5, vb in 1u64..5, ma in 0i64..3, mb in 0i64..3) {
        let x = file("p", a, &[(1, va)], ma, 1);
        let y = file("p", b, &[(2, vb)], mb, 2);
        let mut m1 = Mem::default();
        m1.local.insert("p".into(), x.clone());
        m1.remote.entry(dev(2)).or_default().insert("p".into(), y.clone());
        let n = needs(&m1, &[dev(2)], None).unwrap();
        prop_assert_eq!(n.len(), 1);
        let re = reissued(x.clone(), &y.version, ShortId(1), 10);
        prop_assert!(re.version.dominates(&x.version) && re.version.dominates(&y.version));
        prop_assert_ne!(&re.version, &x.version);
    }

    /// A whole-folder recompute read a page at a time, whatever the page size, decides
    /// exactly what one read of everything decides: same needs, same order, same sources.
    #[test]
    fn needs_read_a_page_at_a_time_equal_needs_read_at_once(
        held in proptest::collection::vec((0u8..12, 0u8..4, 0u8..3, 1u64..4), 0..40),
        limit in 1usize..6,
    ) {
        let m = holding(held, |p| format!("d{}/f{}", p % 3, p));
        let devices = [dev(0), dev(1), dev(2)];
        let everything: Vec<Vec<FileRecord>> =
            devices.iter().map(|d| page_of(m.remote.get(d), None, usize::MAX)).collect();
        let all: Vec<FileRecord> = everything.into_iter().flatten().collect();
        let at_once = needs(&m, &devices, Some(&all)).unwrap();
        let (mut paged, mut after, mut steps) = (Vec::new(), None::<String>, 0);
        loop {
            let (page, next) = needs_page(&m, &devices, after.as_deref(), limit).unwrap();
            paged.extend(page);
            steps += 1;
            prop_assert!(steps <= 40, "no progress");
            match next {
                Some(next) => {
                    prop_assert!(after.as_ref().is_none_or(|a| *a < next), "the cursor moves on");
                    after = Some(next);
                }
                None => break,
            }
        }
        prop_assert_eq!(&paged, &at_once);
        prop_assert_eq!(needs(&m, &devices, None).unwrap(), at_once);
    }

    /// The needs at some paths (held needs taken back, retries due), given in any order and
    /// with repeats, are exactly the whole-folder recompute's needs at those paths.
    #[test]
    fn needs_at_some_paths_equal_the_whole_recompute_there(
        held in proptest::collection::vec((0u8..12, 0u8..4, 0u8..3, 1u64..4), 0..40),
        asked in proptest::collection::vec(0u8..14, 0..10),
    ) {
        let m = holding(held, |p| format!("f{p}"));
        let devices = [dev(0), dev(1), dev(2)];
        let paths: Vec<String> = asked.iter().map(|p| format!("f{p}")).collect();
        let everything = needs(&m, &devices, None).unwrap();
        let expected: Vec<Need> = everything.into_iter().filter(|n| paths.contains(&n.remote.path)).collect();
        prop_assert_eq!(needs_at(&m, &devices, &paths).unwrap(), expected);
    }
}
