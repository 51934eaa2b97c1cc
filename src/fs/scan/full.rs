//! The full scan: every directory's listing on disk merged with its slice of the index, in path
//! order, so that an unchanged tree costs a `stat` and a sequential read per entry and nothing
//! is looked up by path or remembered.

use std::io;

use super::{name_in, DiskState, KnownRecords, Scanner};
use crate::core::debounce::{settling, SETTLING_MAX};
use crate::core::path as paths;
use crate::core::record::Listed;
use crate::core::{FileKind, FileRecord};
use crate::fs::chunker::PART_MIN;
use crate::fs::safe_path::lstat_inside;

/// Entries of one directory a full scan reads and hashes together, on every core.
const HASH_BATCH: usize = 256;

impl Scanner {
    /// The whole folder: each directory's listing on disk and its slice of the index, side by side
    /// in path order, one directory at a time (depth first). An unchanged file costs its `lstat`
    /// and its record's read in key order; nothing is looked up by path, and nothing is kept of
    /// what was seen, so time is linear and memory independent of the tree (bounded by the
    /// largest directory).
    pub(super) fn full(&self, known: &dyn KnownRecords, now: u64, out: &mut Vec<FileRecord>) {
        let mut dirs = vec![String::new()];
        while let Some(dir) = dirs.pop() {
            let subdirs = self.directory(&dir, known, now, out);
            dirs.extend(subdirs.into_iter().rev());
        }
    }

    /// One directory of a full scan; returns its subdirectories to scan, in path order. A
    /// directory that cannot be listed whole is left alone: nothing in it is taken for deleted.
    pub(super) fn directory(
        &self,
        dir: &str,
        known: &dyn KnownRecords,
        now: u64,
        out: &mut Vec<FileRecord>,
    ) -> Vec<String> {
        let rel_of = |name: &str| if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") };
        let Some(disk) = self.list(dir) else { return Vec::new() };
        let now_ns = self.clock.as_ref().map(|clock| clock());
        let mut listed = known.children(dir);
        let mut below = Vec::new();
        let mut next_record = |below: &mut Vec<String>| loop {
            match listed.next() {
                Some(Listed::Record(r)) => return Some(r),
                Some(Listed::Below(name)) => below.push(name),
                None => return None,
            }
        };
        let mut record = next_record(&mut below);
        let mut subdirs = Vec::new();
        let mut todo = Vec::new();
        for (name, state) in disk {
            // Records before this name are of entries no longer on disk.
            while let Some(r) = record.take() {
                if name_in(&r.path) >= name.as_str() {
                    record = Some(r);
                    break;
                }
                self.gone(r, now, out);
                record = next_record(&mut below);
            }
            let previous = match record.take() {
                Some(r) if name_in(&r.path) == name.as_str() => {
                    record = next_record(&mut below);
                    Some(r)
                }
                other => {
                    record = other;
                    None
                }
            };
            let rel = rel_of(&name);
            let is_dir = state.is_some_and(|s| s.kind == FileKind::Directory);
            if paths::validate(&rel).is_err() || self.ignore.is_ignored(&rel, is_dir) {
                continue;
            }
            match state {
                // Gone since the listing, or a kind we do not sync (a socket, a device).
                None => previous.into_iter().for_each(|p| self.gone(p, now, out)),
                // Left alone: neither recorded nor taken for a delete.
                Some(s) if s.kind == FileKind::Symlink && !self.links => {}
                Some(s) => {
                    if is_dir {
                        subdirs.push(rel.clone());
                    }
                    if self.busy.contains(&rel) || previous.as_ref().is_some_and(|p| s.matches(p)) {
                        continue;
                    }
                    // Being written, perhaps: looked at on its own once it has settled.
                    if s.kind == FileKind::File
                        && now_ns.is_some_and(|now| settling(s.mtime_ns, now))
                        && self.leave_settling(&rel)
                    {
                        continue;
                    }
                    todo.push((rel, s, previous));
                    if todo.len() == HASH_BATCH {
                        self.judge_all(std::mem::take(&mut todo), now, out);
                    }
                }
            }
        }
        self.judge_all(todo, now, out);
        while let Some(r) = record {
            self.gone(r, now, out);
            record = next_record(&mut below);
        }
        // What the index holds below a name that is no longer a directory here is gone too.
        for name in below {
            let rel = rel_of(&name);
            if subdirs.binary_search(&rel).is_err() && !self.ignore.is_ignored(&rel, true) {
                known.each_under(&rel, &mut |r| self.gone(r, now, out));
            }
        }
        subdirs
    }

