//! The Index actor: the only writer of the RocksDB index. It runs scans (on blocking threads),
//! commits their results, stores what peers announce, asks `core::decide` what each announcement
//! means, hands the work to the folder's Puller, and records what the Puller applied.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;

use super::messages::*;
use super::now_millis;
use super::status::NodeState;
use crate::config::{FolderConfig, FolderMode, SymlinkMode};
use crate::core::replica::{self, Clock, Records, ScanVerdict};
use crate::core::root::{holds_mass_delete, Observed, RootProblem};
use crate::core::{DeviceId, FileKind, FileRecord, ShortId};
use crate::fs::chunker::ChunkParams;
use crate::fs::ignore::IgnoreRules;
use crate::fs::root::{observe, RootGuard};
use crate::fs::scan::{remove_stale_temp_files, KnownRecords, Scanner};
use crate::net::wire;
use crate::store::{Progress, Store};

pub mod modes;

/// Per-folder state the Index keeps.
struct FolderState {
    config: FolderConfig,
    ignore: IgnoreRules,
    /// A scan is running; paths that change meanwhile wait here.
    scanning: bool,
    pending: BTreeSet<String>,
    /// Paths to hash even if size and mtime match their record.
    suspect: HashSet<String>,
    /// Paths the Puller is writing now: not scanned until it is done with them.
    pulling: HashSet<String>,
    /// The folder's Puller.
    puller: PullerPort,
    /// The root this folder must keep (shared with its Puller).
    guard: Arc<RootGuard>,
    /// Why the folder is stopped, if it is: nothing is scanned into the index, announced, or
    /// applied until the cause goes away or the user confirms.
    fault: Option<Fault>,
    /// The user confirmed the folder's current state: the next full scan commits its deletes even
    /// if they take every file.
    confirmed: bool,
    /// Recompute every need once the scan that follows a resume is done.
    recompute_after_scan: bool,
    /// The generation of the running (or last) whole-folder recompute: a step of an older one stops.
    recompute: u64,
    /// Files that exist but cannot be read, with why (skipped by scans, never taken for deleted).
    unreadable: BTreeMap<String, String>,
    /// Local deletes found by scans, held back for `DELETE_QUIET` so that deletes arriving in
    /// several watcher batches are judged together (a folder emptied at once is held, not sent).
    pending_deletes: BTreeMap<String, FileRecord>,
    /// When the oldest pending delete was found, and the generation of the flush scheduled for them.
    deletes_since: Option<std::time::Instant>,
    delete_flush: u64,
}

/// Why a folder stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
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

/// Local deletes are sent once no new one has been found for this long (or `DELETE_MAX_WAIT`
/// after the first): an `rm -rf` reaches the Index in many small batches, and is judged whole.
const DELETE_QUIET: std::time::Duration = std::time::Duration::from_millis(100);
const DELETE_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a stopped folder's root is looked at (and a healthy one's, to stop it promptly).
const ROOT_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

pub struct IndexActor {
    store: Arc<Store>,
    me: ShortId,
    params: ChunkParams,
    folders: HashMap<String, FolderState>,
    /// Where our commits are announced to the Peers' index senders.
    sequences: Sequences,
    state: Arc<NodeState>,
    empty_folder_guard: u64,
    /// This node's version clock (`core::replica::Clock`).
    clock: Clock,
    tombstone_ttl: std::time::Duration,
}

/// The scanner's view of our records, straight from the store.
struct StoreView<'a> {
    store: &'a Store,
    folder: &'a str,
    suspect: &'a HashSet<String>,
}

impl KnownRecords for StoreView<'_> {
    fn get(&self, path: &str) -> Option<FileRecord> {
        // The scanner's trait has no error: a failed read hashes the file as new, which costs a
        // concurrent version (a conflict copy at worst), never a lost file. Logged.
        let mut record = match self.store.get(self.folder, path) {
            Ok(r) => r?,
            Err(e) => {
                tracing::error!(folder = self.folder, path, error = %format!("{e:#}"), "cannot read the index");
                return None;
            }
        };
        if self.suspect.contains(path) {
            record.mtime_ns = i64::MIN; // never matches the disk: the file is hashed again
        }
        Some(record)
    }
    fn each_under(&self, dir: &str, f: &mut dyn FnMut(FileRecord)) {
        if dir.is_empty() {
            self.store.local_records(self.folder).for_each(f)
        } else {
            self.store.local_records_under(self.folder, dir).for_each(f)
        }
    }
}

