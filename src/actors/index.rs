//! The Index actor: the only writer of the RocksDB index. It runs scans (on blocking threads),
//! commits their results, stores what peers announce, asks `core::decide` what each announcement
//! means, hands the work to the folder's Puller, and records what the Puller applied.
//!
//! A shell: when a folder is scanned and what a scan covers, how local deletes are held and judged,
//! when a folder stops and resumes, are the state machine of `core::folder`; the store views and
//! the scan job are `crate::index`. This actor takes in messages, asks the state machine, and
//! carries out what it returns: scans, commits, messages to the Puller, gauges and log lines.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::messages::*;
use super::now_millis;
use super::status::{FolderGauges, NodeState};
use crate::config::{FolderConfig, FolderMode, SymlinkMode};
use crate::core::folder::{Effect, Fault, Folder, ROOT_CHECK_EVERY};
use crate::core::replica::{self, Clock};
use crate::core::{DeviceId, FileKind, FileRecord, ShortId};
use crate::fs::chunker::ChunkParams;
use crate::fs::ignore::IgnoreRules;
use crate::fs::root::RootGuard;
use crate::fs::scan::remove_stale_temp_files;
use crate::index::{
    accept_root, judge_scanned, needs, purge_tombstones, store_remote, FolderDisk, Judged, Refusal, ScanJob, Scanned,
};
use crate::store::Store;

pub mod modes;
mod needs;
use needs::RecomputeStep;

/// Per-folder state the Index keeps: the rules' state, and what carrying them out needs.
struct FolderState {
    config: FolderConfig,
    ignore: IgnoreRules,
    rules: Folder,
    /// The folder's Puller.
    puller: PullerPort,
    /// The root this folder must keep (shared with its Puller).
    guard: Arc<RootGuard>,
    /// A one-way folder's paths that differ from the cluster (`modes`).
    diverged: modes::Diverged,
}

pub struct IndexActor {
    store: Arc<Store>,
    me: ShortId,
    params: ChunkParams,
    folders: HashMap<String, FolderState>,
    /// Where our commits are announced to the Peers' index senders.
    sequences: Sequences,
    state: Arc<NodeState>,
    /// This node's version clock (`core::replica::Clock`).
    clock: Clock,
    tombstone_ttl: Duration,
}

#[derive(Message)]
#[rtype(result = "()")]
struct ScanDone(Scanned);

/// A flush of held deletes scheduled by `core::folder` is due.
#[derive(Message)]
#[rtype(result = "()")]
struct FlushDue {
    folder: String,
    generation: u64,
}

