//! The pull planner's order: which queued need the Puller starts next. Directories first (shallow
//! before deep, so parents exist), then files (in path order), and deletes last, deepest first, and
//! only once nothing else is queued or running (so a rename's new name is built from the old file's
//! chunks before the old name goes). Two pulls never run on overlapping paths (the same path, or
//! one inside the other): a conflict copy one of them makes may be the very path another pulls.
//!
//! Every operation is O(log n) in the queue's length (plus the depth of a path): a queue of a
//! million needs costs per item what a queue of ten does. Deterministic and free of I/O.

use std::collections::{BTreeMap, BTreeSet};

use super::path as paths;

/// Which of the three phases a need belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Directory,
    File,
    Delete,
}

/// A need's place in the pull order as bytes (phase, then depth for directories, reverse depth
/// for deletes), so that an ordered store lists needs as `PullQueue` takes them: (order, path).
pub fn order(phase: Phase, path: &str) -> [u8; 3] {
    let depth = paths::depth(path).min(u16::MAX as usize) as u16;
    let (p, d) = match phase {
        Phase::Directory => (0, depth),
        Phase::File => (1, 0),
        Phase::Delete => (2, u16::MAX - depth),
    };
    let [hi, lo] = d.to_be_bytes();
    [p, hi, lo]
}

/// Where a queued need sorts in a stored queue: its pull order ([`order`]), then its path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NeedKey {
    pub order: [u8; 3],
    pub path: String,
}

impl NeedKey {
    pub fn new(phase: Phase, path: &str) -> NeedKey {
        NeedKey { order: order(phase, path), path: path.to_string() }
    }
}

/// What the planner needs to know of a queued need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<T> {
    pub phase: Phase,
    /// Bytes it brings (0 for directories and deletes).
    pub bytes: u64,
    /// The paths it may write besides its own (a conflict copy).
    pub also_writes: Option<String>,
    pub item: T,
}

/// Queued needs by path, ordered for the pull.
#[derive(Debug)]
pub struct PullQueue<T> {
    entries: BTreeMap<String, Entry<T>>,
    dirs: BTreeSet<(usize, String)>,
    files: BTreeSet<String>,
    deletes: BTreeSet<(std::cmp::Reverse<usize>, String)>,
    bytes: u64,
}

impl<T> Default for PullQueue<T> {
    fn default() -> Self {
        PullQueue {
            entries: BTreeMap::new(),
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
            deletes: BTreeSet::new(),
            bytes: 0,
        }
    }
}

