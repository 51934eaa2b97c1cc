//! Content-defined chunking (FastCDC 2020) with a BLAKE3 hash per chunk. Boundaries depend on the
//! content, so an insertion changes the chunks around it and not every chunk after it. Files are
//! read in windows of a few MiB: memory stays flat whatever the file size.
//!
//! A large file is chunked by several threads at once, each from its own part of the file, and the
//! parts are stitched into exactly the chunks a single pass from the start would give. A cut point
//! depends only on the bytes from its chunk's start (and the end of the file), so a chain of cuts
//! begun at an arbitrary offset, once it meets a cut of the true chain, continues identically; the
//! stitch runs the true chain from the end of one part until it lands on a cut of the next part,
//! which takes a chunk or two.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use fastcdc::v2020::{logarithm2, Normalization, MASKS};

use crate::core::Chunk;

/// Chunk size bounds around the configured average (FastCDC's recommended 1/4 and 4x).
#[derive(Debug, Clone, Copy)]
pub struct ChunkParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkParams {
    pub fn new(avg: u32) -> Self {
        let avg = avg.clamp(fastcdc::v2020::AVERAGE_MIN, fastcdc::v2020::AVERAGE_MAX);
        ChunkParams {
            min: (avg / 4).max(fastcdc::v2020::MINIMUM_MIN),
            avg,
            max: (avg * 4).min(fastcdc::v2020::MAXIMUM_MAX),
        }
    }

    /// FastCDC's cut point in `data` (which holds min(max, bytes left in the file) bytes): the length
    /// of the chunk that starts at `data[0]`. Same masks as `fastcdc::v2020::FastCDC::new`
    /// (normalization level 1).
    fn cut(&self, data: &[u8]) -> usize {
        let bits = logarithm2(self.avg);
        let level = Normalization::Level1.bits();
        let (mask_s, mask_l) = (MASKS[(bits + level) as usize], MASKS[(bits - level) as usize]);
        let (_, cut) = fastcdc::v2020::cut(
            data,
            self.min as usize,
            self.avg as usize,
            self.max as usize,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        );
        cut
    }
}

pub fn hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// Below this many bytes per thread a file is chunked by one thread.
pub const PART_MIN: u64 = 8 << 20;
/// Bytes read per `pread`.
const WINDOW: usize = 4 << 20;

/// Chunks and hashes the file at `path`: its chunks and the number of bytes they cover. A file that
/// shrinks while it is read fails with `UnexpectedEof` (the scanner then waits for the next event).
pub fn chunk_file(path: &Path, params: ChunkParams) -> io::Result<(Vec<Chunk>, u64)> {
    let threads = crate::fs::cores();
    chunk_file_with(&File::open(path)?, params, threads, PART_MIN)
}

/// `chunk_file` on an open file, with at most `threads` threads of at least `part_min` bytes each.
pub fn chunk_file_with(
    file: &File,
    params: ChunkParams,
    threads: usize,
    part_min: u64,
) -> io::Result<(Vec<Chunk>, u64)> {
    let size = file.metadata()?.len();
    let parts = (size / part_min.max(1)).clamp(1, threads.max(1) as u64);
    let starts: Vec<u64> = (0..parts).map(|k| size * k / parts).collect();
    let end_of = |k: usize| starts.get(k + 1).copied().unwrap_or(size);
    // Each part: the chain of cuts begun at its start, up to the first chunk that begins past its end.
    let chains: Vec<io::Result<Vec<Chunk>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (1..starts.len())
            .map(|k| {
                let (start, end) = (starts[k], end_of(k));
                scope.spawn(move || {
                    Window::new(file, size, params).chain(start, |pos| pos >= end).map(|(chunks, _)| chunks)
                })
            })
            .collect();
        let first = Window::new(file, size, params).chain(0, |pos| pos >= end_of(0)).map(|(chunks, _)| chunks);
        std::iter::once(first).chain(workers.into_iter().map(|w| w.join().expect("chunker thread panicked"))).collect()
    });
    let mut chains = chains.into_iter();
    let mut chunks = chains.next().expect("one part at least")?;
    let mut window = Window::new(file, size, params);
    for (k, part) in chains.enumerate() {
        let (part, end) = (part?, end_of(k + 1));
        let mut pos = chunks.last().map_or(0, |c| c.offset + c.size as u64);
        // The true chain, from where it stands, until it lands on one of this part's cuts.
        let meets = |p: u64| part.binary_search_by_key(&p, |c| c.offset).ok();
        let (bridge, reached) = window.chain(pos, |p| p >= end || meets(p).is_some())?;
        chunks.extend(bridge);
        pos = reached;
        if let Some(i) = meets(pos) {
            chunks.extend_from_slice(&part[i..]);
        }
    }
    // The last part's chain, or the last bridge, ends at the end of the file.
    debug_assert_eq!(chunks.last().map_or(0, |c| c.offset + c.size as u64), size);
    Ok((chunks, size))
}

