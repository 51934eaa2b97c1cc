//! One record from a peer, built field by field from structured input (so the fuzzer reaches the
//! deep checks without first learning protobuf): a base chunk list we hold, and a record sent
//! either whole or as an edit script against that base. `from_wire` must accept exactly the
//! records that are valid, and what it accepts must survive the trip back.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use syncnode::core::{chunks, Chunk};
use syncnode::net::proto;
use syncnode::net::wire::{from_wire, to_wire, Diff, WireError};
use syncnode_fuzz::assert_valid_record;

#[derive(Arbitrary, Debug)]
struct WireChunk {
    offset: u64,
    size: u32,
    /// A short hash lets the fuzzer produce the "not 32 bytes" case; `None` is a well-formed one.
    hash: Option<Vec<u8>>,
    fill: u8,
}

#[derive(Arbitrary, Debug)]
struct Edit {
    copy_from: u32,
    copy_len: u32,
    insert: Vec<WireChunk>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    path: String,
    kind: i32,
    size: u64,
    /// Set the size to what the chunks add up to (else the fuzzer would rarely hit a valid one).
    size_from_chunks: bool,
    mtime_ns: i64,
    permissions: u32,
    counters: Vec<(u64, u64)>,
    deleted: bool,
    sequence: u64,
    modified_by: u64,
    chunks: Vec<WireChunk>,
    /// Give the whole chunks contiguous offsets first.
    fix_offsets: bool,
    /// The base we hold: (sequence, chunk sizes); each chunk hashes to its index.
    base: Option<(u64, Vec<u16>)>,
    base_sequence: u64,
    edits: Vec<Edit>,
    /// The base is another path's record (a rename sent as a reference), when not empty.
    base_path: String,
    /// What a symlink points to (text; refused on anything but a live link).
    link_target: String,
}

fn wire_chunk(c: &WireChunk) -> proto::Chunk {
    proto::Chunk { offset: c.offset, size: c.size, hash: c.hash.clone().unwrap_or_else(|| vec![c.fill; 32]) }
}

fuzz_target!(|input: Input| {
    let base: Option<(u64, Vec<Chunk>)> = input.base.as_ref().map(|(seq, sizes)| {
        (
            *seq,
            chunks::with_offsets(
                sizes
                    .iter()
                    .enumerate()
                    .map(|(i, s)| Chunk { offset: 0, size: *s as u32, hash: [i as u8; 32] })
                    .collect(),
            ),
        )
    });
    let mut whole: Vec<proto::Chunk> = input.chunks.iter().map(wire_chunk).collect();
    if input.fix_offsets {
        let mut offset = 0u64;
        for c in &mut whole {
            c.offset = offset;
            offset = offset.wrapping_add(c.size as u64);
        }
    }
    let edits: Vec<proto::ChunkEdit> = input
        .edits
        .iter()
        .map(|e| proto::ChunkEdit {
            copy_from: e.copy_from,
            copy_len: e.copy_len,
            insert: e.insert.iter().map(wire_chunk).collect(),
        })
        .collect();
    // The chunk list the record describes, as a model computes it (None: out-of-range copy).
    let described: Option<Vec<(u32, Vec<u8>)>> = if input.base_sequence != 0 {
        let old = base.as_ref().filter(|(seq, _)| *seq == input.base_sequence).map(|(_, c)| c);
        old.and_then(|old| {
            let mut out = Vec::new();
            for e in &edits {
                let end = e.copy_from as usize + e.copy_len as usize;
                out.extend(old.get(e.copy_from as usize..end)?.iter().map(|c| (c.size, c.hash.to_vec())));
                out.extend(e.insert.iter().map(|c| (c.size, c.hash.clone())));
            }
            Some(out)
        })
    } else {
        Some(whole.iter().map(|c| (c.size, c.hash.clone())).collect())
    };
    let size =
        if input.size_from_chunks { described.iter().flatten().map(|(s, _)| *s as u64).sum() } else { input.size };
    let info = proto::FileInfo {
        path: input.path.clone(),
        kind: input.kind,
        size,
        mtime_ns: input.mtime_ns,
        permissions: input.permissions,
        version: Some(proto::Vector {
            counters: input.counters.iter().map(|(id, value)| proto::Counter { id: *id, value: *value }).collect(),
        }),
        deleted: input.deleted,
        sequence: input.sequence,
        modified_by: input.modified_by,
        chunks: whole,
        base_sequence: input.base_sequence,
        edits,
        base_path: input.base_path.clone(),
        link_target: input.link_target.clone(),
    };
    // We hold the base under the path it names (the record's own, or the other one).
    let base_at = if input.base_path.is_empty() { input.path.as_str() } else { input.base_path.as_str() };
    let lookup = |p: &str, seq: u64| base.as_ref().filter(|(s, _)| *s == seq && p == base_at).map(|(_, c)| c.clone());
    match from_wire(info, lookup) {
        Ok(r) => {
            assert_valid_record(&r);
            assert_eq!(r.path, input.path);
            assert_eq!(r.sequence, input.sequence);
            let described = described.expect("accepted a record whose edits copy outside the base");
            if r.is_file() && !r.deleted {
                let got: Vec<(u32, Vec<u8>)> = r.chunks.iter().map(|c| (c.size, c.hash.to_vec())).collect();
                assert_eq!(got, described, "chunks differ from what the record described");
            }
            assert_eq!(from_wire(to_wire(&r, None), |_, _| None).as_ref().ok(), Some(&r), "whole-record round trip");
            if let Some((seq, old)) = base.as_ref().filter(|(seq, _)| *seq != 0) {
                let edits = chunks::diff(old, &r.chunks);
                let from_elsewhere = (!input.base_path.is_empty()).then_some(input.base_path.as_str());
                assert_eq!(
                    from_wire(to_wire(&r, Some(Diff { base: *seq, base_path: from_elsewhere, edits: &edits })), lookup)
                        .as_ref()
                        .ok(),
                    Some(&r),
                    "edit-script round trip"
                );
            }
        }
        Err(WireError::MissingBase { base: b, .. }) => assert!(base.as_ref().is_none_or(|(seq, _)| *seq != b)),
        Err(_) => {}
    }
});