/// The rules' view of a folder's index (`core::replica::Records`), straight from the store.
struct FolderRecords<'a> {
    store: &'a Store,
    folder: &'a str,
}

impl Records for FolderRecords<'_> {
    type Error = anyhow::Error;
    fn local(&self, path: &str) -> anyhow::Result<Option<FileRecord>> {
        self.store.get(self.folder, path)
    }
    fn remote(&self, device: &DeviceId, path: &str) -> anyhow::Result<Option<FileRecord>> {
        self.store.remote(device, self.folder, path)
    }
    fn remote_page(&self, device: &DeviceId, after: Option<&str>, limit: usize) -> anyhow::Result<Vec<FileRecord>> {
        self.store.remote_page(device, self.folder, after, limit)
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct ScanDone {
    folder: String,
    records: Vec<FileRecord>,
    /// The root, checked again after the scan: if it went away meanwhile, the records are void.
    root: Result<(), RootProblem>,
    /// It covered the whole folder.
    full: bool,
    /// What it covered, and the files in it that could not be read.
    scope: Vec<String>,
    unreadable: Vec<(String, String)>,
}

impl IndexActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<Store>,
        me: DeviceId,
        chunk_size: u32,
        tombstone_ttl: std::time::Duration,
        empty_folder_guard: u64,
        folders: &[(FolderConfig, Arc<RootGuard>, PullerPort)],
        state: Arc<NodeState>,
        sequences: Sequences,
    ) -> Self {
        let folders = folders
            .iter()
            .map(|(f, guard, puller)| {
                let state = FolderState {
                    config: f.clone(),
                    ignore: IgnoreRules::load(&f.path),
                    scanning: false,
                    pending: BTreeSet::new(),
                    suspect: HashSet::new(),
                    pulling: HashSet::new(),
                    puller: puller.clone(),
                    guard: guard.clone(),
                    fault: None,
                    confirmed: false,
                    recompute_after_scan: false,
                    recompute: 0,
                    unreadable: BTreeMap::new(),
                    pending_deletes: BTreeMap::new(),
                    deletes_since: None,
                    delete_flush: 0,
                };
                (f.id.clone(), state)
            })
            .collect();
        IndexActor {
            store,
            me: me.short(),
            params: ChunkParams::new(chunk_size),
            folders,
            sequences,
            state,
            empty_folder_guard,
            clock: Clock::default(),
            tombstone_ttl,
        }
    }

    /// Stops a folder: one WARN line when it starts (or its reason changes), the reason in the
    /// status, and the Puller's queue dropped.
    fn enter_fault(&mut self, folder: &str, fault: Fault) {
        let Some(state) = self.folders.get_mut(folder) else { return };
        state.pending.clear();
        state.pending_deletes.clear();
        state.deletes_since = None;
        if state.fault.as_ref() == Some(&fault) {
            return;
        }
        tracing::warn!(folder = %folder, path = %state.config.path.display(), reason = %fault, "folder stopped");
        self.state.gauges(folder).set_fault(Some(fault.to_string()));
        state.fault = Some(fault);
        state.puller.needs.do_send(Needs { items: Vec::new(), complete: true, settled: Vec::new() });
    }

    /// Resumes a stopped folder: a full rescan, then every need recomputed.
    fn leave_fault(&mut self, folder: &str, ctx: &mut Context<Self>) {
        let Some(state) = self.folders.get_mut(folder) else { return };
        if state.fault.take().is_none() {
            return;
        }
        tracing::info!(folder = %folder, path = %state.config.path.display(), "folder resumed");
        self.state.gauges(folder).set_fault(None);
        state.recompute_after_scan = true;
        state.pending.insert(String::new());
        self.start_scan(folder, ctx);
    }

    /// Looks at every folder's root: stops a folder whose root went away, resumes one whose root
    /// came back.
    fn check_roots(&mut self, ctx: &mut Context<Self>) {
        let ids: Vec<String> = self.folders.keys().cloned().collect();
        for id in ids {
            let state = &self.folders[&id];
            let result = state.guard.check();
            match (result, &state.fault) {
                (Err(problem), _) => self.enter_fault(&id, Fault::Root(problem)),
                (Ok(()), Some(Fault::Root(_))) => self.leave_fault(&id, ctx),
                (Ok(()), _) => {}
            }
        }
    }

    /// A fresh counter value: milliseconds since the epoch, or one more than the last one issued.
    fn tick(&mut self) -> u64 {
        self.clock.tick(now_millis())
    }

    fn start_scan(&mut self, folder: &str, ctx: &mut Context<Self>) {
        let Some(state) = self.folders.get_mut(folder) else { return };
        match &state.fault {
            // Nothing is read until the root is back (`check_roots`).
            Some(Fault::Root(_)) => {
                state.pending.clear();
                return;
            }
            // Only a full scan can tell whether the files are back.
            Some(Fault::Emptied { .. }) if !state.pending.is_empty() => {
                state.pending = BTreeSet::from([String::new()]);
            }
            _ => {}
        }
        if state.scanning || state.pending.iter().all(|p| state.pulling.contains(p)) {
            return;
        }
        if let Err(problem) = state.guard.check() {
            self.enter_fault(folder, Fault::Root(problem));
            return;
        }
        let Some(state) = self.folders.get_mut(folder) else { return };
        state.scanning = true;
        self.state.gauges(folder).scanning.store(true, std::sync::atomic::Ordering::Relaxed);
        let (waiting, scope): (BTreeSet<String>, BTreeSet<String>) =
            std::mem::take(&mut state.pending).into_iter().partition(|p| state.pulling.contains(p));
        state.pending = waiting;
        let mut scope: Vec<String> = scope.into_iter().collect();
        if scope.iter().any(|p| p == crate::core::path::IGNORE_FILE) {
            state.ignore = IgnoreRules::load(&state.config.path);
            // New rules change what every path is: a path ignored until now is found only by a
            // full scan, and a peer's record ignored until now is wanted only if needs are
            // computed again (tests/modes.rs).
            scope.push(String::new());
            state.recompute_after_scan = true;
        }
        let scanner = Scanner {
            root: state.config.path.clone(),
            params: self.params,
            me: self.me,
            ignore: state.ignore.clone(),
            busy: state.pulling.clone(),
            unreadable: Default::default(),
            links: state.config.symlinks == SymlinkMode::Link,
            progress: None,
        };
        let suspect = std::mem::take(&mut state.suspect);
        let store = self.store.clone();
        let folder = folder.to_string();
        let full = scope.iter().any(|p| p.is_empty());
        let guard = state.guard.clone();
        let now = self.tick();
        let addr = ctx.address();
        // A walk's records go to the Index in batches as it goes, while the root still holds
        // (the last part, and whether the root held to the end, come with `ScanDone`).
        let handed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let scanner = Scanner {
            progress: Some(Box::new({
                let (addr, folder, guard, handed) = (addr.clone(), folder.clone(), guard.clone(), handed.clone());
                move |records: Vec<FileRecord>| {
                    if guard.check().is_ok() {
                        handed.fetch_add(records.len(), std::sync::atomic::Ordering::Relaxed);
                        addr.do_send(ScanBatch { folder: folder.clone(), records });
                    }
                }
            })),
            ..scanner
        };
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let view = StoreView { store: &store, folder: &folder, suspect: &suspect };
            let records = match scanner.scan(&scope, &view, now) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(folder = %folder, error = %e, "scan failed");
                    Vec::new()
                }
            };
            let ms = started.elapsed().as_millis() as u64;
            let changed = records.len() + handed.load(std::sync::atomic::Ordering::Relaxed);
            if full {
                tracing::debug!(folder = %folder, changed, ms, "full scan done");
            } else {
                tracing::debug!(folder = %folder, paths = scope.len(), changed, ms, "scan done");
            }
            let unreadable = std::mem::take(&mut *scanner.unreadable.lock().expect("scanner lock"));
            addr.do_send(ScanDone { folder, records, root: guard.check(), full, scope, unreadable });
        });
    }

    fn notify(&mut self, folder: &str) {
        match self.store.folder_meta(folder) {
            Ok(meta) => self.sequences.publish(folder, meta.max_sequence),
            Err(e) => tracing::error!(folder, error = %format!("{e:#}"), "cannot read the index"),
        }
    }

    fn commit(&mut self, folder: &str, records: Vec<FileRecord>) -> bool {
        if records.is_empty() {
            return false;
        }
        match self.store.commit_local(folder, records) {
            Ok(_) => {
                self.notify(folder);
                true
            }
            Err(e) => {
                tracing::error!(folder, error = %e, "cannot write the index");
                false
            }
        }
    }

    /// The devices whose records decide what `folder` needs: records kept from a device the folder
    /// is no longer shared with are neither pulled nor asked for (the Peer actor refuses anything
    /// new from it).
    fn sources(&self, folder: &str) -> anyhow::Result<Vec<DeviceId>> {
        let mut devices = self.store.remote_devices(folder)?;
        if let Some(state) = self.folders.get(folder) {
            devices.retain(|d| state.config.devices.includes(d));
        }
        Ok(devices)
    }

    /// Needs for the given remote records. An index that cannot be read gives none, with an ERROR
    /// line: the work waits for the next recompute (a peer connecting) instead of being decided
    /// on records taken for absent.
    fn needs(&self, folder: &str, records: &[FileRecord]) -> Vec<NeedItem> {
        let read =
            || replica::needs(&FolderRecords { store: &self.store, folder }, &self.sources(folder)?, Some(records));
        read().unwrap_or_else(|e| {
            tracing::error!(folder, error = %format!("{e:#}"), "cannot read the index to decide what to pull");
            Vec::new()
        })
    }

    /// Decides everything the folder needs again, from every peer's whole index: a page of paths
    /// per step (`replica::needs_page`), each step its own message, so that neither the actor
    /// thread nor memory carries the whole folder. The first page replaces the Puller's list; a
    /// recompute started meanwhile takes over from its own start.
    fn recompute(&mut self, folder: &str, ctx: &mut Context<Self>) {
        let Some(state) = self.folders.get_mut(folder) else { return };
        state.recompute += 1;
        let step = RecomputeStep {
            folder: folder.to_string(),
            generation: state.recompute,
            after: None,
            started: std::time::Instant::now(),
            needs: 0,
        };
        ctx.notify(step);
    }

    /// Settles what needs no disk work right here; sends the rest to the Puller.
    /// `settled`: paths the Puller asked about; those left without work are reported back.
    fn dispatch(&mut self, folder: &str, items: Vec<NeedItem>, complete: bool, settled: Vec<String>) {
        let Some(state) = self.folders.get(folder) else { return };
        if state.fault.is_some() {
            return;
        }
        let puller = state.puller.needs.clone();
        // With `symlinks = "ignore"`, a peer's link is neither made here nor recorded.
        let ignored = |r: &FileRecord| {
            state.ignore.is_ignored(&r.path, r.kind == FileKind::Directory)
                || (r.kind == FileKind::Symlink && state.config.symlinks == SymlinkMode::Ignore)
        };
        let send_only = state.config.mode == FolderMode::SendOnly;
        let replica::Dispatched { commit, work, settled } =
            replica::dispatch(items, complete, settled, send_only, &ignored);
        self.commit(folder, commit);
        if !work.is_empty() || complete || !settled.is_empty() {
            puller.do_send(Needs { items: work, complete, settled });
        }
    }
}