/// `chunk_file` for a file whose previous version was cut into `old` (covering `old_size` bytes):
/// the same chunks, found with less work. FastCDC's cut of a chunk depends on the chunk's bytes, the
/// byte after it (its gear hash reads one byte ahead) and how far the end of the file is (up to
/// `max`). So where the true chain of cuts stands at the start of an old chunk whose bytes are still
/// there, and so are the next old chunk's (which holds the byte after), at the same distance from
/// the end, the cut is the old one: only hashes are checked, no content-defined cutting. Cutting
/// runs from a chunk that changed until a cut chunk equals an old one again (one or two chunks after
/// an edit, whatever the shift). Chunks still in place are checked by all threads at once.
pub fn rechunk_file(path: &Path, params: ChunkParams, old: &[Chunk], old_size: u64) -> io::Result<(Vec<Chunk>, u64)> {
    let threads = crate::fs::cores();
    rechunk_file_with(&File::open(path)?, params, old, old_size, threads)
}

/// `rechunk_file` on an open file, with at most `threads` threads.
pub fn rechunk_file_with(
    file: &File,
    params: ChunkParams,
    old: &[Chunk],
    old_size: u64,
    threads: usize,
) -> io::Result<(Vec<Chunk>, u64)> {
    // Old chunks cut with other parameters (the chunk size setting changed) are no hint.
    let cut_like_this = old.iter().rev().skip(1).all(|c| (params.min..=params.max).contains(&c.size))
        && old.last().is_some_and(|c| c.size <= params.max);
    if !cut_like_this {
        return chunk_file_with(file, params, threads, PART_MIN);
    }
    let size = file.metadata()?.len();
    let to_end = |total: u64, pos: u64| total.saturating_sub(pos).min(params.max as u64);
    // Whether old chunk `j` may stand at `pos` of the new file, if its bytes are there.
    let fits =
        |j: usize, pos: u64| pos + old[j].size as u64 <= size && to_end(size, pos) == to_end(old_size, old[j].offset);
    // Whether old chunk `j`'s bytes are at `pos`.
    let holds = move |window: &mut Window, j: usize, pos: u64| -> io::Result<bool> {
        Ok(fits(j, pos) && window.hash_at(pos, old[j].size)? == old[j].hash)
    };
    let mut window = Window::new(file, size, params);
    // Which old chunks still hold their bytes where they were, checked by all threads when the first
    // and the last still do (an edit in place). Otherwise (an insertion or deletion shifts the rest)
    // each is checked when the chain gets there.
    let first_and_last = [0, old.len() - 1]
        .into_iter()
        .map(|j| holds(&mut window, j, old[j].offset))
        .collect::<io::Result<Vec<bool>>>()?;
    let groups = if first_and_last.iter().all(|&b| b) { threads.clamp(1, old.len()) } else { 0 };
    let in_place: Vec<bool> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..groups)
            .map(|g| {
                let range = old.len() * g / groups..old.len() * (g + 1) / groups;
                scope.spawn(move || -> io::Result<Vec<bool>> {
                    let mut window = Window::new(file, size, params);
                    range.map(|j| holds(&mut window, j, old[j].offset)).collect()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("chunker thread panicked"))
            .collect::<io::Result<Vec<Vec<bool>>>>()
            .map(|g| g.concat())
    })?;
    let by_hash: std::collections::HashMap<[u8; 32], usize> =
        old.iter().enumerate().rev().map(|(j, c)| (c.hash, j)).collect();
    // `holds`, with the answers above, and the last one kept: each place is asked twice, once for
    // the next chunk and once for the chunk.
    let mut last: Option<(usize, u64, bool)> = None;
    let mut there = |window: &mut Window, j: usize, pos: u64| -> io::Result<bool> {
        if j >= old.len() {
            return Ok(false);
        }
        if let Some(&answer) = in_place.get(j).filter(|_| pos == old[j].offset) {
            return Ok(answer);
        }
        if let Some((_, _, answer)) = last.filter(|&(k, p, _)| (k, p) == (j, pos)) {
            return Ok(answer);
        }
        let answer = holds(window, j, pos)?;
        last = Some((j, pos, answer));
        Ok(answer)
    };
    let mut chunks = Vec::new();
    let (mut pos, mut expected) = (0u64, Some(0usize));
    while pos < size {
        // The old chunk that would come next, if the chain is on old content here: kept if its bytes
        // and the byte after it (the next old chunk's first, or the end of the file) are unchanged.
        if let Some(j) = expected {
            let end = pos + old.get(j).map_or(0, |c| c.size as u64);
            if there(&mut window, j, pos)? && (end == size && j + 1 == old.len() || there(&mut window, j + 1, end)?) {
                chunks.push(Chunk { offset: pos, ..old[j] });
                pos = end;
                expected = Some(j + 1);
                continue;
            }
        }
        let (cut, next) = window.chain(pos, |p| p > pos)?;
        let chunk = cut[0];
        expected = by_hash.get(&chunk.hash).map(|&j| j + 1);
        chunks.push(chunk);
        pos = next;
    }
    Ok((chunks, size))
}

