use super::*;
use crate::core::record::fixtures::file;

#[test]
fn records_written_before_links_were_synced_still_decode() {
    #[derive(Serialize)]
    struct Old<'a> {
        path: &'a str,
        kind: crate::core::FileKind,
        size: u64,
        mtime_ns: i64,
        permissions: u32,
        version: &'a crate::core::VersionVector,
        deleted: bool,
        sequence: u64,
        modified_by: crate::core::ShortId,
        chunks: &'a [crate::core::Chunk],
    }
    let r = file("a/b", 3, &[(1, 2)], 12, 7);
    let old = Old {
        path: &r.path,
        kind: r.kind,
        size: r.size,
        mtime_ns: r.mtime_ns,
        permissions: r.permissions,
        version: &r.version,
        deleted: r.deleted,
        sequence: r.sequence,
        modified_by: r.modified_by,
        chunks: &r.chunks,
    };
    assert_eq!(decode_record(&encode(&old)).unwrap(), r);
    let link = crate::core::record::fixtures::link("l", "/abs/target", &[(1, 2)], 12, 7);
    assert_eq!(decode_record(&encode(&link)).unwrap(), link);
    assert!(decode_record(&[0xff; 3]).is_err());
}

#[test]
fn old_tombstones_are_purged_and_recent_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let by = crate::core::ShortId(1);
    let old = file("old", 1, &[(1, 1)], 1, 1).tombstone(by, 200_000_000_000);
    let recent = file("recent", 1, &[(1, 1)], 1, 1).tombstone(by, 900_000_000_000);
    store.commit_local("f", vec![old, recent, file("live", 2, &[(1, 1)], 1, 1)]).unwrap();
    assert_eq!(store.purge_tombstones("f", 500_000_000_000).unwrap(), 1);
    let left: Vec<_> = store.local_records("f").map(|r| r.path).collect();
    assert_eq!(left, vec!["live", "recent"]);
    assert_eq!(store.since("f", 0, 10).unwrap().len(), 2);
}

#[test]
fn needs_come_back_in_pull_order_with_counts_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let key = |o: u8, p: &str| NeedKey { order: [o, 0, 0], path: p.into() };
    store
        .put_needs(
            "f",
            &[(key(1, "b"), 5, b"B".to_vec()), (key(0, "a"), 0, b"A".to_vec()), (key(1, "c"), 7, b"C".to_vec())],
        )
        .unwrap();
    store.put_needs("g", &[(key(0, "other"), 1, b"O".to_vec())]).unwrap();
    let all: Vec<_> = store.needs_after("f", None, 10).unwrap().into_iter().map(|(k, v)| (k.path, v)).collect();
    assert_eq!(all, vec![("a".into(), b"A".to_vec()), ("b".into(), b"B".to_vec()), ("c".into(), b"C".to_vec())]);
    assert_eq!(store.needs_after("f", Some(&key(1, "b")), 10).unwrap()[0].0.path, "c");
    // A need for a path already queued replaces it, even in another phase.
    store.put_needs("f", &[(key(2, "b"), 0, b"B2".to_vec())]).unwrap();
    assert_eq!(store.need_counts("f"), LocalCounts { records: 3, bytes: 7 });
    assert_eq!(store.needs_after("f", None, 10).unwrap().last().unwrap().0, key(2, "b"));
    store.remove_needs("f", &["a", "nothing"]).unwrap();
    assert_eq!(store.need_counts("f"), LocalCounts { records: 2, bytes: 7 });
    store.clear_needs("f").unwrap();
    assert!(store.needs_after("f", None, 10).unwrap().is_empty());
    assert_eq!(store.needs_after("g", None, 10).unwrap().len(), 1, "other folders keep theirs");
}

#[test]
fn live_counts_follow_commits_without_recounting() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.commit_local("f", vec![file("a", 1, &[(1, 1)], 1, 1)]).unwrap();
    assert_eq!(store.local_counts("f"), LocalCounts { records: 1, bytes: 10 }, "counted on first use");
    store.commit_local("f", vec![file("b", 2, &[(1, 1)], 1, 1), file("a", 3, &[(1, 2)], 2, 1)]).unwrap();
    assert_eq!(store.local_counts("f"), LocalCounts { records: 2, bytes: 20 });
    let gone = file("a", 3, &[(1, 2)], 2, 1).tombstone(crate::core::ShortId(1), 5);
    store.commit_local("f", vec![gone]).unwrap();
    assert_eq!(store.local_counts("f"), LocalCounts { records: 1, bytes: 10 });
    let recount = store.local_records("f").filter(|r| !r.deleted).count() as u64;
    assert_eq!(store.local_counts("f").records, recount);
}