impl IndexActor {
    /// Forgets deletes older than `sync.tombstone_ttl`. A peer that was offline for longer and
    /// still has such a file brings it back (it is then a new file to everyone): the setting is the
    /// longest absence after which a delete is still honoured.
    fn purge(&mut self) {
        let cutoff = replica::tombstone_cutoff(now_millis(), self.tombstone_ttl.as_millis() as u64);
        for folder in self.folders.keys() {
            match self.store.purge_tombstones(folder, cutoff) {
                Ok(0) => {}
                Ok(n) => tracing::info!(folder = %folder, purged = n, "forgot old deletes"),
                Err(e) => tracing::warn!(folder = %folder, error = %e, "cannot purge tombstones"),
            }
        }
    }
}

impl Actor for IndexActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.purge();
        ctx.run_interval(std::time::Duration::from_secs(3600), |this, _| this.purge());
        ctx.run_interval(ROOT_CHECK_EVERY, |this, ctx| this.check_roots(ctx));
        let ids: Vec<String> = self.folders.keys().cloned().collect();
        for id in ids {
            let state = self.folders.get_mut(&id).expect("folder");
            // First start (or an index from before roots were recorded): this root is the one.
            if state.guard.expected().is_none() {
                if let Observed::Directory(root) = observe(&state.config.path) {
                    match self.store.put_root_id(&id, &root) {
                        Ok(()) => state.guard.accept(root),
                        Err(e) => tracing::error!(folder = %id, error = %e, "cannot write the index"),
                    }
                }
            }
            if let Err(problem) = state.guard.check() {
                self.enter_fault(&id, Fault::Root(problem));
                continue;
            }
            let removed = remove_stale_temp_files(&state.config.path);
            if removed > 0 {
                tracing::info!(folder = %id, removed, "removed temp files left by an interrupted run");
            }
            state.pending.insert(String::new());
            self.start_scan(&id, ctx);
        }
    }
}