/// Reads a file in windows and cuts chunks from them.
struct Window<'a> {
    file: &'a File,
    size: u64,
    params: ChunkParams,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    at: u64,
}

impl<'a> Window<'a> {
    fn new(file: &'a File, size: u64, params: ChunkParams) -> Self {
        Window { file, size, params, buf: Vec::new(), at: 0 }
    }

    /// Bytes `pos .. pos + min(max, left)`, reading a new window if they are not all in this one.
    fn bytes(&mut self, pos: u64) -> io::Result<&[u8]> {
        let want = (self.size - pos).min(self.params.max as u64) as usize;
        let in_window = pos >= self.at && pos + want as u64 <= self.at + self.buf.len() as u64;
        if !in_window {
            let len = (self.size - pos).min(WINDOW.max(2 * self.params.max as usize) as u64) as usize;
            self.buf.resize(len, 0);
            self.file.read_exact_at(&mut self.buf, pos)?;
            self.at = pos;
        }
        let from = (pos - self.at) as usize;
        Ok(&self.buf[from..from + want])
    }

    /// The hash of `len` bytes at `pos` (at most `max`).
    fn hash_at(&mut self, pos: u64, len: u32) -> io::Result<[u8; 32]> {
        Ok(hash(&self.bytes(pos)?[..len as usize]))
    }

    /// Cuts chunks from `pos` on while `stop(start of the next chunk)` is false and the file has
    /// bytes left; returns them and where the next chunk would start.
    fn chain(&mut self, mut pos: u64, stop: impl Fn(u64) -> bool) -> io::Result<(Vec<Chunk>, u64)> {
        let mut chunks = Vec::new();
        while pos < self.size && !stop(pos) {
            let params = self.params;
            let data = self.bytes(pos)?;
            let len = params.cut(data);
            chunks.push(Chunk { offset: pos, size: len as u32, hash: hash(&data[..len]) });
            pos += len as u64;
        }
        Ok((chunks, pos))
    }
}

