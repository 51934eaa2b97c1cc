//! The Index's rules for one folder, as a state machine: when a scan may start and what it covers
//! (paths changed meanwhile, held back while the Puller writes them, the whole folder when the
//! ignore rules change or a stopped folder is looked at again), how local deletes are held and
//! judged together (`DELETE_QUIET`, `DELETE_MAX_WAIT`, the mass-delete guard of `root`), when the
//! folder stops and resumes (`Fault`), which files cannot be read, and the generation of the
//! whole-folder recompute.
//!
//! Deterministic and free of I/O: time comes in as milliseconds, the few things a step must look
//! at (the root, whether a held delete still holds, how many records the folder has) are reached
//! through [`FolderIo`], and each step returns the [`Effect`]s the Index actor carries out, in order.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::path::{is_inside, one_level_up, IGNORE_FILE, MAX_PENDING_PATHS};
use super::root::{holds_mass_delete, RootProblem};
use super::{FileKind, FileRecord};

/// Local deletes are judged once no new one has been found for this long (or `DELETE_MAX_WAIT`
/// after the first): an `rm -rf` reaches the Index in many small batches, and is judged whole.
pub const DELETE_QUIET: u64 = 100;
pub const DELETE_MAX_WAIT: u64 = 2_000;

/// How often a folder's root is looked at (a stopped one's, to resume it; a healthy one's, to stop
/// it promptly), in milliseconds.
pub const ROOT_CHECK_EVERY: u64 = 2_000;

/// Why a folder stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The root is gone, not a directory, or not the one indexed: resumes by itself when it is back.
    Root(RootProblem),
    /// A scan would have deleted all `files` files: held until confirmed, or until they reappear.
    Emptied { files: u64 },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Root(p) => write!(f, "{p}; nothing is sent or applied until it is back (or `syncnode confirm` accepts a new root)"),
            Fault::Emptied { files } => write!(f, "all {files} files disappeared; their deletes are held until `syncnode confirm` (or until they reappear)"),
        }
    }
}

/// What a step may look at.
pub trait FolderIo {
    /// Whether the root is still the directory indexed.
    fn check_root(&self) -> Result<(), RootProblem>;
    /// Whether a held local delete may still be committed (`replica::delete_still_holds`).
    fn delete_holds(&self, delete: &FileRecord) -> bool;
    /// How many records (live files and directories) the folder has in the index.
    fn live_records(&self) -> u64;
}

/// What the Index actor does for a step, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Scan `scope` ("" is the whole folder: `full`), hashing `suspect` even if they look unchanged
    /// and skipping `busy` (paths being pulled). `reload_ignore`: read the ignore rules first.
    StartScan { scope: Vec<String>, full: bool, suspect: HashSet<String>, busy: HashSet<String>, reload_ignore: bool },
    /// The folder stopped, or stopped for another reason: say so, and drop the Puller's queue.
    EnterFault(Fault),
    /// The folder resumed.
    LeaveFault,
    /// Commit these local deletes.
    CommitDeletes(Vec<FileRecord>),
    /// Decide everything the folder needs again (a new generation of the recompute).
    Recompute,
    /// Call [`Folder::flush_due`] with `generation` at `at`.
    ScheduleFlush { at: u64, generation: u64 },
    /// The unreadable files are now `now`: `found` were not before, `readable` are again.
    Unreadable { now: BTreeMap<String, String>, found: Vec<(String, String)>, readable: Vec<String> },
}

/// One folder's state, as the Index keeps it.
#[derive(Debug, Default)]
pub struct Folder {
    /// Deleting every file of a folder that held at least this many is held (0: never).
    empty_folder_guard: u64,
    /// A scan of the whole folder runs. Paths that change meanwhile are scanned beside it (a full
    /// scan of a million files takes tens of seconds, and a change must not wait for it).
    full_running: bool,
    /// A scan of some paths runs; paths that change meanwhile wait in `pending`.
    paths_running: bool,
    pending: BTreeSet<String>,
    /// Paths scanned beside the running full scan: looked at again once it is done. Each scan
    /// judges what it saw against the record it read, and a scan of a path that found it as
    /// recorded commits nothing; the full scan's older sight of the path (taken before the change
    /// that scan was for) could then be committed after it, and stand with nothing to look again.
    beside: BTreeSet<String>,
    /// Paths to hash even if size and mtime match their record.
    suspect: HashSet<String>,
    /// Paths the Puller is writing now: not scanned until it is done with them.
    pulling: HashSet<String>,
    /// Why the folder is stopped, if it is: nothing is scanned into the index, announced, or
    /// applied until the cause goes away or the user confirms.
    fault: Option<Fault>,
    /// The user confirmed the folder's current state: the next judged deletes are committed even
    /// if they take every file.
    confirmed: bool,
    /// Recompute every need once the running (or next) scan is done.
    recompute_after_scan: bool,
    /// The generation of the running (or last) whole-folder recompute: a step of an older one stops.
    recompute: u64,
    /// Files that exist but cannot be read, with why (skipped by scans, never taken for deleted).
    unreadable: BTreeMap<String, String>,
    /// Local deletes found by scans, held to be judged together.
    deletes: BTreeMap<String, FileRecord>,
    /// When the oldest held delete was found, and the generation of the flush scheduled for them.
    deletes_since: Option<u64>,
    delete_flush: u64,
    /// When the last full scan ended.
    last_full_end: Option<u64>,
}

/// A periodic rescan waits at least this many times as long as the last full scan took since it
/// ended: on a tree whose full scan takes longer than the interval allows, rescans space out
/// (taking at most a tenth of the time) instead of running back to back.
pub const RESCAN_SPACING: u64 = 9;