impl Handler<LocalChanged> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: LocalChanged, ctx: &mut Context<Self>) {
        let Some(state) = self.folders.get_mut(&msg.folder) else { return };
        state.pending.extend(msg.paths);
        self.start_scan(&msg.folder, ctx);
    }
}

impl Handler<Rehash> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: Rehash, ctx: &mut Context<Self>) {
        let Some(state) = self.folders.get_mut(&msg.folder) else { return };
        tracing::warn!(folder = %msg.folder, path = %msg.path, "content no longer matches the index; hashing it again");
        state.suspect.insert(msg.path.clone());
        state.pending.insert(msg.path);
        self.start_scan(&msg.folder, ctx);
    }
}

impl Handler<ScanDone> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: ScanDone, ctx: &mut Context<Self>) {
        self.state.gauges(&msg.folder).scanning.store(false, std::sync::atomic::Ordering::Relaxed);
        let Some(state) = self.folders.get_mut(&msg.folder) else { return };
        state.scanning = false;
        // The root went away while the scan ran: what it saw means nothing.
        if let Err(problem) = msg.root {
            self.enter_fault(&msg.folder, Fault::Root(problem));
            return;
        }
        self.note_unreadable(&msg.folder, msg.full, &msg.scope, msg.unreadable);
        self.take_scanned(&msg.folder, msg.records);
        let Some(state) = self.folders.get_mut(&msg.folder) else { return };
        // A full scan sees the whole folder: judge its deletes now. Otherwise wait until no new
        // delete has come for `DELETE_QUIET`.
        let overdue = state.deletes_since.is_some_and(|t| t.elapsed() >= DELETE_MAX_WAIT);
        if msg.full || overdue {
            let held = self.flush_deletes(&msg.folder);
            let state = self.folders.get_mut(&msg.folder).expect("folder");
            if msg.full && !held && matches!(state.fault, Some(Fault::Emptied { .. })) {
                // The files are back, or the user confirmed: resume.
                state.fault = None;
                tracing::info!(folder = %msg.folder, "folder resumed");
                self.state.gauges(&msg.folder).set_fault(None);
                state.recompute_after_scan = true;
            }
        } else if !state.pending_deletes.is_empty() {
            state.delete_flush += 1;
            let generation = state.delete_flush;
            let folder = msg.folder.clone();
            ctx.run_later(DELETE_QUIET, move |this, ctx| {
                if this.folders.get(&folder).is_some_and(|s| s.delete_flush == generation) {
                    this.flush_deletes(&folder);
                    this.start_scan(&folder, ctx);
                }
            });
        }
        let state = self.folders.get_mut(&msg.folder).expect("folder");
        let recompute = std::mem::take(&mut state.recompute_after_scan) && state.fault.is_none();
        if recompute {
            self.recompute(&msg.folder, ctx);
        }
        self.start_scan(&msg.folder, ctx);
    }
}

