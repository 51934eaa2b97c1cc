//! The Puller actor of one folder: turns needs into disk changes. Directories first, then files
//! (several at a time, each with many chunks in flight), deletes last and deepest first, so that a
//! rename's new name is built from the old file's chunks before the old name is removed.
//!
//! Each chunk comes from the cheapest place: a local file that has it (the chunk index), else one
//! of the peers that announced this exact version, in turn. Data is verified against its BLAKE3
//! hash before it is written; the file appears under its real name only when complete.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::StreamExt;

use super::directory::PeerDirectory;
use super::messages::*;
use super::now_millis;
use super::status::FolderGauges;
use crate::core::need_budget::{running_share, NeedBudget};
use crate::core::plan::{self, Entry, Phase, PullQueue, Targets};
use crate::core::retry::{FailureKind, PathFailure};
use crate::core::root::RootProblem;
use crate::core::{Action, Chunk, DeviceId, FileKind, FileRecord, VersionVector};
use crate::fs::apply::{self, ApplyError, TempFile};
use crate::fs::chunker::{hash, read_range};
use crate::fs::reuse::Plan;
use crate::fs::root::{free_bytes, RootGuard};
use crate::fs::safe_path::{open_inside, safe_path};
use crate::fs::scan::DiskState;
use crate::fs::versions::VersionStore;
use crate::net::wire::FetchError;
use crate::store::{NeedKey, Store};
use std::sync::atomic::Ordering::Relaxed;

const FILES_IN_FLIGHT: usize = 8;
/// Small files may have more in flight, while all in flight bring under `SMALL_BYTES_IN_FLIGHT`:
/// their chunk requests then fill the pipe, and their commits share a flush.
const SMALL_FILES_IN_FLIGHT: usize = 64;
const SMALL_BYTES_IN_FLIGHT: u64 = 16 << 20;
const CHUNKS_IN_FLIGHT: usize = 16;
/// Bytes of one file requested and not yet received: enough to keep a fast link busy while each
/// chunk pays its round trip, and bounded so memory stays flat (8 files × 4 MiB at most).
const BYTES_IN_FLIGHT: u64 = 4 << 20;
/// How often parked failures are looked at (their backoff, and free space for a full disk).
const RETRY_TICK: Duration = Duration::from_secs(1);
/// Space left free on the disk beyond a download's own size (for the index, logs, other writers).
const FREE_SPACE_MARGIN: u64 = 1 << 20;
/// Needs held back by a peer's budget are taken again in batches of at least this many (or all
/// that are held), at most `HELD_BATCH_MAX`: each batch costs one read of the store and one
/// recompute by the Index, not one per finished pull.
const HELD_BATCH_MIN: u64 = 64;
const HELD_BATCH_MAX: u32 = 512;
/// Chunks smaller than this are fetched whole: a signature would cost more than it saves.
const DELTA_MIN_CHUNK: u32 = 4096;

/// rsync block size for an old chunk: about 64 blocks per chunk, at least 256 bytes. The signature
/// then costs 12 bytes per block (a 4-byte rolling checksum and 8 bytes of MD4), about 1.2% of the
/// chunk, and a one-byte change costs one block of literal data in the delta.
fn delta_block(size: u32) -> u32 {
    (size / 64).clamp(256, 16 * 1024)
}

/// What a pull needs besides the item: shared, cheap to clone, `Send`.
#[derive(Clone)]
pub struct PullContext {
    pub folder: String,
    pub commits: CommitQueue,
    pub root: PathBuf,
    /// Every folder's root, for chunks found in other folders.
    pub roots: Arc<HashMap<String, PathBuf>>,
    pub store: Arc<Store>,
    pub directory: PeerDirectory,
    pub index: IndexForPuller,
    pub gauges: Arc<FolderGauges>,
    /// The folder's root must still be the one indexed before anything is written under it.
    pub guard: Arc<RootGuard>,
    /// Where files that pulls replace or delete are kept first.
    pub versions: Arc<VersionStore>,
}

pub struct Puller {
    ctx: PullContext,
    /// Needs in the pull order (`core::plan`).
    queue: PullQueue<NeedItem>,
    /// Paths being worked on now, and what they may write (for the overlap rule).
    in_flight: HashMap<String, InFlight>,
    targets: Targets,
    /// Running pulls that create something (not deletes), and the bytes all running pulls bring.
    creating: usize,
    in_flight_bytes: u64,
    /// Paths whose last pull failed, until one succeeds or the need goes away.
    failures: BTreeMap<String, PathFailure>,
    /// Failed needs waiting for their retry (`core::retry` decides when), and the bytes they bring.
    parked: BTreeMap<String, NeedItem>,
    parked_bytes: u64,
    /// Each peer's need budget (`core::need_budget`), the peer each admitted need is charged to,
    /// and the running pulls charged to each peer (for its share of the slots).
    budget: NeedBudget<DeviceId>,
    charged: HashMap<String, DeviceId>,
    running: HashMap<DeviceId, usize>,
    /// Peers with needs over their budget held in the store (`held_queue`), in pull order.
    held: BTreeSet<DeviceId>,
    /// What this Puller last added to each peer's gauges (admitted, held).
    published: HashMap<DeviceId, (u64, u64)>,
}

/// Where a peer's needs over its budget wait: a need queue of its own in the store, beside the
/// folder's (folder ids never hold control characters, so it can be no folder's queue). Only the
/// paths count: a held need is decided again by the Index when it is taken.
fn held_queue(folder: &str, device: &DeviceId) -> String {
    format!("{folder}\u{1}held\u{1}{device}")
}

/// The devices that hold the version being pulled: peers that announce it mid-file join in.
pub type Sources = Arc<RwLock<Vec<DeviceId>>>;

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
    item: NeedItem,
}

/// The paths carrying out `item` may write. (A conflict copy may end up at a numbered variant of
/// its name; those are only ever created, never replaced.)
fn targets(item: &NeedItem) -> impl Iterator<Item = &str> {
    let copy = match &item.action {
        Action::ConflictLocalLoses { copy } | Action::ConflictRemoteLoses { copy } => Some(copy.as_str()),
        _ => None,
    };
    std::iter::once(item.remote.path.as_str()).chain(copy)
}

