//! Chunk-list edit scripts (`core::chunks`): `apply` with any script against any base must either
//! refuse an out-of-range copy or build exactly the list a plain model builds, with contiguous
//! offsets; `diff` followed by `apply` must rebuild the new list, and never insert more chunks
//! than the new list has.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use syncnode::core::chunks::{
    apply, diff, expanded_len, is_consistent, with_offsets, ChunkEdit, EditError, MAX_CHUNKS_PER_RECORD,
};
use syncnode::core::Chunk;

/// A chunk as (hash byte, size): few distinct hashes, so lists share chunks and copies happen.
type Spec = (u8, u16);

#[derive(Arbitrary, Debug)]
struct Input {
    old: Vec<Spec>,
    new: Vec<Spec>,
    /// (copy_from, copy_len, insert)
    edits: Vec<(u32, u32, Vec<Spec>)>,
}

fn list(spec: &[Spec]) -> Vec<Chunk> {
    // Size 0 never appears in a valid list; keep the model's lists valid.
    with_offsets(spec.iter().map(|(h, s)| Chunk { offset: 0, size: (*s as u32).max(1), hash: [*h % 16; 32] }).collect())
}

fuzz_target!(|input: Input| {
    let old = list(&input.old);
    let new = list(&input.new);
    let total = |l: &[Chunk]| l.iter().map(|c| c.size as u64).sum::<u64>();
    assert!(is_consistent(&old, total(&old)));

    // Any script: refused, or the model's result.
    let edits: Vec<ChunkEdit> = input
        .edits
        .iter()
        .map(|(from, len, insert)| ChunkEdit { copy_from: *from, copy_len: *len, insert: list(insert) })
        .collect();
    let model: Option<Vec<Chunk>> = (|| {
        let mut out = Vec::new();
        for e in &edits {
            out.extend_from_slice(old.get(e.copy_from as usize..e.copy_from as usize + e.copy_len as usize)?);
            out.extend_from_slice(&e.insert);
        }
        Some(with_offsets(out))
    })();
    // A small bound, so that scripts expanding past it fit in the fuzzer's inputs.
    const MAX: u64 = 64;
    let expanded = edits.iter().map(|e| e.copy_len as u64 + e.insert.len() as u64).sum::<u64>();
    assert_eq!(expanded_len(&edits), expanded);
    match apply(&old, &edits, MAX) {
        Ok(built) => {
            let model = model.expect("apply accepted a copy outside the base");
            assert_eq!(built, model);
            assert_eq!(built.len() as u64, expanded);
            assert!(expanded <= MAX, "apply built past its bound");
            assert!(is_consistent(&built, total(&built)), "offsets not contiguous");
        }
        Err(EditError::OutOfRange { end, len, .. }) => {
            assert!(model.is_none(), "apply refused a script that stays inside the base");
            assert!(end > len as u64 && len == old.len());
        }
        Err(EditError::TooLarge(n)) => {
            assert!(n == expanded && n > MAX, "refused {n} chunks, the script expands to {expanded}")
        }
    }

    // The script diff makes rebuilds the new list, and inserts only chunks the base lacks.
    let script = diff(&old, &new);
    assert_eq!(apply(&old, &script, MAX_CHUNKS_PER_RECORD).expect("diff produced an out-of-range copy"), new);
    let inserted: usize = script.iter().map(|e| e.insert.len()).sum();
    assert!(inserted <= new.len());
    for c in script.iter().flat_map(|e| &e.insert) {
        assert!(!old.iter().any(|o| o.hash == c.hash && o.size == c.size), "inserted a chunk the base holds");
    }
});
