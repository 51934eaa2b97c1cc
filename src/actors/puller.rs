//! The Puller actor of one folder: turns needs into disk changes. Directories first, then files
//! (several at a time, each with many chunks in flight), deletes last and deepest first, so that a
//! rename's new name is built from the old file's chunks before the old name is removed.
//!
//! A shell: the rules (what is admitted, held, queued, started, parked and retried) are the state
//! machine of `core::pull`, and the work on one need (fetch, verify, apply) is `crate::pull`. This
//! actor takes in messages, asks the state machine, and carries out what it returns: pulls on the
//! runtime, messages to the Index, gauges and log lines.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::messages::*;
use super::now_millis;
use crate::core::folder::PullPhase;
use crate::core::pull::{Effect, PeerGauges, PullState, Why};
use crate::core::retry::FailureKind;
use crate::fs::root::free_bytes;
use crate::pull::{execute, queue::StoredNeeds, PullContext};

/// How often parked failures are looked at (their backoff, and free space for a full disk).
const RETRY_TICK: Duration = Duration::from_secs(1);

pub struct Puller {
    /// Shared with every pull it starts.
    ctx: Arc<PullContext>,
    state: PullState,
    /// The most files queued since the allocator's free memory was last handed back.
    most_needs: u64,
}

/// A drained queue that held at least this many files hands the allocator's free memory back
/// (a single edit does not pay for it).
const TRIM_AFTER_NEEDS: u64 = 1024;

#[derive(Message)]
#[rtype(result = "()")]
struct Finished {
    path: String,
    result: Result<(), (FailureKind, String)>,
}

/// The folder's need queues in the store.
fn stored(ctx: &PullContext) -> StoredNeeds<'_> {
    StoredNeeds::new(&ctx.store, &ctx.folder)
}

impl Puller {
    pub fn new(ctx: PullContext) -> Self {
        Puller { ctx: Arc::new(ctx), state: PullState::default(), most_needs: 0 }
    }

    /// A stopped folder (root gone or replaced) gets nothing written under it.
    fn faulted(&self) -> bool {
        self.ctx.gauges.faulted.load(Relaxed)
    }

    /// Free space of the folder's disk, when a parked pull waits for it.
    fn free_space(&self) -> Option<u64> {
        (!self.faulted() && self.state.wants_free_space()).then(|| free_bytes(&self.ctx.root)).flatten()
    }

    /// Carries out what the state machine decided, in order.
    fn perform(&self, effects: Vec<Effect>, now: u64, ctx: &mut Context<Self>) {
        let folder = &self.ctx.folder;
        // The Index hears of the pulls this step starts and ends in as few messages as keep the
        // order of everything it is told (one each was two thread switches per small file); the
        // pulls start once it has heard of them.
        let mut phases: Vec<(String, PullPhase)> = Vec::new();
        let mut starts = Vec::new();
        let tell = |phases: &mut Vec<(String, PullPhase)>| {
            if !phases.is_empty() {
                self.ctx.index.pulling.do_send(Pulling { folder: folder.clone(), phases: std::mem::take(phases) });
            }
        };
        for effect in effects {
            match effect {
                Effect::Start { item, sources } => {
                    phases.push((item.remote.path.clone(), PullPhase::Started));
                    starts.push((item, sources));
                }
                Effect::Ended { path, failed } => phases.push((path, PullPhase::Ended { failed })),
                Effect::Recompute { paths, why } => {
                    match why {
                        Why::Superseded => {}
                        Why::Retry => tracing::debug!(folder = %folder, paths = paths.len(), "retrying failed pulls"),
                        Why::Held { peer, left } => {
                            tracing::debug!(folder = %folder, peer = %peer.prefix(), paths = paths.len(), left, "taking held needs")
                        }
                    }
                    tell(&mut phases);
                    self.ctx.index.recompute_paths.do_send(RecomputePaths { folder: folder.clone(), paths });
                }
                Effect::Holding { peer } => {
                    tracing::info!(folder = %folder, peer = %peer.prefix(), budget = self.state.budget_cap(), "peer's needs over its budget are held until earlier ones are done");
                }
                Effect::Failed { path, failure, loud } => {
                    self.ctx.gauges.errors.fetch_add(1, Relaxed);
                    let retry_in = Duration::from_millis(failure.next_retry_ms.saturating_sub(now));
                    // One WARN per path and kind of failure that needs attention, the rest at
                    // debug; all are listed in the status.
                    if loud {
                        tracing::warn!(folder = %folder, path = %path, kind = ?failure.kind, error = %failure.reason, retry_in = ?retry_in, "pull failed");
                    } else {
                        tracing::debug!(folder = %folder, path = %path, attempts = failure.attempts, error = %failure.reason, retry_in = ?retry_in, "pull failed again");
                    }
                }
                Effect::Recovered { path } => {
                    tracing::info!(folder = %folder, path = %path, "pull succeeded after failing");
                }
                Effect::Failures => {
                    *self.ctx.gauges.failures.lock().expect("gauges lock") = self.state.failures().clone()
                }
            }
        }
        tell(&mut phases);
        for (item, sources) in starts {
            let path = item.remote.path.clone();
            let (pctx, me) = (self.ctx.clone(), ctx.address());
            self.ctx.runtime.spawn(async move {
                let result = execute(&pctx, *item, &sources).await.map_err(|e| (e.kind(), e.to_string()));
                me.do_send(Finished { path, result });
            });
        }
    }

