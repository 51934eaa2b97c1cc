use super::*;
use crate::core::record::fixtures::file;

#[test]
fn records_survive_the_wire() {
    let r = file("a/b", 3, &[(1, 2), (7, 9)], 12, 7);
    assert_eq!(from_wire(to_wire(&r, None), |_, _| None).unwrap(), r);
}

#[test]
fn a_renamed_file_travels_as_a_reference_to_the_record_it_came_from() {
    let old = file("old/name", 3, &[(1, 2)], 12, 7);
    let mut moved = old.clone();
    moved.path = "new/name".into();
    moved.sequence = 9;
    let edits = chunks::diff(&old.chunks, &moved.chunks);
    let info = to_wire(&moved, Some(Diff { base: 7, base_path: Some("old/name"), edits: &edits }));
    assert!(info.chunks.is_empty());
    assert_eq!(info.base_path, "old/name");
    let held = |path: &str, seq: u64| (path == "old/name" && seq == 7).then(|| old.chunks.clone());
    assert_eq!(from_wire(info.clone(), held).unwrap(), moved);
    // A base we do not hold is named as such; a base path that leaves the folder is refused.
    assert!(
        matches!(from_wire(info.clone(), |_, _| None), Err(WireError::MissingBase { path, .. }) if path == "old/name")
    );
    let mut escape = info.clone();
    escape.base_path = "../x".into();
    assert!(matches!(from_wire(escape, held), Err(WireError::Path { .. })));
    let mut orphan = info;
    orphan.base_sequence = 0;
    assert!(matches!(from_wire(orphan, held), Err(WireError::Invalid { .. })));
}

#[test]
fn links_travel_as_their_target_text_and_bad_targets_are_refused() {
    use crate::core::record::fixtures::link;
    for target in ["rel/x", "../../../etc", "/etc/passwd", "dangling", "a b\tc\u{e9}"] {
        let r = link("dir/l", target, &[(1, 2)], 12, 7);
        assert_eq!(from_wire(to_wire(&r, None), |_, _| None).unwrap(), r, "{target}");
    }
    let bad = |f: &dyn Fn(&mut proto::FileInfo)| {
        let mut info = to_wire(&link("l", "t", &[(1, 2)], 12, 7), None);
        f(&mut info);
        from_wire(info, |_, _| None).is_err()
    };
    assert!(bad(&|i| i.link_target.clear()), "a live link needs a target");
    assert!(bad(&|i| i.link_target = "a\0b".into()), "NUL");
    assert!(bad(&|i| i.link_target = "x".repeat(crate::core::record::MAX_LINK_TARGET + 1)), "length");
    assert!(bad(&|i| i.chunks = vec![proto::Chunk { offset: 0, size: 1, hash: vec![1; 32] }]), "chunks");
    assert!(bad(&|i| i.kind = proto::FileKind::File as i32), "a target on a file");
    assert!(bad(&|i| i.deleted = true), "a target on a tombstone");
    // The tombstone of a link travels without one, and a link's size is always 0.
    let gone = link("l", "t", &[(1, 2)], 12, 7).tombstone(ShortId(7), 0);
    assert_eq!(from_wire(to_wire(&gone, None), |_, _| None).unwrap(), gone);
    let mut sized = to_wire(&link("l", "t", &[(1, 2)], 12, 7), None);
    sized.size = 99;
    assert_eq!(from_wire(sized, |_, _| None).unwrap().size, 0);
}

#[test]
fn hostile_records_are_refused() {
    let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
    info.path = "../../etc/passwd".into();
    assert!(matches!(from_wire(info, |_, _| None), Err(WireError::Path { .. })));
    let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
    info.size = 1 << 40;
    assert!(from_wire(info, |_, _| None).is_err());
    let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
    info.chunks[0].hash.truncate(5);
    assert!(from_wire(info, |_, _| None).is_err());
    let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
    info.base_sequence = 4;
    assert!(matches!(from_wire(info, |_, _| None), Err(WireError::MissingBase { .. })));
}

