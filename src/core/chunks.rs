//! Chunk lists and their differences. A changed record for a big file travels as an edit script
//! against the chunk list the peer already holds (copy runs of old chunks, plus new chunks), so a
//! one-byte change in a file of 4096 chunks costs a few dozen bytes, not 4096 hashes.

use std::collections::HashMap;

use super::record::Chunk;

/// One step of an edit script: copy `copy_len` old chunks from `copy_from`, then append `insert`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkEdit {
    pub copy_from: u32,
    pub copy_len: u32,
    pub insert: Vec<Chunk>,
}

/// About what one chunk costs on the wire (hash, offset, size and their protobuf tags).
const WIRE_CHUNK: usize = 48;
/// About what one edit's copy run costs on the wire.
const WIRE_EDIT: usize = 12;

/// Whether announcing a file as `edits` from another path's record (a rename, move or copy) is
/// cheaper on the wire than its own list of `chunks` chunks, given the length of the other path
/// (sent with it). Half the cost or less: a reference that saves a few bytes is not worth tying
/// the record to another path.
pub fn reference_pays(edits: &[ChunkEdit], chunks: usize, base_path_len: usize) -> bool {
    let reference: usize =
        base_path_len + 8 + edits.iter().map(|e| WIRE_EDIT + e.insert.len() * WIRE_CHUNK).sum::<usize>();
    reference * 2 <= chunks * WIRE_CHUNK
}

/// Whether a file of `chunks` chunks is worth looking for a record to refer to at all. One chunk
/// costs `WIRE_CHUNK` bytes; a reference to it would save a few bytes at most (only for a base
/// path of four bytes or less, by `reference_pays`), and looking for a base costs a seek in
/// the chunk index: for a tree of small files, a seek per file on both nodes for nothing.
pub fn worth_a_reference(chunks: usize) -> bool {
    chunks >= 2
}

/// An edit script turning `old` into `new`. Greedy: every new chunk whose hash the old list has
/// starts or extends a copy run; everything else is inserted.
pub fn diff(old: &[Chunk], new: &[Chunk]) -> Vec<ChunkEdit> {
    let mut first_index: HashMap<([u8; 32], u32), u32> = HashMap::with_capacity(old.len());
    for (i, c) in old.iter().enumerate() {
        first_index.entry((c.hash, c.size)).or_insert(i as u32);
    }
    let same = |a: &Chunk, b: &Chunk| a.hash == b.hash && a.size == b.size;
    let mut edits: Vec<ChunkEdit> = Vec::new();
    for chunk in new {
        // Extend the current copy run when the next old chunk matches.
        if let Some(last) = edits.last_mut() {
            let next = (last.copy_from + last.copy_len) as usize;
            if last.insert.is_empty() && last.copy_len > 0 && old.get(next).is_some_and(|o| same(o, chunk)) {
                last.copy_len += 1;
                continue;
            }
        }
        match first_index.get(&(chunk.hash, chunk.size)) {
            Some(&from) => edits.push(ChunkEdit { copy_from: from, copy_len: 1, insert: Vec::new() }),
            None => match edits.last_mut() {
                Some(last) => last.insert.push(*chunk),
                None => edits.push(ChunkEdit { copy_from: 0, copy_len: 0, insert: vec![*chunk] }),
            },
        }
    }
    edits
}

/// Most chunks one record may have, whether sent whole or as edits. A whole list this long is
/// about what the largest message can carry (some 40 bytes a chunk in 17 MiB), so an edit script may
/// not expand past what the peer could have sent whole: at the 64 KiB average, files up to 32 GiB.
pub const MAX_CHUNKS_PER_RECORD: u64 = 1 << 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("chunk edit copies chunks {from}..{end} of a list of {len}")]
    OutOfRange { from: u32, end: u64, len: usize },
    #[error("chunk edits expand to {0} chunks, more than {MAX_CHUNKS_PER_RECORD}")]
    TooLarge(u64),
}

