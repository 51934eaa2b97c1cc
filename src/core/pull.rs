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
/// their chunk requests then fill the pipe, and their commits share a flush.
pub const SMALL_FILES_IN_FLIGHT: usize = 64;
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
    /// The pull of `path` is over: tell the Index.
    Ended { path: String },
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
        fx.push(Effect::Ended { path: path.to_string() });
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

    /// Whether `item` may join the queue now: a path already charged (a newer need of it, or a
    /// retry) keeps its charge; a need nobody announced is free; any other is charged to the
    /// announcing peer with the most room, if one has room.
    fn admit(&mut self, item: &Need, now: u64) -> bool {
        let path = &item.remote.path;
        if self.charged.contains_key(path) || item.sources.is_empty() {
            return true;
        }
        match self.budget.admit_any(&item.sources, now) {
            Some(device) => {
                self.charge(path, Some(device));
                true
            }
            None => false,
        }
    }

    /// A need is over: its peer's budget has room for one more.
    fn release(&mut self, path: &str) {
        if let Some(device) = self.charge(path, None) {
            self.budget.release(device);
        }
    }

    /// Charges `path` to `to` (or to nobody), keeping the window's counts; returns the old charge.
    fn charge(&mut self, path: &str, to: Option<DeviceId>) -> Option<DeviceId> {
        let windowed = self.queue.contains(path);
        if windowed {
            self.count_window(path, false);
        }
        let old = match to {
            Some(device) => self.charged.insert(path.to_string(), device),
            None => self.charged.remove(path),
        };
        if windowed {
            self.count_window(path, true);
        }
        old
    }

    /// Counts `path` (in the window) in or out of its peer's part of the window.
    fn count_window(&mut self, path: &str, add: bool) {
        let n = match self.charged.get(path) {
            Some(device) => self.window_charged.entry(*device).or_default(),
            None => &mut self.window_free,
        };
        if add {
            *n += 1;
        } else {
            *n -= 1;
        }
        if let Some(device) = self.charged.get(path) {
            if self.window_charged.get(device) == Some(&0) {
                self.window_charged.remove(device);
            }
        }
    }

    /// Holds needs over their peers' budgets in the store, each under its first announcer.
    fn hold(&mut self, items: Vec<Need>, store: &mut impl NeedStore, fx: &mut Vec<Effect>) {
        let mut by_peer: BTreeMap<DeviceId, Vec<(NeedKey, u64)>> = BTreeMap::new();
        for i in items {
            by_peer.entry(i.sources[0]).or_default().push((key_of(&i), bytes_of(&i)));
        }
        for (device, rows) in by_peer {
            if store.hold(device, &rows) && self.held.insert(device) {
                fx.push(Effect::Holding { peer: device });
            }
        }
    }

    /// Takes held needs of peers whose budget has room again, in batches: they are charged now
    /// and handed to the Index to be decided again (the disk and the peers may have changed).
    fn take_held(&mut self, now: u64, store: &mut impl NeedStore, fx: &mut Vec<Effect>) {
        for device in self.held.clone() {
            let waiting = store.held(device).records;
            if waiting == 0 {
                self.held.remove(&device);
                continue;
            }
            let room = self.budget.room(device, now);
            if room == 0 || u64::from(room) < waiting.min(self.limits.held_batch_min) {
                continue;
            }
            let Some(paths) = store.held_first(device, room.min(self.limits.held_batch_max) as usize) else {
                continue;
            };
            let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
            if !store.unhold(device, &refs) {
                continue;
            }
            let took = refs.len() as u64;
            let mut taken = Vec::new();
            for path in paths {
                // The held need is newer than what runs or waits for this path: a running pull is
                // decided again once it is done, a waiting one now (its new need replaces the
                // queued one). Dropped, it was lost until the next recompute (the property test).
                if let Some(running) = self.in_flight.get_mut(&path) {
                    running.superseded = true;
                    continue;
                }
                if self.charged.contains_key(&path) {
                    taken.push(path);
                    continue;
                }
                if self.budget.admit(device, now) {
                    self.charge(&path, Some(device));
                    taken.push(path);
                }
            }
            if !taken.is_empty() {
                fx.push(Effect::Recompute { paths: taken, why: Why::Held { peer: device, left: waiting - took } });
            }
        }
    }

    /// Puts a need into the window (the store already holds it).
    fn window_insert(&mut self, item: Need) {
        let (phase, bytes) = (phase_of(&item), bytes_of(&item));
        let also_writes = targets(&item).nth(1).map(str::to_string);
        let path = item.remote.path.clone();
        self.window_remove(&path);
        self.queue.insert(path.clone(), Entry { phase, bytes, also_writes, item });
        self.count_window(&path, true);
    }

    /// Takes a need out of the window.
    fn window_remove(&mut self, path: &str) -> Option<Need> {
        let entry = self.queue.remove(path)?;
        self.count_window(path, false);
        Some(entry.item)
    }

    fn window_clear(&mut self) {
        self.queue.clear();
        self.window_charged.clear();
        self.window_free = 0;
    }

    /// Whether any need in the window belongs to no peer or to a peer under its `share` of the
    /// running pulls. O(peers).
    fn window_may_start(&self, share: usize) -> bool {
        self.window_free > 0 || self.window_charged.keys().any(|d| self.running.get(d).copied().unwrap_or(0) < share)
    }

    fn note_window(&mut self) {
        self.window_peak = self.window_peak.max(self.queue.len());
    }

    /// Queues needs: all go to the store, and those that sort into the window (the first
    /// `limits.window` needs in pull order) into memory as well.
    fn queue_needs(&mut self, items: Vec<Need>, store: &mut impl NeedStore) {
        if items.is_empty() {
            return;
        }
        let was_whole = store.queued().records as usize == self.queue.len();
        let keyed: Vec<(NeedKey, Need)> = items.into_iter().map(|i| (key_of(&i), i)).collect();
        let rows: Vec<(NeedKey, u64, &Need)> = keyed.iter().map(|(k, i)| (k.clone(), bytes_of(i), i)).collect();
        if !store.queue(&rows) {
            return;
        }
        let mut whole = was_whole;
        for (key, item) in keyed {
            self.window_remove(&key.path);
            let before_last = self.queue.last().is_none_or(|(o, p)| (key.order, key.path.as_str()) < (o, p));
            if whole || before_last {
                self.window_insert(item);
                if self.queue.len() > self.limits.window {
                    // The last one stays in the store only.
                    let (_, last) = self.queue.last().expect("not empty");
                    let last = last.to_string();
                    self.window_remove(&last);
                    whole = false;
                }
            }
        }
        self.note_window();
    }

    /// Tops the window up from the store when it runs low.
    fn refill(&mut self, store: &mut impl NeedStore) {
        let queued = store.queued().records as usize;
        if self.queue.len() >= self.limits.window / 2 || queued <= self.queue.len() {
            return;
        }
        let after = self.queue.last().map(|(order, path)| NeedKey { order, path: path.to_string() });
        for item in store.queued_after(after.as_ref(), self.limits.window - self.queue.len()) {
            self.window_insert(item);
        }
        self.note_window();
    }

    fn park(&mut self, path: String, item: Need) {
        self.parked_bytes += item.remote.size;
        if let Some(old) = self.parked.insert(path, item) {
            self.parked_bytes -= old.remote.size;
        }
    }

    fn unpark(&mut self, path: &str) -> Option<Need> {
        let item = self.parked.remove(path)?;
        self.parked_bytes -= item.remote.size;
        Some(item)
    }

    /// The window's counts as they should be, and whether the pump left a need it could start.
    #[cfg(test)]
    fn window_audit(&self) -> (BTreeMap<DeviceId, usize>, usize, bool) {
        let (mut charged, mut free) = (BTreeMap::new(), 0);
        for p in self.queue.paths() {
            match self.charged.get(p) {
                Some(d) => *charged.entry(*d).or_default() += 1,
                None => free += 1,
            }
        }
        let slots =
            if self.in_flight_bytes < self.limits.small_bytes { self.limits.small_files } else { self.limits.files };
        let share = running_share(slots);
        let allowed = |p: &str| self.charged.get(p).is_none_or(|d| self.running.get(d).copied().unwrap_or(0) < share);
        let left = self.room() && self.queue.next_where(&self.targets, self.creating > 0, allowed).is_some();
        (charged, free, left)
    }

    /// Whether another pull may start: a few of any size, more while they are small.
    fn room(&self) -> bool {
        let n = self.in_flight.len();
        n < self.limits.files || (n < self.limits.small_files && self.in_flight_bytes < self.limits.small_bytes)
    }

    /// Parks a need until its retry is due; or returns it, to be queued now.
    fn park_or_pass(&mut self, item: Need, now: u64) -> Option<Need> {
        let path = item.remote.path.clone();
        let waiting = self.failures.get(&path).is_some_and(|f| now < f.next_retry_ms);
        // A different version than the one that failed is a new need: it goes at once.
        let same_version = self.parked.get(&path).is_some_and(|p| p.remote.version == item.remote.version);
        if waiting && (same_version || !self.parked.contains_key(&path)) {
            self.park(path, item);
            None
        } else {
            self.unpark(&path);
            Some(item)
        }
    }

    /// Hands the parked paths whose retry is due (all with `force`) to the Index, to be decided
    /// again (the disk or the peers may have changed since). A stopped folder retries nothing.
    fn retry_due(&mut self, now: u64, force: bool, faulted: bool, free: Option<u64>, fx: &mut Vec<Effect>) -> usize {
        if self.parked.is_empty() || faulted {
            return 0;
        }
        let due: Vec<String> = self
            .parked
            .keys()
            .filter(|p| force || self.failures.get(*p).is_none_or(|f| f.due(now, free)))
            .cloned()
            .collect();
        for path in &due {
            self.unpark(path);
            // Due now: the fresh need that comes back is queued, not parked again.
            if let Some(f) = self.failures.get_mut(path) {
                f.next_retry_ms = now;
            }
        }
        let n = due.len();
        if n > 0 {
            fx.push(Effect::Recompute { paths: due, why: Why::Retry });
        }
        n
    }

    /// Starts what may start: in the pull order, no two on overlapping paths, within the files
    /// and bytes in flight, and no peer past its share of the slots. A stopped folder (root gone
    /// or replaced) gets nothing written under it.
    fn pump(&mut self, faulted: bool, store: &mut impl NeedStore, fx: &mut Vec<Effect>) {
        if faulted {
            return;
        }
        self.refill(store);
        let mut started = Vec::new();
        while self.room() {
            // No peer takes more than its share of the slots: pulls that hang on one peer's
            // silence leave room for the others'.
            let slots = if self.in_flight_bytes < self.limits.small_bytes {
                self.limits.small_files
            } else {
                self.limits.files
            };
            let share = running_share(slots);
            if !self.window_may_start(share) {
                break;
            }
            let (charged, running) = (&self.charged, &self.running);
            let allowed = |p: &str| charged.get(p).is_none_or(|d| running.get(d).copied().unwrap_or(0) < share);
            let Some(path) = self.queue.next_where(&self.targets, self.creating > 0, allowed).map(str::to_string)
            else {
                break;
            };
            let item = self.window_remove(&path).expect("queued");
            if let Some(d) = self.charged.get(&path) {
                *self.running.entry(*d).or_default() += 1;
            }
            let delete = is_delete(&item);
            let sources: Sources = Arc::new(RwLock::new(item.sources.clone()));
            let bytes = bytes_of(&item);
            let targets: Vec<String> = targets(&item).map(str::to_string).collect();
            targets.iter().for_each(|t| self.targets.add(t));
            self.creating += usize::from(!delete);
            self.in_flight_bytes += bytes;
            let flight = InFlight {
                delete,
                bytes,
                targets,
                version: item.remote.version.clone(),
                sources: sources.clone(),
                superseded: false,
                item: item.clone(),
            };
            self.in_flight.insert(path.clone(), flight);
            started.push(path);
            fx.push(Effect::Start { item: Box::new(item), sources });
        }
        // Running needs leave the store: a failure parks them, a retry queues them anew.
        store.unqueue(&started.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::path as paths;
    use crate::core::record::fixtures::file;
    use proptest::prelude::*;

    /// The stored queues, in memory.
    #[derive(Default)]
    struct Mem {
        queued: BTreeMap<String, (NeedKey, u64, Need)>,
        held: BTreeMap<DeviceId, BTreeMap<String, (NeedKey, u64)>>,
    }

    fn counts<'a>(rows: impl Iterator<Item = &'a u64>) -> Counts {
        rows.fold(Counts::default(), |c, b| Counts { records: c.records + 1, bytes: c.bytes + b })
    }

    fn in_order<K: Ord + Clone, V>(rows: impl Iterator<Item = (K, V)>) -> Vec<(K, V)> {
        let mut rows: Vec<(K, V)> = rows.collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    impl NeedStore for Mem {
        fn queued(&self) -> Counts {
            counts(self.queued.values().map(|(_, b, _)| b))
        }
        fn queue(&mut self, needs: &[(NeedKey, u64, &Need)]) -> bool {
            for (k, b, n) in needs {
                self.queued.insert(k.path.clone(), (k.clone(), *b, (*n).clone()));
            }
            true
        }
        fn unqueue(&mut self, paths: &[&str]) {
            for p in paths {
                self.queued.remove(*p);
            }
        }
        fn clear_queue(&mut self) {
            self.queued.clear();
        }
        fn queued_after(&mut self, after: Option<&NeedKey>, limit: usize) -> Vec<Need> {
            let rows = in_order(self.queued.values().map(|(k, _, n)| (k.clone(), n.clone())));
            rows.into_iter().filter(|(k, _)| after.is_none_or(|a| k > a)).take(limit).map(|(_, n)| n).collect()
        }
        fn held(&self, peer: DeviceId) -> Counts {
            counts(self.held.get(&peer).into_iter().flat_map(|h| h.values().map(|(_, b)| b)))
        }
        fn hold(&mut self, peer: DeviceId, needs: &[(NeedKey, u64)]) -> bool {
            let h = self.held.entry(peer).or_default();
            for (k, b) in needs {
                h.insert(k.path.clone(), (k.clone(), *b));
            }
            true
        }
        fn unhold(&mut self, peer: DeviceId, paths: &[&str]) -> bool {
            let h = self.held.entry(peer).or_default();
            for p in paths {
                h.remove(*p);
            }
            true
        }
        fn clear_held(&mut self, peer: DeviceId) {
            self.held.remove(&peer);
        }
        fn held_first(&mut self, peer: DeviceId, limit: usize) -> Option<Vec<String>> {
            let h = self.held.get(&peer)?;
            Some(
                in_order(h.values().map(|(k, _)| (k.clone(), ())))
                    .into_iter()
                    .take(limit)
                    .map(|(k, _)| k.path)
                    .collect(),
            )
        }
    }

    impl Mem {
        /// The stored queue's paths in pull order.
        fn queue_order(&self) -> Vec<String> {
            in_order(self.queued.values().map(|(k, _, _)| (k.clone(), ()))).into_iter().map(|(k, _)| k.path).collect()
        }
    }

    fn dev(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    fn need(path: &str, phase: Phase, size: u64, version: u64, sources: &[u8]) -> Need {
        let mut remote = file(path, 1, &[(1, version)], 10, 1);
        remote.size = size;
        match phase {
            Phase::Directory => remote.kind = FileKind::Directory,
            Phase::Delete => remote.deleted = true,
            Phase::File => {}
        }
        Need { action: Action::Take, remote, local: None, sources: sources.iter().map(|&n| dev(n)).collect() }
    }

    fn small() -> Limits {
        Limits { files: 2, small_files: 4, small_bytes: 100, window: 4, held_batch_min: 2, held_batch_max: 3 }
    }

    fn started(fx: &[Effect]) -> Vec<String> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Start { item, .. } => Some(item.remote.path.clone()),
                _ => None,
            })
            .collect()
    }

    fn recomputed(fx: &[Effect]) -> Vec<(Vec<String>, Why)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Recompute { paths, why } => Some((paths.clone(), *why)),
                _ => None,
            })
            .collect()
    }

    fn files(names: &[&str], size: u64, sources: &[u8]) -> Vec<Need> {
        names.iter().map(|p| need(p, Phase::File, size, 1, sources)).collect()
    }

    #[test]
    fn small_files_fill_more_slots_than_large_ones() {
        let mut s = PullState::new(small(), NeedBudget::default());
        let mut store = Mem::default();
        let fx = s.take_needs(0, files(&["a", "b", "c", "d", "e"], 10, &[]), false, vec![], false, &mut store);
        assert_eq!(started(&fx), vec!["a", "b", "c", "d"], "four small ones, under 100 bytes");
        let mut s = PullState::new(small(), NeedBudget::default());
        let fx = s.take_needs(0, files(&["a", "b", "c"], 60, &[]), false, vec![], false, &mut Mem::default());
        assert_eq!(started(&fx), vec!["a", "b"], "past 100 bytes in flight, two at a time");
    }

    #[test]
    fn a_path_waits_while_a_path_it_overlaps_is_written() {
        let mut s = PullState::default();
        let mut store = Mem::default();
        let items = vec![need("a", Phase::Directory, 0, 1, &[]), need("a/f", Phase::File, 5, 1, &[])];
        let fx = s.take_needs(0, items, false, vec![], false, &mut store);
        assert_eq!(started(&fx), vec!["a"]);
        let fx = s.finished(1, "a", Ok(()), false, &mut store);
        assert!(matches!(&fx[0], Effect::Ended { path } if path == "a"));
        assert_eq!(started(&fx), vec!["a/f"]);
        assert!(store.queued.is_empty(), "running needs leave the store");
    }

    #[test]
    fn a_failed_pull_is_parked_until_its_retry_is_due() {
        let mut s = PullState::default();
        let mut store = Mem::default();
        s.take_needs(0, files(&["x"], 5, &[1]), false, vec![], false, &mut store);
        let fx = s.finished(10, "x", Err((FailureKind::Transient, "gone".into())), false, &mut store);
        assert!(matches!(&fx[1], Effect::Failed { loud: false, failure, .. } if failure.next_retry_ms == 1_010));
        assert_eq!(s.parked().collect::<Vec<_>>(), vec!["x"]);
        // The Index sends the same need again meanwhile: it stays parked.
        let fx = s.take_needs(20, files(&["x"], 5, &[1]), false, vec![], false, &mut store);
        assert!(started(&fx).is_empty());
        assert!(recomputed(&s.tick(500, false, None, &mut store)).is_empty());
        assert!(s.tick(1_010, true, None, &mut store).is_empty(), "a stopped folder retries nothing");
        let fx = s.tick(1_010, false, None, &mut store);
        assert_eq!(recomputed(&fx), vec![(vec!["x".to_string()], Why::Retry)]);
        let fx = s.take_needs(1_011, files(&["x"], 5, &[1]), false, vec![], false, &mut store);
        assert_eq!(started(&fx), vec!["x"], "due now: queued, not parked again");
        let fx = s.finished(1_020, "x", Ok(()), false, &mut store);
        assert!(fx.iter().any(|e| matches!(e, Effect::Recovered { .. })));
        assert!(s.failures().is_empty());
    }

    #[test]
    fn a_failure_is_loud_once_per_kind_and_reason() {
        let mut s = PullState::default();
        let mut store = Mem::default();
        let mut loud = Vec::new();
        for (t, kind, reason) in [
            (0, FailureKind::NeedsSpace, "full"),
            (100_000, FailureKind::NeedsSpace, "full"),
            (200_000, FailureKind::NeedsSpace, "quota"),
            (300_000, FailureKind::Transient, "gone"),
        ] {
            s.take_needs(t, files(&["x"], 5, &[]), false, vec![], false, &mut store);
            s.retry_now(t, false, None);
            s.take_needs(t, files(&["x"], 5, &[]), false, vec![], false, &mut store);
            let fx = s.finished(t, "x", Err((kind, reason.into())), false, &mut store);
            loud.extend(fx.iter().filter_map(|e| match e {
                Effect::Failed { loud, .. } => Some(*loud),
                _ => None,
            }));
        }
        assert_eq!(loud, vec![true, false, true, false]);
        assert_eq!(s.failures()["x"].attempts, 1, "a new kind of failure starts its own backoff");
    }

    #[test]
    fn a_newer_version_waits_for_the_running_pull_and_the_same_one_shares_it() {
        let mut s = PullState::default();
        let mut store = Mem::default();
        let fx = s.take_needs(0, vec![need("x", Phase::File, 5, 1, &[1])], false, vec![], false, &mut store);
        let Some(Effect::Start { sources, .. }) = fx.into_iter().find(|e| matches!(e, Effect::Start { .. })) else {
            panic!("started")
        };
        s.take_needs(1, vec![need("x", Phase::File, 5, 1, &[2])], false, vec![], false, &mut store);
        assert_eq!(*sources.read().unwrap(), vec![dev(1), dev(2)], "another source joins");
        let fx = s.take_needs(2, vec![need("x", Phase::File, 5, 2, &[2])], false, vec![], false, &mut store);
        assert!(started(&fx).is_empty(), "never twice at once");
        let fx = s.finished(3, "x", Ok(()), false, &mut store);
        assert_eq!(recomputed(&fx), vec![(vec!["x".to_string()], Why::Superseded)]);
    }

    #[test]
    fn a_complete_list_drops_what_is_no_longer_needed() {
        let mut s = PullState::new(Limits { small_files: 1, files: 1, ..small() }, NeedBudget::new(2, 1000));
        let mut store = Mem::default();
        s.take_needs(0, files(&["a", "b", "c", "d", "e"], 5, &[1]), false, vec![], false, &mut store);
        assert_eq!(s.running().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(store.held[&dev(1)].len(), 3, "over the budget of 2");
        s.finished(1, "a", Err((FailureKind::Permanent, "ro".into())), false, &mut store);
        assert_eq!(s.running().collect::<Vec<_>>(), vec!["b"]);
        let fx = s.take_needs(2, files(&["c"], 5, &[1]), true, vec![], false, &mut store);
        assert_eq!(store.queue_order(), vec!["c"]);
        assert!(store.held.is_empty() && s.parked().next().is_none());
        assert_eq!(s.failures().len(), 0, "a's failure is over");
        assert!(fx.iter().any(|e| matches!(e, Effect::Failures)));
        assert_eq!(s.gauges(&store).need_files, 2, "b running, c queued");
    }

    #[test]
    fn needs_over_a_peers_budget_are_held_and_taken_in_batches() {
        let mut s = PullState::new(small(), NeedBudget::new(2, 1000));
        let mut store = Mem::default();
        let fx = s.take_needs(0, files(&["a", "b", "c", "d", "e"], 5, &[1]), false, vec![], false, &mut store);
        assert!(matches!(fx[0], Effect::Holding { peer } if peer == dev(1)));
        assert_eq!(started(&fx), vec!["a", "b"]);
        let peer = s.peer_gauges(&store);
        assert_eq!(peer, vec![PeerGauges { peer: dev(1), before: (0, 0), now: (2, 3) }]);
        assert!(s.peer_gauges(&store).is_empty(), "only changes");
        // One done: room for one, less than a batch of two.
        let fx = s.finished(1, "a", Ok(()), false, &mut store);
        assert!(recomputed(&fx).is_empty());
        let fx = s.finished(2, "b", Ok(()), false, &mut store);
        let back = vec!["c".to_string(), "d".to_string()];
        assert_eq!(recomputed(&fx), vec![(back, Why::Held { peer: dev(1), left: 1 })]);
        // Another peer announcing them too is not held back by peer 1.
        let fx = s.take_needs(3, files(&["e"], 5, &[1, 2]), false, vec![], false, &mut store);
        assert_eq!(started(&fx), vec!["e"]);
        assert!(store.held[&dev(1)].is_empty(), "admitted: no longer held");
    }

    #[test]
    fn a_peer_runs_at_most_its_share_of_the_slots() {
        let mut s = PullState::new(Limits { files: 4, small_files: 4, window: 8, ..small() }, NeedBudget::default());
        let mut store = Mem::default();
        let mut items = files(&["a", "b", "c", "d", "e"], 1, &[1]);
        items.push(need("z", Phase::File, 1, 1, &[2]));
        let fx = s.take_needs(0, items, false, vec![], false, &mut store);
        assert_eq!(started(&fx), vec!["a", "b", "c", "z"], "3 of 4 slots for peer 1");
    }

    #[test]
    fn the_window_holds_the_head_of_the_stored_queue() {
        let mut s = PullState::new(Limits { files: 1, small_files: 1, ..small() }, NeedBudget::default());
        let mut store = Mem::default();
        let names: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        s.take_needs(0, files(&refs, 1, &[]), false, vec![], false, &mut store);
        assert_eq!(s.windowed().collect::<Vec<_>>(), vec!["f1", "f2", "f3"]);
        assert_eq!((store.queued.len(), s.gauges(&store).window_peak), (9, 4));
        for (t, name) in refs.iter().enumerate() {
            let fx = s.finished(t as u64, name, Ok(()), false, &mut store);
            assert_eq!(started(&fx).len(), usize::from(t < 9));
        }
        assert_eq!(s.gauges(&store), Gauges { need_files: 0, need_bytes: 0, window: 0, window_peak: 4 });
    }

    #[test]
    fn a_stopped_folder_starts_nothing() {
        let mut s = PullState::default();
        let mut store = Mem::default();
        let fx = s.take_needs(0, files(&["a"], 1, &[]), false, vec![], true, &mut store);
        assert!(started(&fx).is_empty());
        assert_eq!(s.gauges(&store).need_files, 1);
    }

    /// Found by the property test below (with needs nobody announced): a need held over its
    /// peer's budget, for a path whose older need was queued free of charge, was dropped when it
    /// was taken while that older pull ran, and nothing had the Index decide the path again. It
    /// now marks the running pull superseded, as a newer need that is not held does.
    #[test]
    fn a_held_need_is_not_dropped_while_an_older_pull_of_its_path_runs() {
        let mut s = PullState::new(small(), NeedBudget::new(2, 1000));
        let mut store = Mem::default();
        let mut first = files(&["u", "y"], 1, &[1]);
        first.push(need("x", Phase::Delete, 0, 1, &[]));
        assert_eq!(started(&s.take_needs(0, first, false, vec![], false, &mut store)), vec!["u", "y"]);
        let newer = vec![need("x", Phase::Directory, 0, 2, &[1]), need("w", Phase::File, 1, 1, &[1])];
        s.take_needs(1, newer, false, vec![], false, &mut store);
        s.finished(2, "u", Err((FailureKind::Transient, "gone".into())), false, &mut store);
        assert_eq!(started(&s.finished(3, "y", Ok(()), false, &mut store)), vec!["x"], "the older delete");
        assert_eq!(recomputed(&s.tick(1_002, false, None, &mut store))[0].0, vec!["u"]);
        let mut fx = s.take_needs(1_003, vec![], false, vec!["u".into()], false, &mut store);
        fx.extend(s.finished(1_004, "x", Ok(()), false, &mut store));
        let asked: Vec<String> = recomputed(&fx).into_iter().flat_map(|(p, _)| p).collect();
        assert!(asked.contains(&"x".to_string()), "the newer need of x is asked for again: {asked:?}");
    }

    /// Known, not fixed (found by the property test below): a queued need that moves later in
    /// the pull order (a file that became a delete) can leave stored needs that sort before the
    /// window's last one outside the window; they wait until the window is empty, and the order
    /// is broken meanwhile (a delete may start before a create).
    #[test]
    #[ignore = "known: the window can stop being the head of the stored queue"]
    fn the_window_stays_the_head_of_the_stored_queue() {
        let mut s = PullState::new(small(), NeedBudget::default());
        let mut store = Mem::default();
        let items = vec![
            need("c/x", Phase::File, 0, 1, &[1]),
            need("c", Phase::Directory, 28, 1, &[1]),
            need("a/b/c", Phase::Directory, 72, 1, &[1]),
            need("a/d", Phase::Directory, 72, 1, &[2]),
            need("a/b", Phase::Delete, 0, 1, &[2]),
        ];
        assert_eq!(started(&s.take_needs(0, items, false, vec![], false, &mut store)), vec!["c", "a/d"]);
        let later = vec![need("a/b/c", Phase::Delete, 0, 2, &[1]), need("c/x", Phase::Delete, 0, 2, &[1])];
        s.take_needs(1, later, false, vec![], false, &mut store);
        let window: Vec<&str> = s.windowed().collect();
        assert_eq!(window, store.queue_order()[..window.len()]);
    }

    /// A need as generated: (path, phase, size, version, sources, a conflict copy at another path).
    type Item = (usize, u8, u64, u64, Vec<u8>, Option<usize>);

    /// What the test's Index does and the Puller is told.
    #[derive(Debug, Clone)]
    enum Op {
        /// Needs, and whether they are the complete list.
        Needs(Vec<Item>, bool),
        /// The Index answers the paths sent back to it.
        Answer,
        /// A running pull ends (the nth), failing with this kind.
        Finish(usize, Option<u8>),
        Tick(u64),
        RetryNow,
    }

    const PATHS: [&str; 7] = ["a", "a/b", "a/b/c", "a/d", "b", "c", "c/x"];
    const KINDS: [FailureKind; 4] =
        [FailureKind::Transient, FailureKind::NeedsSpace, FailureKind::Permanent, FailureKind::Refused];

    fn op() -> impl Strategy<Value = Op> {
        let item = (
            0..PATHS.len(),
            0u8..3,
            0u64..80,
            1u64..4,
            proptest::collection::vec(1u8..4, 0..3),
            proptest::option::weighted(0.2, 0..PATHS.len()),
        );
        prop_oneof![
            3 => (proptest::collection::vec(item, 0..6), proptest::bool::weighted(0.2)).prop_map(|(i, c)| Op::Needs(i, c)),
            2 => Just(Op::Answer),
            4 => (0usize..8, proptest::option::weighted(0.3, 0u8..4)).prop_map(|(n, k)| Op::Finish(n, k)),
            1 => (0u64..40_000).prop_map(Op::Tick),
            1 => Just(Op::RetryNow),
        ]
    }

    /// The Puller, a model Index around it, and the checks on every effect.
    struct World {
        s: PullState,
        store: Mem,
        now: u64,
        limits: Limits,
        /// What the Index wants pulled, per path.
        wanted: BTreeMap<String, Need>,
        /// Running pulls as the effects told: the need, and the paths it writes.
        running: BTreeMap<String, (Need, Vec<String>)>,
        /// Paths the Puller sent back to the Index, not answered yet.
        asked: BTreeSet<String>,
    }

    impl World {
        fn new() -> World {
            let limits = small();
            World {
                s: PullState::new(limits, NeedBudget::new(3, 2)),
                store: Mem::default(),
                now: 1,
                limits,
                wanted: BTreeMap::new(),
                running: BTreeMap::new(),
                asked: BTreeSet::new(),
            }
        }

        fn effects(&mut self, fx: Vec<Effect>) -> Result<(), TestCaseError> {
            for e in fx {
                match e {
                    Effect::Start { item, sources } => {
                        let path = item.remote.path.clone();
                        let (n, bytes) =
                            (self.running.len(), self.running.values().map(|(i, _)| bytes_of(i)).sum::<u64>());
                        let l = self.limits;
                        prop_assert!(
                            n < l.files || (n < l.small_files && bytes < l.small_bytes),
                            "over the limits: {n} running, {bytes} bytes"
                        );
                        prop_assert!(!self.running.contains_key(&path), "{path} in flight twice");
                        let writes: Vec<String> = targets(&item).map(str::to_string).collect();
                        for (other, (_, theirs)) in &self.running {
                            for (a, b) in writes.iter().flat_map(|a| theirs.iter().map(move |b| (a, b))) {
                                prop_assert!(
                                    a != b && !paths::is_inside(a, b) && !paths::is_inside(b, a),
                                    "{path} overlaps {other}"
                                );
                            }
                        }
                        prop_assert_eq!(&*sources.read().unwrap(), &item.sources);
                        self.running.insert(path, (*item, writes));
                    }
                    Effect::Ended { path } => prop_assert!(self.running.remove(&path).is_some()),
                    Effect::Recompute { paths, .. } => self.asked.extend(paths),
                    _ => {}
                }
            }
            Ok(())
        }

        fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
            match op {
                Op::Needs(items, complete) => {
                    let mut batch: BTreeMap<String, Need> = BTreeMap::new();
                    for (p, ph, size, v, src, copy) in items {
                        let phase = [Phase::Directory, Phase::File, Phase::Delete][ph as usize];
                        let mut n = need(PATHS[p], phase, size, v, &src);
                        if let (Some(c), Phase::File) = (copy, phase) {
                            n.action = Action::ConflictLocalLoses { copy: PATHS[c].to_string() };
                        }
                        batch.insert(PATHS[p].to_string(), n);
                    }
                    if complete {
                        self.wanted.clear();
                    }
                    self.wanted.extend(batch.clone());
                    let items: Vec<Need> = batch.into_values().collect();
                    let wanted: BTreeSet<String> = items.iter().map(|i| i.remote.path.clone()).collect();
                    let fx = self.s.take_needs(self.now, items, complete, vec![], false, &mut self.store);
                    self.effects(fx)?;
                    if complete {
                        // Nothing that is no longer needed stays queued, held or parked.
                        let kept = self.store.queued.keys().chain(self.store.held.values().flat_map(|h| h.keys()));
                        for p in kept.map(String::as_str).chain(self.s.parked()).chain(self.s.windowed()) {
                            prop_assert!(wanted.contains(p), "{p} kept after a complete list");
                        }
                    }
                }
                Op::Answer => {
                    let asked = std::mem::take(&mut self.asked);
                    let items: Vec<Need> = asked.iter().filter_map(|p| self.wanted.get(p).cloned()).collect();
                    let settled: Vec<String> = asked.into_iter().filter(|p| !self.wanted.contains_key(p)).collect();
                    let fx = self.s.take_needs(self.now, items, false, settled, false, &mut self.store);
                    self.effects(fx)?;
                }
                Op::Finish(n, kind) => {
                    let Some((path, (item, _))) = self.running.iter().nth(n % self.running.len().max(1)) else {
                        return Ok(());
                    };
                    let path = path.clone();
                    let result = match kind {
                        Some(k) => Err((KINDS[k as usize], format!("failed {k}"))),
                        None => {
                            // The Index records what was pulled.
                            if self.wanted.get(&path).is_some_and(|w| w.remote.version == item.remote.version) {
                                self.wanted.remove(&path);
                            }
                            Ok(())
                        }
                    };
                    let fx = self.s.finished(self.now, &path, result, false, &mut self.store);
                    self.effects(fx)?;
                }
                Op::Tick(dt) => {
                    self.now += dt;
                    let fx = self.s.tick(self.now, false, Some(u64::MAX), &mut self.store);
                    self.effects(fx)?;
                }
                Op::RetryNow => {
                    let (_, fx) = self.s.retry_now(self.now, false, None);
                    self.effects(fx)?;
                }
            }
            self.check()
        }

        fn check(&self) -> Result<(), TestCaseError> {
            let running: Vec<&str> = self.s.running().collect();
            prop_assert_eq!(running, self.running.keys().map(String::as_str).collect::<Vec<_>>());
            // The window is bounded, and part of the stored queue. (Not always its head: see
            // `the_window_stays_the_head_of_the_stored_queue`.)
            let order = self.store.queue_order();
            prop_assert!(self.s.windowed().count() <= self.limits.window);
            for p in self.s.windowed() {
                prop_assert!(self.store.queued.contains_key(p), "{p} in the window only");
            }
            // The pump's counts of the window are exact, and it left nothing it could start.
            let (charged, free, left) = self.s.window_audit();
            prop_assert_eq!(&charged, &self.s.window_charged);
            prop_assert_eq!(free, self.s.window_free);
            prop_assert!(!left, "the pump stopped with a need it could start");
            let g = self.s.gauges(&self.store);
            let held: usize = self.store.held.values().map(BTreeMap::len).sum();
            let parked = self.s.parked().count();
            prop_assert_eq!(g.need_files as usize, order.len() + held + self.running.len() + parked);
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the Index sends and however pulls end: no pull starts beyond the files and
        /// bytes in flight, no path runs twice, no two running pulls write overlapping paths, a
        /// complete list leaves nothing it does not name, the window is the head of the stored
        /// queue; and once pulls succeed and time passes, everything the Index wants is pulled
        /// (held needs are taken, parked ones retried), leaving nothing behind.
        #[test]
        fn pulls_stay_within_the_rules_and_all_wanted_needs_end(ops in proptest::collection::vec(op(), 1..60)) {
            let mut w = World::new();
            for op in ops {
                w.step(op)?;
            }
            for _ in 0..200 {
                let idle = w.s.parked().next().is_none() && w.store.queued.is_empty();
                if idle && w.wanted.is_empty() && w.running.is_empty() && w.asked.is_empty() {
                    break;
                }
                w.step(Op::Answer)?;
                while !w.running.is_empty() {
                    w.step(Op::Finish(0, None))?;
                }
                w.step(Op::Tick(61_000))?;
            }
            prop_assert!(w.wanted.is_empty(), "never pulled: {:?}\n{:#?}\n{:?}", w.wanted, w.s, w.store.held);
            prop_assert!(w.s.parked().next().is_none() && w.store.queued.is_empty());
            prop_assert!(w.store.held.values().all(BTreeMap::is_empty));
            prop_assert_eq!(w.s.gauges(&w.store).need_files, 0);
        }
    }
}