impl Folder {
    pub fn new(empty_folder_guard: u64) -> Self {
        Folder { empty_folder_guard, ..Folder::default() }
    }

    pub fn fault(&self) -> Option<&Fault> {
        self.fault.as_ref()
    }

    pub fn scanning(&self) -> bool {
        self.full_running || self.paths_running
    }

    /// Whether `generation` is the current whole-folder recompute.
    pub fn recompute_current(&self, generation: u64) -> bool {
        self.recompute == generation
    }

    /// Starts a new whole-folder recompute: its generation (older ones stop).
    pub fn next_recompute(&mut self) -> u64 {
        self.recompute += 1;
        self.recompute
    }

    /// `paths` may have changed ("" is the whole folder).
    pub fn changed(&mut self, paths: impl IntoIterator<Item = String>, io: &impl FolderIo) -> Vec<Effect> {
        self.pending.extend(paths);
        while self.pending.len() > MAX_PENDING_PATHS {
            let before = self.pending.len();
            self.pending = self.pending.iter().map(|p| one_level_up(p).to_string()).collect();
            if self.pending.len() == before {
                break;
            }
        }
        self.start_scan(io)
    }

    /// The periodic rescan is due (`now`, and how long the last full scan took): a full scan,
    /// unless the last one ended less than `RESCAN_SPACING` times its duration ago.
    pub fn periodic(&mut self, now: u64, last_full_ms: u64, io: &impl FolderIo) -> Vec<Effect> {
        if self.last_full_end.is_some_and(|end| now < end + RESCAN_SPACING * last_full_ms) {
            return Vec::new();
        }
        self.changed([String::new()], io)
    }

    /// `path`'s content no longer matches its record: hash it again.
    pub fn rehash(&mut self, path: String, io: &impl FolderIo) -> Vec<Effect> {
        self.suspect.insert(path.clone());
        self.changed([path], io)
    }

    /// The Puller started (`active`) or ended writing `path`. Its end has the path looked at once
    /// (what the pull left, or a local edit held back meanwhile).
    pub fn pulling(&mut self, path: String, active: bool, io: &impl FolderIo) -> Vec<Effect> {
        if active {
            self.pulling.insert(path);
            Vec::new()
        } else {
            self.pulling.remove(&path);
            self.changed([path], io)
        }
    }

    /// What a look at the root found: a root gone stops the folder, a root back resumes it.
    pub fn root_checked(&mut self, result: Result<(), RootProblem>, io: &impl FolderIo) -> Vec<Effect> {
        match (result, &self.fault) {
            (Err(problem), _) => self.enter_fault(Fault::Root(problem)),
            (Ok(()), Some(Fault::Root(_))) => self.leave_fault(io),
            (Ok(()), _) => Vec::new(),
        }
    }

    /// The user confirmed the folder's state (for a new root, after the actor accepted it): the
    /// next deletes are committed even if they take every file, after a full scan.
    pub fn confirm(&mut self, io: &impl FolderIo) -> Vec<Effect> {
        match self.fault {
            None => Vec::new(),
            Some(Fault::Emptied { .. }) => {
                self.confirmed = true;
                self.changed([String::new()], io)
            }
            Some(Fault::Root(_)) => {
                // A new root means what it holds now is the folder: missing files are deletes.
                self.confirmed = true;
                self.leave_fault(io)
            }
        }
    }

    /// The running scan ended; `root` is the root checked after it. `Err`: the root went away
    /// while it ran, and what it saw means nothing (its records must not be taken). Otherwise the
    /// files of `scope` that could not be read are noted.
    pub fn scan_finished(
        &mut self,
        root: Result<(), RootProblem>,
        full: bool,
        scope: &[String],
        unreadable: Vec<(String, String)>,
    ) -> Result<Vec<Effect>, Vec<Effect>> {
        if full {
            self.full_running = false;
            // After its records are in (they come before this end).
            self.pending.append(&mut self.beside);
        } else {
            self.paths_running = false;
        }
        if let Err(problem) = root {
            return Err(self.enter_fault(Fault::Root(problem)));
        }
        Ok(self.note_unreadable(full, scope, unreadable))
    }

    /// What a scan's records came to, once judged against the index: `stale` paths (a pull changed
    /// their record meanwhile) are looked at again, `deletes` are held.
    pub fn scanned(&mut self, stale: Vec<String>, deletes: Vec<FileRecord>, now: u64) {
        self.pending.extend(stale);
        if !deletes.is_empty() {
            self.deletes_since.get_or_insert(now);
            self.deletes.extend(deletes.into_iter().map(|r| (r.path.clone(), r)));
        }
    }

    /// After `scan_finished` and the scan's records: a full scan sees the whole folder and its
    /// deletes are judged now, as are deletes held for `DELETE_MAX_WAIT`; others wait until no new
    /// one has come for `DELETE_QUIET`. Then the recompute asked for, and the next scan.
    pub fn scan_done(&mut self, full: bool, now: u64, io: &impl FolderIo) -> Vec<Effect> {
        let mut effects = Vec::new();
        if full {
            self.last_full_end = Some(now);
        }
        let overdue = self.deletes_since.is_some_and(|t| now.saturating_sub(t) >= DELETE_MAX_WAIT);
        if full || overdue {
            let held = self.flush(io, &mut effects);
            if full && !held && matches!(self.fault, Some(Fault::Emptied { .. })) {
                // The files are back, or the user confirmed: resume.
                self.fault = None;
                effects.push(Effect::LeaveFault);
                self.recompute_after_scan = true;
            }
        } else if let Some(since) = self.deletes_since.filter(|_| !self.deletes.is_empty()) {
            self.delete_flush += 1;
            let at = (now + DELETE_QUIET).min(since + DELETE_MAX_WAIT);
            effects.push(Effect::ScheduleFlush { at, generation: self.delete_flush });
        }
        if std::mem::take(&mut self.recompute_after_scan) && self.fault.is_none() {
            effects.push(Effect::Recompute);
        }
        effects.extend(self.start_scan(io));
        effects
    }