/// Part of a running scan's result (`Scanner::progress`): records of new or changed files.
#[derive(Message)]
#[rtype(result = "()")]
struct ScanBatch {
    folder: String,
    records: Vec<FileRecord>,
}

impl Handler<ScanBatch> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: ScanBatch, _: &mut Context<Self>) {
        self.take_scanned(&msg.folder, msg.records);
    }
}

impl IndexActor {
    /// Commits what a scan found, each record judged against our record now: one that a pull
    /// changed meanwhile is stale (the path is looked at again), a delete waits to be judged
    /// with the others (`flush_deletes`).
    fn take_scanned(&mut self, folder: &str, records: Vec<FileRecord>) {
        let (mut fresh, mut stale, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
        for record in records {
            // The scan compared against the record at `record.sequence`; if that changed since
            // (a pull landed meanwhile), the result is stale: look at the path again.
            let current = match self.store.get(folder, &record.path) {
                Ok(current) => current,
                Err(e) => {
                    // Nothing is committed against a record we cannot read; the periodic rescan
                    // looks at the path again.
                    tracing::error!(folder, path = %record.path, error = %format!("{e:#}"), "cannot read the index");
                    continue;
                }
            };
            match replica::judge_scanned(&record, current.as_ref()) {
                ScanVerdict::Stale => stale.push(record.path),
                ScanVerdict::HoldDelete => deletes.push(record),
                ScanVerdict::Commit => {
                    tracing::debug!(folder, path = %record.path, size = record.size, "local change");
                    fresh.push(record);
                }
            }
        }
        self.commit(folder, fresh);
        let Some(state) = self.folders.get_mut(folder) else { return };
        state.pending.extend(stale);
        if !deletes.is_empty() {
            state.deletes_since.get_or_insert_with(std::time::Instant::now);
            state.pending_deletes.extend(deletes.into_iter().map(|r| (r.path.clone(), r)));
        }
    }
}

impl Handler<RemoteIndex> for IndexActor {
    /// Resolves once the folder's Puller has taken in the needs too, so that the Peer actor (which
    /// waits for it) hands over a peer's next batch only then: batches never line up on the actor
    /// thread.
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: RemoteIndex, _: &mut Context<Self>) -> Self::Result {
        let barrier = self.folders.get(&msg.folder).map(|s| s.puller.barrier.clone());
        self.take_in(msg);
        Box::pin(async move {
            if let Some(b) = barrier {
                let _ = b.send(Barrier).await;
            }
        })
    }
}

