//! Several replicas running the Index's rules (`core::replica`: `needs`, `dispatch`, `took`,
//! `reissued`, the clock) on each other's records, delivered one path at a time in random orders:
//! whatever the history of edits and deletes, once everyone has exchanged everything, all replicas
//! hold the same files, and every version anyone wrote is still there (as the file or a conflict
//! copy) unless a later write or delete that had seen it replaced it. Only the Puller's disk work
//! is modelled here (a copy becomes a new local record); tests/sim.rs runs the same rules with
//! nodes, a network, a filesystem and faults.

#![cfg(test)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::decide::Action;
use super::device::{DeviceId, ShortId};
use super::record::{Chunk, FileKind, FileRecord};
use super::replica::{self, Clock, Records};

#[derive(Clone, Default)]
struct Replica {
    files: BTreeMap<String, FileRecord>,
}

/// One replica's records, and the record one peer announced.
struct View<'a> {
    local: &'a Replica,
    from: DeviceId,
    remote: Option<&'a FileRecord>,
}

impl Records for View<'_> {
    type Error = std::convert::Infallible;
    fn local(&self, path: &str) -> Result<Option<FileRecord>, Self::Error> {
        Ok(self.local.files.get(path).cloned())
    }
    fn remote(&self, device: &DeviceId, path: &str) -> Result<Option<FileRecord>, Self::Error> {
        Ok(self.remote.filter(|r| *device == self.from && r.path == path).cloned())
    }
    fn remote_page(
        &self,
        device: &DeviceId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FileRecord>, Self::Error> {
        let after_cursor = |r: &&FileRecord| after.is_none_or(|a| r.path.as_str() > a);
        Ok(self.remote.filter(|_| *device == self.from).filter(after_cursor).into_iter().take(limit).cloned().collect())
    }
}

struct World {
    replicas: Vec<Replica>,
    /// One clock for all devices, fed the same way as each device's own (`replica::Clock`): never
    /// the same value twice, so no device issues one counter for two different versions.
    clock: Clock,
    time: u64,
    /// Every write: its path and record (content hash and version).
    writes: Vec<FileRecord>,
    /// Every record ever created by a local action (writes, deletes, re-issues).
    history: Vec<FileRecord>,
}

fn content(record: &FileRecord) -> Option<[u8; 32]> {
    (!record.deleted).then(|| record.chunks[0].hash)
}

impl World {
    fn new(n: usize) -> World {
        World {
            replicas: vec![Replica::default(); n],
            clock: Clock::default(),
            time: 1,
            writes: Vec::new(),
            history: Vec::new(),
        }
    }

    /// A fresh counter: a counter reused after taking a peer's version over our own tombstone
    /// would let a later merge of two deletes swallow a newer write.
    fn tick(&mut self) -> i64 {
        self.time += 1;
        self.clock.tick(self.time) as i64
    }