    /// Leaves a settling file for later (true), unless `SETTLING_MAX` are left already.
    fn leave_settling(&self, rel: &str) -> bool {
        let mut settling = self.settling.lock().expect("scanner lock");
        if settling.len() >= SETTLING_MAX {
            return false;
        }
        settling.push(rel.to_string());
        true
    }

    /// New records for entries whose disk state differs from their record: small files are read
    /// and hashed on every core at once (a large one is cut in parts on every core by the chunker).
    pub(super) fn judge_all(
        &self,
        todo: Vec<(String, DiskState, Option<FileRecord>)>,
        now: u64,
        out: &mut Vec<FileRecord>,
    ) {
        let threads = crate::fs::cores().min(todo.len());
        let judge = |(rel, state, previous): (String, DiskState, Option<FileRecord>), out: &mut Vec<FileRecord>| {
            if let Err(e) = self.judge(&rel, state, previous, now, out) {
                tracing::warn!(path = %rel, error = %e, "scan: cannot look at an entry");
            }
        };
        if threads < 2 || todo.iter().any(|(_, s, _)| s.size >= PART_MIN) {
            todo.into_iter().for_each(|t| judge(t, out));
        } else {
            let mut parts: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
            for (i, t) in todo.into_iter().enumerate() {
                parts[i % threads].push(t);
            }
            let found: Vec<Vec<FileRecord>> = std::thread::scope(|scope| {
                let workers: Vec<_> = parts
                    .into_iter()
                    .map(|part| {
                        scope.spawn(|| {
                            let mut found = Vec::new();
                            part.into_iter().for_each(|t| judge(t, &mut found));
                            found
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().expect("scan thread panicked")).collect()
            });
            found.into_iter().for_each(|f| out.extend(f));
        }
        self.hand_over(out);
    }

    /// The entries of directory `dir` (never through a link), by name, with their state (`None`:
    /// gone since listed, or not a kind we sync). `None` if it cannot be listed whole.
    pub(super) fn list(&self, dir: &str) -> Option<Vec<(String, Option<DiskState>)>> {
        // The root may be a link (the user's choice); a directory below it is listed only if it is
        // still a real directory (not a link swapped in since its parent was listed).
        if !dir.is_empty() && !matches!(lstat_inside(&self.root, dir), Ok(Some(m)) if m.file_type().is_dir()) {
            return None;
        }
        let full = if dir.is_empty() { self.root.clone() } else { self.root.join(dir) };
        let fail = |e: io::Error| tracing::warn!(path = %full.display(), error = %e, "scan: cannot list a directory; left alone");
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&full).map_err(fail).ok()? {
            let entry = entry.map_err(fail).ok()?;
            // A name that is not UTF-8 is not synced (no record can have it).
            let Ok(name) = entry.file_name().into_string() else { continue };
            let state = entry.metadata().ok().as_ref().and_then(DiskState::of);
            entries.push((name, state));
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Some(entries)
    }

    /// A record whose entry is gone from disk: its tombstone (unless it is one, is being pulled,
    /// or is ignored).
    pub(super) fn gone(&self, record: FileRecord, now: u64, out: &mut Vec<FileRecord>) {
        if record.deleted
            || self.busy.contains(&record.path)
            || self.ignore.is_ignored(&record.path, record.kind == FileKind::Directory)
        {
            return;
        }
        out.push(record.tombstone(self.me, now));
        self.hand_over(out);
    }
}
