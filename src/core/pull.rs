//! The Puller's rules, as one state machine per folder: which needs are admitted (each peer's need
//! budget, `need_budget`) and which are held in the store until their peer's budget frees; which
//! wait in memory (the window: the head of the stored need queue, in pull order) and which start
//! (the order and overlap rule of `plan`, the files and bytes in flight, each peer's share of the
//! slots); what a newer need does to a running pull (shares its sources, or has it decided again
//! when done); what a failed pull leaves (parked until its retry is due, `retry`); and what a
//! complete list of needs drops.
//!
//! Deterministic and free of I/O: the time comes in as milliseconds, the stored need queues are
//! reached through [`NeedStore`], and each step returns the [`Effect`]s the Puller actor carries
//! out (start a pull, tell the Index, log), in order.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, RwLock};

use super::need_budget::{running_share, NeedBudget};
use super::plan::{Entry, NeedKey, Phase, PullQueue, Targets};
use super::replica::Need;
use super::retry::{FailureKind, PathFailure};
use super::{Action, DeviceId, FileKind, VersionVector};

/// Pulls running at once, whatever their size.
pub const FILES_IN_FLIGHT: usize = 8;
/// Small files may have more in flight, while all in flight bring under `SMALL_BYTES_IN_FLIGHT`:
/// their chunk requests then fill the pipe, and their commits share a flush. On a disk that flush
/// (`syncfs`: a journal commit) is what a small file waits for: at 64, a batch held at most the
/// 48 files of one peer's share, and 200,000 files of 1 KiB on ext4 took 28–44 s after the write
/// where 256 take 13–17 s and 512 take 7–10 s (docs/benchmarks.md, thirteenth session).
pub const SMALL_FILES_IN_FLIGHT: usize = 512;
pub const SMALL_BYTES_IN_FLIGHT: u64 = 16 << 20;
/// Most needs held in memory: the rest wait in the store, in pull order. Enough to keep
/// `SMALL_FILES_IN_FLIGHT` busy and to look past needs blocked by the overlap rule; small enough
/// that a million queued files cost what a thousand do.
pub const WINDOW: usize = 4096;
/// Needs held back by a peer's budget are taken again in batches of at least this many (or all
/// that are held), at most `HELD_BATCH_MAX`: each batch costs one read of the store and one
/// recompute by the Index, not one per finished pull.
pub const HELD_BATCH_MIN: u64 = 64;
pub const HELD_BATCH_MAX: u32 = 512;

/// The bounds above, as one value (tests use small ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub files: usize,
    pub small_files: usize,
    pub small_bytes: u64,
    pub window: usize,
    pub held_batch_min: u64,
    pub held_batch_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            files: FILES_IN_FLIGHT,
            small_files: SMALL_FILES_IN_FLIGHT,
            small_bytes: SMALL_BYTES_IN_FLIGHT,
            window: WINDOW,
            held_batch_min: HELD_BATCH_MIN,
            held_batch_max: HELD_BATCH_MAX,
        }
    }
}

/// The devices that hold the version being pulled, shared with the running pull: peers that
/// announce it mid-file join in.
pub type Sources = Arc<RwLock<Vec<DeviceId>>>;

/// Count and bytes of a stored queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub records: u64,
    pub bytes: u64,
}

/// The stored need queues of one folder: the folder's queue (every admitted need that is not
/// running, in pull order; the window is its head) and, per peer, its needs held over the budget
/// (paths only: a held need is decided again by the Index when it is taken). A write or read that
/// fails is reported by the implementation, and answered with `false` or `None`.
pub trait NeedStore {
    /// The folder's queue, window included.
    fn queued(&self) -> Counts;
    /// Queues needs (each replacing any queued need of its path), with the bytes each brings.
    fn queue(&mut self, needs: &[(NeedKey, u64, &Need)]) -> bool;
    fn unqueue(&mut self, paths: &[&str]);
    fn clear_queue(&mut self);
    /// Up to `limit` queued needs after `after` (from the first without it), in pull order;
    /// entries that cannot be read are dropped.
    fn queued_after(&mut self, after: Option<&NeedKey>, limit: usize) -> Vec<Need>;
    fn held(&self, peer: DeviceId) -> Counts;
    fn hold(&mut self, peer: DeviceId, needs: &[(NeedKey, u64)]) -> bool;
    fn unhold(&mut self, peer: DeviceId, paths: &[&str]) -> bool;
    fn clear_held(&mut self, peer: DeviceId);
    /// The first `limit` paths held for `peer`, in pull order.
    fn held_first(&mut self, peer: DeviceId, limit: usize) -> Option<Vec<String>>;
}