    fn device(r: usize) -> DeviceId {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&Self::id(r).0.to_be_bytes());
        DeviceId(id)
    }

    fn id(r: usize) -> ShortId {
        ShortId(r as u64 + 1)
    }

    /// A local scan found `path` with new content `data` on replica `r`.
    fn write(&mut self, r: usize, path: &str, data: u8) {
        let t = self.tick();
        let base = self.replicas[r].files.get(path).map(|f| f.version.clone()).unwrap_or_default();
        let mut hash = [data; 32];
        hash[0] = r as u8;
        hash[1..9].copy_from_slice(&t.to_be_bytes());
        let record = FileRecord {
            path: path.into(),
            kind: FileKind::File,
            size: 1,
            // One second apart: two losing versions by one device within one second would get the same
            // conflict name; the filesystem layer makes such a name unique (fs::apply::free_name).
            mtime_ns: t * 1_000_000_000,
            permissions: 0o644,
            version: base.updated(Self::id(r), t as u64),
            deleted: false,
            sequence: 0,
            modified_by: Self::id(r),
            chunks: vec![Chunk { offset: 0, size: 1, hash }],
            link_target: String::new(),
        };
        self.writes.push(record.clone());
        self.history.push(record.clone());
        self.replicas[r].files.insert(path.into(), record);
    }

    /// A copy written by the Puller is picked up by the next scan as a new local file.
    fn write_copy(&mut self, r: usize, path: &str, from: &FileRecord) {
        let base = self.replicas[r].files.get(path).map(|f| f.version.clone()).unwrap_or_default();
        let now = self.tick() as u64;
        let record = FileRecord {
            path: path.into(),
            version: base.updated(Self::id(r), now),
            modified_by: Self::id(r),
            ..from.clone()
        };
        self.history.push(record.clone());
        self.replicas[r].files.insert(path.into(), record);
    }

    fn delete(&mut self, r: usize, path: &str) {
        let Some(f) = self.replicas[r].files.get(path).filter(|f| !f.deleted).cloned() else { return };
        let t = f.tombstone(Self::id(r), self.tick() as u64);
        self.history.push(t.clone());
        self.replicas[r].files.insert(path.into(), t);
    }

    /// Replica `to` receives `from`'s record of one path; returns whether anything changed. The
    /// Index's rules decide and record; the Puller's work is a copy written and a record handed back.
    fn deliver(&mut self, from: usize, to: usize, path: &str) -> bool {
        let Some(remote) = self.replicas[from].files.get(path).cloned() else { return false };
        let view = View { local: &self.replicas[to], from: Self::device(from), remote: Some(&remote) };
        let Ok(items) = replica::needs(&view, &[Self::device(from)], Some(std::slice::from_ref(&remote)));
        let d = replica::dispatch(items, false, Vec::new(), false, &|_| false);
        let changed = !d.commit.is_empty() || !d.work.is_empty();
        for r in d.commit {
            self.replicas[to].files.insert(r.path.clone(), r);
        }
        for need in d.work {
            let local = self.replicas[to].files.get(path).cloned();
            match &need.action {
                Action::Take => self.took(to, need.remote, local.as_ref()),
                Action::KeepLocal => self.reissue(to, path, &need.remote),
                Action::ConflictLocalLoses { copy } => {
                    let l = local.clone().expect("conflict has a local record");
                    self.write_copy(to, copy, &l);
                    self.took(to, need.remote, local.as_ref());
                }
                Action::ConflictRemoteLoses { copy } => {
                    self.write_copy(to, copy, &need.remote);
                    self.reissue(to, path, &need.remote);
                }
                Action::Skip | Action::Merge => unreachable!("settled by dispatch"),
            }
        }
        changed
    }

    fn took(&mut self, r: usize, remote: FileRecord, current: Option<&FileRecord>) {
        let record = replica::took(remote, current, None);
        self.replicas[r].files.insert(record.path.clone(), record);
    }

    fn reissue(&mut self, r: usize, path: &str, other: &FileRecord) {
        let local = self.replicas[r].files[path].clone();
        let now = self.tick() as u64;
        let l = replica::reissued(local, &other.version, Self::id(r), now);
        self.history.push(l.clone());
        self.replicas[r].files.insert(path.into(), l);
    }

    fn sync_pair(&mut self, from: usize, to: usize) -> bool {
        let paths: Vec<String> = self.replicas[from].files.keys().cloned().collect();
        let mut changed = false;
        for p in paths {
            changed |= self.deliver(from, to, &p);
        }
        changed
    }

    fn settle(&mut self) {
        let n = self.replicas.len();
        for _ in 0..50 {
            let mut changed = false;
            for a in 0..n {
                for b in 0..n {
                    if a != b {
                        changed |= self.sync_pair(a, b);
                    }
                }
            }
            if !changed {
                return;
            }
        }
        panic!("no convergence after 50 rounds");
    }

    fn visible(&self, r: usize) -> BTreeMap<String, [u8; 32]> {
        self.replicas[r].files.iter().filter_map(|(p, f)| content(f).map(|c| (p.clone(), c))).collect()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write { replica: usize, path: usize, data: u8 },
    Delete { replica: usize, path: usize },
    Deliver { from: usize, to: usize, path: usize },
}

const PATHS: [&str; 3] = ["a.txt", "dir/b", "c"];

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..n, 0..PATHS.len(), any::<u8>()).prop_map(|(replica, path, data)| Op::Write { replica, path, data }),
        (0..n, 0..PATHS.len()).prop_map(|(replica, path)| Op::Delete { replica, path }),
        (0..n, 0..n, 0..PATHS.len()).prop_map(|(from, to, path)| Op::Deliver { from, to, path }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_and_keep_every_unsuperseded_version(ops in proptest::collection::vec(op(3), 1..40)) {
        let mut w = World::new(3);
        for op in &ops {
            match *op {
                Op::Write { replica, path, data } => w.write(replica, PATHS[path], data),
                Op::Delete { replica, path } => w.delete(replica, PATHS[path]),
                Op::Deliver { from, to, path } => {
                    if from != to {
                        w.deliver(from, to, PATHS[path]);
                    }
                }
            }
        }
        w.settle();
        let first = w.visible(0);
        for r in 1..3 {
            prop_assert_eq!(&w.visible(r), &first, "replica {} differs", r);
        }
        // Every write survives as some file's content, unless a later record (a write, delete or
        // re-issue made by a replica that had seen it) on the same path superseded it.
        let contents: Vec<[u8; 32]> = first.values().copied().collect();
        for write in &w.writes {
            let hash = write.chunks[0].hash;
            let superseded = w.history.iter().any(|h| {
                h.path == write.path && h.version != write.version && h.version.dominates(&write.version)
            });
            prop_assert!(contents.contains(&hash) || superseded, "write {:?} of {} lost", hash[0..9].to_vec(), write.path);
        }
    }
}
