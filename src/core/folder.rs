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

/// What a user's `syncnode confirm` means for a folder, by why it is stopped; the Index turns it
/// into its answer and carries it out before calling [`Folder::confirm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirming {
    /// The folder is not stopped: nothing to confirm.
    NotStopped,
    /// A mass delete is held: the deletes of `files` files will be sent.
    Deletes { files: u64 },
    /// The root is gone or not the one indexed: the directory now at the root's path is accepted
    /// as the folder's root (the caller's I/O, which fails if there is none), and the files missing
    /// from it become deletes on every peer.
    NewRoot,
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

/// Where the Puller is with a path (`Folder::pulling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPhase {
    Started,
    /// Done; `failed`: the pull failed, and what it left may differ from our record.
    Ended {
        failed: bool,
    },
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

    /// The Puller starts or ends writing `path`; while it writes, a change of the path waits.
    /// At its end the path is looked at if a change of it waited, or if the pull failed (what it
    /// left may differ from our record: our file moved aside as a conflict copy, a replaced file
    /// kept). A pull that succeeded told the Index what it put there (`Applied`), and its own
    /// rename into place is no change (the Watcher drops that event): looking again would find
    /// the record, at the cost of a scan per pulled file.
    pub fn pulling(&mut self, path: String, phase: PullPhase, io: &impl FolderIo) -> Vec<Effect> {
        match phase {
            PullPhase::Started => {
                self.pulling.insert(path);
                Vec::new()
            }
            PullPhase::Ended { failed } => {
                self.pulling.remove(&path);
                if failed {
                    self.pending.insert(path);
                }
                self.start_scan(io)
            }
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

    /// What a confirm now would mean ([`Confirming`]).
    pub fn confirming(&self) -> Confirming {
        match self.fault {
            None => Confirming::NotStopped,
            Some(Fault::Emptied { files }) => Confirming::Deletes { files },
            Some(Fault::Root(_)) => Confirming::NewRoot,
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
    /// one has come for `DELETE_QUIET`. While a mass delete is held, only a full scan judges them
    /// (a scan of some paths that was running when the folder stopped found a part of them: judged
    /// alone, that part would be sent). Then the recompute asked for, and the next scan.
    pub fn scan_done(&mut self, full: bool, now: u64, io: &impl FolderIo) -> Vec<Effect> {
        let mut effects = Vec::new();
        if full {
            self.last_full_end = Some(now);
        }
        let emptied = matches!(self.fault, Some(Fault::Emptied { .. }));
        let overdue = self.deletes_since.is_some_and(|t| now.saturating_sub(t) >= DELETE_MAX_WAIT);
        if full || (overdue && !emptied) {
            let held = self.flush(io, &mut effects);
            if full && !held {
                // A confirmation is spent by the full scan it asked for, even one that found
                // nothing to delete (the files came back): a later mass delete is held again.
                self.confirmed = false;
            }
            if full && !held && emptied {
                // The files are back, or the user confirmed: resume.
                self.fault = None;
                effects.push(Effect::LeaveFault);
                self.recompute_after_scan = true;
            }
        } else if emptied {
            // Held with the rest until the next full scan.
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
        if self.delete_flush != generation || matches!(self.fault, Some(Fault::Emptied { .. })) {
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
mod tests;