    /// A flush scheduled by `ScheduleFlush` is due: unless a later one replaced it, the held
    /// deletes are judged, and what no longer holds is scanned.
    pub fn flush_due(&mut self, generation: u64, io: &impl FolderIo) -> Vec<Effect> {
        if self.delete_flush != generation {
            return Vec::new();
        }
        let mut effects = Vec::new();
        self.flush(io, &mut effects);
        effects.extend(self.start_scan(io));
        effects
    }

    /// Judges the held deletes together: committed, unless together they would delete every file
    /// of a folder that held at least `empty_folder_guard` and the user has not confirmed it (then
    /// the folder stops instead: returns true). Deletes that no longer hold are dropped and their
    /// paths scanned again (our record may have moved on without the disk, and no watcher event
    /// would bring the path back before the periodic rescan).
    fn flush(&mut self, io: &impl FolderIo, effects: &mut Vec<Effect>) -> bool {
        self.deletes_since = None;
        let held = std::mem::take(&mut self.deletes);
        if held.is_empty() {
            return false;
        }
        // An empty directory where the root was says nothing about the files.
        if let Err(problem) = io.check_root() {
            effects.extend(self.enter_fault(Fault::Root(problem)));
            return true;
        }
        let (deletes, again): (Vec<FileRecord>, Vec<FileRecord>) = held.into_values().partition(|r| io.delete_holds(r));
        self.pending.extend(again.into_iter().map(|r| r.path));
        let files = deletes.iter().filter(|r| r.kind == FileKind::File).count() as u64;
        let live = io.live_records();
        if !self.confirmed && holds_mass_delete(live, deletes.len() as u64, files, self.empty_folder_guard) {
            effects.extend(self.enter_fault(Fault::Emptied { files }));
            return true;
        }
        self.confirmed = false;
        if !deletes.is_empty() {
            effects.push(Effect::CommitDeletes(deletes));
        }
        false
    }

    /// Starts a scan of the pending paths, if one may start: none is running, the root is there,
    /// and some pending path is not being pulled (those wait for their pull to end).
    fn start_scan(&mut self, io: &impl FolderIo) -> Vec<Effect> {
        match &self.fault {
            // Nothing is read until the root is back (`root_checked`).
            Some(Fault::Root(_)) => {
                self.pending.clear();
                return Vec::new();
            }
            // Only a full scan can tell whether the files are back.
            Some(Fault::Emptied { .. }) if !self.pending.is_empty() => {
                self.pending = BTreeSet::from([String::new()]);
            }
            _ => {}
        }
        // The whole folder (asked for, or new ignore rules): only when no scan runs. Otherwise
        // the changed paths, beside a running full scan but never beside another such scan; what
        // asks for a full scan waits for the next one.
        let wants_full = self.pending.iter().any(|p| p.is_empty() || p == IGNORE_FILE);
        let full_now = wants_full && !self.full_running && !self.paths_running;
        let pulling = &self.pulling;
        let waits = |p: &String| pulling.contains(p) || (!full_now && (p.is_empty() || p == IGNORE_FILE));
        if (!full_now && self.paths_running) || self.pending.iter().all(waits) {
            return Vec::new();
        }
        if let Err(problem) = io.check_root() {
            return self.enter_fault(Fault::Root(problem));
        }
        let pulling = &self.pulling;
        let waits = |p: &String| pulling.contains(p) || (!full_now && (p.is_empty() || p == IGNORE_FILE));
        let (waiting, scope): (BTreeSet<String>, BTreeSet<String>) =
            std::mem::take(&mut self.pending).into_iter().partition(|p| waits(p));
        self.pending = waiting;
        let mut scope: Vec<String> = scope.into_iter().collect();
        let reload_ignore = scope.iter().any(|p| p == IGNORE_FILE);
        if reload_ignore {
            // New rules change what every path is: a path ignored until now is found only by a
            // full scan, and a peer's record ignored until now is wanted only if needs are
            // computed again (tests/modes.rs).
            scope.push(String::new());
            self.recompute_after_scan = true;
        }
        let full = scope.iter().any(|p| p.is_empty());
        if full {
            self.full_running = true;
        } else {
            self.paths_running = true;
            if self.full_running {
                self.beside.extend(scope.iter().cloned());
            }
        }
        let suspect = std::mem::take(&mut self.suspect);
        vec![Effect::StartScan { scope, full, suspect, busy: self.pulling.clone(), reload_ignore }]
    }

    /// Stops the folder: nothing pending is scanned nor held delete judged. Said once, when it
    /// starts or its reason changes.
    fn enter_fault(&mut self, fault: Fault) -> Vec<Effect> {
        self.pending.clear();
        self.beside.clear();
        self.deletes.clear();
        self.deletes_since = None;
        if self.fault.as_ref() == Some(&fault) {
            return Vec::new();
        }
        self.fault = Some(fault.clone());
        vec![Effect::EnterFault(fault)]
    }