impl IndexActor {
    /// Stores a batch of a peer's records and hands what they make us need to the Puller.
    fn take_in(&mut self, msg: RemoteIndex) {
        if !self.folders.contains_key(&msg.folder) {
            return;
        }
        let store = self.store.clone();
        let mut progress = match store.progress(&msg.device, &msg.folder) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(peer = %msg.device.prefix(), folder = %msg.folder, error = %format!("{e:#}"), "cannot read the index; disconnecting");
                msg.reply.do_send(Disconnect { reason: "cannot read our index".into(), violation: None });
                return;
            }
        };
        if progress.index_id != msg.index_id {
            // The peer's index was recreated: forget what we had of it.
            if progress.index_id != 0 {
                tracing::info!(peer = %msg.device.prefix(), folder = %msg.folder, "peer index was reset; rereading it");
            }
            let _ = store.clear_remote(&msg.device, &msg.folder);
            progress = Progress { index_id: msg.index_id, max_sequence: 0 };
        }
        let started = std::time::Instant::now();
        let total = msg.files.len();
        let mut records = Vec::with_capacity(total);
        let mut batch: HashMap<String, FileRecord> = HashMap::new();
        for info in msg.files {
            let base = |path: &str, seq: u64| {
                batch
                    .get(path)
                    .cloned()
                    .or_else(|| match store.remote(&msg.device, &msg.folder, path) {
                        Ok(r) => r,
                        // Taken for a missing base: everything is asked for again.
                        Err(e) => {
                            tracing::error!(folder = %msg.folder, path, error = %format!("{e:#}"), "cannot read the index");
                            None
                        }
                    })
                    .filter(|r| r.sequence == seq)
                    .map(|r| r.chunks)
            };
            match wire::from_wire(info, base) {
                Ok(record) => {
                    progress.max_sequence = progress.max_sequence.max(record.sequence);
                    batch.insert(record.path.clone(), record.clone());
                    records.push(record);
                }
                Err(e) => {
                    // A missing base is a race (we lost what the peer assumes we hold), not abuse.
                    let missing_base = matches!(e, wire::WireError::MissingBase { .. });
                    if missing_base {
                        // Ask for everything again on the next connection.
                        let _ =
                            store.put_remote(&msg.device, &msg.folder, Progress { index_id: 0, max_sequence: 0 }, &[]);
                    }
                    tracing::warn!(peer = %msg.device.prefix(), folder = %msg.folder, error = %e, refused_records = total, "peer sent an invalid record; disconnecting");
                    msg.reply.do_send(Disconnect {
                        reason: format!("invalid index update: {e}"),
                        violation: (!missing_base).then_some(total),
                    });
                    return;
                }
            }
        }
        if let Err(e) = store.put_remote(&msg.device, &msg.folder, progress, &records) {
            tracing::error!(error = %e, "cannot store a peer's index");
            return;
        }
        let items = self.needs(&msg.folder, &records);
        let needs = items.len();
        self.dispatch(&msg.folder, items, false, Vec::new());
        // The actor thread is shared by every actor: how long one batch of a peer's records holds it.
        tracing::debug!(peer = %msg.device.prefix(), folder = %msg.folder, records = total, needs, ms = started.elapsed().as_millis() as u64, "peer records taken in");
    }
}

impl Handler<RecomputeNeeds> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: RecomputeNeeds, ctx: &mut Context<Self>) {
        self.recompute(&msg.folder, ctx);
    }
}

/// One step of a whole-folder recompute (`IndexActor::recompute`): the paths after `after`.
#[derive(Message)]
#[rtype(result = "()")]
struct RecomputeStep {
    folder: String,
    generation: u64,
    after: Option<String>,
    started: std::time::Instant,
    needs: usize,
}