/// Reads `size` bytes at `offset`; `None` when the file is shorter.
pub fn read_range(file: &File, offset: u64, size: u32) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; size as usize];
    match file.read_exact_at(&mut buf, offset) {
        Ok(()) => Ok(Some(buf)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference: fastcdc's own streaming chunker over the whole input, one pass from the start.
    fn chunk_reader<R: io::Read>(source: R, params: ChunkParams) -> io::Result<(Vec<Chunk>, u64)> {
        let mut chunks = Vec::new();
        let mut size = 0u64;
        for piece in fastcdc::v2020::StreamCDC::new(source, params.min, params.avg, params.max) {
            let piece = piece.map_err(|e| io::Error::other(e.to_string()))?;
            chunks.push(Chunk { offset: piece.offset, size: piece.length as u32, hash: hash(&piece.data) });
            size = piece.offset + piece.length as u64;
        }
        Ok((chunks, size))
    }

    fn temp_file(data: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        io::Write::write_all(&mut file, data).unwrap();
        file
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn an_insertion_changes_only_nearby_chunks() {
        let params = ChunkParams::new(8 * 1024);
        let data = pseudo_random(1 << 20, 7);
        let (before, size) = chunk_reader(&data[..], params).unwrap();
        assert_eq!(size, data.len() as u64);
        let mut shifted = b"0123456789".to_vec();
        shifted.extend_from_slice(&data);
        let (after, _) = chunk_reader(&shifted[..], params).unwrap();
        let old: std::collections::HashSet<_> = before.iter().map(|c| c.hash).collect();
        let new_chunks = after.iter().filter(|c| !old.contains(&c.hash)).count();
        assert!(new_chunks <= 2, "{new_chunks} of {} chunks changed", after.len());
        assert!(crate::core::chunks::is_consistent(&after, shifted.len() as u64));
    }

    #[test]
    fn an_empty_input_has_no_chunks() {
        let (chunks, size) = chunk_reader(&b""[..], ChunkParams::new(65536)).unwrap();
        assert!(chunks.is_empty());
        assert_eq!(size, 0);
    }

    #[test]
    fn a_file_in_parallel_parts_gives_the_chunks_of_one_pass() {
        let params = ChunkParams::new(64 * 1024);
        let data = pseudo_random(40 << 20, 11);
        let (reference, _) = chunk_reader(&data[..], params).unwrap();
        let file = temp_file(&data);
        for threads in [1, 2, 3, 7] {
            let (chunks, size) = chunk_file_with(&file, params, threads, 1 << 20).unwrap();
            assert_eq!(size, data.len() as u64);
            assert_eq!(chunks, reference, "{threads} threads");
        }
    }

    #[test]
    fn a_file_that_shrinks_while_read_is_an_unexpected_eof() {
        let file = temp_file(&pseudo_random(1 << 20, 3));
        let shrinking = Window { file: &file, size: 2 << 20, params: ChunkParams::new(4096), buf: Vec::new(), at: 0 };
        let err = { shrinking }.chain(0, |_| false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// `data` after one of a user's edits at `at`: a flipped byte, an insertion, a deletion, an
    /// append, a truncation, or a rewrite of a run.
    fn edited(data: &[u8], kind: u8, at: usize, len: usize) -> Vec<u8> {
        let at = at % (data.len() + 1);
        let mut out = data.to_vec();
        match kind % 6 {
            0 if !data.is_empty() => out[at.min(data.len() - 1)] ^= 0x5a,
            1 => out.splice(at..at, pseudo_random(len, at as u64 | 1)).for_each(drop),
            2 => out.drain(at..(at + len).min(data.len())).for_each(drop),
            3 => out.extend(pseudo_random(len, 5)),
            4 => out.truncate(at),
            _ => out[at..(at + len).min(data.len())].fill(7),
        }
        out
    }

    #[test]
    fn rechunking_with_the_old_chunks_gives_the_chunks_of_one_pass() {
        let params = ChunkParams::new(64 * 1024);
        let data = pseudo_random(24 << 20, 13);
        let (old, old_size) = chunk_file_with(&temp_file(&data), params, 1, PART_MIN).unwrap();
        for (kind, at) in [(0, 12 << 20), (1, 0), (1, 9 << 20), (2, 100), (3, 0), (4, 20 << 20), (5, 3 << 20)] {
            let new = edited(&data, kind, at, 100);
            let (reference, _) = chunk_reader(&new[..], params).unwrap();
            for threads in [1, 2, 3] {
                let (chunks, size) = rechunk_file_with(&temp_file(&new), params, &old, old_size, threads).unwrap();
                assert_eq!(size, new.len() as u64);
                assert_eq!(chunks, reference, "edit {kind} at {at}, {threads} threads");
            }
        }
        // Chunks of another chunk size are no hint, and mislead nothing.
        let (other, other_size) = chunk_file_with(&temp_file(&data), ChunkParams::new(8 * 1024), 1, PART_MIN).unwrap();
        let (chunks, _) = rechunk_file_with(&temp_file(&data), params, &other, other_size, 2).unwrap();
        assert_eq!(chunks, chunk_reader(&data[..], params).unwrap().0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Edits near the end (where the distance to the end decides cuts), runs of one byte (cuts
        /// only at the maximum size), repeated content (one hash at several old places).
        #[test]
        fn rechunked_edits_equal_one_pass(seed in any::<u64>(), len in 0usize..120_000, repeat in any::<bool>(), edits in proptest::collection::vec((any::<u8>(), any::<usize>(), 0usize..3000), 1..4), threads in 1usize..4) {
            let params = ChunkParams::new(256);
            let mut data = pseudo_random(len, seed | 1);
            if repeat && len > 4000 {
                let head = data[..2000].to_vec();
                data[2000..4000].copy_from_slice(&head);
                data[len / 2..].fill(0);
            }
            let (old, old_size) = chunk_reader(&data[..], params).unwrap();
            let mut new = data;
            for (kind, at, n) in edits {
                new = edited(&new, kind, at, n);
            }
            let (reference, _) = chunk_reader(&new[..], params).unwrap();
            let (chunks, size) = rechunk_file_with(&temp_file(&new), params, &old, old_size, threads).unwrap();
            prop_assert_eq!(size, new.len() as u64);
            prop_assert_eq!(chunks, reference);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Small chunks and parts, so that parts often start inside long runs of one byte (where
        /// cuts fall only at the maximum size) and chains meet late or never.
        #[test]
        fn stitched_parts_equal_one_pass(seed in any::<u64>(), len in 0usize..200_000, runs in 0usize..4, threads in 1usize..6, part_min in 1u64..40_000) {
            let mut data = pseudo_random(len, seed | 1);
            for r in 0..runs {
                let at = (seed as usize).wrapping_mul(r + 1) % (len.max(1));
                let end = (at + 20_000).min(len);
                data[at..end].fill(r as u8);
            }
            let params = ChunkParams::new(256);
            let (reference, _) = chunk_reader(&data[..], params).unwrap();
            let (chunks, size) = chunk_file_with(&temp_file(&data), params, threads, part_min).unwrap();
            prop_assert_eq!(size, len as u64);
            prop_assert_eq!(chunks, reference);
        }
    }
}
