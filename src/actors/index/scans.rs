//! The Index's scans: what starts them (the watcher's changes, the periodic rescan, a chunk that no
//! longer matched, a flush of held deletes due), the scan job on a blocking thread, and what its
//! batches and its end bring back, judged against the index and handed to `core::folder`.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;

use actix::prelude::*;

use super::IndexActor;
use crate::actors::messages::{LocalChanged, Rehash, Rescan, Settling};
use crate::actors::now_millis;
use crate::core::FileRecord;
use crate::index::{judge_scanned, Judged, ScanJob, Scanned};

#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct ScanDone(Scanned);

/// A flush of held deletes scheduled by `core::folder` is due.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct FlushDue {
    pub(super) folder: String,
    pub(super) generation: u64,
}

impl IndexActor {
    /// Starts the scan `core::folder` asked for (`Effect::StartScan`) on a blocking thread; its
    /// batches and its end come back as messages.
    #[allow(clippy::too_many_arguments)] // the effect's fields, and the actor's context
    pub(super) fn start_scan(
        &mut self,
        folder: &str,
        scope: Vec<String>,
        full: bool,
        suspect: HashSet<String>,
        busy: HashSet<String>,
        reload_ignore: bool,
        ctx: &mut Context<Self>,
    ) {
        let now = self.tick();
        let Some(state) = self.folders.get_mut(folder) else { return };
        if reload_ignore {
            state.filter.reload(&state.config.path);
        }
        let job = ScanJob {
            store: self.store.clone(),
            folder: folder.to_string(),
            root: state.config.path.clone(),
            guard: state.guard.clone(),
            params: self.params,
            me: self.me,
            filter: state.filter.clone(),
            busy,
            scope,
            full,
            suspect,
            now,
        };
        let gauges = self.state.gauges(folder);
        gauges.scanning.store(true, Relaxed);
        if !full {
            gauges.looked_paths.fetch_add(job.scope.len() as u64, Relaxed);
        }
        let (addr, batches, folder, count) = (ctx.address(), ctx.address(), folder.to_string(), gauges.clone());
        let on_batch = move |records: Vec<FileRecord>| {
            count.count_hashed(&records);
            batches.send(ScanBatch { folder: folder.clone(), records })
        };
        job.spawn(on_batch, move |scanned, took| {
            gauges.count_hashed(&scanned.records);
            if scanned.full {
                gauges.full_scans.fetch_add(1, Relaxed);
                gauges.last_full_scan_ms.store(took.as_millis() as u64, Relaxed);
            }
            addr.do_send(ScanDone(scanned));
        });
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
        // What the scan left while it settled comes back through the Watcher, once quiet or closed.
        if !msg.settling.is_empty() {
            self.settling.do_send(Settling { folder: msg.folder, paths: msg.settling });
        }
        if msg.full {
            crate::actors::release_free_memory();
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