/// How many chunks an edit script expands to, without expanding it (no allocation: a script of a
/// few hundred KiB can describe terabytes of chunk list, and must be judged before it is built).
pub fn expanded_len(edits: &[ChunkEdit]) -> u64 {
    edits.iter().map(|e| e.copy_len as u64 + e.insert.len() as u64).sum()
}

/// Rebuilds a chunk list from `old` and an edit script, recomputing offsets. Every copy is checked
/// against `old`, and the length the script expands to against `max`, before anything is built.
pub fn apply(old: &[Chunk], edits: &[ChunkEdit], max: u64) -> Result<Vec<Chunk>, EditError> {
    let total = expanded_len(edits);
    if total > max {
        return Err(EditError::TooLarge(total));
    }
    for edit in edits {
        let end = edit.copy_from as u64 + edit.copy_len as u64;
        if end > old.len() as u64 {
            return Err(EditError::OutOfRange { from: edit.copy_from, end, len: old.len() });
        }
    }
    let mut out = Vec::with_capacity(total as usize);
    for edit in edits {
        out.extend_from_slice(&old[edit.copy_from as usize..(edit.copy_from + edit.copy_len) as usize]);
        out.extend_from_slice(&edit.insert);
    }
    Ok(with_offsets(out))
}

/// Sets each chunk's offset to the sum of the sizes before it.
pub fn with_offsets(mut chunks: Vec<Chunk>) -> Vec<Chunk> {
    let mut offset = 0u64;
    for c in &mut chunks {
        c.offset = offset;
        offset += c.size as u64;
    }
    chunks
}

