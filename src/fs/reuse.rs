//! Local reuse: the chunks of a new version that files on this node already hold are copied into the
//! download instead of crossing the network. Adjacent chunks that sit one after another in one
//! source file form a run, read with one `pread` and written with one `pwrite`; every chunk is still
//! checked against its BLAKE3 hash (the chunk index and our records may be stale), and runs are
//! shared among a few threads, so an edit in a large file costs about one read and one write of it.
//! Sources are named by folder root and relative path and opened with `open_inside`: a chunk is
//! never read through a symlink, whatever the chunk index says.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

use crate::core::Chunk;

use super::apply::TempFile;
use super::chunker::hash;
use super::safe_path::open_inside;

/// A local file that may hold chunks: a folder's root and a path inside it.
pub type Source = (PathBuf, String);

/// Longest run read at once, bounding memory at one run per thread.
pub const MAX_RUN: u64 = 4 << 20;

/// Where one chunk of the new version can be read locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    /// Index into the plan's sources.
    pub source: usize,
    pub offset: u64,
}

/// Chunks `first .. first + count` of the new version, read from `source` at `offset` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub source: usize,
    pub offset: u64,
    pub first: usize,
    pub count: usize,
    pub bytes: u64,
}

/// Groups located chunks into runs: consecutive chunks of the new version that follow each other in
/// one source file, at most `max_run` bytes (a single larger chunk is a run of its own).
pub fn plan_runs(chunks: &[Chunk], located: &[Option<Located>], max_run: u64) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (i, (chunk, at)) in chunks.iter().zip(located).enumerate() {
        let Some(at) = at else { continue };
        let size = chunk.size as u64;
        match runs.last_mut() {
            Some(run)
                if run.first + run.count == i
                    && run.source == at.source
                    && run.offset + run.bytes == at.offset
                    && run.bytes + size <= max_run =>
            {
                run.count += 1;
                run.bytes += size;
            }
            _ => runs.push(Run { source: at.source, offset: at.offset, first: i, count: 1, bytes: size }),
        }
    }
    runs
}

/// What to copy, and from which files.
#[derive(Debug, Default)]
pub struct Plan {
    pub sources: Vec<Source>,
    pub located: Vec<Option<Located>>,
}

impl Plan {
    /// `find(i)` names a file (folder root and relative path) and offset holding chunk `i`, if any.
    pub fn build(count: usize, mut find: impl FnMut(usize) -> Option<(Source, u64)>) -> Plan {
        let mut index: HashMap<Source, usize> = HashMap::new();
        let mut plan = Plan::default();
        for i in 0..count {
            let at = find(i).map(|(path, offset)| {
                let source = *index.entry(path.clone()).or_insert_with(|| {
                    plan.sources.push(path);
                    plan.sources.len() - 1
                });
                Located { source, offset }
            });
            plan.located.push(at);
        }
        plan
    }

    /// Chunks with no local copy.
    pub fn missing(&self) -> Vec<usize> {
        (0..self.located.len()).filter(|&i| self.located[i].is_none()).collect()
    }

    /// Copies every located chunk whose bytes still match into `temp`, with up to `threads` threads;
    /// `copied(bytes)` is called as runs land. Returns which chunks were filled.
    pub fn copy(&self, chunks: &[Chunk], temp: &TempFile, threads: usize, copied: &(dyn Fn(u64) + Sync)) -> Vec<bool> {
        let runs = plan_runs(chunks, &self.located, MAX_RUN);
        let filled: Vec<AtomicBool> = chunks.iter().map(|_| AtomicBool::new(false)).collect();
        let next = AtomicUsize::new(0);
        let work = || {
            let mut open: Option<(usize, File)> = None;
            let mut buf = Vec::new();
            while let Some(run) = runs.get(next.fetch_add(1, Relaxed)) {
                if open.as_ref().is_none_or(|(s, _)| *s != run.source) {
                    let (root, rel) = &self.sources[run.source];
                    open = open_inside(root, rel).ok().map(|f: File| (run.source, f));
                }
                let Some((_, file)) = &open else { continue };
                buf.resize(run.bytes as usize, 0);
                if file.read_exact_at(&mut buf, run.offset).is_err() {
                    continue;
                }
                let mut at = 0usize;
                for (i, chunk) in chunks.iter().enumerate().skip(run.first).take(run.count) {
                    let data = &buf[at..at + chunk.size as usize];
                    at += chunk.size as usize;
                    if hash(data) == chunk.hash && temp.write_at(chunk.offset, data).is_ok() {
                        filled[i].store(true, Relaxed);
                        copied(chunk.size as u64);
                    }
                }
            }
        };
        std::thread::scope(|scope| {
            for _ in 1..threads.clamp(1, runs.len().max(1)) {
                scope.spawn(work);
            }
            work();
        });
        filled.into_iter().map(AtomicBool::into_inner).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, size: u32, fill: u8) -> Chunk {
        Chunk { offset, size, hash: hash(&vec![fill; size as usize]) }
    }