fn is_delete(item: &NeedItem) -> bool {
    item.remote.deleted && matches!(item.action, Action::Take)
}

fn phase_of(item: &NeedItem) -> Phase {
    if is_delete(item) {
        Phase::Delete
    } else if item.remote.kind == FileKind::Directory {
        Phase::Directory
    } else {
        Phase::File
    }
}

/// Most needs held in memory: the rest wait in the store (`needs`), in pull order. Enough to keep
/// `SMALL_FILES_IN_FLIGHT` busy and to look past needs blocked by the overlap rule; small enough
/// that a million queued files cost what a thousand do.
const WINDOW: usize = 4096;

#[derive(Message)]
#[rtype(result = "()")]
struct Finished {
    path: String,
    result: Result<(), (FailureKind, String)>,
}

impl Puller {
    pub fn new(ctx: PullContext) -> Self {
        Puller {
            ctx,
            queue: PullQueue::default(),
            in_flight: HashMap::new(),
            targets: Targets::default(),
            creating: 0,
            in_flight_bytes: 0,
            failures: BTreeMap::new(),
            parked: BTreeMap::new(),
            parked_bytes: 0,
            budget: NeedBudget::default(),
            charged: HashMap::new(),
            running: HashMap::new(),
            held: BTreeSet::new(),
            published: HashMap::new(),
        }
    }

    /// Whether `item` may join the queue now: a path already charged (a newer need of it, or a
    /// retry) keeps its charge; a need nobody announced is free; any other is charged to the
    /// announcing peer with the most room, if one has room.
    fn admit(&mut self, item: &NeedItem, now: u64) -> bool {
        let path = &item.remote.path;
        if self.charged.contains_key(path) || item.sources.is_empty() {
            return true;
        }
        match self.budget.admit_any(&item.sources, now) {
            Some(device) => {
                self.charged.insert(path.clone(), device);
                true
            }
            None => false,
        }
    }

    /// A need is over: its peer's budget has room for one more.
    fn release(&mut self, path: &str) {
        if let Some(device) = self.charged.remove(path) {
            self.budget.release(device);
        }
    }

    /// Holds needs over their peers' budgets in the store, each under its first announcer.
    fn hold(&mut self, items: Vec<NeedItem>) {
        let mut by_peer: BTreeMap<DeviceId, Vec<(NeedKey, u64, Vec<u8>)>> = BTreeMap::new();
        for i in items {
            let key = NeedKey { order: plan::order(phase_of(&i), &i.remote.path), path: i.remote.path.clone() };
            let size = if i.remote.deleted { 0 } else { i.remote.size };
            by_peer.entry(i.sources[0]).or_default().push((key, size, Vec::new()));
        }
        for (device, rows) in by_peer {
            if let Err(e) = self.ctx.store.put_needs(&held_queue(&self.ctx.folder, &device), &rows) {
                tracing::error!(folder = %self.ctx.folder, error = %e, "cannot write the need queue");
                continue;
            }
            if self.held.insert(device) {
                tracing::info!(folder = %self.ctx.folder, peer = %device.prefix(), budget = self.budget.cap(), "peer's needs over its budget are held until earlier ones are done");
            }
        }
    }

    /// Paths newly admitted are no longer held under any peer.
    fn unhold(&mut self, paths: &[&str]) {
        for device in &self.held {
            if let Err(e) = self.ctx.store.remove_needs(&held_queue(&self.ctx.folder, device), paths) {
                tracing::error!(folder = %self.ctx.folder, error = %e, "cannot write the need queue");
            }
        }
    }