/// Whether a chunk list describes exactly `size` bytes with contiguous offsets.
pub fn is_consistent(chunks: &[Chunk], size: u64) -> bool {
    let mut offset = 0u64;
    for c in chunks {
        if c.offset != offset || c.size == 0 {
            return false;
        }
        offset += c.size as u64;
    }
    offset == size
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list(ids: &[u8]) -> Vec<Chunk> {
        with_offsets(ids.iter().map(|i| Chunk { offset: 0, size: 100 + *i as u32, hash: [*i; 32] }).collect())
    }

    #[test]
    fn one_changed_chunk_costs_one_insert() {
        let old = list(&(0..200).collect::<Vec<_>>());
        let mut ids: Vec<u8> = (0..200).collect();
        ids[100] = 250;
        let new = list(&ids);
        let edits = diff(&old, &new);
        let inserted: usize = edits.iter().map(|e| e.insert.len()).sum();
        assert_eq!(inserted, 1);
        assert!(edits.len() <= 2, "{edits:?}");
        assert_eq!(apply(&old, &edits, MAX_CHUNKS_PER_RECORD).unwrap(), new);
    }

    #[test]
    fn a_shifted_list_is_copied_not_resent() {
        let old = list(&(0..100).collect::<Vec<_>>());
        let mut ids = vec![200u8];
        ids.extend(1..100);
        let new = list(&ids);
        let edits = diff(&old, &new);
        assert_eq!(edits.iter().map(|e| e.insert.len()).sum::<usize>(), 1);
        assert_eq!(apply(&old, &edits, MAX_CHUNKS_PER_RECORD).unwrap(), new);
    }

    #[test]
    fn out_of_range_copies_are_refused() {
        let bad = [ChunkEdit { copy_from: 5, copy_len: 1, insert: vec![] }];
        assert!(matches!(apply(&list(&[1, 2]), &bad, MAX_CHUNKS_PER_RECORD), Err(EditError::OutOfRange { .. })));
    }

    #[test]
    fn an_amplifying_script_is_refused_before_it_is_expanded() {
        // The attack: a 10,000-chunk base and 1,400 edits that each copy all of it would be
        // 14 million chunks (682 MiB); refused by arithmetic, in no time and no memory.
        let old = list(&[7u8; 10_000]);
        let edits = vec![ChunkEdit { copy_from: 0, copy_len: 10_000, insert: vec![] }; 1_400];
        assert_eq!(expanded_len(&edits), 14_000_000);
        assert_eq!(apply(&old, &edits, MAX_CHUNKS_PER_RECORD), Err(EditError::TooLarge(14_000_000)));
        // Counted in u64: copy lengths near u32::MAX cannot wrap the sum.
        let huge = vec![ChunkEdit { copy_from: u32::MAX, copy_len: u32::MAX, insert: vec![] }; 3];
        assert_eq!(expanded_len(&huge), 3 * u32::MAX as u64);
        assert!(matches!(apply(&old, &huge, u64::MAX), Err(EditError::OutOfRange { .. })));
        // Right at the limit is fine.
        let fits = vec![ChunkEdit { copy_from: 0, copy_len: 10_000, insert: vec![] }; 3];
        assert_eq!(apply(&old, &fits, 30_000).unwrap().len(), 30_000);
        assert_eq!(apply(&old, &fits, 29_999), Err(EditError::TooLarge(30_000)));
    }

    proptest! {
        #[test]
        fn a_script_is_refused_exactly_when_it_expands_past_the_limit(
            old in proptest::collection::vec(0u8..20, 0..40),
            edits in proptest::collection::vec((0u32..50, 0u32..50, 0usize..4), 0..10),
            max in 0u64..200,
        ) {
            let old = list(&old);
            let edits: Vec<ChunkEdit> = edits.into_iter().map(|(from, len, ins)| ChunkEdit { copy_from: from, copy_len: len, insert: list(&vec![1; ins]) }).collect();
            let total = expanded_len(&edits);
            match apply(&old, &edits, max) {
                Ok(out) => { prop_assert!(total <= max); prop_assert_eq!(out.len() as u64, total); }
                Err(EditError::TooLarge(n)) => { prop_assert_eq!(n, total); prop_assert!(total > max); }
                Err(EditError::OutOfRange { end, .. }) => { prop_assert!(total <= max); prop_assert!(end > old.len() as u64); }
            }
        }

        #[test]
        fn applying_the_diff_rebuilds_the_new_list(
            old in proptest::collection::vec(0u8..20, 0..40),
            new in proptest::collection::vec(0u8..25, 0..40),
        ) {
            let (old, new) = (list(&old), list(&new));
            let edits = diff(&old, &new);
            prop_assert_eq!(apply(&old, &edits, MAX_CHUNKS_PER_RECORD).unwrap(), new.clone());
            prop_assert!(is_consistent(&new, new.iter().map(|c| c.size as u64).sum()));
        }
    }

    #[test]
    fn a_reference_pays_for_a_renamed_big_file_and_not_for_a_small_or_different_one() {
        let chunk = |i: u32| Chunk { offset: 0, size: 65536, hash: blake3::hash(&i.to_le_bytes()).into() };
        let big = with_offsets((0..4096u32).map(chunk).collect());
        let same = diff(&big, &big);
        assert_eq!(same.len(), 1);
        assert!(reference_pays(&same, big.len(), 40));
        // One chunk: the path of the other record costs about what the chunk does.
        let one = vec![chunk(1)];
        assert!(!reference_pays(&diff(&one, &one), 1, 40));
        // Nothing in common: every chunk inserted.
        let other = with_offsets((5000..9096u32).map(chunk).collect());
        assert!(!reference_pays(&diff(&big, &other), other.len(), 40));
    }

    #[test]
    fn a_one_chunk_file_is_not_worth_a_search_for_a_base_it_could_only_save_bytes_on() {
        let chunk = |i: u32| Chunk { offset: 0, size: 1024, hash: blake3::hash(&i.to_le_bytes()).into() };
        let one = vec![chunk(1)];
        assert!(!worth_a_reference(1));
        // Its best case, an identical base: pays for no base path longer than four bytes.
        assert!((5..=4096).all(|len| !reference_pays(&diff(&one, &one), 1, len)));
        assert!(reference_pays(&diff(&one, &one), 1, 4));
        // Two chunks may already pay with an ordinary path.
        let two = with_offsets(vec![chunk(1), chunk(2)]);
        assert!(worth_a_reference(2) && reference_pays(&diff(&two, &two), 2, 20));
    }
}
