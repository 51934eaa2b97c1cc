//! A model of several replicas running `decide` on each other's records, delivered in random
//! orders, used by the property test below: whatever the history of edits and deletes, once
//! everyone has exchanged everything, all replicas hold the same files, and every version anyone
//! wrote is still there (as the file or a conflict copy) unless a later write or delete that had
//! seen it replaced it. The rules applied per action are the ones the Index and Puller carry out.

#![cfg(test)]

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::decide::{decide, Action};
use super::device::ShortId;
use super::record::{Chunk, FileKind, FileRecord};
use super::version::VersionVector;

#[derive(Clone, Default)]
struct Replica {
    files: BTreeMap<String, FileRecord>,
}

struct World {
    replicas: Vec<Replica>,
    clock: i64,
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
        World { replicas: vec![Replica::default(); n], clock: 1, writes: Vec::new(), history: Vec::new() }
    }

    /// The devices' clock, as the Index's `tick`: never the same value twice, so no device issues
    /// one counter for two different versions (a counter reused after taking a peer's version over
    /// our own tombstone would let a later merge of two deletes swallow a newer write).
    fn tick(&mut self) -> i64 {
        self.clock += 1;
        self.clock
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

    /// Replica `to` receives `from`'s record of one path; returns whether anything changed.
    fn deliver(&mut self, from: usize, to: usize, path: &str) -> bool {
        let Some(remote) = self.replicas[from].files.get(path).cloned() else { return false };
        let local = self.replicas[to].files.get(path).cloned();
        match decide(local.as_ref(), &remote) {
            Action::Skip => false,
            Action::Take => {
                self.replicas[to].files.insert(path.into(), remote);
                true
            }
            Action::Merge => {
                let mut l = local.expect("merge has a local record");
                l.version = l.version.merged(&remote.version);
                self.replicas[to].files.insert(path.into(), l);
                true
            }
            Action::KeepLocal => {
                self.reissue(to, path, &remote.version);
                true
            }
            Action::ConflictLocalLoses { copy } => {
                let l = local.expect("conflict has a local record");
                self.write_copy(to, &copy, &l);
                self.replicas[to].files.insert(path.into(), remote);
                true
            }
            Action::ConflictRemoteLoses { copy } => {
                self.write_copy(to, &copy, &remote);
                self.reissue(to, path, &remote.version);
                true
            }
        }
    }

    fn reissue(&mut self, r: usize, path: &str, other: &VersionVector) {
        let mut l = self.replicas[r].files[path].clone();
        l.version = l.version.merged(other).updated(Self::id(r), self.tick() as u64);
        l.modified_by = Self::id(r);
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