impl<T> PullQueue<T> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the queued needs bring.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether anything other than deletes is queued.
    pub fn has_creates(&self) -> bool {
        !self.dirs.is_empty() || !self.files.is_empty()
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    pub fn get(&self, path: &str) -> Option<&Entry<T>> {
        self.entries.get(path)
    }

    /// Queues (or replaces) the need for `path`.
    pub fn insert(&mut self, path: String, entry: Entry<T>) {
        self.remove(&path);
        match entry.phase {
            Phase::Directory => self.dirs.insert((paths::depth(&path), path.clone())),
            Phase::File => self.files.insert(path.clone()),
            Phase::Delete => self.deletes.insert((std::cmp::Reverse(paths::depth(&path)), path.clone())),
        };
        self.bytes += entry.bytes;
        self.entries.insert(path, entry);
    }

    pub fn remove(&mut self, path: &str) -> Option<Entry<T>> {
        let entry = self.entries.remove(path)?;
        match entry.phase {
            Phase::Directory => self.dirs.remove(&(paths::depth(path), path.to_string())),
            Phase::File => self.files.remove(path),
            Phase::Delete => self.deletes.remove(&(std::cmp::Reverse(paths::depth(path)), path.to_string())),
        };
        self.bytes -= entry.bytes;
        Some(entry)
    }

    pub fn clear(&mut self) {
        *self = PullQueue::default();
    }

    pub fn paths(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    /// The last queued need in the pull order, as (order, path).
    pub fn last(&self) -> Option<([u8; 3], &str)> {
        let (phase, path) = if let Some((_, p)) = self.deletes.last() {
            (Phase::Delete, p)
        } else if let Some(p) = self.files.last() {
            (Phase::File, p)
        } else {
            (Phase::Directory, &self.dirs.last()?.1)
        };
        Some((order(phase, path), path.as_str()))
    }

    /// The next need to start, in the pull order, skipping those whose paths overlap one being
    /// written (`running`); deletes only once `creating` (anything but deletes running) is false
    /// and no create is queued. Looks at no more entries than it skips.
    pub fn next(&self, running: &Targets, creating: bool) -> Option<&str> {
        self.next_where(running, creating, |_| true)
    }

    /// As [`PullQueue::next`], also skipping the needs `allowed` says may not start now (their
    /// peer has its share of the running pulls already).
    pub fn next_where(&self, running: &Targets, creating: bool, allowed: impl Fn(&str) -> bool) -> Option<&str> {
        let free = |path: &str| {
            let entry = &self.entries[path];
            allowed(path)
                && !running.overlaps(path)
                && entry.also_writes.as_deref().is_none_or(|c| !running.overlaps(c))
        };
        if let Some((_, p)) = self.dirs.iter().find(|(_, p)| free(p)) {
            return Some(p);
        }
        if let Some(p) = self.files.iter().find(|p| free(p)) {
            return Some(p);
        }
        if creating || self.has_creates() {
            return None;
        }
        self.deletes.iter().find(|(_, p)| free(p)).map(|(_, p)| p.as_str())
    }
}

/// The paths running pulls may write, for the overlap rule: O(depth · log n) per question.
#[derive(Debug, Default)]
pub struct Targets {
    /// Each path with the number of running pulls writing it.
    paths: BTreeMap<String, usize>,
}

impl Targets {
    pub fn add(&mut self, path: &str) {
        *self.paths.entry(path.to_string()).or_default() += 1;
    }

    pub fn remove(&mut self, path: &str) {
        if let Some(n) = self.paths.get_mut(path) {
            *n -= 1;
            if *n == 0 {
                self.paths.remove(path);
            }
        }
    }

    /// Whether `path`, one of its ancestors, or anything inside it is being written.
    pub fn overlaps(&self, path: &str) -> bool {
        if self.paths.contains_key(path) {
            return true;
        }
        let mut cur = paths::parent(path);
        while let Some(p) = cur {
            if self.paths.contains_key(p) {
                return true;
            }
            cur = paths::parent(p);
        }
        let inside = format!("{path}/");
        self.paths.range(inside.clone()..).next().is_some_and(|(p, _)| p.starts_with(&inside))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(phase: Phase, bytes: u64) -> Entry<()> {
        Entry { phase, bytes, also_writes: None, item: () }
    }

    #[test]
    fn directories_shallow_first_then_files_then_deletes_deep_first() {
        let mut q = PullQueue::default();
        q.insert("a/b".into(), entry(Phase::Directory, 0));
        q.insert("a".into(), entry(Phase::Directory, 0));
        q.insert("z.txt".into(), entry(Phase::File, 5));
        q.insert("old".into(), entry(Phase::Delete, 0));
        q.insert("old/deep/x".into(), entry(Phase::Delete, 0));
        let none = Targets::default();
        let mut order = Vec::new();
        while let Some(p) = q.next(&none, false).map(str::to_string) {
            q.remove(&p);
            order.push(p);
        }
        assert_eq!(order, vec!["a", "a/b", "z.txt", "old/deep/x", "old"]);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn deletes_wait_for_running_creates_and_overlapping_paths_wait() {
        let mut q = PullQueue::default();
        q.insert("gone".into(), entry(Phase::Delete, 0));
        assert_eq!(q.next(&Targets::default(), true), None, "a create is still running");
        q.insert("a/f".into(), entry(Phase::File, 1));
        let mut running = Targets::default();
        running.add("a");
        assert_eq!(q.next(&running, true), None, "a/f is inside a path being written");
        running.remove("a");
        running.add("a/f/g");
        assert!(running.overlaps("a/f") && running.overlaps("a") && !running.overlaps("a/fx"));
        q.insert("c".into(), Entry { phase: Phase::File, bytes: 1, also_writes: Some("a/f/g".into()), item: () });
        assert_eq!(q.next(&running, true), None, "its conflict copy is being written");
    }

    #[test]
    fn a_need_that_may_not_start_is_passed_over_not_waited_for() {
        let mut q = PullQueue::default();
        for p in ["flood/1", "flood/2", "honest.txt"] {
            q.insert(p.into(), entry(Phase::File, 1));
        }
        let none = Targets::default();
        assert_eq!(q.next_where(&none, false, |p| !p.starts_with("flood/")), Some("honest.txt"));
        assert_eq!(q.next_where(&none, false, |_| false), None);
        assert_eq!(q.next_where(&none, false, |_| true), q.next(&none, false));
    }

    proptest! {
        /// Sorting by (order, path) gives exactly the order `next` takes needs in.
        #[test]
        fn order_bytes_sort_as_the_planner_takes(items in proptest::collection::btree_map("[abc](/[abc]){0,3}", 0u8..3, 0..24)) {
            let mut q = PullQueue::default();
            let mut keyed: Vec<([u8; 3], String)> = Vec::new();
            for (p, phase) in &items {
                let phase = [Phase::Directory, Phase::File, Phase::Delete][*phase as usize];
                q.insert(p.clone(), entry(phase, 0));
                keyed.push((order(phase, p), p.clone()));
            }
            keyed.sort();
            prop_assert_eq!(q.last().map(|(o, p)| (o, p.to_string())), keyed.last().cloned());
            let mut taken = Vec::new();
            while let Some(p) = q.next(&Targets::default(), false).map(str::to_string) {
                q.remove(&p);
                taken.push(p);
            }
            prop_assert_eq!(taken, keyed.into_iter().map(|(_, p)| p).collect::<Vec<_>>());
        }

        /// The planner's choice equals the obvious whole-queue scan it replaces.
        #[test]
        fn next_agrees_with_a_full_scan(
            items in proptest::collection::btree_map("[abc](/[abc]){0,3}", 0u8..3, 0..24),
            running in proptest::collection::vec("[abc](/[abc]){0,3}", 0..4),
            creating in any::<bool>(),
        ) {
            let mut q = PullQueue::default();
            for (p, phase) in &items {
                let phase = [Phase::Directory, Phase::File, Phase::Delete][*phase as usize];
                q.insert(p.clone(), entry(phase, 1));
            }
            let mut targets = Targets::default();
            running.iter().for_each(|r| targets.add(r));
            let overlaps = |p: &str| running.iter().any(|f| p == f || paths::is_inside(f, p) || paths::is_inside(p, f));
            let free = |p: &&String| !overlaps(p);
            let phase_of = |p: &String| [Phase::Directory, Phase::File, Phase::Delete][items[p] as usize];
            let expected = items.keys().filter(|p| phase_of(p) == Phase::Directory).filter(free).min_by_key(|p| (paths::depth(p), p.to_string()))
                .or_else(|| items.keys().filter(|p| phase_of(p) == Phase::File).find(free))
                .or_else(|| {
                    let creates = items.keys().any(|p| phase_of(p) != Phase::Delete);
                    if creating || creates { None } else {
                        items.keys().filter(|p| phase_of(p) == Phase::Delete).filter(free).min_by_key(|p| (std::cmp::Reverse(paths::depth(p)), p.to_string()))
                    }
                });
            prop_assert_eq!(q.next(&targets, creating), expected.map(|s| s.as_str()));
            prop_assert_eq!(q.bytes(), items.len() as u64);
        }
    }
}