impl Handler<RecomputeStep> for IndexActor {
    type Result = ();
    fn handle(&mut self, mut msg: RecomputeStep, ctx: &mut Context<Self>) {
        if self.folders.get(&msg.folder).is_none_or(|s| s.recompute != msg.generation) {
            return;
        }
        let folder = msg.folder.as_str();
        let read = || {
            let records = FolderRecords { store: &self.store, folder };
            replica::needs_page(&records, &self.sources(folder)?, msg.after.as_deref(), replica::NEEDS_PAGE)
        };
        let (items, next) = match read() {
            Ok(page) => page,
            Err(e) => {
                return tracing::error!(folder, error = %format!("{e:#}"), "cannot read the index to decide what to pull")
            }
        };
        msg.needs += items.len();
        self.dispatch(folder, items, msg.after.is_none(), Vec::new());
        match next {
            Some(next) => {
                msg.after = Some(next);
                ctx.notify(msg);
            }
            None => {
                tracing::debug!(
                    folder,
                    needs = msg.needs,
                    ms = msg.started.elapsed().as_millis() as u64,
                    "needs recomputed"
                )
            }
        }
    }
}

impl Handler<Pulling> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: Pulling, ctx: &mut Context<Self>) {
        let Some(state) = self.folders.get_mut(&msg.folder) else { return };
        if msg.active {
            state.pulling.insert(msg.path);
        } else {
            // Look once at what the pull left (or a local edit that was held back meanwhile).
            state.pulling.remove(&msg.path);
            state.pending.insert(msg.path);
            self.start_scan(&msg.folder, ctx);
        }
    }
}

impl Handler<RecomputePaths> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: RecomputePaths, _: &mut Context<Self>) {
        let read = || -> anyhow::Result<Vec<FileRecord>> {
            let devices = self.store.remote_devices(&msg.folder)?;
            let mut announced = Vec::new();
            for path in &msg.paths {
                for d in &devices {
                    announced.extend(self.store.remote(d, &msg.folder, path)?);
                }
            }
            Ok(announced)
        };
        let announced = match read() {
            Ok(a) => a,
            Err(e) => {
                return tracing::error!(folder = %msg.folder, error = %format!("{e:#}"), "cannot read the index to decide what to pull")
            }
        };
        let items = self.needs(&msg.folder, &announced);
        self.dispatch(&msg.folder, items, false, msg.paths);
    }
}

impl Handler<Applied> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: Applied, ctx: &mut Context<Self>) {
        let folder = msg.folder;
        // What the pull did is recorded against our current record; one that cannot be read gets
        // the path decided again later, never a record written over it blind.
        let current = |path: &str| match self.store.get(&folder, path) {
            Ok(r) => Ok(r),
            Err(e) => {
                tracing::error!(folder = %folder, path, error = %format!("{e:#}"), "cannot read the index");
                Err(())
            }
        };
        let mut again = false;
        let record = match msg.outcome {
            Outcome::Took { record, disk } => {
                let Ok(now) = current(&record.path) else {
                    return ctx.address().do_send(RecomputePaths { folder: folder.clone(), paths: vec![record.path] });
                };
                again = replica::overtaken(&record, now.as_ref());
                replica::took(record, now.as_ref(), disk.map(|d| (d.mtime_ns, d.permissions)))
            }
            Outcome::Reissue { path, other } => {
                let Ok(Some(local)) = current(&path) else { return };
                let now = self.tick();
                replica::reissued(local, &other, self.me, now)
            }
        };
        let path = record.path.clone();
        self.commit(&folder, vec![record]);
        if again {
            ctx.address().do_send(RecomputePaths { folder: folder.clone(), paths: vec![path.clone()] });
        }
        // The disk may differ from the record (a directory we could not delete): look again.
        if let Some(state) = self.folders.get_mut(&folder) {
            state.pending.insert(path);
        }
        self.start_scan(&folder, ctx);
    }
}