impl IndexActor {
    #[allow(clippy::too_many_arguments)] // the node's settings and wiring, each used once
    pub fn new(
        store: Arc<Store>,
        me: DeviceId,
        chunk_size: u32,
        tombstone_ttl: Duration,
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
                    rules: Folder::new(empty_folder_guard),
                    puller: puller.clone(),
                    guard: guard.clone(),
                    diverged: modes::Diverged::default(),
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
            clock: Clock::default(),
            tombstone_ttl,
        }
    }

    /// Runs one step of `folder`'s rules (with the folder's root, disk and index to look at) and
    /// carries out what it returns.
    fn step(&mut self, folder: &str, ctx: &mut Context<Self>, f: impl FnOnce(&mut Folder, &FolderDisk) -> Vec<Effect>) {
        let Some(state) = self.folders.get_mut(folder) else { return };
        let io = FolderDisk { store: &self.store, folder, root: &state.config.path, guard: &state.guard };
        let effects = f(&mut state.rules, &io);
        self.perform(folder, effects, ctx);
    }

    /// Carries out what `core::folder` decided, in order.
    fn perform(&mut self, folder: &str, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        for effect in effects {
            let Some(state) = self.folders.get_mut(folder) else { return };
            match effect {
                Effect::StartScan { scope, full, suspect, busy, reload_ignore } => {
                    if reload_ignore {
                        state.ignore = IgnoreRules::load(&state.config.path);
                    }
                    let gauges = self.state.gauges(folder);
                    gauges.scanning.store(true, Relaxed);
                    if !full {
                        gauges.looked_paths.fetch_add(scope.len() as u64, Relaxed);
                    }
                    let job = ScanJob {
                        store: self.store.clone(),
                        folder: folder.to_string(),
                        root: state.config.path.clone(),
                        guard: state.guard.clone(),
                        params: self.params,
                        me: self.me,
                        ignore: state.ignore.clone(),
                        busy,
                        links: state.config.symlinks == SymlinkMode::Link,
                        scope,
                        full,
                        suspect,
                        now: self.tick(),
                    };
                    let (addr, folder, gauges) = (ctx.address(), folder.to_string(), self.state.gauges(folder));
                    tokio::task::spawn_blocking(move || {
                        let batches = addr.clone();
                        let (count, started) = (gauges.clone(), std::time::Instant::now());
                        // At most two batches on their way: a scan that finds records faster than
                        // the Index commits them waits, instead of piling them up in its mailbox
                        // (300,000 new files: 159 MiB of RSS, against 64 for 100,000).
                        let pending = Arc::new(std::sync::Mutex::new(None));
                        let last = pending.clone();
                        let scanned = job.run(move |records| {
                            count_hashed(&count, &records);
                            let mut pending = pending.lock().expect("scan lock");
                            if let Some(earlier) = pending.take() {
                                let _ = futures::executor::block_on(earlier);
                            }
                            *pending = Some(batches.send(ScanBatch { folder: folder.clone(), records }));
                        });
                        // The last batch is in before the scan's end is.
                        if let Some(earlier) = last.lock().expect("scan lock").take() {
                            let _ = futures::executor::block_on(earlier);
                        }
                        count_hashed(&gauges, &scanned.records);
                        if scanned.full {
                            gauges.full_scans.fetch_add(1, Relaxed);
                            gauges.last_full_scan_ms.store(started.elapsed().as_millis() as u64, Relaxed);
                        }
                        addr.do_send(ScanDone(scanned));
                    });
                }
                Effect::EnterFault(fault) => {
                    tracing::warn!(folder = %folder, path = %state.config.path.display(), reason = %fault, "folder stopped");
                    self.state.gauges(folder).set_fault(Some(fault.to_string()));
                    state.puller.needs.do_send(Needs { items: Vec::new(), complete: true, settled: Vec::new() });
                }
                Effect::LeaveFault => {
                    tracing::info!(folder = %folder, path = %state.config.path.display(), "folder resumed");
                    self.state.gauges(folder).set_fault(None);
                }
                Effect::CommitDeletes(deletes) => {
                    for r in &deletes {
                        tracing::info!(folder = %folder, path = %r.path, "local delete");
                    }
                    self.commit(folder, deletes);
                }
                Effect::Recompute => self.recompute(folder, ctx),
                Effect::ScheduleFlush { at, generation } => {
                    let folder = folder.to_string();
                    ctx.notify_later(
                        FlushDue { folder, generation },
                        Duration::from_millis(at.saturating_sub(now_millis())),
                    );
                }
                Effect::Unreadable { now, found, readable } => {
                    for (path, reason) in found {
                        tracing::warn!(folder = %folder, path = %path, error = %reason, "cannot read a file; it is skipped (not deleted) until it can be read");
                    }
                    for path in readable {
                        tracing::info!(folder = %folder, path = %path, "the file can be read again");
                    }
                    *self.state.gauges(folder).unreadable.lock().expect("gauges lock") = now;
                }
            }
        }
    }

    /// Looks at every folder's root: stops a folder whose root went away, resumes one whose root
    /// came back.
    fn check_roots(&mut self, ctx: &mut Context<Self>) {
        let ids: Vec<String> = self.folders.keys().cloned().collect();
        for id in ids {
            self.step(&id, ctx, |rules, io| rules.root_checked(io.guard.check(), io));
        }
    }

    /// A fresh counter value: milliseconds since the epoch, or one more than the last one issued.
    fn tick(&mut self) -> u64 {
        self.clock.tick(now_millis())
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
            Ok(stored) => {
                self.notify(folder);
                self.recheck_diverged(folder, stored.iter().map(|r| r.path.as_str()));
                true
            }
            Err(e) => {
                tracing::error!(folder, error = %e, "cannot write the index");
                false
            }
        }
    }

    /// Needs for the given remote records (none, logged, if the index cannot be read).
    fn needs(&self, folder: &str, records: &[FileRecord]) -> Vec<NeedItem> {
        self.folders.get(folder).map(|s| needs(&self.store, &s.config, records)).unwrap_or_default()
    }

    /// Decides everything the folder needs again, from every peer's whole index: a page of paths
    /// per step (`replica::needs_page`), each step its own message, so that neither the actor
    /// thread nor memory carries the whole folder. The first page replaces the Puller's list; a
    /// recompute started meanwhile takes over from its own start.
    fn recompute(&mut self, folder: &str, ctx: &mut Context<Self>) {
        let Some(state) = self.folders.get_mut(folder) else { return };
        let step = RecomputeStep {
            folder: folder.to_string(),
            generation: state.rules.next_recompute(),
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
        if state.rules.fault().is_some() {
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
        let ids: Vec<String> = self.folders.keys().cloned().collect();
        for folder in &ids {
            purge_tombstones(&self.store, folder, cutoff);
            self.recount_diverged(folder);
        }
    }
}

impl Actor for IndexActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.purge();
        ctx.run_interval(Duration::from_secs(3600), |this, _| this.purge());
        ctx.run_interval(Duration::from_millis(ROOT_CHECK_EVERY), |this, ctx| this.check_roots(ctx));
        let ids: Vec<String> = self.folders.keys().cloned().collect();
        for id in ids {
            let state = self.folders.get_mut(&id).expect("folder");
            // First start (or an index from before roots were recorded): this root is the one.
            if state.guard.expected().is_none() {
                if let Err(e) = accept_root(&self.store, &id, &state.guard) {
                    tracing::error!(folder = %id, error = %e, "cannot write the index");
                }
            }
            let root = state.guard.check();
            if root.is_ok() {
                let removed = remove_stale_temp_files(&state.config.path);
                if removed > 0 {
                    tracing::info!(folder = %id, removed, "removed temp files left by an interrupted run");
                }
            }
            self.step(&id, ctx, |rules, io| match root {
                Err(problem) => rules.root_checked(Err(problem), io),
                Ok(()) => rules.changed([String::new()], io),
            });
        }
    }
}