    /// Resumes a stopped folder: a full rescan, then every need recomputed.
    fn leave_fault(&mut self, io: &impl FolderIo) -> Vec<Effect> {
        if self.fault.take().is_none() {
            return Vec::new();
        }
        self.recompute_after_scan = true;
        let mut effects = vec![Effect::LeaveFault];
        effects.extend(self.changed([String::new()], io));
        effects
    }

    /// Keeps the list of unreadable files up to date with what a scan of `scope` found.
    fn note_unreadable(&mut self, full: bool, scope: &[String], found: Vec<(String, String)>) -> Vec<Effect> {
        let covered = |path: &str| full || scope.iter().any(|s| s == path || is_inside(path, s));
        let before = std::mem::take(&mut self.unreadable);
        let (mut kept, dropped): (BTreeMap<_, _>, BTreeMap<_, _>) = before.into_iter().partition(|(p, _)| !covered(p));
        let mut new = Vec::new();
        for (path, reason) in found {
            if !dropped.contains_key(&path) {
                new.push((path.clone(), reason.clone()));
            }
            kept.insert(path, reason);
        }
        let readable = dropped.into_keys().filter(|p| !kept.contains_key(p)).collect();
        self.unreadable = kept.clone();
        vec![Effect::Unreadable { now: kept, found: new, readable }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::fixtures::file;
    use crate::core::ShortId;
    use proptest::prelude::*;
    use std::cell::{Cell, RefCell};

    /// A folder's root, disk and index as a step sees them.
    struct Io {
        root: RefCell<Result<(), RootProblem>>,
        holds: Cell<bool>,
        live: Cell<u64>,
    }

    impl Default for Io {
        fn default() -> Self {
            Io { root: RefCell::new(Ok(())), holds: Cell::new(true), live: Cell::new(100) }
        }
    }

    impl FolderIo for Io {
        fn check_root(&self) -> Result<(), RootProblem> {
            self.root.borrow().clone()
        }
        fn delete_holds(&self, _: &FileRecord) -> bool {
            self.holds.get()
        }
        fn live_records(&self) -> u64 {
            self.live.get()
        }
    }

    fn paths(v: &[&str]) -> Vec<String> {
        v.iter().map(|p| p.to_string()).collect()
    }

    fn deleted(path: &str) -> FileRecord {
        file(path, 1, &[(1, 1)], 1, 1).tombstone(ShortId(1), 2)
    }

    /// The scope of the one scan `effects` start, if any.
    fn scope_of(effects: &[Effect]) -> Option<(Vec<String>, bool)> {
        let mut scans = effects.iter().filter_map(|e| match e {
            Effect::StartScan { scope, full, .. } => Some((scope.clone(), *full)),
            _ => None,
        });
        let first = scans.next();
        assert!(scans.next().is_none(), "two scans started at once: {effects:?}");
        first
    }

    /// Ends the running scan with `deletes` found, at `now` (what it says of unreadable files left out).
    fn end_scan(f: &mut Folder, io: &Io, full: bool, deletes: Vec<FileRecord>, now: u64) -> Vec<Effect> {
        let mut effects = f.scan_finished(io.check_root(), full, &[], Vec::new()).expect("root held");
        effects.retain(|e| !matches!(e, Effect::Unreadable { .. }));
        f.scanned(Vec::new(), deletes, now);
        effects.extend(f.scan_done(full, now, io));
        effects
    }

    #[test]
    fn changes_during_a_scan_wait_for_it_and_go_together() {
        let (mut f, io) = (Folder::new(10), Io::default());
        assert_eq!(scope_of(&f.changed(paths(&["a"]), &io)), Some((paths(&["a"]), false)));
        assert_eq!(scope_of(&f.changed(paths(&["b"]), &io)), None, "a scan runs");
        assert_eq!(scope_of(&f.changed(paths(&["c"]), &io)), None);
        let effects = end_scan(&mut f, &io, false, Vec::new(), 10);
        assert_eq!(scope_of(&effects), Some((paths(&["b", "c"]), false)));
        assert_eq!(scope_of(&end_scan(&mut f, &io, false, Vec::new(), 20)), None, "nothing left");
        assert!(!f.scanning());
    }

    #[test]
    fn a_burst_of_changes_waiting_for_a_scan_gives_way_to_their_directories() {
        let (mut f, io) = (Folder::new(10), Io::default());
        assert!(scope_of(&f.changed(paths(&["x"]), &io)).is_some(), "a scan runs");
        let burst: Vec<String> = (0..=MAX_PENDING_PATHS).map(|i| format!("d{}/e/f{i}", i % 3)).collect();
        assert_eq!(scope_of(&f.changed(burst, &io)), None);
        assert_eq!(f.pending.len(), 3, "{:?}", f.pending);
        let effects = end_scan(&mut f, &io, false, Vec::new(), 10);
        assert_eq!(scope_of(&effects), Some((paths(&["d0/e", "d1/e", "d2/e"]), false)));
    }

    #[test]
    fn a_path_being_pulled_waits_for_its_pull_then_is_scanned_once() {
        let (mut f, io) = (Folder::new(10), Io::default());
        assert!(f.pulling("a".into(), true, &io).is_empty());
        assert_eq!(scope_of(&f.changed(paths(&["a"]), &io)), None, "only a pulled path is pending");
        let effects = f.changed(paths(&["b"]), &io);
        let Some(Effect::StartScan { scope, busy, .. }) = effects.first() else { panic!("{effects:?}") };
        assert_eq!((scope.clone(), busy.clone()), (paths(&["b"]), HashSet::from(["a".to_string()])));
        assert_eq!(scope_of(&end_scan(&mut f, &io, false, Vec::new(), 1)), None, "a is still pulled");
        assert_eq!(scope_of(&f.pulling("a".into(), false, &io)), Some((paths(&["a"]), false)));
        assert_eq!(scope_of(&end_scan(&mut f, &io, false, Vec::new(), 2)), None, "once");
    }

    #[test]
    fn a_changed_ignore_file_scans_everything_and_recomputes_after() {
        let (mut f, io) = (Folder::new(10), Io::default());
        let effects = f.changed(paths(&[IGNORE_FILE]), &io);
        let Some(Effect::StartScan { scope, full: true, reload_ignore: true, .. }) = effects.first() else {
            panic!("{effects:?}")
        };
        assert_eq!(scope, &paths(&[IGNORE_FILE, ""]));
        assert_eq!(end_scan(&mut f, &io, true, Vec::new(), 1), vec![Effect::Recompute]);
        let generation = f.next_recompute();
        assert!(f.recompute_current(generation));
        assert!(!f.recompute_current(generation - 1));
    }

    #[test]
    fn a_rehashed_path_is_suspect_in_the_next_scan_only() {
        let (mut f, io) = (Folder::new(10), Io::default());
        let effects = f.rehash("a".into(), &io);
        let Some(Effect::StartScan { suspect, .. }) = effects.first() else { panic!("{effects:?}") };
        assert_eq!(suspect, &HashSet::from(["a".to_string()]));
        let effects = end_scan(&mut f, &io, false, Vec::new(), 1);
        assert!(effects.is_empty(), "{effects:?}");
        let effects = f.changed(paths(&["a"]), &io);
        let Some(Effect::StartScan { suspect, .. }) = effects.first() else { panic!("{effects:?}") };
        assert!(suspect.is_empty());
    }

    #[test]
    fn a_root_gone_stops_everything_until_it_is_back_then_rescans_and_recomputes() {
        let (mut f, io) = (Folder::new(10), Io::default());
        *io.root.borrow_mut() = Err(RootProblem::Missing);
        assert_eq!(f.changed(paths(&["a"]), &io), vec![Effect::EnterFault(Fault::Root(RootProblem::Missing))]);
        assert!(f.changed(paths(&["b"]), &io).is_empty(), "said once, nothing scanned");
        assert!(f.root_checked(Err(RootProblem::Missing), &io).is_empty());
        *io.root.borrow_mut() = Ok(());
        assert!(f.changed(paths(&["c"]), &io).is_empty(), "only a root check resumes");
        let effects = f.root_checked(Ok(()), &io);
        assert_eq!(effects[0], Effect::LeaveFault);
        assert_eq!(scope_of(&effects), Some((paths(&[""]), true)));
        assert_eq!(end_scan(&mut f, &io, true, Vec::new(), 1), vec![Effect::Recompute]);
    }

    #[test]
    fn a_scan_that_outlived_its_root_is_void() {
        let (mut f, io) = (Folder::new(10), Io::default());
        scope_of(&f.changed(paths(&["a"]), &io)).expect("scan");
        let effects = f.scan_finished(Err(RootProblem::OtherFilesystem), false, &paths(&["a"]), Vec::new());
        assert_eq!(effects, Err(vec![Effect::EnterFault(Fault::Root(RootProblem::OtherFilesystem))]));
        assert!(!f.scanning());
    }

    #[test]
    fn deletes_wait_for_quiet_then_are_judged_together() {
        let (mut f, io) = (Folder::new(10), Io::default());
        scope_of(&f.changed(paths(&["a"]), &io)).expect("scan");
        let effects = end_scan(&mut f, &io, false, vec![deleted("a")], 1_000);
        assert_eq!(effects, vec![Effect::ScheduleFlush { at: 1_000 + DELETE_QUIET, generation: 1 }]);
        scope_of(&f.changed(paths(&["b"]), &io)).expect("scan");
        let effects = end_scan(&mut f, &io, false, vec![deleted("b")], 1_050);
        assert_eq!(effects, vec![Effect::ScheduleFlush { at: 1_050 + DELETE_QUIET, generation: 2 }]);
        assert!(f.flush_due(1, &io).is_empty(), "replaced by a later one");
        assert_eq!(f.flush_due(2, &io), vec![Effect::CommitDeletes(vec![deleted("a"), deleted("b")])]);
        assert!(f.flush_due(2, &io).is_empty(), "nothing held");
    }

    #[test]
    fn deletes_found_without_pause_are_judged_after_the_max_wait() {
        let (mut f, io) = (Folder::new(10), Io::default());
        let mut now = 5_000;
        let mut last_at = 0;
        for i in 0..30 {
            scope_of(&f.changed([format!("p{i}")], &io)).expect("scan");
            let effects = end_scan(&mut f, &io, false, vec![deleted(&format!("p{i}"))], now);
            match &effects[..] {
                [Effect::ScheduleFlush { at, .. }] => {
                    assert!(*at <= 5_000 + DELETE_MAX_WAIT);
                    last_at = *at;
                }
                [Effect::CommitDeletes(d)] => {
                    assert!(now >= 5_000 + DELETE_MAX_WAIT, "overdue");
                    assert_eq!(d.len(), i + 1);
                    assert_eq!(last_at, 5_000 + DELETE_MAX_WAIT, "the flush was due by then");
                    return;
                }
                other => panic!("{other:?}"),
            }
            now += 90;
        }
        panic!("never judged");
    }

    #[test]
    fn a_change_during_a_full_scan_is_scanned_beside_it() {
        let (mut f, io) = (Folder::new(10), Io::default());
        assert_eq!(scope_of(&f.changed(paths(&[""]), &io)), Some((paths(&[""]), true)));
        assert_eq!(scope_of(&f.changed(paths(&["a"]), &io)), Some((paths(&["a"]), false)), "not held up");
        assert_eq!(scope_of(&f.changed(paths(&["b"]), &io)), None, "one scan of paths at a time");
        assert_eq!(scope_of(&f.changed(paths(&[""]), &io)), None, "the next full scan waits");
        let effects = end_scan(&mut f, &io, false, vec![], 1);
        assert_eq!(scope_of(&effects), Some((paths(&["b"]), false)), "beside the full scan still running");
        assert_eq!(scope_of(&end_scan(&mut f, &io, true, vec![], 2)), None, "a full scan starts alone");
        // The paths scanned beside the full scan are looked at again after it: here by the next one.
        assert_eq!(scope_of(&end_scan(&mut f, &io, false, vec![], 3)), Some((paths(&["", "a", "b"]), true)));
    }

    /// Found by tests/sim.rs (seeds 6953, 9585): a node starts, its full scan sees file `a`,
    /// whose record is a tombstone (the file came back with a power loss); the user deletes it
    /// meanwhile, and the watcher's scan of `a`, beside the full scan, finds it absent as recorded
    /// and commits nothing. The full scan's sight of `a` was then committed, and the index said
    /// `a` exists, with nothing to look at it again: peers pulled it forever. A path scanned beside
    /// a full scan is now scanned again once the full scan is done.
    #[test]
    fn a_path_scanned_beside_a_full_scan_is_scanned_again_after_it() {
        let (mut f, io) = (Folder::new(10), Io::default());
        assert_eq!(scope_of(&f.changed(paths(&[""]), &io)), Some((paths(&[""]), true)));
        assert_eq!(scope_of(&f.changed(paths(&["a"]), &io)), Some((paths(&["a"]), false)));
        assert_eq!(scope_of(&end_scan(&mut f, &io, false, vec![], 1)), None, "nothing else to scan yet");
        assert_eq!(scope_of(&end_scan(&mut f, &io, true, vec![], 2)), Some((paths(&["a"]), false)));
        assert_eq!(scope_of(&end_scan(&mut f, &io, false, vec![], 3)), None, "once");
        // A path scan that starts after the full one is not.
        assert_eq!(scope_of(&f.changed(paths(&["b"]), &io)), Some((paths(&["b"]), false)));
        assert_eq!(scope_of(&end_scan(&mut f, &io, false, vec![], 4)), None);
    }

    #[test]
    fn periodic_rescans_space_out_on_a_tree_that_takes_long_to_scan() {
        let (mut f, io) = (Folder::new(10), Io::default());
        // The first is due at once; a full scan then took 20 s and ended at 100 s.
        assert_eq!(scope_of(&f.periodic(80_000, 0, &io)), Some((paths(&[""]), true)));
        assert_eq!(scope_of(&end_scan(&mut f, &io, true, vec![], 100_000)), None);
        assert_eq!(scope_of(&f.periodic(160_000, 20_000, &io)), None, "within 9 x 20 s of its end");
        assert_eq!(scope_of(&f.periodic(280_000, 20_000, &io)), Some((paths(&[""]), true)));
        // A change, or a full scan asked for by anything but the timer, is never held back.
        assert_eq!(scope_of(&end_scan(&mut f, &io, true, vec![], 300_000)), None);
        assert_eq!(scope_of(&f.changed(paths(&[""]), &io)), Some((paths(&[""]), true)));
    }

    #[test]
    fn a_delete_that_no_longer_holds_is_scanned_again() {
        let (mut f, io) = (Folder::new(10), Io::default());
        assert_eq!(scope_of(&f.changed(paths(&[""]), &io)), Some((paths(&[""]), true)));
        io.holds.set(false);
        let effects = end_scan(&mut f, &io, true, vec![deleted("a")], 1);
        assert_eq!(scope_of(&effects), Some((paths(&["a"]), false)));
        assert!(!effects.iter().any(|e| matches!(e, Effect::CommitDeletes(_))));
    }

    #[test]
    fn a_folder_emptied_is_held_until_confirmed_or_back() {
        let (mut f, io) = (Folder::new(2), Io::default());
        io.live.set(3);
        let all = || vec![deleted("a"), deleted("b"), deleted("c")];
        scope_of(&f.changed(paths(&[""]), &io)).expect("scan");
        assert_eq!(end_scan(&mut f, &io, true, all(), 1), vec![Effect::EnterFault(Fault::Emptied { files: 3 })]);
        // Any change is looked at with a full scan; the files are still gone.
        assert_eq!(scope_of(&f.changed(paths(&["x"]), &io)), Some((paths(&[""]), true)));
        assert!(end_scan(&mut f, &io, true, all(), 2).is_empty(), "held, said once");
        // The user confirms: the next full scan sends them, and the folder resumes.
        assert_eq!(scope_of(&f.confirm(&io)), Some((paths(&[""]), true)));
        let effects = end_scan(&mut f, &io, true, all(), 3);
        assert_eq!(effects, vec![Effect::CommitDeletes(all()), Effect::LeaveFault, Effect::Recompute]);
        // The confirmation is spent.
        scope_of(&f.changed(paths(&[""]), &io)).expect("scan");
        assert_eq!(end_scan(&mut f, &io, true, all(), 4), vec![Effect::EnterFault(Fault::Emptied { files: 3 })]);
        // The files come back: a full scan finds no delete, and the folder resumes.
        scope_of(&f.changed(paths(&["a"]), &io)).expect("scan");
        assert_eq!(end_scan(&mut f, &io, true, Vec::new(), 5), vec![Effect::LeaveFault, Effect::Recompute]);
        assert_eq!(f.fault(), None);
    }

    #[test]
    fn a_new_root_confirmed_resumes_with_a_full_scan_whose_deletes_go() {
        let (mut f, io) = (Folder::new(2), Io::default());
        io.live.set(2);
        f.root_checked(Err(RootProblem::OtherDirectory), &io);
        let effects = f.confirm(&io);
        assert_eq!(effects[0], Effect::LeaveFault);
        assert_eq!(scope_of(&effects), Some((paths(&[""]), true)));
        let effects = end_scan(&mut f, &io, true, vec![deleted("a"), deleted("b")], 1);
        assert_eq!(effects, vec![Effect::CommitDeletes(vec![deleted("a"), deleted("b")]), Effect::Recompute]);
    }

    #[test]
    fn unreadable_files_are_said_once_and_forgotten_when_a_scan_of_them_reads_them() {
        let mut f = Folder::new(2);
        let reason = |p: &str| (p.to_string(), "denied".to_string());
        let found = f.scan_finished(Ok(()), true, &paths(&[""]), vec![reason("d/a"), reason("b")]).unwrap();
        let Effect::Unreadable { now, found, readable } = &found[0] else { panic!() };
        assert_eq!((now.len(), found.len(), readable.len()), (2, 2, 0));
        // A scan of d/ still cannot read d/a: not said again; b is outside it and stays.
        let effects = f.scan_finished(Ok(()), false, &paths(&["d"]), vec![reason("d/a")]).unwrap();
        let Effect::Unreadable { now, found, readable } = &effects[0] else { panic!() };
        assert_eq!((now.len(), found.len(), readable.len()), (2, 0, 0));
        let effects = f.scan_finished(Ok(()), false, &paths(&["b"]), Vec::new()).unwrap();
        let Effect::Unreadable { now, found, readable } = &effects[0] else { panic!() };
        assert_eq!(
            (now.keys().map(String::as_str).collect::<Vec<_>>(), found.len(), readable.clone()),
            (vec!["d/a"], 0, paths(&["b"]))
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Changed(usize),
        Pull(usize, bool),
        /// The running scan ends, with deletes of these paths found.
        ScanEnds(Vec<usize>),
        Wait(u64),
        /// `n` times: a change, its scan ending with a delete, `gap` ms (an `rm -rf` in batches).
        Burst {
            n: usize,
            gap: u64,
        },
        Root(bool),
        RootCheck,
        Confirm,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..5usize).prop_map(Op::Changed),
            3 => (0..5usize, any::<bool>()).prop_map(|(p, a)| Op::Pull(p, a)),
            4 => proptest::collection::vec(0..5usize, 0..3).prop_map(Op::ScanEnds),
            // Mostly less than DELETE_QUIET: deletes found without a pause, until DELETE_MAX_WAIT.
            3 => prop_oneof![3 => 0..DELETE_QUIET + 20, 1 => 0..3_000u64].prop_map(Op::Wait),
            1 => (1..40usize, 0..DELETE_QUIET + 20).prop_map(|(n, gap)| Op::Burst { n, gap }),
            1 => any::<bool>().prop_map(Op::Root),
            1 => Just(Op::RootCheck),
            1 => Just(Op::Confirm),
        ]
    }

    const PATHS: [&str; 5] = ["", "a", "b", "d/c", IGNORE_FILE];

    /// The Index actor, as far as the rules see it, with what the properties check.
    struct Sim {
        f: Folder,
        io: Io,
        now: u64,
        /// The scans running (full or not), in the order they started.
        running: Vec<bool>,
        timers: Vec<(u64, u64)>,
        pulling: BTreeSet<String>,
        /// Paths whose pull ended, not scanned since.
        owed: BTreeSet<String>,
        /// Paths said to have changed, not scanned since.
        asked: BTreeSet<String>,
        /// Paths scanned beside the running full scan: owed a scan once it ends.
        beside: BTreeSet<String>,
    }

    impl Sim {
        fn apply(&mut self, effects: Vec<Effect>) -> Result<(), TestCaseError> {
            for e in effects {
                match e {
                    Effect::StartScan { scope, full, busy, .. } => {
                        // A full scan starts alone; a scan of paths beside a full one at most.
                        if full {
                            prop_assert!(self.running.is_empty(), "a full scan started while a scan runs");
                        } else {
                            prop_assert!(!self.running.contains(&false), "two scans of paths at once");
                        }
                        prop_assert!(self.io.check_root().is_ok(), "scanned without a root");
                        prop_assert!(!matches!(self.f.fault(), Some(Fault::Root(_))), "scanned while stopped");
                        prop_assert_eq!(busy, self.pulling.iter().cloned().collect::<HashSet<_>>());
                        for p in scope.iter().filter(|p| !p.is_empty()) {
                            prop_assert!(!self.pulling.contains(p), "{} scanned while pulled", p);
                            let owed = self.owed.remove(p);
                            prop_assert!(self.asked.remove(p) || owed, "{} scanned again without a cause", p);
                        }
                        if full {
                            self.owed.clear();
                            self.asked.retain(|p| scope.contains(p));
                        } else if self.running.contains(&true) {
                            self.beside.extend(scope.iter().cloned());
                        }
                        self.running.push(full);
                    }
                    // Pending paths are dropped: the full scan that resumes covers them.
                    Effect::EnterFault(_) => {
                        self.owed.clear();
                        self.asked.clear();
                        self.beside.clear();
                    }
                    Effect::ScheduleFlush { at, generation } => {
                        prop_assert!(at >= self.now);
                        self.timers.push((at, generation));
                    }
                    _ => {}
                }
            }
            Ok(())
        }

        /// Held deletes are judged within `DELETE_MAX_WAIT` of being found.
        fn check_deletes(&self) -> Result<(), TestCaseError> {
            prop_assert_eq!(self.f.deletes.is_empty(), self.f.deletes_since.is_none());
            if let Some(since) = self.f.deletes_since {
                prop_assert!(self.now <= since + DELETE_MAX_WAIT, "held since {} at {}", since, self.now);
            }
            Ok(())
        }

        fn wait(&mut self, until: u64) -> Result<(), TestCaseError> {
            loop {
                self.timers.sort();
                match self.timers.first() {
                    Some(&(at, generation)) if at <= until => {
                        self.timers.remove(0);
                        self.now = self.now.max(at);
                        self.check_deletes()?;
                        let effects = self.f.flush_due(generation, &self.io);
                        self.apply(effects)?;
                    }
                    _ => break,
                }
            }
            self.now = until;
            self.check_deletes()
        }

        fn end_scan(&mut self, deletes: &[usize]) -> Result<(), TestCaseError> {
            // Either running scan may end first.
            if self.running.is_empty() {
                return Ok(());
            }
            let full =
                if deletes.len().is_multiple_of(2) { self.running.remove(0) } else { self.running.pop().expect("one") };
            if full {
                self.owed.append(&mut self.beside);
            }
            let root = self.io.check_root();
            match self.f.scan_finished(root, full, &[], Vec::new()) {
                Err(effects) => self.apply(effects),
                Ok(effects) => {
                    self.apply(effects)?;
                    let deletes = deletes.iter().map(|&i| deleted(PATHS[i])).filter(|r| !r.path.is_empty()).collect();
                    self.f.scanned(Vec::new(), deletes, self.now);
                    let effects = self.f.scan_done(full, self.now, &self.io);
                    self.apply(effects)
                }
            }
        }
    }

    proptest! {
        /// A scan never starts while one runs, nor while the root is gone or the folder stopped
        /// for it; a path being pulled is never in a scan's scope (only in its `busy`), and once its
        /// pull ends it is scanned once more; a held delete is judged within `DELETE_MAX_WAIT` of
        /// being found; and once the root holds and pulls end, every scan asked for has run.
        #[test]
        fn scans_and_deletes_follow_the_rules(ops in proptest::collection::vec(op(), 1..200), guard in 0u64..3) {
            let mut s = Sim {
                f: Folder::new(guard),
                io: Io::default(),
                now: 1_000,
                running: Vec::new(),
                timers: Vec::new(),
                pulling: BTreeSet::new(),
                owed: BTreeSet::new(),
                asked: BTreeSet::new(),
                beside: BTreeSet::new(),
            };
            s.io.live.set(3);
            for op in ops {
                match op {
                    Op::Changed(i) => {
                        s.asked.insert(PATHS[i].to_string());
                        let effects = s.f.changed([PATHS[i].to_string()], &s.io);
                        s.apply(effects)?;
                    }
                    Op::Pull(i, active) => {
                        let path = PATHS[i].to_string();
                        if path.is_empty() || active == s.pulling.contains(&path) {
                            continue;
                        }
                        if active {
                            s.pulling.insert(path.clone());
                        } else {
                            s.pulling.remove(&path);
                            s.owed.insert(path.clone());
                        }
                        let effects = s.f.pulling(path, active, &s.io);
                        s.apply(effects)?;
                    }
                    Op::ScanEnds(deletes) => s.end_scan(&deletes)?,
                    Op::Wait(ms) => s.wait(s.now + ms)?,
                    Op::Burst { n, gap } => {
                        for k in 0..n {
                            let i = 1 + k % 3;
                            s.asked.insert(PATHS[i].to_string());
                            let effects = s.f.changed([PATHS[i].to_string()], &s.io);
                            s.apply(effects)?;
                            s.end_scan(&[i])?;
                            s.check_deletes()?;
                            s.wait(s.now + gap)?;
                        }
                    }
                    Op::Root(ok) => {
                        *s.io.root.borrow_mut() = if ok { Ok(()) } else { Err(RootProblem::Missing) };
                    }
                    Op::RootCheck => {
                        let effects = s.f.root_checked(s.io.check_root(), &s.io);
                        s.apply(effects)?;
                    }
                    Op::Confirm => {
                        let effects = s.f.confirm(&s.io);
                        s.apply(effects)?;
                    }
                }
                s.check_deletes()?;
            }
            // The root holds and every pull ends: whatever was asked for gets scanned.
            *s.io.root.borrow_mut() = Ok(());
            let effects = s.f.root_checked(Ok(()), &s.io);
            s.apply(effects)?;
            while let Some(path) = s.pulling.pop_first() {
                s.owed.insert(path.clone());
                let effects = s.f.pulling(path, false, &s.io);
                s.apply(effects)?;
            }
            for _ in 0..10 {
                s.end_scan(&[])?;
                s.wait(s.now + DELETE_MAX_WAIT)?;
            }
            prop_assert!(s.running.is_empty() && !s.f.scanning());
            prop_assert!(s.owed.is_empty(), "never scanned after their pull: {:?}", s.owed);
            prop_assert!(s.f.pending.is_empty(), "left pending: {:?}", s.f.pending);
            prop_assert!(s.f.beside.is_empty(), "left to scan again: {:?}", s.f.beside);
        }
    }
}