/// What the Puller actor does for a step, in this order.
#[derive(Debug)]
pub enum Effect {
    /// Carry out `item` (its sources are read from `sources`, which peers may join meanwhile),
    /// and tell the Index the path is being pulled.
    Start { item: Box<Need>, sources: Sources },
    /// The pull of `path` is over: tell the Index (`failed`: it failed, and what it left may differ
    /// from our record).
    Ended { path: String, failed: bool },
    /// Have the Index decide these paths again.
    Recompute { paths: Vec<String>, why: Why },
    /// Needs of `peer` are held over its budget for the first time.
    Holding { peer: DeviceId },
    /// A pull failed (count it). `loud`: the first failure of this kind and reason, of a kind that
    /// needs attention; the others (transient, repeats) are worth a debug line only.
    Failed { path: String, failure: PathFailure, loud: bool },
    /// A pull succeeded after failing.
    Recovered { path: String },
    /// The failed paths changed: publish [`PullState::failures`].
    Failures,
}

/// Why paths go back to the Index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A newer version arrived while the path was being pulled.
    Superseded,
    /// Their retry is due.
    Retry,
    /// Held needs of `peer` its budget has room for again; `left` stay held.
    Held { peer: DeviceId, left: u64 },
}

/// The Puller's numbers for the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    /// Needs not done: queued, held, running and parked.
    pub need_files: u64,
    pub need_bytes: u64,
    pub window: u64,
    pub window_peak: u64,
}

/// A peer's part of the needs admitted and held, as last published and as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerGauges {
    pub peer: DeviceId,
    pub before: (u64, u64),
    pub now: (u64, u64),
}

/// A running pull.
#[derive(Debug)]
struct InFlight {
    delete: bool,
    /// Bytes it brings.
    bytes: u64,
    /// The paths it may write: its own, and a conflict copy's.
    targets: Vec<String>,
    version: VersionVector,
    sources: Sources,
    /// A newer need for this path arrived meanwhile: look again when this one is done.
    superseded: bool,
    /// The need itself, parked for a retry if the pull fails.
    item: Need,
}

/// The paths carrying out `item` may write. (A conflict copy may end up at a numbered variant of
/// its name; those are only ever created, never replaced.)
fn targets(item: &Need) -> impl Iterator<Item = &str> {
    let copy = match &item.action {
        Action::ConflictLocalLoses { copy } | Action::ConflictRemoteLoses { copy } => Some(copy.as_str()),
        _ => None,
    };
    std::iter::once(item.remote.path.as_str()).chain(copy)
}

fn is_delete(item: &Need) -> bool {
    item.remote.deleted && matches!(item.action, Action::Take)
}

/// Where `item` goes in the pull order.
pub fn phase_of(item: &Need) -> Phase {
    if is_delete(item) {
        Phase::Delete
    } else if item.remote.kind == FileKind::Directory {
        Phase::Directory
    } else {
        Phase::File
    }
}

/// Bytes carrying out `item` brings.
pub fn bytes_of(item: &Need) -> u64 {
    if item.remote.deleted {
        0
    } else {
        item.remote.size
    }
}

fn key_of(item: &Need) -> NeedKey {
    NeedKey::new(phase_of(item), &item.remote.path)
}

/// One folder's pulls: queued (the window), running, parked after a failure, held over a peer's
/// budget (in the store), and each path's failure.
#[derive(Debug)]
pub struct PullState {
    limits: Limits,
    /// The window: the first needs of the stored queue, in the pull order.
    queue: PullQueue<Need>,
    /// Paths being worked on now, and what they may write (for the overlap rule).
    in_flight: BTreeMap<String, InFlight>,
    targets: Targets,
    /// Running pulls that create something (not deletes), and the bytes all running pulls bring.
    creating: usize,
    in_flight_bytes: u64,
    /// Paths whose last pull failed, until one succeeds or the need goes away.
    failures: BTreeMap<String, PathFailure>,
    /// Failed needs waiting for their retry, and the bytes they bring.
    parked: BTreeMap<String, Need>,
    parked_bytes: u64,
    /// Each peer's need budget, the peer each admitted need is charged to, and the running pulls
    /// charged to each peer (for its share of the slots).
    budget: NeedBudget<DeviceId>,
    charged: BTreeMap<String, DeviceId>,
    running: BTreeMap<DeviceId, usize>,
    /// The needs in the window charged to each peer, and those charged to none: the pump asks the
    /// window for the next need only when one of them may start (else, with the only peer at its
    /// share, every finished pull walked the whole window: 20% of W7's CPU).
    window_charged: BTreeMap<DeviceId, usize>,
    window_free: usize,
    /// Peers with needs over their budget held in the store.
    held: BTreeSet<DeviceId>,
    /// What was last published of each peer's part (admitted, held).
    published: BTreeMap<DeviceId, (u64, u64)>,
    window_peak: usize,
}

