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
        ChunkParams { min: (avg / 4).max(fastcdc::v2020::MINIMUM_MIN), avg, max: (avg * 4).min(fastcdc::v2020::MAXIMUM_MAX) }
    }

    /// FastCDC's cut point in `data` (which holds min(max, bytes left in the file) bytes): the length
    /// of the chunk that starts at `data[0]`. Same masks as `fastcdc::v2020::FastCDC::new`
    /// (normalization level 1).
    fn cut(&self, data: &[u8]) -> usize {
        let bits = logarithm2(self.avg);
        let level = Normalization::Level1.bits();
        let (mask_s, mask_l) = (MASKS[(bits + level) as usize], MASKS[(bits - level) as usize]);
        let (_, cut) = fastcdc::v2020::cut(data, self.min as usize, self.avg as usize, self.max as usize, mask_s, mask_l, mask_s << 1, mask_l << 1);
        cut
    }
}

pub fn hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// Below this many bytes per thread a file is chunked by one thread.
const PART_MIN: u64 = 8 << 20;
/// Bytes read per `pread`.
const WINDOW: usize = 4 << 20;

/// Chunks and hashes the file at `path`: its chunks and the number of bytes they cover. A file that
/// shrinks while it is read fails with `UnexpectedEof` (the scanner then waits for the next event).
pub fn chunk_file(path: &Path, params: ChunkParams) -> io::Result<(Vec<Chunk>, u64)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    chunk_file_with(&File::open(path)?, params, threads, PART_MIN)
}

/// `chunk_file` on an open file, with at most `threads` threads of at least `part_min` bytes each.
pub fn chunk_file_with(file: &File, params: ChunkParams, threads: usize, part_min: u64) -> io::Result<(Vec<Chunk>, u64)> {
    let size = file.metadata()?.len();
    let parts = (size / part_min.max(1)).clamp(1, threads.max(1) as u64);
    let starts: Vec<u64> = (0..parts).map(|k| size * k / parts).collect();
    let end_of = |k: usize| starts.get(k + 1).copied().unwrap_or(size);
    // Each part: the chain of cuts begun at its start, up to the first chunk that begins past its end.
    let chains: Vec<io::Result<Vec<Chunk>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (1..starts.len())
            .map(|k| {
                let (start, end) = (starts[k], end_of(k));
                scope.spawn(move || Window::new(file, size, params).chain(start, |pos| pos >= end).map(|(chunks, _)| chunks))
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
