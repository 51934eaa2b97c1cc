//! The Index actor: the only writer of the RocksDB index. It runs scans (on blocking threads),
//! commits their results, stores what peers announce, asks `core::decide` what each announcement
//! means, hands the work to the folder's Puller, and records what the Puller applied.
//!
//! A shell: when a folder is scanned and what a scan covers, how local deletes are held and judged,
//! when a folder stops and resumes, and what a confirm means are the state machine of
//! `core::folder`; what an announcement needs and what a pull is recorded as are `core::replica`
//! (`needs`, `dispatch`, `applied`); what the folder leaves alone is `fs::ignore::FolderFilter`; the
//! store views and the scan job are `crate::index`. This actor takes in messages, asks the rules,
//! and carries out what they return: scans, commits, messages to the Puller, gauges and log lines.
//! Its scans are in `scans`, what peers announce and the needs in `needs`, one-way folders in
//! `modes`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::messages::*;
use super::now_millis;
use super::status::NodeState;
use crate::config::FolderConfig;
use crate::core::folder::{Confirming, Effect, Folder, ROOT_CHECK_EVERY};
use crate::core::replica::{self, Clock, Current};
use crate::core::{DeviceId, FileRecord, ShortId};
use crate::fs::chunker::ChunkParams;
use crate::fs::ignore::FolderFilter;
use crate::fs::root::RootGuard;
use crate::index::{accept_root, open_folder, purge_tombstones, FolderDisk};
use crate::store::Store;

pub mod modes;
mod needs;
mod scans;
use scans::FlushDue;

/// Per-folder state the Index keeps: the rules' state, and what carrying them out needs.
struct FolderState {
    config: FolderConfig,
    /// What the folder leaves alone: `.syncignore`, links under `symlinks = "ignore"`, send-only.
    filter: FolderFilter,
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
    /// Where the files a full scan left while they settled go (the Watcher).
    settling: Recipient<Settling>,
    state: Arc<NodeState>,
    /// This node's version clock (`core::replica::Clock`).
    clock: Clock,
    tombstone_ttl: Duration,
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
        settling: Recipient<Settling>,
    ) -> Self {
        let folders = folders
            .iter()
            .map(|(f, guard, puller)| {
                let state = FolderState {
                    config: f.clone(),
                    filter: FolderFilter::load(&f.path, f.symlinks, f.mode),
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
            settling,
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
                    self.start_scan(folder, scope, full, suspect, busy, reload_ignore, ctx)
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
            let root = open_folder(&self.store, &id, &self.folders[&id].guard);
            self.step(&id, ctx, |rules, io| match root {
                Err(problem) => rules.root_checked(Err(problem), io),
                Ok(()) => rules.changed([String::new()], io),
            });
        }
    }
}

impl Handler<Pulling> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: Pulling, ctx: &mut Context<Self>) {
        self.step(&msg.folder, ctx, |rules, io| {
            msg.phases.into_iter().flat_map(|(path, phase)| rules.pulling(path, phase, io)).collect()
        });
    }
}

impl Handler<Applied> for IndexActor {
    type Result = ();
    /// Records what the Puller did (`replica::applied`), each outcome against our record now: one
    /// that cannot be read gets the path decided again later, never a record written over it blind.
    fn handle(&mut self, msg: Applied, ctx: &mut Context<Self>) {
        let folder = msg.folder;
        let outcomes = msg.outcomes.into_iter().map(replica::Applied::from).map(|outcome| {
            let current = match self.store.get(&folder, outcome.path()) {
                Ok(record) => Current::Read(record),
                Err(e) => {
                    let path = outcome.path();
                    tracing::error!(folder = %folder, path, error = %format!("{e:#}"), "cannot read the index");
                    Current::Unreadable
                }
            };
            (outcome, current)
        });
        let outcomes = outcomes.collect();
        let plan = replica::applied(outcomes, self.me, &mut self.clock, now_millis());
        self.commit(&folder, plan.commit);
        if !plan.recompute.is_empty() {
            ctx.address().do_send(RecomputePaths { folder: folder.clone(), paths: plan.recompute });
        }
        if !plan.look_again.is_empty() {
            self.step(&folder, ctx, |rules, io| rules.changed(plan.look_again, io));
        }
    }
}

impl Handler<Confirm> for IndexActor {
    type Result = Result<String, String>;
    fn handle(&mut self, msg: Confirm, ctx: &mut Context<Self>) -> Self::Result {
        let folder = msg.folder.as_str();
        let Some(state) = self.folders.get(folder) else { return Err(format!("no folder `{folder}`")) };
        let path = state.config.path.display();
        let answer = match state.rules.confirming() {
            Confirming::NotStopped => return Ok(format!("folder `{folder}` is not stopped; nothing to confirm")),
            Confirming::Deletes { files } => {
                tracing::warn!(folder = %folder, files, "the user confirmed that every file was deleted");
                format!("folder `{folder}`: the deletes of {files} files will be sent")
            }
            Confirming::NewRoot => {
                if !accept_root(&self.store, folder, &state.guard)
                    .map_err(|e| format!("cannot write the index: {e}"))?
                {
                    return Err(format!(
                        "folder `{folder}`: {path} does not exist or is not a directory; create it first"
                    ));
                }
                tracing::warn!(folder = %folder, path = %path, "the user confirmed a new folder root; files missing from it will be deleted on every peer");
                format!("folder `{folder}`: the new root is accepted; files missing from it are now deletes")
            }
        };
        self.step(folder, ctx, |rules, io| rules.confirm(io));
        Ok(answer)
    }
}

/// The data dir's index location.
pub fn index_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("index")
}
