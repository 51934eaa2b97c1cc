//! An index update as a peer sends it: protobuf bytes decoded with prost, then every record through
//! `wire::from_wire` exactly as the Index actor does it (a record sent as chunk edits finds its
//! base among the earlier records of the same batch; the first refused record ends the batch).
//! Every accepted record must be valid and must survive both wire forms (whole, and as edits
//! against its base) unchanged.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use syncnode::core::{chunks, Chunk, FileKind, FileRecord, ShortId, VersionVector};
use syncnode::net::proto;
use syncnode::net::wire::{from_wire, to_wire, Diff};
use syncnode_fuzz::{assert_valid_record, write_seeds_if_asked};

fn record(path: &str, sequence: u64, sizes: &[u32], kind: FileKind, deleted: bool) -> FileRecord {
    let chunks = chunks::with_offsets(
        sizes.iter().enumerate().map(|(i, s)| Chunk { offset: 0, size: *s, hash: [i as u8 + 1; 32] }).collect(),
    );
    FileRecord {
        path: path.into(),
        kind,
        size: chunks.iter().map(|c| c.size as u64).sum(),
        mtime_ns: 1_700_000_000_000_000_000,
        permissions: 0o644,
        version: VersionVector::from_counters([(ShortId(7), sequence), (ShortId(9), 3)]),
        deleted,
        sequence,
        modified_by: ShortId(7),
        chunks,
        link_target: String::new(),
    }
}

fn update(files: Vec<proto::FileInfo>) -> Vec<u8> {
    proto::IndexUpdate { folder: "default".into(), index_id: 42, files }.encode_to_vec()
}

fn seeds() -> Vec<Vec<u8>> {
    let v1 = record("docs/big.bin", 3, &[65536, 65536, 4096, 65536], FileKind::File, false);
    let mut v2 = record("docs/big.bin", 5, &[65536, 1000, 4096, 65536, 77], FileKind::File, false);
    v2.chunks[1].hash = [0xee; 32];
    v2.chunks[4].hash = [0xdd; 32];
    let edits = chunks::diff(&v1.chunks, &v2.chunks);
    vec![
        update(vec![to_wire(&record("a.txt", 1, &[10], FileKind::File, false), None)]),
        update(vec![
            to_wire(&record("dir", 2, &[], FileKind::Directory, false), None),
            to_wire(&record("dir/gone", 4, &[], FileKind::File, true), None),
            to_wire(&record("dir/empty", 6, &[], FileKind::File, false), None),
        ]),
        update(vec![
            to_wire(&v1, None),
            to_wire(&v2, Some(Diff { base: v1.sequence, base_path: None, edits: &edits })),
        ]),
    ]
}

fuzz_target!(
    init: write_seeds_if_asked(seeds),
    |data: &[u8]| {
        let Ok(update) = proto::IndexUpdate::decode(data) else { return };
        let mut batch: HashMap<String, FileRecord> = HashMap::new();
        for info in update.files {
            let sent_base = info.base_sequence;
            let lookup = |batch: &HashMap<String, FileRecord>, path: &str, seq: u64| batch.get(path).filter(|r| r.sequence == seq).map(|r| r.chunks.clone());
            let Ok(r) = from_wire(info, |p, s| lookup(&batch, p, s)) else { return };
            assert_valid_record(&r);
            // Sent whole, the record comes back as it is.
            assert_eq!(from_wire(to_wire(&r, None), |_, _| None).as_ref().ok(), Some(&r), "whole-record round trip");
            // Sent as edits against the base it came with (or the batch's earlier record of the
            // path), it comes back as it is too.
            if let Some(base) = batch.get(&r.path).filter(|b| b.sequence != 0 && (sent_base == 0 || b.sequence == sent_base)) {
                let edits = chunks::diff(&base.chunks, &r.chunks);
                let back = from_wire(to_wire(&r, Some(Diff { base: base.sequence, base_path: None, edits: &edits })), |p, s| lookup(&batch, p, s));
                assert_eq!(back.as_ref().ok(), Some(&r), "edit-script round trip against sequence {}", base.sequence);
            }
            batch.insert(r.path.clone(), r);
        }
    }
);