#[test]
fn an_amplifying_edit_script_is_refused_before_it_is_expanded() {
    // A 10,000-chunk base and 1,400 edits copying all of it: 14 million chunks if expanded.
    let base: Vec<Chunk> = chunks::with_offsets(
        (0..10_000u32).map(|i| Chunk { offset: 0, size: 1000, hash: [(i % 251) as u8; 32] }).collect(),
    );
    let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
    info.chunks.clear();
    info.base_sequence = 9;
    info.edits = vec![proto::ChunkEdit { copy_from: 0, copy_len: 10_000, insert: vec![] }; 1_400];
    info.size = 14_000_000 * 1000;
    assert_eq!(record_chunks(&info), 14_000_000);
    let looked_up = std::cell::Cell::new(false);
    let result = from_wire(info.clone(), |_, _| {
        looked_up.set(true);
        Some(base.clone())
    });
    assert!(
        matches!(result, Err(WireError::Invalid { ref what, .. }) if what.contains("14000000 chunks")),
        "{result:?}"
    );
    assert!(!looked_up.get(), "refused before the base was even fetched");
    // The same in a message: refused as a whole by arithmetic.
    let update = proto::IndexUpdate { folder: "default".into(), index_id: 1, files: vec![info] };
    assert_eq!(check_update(&update), Err(UpdateError::TooManyChunks(14_000_000)));
    // Many records that each fit, but not together.
    let mut one = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
    one.chunks = vec![one.chunks[0].clone(); 100_000];
    let update = proto::IndexUpdate { folder: "default".into(), index_id: 1, files: vec![one; 6] };
    assert_eq!(check_update(&update), Err(UpdateError::TooManyChunks(600_000)));
    let many = proto::IndexUpdate {
        folder: "default".into(),
        index_id: 1,
        files: vec![proto::FileInfo::default(); MAX_FILES_PER_UPDATE + 1],
    };
    assert_eq!(check_update(&many), Err(UpdateError::TooManyFiles(MAX_FILES_PER_UPDATE + 1)));
    // Version vectors that each fit, but not together.
    let mut wide = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
    wide.version =
        Some(proto::Vector { counters: (1..=MAX_COUNTERS as u64).map(|id| proto::Counter { id, value: 1 }).collect() });
    let update = proto::IndexUpdate { folder: "default".into(), index_id: 1, files: vec![wide; 300] };
    assert_eq!(check_update(&update), Err(UpdateError::TooManyCounters(300 * MAX_COUNTERS as u64)));
}

#[test]
fn counters_and_sizes_near_overflow_are_refused_not_saturated() {
    for value in [u64::MAX, u64::MAX - 1, MAX_COUNTER + 1] {
        let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
        info.version.as_mut().unwrap().counters[0].value = value;
        assert!(
            matches!(from_wire(info, |_, _| None), Err(WireError::Invalid { ref what, .. }) if what.contains("near overflow"))
        );
    }
    let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
    info.version.as_mut().unwrap().counters[0].value = MAX_COUNTER;
    assert!(from_wire(info, |_, _| None).is_ok());
    let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
    info.version = Some(proto::Vector {
        counters: (1..=MAX_COUNTERS as u64 + 1).map(|id| proto::Counter { id, value: 1 }).collect(),
    });
    assert!(from_wire(info, |_, _| None).is_err());
    // A tombstone with a huge size, a chunk at an offset near overflow.
    let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
    info.deleted = true;
    info.chunks.clear();
    info.size = u64::MAX;
    assert!(from_wire(info, |_, _| None).is_err());
    let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
    info.chunks[0].offset = u64::MAX - 5;
    assert!(from_wire(info, |_, _| None).is_err());
}

#[test]
fn only_permission_bits_travel() {
    let mut r = file("a", 3, &[(1, 2)], 12, 7);
    r.permissions = 0o7755;
    assert_eq!(to_wire(&r, None).permissions, 0o755);
    let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
    info.permissions = 0o7777 | 0o170000;
    assert_eq!(from_wire(info, |_, _| None).unwrap().permissions, 0o777);
}

#[test]
fn chunk_requests_are_bounded() {
    let ok = proto::ChunkRequest {
        id: 1,
        folder: "default".into(),
        path: "a".into(),
        offset: 0,
        size: 65536,
        hash: vec![0; 32],
        signature: vec![],
    };
    assert_eq!(check_request(&ok), Ok([0; 32]));
    let bad = |f: &dyn Fn(&mut proto::ChunkRequest)| {
        let mut r = ok.clone();
        f(&mut r);
        check_request(&r).unwrap_err()
    };
    assert_eq!(bad(&|r| r.size = MAX_CHUNK_SIZE + 1).kind(), "size");
    assert_eq!(bad(&|r| r.size = 0).kind(), "size");
    assert_eq!(bad(&|r| r.offset = u64::MAX).kind(), "range");
    assert_eq!(bad(&|r| r.offset = MAX_FILE_SIZE).kind(), "range");
    assert_eq!(bad(&|r| r.hash = vec![1; 5]).kind(), "hash");
    assert_eq!(bad(&|r| r.path = "../x".into()).kind(), "path");
    assert_eq!(bad(&|r| r.signature = vec![0; MAX_SIGNATURE + 1]).kind(), "signature");
}

