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

mod full;
#[cfg(test)]
mod tests;

/// What `examine` found recorded at a path before it looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Was {
    /// A live file or link: nothing can be recorded below it.
    Leaf,
    /// A directory, a delete, nothing, or not looked up: records below it are possible.
    Unknown,
}

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
    /// The wall clock (nanoseconds since the epoch) a full scan compares mtimes with: a file
    /// modified under `core::debounce::SETTLE` ago is left for a look of its own (`settling`).
    /// `None`: every file is judged as found.
    pub clock: Option<Box<dyn Fn() -> i64 + Send + Sync>>,
    /// Files a full scan left because they were still settling (at most
    /// `core::debounce::SETTLING_MAX`): the Index hands them to the Watcher, which hands them
    /// back once closed or quiet.
    pub settling: std::sync::Mutex<Vec<String>>,
}

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
                    // A directory replaced by a file: its children are gone. Where our record was
                    // a file or a link already, nothing is recorded below it: no listing (a
                    // pulled file is looked at once when its pull ends, and again for its event).
                    if self.examine(rel, state, known, now, &mut done, &mut out)? != Was::Leaf {
                        self.tombstones_under(rel, known, now, &mut done, &mut out);
                    }
                }
                None => {
                    self.tombstone(rel, known, now, &mut done, &mut out);
                    self.tombstones_under(rel, known, now, &mut done, &mut out);
                }
            }
        }
        Ok(out)
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
                Some(state) if state.kind == FileKind::Directory => {
                    self.examine(p, state, known, now, done, out)?;
                }
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
        let threads = crate::fs::cores();
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
    ) -> io::Result<Was> {
        if self.busy.contains(rel) || !done.insert(rel) {
            return Ok(Was::Unknown);
        }
        let previous = known.get(rel);
        let was = match &previous {
            Some(p) if !p.deleted && p.kind != FileKind::Directory => Was::Leaf,
            _ => Was::Unknown,
        };
        if previous.as_ref().is_some_and(|p| state.matches(p)) {
            return Ok(was);
        }
        self.judge(rel, state, previous, now, out)?;
        Ok(was)
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