    /// Takes held needs of peers whose budget has room again, in batches: they are charged now
    /// and handed to the Index to be decided again (the disk and the peers may have changed).
    fn take_held(&mut self, now: u64) {
        let folder = self.ctx.folder.clone();
        for device in self.held.clone() {
            let queue = held_queue(&folder, &device);
            let waiting = self.ctx.store.need_counts(&queue).records;
            if waiting == 0 {
                self.held.remove(&device);
                continue;
            }
            let room = self.budget.room(device, now);
            if room == 0 || u64::from(room) < waiting.min(HELD_BATCH_MIN) {
                continue;
            }
            let rows = match self.ctx.store.needs_after(&queue, None, room.min(HELD_BATCH_MAX) as usize) {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(folder = %folder, error = %e, "cannot read the need queue");
                    continue;
                }
            };
            let paths: Vec<String> = rows.into_iter().map(|(key, _)| key.path).collect();
            let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
            if let Err(e) = self.ctx.store.remove_needs(&queue, &refs) {
                tracing::error!(folder = %folder, error = %e, "cannot write the need queue");
                continue;
            }
            let took = refs.len() as u64;
            let mut taken = Vec::new();
            for path in paths {
                if self.charged.contains_key(&path) || self.in_flight.contains_key(&path) {
                    continue;
                }
                if self.budget.admit(device, now) {
                    self.charged.insert(path.clone(), device);
                    taken.push(path);
                }
            }
            if !taken.is_empty() {
                tracing::debug!(folder = %folder, peer = %device.prefix(), paths = taken.len(), left = waiting - took, "taking held needs");
                self.ctx.index.recompute_paths.do_send(RecomputePaths { folder: folder.clone(), paths: taken });
            }
        }
    }

    fn held_counts(&self) -> (u64, u64) {
        self.held.iter().fold((0, 0), |(n, b), d| {
            let c = self.ctx.store.need_counts(&held_queue(&self.ctx.folder, d));
            (n + c.records, b + c.bytes)
        })
    }

    /// Brings each peer's gauges (needs admitted and held) up to date with this Puller's part.
    fn publish_budget(&mut self) {
        let mut peers: BTreeSet<DeviceId> = self.budget.peers().collect();
        peers.extend(self.held.iter().copied());
        peers.extend(self.published.keys().copied());
        for device in peers {
            let admitted = u64::from(self.budget.outstanding(device));
            let held = if self.held.contains(&device) {
                self.ctx.store.need_counts(&held_queue(&self.ctx.folder, &device)).records
            } else {
                0
            };
            let before = self.published.insert(device, (admitted, held)).unwrap_or((0, 0));
            if before == (admitted, held) {
                continue;
            }
            let counters = self.ctx.directory.counters(&device);
            for (gauge, old, new) in
                [(&counters.needs_admitted, before.0, admitted), (&counters.needs_held, before.1, held)]
            {
                if new >= old {
                    gauge.fetch_add(new - old, Relaxed);
                } else {
                    gauge.fetch_sub(old - new, Relaxed);
                }
            }
        }
    }

    /// Puts a need into the window (the store already holds it).
    fn window_insert(&mut self, item: NeedItem) {
        let phase = phase_of(&item);
        let bytes = if item.remote.deleted { 0 } else { item.remote.size };
        let also_writes = targets(&item).nth(1).map(str::to_string);
        self.queue.insert(item.remote.path.clone(), Entry { phase, bytes, also_writes, item });
    }

    /// Queues needs: all go to the store, and those that sort into the window (the first `WINDOW`
    /// needs in pull order) into memory as well.
    fn queue_needs(&mut self, items: Vec<NeedItem>) {
        if items.is_empty() {
            return;
        }
        let store = self.ctx.store.clone();
        let folder = &self.ctx.folder;
        let was_whole = store.need_counts(folder).records as usize == self.queue.len();
        let keyed: Vec<(NeedKey, NeedItem)> = items
            .into_iter()
            .map(|i| (NeedKey { order: plan::order(phase_of(&i), &i.remote.path), path: i.remote.path.clone() }, i))
            .collect();
        let rows: Vec<(NeedKey, u64, Vec<u8>)> = keyed
            .iter()
            .map(|(k, i)| {
                (
                    k.clone(),
                    if i.remote.deleted { 0 } else { i.remote.size },
                    postcard::to_stdvec(i).expect("in-memory serialization"),
                )
            })
            .collect();
        if let Err(e) = store.put_needs(folder, &rows) {
            tracing::error!(folder = %folder, error = %e, "cannot write the need queue");
            return;
        }
        let mut whole = was_whole;
        for (key, item) in keyed {
            self.queue.remove(&key.path);
            let before_last = self.queue.last().is_none_or(|(o, p)| (key.order, key.path.as_str()) < (o, p));
            if whole || before_last {
                self.window_insert(item);
                if self.queue.len() > WINDOW {
                    // The last one stays in the store only.
                    let (_, last) = self.queue.last().expect("not empty");
                    let last = last.to_string();
                    self.queue.remove(&last);
                    whole = false;
                }
            }
        }
        self.publish_window();
    }

    fn publish_window(&self) {
        let n = self.queue.len() as u64;
        self.ctx.gauges.window.store(n, Relaxed);
        self.ctx.gauges.window_peak.fetch_max(n, Relaxed);
    }

    /// Tops the window up from the store when it runs low.
    fn refill(&mut self) {
        let queued = self.ctx.store.need_counts(&self.ctx.folder).records as usize;
        if self.queue.len() >= WINDOW / 2 || queued <= self.queue.len() {
            return;
        }
        let after = self.queue.last().map(|(order, path)| NeedKey { order, path: path.to_string() });
        match self.ctx.store.needs_after(&self.ctx.folder, after.as_ref(), WINDOW - self.queue.len()) {
            Ok(rows) => {
                for (key, value) in rows {
                    match postcard::from_bytes::<NeedItem>(&value) {
                        Ok(item) => self.window_insert(item),
                        Err(e) => {
                            tracing::error!(folder = %self.ctx.folder, path = %key.path, error = %e, "corrupt need entry; dropped");
                            let _ = self.ctx.store.remove_needs(&self.ctx.folder, &[key.path.as_str()]);
                        }
                    }
                }
            }
            Err(e) => tracing::error!(folder = %self.ctx.folder, error = %e, "cannot read the need queue"),
        }
        self.publish_window();
    }

    fn park(&mut self, path: String, item: NeedItem) {
        self.parked_bytes += item.remote.size;
        if let Some(old) = self.parked.insert(path, item) {
            self.parked_bytes -= old.remote.size;
        }
    }

    fn unpark(&mut self, path: &str) -> Option<NeedItem> {
        let item = self.parked.remove(path)?;
        self.parked_bytes -= item.remote.size;
        Some(item)
    }

    /// O(1): the counters are kept as needs come and go.
    fn update_gauges(&self) {
        let queued = self.ctx.store.need_counts(&self.ctx.folder);
        let (held, held_bytes) = self.held_counts();
        let bytes = queued.bytes + self.in_flight_bytes + self.parked_bytes + held_bytes;
        self.ctx
            .gauges
            .need_files
            .store(queued.records + held + (self.in_flight.len() + self.parked.len()) as u64, Relaxed);
        self.ctx.gauges.need_bytes.store(bytes, Relaxed);
    }

    fn room(&self) -> bool {
        let n = self.in_flight.len();
        n < FILES_IN_FLIGHT || (n < SMALL_FILES_IN_FLIGHT && self.in_flight_bytes < SMALL_BYTES_IN_FLIGHT)
    }

    fn publish_failures(&self) {
        *self.ctx.gauges.failures.lock().expect("gauges lock") = self.failures.clone();
    }

    /// Parks a need until its retry is due; or returns it, to be queued now.
    fn park_or_pass(&mut self, item: NeedItem) -> Option<NeedItem> {
        let path = item.remote.path.clone();
        let waiting = self.failures.get(&path).is_some_and(|f| now_millis() < f.next_retry_ms);
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

    /// Hands the parked paths whose retry is due to the Index, to be decided again (the disk or
    /// the peers may have changed since).
    fn retry_due(&mut self, force: bool) -> usize {
        if self.parked.is_empty() || self.ctx.gauges.faulted.load(Relaxed) {
            return 0;
        }
        let now = now_millis();
        let needs_space = self.failures.values().any(|f| f.kind == FailureKind::NeedsSpace);
        let free = if needs_space { free_bytes(&self.ctx.root) } else { None };
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
        if !due.is_empty() {
            tracing::debug!(folder = %self.ctx.folder, paths = due.len(), "retrying failed pulls");
            self.ctx
                .index
                .recompute_paths
                .do_send(RecomputePaths { folder: self.ctx.folder.clone(), paths: due.clone() });
        }
        due.len()
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        // A stopped folder (root gone or replaced) gets nothing written under it.
        if self.ctx.gauges.faulted.load(Relaxed) {
            self.update_gauges();
            return;
        }
        self.refill();
        let mut started = Vec::new();
        while self.room() {
            // No peer takes more than its share of the slots: pulls that hang on one peer's
            // silence leave room for the others'.
            let slots =
                if self.in_flight_bytes < SMALL_BYTES_IN_FLIGHT { SMALL_FILES_IN_FLIGHT } else { FILES_IN_FLIGHT };
            let share = running_share(slots);
            let (charged, running) = (&self.charged, &self.running);
            let allowed = |p: &str| charged.get(p).is_none_or(|d| running.get(d).copied().unwrap_or(0) < share);
            let Some(path) = self.queue.next_where(&self.targets, self.creating > 0, allowed).map(str::to_string)
            else {
                break;
            };
            let item = self.queue.remove(&path).expect("queued").item;
            if let Some(d) = self.charged.get(&path) {
                *self.running.entry(*d).or_default() += 1;
            }
            started.push(path.clone());
            let delete = is_delete(&item);
            let sources: Sources = Arc::new(RwLock::new(item.sources.clone()));
            let bytes = if item.remote.deleted { 0 } else { item.remote.size };
            let targets: Vec<String> = targets(&item).map(str::to_string).collect();
            targets.iter().for_each(|t| self.targets.add(t));
            self.creating += usize::from(!delete);
            self.in_flight_bytes += bytes;
            self.in_flight.insert(
                path.clone(),
                InFlight {
                    delete,
                    bytes,
                    targets,
                    version: item.remote.version.clone(),
                    sources: sources.clone(),
                    superseded: false,
                    item: item.clone(),
                },
            );
            self.ctx.index.pulling.do_send(Pulling {
                folder: self.ctx.folder.clone(),
                path: path.clone(),
                active: true,
            });
            let pctx = self.ctx.clone();
            let me = ctx.address();
            tokio::spawn(async move {
                let result = execute(&pctx, item, &sources).await.map_err(|e| (e.kind(), e.to_string()));
                me.do_send(Finished { path, result });
            });
        }
        // Running needs leave the store: a failure parks them, a retry queues them anew.
        let started: Vec<&str> = started.iter().map(String::as_str).collect();
        if let Err(e) = self.ctx.store.remove_needs(&self.ctx.folder, &started) {
            tracing::error!(folder = %self.ctx.folder, error = %e, "cannot write the need queue");
        }
        self.publish_window();
        self.update_gauges();
    }
}