#[test]
fn a_refusal_travels_as_a_code_and_comes_back_typed() {
    let r = refusal(7, proto::ChunkError::Busy, "later".into());
    assert_eq!(r.id, 7);
    let e = answer(r).unwrap_err();
    assert_eq!(e, FetchError::Refused { code: proto::ChunkError::Busy, detail: "later".into() });
    assert!(e.worth_retrying());
    let gone = answer(refusal(1, proto::ChunkError::NoSuchChunk, String::new())).unwrap_err();
    assert!(!gone.worth_retrying());
    // An older peer's text-only error, or a code from a newer one, is still a refusal.
    let text_only = proto::ChunkResponse { id: 1, error: "nope".into(), ..Default::default() };
    assert!(matches!(answer(text_only), Err(FetchError::Refused { .. })));
    let unknown = proto::ChunkResponse { id: 1, code: 99, ..Default::default() };
    assert!(matches!(answer(unknown), Err(FetchError::Refused { .. })));
    let ok = proto::ChunkResponse { id: 1, data: vec![1, 2], encoding: 0, ..Default::default() };
    assert_eq!(answer(ok), Ok((vec![1, 2], 0)));
}

fn info(path: &str, chunks: usize, expanded: u32, counters: usize) -> proto::FileInfo {
    proto::FileInfo {
        path: path.into(),
        chunks: vec![proto::Chunk { offset: 0, size: 1, hash: vec![7; 32] }; chunks],
        edits: (expanded > 0)
            .then(|| proto::ChunkEdit { copy_len: expanded, ..Default::default() })
            .into_iter()
            .collect(),
        version: Some(proto::Vector { counters: vec![proto::Counter { id: 1, value: 1 }; counters] }),
        ..Default::default()
    }
}

/// Sends `records` as our index sender does, checking every message as the receiver would:
/// returns the paths sent, in order.
fn send_all(mut records: Vec<proto::FileInfo>) -> Vec<String> {
    use prost::Message as _;
    let mut sent = Vec::new();
    while !records.is_empty() {
        let n = fit_batch("default", &mut records);
        let batch = proto::IndexUpdate { folder: "default".into(), index_id: 1, files: records.drain(..n).collect() };
        assert!(n > 0 || batch.files.is_empty() && records.is_empty(), "an empty batch left records behind");
        assert_eq!(check_update(&batch), Ok(()));
        assert!(batch.encoded_len() <= MAX_INDEX_BYTES + 64, "{}", batch.encoded_len());
        sent.extend(batch.files.into_iter().map(|f| f.path));
    }
    sent
}

#[test]
fn our_index_batches_stay_within_what_the_receiver_accepts() {
    // Three records of 200,000 chunks: two fit one message by count, but not by bytes.
    let mut records = vec![info("a", 200_000, 0, 1), info("b", 200_000, 0, 1), info("c", 10, 0, 1)];
    let n = fit_batch("default", &mut records);
    assert!((1..3).contains(&n), "{n}");
    assert_eq!(send_all(records), ["a", "b", "c"]);
    // A record that no message could carry is skipped, not sent to be refused forever.
    let mut records = vec![info("huge", 600_000, 0, 1), info("small", 1, 0, 1)];
    assert_eq!(fit_batch("default", &mut records), 1);
    assert_eq!(records[0].path, "small");
    assert_eq!(send_all(vec![info("huge", 0, 600_000, 1)]), Vec::<String>::new());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

    /// Every batch passes `check_update` and fits a message; a record is left out only if
    /// it alone is over a limit, and the others go in order.
    #[test]
    fn every_batch_of_ours_passes_the_receivers_check(
        shapes in proptest::collection::vec(
            (0usize..3_000_000, 0usize..40, 0u32..700_000, 0usize..2_000), 0..300)
    ) {
        let records: Vec<proto::FileInfo> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(pad, chunks, expanded, counters))| {
                // Mostly small records; a few long paths to reach the byte limit.
                let pad = if i % 37 == 0 { pad } else { pad % 64 };
                info(&format!("{i}-{}", "x".repeat(pad)), chunks, expanded % (if i % 5 == 0 { 700_000 } else { 5_000 }), counters)
            })
            .collect();
        let sendable: Vec<String> = records
            .iter()
            .filter(|r| !INDEX_LIMITS.too_big(&record_cost(r)))
            .map(|r| r.path.clone())
            .collect();
        proptest::prop_assert_eq!(send_all(records), sendable);
    }
}