    #[test]
    fn adjacent_chunks_of_one_source_make_one_run() {
        let chunks = [chunk(0, 10, 1), chunk(10, 10, 2), chunk(20, 10, 3), chunk(30, 10, 4), chunk(40, 10, 5)];
        let at = |source, offset| Some(Located { source, offset });
        // 0,1 adjacent in source 0; 2 missing; 3 in source 0 but not after 1; 4 in source 1.
        let located = [at(0, 100), at(0, 110), None, at(0, 500), at(1, 40)];
        let runs = plan_runs(&chunks, &located, MAX_RUN);
        assert_eq!(
            runs,
            vec![
                Run { source: 0, offset: 100, first: 0, count: 2, bytes: 20 },
                Run { source: 0, offset: 500, first: 3, count: 1, bytes: 10 },
                Run { source: 1, offset: 40, first: 4, count: 1, bytes: 10 },
            ]
        );
        // A cap splits a long run, but never a chunk.
        let capped = plan_runs(&chunks[..2], &located[..2], 15);
        assert_eq!(capped.iter().map(|r| r.count).collect::<Vec<_>>(), vec![1, 1]);
    }

    #[test]
    fn copies_what_matches_and_leaves_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let old: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("old"), &old).unwrap();
        // New version: old bytes 1000..2000, then 1000 bytes nobody has, then old 0..1000.
        let mut new = old[1000..2000].to_vec();
        new.extend(vec![7u8; 1000]);
        new.extend_from_slice(&old[..1000]);
        let chunks: Vec<Chunk> = (0..3)
            .map(|k| Chunk { offset: k * 1000, size: 1000, hash: hash(&new[k as usize * 1000..][..1000]) })
            .collect();
        let source = (dir.path().to_path_buf(), "old".to_string());
        // The plan also claims chunk 1 is in the old file: a stale location, which must be refused.
        let plan = Plan::build(3, |i| Some((source.clone(), [1000, 2000, 0][i])));
        assert!(plan.missing().is_empty());
        let temp = TempFile::create(dir.path(), "new", new.len() as u64).unwrap();
        let total = std::sync::atomic::AtomicU64::new(0);
        let filled = plan.copy(&chunks, &temp, 2, &|n| {
            total.fetch_add(n, Relaxed);
        });
        assert_eq!(filled, vec![true, false, true]);
        assert_eq!(total.into_inner(), 2000);
        temp.write_at(1000, &new[1000..2000]).unwrap();
        let record = crate::core::FileRecord {
            path: "new".into(),
            size: new.len() as u64,
            chunks,
            ..crate::core::record::fixtures::file("new", 0, &[(1, 1)], 1, 1)
        };
        temp.commit(&record, None).unwrap();
        assert_eq!(std::fs::read(dir.path().join("new")).unwrap(), new);
    }

    #[test]
    fn a_chunk_behind_a_symlink_is_never_copied() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let data = vec![5u8; 1000];
        std::fs::write(outside.path().join("old"), &data).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("old"), dir.path().join("filelink")).unwrap();
        let chunks = [Chunk { offset: 0, size: 1000, hash: hash(&data) }];
        for rel in ["link/old", "filelink"] {
            let plan = Plan::build(1, |_| Some(((dir.path().to_path_buf(), rel.to_string()), 0)));
            let temp = TempFile::create(dir.path(), "new", 1000).unwrap();
            assert_eq!(plan.copy(&chunks, &temp, 1, &|_| {}), vec![false], "{rel}");
            temp.abandon();
        }
    }
}