impl Handler<LocalChanged> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: LocalChanged, ctx: &mut Context<Self>) {
        self.step(&msg.folder, ctx, |rules, io| rules.changed(msg.paths, io));
    }
}

impl Handler<Rescan> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: Rescan, ctx: &mut Context<Self>) {
        let took = self.state.gauges(&msg.folder).last_full_scan_ms.load(Relaxed);
        self.step(&msg.folder, ctx, |rules, io| rules.periodic(now_millis(), took, io));
    }
}

impl Handler<Rehash> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: Rehash, ctx: &mut Context<Self>) {
        if !self.folders.contains_key(&msg.folder) {
            return;
        }
        tracing::warn!(folder = %msg.folder, path = %msg.path, "content no longer matches the index; hashing it again");
        self.step(&msg.folder, ctx, |rules, io| rules.rehash(msg.path, io));
    }
}

impl Handler<ScanDone> for IndexActor {
    type Result = ();
    fn handle(&mut self, ScanDone(msg): ScanDone, ctx: &mut Context<Self>) {
        let Some(state) = self.folders.get_mut(&msg.folder) else { return };
        let finished = state.rules.scan_finished(msg.root, msg.full, &msg.scope, msg.unreadable);
        // (A scan of paths may still run beside a full one, or the reverse.)
        self.state.gauges(&msg.folder).scanning.store(state.rules.scanning(), Relaxed);
        // The root went away while the scan ran: what it saw means nothing.
        let void = finished.is_err();
        self.perform(&msg.folder, finished.unwrap_or_else(|e| e), ctx);
        if void {
            return;
        }
        self.take_scanned(&msg.folder, msg.records);
        let now = now_millis();
        self.step(&msg.folder, ctx, |rules, io| rules.scan_done(msg.full, now, io));
        if msg.full {
            super::release_free_memory();
        }
    }
}

