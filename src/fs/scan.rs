//! Scanning: compare what is on disk with our records and produce new records for what changed.
//! A file whose size, mtime and permissions match its record is not read again; a changed file is
//! chunked and hashed, and gets a version one step above its record's on this device.
//!
//! The scanner never follows a symlink. A link in the folder is synced as a link: its record holds
//! the target text (`readlink`), read again at every look since a link's metadata does not show
//! it; with `symlinks = "ignore"` links are skipped as if they were not there. A path with a link
//! on the way (`link/x` where `link` points elsewhere) is not in the folder at all — it is refused
//! (logged once), and a record we had there becomes a tombstone, as if the directory were gone.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::core::path as paths;
use crate::core::record::Listed;
use crate::core::replica::{scanned, Seen};
use crate::core::{Chunk, FileKind, FileRecord, ShortId};

use super::chunker::{chunk_file_with, rechunk_file_with, ChunkParams, PART_MIN};
use super::ignore::IgnoreRules;
use super::safe_path::{lstat_inside, open_inside, refuse_once, UnsafePath};

/// What the scanner needs to know of our current records.
pub trait KnownRecords {
    fn get(&self, path: &str) -> Option<FileRecord>;
    /// Each record strictly inside `dir` ("" for the whole folder), one at a time: a folder's
    /// records may not fit in memory.
    fn each_under(&self, dir: &str, f: &mut dyn FnMut(FileRecord));
    /// The records directly inside `dir` ("" for the root), in path order, each child with
    /// records below it marked ([`Listed::Below`]), read one at a time.
    fn children<'a>(&'a self, dir: &str) -> Box<dyn Iterator<Item = Listed> + 'a>;
}

pub struct Scanner {
    pub root: PathBuf,
    pub params: ChunkParams,
    pub me: ShortId,
    pub ignore: IgnoreRules,
    /// Paths being written by a pull right now: left alone (the pull reports what it wrote).
    pub busy: HashSet<String>,
    /// Files that exist but could not be read (permissions, I/O errors), with why: skipped, never
    /// taken for deleted, and reported per path by the Index.
    pub unreadable: std::sync::Mutex<Vec<(String, String)>>,
    /// Symlinks are synced as links (`symlinks = "link"`); when false they are left alone.
    pub links: bool,
    /// Where a scan hands over what it found so far, `SCAN_BATCH` records at a time (during a
    /// walk, or between the paths of its scope), so that indexing a big tree or a burst of
    /// watcher paths neither holds every record until the end nor announces nothing until then.
    /// The remainder is the scan's result. `None`: all at the end.
    pub progress: Option<Box<dyn Fn(Vec<FileRecord>) + Send + Sync>>,
}

/// Entries of one directory a full scan reads and hashes together, on every core.
const HASH_BATCH: usize = 256;

/// Records a walk gathers before handing them over (`Scanner::progress`).
pub const SCAN_BATCH: usize = 2048;

/// The state of one path on disk, as far as records care.
#[derive(Debug, Clone, Copy)]
pub struct DiskState {
    pub kind: FileKind,
    pub size: u64,
    pub mtime_ns: i64,
    pub permissions: u32,
}

impl DiskState {
    pub fn of(meta: &std::fs::Metadata) -> Option<DiskState> {
        let kind = if meta.file_type().is_file() {
            FileKind::File
        } else if meta.file_type().is_dir() {
            FileKind::Directory
        } else if meta.file_type().is_symlink() {
            FileKind::Symlink
        } else {
            return None; // sockets, devices, FIFOs: not synced
        };
        Some(DiskState {
            kind,
            size: if kind == FileKind::File { meta.len() } else { 0 },
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            // Only the permission bits travel: setuid, setgid and sticky never do.
            permissions: meta.permissions().mode() & 0o777,
        })
    }