impl Actor for Puller {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(RETRY_TICK, |this, _| {
            this.retry_due(false);
            this.take_held(now_millis());
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
    fn handle(&mut self, _: RetryNow, _: &mut Context<Self>) -> usize {
        self.retry_due(true)
    }
}

impl Handler<Needs> for Puller {
    type Result = ();
    fn handle(&mut self, msg: Needs, ctx: &mut Context<Self>) {
        let started = Instant::now();
        let items = msg.items.len();
        if msg.complete {
            self.queue.clear();
            if let Err(e) = self.ctx.store.clear_needs(&self.ctx.folder) {
                tracing::error!(folder = %self.ctx.folder, error = %e, "cannot write the need queue");
            }
            // Failures of paths that are no longer needed are over.
            let wanted: std::collections::HashSet<&str> = msg.items.iter().map(|i| i.remote.path.as_str()).collect();
            self.parked.retain(|p, _| wanted.contains(p.as_str()));
            self.parked_bytes = self.parked.values().map(|i| i.remote.size).sum();
            self.failures.retain(|p, _| wanted.contains(p.as_str()) || self.in_flight.contains_key(p));
            self.publish_failures();
            // The whole list is admitted anew: only running pulls keep their charge.
            let (budget, in_flight) = (&mut self.budget, &self.in_flight);
            self.charged.retain(|p, d| {
                let keep = in_flight.contains_key(p);
                if !keep {
                    budget.release(*d);
                }
                keep
            });
            for device in std::mem::take(&mut self.held) {
                if let Err(e) = self.ctx.store.clear_needs(&held_queue(&self.ctx.folder, &device)) {
                    tracing::error!(folder = %self.ctx.folder, error = %e, "cannot write the need queue");
                }
            }
        }
        if !msg.settled.is_empty() {
            for path in &msg.settled {
                self.unpark(path);
                self.failures.remove(path);
                if !self.queue.contains(path) && !self.in_flight.contains_key(path) {
                    self.release(path);
                }
            }
            self.publish_failures();
        }
        let now = now_millis();
        let mut queue = Vec::new();
        let mut over_budget = Vec::new();
        let mut admitted: Vec<String> = Vec::new();
        for item in msg.items {
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
                queue.extend(self.park_or_pass(item));
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
                // Newer than what we are pulling: decided again (against what that pull leaves
                // on disk) once it is done.
                running.superseded = true;
            }
        }
        if !admitted.is_empty() {
            self.unhold(&admitted.iter().map(String::as_str).collect::<Vec<_>>());
        }
        self.hold(over_budget);
        self.queue_needs(queue);
        self.take_held(now);
        self.pump(ctx);
        self.publish_budget();
        tracing::debug!(folder = %self.ctx.folder, items, ms = started.elapsed().as_millis() as u64, "needs taken in");
    }
}

impl Handler<Finished> for Puller {
    type Result = ();
    fn handle(&mut self, msg: Finished, ctx: &mut Context<Self>) {
        let flight = self.in_flight.remove(&msg.path);
        if let (Some(_), Some(d)) = (&flight, self.charged.get(&msg.path)) {
            if let Some(n) = self.running.get_mut(d) {
                *n = n.saturating_sub(1);
            }
        }
        if let Some(f) = &flight {
            f.targets.iter().for_each(|t| self.targets.remove(t));
            self.creating -= usize::from(!f.delete);
            self.in_flight_bytes -= f.bytes;
        }
        let superseded = flight.as_ref().is_some_and(|f| f.superseded);
        self.ctx.index.pulling.do_send(Pulling {
            folder: self.ctx.folder.clone(),
            path: msg.path.clone(),
            active: false,
        });
        if superseded {
            self.ctx
                .index
                .recompute_paths
                .do_send(RecomputePaths { folder: self.ctx.folder.clone(), paths: vec![msg.path.clone()] });
        }
        match msg.result {
            Ok(()) => {
                self.release(&msg.path);
                if self.failures.remove(&msg.path).is_some() {
                    tracing::info!(folder = %self.ctx.folder, path = %msg.path, "pull succeeded after failing");
                    self.publish_failures();
                }
            }
            Err((kind, reason)) => {
                self.ctx.gauges.errors.fetch_add(1, Relaxed);
                let previous = self.failures.get(&msg.path);
                let needs_bytes = flight.as_ref().map_or(0, |f| f.bytes);
                let failure = PathFailure::after(previous, kind, reason, needs_bytes, now_millis());
                let retry_in = Duration::from_millis(failure.next_retry_ms.saturating_sub(now_millis()));
                // One WARN per path and kind of failure that needs attention; transient ones (no
                // source connected, a source gone mid-file) and repeats go to debug: a peer that
                // announces many records nobody can serve must not flood the log. All are listed
                // in the status.
                if kind != FailureKind::Transient
                    && previous.is_none_or(|p| p.kind != kind || p.reason != failure.reason)
                {
                    tracing::warn!(folder = %self.ctx.folder, path = %msg.path, kind = ?kind, error = %failure.reason, retry_in = ?retry_in, "pull failed");
                } else {
                    tracing::debug!(folder = %self.ctx.folder, path = %msg.path, attempts = failure.attempts, error = %failure.reason, retry_in = ?retry_in, "pull failed again");
                }
                self.failures.insert(msg.path.clone(), failure);
                if let (Some(f), false) = (flight, superseded) {
                    self.park(msg.path, f.item);
                }
                self.publish_failures();
            }
        }
        self.take_held(now_millis());
        self.pump(ctx);
        self.publish_budget();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("no connected peer has chunk {offset}+{size}")]
    NoSource { offset: u64, size: u32 },
    #[error("worker failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("the node is stopping")]
    Stopped,
    #[error("a chunk was still being written after the download ended")]
    StillWriting,
    #[error("not enough space: the file needs {need} bytes, {free} are free")]
    NoSpace { need: u64, free: u64 },
    #[error("{0}")]
    Root(RootProblem),
}

impl PullError {
    /// What would make the pull succeed (the retry policy acts on this, never on the message).
    pub fn kind(&self) -> FailureKind {
        match self {
            PullError::NoSpace { .. } => FailureKind::NeedsSpace,
            PullError::Apply(e) if e.is_permanent() => FailureKind::Refused,
            PullError::Apply(ApplyError::Io { source, .. }) => io_failure_kind(source),
            _ => FailureKind::Transient,
        }
    }
}

/// The kind of an I/O error: by its OS error number, else by its kind (errors rebuilt from a
/// batch commit keep only that).
fn io_failure_kind(e: &std::io::Error) -> FailureKind {
    use std::io::ErrorKind as K;
    match (e.raw_os_error(), e.kind()) {
        (Some(errno), _) => FailureKind::of_errno(errno),
        (None, K::StorageFull | K::QuotaExceeded) => FailureKind::NeedsSpace,
        (None, K::ReadOnlyFilesystem | K::PermissionDenied) => FailureKind::Permanent,
        _ => FailureKind::Transient,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, PullError> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

/// Carries out one need; tells the Index what it did.
async fn execute(ctx: &PullContext, item: NeedItem, sources: &Sources) -> Result<(), PullError> {
    ctx.guard.check().map_err(PullError::Root)?;
    let remote = item.remote.clone();
    let path = remote.path.clone();
    let outcome = match &item.action {
        Action::Take if remote.deleted => {
            let (root, p, local, versions, by) =
                (ctx.root.clone(), path.clone(), item.local.clone(), ctx.versions.clone(), remote.modified_by);
            let removed = blocking(move || {
                apply::remove_keeping(&root, &p, local.as_ref(), Some((&*versions as &dyn apply::Keeper, by)))
            })
            .await??;
            if removed {
                tracing::info!(folder = %ctx.folder, path = %path, "deleted");
            }
            Outcome::Took { record: remote, disk: None }
        }
        Action::Take => {
            let disk = materialize(ctx, &remote, &path, item.local.clone(), sources).await?;
            Outcome::Took { record: remote, disk: Some(disk) }
        }
        Action::ConflictLocalLoses { copy } => {
            let (root, p, c) = (ctx.root.clone(), path.clone(), copy.clone());
            let copy = blocking(move || apply::move_aside(&root, &p, &c)).await??;
            ctx.gauges.conflicts.fetch_add(1, Relaxed);
            tracing::warn!(folder = %ctx.folder, path = %path, copy = %copy, "conflict: our version kept as a copy");
            ctx.index.changed.do_send(LocalChanged { folder: ctx.folder.clone(), paths: vec![copy] });
            let disk = materialize(ctx, &remote, &path, None, sources).await?;
            Outcome::Took { record: remote, disk: Some(disk) }
        }
        Action::ConflictRemoteLoses { copy } => {
            // A losing link is kept as a link under the copy's name, like a losing file.
            if matches!(remote.kind, FileKind::File | FileKind::Symlink) {
                let (root, c, wanted) = (ctx.root.clone(), copy.clone(), remote.clone());
                let has_remote = move |p: &std::path::Path| holds(p, &wanted);
                // The winner's node may have made this copy already, and it may have synced here.
                if let Some(copy) = blocking(move || apply::free_name(&root, &c, has_remote)).await? {
                    materialize(ctx, &remote, &copy, None, sources).await?;
                    ctx.index.changed.do_send(LocalChanged { folder: ctx.folder.clone(), paths: vec![copy] });
                }
            }
            ctx.gauges.conflicts.fetch_add(1, Relaxed);
            tracing::warn!(folder = %ctx.folder, path = %path, copy = %copy, "conflict: the peer's version kept as a copy");
            Outcome::Reissue { path, other: remote.version }
        }
        Action::KeepLocal => Outcome::Reissue { path, other: remote.version },
        Action::Skip | Action::Merge => return Ok(()),
    };
    ctx.gauges.pulls.fetch_add(1, Relaxed);
    ctx.index.applied.do_send(Applied { folder: ctx.folder.clone(), outcome });
    Ok(())
}

/// Puts `record`'s content (or directory, or link) at `target`.
async fn materialize(
    ctx: &PullContext,
    record: &FileRecord,
    target: &str,
    local: Option<FileRecord>,
    sources: &Sources,
) -> Result<DiskState, PullError> {
    if record.kind == FileKind::Symlink {
        let (root, r, versions) =
            (ctx.root.clone(), FileRecord { path: target.to_string(), ..record.clone() }, ctx.versions.clone());
        let disk = blocking(move || {
            apply::make_link_keeping(&root, &r, local.as_ref(), Some((&*versions as &dyn apply::Keeper, r.modified_by)))
        })
        .await??;
        tracing::info!(folder = %ctx.folder, path = %target, "made link");
        return Ok(disk);
    }
    if record.kind == FileKind::Directory {
        let (root, r, versions) =
            (ctx.root.clone(), FileRecord { path: target.to_string(), ..record.clone() }, ctx.versions.clone());
        return Ok(blocking(move || {
            apply::make_dir_keeping(&root, &r, local.as_ref(), Some((&*versions as &dyn apply::Keeper, r.modified_by)))
        })
        .await??);
    }
    let started = Instant::now();
    let plan = {
        let (store, roots, root, r, l) =
            (ctx.store.clone(), ctx.roots.clone(), ctx.root.clone(), record.clone(), local.clone());
        Arc::new(blocking(move || locate(&store, &roots, &root, &r, l.as_ref())).await?)
    };
    // Nothing is created before it is known that the data can come from somewhere and fit.
    if let Some(&first) = plan.missing().first() {
        let connected = sources.read().expect("sources lock").iter().any(|d| ctx.directory.connected(d).is_some());
        if !connected {
            let chunk = record.chunks[first];
            return Err(PullError::NoSource { offset: chunk.offset, size: chunk.size });
        }
    }
    let free = free_bytes(&ctx.root).unwrap_or(u64::MAX);
    if free < record.size.saturating_add(FREE_SPACE_MARGIN) {
        return Err(PullError::NoSpace { need: record.size, free });
    }
    let (root, t, size, l) = (ctx.root.clone(), target.to_string(), record.size, local.clone());
    let temp = Arc::new(blocking(move || TempFile::create_replacing(&root, &t, size, l.as_ref())).await??);
    let progress = Arc::new(DownloadProgress::new(ctx, target, record.size));
    // Local copies run beside the network fetches of the chunks nobody here has.
    let copying = {
        let (plan, temp, progress, chunks) = (plan.clone(), temp.clone(), progress.clone(), record.chunks.clone());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::task::spawn_blocking(move || plan.copy(&chunks, &temp, threads, &|n| progress.advance(n)))
    };
    let mut tally = Tally::default();
    let network = fetch_all(ctx, record, plan.missing(), sources, local.as_ref(), &temp, &progress, &mut tally, false);
    let located_ms = started.elapsed().as_millis();
    let (filled, mut result) = tokio::join!(copying, network);
    let filled = filled?;
    let copied_ms = started.elapsed().as_millis();
    tally.reused += record.chunks.iter().zip(&filled).filter(|(_, f)| **f).map(|(c, _)| c.size as u64).sum::<u64>();
    if result.is_ok() {
        // Local copies that turned out stale: other local files, else the network.
        let stale: Vec<usize> = (0..filled.len()).filter(|&i| plan.located[i].is_some() && !filled[i]).collect();
        result = fetch_all(ctx, record, stale, sources, local.as_ref(), &temp, &progress, &mut tally, true).await;
    }
    // On failure, writes of chunks that were still arriving may hold the temp file a moment longer:
    // its name goes now, its space when they are done.
    if let Err(e) = result {
        temp.abandon();
        return Err(e);
    }
    let temp = Arc::try_unwrap(temp).map_err(|temp| {
        temp.abandon();
        PullError::StillWriting
    })?;
    if let Err(problem) = ctx.guard.check() {
        temp.abandon();
        return Err(PullError::Root(problem));
    }
    let disk = ctx.commits.commit(temp, record.clone(), local).await?;
    ctx.gauges.bytes_reused.fetch_add(tally.reused, Relaxed);
    ctx.gauges.bytes_saved_on_wire.fetch_add(tally.received.saturating_sub(tally.wire), Relaxed);
    let from: Vec<String> = tally.by_peer.iter().map(|(d, n)| format!("{}:{n}", d.prefix())).collect();
    let ms = started.elapsed().as_millis();
    tracing::debug!(folder = %ctx.folder, path = %target, located_ms, copied_ms, ms, "pull timing");
    // `received`: chunk bytes that came from peers; `wire`: what carried them (signatures sent and
    // deltas or compressed data received); `reused`: bytes taken from local files; `from`: chunk
    // bytes by peer.
    tracing::info!(folder = %ctx.folder, path = %target, size = record.size, received = tally.received, wire = tally.wire, reused = tally.reused, from = ?from, ms, "pulled");
    Ok(disk)
}

/// Finished downloads wait here to be committed together: whatever arrives while one batch is being
/// made durable forms the next batch, so many small files share a flush instead of paying one each.
#[derive(Clone)]
pub struct CommitQueue(tokio::sync::mpsc::UnboundedSender<CommitJob>);

type CommitJob =
    (TempFile, FileRecord, Option<FileRecord>, tokio::sync::oneshot::Sender<Result<DiskState, ApplyError>>);

/// Most downloads committed with one flush.
const COMMIT_BATCH: usize = 256;

impl CommitQueue {
    /// Starts the committer task (on the current runtime); replaced files are kept in `versions`.
    pub fn start(versions: Arc<VersionStore>) -> CommitQueue {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<CommitJob>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut jobs = vec![first];
                while jobs.len() < COMMIT_BATCH {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                let (batch, replies): (Vec<_>, Vec<_>) =
                    jobs.into_iter().map(|(t, r, l, reply)| ((t, r, l), reply)).unzip();
                let versions = versions.clone();
                let Ok(results) = tokio::task::spawn_blocking(move || {
                    apply::commit_all_keeping(batch, Some(&*versions as &dyn apply::Keeper))
                })
                .await
                else {
                    continue;
                };
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
        });
        CommitQueue(tx)
    }

    async fn commit(
        &self,
        temp: TempFile,
        record: FileRecord,
        local: Option<FileRecord>,
    ) -> Result<DiskState, PullError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.0.send((temp, record, local, reply)).map_err(|_| PullError::Stopped)?;
        Ok(answer.await.map_err(|_| PullError::Stopped)??)
    }
}

/// Bytes of one file by where they came from.
#[derive(Default)]
struct Tally {
    received: u64,
    /// Bytes on the wire for the `received` ones.
    wire: u64,
    reused: u64,
    by_peer: HashMap<DeviceId, u64>,
}

/// Fetches chunks `indices` of `record` and writes them into `temp`, with about
/// `BYTES_IN_FLIGHT` requested at a time (at least `CHUNKS_IN_FLIGHT` chunks). Each chunk is written
/// as soon as it arrives, while the others are still on their way.
#[allow(clippy::too_many_arguments)]
async fn fetch_all(
    ctx: &PullContext,
    record: &FileRecord,
    indices: Vec<usize>,
    sources: &Sources,
    previous: Option<&FileRecord>,
    temp: &Arc<TempFile>,
    progress: &DownloadProgress,
    tally: &mut Tally,
    try_local: bool,
) -> Result<(), PullError> {
    let average = (record.size / record.chunks.len().max(1) as u64).max(1);
    let in_flight = ((BYTES_IN_FLIGHT / average) as usize).clamp(CHUNKS_IN_FLIGHT, 8 * CHUNKS_IN_FLIGHT);
    let mut results = futures::stream::iter(indices)
        .map(|i| async move {
            let (chunk, data, from) =
                fetch_chunk(ctx, record, record.chunks[i], sources, i, previous, try_local).await?;
            let (temp, len) = (temp.clone(), data.len() as u64);
            blocking(move || temp.write_at(chunk.offset, &data)).await??;
            progress.advance(len);
            Ok::<_, PullError>((len, from))
        })
        .buffer_unordered(in_flight);
    while let Some(result) = results.next().await {
        match result? {
            (len, Some((d, wire))) => {
                tally.received += len;
                tally.wire += wire;
                *tally.by_peer.entry(d).or_default() += len;
            }
            (len, None) => tally.reused += len,
        }
    }
    Ok(())
}

/// Where this node already holds each chunk of `record`: our previous version of the same path
/// first (no index lookup), else wherever the chunk index points. Copies are verified as they are
/// made (and their files opened without following symlinks), so a stale location only costs a
/// fetch later; a location behind a link is dropped here already.
fn locate(
    store: &Store,
    roots: &HashMap<String, PathBuf>,
    root: &std::path::Path,
    record: &FileRecord,
    previous: Option<&FileRecord>,
) -> Plan {
    let previous = previous.filter(|p| p.is_file() && !p.deleted).and_then(|p| {
        safe_path(root, &p.path).ok()?;
        Some(((root.to_path_buf(), p.path.clone()), p))
    });
    let in_previous: HashMap<[u8; 32], u64> =
        previous.iter().flat_map(|(_, p)| p.chunks.iter().map(|c| (c.hash, c.offset))).collect();
    let mut checked: HashMap<(String, String), Option<PathBuf>> = HashMap::new();
    Plan::build(record.chunks.len(), |i| {
        let chunk = &record.chunks[i];
        if let (Some((source, _)), Some(&offset)) = (&previous, in_previous.get(&chunk.hash)) {
            return Some((source.clone(), offset));
        }
        store.chunk_locations(&chunk.hash, 4).into_iter().find_map(|loc| {
            let folder_root = checked
                .entry((loc.folder.clone(), loc.path.clone()))
                .or_insert_with(|| {
                    let folder_root = roots.get(&loc.folder)?;
                    safe_path(folder_root, &loc.path).ok()?;
                    Some(folder_root.clone())
                })
                .clone()?;
            Some(((folder_root, loc.path), loc.offset))
        })
    })
}

/// One chunk's bytes, verified: from a local file if any has it, else from a peer (which one, and
/// the bytes the exchange cost on the wire).
async fn fetch_chunk(
    ctx: &PullContext,
    record: &FileRecord,
    chunk: Chunk,
    sources: &Sources,
    index: usize,
    previous: Option<&FileRecord>,
    try_local: bool,
) -> Result<(Chunk, Vec<u8>, Option<(DeviceId, u64)>), PullError> {
    let (store, roots) = (ctx.store.clone(), ctx.roots.clone());
    if try_local {
        if let Some(data) = blocking(move || find_local(&store, &roots, &chunk)).await? {
            return Ok((chunk, data, None));
        }
    }
    // Our old data for this region, to receive a delta against instead of the whole chunk.
    let old = previous.filter(|p| !p.deleted && chunk.size >= DELTA_MIN_CHUNK).and_then(|p| {
        p.chunks.iter().find(|o| o.offset == chunk.offset).or(p.chunks.get(index)).map(|o| (p.path.clone(), *o))
    });
    let (base, signature) = match old {
        Some((path, old)) => {
            let root = ctx.root.clone();
            blocking(move || {
                let file = open_inside(&root, &path).ok()?;
                let data = read_range(&file, old.offset, old.size).ok()??;
                (hash(&data) == old.hash).then(|| {
                    let options =
                        fast_rsync::SignatureOptions { block_size: delta_block(old.size), crypto_hash_size: 8 };
                    let signature = fast_rsync::Signature::calculate(&data, options).into_serialized();
                    (Some(Arc::new(data)), signature)
                })
            })
            .await?
            .unwrap_or((None, Vec::new()))
        }
        None => (None, Vec::new()),
    };
    // Spread the chunks of a file over every peer that has this version.
    let sources = sources.read().expect("sources lock").clone();
    let n = sources.len().max(1);
    for k in 0..sources.len() {
        let device = sources[(index + k) % n];
        let Some(peer) = ctx.directory.connected(&device) else { continue };
        let request = FetchChunk {
            folder: ctx.folder.clone(),
            path: record.path.clone(),
            chunk,
            signature: signature.clone(),
            base: base.clone(),
        };
        match peer.fetch.send(request).await {
            Ok(Ok(Fetched { data, wire })) if data.len() == chunk.size as usize && hash(&data) == chunk.hash => {
                return Ok((chunk, data, Some((device, wire))))
            }
            Ok(Ok(_)) => {
                tracing::warn!(peer = %device.prefix(), path = %record.path, "chunk failed verification; trying another source")
            }
            Ok(Err(e)) => fetch_failed(ctx, &device, &record.path, &e),
            Err(_) => {}
        }
    }
    Err(PullError::NoSource { offset: chunk.offset, size: chunk.size })
}

/// Counts a chunk request to `device` that failed, and logs it once per peer and kind of failure
/// (a peer that announces many files it never serves costs one line, not one per file).
fn fetch_failed(ctx: &PullContext, device: &DeviceId, path: &str, error: &FetchError) {
    let counters = ctx.directory.counters(device);
    counters.failed_fetch();
    let kind = match error {
        FetchError::TimedOut => "fetch timed out",
        FetchError::Closed => "fetch cut off",
        FetchError::BadAnswer(_) => "fetch answered badly",
        FetchError::Refused { .. } => "fetch refused",
    };
    if counters.first(kind) {
        // The peer wrote the detail text: a line of it is enough.
        let error: String = error.to_string().chars().take(200).collect();
        tracing::warn!(peer = %device.prefix(), kind, error, "chunk requests to this peer fail (further failures only counted)");
    } else {
        tracing::debug!(peer = %device.prefix(), path, error = %error, "chunk request failed");
    }
}

/// Whether the entry at `path` holds exactly `record`'s content: a file its bytes, a link its
/// target. Never read through a link.
fn holds(path: &std::path::Path, record: &FileRecord) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    if record.kind == FileKind::Symlink {
        return std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
            && crate::fs::scan::read_target(path).is_ok_and(|t| t == record.link_target);
    }
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| if f.metadata()?.is_file() { Ok(f) } else { Err(std::io::ErrorKind::InvalidInput.into()) })
    else {
        return false;
    };
    file.metadata().is_ok_and(|m| m.len() == record.size)
        && record
            .chunks
            .iter()
            .all(|c| matches!(read_range(&file, c.offset, c.size), Ok(Some(d)) if hash(&d) == c.hash))
}