impl Handler<FlushDue> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: FlushDue, ctx: &mut Context<Self>) {
        self.step(&msg.folder, ctx, |rules, io| rules.flush_due(msg.generation, io));
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
    /// with the others (`core::folder`).
    fn take_scanned(&mut self, folder: &str, records: Vec<FileRecord>) {
        let Judged { fresh, stale, deletes } = judge_scanned(&self.store, folder, records);
        self.commit(folder, fresh);
        if let Some(state) = self.folders.get_mut(folder) {
            state.rules.scanned(stale, deletes, now_millis());
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
        let (started, total) = (std::time::Instant::now(), msg.files.len());
        // A peer whose index was recreated loses every record we had of it, named or not.
        let reset =
            self.store.progress(&msg.device, &msg.folder).is_ok_and(|p| p.index_id != 0 && p.index_id != msg.index_id);
        let records = match store_remote(&self.store, &msg.device, &msg.folder, msg.index_id, msg.files) {
            Ok(records) => records,
            Err(refusal) => {
                if let Some(Refusal { reason, violation }) = refusal {
                    msg.reply.do_send(Disconnect { reason, violation });
                }
                return;
            }
        };
        if reset {
            self.recount_diverged(&msg.folder);
        } else {
            self.recheck_diverged(&msg.folder, records.iter().map(|r| r.path.as_str()));
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

impl Handler<Pulling> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: Pulling, ctx: &mut Context<Self>) {
        self.step(&msg.folder, ctx, |rules, io| rules.pulling(msg.path, msg.phase, io));
    }
}

impl Handler<Applied> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: Applied, ctx: &mut Context<Self>) {
        let folder = msg.folder;
        let (mut records, mut again, mut look_again, mut unread) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for outcome in msg.outcomes {
            // What the pull did is recorded against our current record; one that cannot be read
            // gets the path decided again later, never a record written over it blind.
            let path = match &outcome {
                Outcome::Took { record, .. } => record.path.clone(),
                Outcome::Reissue { path, .. } => path.clone(),
            };
            let now = match self.store.get(&folder, &path) {
                Ok(now) => now,
                Err(e) => {
                    tracing::error!(folder = %folder, path, error = %format!("{e:#}"), "cannot read the index");
                    unread.push(path);
                    continue;
                }
            };
            let record = match outcome {
                Outcome::Took { record, disk } => {
                    // A file or link the pull just wrote is as its disk state says; a later local
                    // change reaches us through the watcher (or the periodic rescan) like any other.
                    if disk.is_none() || record.kind == FileKind::Directory {
                        look_again.push(path.clone());
                    }
                    if replica::overtaken(&record, now.as_ref()) {
                        again.push(path);
                    }
                    replica::took(record, now.as_ref(), disk.map(|d| (d.mtime_ns, d.permissions)))
                }
                Outcome::Reissue { other, .. } => {
                    let Some(local) = now else { continue };
                    // The disk may differ from the record: look again.
                    look_again.push(path);
                    let now = self.tick();
                    replica::reissued(local, &other, self.me, now)
                }
            };
            records.push(record);
        }
        self.commit(&folder, records);
        again.extend(unread);
        if !again.is_empty() {
            ctx.address().do_send(RecomputePaths { folder: folder.clone(), paths: again });
        }
        // The disk may differ from the record (a directory we could not delete): look again.
        if !look_again.is_empty() {
            self.step(&folder, ctx, |rules, io| rules.changed(look_again, io));
        }
    }
}

impl Handler<Confirm> for IndexActor {
    type Result = Result<String, String>;
    fn handle(&mut self, msg: Confirm, ctx: &mut Context<Self>) -> Self::Result {
        let Some(state) = self.folders.get_mut(&msg.folder) else { return Err(format!("no folder `{}`", msg.folder)) };
        let answer = match state.rules.fault().cloned() {
            None => return Ok(format!("folder `{}` is not stopped; nothing to confirm", msg.folder)),
            Some(Fault::Emptied { files }) => {
                tracing::warn!(folder = %msg.folder, files, "the user confirmed that every file was deleted");
                format!("folder `{}`: the deletes of {files} files will be sent", msg.folder)
            }
            Some(Fault::Root(_)) => {
                let path = state.config.path.display();
                if !accept_root(&self.store, &msg.folder, &state.guard)
                    .map_err(|e| format!("cannot write the index: {e}"))?
                {
                    let folder = &msg.folder;
                    return Err(format!(
                        "folder `{folder}`: {path} does not exist or is not a directory; create it first"
                    ));
                }
                tracing::warn!(folder = %msg.folder, path = %state.config.path.display(), "the user confirmed a new folder root; files missing from it will be deleted on every peer");
                format!("folder `{}`: the new root is accepted; files missing from it are now deletes", msg.folder)
            }
        };
        self.step(&msg.folder, ctx, |rules, io| rules.confirm(io));
        Ok(answer)
    }
}

/// The data dir's index location.
pub fn index_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("index")
}

/// Counts the files a scan read and hashed: every live file it has a record for (an unchanged one
/// gets none).
fn count_hashed(gauges: &FolderGauges, records: &[FileRecord]) {
    for r in records.iter().filter(|r| r.is_file() && !r.deleted) {
        gauges.hashed_files.fetch_add(1, Relaxed);
        gauges.hashed_bytes.fetch_add(r.size, Relaxed);
    }
}