    /// The folder's needs and window in the status. O(1): the counters are kept as needs come and go.
    fn publish(&mut self) {
        let g = self.state.gauges(&stored(&self.ctx));
        let gauges = &self.ctx.gauges;
        // The queue drained after a burst: what its pulls used can go back.
        self.most_needs = self.most_needs.max(g.need_files);
        if g.need_files == 0 && self.most_needs >= TRIM_AFTER_NEEDS {
            self.most_needs = 0;
            super::release_free_memory();
        }
        gauges.window.store(g.window, Relaxed);
        gauges.window_peak.fetch_max(g.window_peak, Relaxed);
        gauges.need_files.store(g.need_files, Relaxed);
        gauges.need_bytes.store(g.need_bytes, Relaxed);
    }

    /// Brings each peer's gauges (needs admitted and held) up to date with this Puller's part.
    fn publish_budget(&mut self) {
        for PeerGauges { peer, before, now } in self.state.peer_gauges(&stored(&self.ctx)) {
            let counters = self.ctx.directory.counters(&peer);
            for (gauge, old, new) in
                [(&counters.needs_admitted, before.0, now.0), (&counters.needs_held, before.1, now.1)]
            {
                if new >= old {
                    gauge.fetch_add(new - old, Relaxed);
                } else {
                    gauge.fetch_sub(old - new, Relaxed);
                }
            }
        }
    }
}

impl Actor for Puller {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(RETRY_TICK, |this, ctx| {
            let (now, faulted, free) = (now_millis(), this.faulted(), this.free_space());
            let effects = this.state.tick(now, faulted, free, &mut stored(&this.ctx));
            this.perform(effects, now, ctx);
            this.publish_budget();
        });
    }
}

impl Handler<Barrier> for Puller {
    type Result = ();
    fn handle(&mut self, _: Barrier, _: &mut Context<Self>) {}
}

impl Handler<RetryNow> for Puller {
    type Result = usize;
    fn handle(&mut self, _: RetryNow, ctx: &mut Context<Self>) -> usize {
        let (now, faulted, free) = (now_millis(), self.faulted(), self.free_space());
        let (due, effects) = self.state.retry_now(now, faulted, free);
        self.perform(effects, now, ctx);
        due
    }
}

impl Handler<Needs> for Puller {
    type Result = ();
    fn handle(&mut self, msg: Needs, ctx: &mut Context<Self>) {
        let started = Instant::now();
        let (items, now, faulted) = (msg.items.len(), now_millis(), self.faulted());
        let mut store = stored(&self.ctx);
        let effects = self.state.take_needs(now, msg.items, msg.complete, msg.settled, faulted, &mut store);
        self.perform(effects, now, ctx);
        self.publish();
        self.publish_budget();
        tracing::debug!(folder = %self.ctx.folder, items, ms = started.elapsed().as_millis() as u64, "needs taken in");
    }
}

impl Handler<Finished> for Puller {
    type Result = ();
    fn handle(&mut self, msg: Finished, ctx: &mut Context<Self>) {
        let (now, faulted) = (now_millis(), self.faulted());
        let effects = self.state.finished(now, &msg.path, msg.result, faulted, &mut stored(&self.ctx));
        self.perform(effects, now, ctx);
        self.publish();
        self.publish_budget();
    }
}
