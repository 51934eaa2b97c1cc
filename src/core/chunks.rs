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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("chunk edit copies chunks {from}..{end} of a list of {len}")]
pub struct EditOutOfRange {
    pub from: u32,
    pub end: u64,
    pub len: usize,
}

/// Rebuilds a chunk list from `old` and an edit script, recomputing offsets.
pub fn apply(old: &[Chunk], edits: &[ChunkEdit]) -> Result<Vec<Chunk>, EditOutOfRange> {
    let mut out = Vec::new();
    for edit in edits {
        let end = edit.copy_from as u64 + edit.copy_len as u64;
        if end > old.len() as u64 {
            return Err(EditOutOfRange { from: edit.copy_from, end, len: old.len() });
        }
        out.extend_from_slice(&old[edit.copy_from as usize..end as usize]);
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
        assert_eq!(apply(&old, &edits).unwrap(), new);
    }

    #[test]
    fn a_shifted_list_is_copied_not_resent() {
        let old = list(&(0..100).collect::<Vec<_>>());
        let mut ids = vec![200u8];
        ids.extend(1..100);
        let new = list(&ids);
        let edits = diff(&old, &new);
        assert_eq!(edits.iter().map(|e| e.insert.len()).sum::<usize>(), 1);
        assert_eq!(apply(&old, &edits).unwrap(), new);
    }

    #[test]
    fn out_of_range_copies_are_refused() {
        let bad = [ChunkEdit { copy_from: 5, copy_len: 1, insert: vec![] }];
        assert!(apply(&list(&[1, 2]), &bad).is_err());
    }

    proptest! {
        #[test]
        fn applying_the_diff_rebuilds_the_new_list(
            old in proptest::collection::vec(0u8..20, 0..40),
            new in proptest::collection::vec(0u8..25, 0..40),
        ) {
            let (old, new) = (list(&old), list(&new));
            let edits = diff(&old, &new);
            prop_assert_eq!(apply(&old, &edits).unwrap(), new.clone());
            prop_assert!(is_consistent(&new, new.iter().map(|c| c.size as u64).sum()));
        }
    }
}