    pub fn read(path: &Path) -> io::Result<Option<DiskState>> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) => Ok(DiskState::of(&meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether a record describes this disk state (so the file needs no hashing). Never for a
    /// link: whether it still points where the record says takes a `readlink` ([`read_target`]).
    pub fn matches(&self, record: &FileRecord) -> bool {
        record.same_disk_state(self.kind, self.size, self.mtime_ns, self.permissions)
    }
}

/// The target text of the link at `full` (never followed). The caller has checked that `full`'s
/// parents are real directories inside the folder (`safe_entry_path`, `lstat_inside`).
/// `InvalidData` for a target that is not UTF-8 or that a peer would refuse.
pub fn read_target(full: &Path) -> io::Result<String> {
    let target = std::fs::read_link(full)?;
    let target = target
        .into_os_string()
        .into_string()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "link target is not UTF-8"))?;
    crate::core::record::check_link_target(&target).map_err(|m| io::Error::new(io::ErrorKind::InvalidData, m))?;
    Ok(target)
}

/// The paths a scan of some paths has dealt with (its scope may name a path and its directory),
/// each as a 64-bit hash under a key drawn for this scan: 8 bytes a path instead of the path (a
/// scope of a directory move may cover many). Two paths with one hash (about 1 in 10^7 for a
/// million paths) make this scan skip one of them (its change or its delete); the next scan draws
/// another key and finds it. A full scan needs none of this: it walks disk and index side by side.
#[derive(Default)]
struct Done {
    key: std::collections::hash_map::RandomState,
    seen: HashSet<u64>,
}

impl Done {
    fn hash(&self, path: &str) -> u64 {
        use std::hash::BuildHasher;
        self.key.hash_one(path)
    }

    /// False if `path` was dealt with already.
    fn insert(&mut self, path: &str) -> bool {
        let h = self.hash(path);
        self.seen.insert(h)
    }

    fn contains(&self, path: &str) -> bool {
        self.seen.contains(&self.hash(path))
    }
}