#[test]
fn commits_assign_sequences_and_move_old_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = store.commit_local("f", vec![file("a", 1, &[(1, 1)], 1, 1), file("b", 2, &[(1, 1)], 1, 1)]).unwrap();
    assert_eq!((a[0].sequence, a[1].sequence), (1, 2));
    store.commit_local("f", vec![file("a", 3, &[(1, 2)], 2, 1)]).unwrap();
    let since: Vec<_> = store.since("f", 0, 100).unwrap().into_iter().map(|r| (r.path, r.sequence)).collect();
    assert_eq!(since, vec![("b".to_string(), 2), ("a".to_string(), 3)]);
    assert!(store.chunk_locations(&[1; 32], 10).is_empty());
    assert_eq!(store.chunk_locations(&[3; 32], 10)[0].path, "a");
    let diff = store.diff_for("f", &store.get("f", "a").unwrap().unwrap()).unwrap().unwrap();
    assert_eq!(diff.base, 1);
    assert_eq!(store.since("f", 2, 100).unwrap().len(), 1);
    assert_eq!(store.folder_meta("f").unwrap().max_sequence, 3);
}

/// A file of `n` chunks named by `seed`.
fn big(path: &str, seed: u8, n: u32) -> FileRecord {
    let chunks: Vec<_> = (0..n)
        .map(|i| {
            let hash = blake3::hash(&[&[seed][..], &i.to_le_bytes()].concat()).into();
            crate::core::Chunk { offset: i as u64 * 10, size: 10, hash }
        })
        .collect();
    FileRecord { size: n as u64 * 10, chunks, ..file(path, seed, &[(1, 1)], 1, 1) }
}

#[test]
fn a_renamed_file_is_stored_as_a_reference_sent_only_while_the_peer_holds_its_base() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.commit_local("f", vec![big("old", 1, 500)]).unwrap(); // sequence 1
    let moved = store.commit_local("f", vec![big("new", 1, 500)]).unwrap().remove(0); // 2
    let diff = store.diff_for("f", &moved).unwrap().unwrap();
    assert_eq!((diff.base, diff.base_path.as_deref()), (1, Some("old")));
    assert_eq!(diff.edits.len(), 1);
    // The peer has sequence 1: the reference goes out; with nothing yet, the whole record.
    assert!(store.diff_to_send("f", &moved, 1).unwrap().is_some());
    assert!(store.diff_to_send("f", &moved, 0).unwrap().is_none());
    // The old path's tombstone comes after the new record: the peer still holds the base when
    // the new record reaches it, since records go out in sequence order.
    let gone = big("old", 1, 500).tombstone(crate::core::ShortId(1), 2);
    store.commit_local("f", vec![gone]).unwrap(); // 3
    assert!(store.diff_to_send("f", &moved, 1).unwrap().is_some());
    // A small file, or one with nothing in common, is sent whole; a path of the same batch is
    // never a base.
    let small = store.commit_local("f", vec![file("s", 9, &[(1, 1)], 1, 1), file("t", 9, &[(1, 1)], 1, 1)]).unwrap();
    assert!(store.diff_for("f", &small[1]).unwrap().is_none());
    let same_batch = store.commit_local("f", vec![big("x", 2, 100), big("y", 2, 100)]).unwrap();
    assert!(store.diff_for("f", &same_batch[1]).unwrap().is_none());
}

#[test]
fn a_copy_seen_part_written_then_whole_refers_to_its_source_not_to_its_own_first_part() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.commit_local("f", vec![big("source", 1, 500)]).unwrap(); // 1
    let mut partial = big("copy", 1, 500);
    partial.chunks.truncate(20);
    store.commit_local("f", vec![partial]).unwrap(); // 2
    let whole = store.commit_local("f", vec![big("copy", 1, 500)]).unwrap().remove(0); // 3
    let diff = store.diff_for("f", &whole).unwrap().unwrap();
    assert_eq!((diff.base, diff.base_path.as_deref()), (1, Some("source")));
    assert!(diff.edits.iter().all(|e| e.insert.is_empty()), "{:?}", diff.edits.len());
    // An edit that inserts chunks no other file has stays a difference from its own last version.
    let mut edited = big("copy", 1, 500);
    edited.chunks[499].hash = [7; 32];
    let edited = store.commit_local("f", vec![edited]).unwrap().remove(0); // 4
    let diff = store.diff_for("f", &edited).unwrap().unwrap();
    assert_eq!((diff.base, diff.base_path.as_deref()), (3, None));
}