/// A chunk from any local file the chunk index says has it, verified (the index may be stale), and
/// never read through a symlink.
pub fn find_local(store: &Store, roots: &HashMap<String, PathBuf>, chunk: &Chunk) -> Option<Vec<u8>> {
    for loc in store.chunk_locations(&chunk.hash, 4) {
        let Some(root) = roots.get(&loc.folder) else { continue };
        let Ok(file) = open_inside(root, &loc.path) else { continue };
        if let Ok(Some(data)) = read_range(&file, loc.offset, chunk.size) {
            if hash(&data) == chunk.hash {
                return Some(data);
            }
        }
    }
    None
}

/// Progress of one large download: in the status gauges, and a log line every few seconds
/// (percent and rate), never one per chunk. Shared with the threads that copy local chunks.
struct DownloadProgress {
    gauges: Arc<FolderGauges>,
    folder: String,
    path: String,
    total: u64,
    done: AtomicU64,
    started: Instant,
    last_log: Mutex<Instant>,
}

impl DownloadProgress {
    const LOG_EVERY: Duration = Duration::from_secs(3);

    fn new(ctx: &PullContext, path: &str, total: u64) -> Self {
        ctx.gauges.current_total.store(total, Relaxed);
        ctx.gauges.current_done.store(0, Relaxed);
        let now = Instant::now();
        let (gauges, folder) = (ctx.gauges.clone(), ctx.folder.clone());
        DownloadProgress {
            gauges,
            folder,
            path: path.to_string(),
            total,
            done: AtomicU64::new(0),
            started: now,
            last_log: Mutex::new(now),
        }
    }

    fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Relaxed) + n;
        self.gauges.current_done.store(done, Relaxed);
        let Ok(mut last_log) = self.last_log.try_lock() else { return };
        if last_log.elapsed() >= Self::LOG_EVERY {
            *last_log = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            let percent = 100.0 * done as f64 / self.total.max(1) as f64;
            let mib_per_s = done as f64 / secs / (1 << 20) as f64;
            tracing::info!(folder = %self.folder, path = %self.path, percent = format!("{percent:.0}"), rate = format!("{mib_per_s:.1} MiB/s"), "pulling");
        }
    }
}

impl Drop for DownloadProgress {
    fn drop(&mut self) {
        self.gauges.current_total.store(0, Relaxed);
        self.gauges.current_done.store(0, Relaxed);
    }
}