impl IndexActor {
    /// Keeps the list of unreadable files up to date with what a scan of `scope` found: one WARN
    /// line when a file becomes unreadable, one INFO when it can be read again.
    fn note_unreadable(&mut self, folder: &str, full: bool, scope: &[String], found: Vec<(String, String)>) {
        let Some(state) = self.folders.get_mut(folder) else { return };
        let covered = |path: &str| full || scope.iter().any(|s| s == path || crate::core::path::is_inside(path, s));
        let before = std::mem::take(&mut state.unreadable);
        let (mut kept, dropped): (BTreeMap<_, _>, BTreeMap<_, _>) = before.into_iter().partition(|(p, _)| !covered(p));
        for (path, reason) in found {
            if !dropped.contains_key(&path) {
                tracing::warn!(folder = %folder, path = %path, error = %reason, "cannot read a file; it is skipped (not deleted) until it can be read");
            }
            kept.insert(path, reason);
        }
        for path in dropped.keys().filter(|p| !kept.contains_key(*p)) {
            tracing::info!(folder = %folder, path = %path, "the file can be read again");
        }
        *self.state.gauges(folder).unreadable.lock().expect("gauges lock") = kept.clone();
        state.unreadable = kept;
    }

    /// Commits the local deletes held back for `folder`, unless together they would delete every
    /// file of a folder that held at least `sync.empty_folder_guard` and the user has not
    /// confirmed it: then the folder stops instead (returns true). Deletes whose record changed
    /// meanwhile, or whose path exists again, are dropped (a later scan of the path decides).
    fn flush_deletes(&mut self, folder: &str) -> bool {
        let Some(state) = self.folders.get_mut(folder) else { return false };
        state.deletes_since = None;
        let pending = std::mem::take(&mut state.pending_deletes);
        if pending.is_empty() {
            return false;
        }
        // An empty directory where the root was says nothing about the files.
        if let Err(problem) = state.guard.check() {
            self.enter_fault(folder, Fault::Root(problem));
            return true;
        }
        let root = state.config.path.clone();
        // A delete that no longer holds is looked at again (the caller starts the scan): our record
        // may have moved on without the disk (a merge or re-issue committed meanwhile), and no
        // watcher event would bring the path back before the periodic rescan.
        let (deletes, again): (Vec<FileRecord>, Vec<FileRecord>) = pending.into_values().partition(|r| {
            let absent = matches!(crate::fs::scan::DiskState::read(&root.join(&r.path)), Ok(None));
            // A record that cannot be read makes the delete look again (a scan), never commit blind.
            self.store.get(folder, &r.path).is_ok_and(|now| replica::delete_still_holds(r, now.as_ref(), absent))
        });
        if let Some(state) = self.folders.get_mut(folder) {
            state.pending.extend(again.into_iter().map(|r| r.path));
        }
        let files = deletes.iter().filter(|r| r.kind == FileKind::File).count() as u64;
        let live = self.store.local_counts(folder).records;
        let state = self.folders.get_mut(folder).expect("folder");
        if !state.confirmed && holds_mass_delete(live, deletes.len() as u64, files, self.empty_folder_guard) {
            self.enter_fault(folder, Fault::Emptied { files });
            return true;
        }
        state.confirmed = false;
        for r in &deletes {
            tracing::info!(folder = %folder, path = %r.path, "local delete");
        }
        self.commit(folder, deletes);
        false
    }
}

impl Handler<Confirm> for IndexActor {
    type Result = Result<String, String>;
    fn handle(&mut self, msg: Confirm, ctx: &mut Context<Self>) -> Self::Result {
        let Some(state) = self.folders.get_mut(&msg.folder) else { return Err(format!("no folder `{}`", msg.folder)) };
        match state.fault.clone() {
            None => Ok(format!("folder `{}` is not stopped; nothing to confirm", msg.folder)),
            Some(Fault::Emptied { files }) => {
                tracing::warn!(folder = %msg.folder, files, "the user confirmed that every file was deleted");
                state.confirmed = true;
                state.pending.insert(String::new());
                self.start_scan(&msg.folder, ctx);
                Ok(format!("folder `{}`: the deletes of {files} files will be sent", msg.folder))
            }
            Some(Fault::Root(_)) => {
                let Observed::Directory(root) = observe(&state.config.path) else {
                    return Err(format!(
                        "folder `{}`: {} does not exist or is not a directory; create it first",
                        msg.folder,
                        state.config.path.display()
                    ));
                };
                self.store.put_root_id(&msg.folder, &root).map_err(|e| format!("cannot write the index: {e}"))?;
                state.guard.accept(root);
                // A new root means what it holds now is the folder: missing files are deletes.
                state.confirmed = true;
                tracing::warn!(folder = %msg.folder, path = %state.config.path.display(), "the user confirmed a new folder root; files missing from it will be deleted on every peer");
                self.leave_fault(&msg.folder, ctx);
                Ok(format!("folder `{}`: the new root is accepted; files missing from it are now deletes", msg.folder))
            }
        }
    }
}

/// The data dir's index location.
pub fn index_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("index")
}