#[test]
fn a_reference_is_not_sent_when_its_base_changed_before_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.commit_local("f", vec![big("old", 1, 500)]).unwrap(); // 1
    let copy = store.commit_local("f", vec![big("copy", 1, 500)]).unwrap().remove(0); // 2
                                                                                      // Say the old path changes in between (sequence 3 would reach the peer after the copy's
                                                                                      // record, so the peer still holds sequence 1 then): fine. But a base replaced by a sequence
                                                                                      // lower than the record's would be gone when the record arrives.
    store.commit_local("f", vec![big("old", 7, 500)]).unwrap(); // 3
    assert!(store.diff_to_send("f", &copy, 2).unwrap().is_some());
    let mut racing = store.diff_for("f", &copy).unwrap().unwrap();
    racing.sequence = 4;
    let later = FileRecord { sequence: 4, ..copy };
    store.db.put_cf(store.cf("diffs"), keys::file("f", "copy"), encode(&racing)).unwrap();
    assert!(store.diff_to_send("f", &later, 3).unwrap().is_none());
}

#[test]
fn remote_indexes_are_kept_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let dev = DeviceId([5; 32]);
    store.put_remote(&dev, "f", Progress { index_id: 9, max_sequence: 4 }, &[file("x", 1, &[(2, 1)], 1, 2)]).unwrap();
    assert_eq!(store.progress(&dev, "f").unwrap().max_sequence, 4);
    assert_eq!(store.remote_devices("f").unwrap(), vec![dev]);
    assert_eq!(store.remote_records(&dev, "f").count(), 1);
    store.clear_remote(&dev, "f").unwrap();
    assert_eq!(store.remote_records(&dev, "f").count(), 0);
    assert_eq!(store.progress(&dev, "f").unwrap(), Progress::default());
}

/// A need queue read from its front after any mix of queueing, taking and clearing answers as a
/// plain ordered map does: the floor that spares a reader the deleted front never hides a need.
mod queue_floor {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8),
        Remove(u8),
        TakeFront(usize),
        ReadAfter(u8, u8, usize),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4, 0u8..40).prop_map(|(o, p)| Op::Put(o, p)),
            2 => (0u8..40).prop_map(Op::Remove),
            3 => (1usize..6).prop_map(Op::TakeFront),
            2 => (0u8..4, 0u8..40, 1usize..6).prop_map(|(o, p, n)| Op::ReadAfter(o, p, n)),
            1 => Just(Op::Clear),
        ]
    }

    fn key(order: u8, path: u8) -> NeedKey {
        NeedKey { order: [order, 0, 0], path: format!("p{path:02}") }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn reads_match_an_ordered_map(ops in proptest::collection::vec(op(), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            // path -> order, and the queue in pull order.
            let mut model: BTreeMap<NeedKey, ()> = BTreeMap::new();
            let mut by_path: BTreeMap<String, NeedKey> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Put(o, p) => {
                        let k = key(o, p);
                        if let Some(old) = by_path.insert(k.path.clone(), k.clone()) {
                            model.remove(&old);
                        }
                        model.insert(k.clone(), ());
                        store.put_needs("f", &[(k, 1, Vec::new())]).unwrap();
                    }
                    Op::Remove(p) => {
                        let path = format!("p{p:02}");
                        if let Some(old) = by_path.remove(&path) {
                            model.remove(&old);
                        }
                        store.remove_needs("f", &[path.as_str()]).unwrap();
                    }
                    Op::TakeFront(n) => {
                        let got: Vec<NeedKey> = store.needs_after("f", None, n).unwrap().into_iter().map(|(k, _)| k).collect();
                        let want: Vec<NeedKey> = model.keys().take(n).cloned().collect();
                        prop_assert_eq!(&got, &want);
                        for k in got {
                            by_path.remove(&k.path);
                            model.remove(&k);
                            store.remove_needs("f", &[k.path.as_str()]).unwrap();
                        }
                    }
                    Op::ReadAfter(o, p, n) => {
                        let after = key(o, p);
                        let got: Vec<NeedKey> = store.needs_after("f", Some(&after), n).unwrap().into_iter().map(|(k, _)| k).collect();
                        let want: Vec<NeedKey> = model.keys().filter(|k| **k > after).take(n).cloned().collect();
                        prop_assert_eq!(got, want);
                    }
                    Op::Clear => {
                        model.clear();
                        by_path.clear();
                        store.clear_needs("f").unwrap();
                    }
                }
                prop_assert_eq!(store.need_counts("f").records, model.len() as u64);
            }
        }
    }
}
