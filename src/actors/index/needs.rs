//! What the folder needs from its peers: a peer's batch of records stored and decided, a
//! whole-folder recompute a page at a time, the paths the Puller hands back (held needs taken,
//! retries due, pulls overtaken), and what of it all settles here or goes to the Puller.

use actix::prelude::*;

use super::IndexActor;
use crate::actors::messages::{Barrier, Disconnect, NeedItem, Needs, RecomputeNeeds, RecomputePaths, RemoteIndex};
use crate::core::replica;
use crate::core::FileRecord;
use crate::index::{needs, needs_at, needs_page, store_remote, Refusal, Stored};

/// One step of a whole-folder recompute (`IndexActor::recompute`): the paths after `after`.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct RecomputeStep {
    pub(super) folder: String,
    pub(super) generation: u64,
    pub(super) after: Option<String>,
    pub(super) started: std::time::Instant,
    pub(super) needs: usize,
}

impl Handler<RecomputeStep> for IndexActor {
    type Result = ();
    fn handle(&mut self, mut msg: RecomputeStep, ctx: &mut Context<Self>) {
        if self.folders.get(&msg.folder).is_none_or(|s| !s.rules.recompute_current(msg.generation)) {
            return;
        }
        let folder = msg.folder.as_str();
        let Some((items, next)) = needs_page(&self.store, &self.folders[folder].config, msg.after.as_deref()) else {
            return;
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

impl Handler<RecomputePaths> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: RecomputePaths, _: &mut Context<Self>) {
        let Some(state) = self.folders.get(&msg.folder) else { return };
        let items = needs_at(&self.store, &state.config, &msg.paths);
        self.dispatch(&msg.folder, items, false, msg.paths);
    }
}

impl IndexActor {
    /// Needs for the given remote records (none, logged, if the index cannot be read).
    fn needs(&self, folder: &str, records: &[FileRecord]) -> Vec<NeedItem> {
        self.folders.get(folder).map(|s| needs(&self.store, &s.config, records)).unwrap_or_default()
    }

    /// Decides everything the folder needs again, from every peer's whole index: a page of paths
    /// per step (`replica::needs_page`), each step its own message, so that neither the actor
    /// thread nor memory carries the whole folder. The first page replaces the Puller's list; a
    /// recompute started meanwhile takes over from its own start.
    pub(super) fn recompute(&mut self, folder: &str, ctx: &mut Context<Self>) {
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
        let (puller, filter) = (state.puller.needs.clone(), &state.filter);
        let replica::Dispatched { commit, work, settled } =
            replica::dispatch(items, complete, settled, filter.send_only(), &|r: &FileRecord| filter.ignores(r));
        self.commit(folder, commit);
        if !work.is_empty() || complete || !settled.is_empty() {
            puller.do_send(Needs { items: work, complete, settled });
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
        let Stored { records, reset } =
            match store_remote(&self.store, &msg.device, &msg.folder, msg.index_id, msg.files) {
                Ok(stored) => stored,
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