impl Default for PullState {
    fn default() -> Self {
        PullState::new(Limits::default(), NeedBudget::default())
    }
}

impl PullState {
    pub fn new(limits: Limits, budget: NeedBudget<DeviceId>) -> Self {
        PullState {
            limits,
            queue: PullQueue::default(),
            in_flight: BTreeMap::new(),
            targets: Targets::default(),
            creating: 0,
            in_flight_bytes: 0,
            failures: BTreeMap::new(),
            parked: BTreeMap::new(),
            parked_bytes: 0,
            budget,
            charged: BTreeMap::new(),
            running: BTreeMap::new(),
            window_charged: BTreeMap::new(),
            window_free: 0,
            held: BTreeSet::new(),
            published: BTreeMap::new(),
            window_peak: 0,
        }
    }

    /// Paths whose last pull failed.
    pub fn failures(&self) -> &BTreeMap<String, PathFailure> {
        &self.failures
    }

    /// Most needs one peer may have admitted.
    pub fn budget_cap(&self) -> u32 {
        self.budget.cap()
    }

    /// Whether a retry would look at the free space (a parked pull waits for space).
    pub fn wants_free_space(&self) -> bool {
        !self.parked.is_empty() && self.failures.values().any(|f| f.kind == FailureKind::NeedsSpace)
    }

    /// Paths being pulled now.
    pub fn running(&self) -> impl Iterator<Item = &str> {
        self.in_flight.keys().map(String::as_str)
    }

    /// Paths parked until their retry.
    pub fn parked(&self) -> impl Iterator<Item = &str> {
        self.parked.keys().map(String::as_str)
    }

    /// Paths queued in memory (the window).
    pub fn windowed(&self) -> impl Iterator<Item = &str> {
        self.queue.paths().map(String::as_str)
    }

    /// Takes in a list of needs from the Index: with `complete`, the start of a new list of all
    /// of them (earlier ones not in it are no longer needed; the Index sends a recompute a page
    /// at a time, the first page `complete` and the rest adding to it), plus the paths sent back
    /// to it that need nothing now (`settled`); then starts what may start.
    pub fn take_needs(
        &mut self,
        now: u64,
        items: Vec<Need>,
        complete: bool,
        settled: Vec<String>,
        faulted: bool,
        store: &mut impl NeedStore,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        if complete {
            self.window_clear();
            store.clear_queue();
            // Failures of paths that are no longer needed are over.
            let wanted: HashSet<&str> = items.iter().map(|i| i.remote.path.as_str()).collect();
            self.parked.retain(|p, _| wanted.contains(p.as_str()));
            self.parked_bytes = self.parked.values().map(|i| i.remote.size).sum();
            let in_flight = &self.in_flight;
            self.failures.retain(|p, _| wanted.contains(p.as_str()) || in_flight.contains_key(p));
            fx.push(Effect::Failures);
            // The whole list is admitted anew: only running pulls keep their charge.
            let budget = &mut self.budget;
            self.charged.retain(|p, d| {
                let keep = in_flight.contains_key(p);
                if !keep {
                    budget.release(*d);
                }
                keep
            });
            for device in std::mem::take(&mut self.held) {
                store.clear_held(device);
            }
        }
        if !settled.is_empty() {
            for path in &settled {
                self.unpark(path);
                self.failures.remove(path);
                if !self.queue.contains(path) && !self.in_flight.contains_key(path) {
                    self.release(path);
                }
            }
            fx.push(Effect::Failures);
        }
        let mut queue = Vec::new();
        let mut over_budget = Vec::new();
        let mut admitted: Vec<String> = Vec::new();
        for item in items {
            let Some(running) = self.in_flight.get_mut(&item.remote.path) else {
                if !self.admit(&item, now) {
                    // (A path parked before a complete list came is held now, not retried.)
                    self.unpark(&item.remote.path);
                    over_budget.push(item);
                    continue;
                }
                if !self.held.is_empty() {
                    admitted.push(item.remote.path.clone());
                }
                queue.extend(self.park_or_pass(item, now));
                continue;
            };
            if running.version == item.remote.version {
                // Another peer now has the version we are pulling: it shares the work.
                let mut sources = running.sources.write().expect("sources lock");
                for d in item.sources {
                    if !sources.contains(&d) {
                        sources.push(d);
                    }
                }
            } else {
                // Newer than what we are pulling: decided again (against what that pull leaves on
                // disk) once it is done.
                running.superseded = true;
            }
        }
        if !admitted.is_empty() {
            // Paths newly admitted are no longer held under any peer.
            let paths: Vec<&str> = admitted.iter().map(String::as_str).collect();
            for &device in &self.held {
                store.unhold(device, &paths);
            }
        }
        self.hold(over_budget, store, &mut fx);
        self.queue_needs(queue, store);
        self.take_held(now, store, &mut fx);
        self.pump(faulted, store, &mut fx);
        fx
    }

