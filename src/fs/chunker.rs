//! Content-defined chunking (FastCDC 2020) with a BLAKE3 hash per chunk. Boundaries depend on the
//! content, so an insertion changes the chunks around it and not every chunk after it. Files are
//! streamed: memory stays at a few chunks whatever the file size.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use fastcdc::v2020::StreamCDC;

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
}

pub fn hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// Chunks and hashes everything `source` yields.
pub fn chunk_reader<R: Read>(source: R, params: ChunkParams) -> io::Result<(Vec<Chunk>, u64)> {
    let mut chunks = Vec::new();
    let mut size = 0u64;
    for piece in StreamCDC::new(source, params.min, params.avg, params.max) {
        let piece = piece.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => e,
            other => io::Error::other(other.to_string()),
        })?;
        chunks.push(Chunk { offset: piece.offset, size: piece.length as u32, hash: hash(&piece.data) });
        size = piece.offset + piece.length as u64;
    }
    Ok((chunks, size))
}

pub fn chunk_file(path: &Path, params: ChunkParams) -> io::Result<(Vec<Chunk>, u64)> {
    let file = File::open(path)?;
    chunk_reader(io::BufReader::with_capacity(1 << 20, file), params)
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
}