/// The last component of a path.
fn name_in(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

fn rel_of(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?.to_str()?.to_string();
    (!rel.is_empty()).then_some(rel)
}

impl Scanner {
    /// New records for everything under `scope` (relative paths; "" is the whole folder) whose
    /// disk state differs from `known`. `now` (seconds) feeds the version counters.
    pub fn scan(&self, scope: &[String], known: &dyn KnownRecords, now: u64) -> io::Result<Vec<FileRecord>> {
        let mut out = Vec::new();
        if scope.iter().any(String::is_empty) {
            // The whole folder covers every other path of the scope.
            self.full(known, now, &mut out);
            return Ok(out);
        }
        let mut done = Done::default();
        for rel in scope {
            self.hand_over(&mut out);
            if paths::validate(rel).is_err() || self.ignore.is_ignored(rel, false) {
                continue;
            }
            let full = self.root.join(rel);
            // A path behind a link is not in the folder: whatever we had there is gone from it.
            let state = if self.ancestors(rel, known, now, &mut done, &mut out)? { self.state_of(rel)? } else { None };
            match state {
                // Left alone: neither recorded nor taken for a delete. What was below a directory
                // it replaced is gone from the folder, though.
                Some(state) if state.kind == FileKind::Symlink && !self.links => {
                    self.tombstones_under(rel, known, now, &mut done, &mut out);
                }
                Some(state) if state.kind == FileKind::Directory => {
                    self.examine(rel, state, known, now, &mut done, &mut out)?;
                    self.walk(&full, known, now, &mut done, &mut out)?;
                    self.tombstones_under(rel, known, now, &mut done, &mut out);
                }
                Some(state) => {
                    self.examine(rel, state, known, now, &mut done, &mut out)?;
                    // A directory replaced by a file: its children are gone.
                    self.tombstones_under(rel, known, now, &mut done, &mut out);
                }
                None => {
                    self.tombstone(rel, known, now, &mut done, &mut out);
                    self.tombstones_under(rel, known, now, &mut done, &mut out);
                }
            }
        }
        Ok(out)
    }

    /// The whole folder: each directory's listing on disk and its slice of the index, side by side
    /// in path order, one directory at a time (depth first). An unchanged file costs its `lstat`
    /// and its record's read in key order; nothing is looked up by path, and nothing is kept of
    /// what was seen, so time is linear and memory independent of the tree (bounded by the
    /// largest directory).
    fn full(&self, known: &dyn KnownRecords, now: u64, out: &mut Vec<FileRecord>) {
        let mut dirs = vec![String::new()];
        while let Some(dir) = dirs.pop() {
            let subdirs = self.directory(&dir, known, now, out);
            dirs.extend(subdirs.into_iter().rev());
        }
    }

    /// One directory of a full scan; returns its subdirectories to scan, in path order. A
    /// directory that cannot be listed whole is left alone: nothing in it is taken for deleted.
    fn directory(&self, dir: &str, known: &dyn KnownRecords, now: u64, out: &mut Vec<FileRecord>) -> Vec<String> {
        let rel_of = |name: &str| if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") };
        let Some(disk) = self.list(dir) else { return Vec::new() };
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

    /// New records for entries whose disk state differs from their record: small files are read
    /// and hashed on every core at once (a large one is cut in parts on every core by the chunker).
    fn judge_all(&self, todo: Vec<(String, DiskState, Option<FileRecord>)>, now: u64, out: &mut Vec<FileRecord>) {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(todo.len());
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
    fn list(&self, dir: &str) -> Option<Vec<(String, Option<DiskState>)>> {
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
    fn gone(&self, record: FileRecord, now: u64, out: &mut Vec<FileRecord>) {
        if record.deleted
            || self.busy.contains(&record.path)
            || self.ignore.is_ignored(&record.path, record.kind == FileKind::Directory)
        {
            return;
        }
        out.push(record.tombstone(self.me, now));
        self.hand_over(out);
    }

    /// A change deep in a new directory tree: make sure its parent directories have records.
    /// False when a parent is not a real directory (a link, a file, or missing): `rel` is then not
    /// in the folder, and nothing below that parent is looked at.
    fn ancestors(
        &self,
        rel: &str,
        known: &dyn KnownRecords,
        now: u64,
        done: &mut Done,
        out: &mut Vec<FileRecord>,
    ) -> io::Result<bool> {
        let mut parents = Vec::new();
        let mut cur = paths::parent(rel);
        while let Some(p) = cur {
            parents.push(p);
            cur = paths::parent(p);
        }
        for p in parents.into_iter().rev() {
            match self.state_of(p)? {
                Some(state) if state.kind == FileKind::Directory => self.examine(p, state, known, now, done, out)?,
                _ => {
                    if let Ok(Some(meta)) = lstat_inside(&self.root, p) {
                        if meta.file_type().is_symlink() {
                            refuse_once(
                                &self.root,
                                &UnsafePath::Symlink { path: rel.into(), component: p.into() },
                                None,
                            );
                        }
                    }
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The state of the entry at `rel`, never following a link: `None` when it is absent, is a
    /// link or another unsynced kind, or lies behind a link or a file (the link refusal logged once).
    fn state_of(&self, rel: &str) -> io::Result<Option<DiskState>> {
        match lstat_inside(&self.root, rel) {
            Ok(meta) => Ok(meta.as_ref().and_then(DiskState::of)),
            Err(UnsafePath::Io { source, .. }) if source.kind() != io::ErrorKind::NotFound => Err(source),
            Err(e) => {
                refuse_once(&self.root, &e, None);
                Ok(None)
            }
        }
    }

    fn walk(
        &self,
        dir: &Path,
        known: &dyn KnownRecords,
        now: u64,
        done: &mut Done,
        out: &mut Vec<FileRecord>,
    ) -> io::Result<()> {
        let root = &self.root;
        // The folder's root may be a link (the user's choice); a directory below it, checked by the
        // caller, is walked only if it is still not one (it could have been swapped meanwhile).
        let walker = walkdir::WalkDir::new(dir)
            .min_depth(1)
            .follow_links(false)
            .follow_root_links(dir == root.as_path())
            .sort_by_file_name()
            .into_iter();
        let walker = walker.filter_entry(|e| match rel_of(root, e.path()) {
            Some(rel) => !self.ignore.is_ignored(&rel, e.file_type().is_dir()),
            None => false,
        });
        for entry in walker {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "scan: cannot read an entry");
                    continue;
                }
            };
            let Some(rel) = rel_of(root, entry.path()) else { continue };
            if paths::validate(&rel).is_err() {
                continue;
            }
            let Some(state) = entry.metadata().ok().as_ref().and_then(DiskState::of) else { continue };
            if state.kind == FileKind::Symlink && !self.links {
                continue;
            }
            self.examine(&rel, state, known, now, done, out)?;
            self.hand_over(out);
        }
        Ok(())
    }

    /// Hands the records found so far to `progress` once there are `SCAN_BATCH` of them (a walk,
    /// or a scan of many watcher paths, then holds at most that many).
    fn hand_over(&self, out: &mut Vec<FileRecord>) {
        if let Some(progress) = &self.progress {
            while out.len() >= SCAN_BATCH {
                let rest = out.split_off(SCAN_BATCH);
                progress(std::mem::replace(out, rest));
            }
        }
    }

    /// The file's chunks; the previous version's spare the cutting wherever its content is unchanged.
    /// Opened with `open_inside`: a link swapped in since the file was seen is not read through
    /// (it reads as gone; the event of that change brings another scan).
    fn chunk(&self, rel: &str, previous: Option<&FileRecord>) -> io::Result<(Vec<Chunk>, u64)> {
        let file = open_inside(&self.root, rel).map_err(|e| match e {
            UnsafePath::Io { source, .. } => source,
            other => io::Error::new(io::ErrorKind::NotFound, other.to_string()),
        })?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        match previous.filter(|p| p.is_file() && !p.deleted && !p.chunks.is_empty()) {
            Some(p) => rechunk_file_with(&file, self.params, &p.chunks, p.size, threads),
            None => chunk_file_with(&file, self.params, threads, PART_MIN),
        }
    }

    fn examine(
        &self,
        rel: &str,
        state: DiskState,
        known: &dyn KnownRecords,
        now: u64,
        done: &mut Done,
        out: &mut Vec<FileRecord>,
    ) -> io::Result<()> {
        if self.busy.contains(rel) || !done.insert(rel) {
            return Ok(());
        }
        let previous = known.get(rel);
        if previous.as_ref().is_some_and(|p| state.matches(p)) {
            return Ok(());
        }
        self.judge(rel, state, previous, now, out)
    }

    /// A new record for the entry at `rel` whose disk state differs from `previous`: its content
    /// read and hashed (or its link target read).
    fn judge(
        &self,
        rel: &str,
        state: DiskState,
        previous: Option<FileRecord>,
        now: u64,
        out: &mut Vec<FileRecord>,
    ) -> io::Result<()> {
        let full = self.root.join(rel);
        let mut link_target = String::new();
        let (chunks, size) = match state.kind {
            FileKind::File => match self.chunk(rel, previous.as_ref()) {
                Ok(result) => result,
                // Gone, or shrinking as we read: the event of that change brings another scan.
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof) => return Ok(()),
                Err(e) => {
                    tracing::debug!(path = rel, error = %e, "scan: cannot read file");
                    self.unreadable.lock().expect("scanner lock").push((rel.to_string(), e.to_string()));
                    return Ok(());
                }
            },
            FileKind::Directory => (Vec::new(), 0),
            // The link itself, never what it points to (its parents are real directories: checked
            // by the caller, and a link here is not followed by readlink).
            FileKind::Symlink => match read_target(&full) {
                Ok(target) => {
                    link_target = target;
                    (Vec::new(), 0)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                // Replaced by something else meanwhile: the event of that change brings another scan.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
                Err(e) => {
                    tracing::debug!(path = rel, error = %e, "scan: cannot read link");
                    self.unreadable.lock().expect("scanner lock").push((rel.to_string(), e.to_string()));
                    return Ok(());
                }
            },
        };
        // Still being written: leave it to the event that the next write produces.
        let after = DiskState::read(&full)?;
        if state.kind == FileKind::File && after.is_none_or(|a| a.size != size || a.mtime_ns != state.mtime_ns) {
            return Ok(());
        }
        let seen = Seen {
            kind: state.kind,
            size,
            mtime_ns: state.mtime_ns,
            permissions: state.permissions,
            chunks,
            link_target,
        };
        // Only metadata we do not sync changed: keep the record as it is (`core::replica::scanned`).
        let Some(record) = scanned(rel, seen, previous.as_ref(), self.me, now) else { return Ok(()) };
        out.push(record);
        Ok(())
    }

    fn tombstone(&self, rel: &str, known: &dyn KnownRecords, now: u64, done: &mut Done, out: &mut Vec<FileRecord>) {
        if self.busy.contains(rel) || !done.insert(rel) {
            return;
        }
        if let Some(prev) = known.get(rel).filter(|p| !p.deleted) {
            out.push(prev.tombstone(self.me, now));
        }
    }

    /// Tombstones for known records under `dir` that are no longer on disk.
    fn tombstones_under(
        &self,
        dir: &str,
        known: &dyn KnownRecords,
        now: u64,
        done: &mut Done,
        out: &mut Vec<FileRecord>,
    ) {
        known.each_under(dir, &mut |record| {
            if record.deleted
                || done.contains(&record.path)
                || self.busy.contains(&record.path)
                || self.ignore.is_ignored(&record.path, record.kind == FileKind::Directory)
            {
                return;
            }
            if matches!(self.state_of(&record.path), Ok(None)) {
                done.insert(&record.path);
                out.push(record.tombstone(self.me, now));
            }
        });
    }
}

/// Removes temp files (and temp links) a crash left behind (never visible under a real name, never
/// synced). A temp link is removed as the link.
pub fn remove_stale_temp_files(root: &Path) -> usize {
    let mut removed = 0;
    for entry in walkdir::WalkDir::new(root).follow_links(false).into_iter().flatten() {
        let name = entry.file_name().to_string_lossy();
        if (entry.file_type().is_file() || entry.file_type().is_symlink())
            && name.starts_with(paths::TEMP_PREFIX)
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Known(BTreeMap<String, FileRecord>);

    impl KnownRecords for Known {
        fn get(&self, path: &str) -> Option<FileRecord> {
            self.0.get(path).cloned()
        }
        fn each_under(&self, dir: &str, f: &mut dyn FnMut(FileRecord)) {
            self.0.values().filter(|r| dir.is_empty() || paths::is_inside(&r.path, dir)).cloned().for_each(f)
        }
        fn children<'a>(&'a self, dir: &str) -> Box<dyn Iterator<Item = Listed> + 'a> {
            // As the store lists them: in key order, a mark for each run of deeper records.
            let mut listed: Vec<Listed> = Vec::new();
            for (path, r) in &self.0 {
                let rest = if dir.is_empty() {
                    path.as_str()
                } else if let Some(rest) = path.strip_prefix(&format!("{dir}/")) {
                    rest
                } else {
                    continue;
                };
                match rest.split_once('/') {
                    None => listed.push(Listed::Record(r.clone())),
                    Some((name, _)) => {
                        if listed.last() != Some(&Listed::Below(name.to_string())) {
                            listed.push(Listed::Below(name.to_string()));
                        }
                    }
                }
            }
            Box::new(listed.into_iter())
        }
    }

    fn scanner(root: &Path) -> Scanner {
        Scanner {
            root: root.to_path_buf(),
            params: ChunkParams::new(4096),
            me: ShortId(1),
            ignore: IgnoreRules::load(root),
            busy: HashSet::new(),
            unreadable: Default::default(),
            links: true,
            progress: None,
        }
    }

    fn ignoring_links(root: &Path) -> Scanner {
        Scanner { links: false, ..scanner(root) }
    }

    #[test]
    fn a_rescan_of_an_unchanged_folder_finds_nothing_and_a_removal_is_a_tombstone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f.txt"), b"hello").unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        let s = scanner(dir.path());
        let first = s.scan(&["".into()], &Known(BTreeMap::new()), 100).unwrap();
        let mut names: Vec<_> = first.iter().map(|r| r.path.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["a", "a/b", "a/b/f.txt", "empty"]);
        let known = Known(first.into_iter().map(|r| (r.path.clone(), r)).collect());
        assert!(s.scan(&["".into()], &known, 101).unwrap().is_empty());
        std::fs::remove_dir_all(dir.path().join("a")).unwrap();
        let gone = s.scan(&["a".into()], &known, 102).unwrap();
        assert_eq!(gone.len(), 3);
        assert!(gone.iter().all(|r| r.deleted));
    }

    /// Names that sort around a directory's children in key order: `a-b` and `a.txt` come before
    /// `a/...` and `a0` after it.
    const NAMES: [&str; 5] = ["a", "a-b", "a.txt", "a0", "b"];

    /// A path of one to three of `NAMES`.
    fn path_of(ix: &[usize]) -> String {
        ix.iter().map(|i| NAMES[i % NAMES.len()]).collect::<Vec<_>>().join("/")
    }

    /// What is on disk under `root` (never through a link): path, kind, size.
    fn on_disk(root: &Path) -> BTreeMap<String, (FileKind, u64)> {
        let mut tree = BTreeMap::new();
        for e in walkdir::WalkDir::new(root).min_depth(1).follow_links(false).into_iter().flatten() {
            let rel = e.path().strip_prefix(root).unwrap().to_str().unwrap().to_string();
            let state = DiskState::of(&e.metadata().unwrap()).unwrap();
            tree.insert(rel, (state.kind, state.size));
        }
        tree
    }

    /// One change to the tree: a file written (its parents made directories), a directory made,
    /// or whatever is at the path removed.
    fn change(root: &Path, op: u8, path: &str, n: usize) {
        let full = root.join(path);
        let clear = |p: &Path| {
            if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(p).unwrap();
            } else if p.symlink_metadata().is_ok() {
                std::fs::remove_file(p).unwrap();
            }
        };
        // Parents must be directories: a file in the way goes.
        let mut parent = PathBuf::new();
        for part in Path::new(path).parent().into_iter().flat_map(|p| p.components()) {
            parent.push(part);
            let p = root.join(&parent);
            if p.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                clear(&p);
            }
        }
        match op % 3 {
            0 => {
                std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                if full.is_dir() {
                    clear(&full);
                }
                std::fs::write(&full, vec![b'x'; n % 7]).unwrap();
            }
            1 => {
                std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                if full.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                    clear(&full);
                }
                std::fs::create_dir_all(&full).unwrap();
            }
            _ => clear(&full),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever changed, a full scan against the records of the scans before it leaves records
        /// whose live ones are exactly what is on disk: every new or changed entry recorded, every
        /// gone one (however deep, whatever replaced its parent) a tombstone, nothing else touched.
        #[test]
        fn a_full_scan_leaves_records_that_match_the_disk(
            rounds in proptest::collection::vec(
                proptest::collection::vec((0u8..3, proptest::collection::vec(0usize..5, 1..4), 0usize..10), 1..8),
                1..5,
            )
        ) {
            let dir = tempfile::tempdir().unwrap();
            let s = scanner(dir.path());
            let mut known = Known(BTreeMap::new());
            for (round, changes) in rounds.into_iter().enumerate() {
                for (op, ix, n) in changes {
                    change(dir.path(), op, &path_of(&ix), n);
                }
                for r in s.scan(&["".into()], &known, 100 + round as u64).unwrap() {
                    known.0.insert(r.path.clone(), r);
                }
                let live: BTreeMap<String, (FileKind, u64)> =
                    known.0.values().filter(|r| !r.deleted).map(|r| (r.path.clone(), (r.kind, r.size))).collect();
                proptest::prop_assert_eq!(live, on_disk(dir.path()));
                // And a second scan finds nothing more.
                proptest::prop_assert!(s.scan(&["".into()], &known, 200).unwrap().is_empty());
            }
        }
    }

    #[test]
    fn a_long_walk_hands_over_its_records_in_batches_and_the_rest_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let n = SCAN_BATCH + 5;
        for d in 0..4 {
            std::fs::create_dir(dir.path().join(format!("d{d}"))).unwrap();
        }
        for i in 0..n {
            std::fs::write(dir.path().join(format!("d{}/f{i}", i % 4)), i.to_string()).unwrap();
        }
        let all = scanner(dir.path()).scan(&["".into()], &Known(BTreeMap::new()), 100).unwrap();
        assert_eq!(all.len(), n + 4);
        let handed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = Scanner {
            progress: Some(Box::new({
                let handed = handed.clone();
                move |records| handed.lock().unwrap().push(records)
            })),
            ..scanner(dir.path())
        };
        let rest = s.scan(&["".into()], &Known(BTreeMap::new()), 100).unwrap();
        let batches = std::mem::take(&mut *handed.lock().unwrap());
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), vec![SCAN_BATCH]);
        let mut paths: Vec<String> = batches.into_iter().flatten().chain(rest).map(|r| r.path).collect();
        paths.sort();
        let mut expected: Vec<String> = all.into_iter().map(|r| r.path).collect();
        expected.sort();
        assert_eq!(paths, expected, "every record once, batched or at the end");
    }

    #[test]
    fn nothing_behind_a_symlink_is_scanned_or_announced() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(outside.path().join("sub")).unwrap();
        std::fs::write(outside.path().join("sub/secret"), b"outside").unwrap();
        std::fs::write(outside.path().join("top"), b"outside").unwrap();
        std::fs::write(dir.path().join("mine"), b"inside").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("top"), dir.path().join("filelink")).unwrap();
        let none = Known(BTreeMap::new());
        let outside_text = outside.path().to_str().unwrap().to_string();
        // The whole folder, and every scope a refused pull or a watcher event could name: with
        // links synced, the two links are announced as links (their target text, no content), and
        // nothing they point to; with links ignored, not even that.
        for s in [scanner(dir.path()), ignoring_links(dir.path())] {
            for scope in ["", "link", "link/sub", "link/sub/secret", "link/top", "filelink", "link/nope/x"] {
                let found = s.scan(&[scope.into()], &none, 100).unwrap();
                for r in &found {
                    match r.path.as_str() {
                        "mine" => assert!(r.is_file()),
                        "link" if s.links => assert_eq!(r.link_target, outside_text),
                        "filelink" if s.links => assert_eq!(r.link_target, format!("{outside_text}/top")),
                        other => panic!("scope `{scope}` announced `{other}` (links: {})", s.links),
                    }
                    assert!(r.chunks.is_empty() || r.path == "mine", "{r:?}");
                    assert!(r.size == 0 || r.path == "mine", "{r:?}");
                }
            }
        }
        let s = ignoring_links(dir.path());
        // A directory we had, replaced by a link: its records become tombstones, and nothing of
        // what the link points to takes their place.
        std::fs::create_dir(dir.path().join("was")).unwrap();
        std::fs::write(dir.path().join("was/top"), b"inside").unwrap();
        let first = s.scan(&["".into()], &none, 101).unwrap();
        let known = Known(first.into_iter().map(|r| (r.path.clone(), r)).collect());
        std::fs::remove_dir_all(dir.path().join("was")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("was")).unwrap();
        for scope in ["was/top", ""] {
            let after = s.scan(&[scope.into()], &known, 102).unwrap();
            assert!(
                !after.is_empty() && after.iter().all(|r| r.deleted && r.path.starts_with("was")),
                "scope `{scope}`: {after:?}"
            );
        }
        // Synced as links, the same change is a directory replaced by a link: the children are
        // gone, and the link takes the directory's place.
        let s = scanner(dir.path());
        let after = s.scan(&["".into()], &known, 102).unwrap();
        let was: Vec<_> = after.iter().filter(|r| r.path.starts_with("was")).collect();
        assert_eq!(was.len(), 2, "{after:?}");
        assert!(was.iter().any(|r| r.path == "was/top" && r.deleted));
        assert!(was.iter().any(|r| r.path == "was" && r.is_link() && r.link_target == outside_text));
    }

    #[test]
    fn a_link_is_recorded_by_its_target_and_every_change_of_kind_or_target_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let s = scanner(dir.path());
        let link = |target: &str, at: &str| {
            let _ = std::fs::remove_file(dir.path().join(at));
            std::os::unix::fs::symlink(target, dir.path().join(at)).unwrap();
        };
        link("../../outside", "rel");
        link("/nonexistent/abs", "abs");
        std::fs::write(dir.path().join("f"), b"file").unwrap();
        let first = s.scan(&["".into()], &Known(BTreeMap::new()), 100).unwrap();
        let target = |rs: &[FileRecord], p: &str| rs.iter().find(|r| r.path == p).map(|r| r.link_target.clone());
        assert_eq!(target(&first, "rel").as_deref(), Some("../../outside"));
        assert_eq!(target(&first, "abs").as_deref(), Some("/nonexistent/abs"));
        let mut known = Known(first.into_iter().map(|r| (r.path.clone(), r)).collect());
        assert!(s.scan(&["".into()], &known, 101).unwrap().is_empty(), "unchanged links are no change");
        // Recreated with the same target (a new mtime): still no change.
        link("../../outside", "rel");
        assert!(s.scan(&["rel".into()], &known, 101).unwrap().is_empty());
        // Retargeted, with a target of the same length: a change, found by reading the link.
        link("../../outsidf", "rel");
        // A file replaced by a link, and a link by a file.
        std::fs::remove_file(dir.path().join("f")).unwrap();
        link("f-target", "f");
        std::fs::remove_file(dir.path().join("abs")).unwrap();
        std::fs::write(dir.path().join("abs"), b"now a file").unwrap();
        for scope in [vec!["".to_string()], vec!["rel".into(), "f".into(), "abs".into()]] {
            let changed = s.scan(&scope, &known, 102).unwrap();
            let by: BTreeMap<_, _> = changed.iter().map(|r| (r.path.as_str(), r)).collect();
            assert_eq!(by.len(), 3, "{scope:?}: {changed:?}");
            assert_eq!(by["rel"].link_target, "../../outsidf");
            assert!(by["f"].is_link() && by["f"].link_target == "f-target");
            assert!(by["abs"].is_file() && by["abs"].link_target.is_empty() && by["abs"].size == 10);
            assert!(changed.iter().all(|r| r.version.get(ShortId(1)) == 102));
        }
        // A link that is gone is a tombstone, whatever it pointed to.
        let all = s.scan(&["".into()], &known, 102).unwrap();
        known.0.extend(all.into_iter().map(|r| (r.path.clone(), r)));
        std::fs::remove_file(dir.path().join("rel")).unwrap();
        let gone = s.scan(&["rel".into()], &known, 103).unwrap();
        assert!(gone.len() == 1 && gone[0].deleted && gone[0].kind == FileKind::Symlink, "{gone:?}");
        known.0.extend(gone.into_iter().map(|r| (r.path.clone(), r)));
        // Ignored links are no record and no tombstone.
        assert!(ignoring_links(dir.path()).scan(&["".into(), "f".into()], &known, 104).unwrap().is_empty());
    }
}