    /// A pull is over, with `result`; then starts what may start.
    pub fn finished(
        &mut self,
        now: u64,
        path: &str,
        result: Result<(), (FailureKind, String)>,
        faulted: bool,
        store: &mut impl NeedStore,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        let flight = self.in_flight.remove(path);
        if let Some(f) = &flight {
            if let Some(n) = self.charged.get(path).and_then(|d| self.running.get_mut(d)) {
                *n = n.saturating_sub(1);
            }
            f.targets.iter().for_each(|t| self.targets.remove(t));
            self.creating -= usize::from(!f.delete);
            self.in_flight_bytes -= f.bytes;
        }
        let superseded = flight.as_ref().is_some_and(|f| f.superseded);
        fx.push(Effect::Ended { path: path.to_string(), failed: result.is_err() });
        if superseded {
            fx.push(Effect::Recompute { paths: vec![path.to_string()], why: Why::Superseded });
        }
        match result {
            Ok(()) => {
                self.release(path);
                if self.failures.remove(path).is_some() {
                    fx.push(Effect::Recovered { path: path.to_string() });
                    fx.push(Effect::Failures);
                }
            }
            Err((kind, reason)) => {
                let previous = self.failures.get(path);
                let needs_bytes = flight.as_ref().map_or(0, |f| f.bytes);
                let failure = PathFailure::after(previous, kind, reason, needs_bytes, now);
                // Loud once per path and kind of failure that needs attention: transient ones (no
                // source connected, a source gone mid-file) and repeats are not, so a peer that
                // announces many records nobody can serve cannot flood the log.
                let loud = kind != FailureKind::Transient
                    && previous.is_none_or(|p| p.kind != kind || p.reason != failure.reason);
                fx.push(Effect::Failed { path: path.to_string(), failure: failure.clone(), loud });
                self.failures.insert(path.to_string(), failure);
                if let (Some(f), false) = (flight, superseded) {
                    self.park(path.to_string(), f.item);
                }
                fx.push(Effect::Failures);
            }
        }
        self.take_held(now, store, &mut fx);
        self.pump(faulted, store, &mut fx);
        fx
    }

    /// The periodic look at parked failures (their backoff, and `free` space for a full disk) and
    /// at held needs whose peers have room again.
    pub fn tick(&mut self, now: u64, faulted: bool, free: Option<u64>, store: &mut impl NeedStore) -> Vec<Effect> {
        let mut fx = Vec::new();
        self.retry_due(now, false, faulted, free, &mut fx);
        self.take_held(now, store, &mut fx);
        fx
    }

    /// Every parked path is tried again now (the user asked); how many.
    pub fn retry_now(&mut self, now: u64, faulted: bool, free: Option<u64>) -> (usize, Vec<Effect>) {
        let mut fx = Vec::new();
        (self.retry_due(now, true, faulted, free, &mut fx), fx)
    }

    /// The numbers for the status. O(peers holding needs): the store keeps its counts.
    pub fn gauges(&self, store: &impl NeedStore) -> Gauges {
        let queued = store.queued();
        let held = self.held.iter().fold(Counts::default(), |c, d| {
            let h = store.held(*d);
            Counts { records: c.records + h.records, bytes: c.bytes + h.bytes }
        });
        Gauges {
            need_files: queued.records + held.records + (self.in_flight.len() + self.parked.len()) as u64,
            need_bytes: queued.bytes + self.in_flight_bytes + self.parked_bytes + held.bytes,
            window: self.queue.len() as u64,
            window_peak: self.window_peak as u64,
        }
    }

    /// Each peer's part (needs admitted, needs held) that changed since last asked.
    pub fn peer_gauges(&mut self, store: &impl NeedStore) -> Vec<PeerGauges> {
        let mut peers: BTreeSet<DeviceId> = self.budget.peers().collect();
        peers.extend(self.held.iter().copied());
        peers.extend(self.published.keys().copied());
        let mut changed = Vec::new();
        for peer in peers {
            let admitted = u64::from(self.budget.outstanding(peer));
            let held = if self.held.contains(&peer) { store.held(peer).records } else { 0 };
            let before = self.published.insert(peer, (admitted, held)).unwrap_or((0, 0));
            if before != (admitted, held) {
                changed.push(PeerGauges { peer, before, now: (admitted, held) });
            }
        }
        changed
    }
}

mod queue;
#[cfg(test)]
mod tests;
