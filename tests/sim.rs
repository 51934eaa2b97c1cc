//! Deterministic simulation of 2 to 5 nodes in one process (docs/architecture.md, "Simulation").
//!
//! Real: the state machines and rules the Index and Puller actors run, fed as the actors feed
//! them and their effects carried out as the actors carry them out. `core::folder::Folder`: when a
//! scan starts and what it covers, paths held back while the Puller writes them, local deletes held
//! and judged together, the fault of a root gone and the resumption, the generations of the
//! whole-folder recompute, the periodic rescan (`periodic`, spaced by the last full scan), the
//! mass-delete guard (`Fault::Emptied`, with a seeded `empty_folder_guard`) and the user's
//! `confirm`, the confirm of a new root (`Fault::Root`, `confirming`, `confirm`), the files a scan
//! could not read (`scan_finished`'s `unreadable`).
//! `core::pull::PullState`: needs admitted under each peer's budget or held in the store, the
//! window over the stored queue, the pull order and overlap rule, the slots, a newer version
//! arriving mid-pull, failed pulls parked and retried with `core::retry`'s backoff.
//! `core::replica`: the version clock, what a scan makes of a path, judging a scan result,
//! `needs`, `dispatch`, what a pull's outcome is recorded as (`applied`); `core::decide` and its
//! conflict names.
//! Simulated, after the code it stands for: the actors' mailboxes (every message between the
//! Index and the Puller is an event, handled in the order sent), the store (an in-memory `Records`
//! and `NeedStore`), the scanner (a file whose mode no longer matches its record is read, and one
//! made unreadable is reported, never taken for deleted; one whose reads fail with an I/O error
//! while its metadata is as recorded is not read) and the watcher (its debounce, the changes it
//! misses, its overflow rescan and its `Rescan` timer), the Puller's disk work (`pull::execute`,
//! `fs::apply`: an unreadable file is not what the index recorded, so a pull leaves it alone,
//! though `move_aside` renames it; one with an I/O error is replaced only by a version that saw
//! its record), the user (edits, `chmod`, deleting every file, confirming or restoring when the
//! guard holds, confirming a root that came back as another directory), the peer sessions (`actors/peer.rs`: a
//! Hello says how far each side holds the other's index, then index updates stream in sequence
//! order on the connection; chunk requests travel beside them, unordered), the filesystem and the
//! network.
//! Everything runs on one thread, one seeded RNG and a virtual clock: a seed is a history.
//!
//! A quiet period is over once nothing is left to do but the periodic rescan's timer and every
//! node has completed a full scan since (with nothing committed anywhere, and no file changed by a
//! user, meanwhile): what the watcher missed is then found. Before it, every file becomes readable again; a folder the guard
//! stopped is answered by the user (confirm or restore) a few seconds after it stopped.
//!
//! `SIM_SEED=<n>` replays one history (with a trace of its operations); `SIM_SOAK=<seconds>` runs
//! random seeds for that long; `SIM_HISTORIES=<n>` sets how many seeds the default run covers;
//! `SIM_EXTRA=0` runs histories as they were before the periodic rescan, the guard and unreadable
//! files were simulated (`Extra`), `SIM_EXTRA=1` as they were before new roots and I/O errors.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashSet};
use std::time::{Duration, Instant};

use syncnode::core::conflict;
use syncnode::core::folder::{self, Confirming, Fault, Folder, FolderIo, PullPhase, ROOT_CHECK_EVERY};
use syncnode::core::need_budget::NeedBudget;
use syncnode::core::plan::NeedKey;
use syncnode::core::pull::{self, Counts, Limits, NeedStore, PullState, Sources};
use syncnode::core::replica::{self, Applied, Clock, Current, Dispatched, Need, Records, ScanVerdict, Seen};
use syncnode::core::retry::FailureKind;
use syncnode::core::root::RootProblem;
use syncnode::core::{Action, Chunk, DeviceId, FileKind, FileRecord, ShortId};

/// Histories of the default run, and operations per history.
const HISTORIES: u64 = 10_000;
const OPS: usize = 200;
/// The virtual clock starts here (milliseconds since the epoch), so counters look like real ones.
const EPOCH_MS: u64 = 1_700_000_000_000;
/// How long a quiet period may take before the nodes are declared stuck (virtual time).
const QUIET_LIMIT_MS: u64 = 30 * 60 * 1000;
/// The watcher's debounce.
const DEBOUNCE_MS: u64 = 20;
/// The Puller's look at its parked failures and held needs (`RETRY_TICK` in actors/puller.rs).
const RETRY_TICK_MS: u64 = 1000;
/// Records per peer in one step of a whole-folder recompute (`replica::NEEDS_PAGE` in the node):
/// small, so that a recompute of the histories' few paths takes several steps.
const SIM_NEEDS_PAGE: usize = 2;
/// Paths users touch. Conflict copies appear beside them.
const PATHS: [&str; 5] = ["a", "b.txt", "d/c", "d/e.txt", "d/f/g"];
/// `sync.rescan_interval` of a history (the node's default is one minute), and the per cent of
/// the user's changes its watcher never hands over.
const RESCAN_EVERY_MS: [u64; 3] = [5_000, 20_000, 60_000];
const MISSED_PERCENT: [u64; 3] = [1, 3, 8];
/// `sync.empty_folder_guard` of a history (the node's default, 10, is more files than the
/// histories' five paths ever hold; 0 turns the guard off).
const GUARDS: [u64; 4] = [0, 1, 2, 3];

/// What a history simulates beyond what the first `REGRESSIONS` were found with: the periodic
/// rescan and a watcher that misses changes, the mass-delete guard with the user's answer to it,
/// and files the node cannot read (level 1); then (level 2, `more`) a root that comes back as
/// another directory, confirmed by the user as the new root, and files whose reads fail with an
/// I/O error though their metadata is as recorded. Its choices come from RNGs of their own: at a
/// lower level a seed replays the history it did before the next level was simulated (level 0:
/// none of it).
struct Extra {
    on: bool,
    more: bool,
    rng: Rng,
    /// The choices of level 2 only.
    more_rng: Rng,
    /// `sync.rescan_interval`: the Watcher's `Rescan` timer.
    rescan_every: u64,
    /// Per cent of the user's changes the watcher misses (a directory past the inotify watch
    /// limit, or a dropped event queue, which the Watcher then turns into a full rescan).
    missed: u64,
    /// `sync.empty_folder_guard`.
    guard: u64,
}

impl Extra {
    fn new(seed: u64, level: u8) -> Extra {
        let on = level >= 1;
        let mut rng = Rng(seed ^ 0xE87A_5EED_0F00_D5EE);
        let rescan_every = *rng.pick(&RESCAN_EVERY_MS);
        let missed = *rng.pick(&MISSED_PERCENT);
        let guard = if on { *rng.pick(&GUARDS) } else { 0 };
        let more_rng = Rng(seed ^ 0x0BAD_5EC7_0A2E_4007);
        Extra { on, more: level >= 2, rng, more_rng, rescan_every, missed, guard }
    }
}

/// Per cent of the operations that also break a file (an I/O error) or mend one, and of roots
/// back from away that are another directory (level 2 of `Extra`).
const IO_ERROR_PERCENT: u64 = 1;
const NEW_ROOT_PERCENT: u64 = 8;

/// How often a history met what `Extra` simulates: the default run fails if one of them never
/// happens (its checks would pass vacuously).
#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    /// User changes the watcher missed, and periodic rescans that found something to commit.
    missed: u64,
    periodic_found: u64,
    /// Mass deletes held (the folder stopped), answered by a confirm or by restoring the files.
    holds: u64,
    confirms: u64,
    restores: u64,
    /// Files a scan found unreadable, and pulls refused on such a file.
    unreadable: u64,
    refused_pulls: u64,
    /// New roots the user confirmed (files missing from them became deletes).
    new_roots: u64,
    /// Files whose reads fail (an I/O error) though their metadata is as recorded, and reads of
    /// them that failed (a peer's chunk request, a scan); pulls that replaced or moved one aside.
    io_errors: u64,
    failed_reads: u64,
    pulls_over_io_errors: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.missed += o.missed;
        self.periodic_found += o.periodic_found;
        self.holds += o.holds;
        self.confirms += o.confirms;
        self.restores += o.restores;
        self.unreadable += o.unreadable;
        self.refused_pulls += o.refused_pulls;
        self.new_roots += o.new_roots;
        self.io_errors += o.io_errors;
        self.failed_reads += o.failed_reads;
        self.pulls_over_io_errors += o.pulls_over_io_errors;
    }
}

/// The Puller's bounds in half the histories (the others run the node's): tiny, so that needs
/// are held over a peer's budget and taken back in batches, the window is refilled from the
/// stored queue, and pulls wait for a slot or for a pull of an overlapping path.
fn tiny_puller() -> PullState {
    let limits = Limits { files: 2, small_files: 3, small_bytes: 120, window: 2, held_batch_min: 1, held_batch_max: 2 };
    PullState::new(limits, NeedBudget::new(2, 3))
}

// ---------------------------------------------------------------------------------------------
// One RNG

/// SplitMix64: small, fast, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// Contents, files, the disk

/// A file's content is named by a number, unique per write in a history; its hash and size derive
/// from the number.
type Content = u64;

fn hash_of(c: Content) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&c.to_be_bytes());
    h[8] = 0x5a;
    h
}

fn content_of(r: &FileRecord) -> Option<Content> {
    (!r.deleted).then(|| u64::from_be_bytes(r.chunks[0].hash[..8].try_into().expect("8 bytes")))
}

fn size_of(c: Content) -> u64 {
    c % 97 + 1
}

/// The mode of every file a user or a pull writes; a user's `chmod 000` makes it `UNREADABLE`.
const READABLE: u32 = 0o644;
const UNREADABLE: u32 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct File {
    content: Content,
    mtime_ns: i64,
    mode: u32,
    /// Its reads fail with an I/O error (a bad sector): its metadata is unchanged, so a scan that
    /// finds it as recorded does not read it.
    io_error: bool,
}

impl File {
    fn new(content: Content, mtime_ns: i64) -> File {
        File { content, mtime_ns, mode: READABLE, io_error: false }
    }

    /// Whether its bytes can be read: it can be opened, and reading does not fail.
    fn reads(&self) -> bool {
        self.readable() && !self.io_error
    }

    /// What the Index compares with its record (`DiskState::matches`): the mode too, so a file made
    /// unreadable differs from its record and is read again (and found unreadable) by a scan.
    fn matches(&self, r: &FileRecord) -> bool {
        r.same_disk_state(FileKind::File, size_of(self.content), self.mtime_ns, self.mode)
    }

    /// Whether the node can open it (it does not run as root).
    fn readable(&self) -> bool {
        self.mode & 0o400 != 0
    }
}

#[derive(Default, Clone)]
struct Disk {
    /// What a process sees.
    files: BTreeMap<String, File>,
    /// What survives a power loss: what was flushed, and what the Puller wrote (it syncs before
    /// its rename) or renamed.
    durable: BTreeMap<String, File>,
    /// Downloads in progress (`.syncnode-tmp-*`): never scanned, removed at start.
    temps: BTreeSet<String>,
    full: bool,
    /// The folder's root is gone (renamed away, unmounted).
    root_gone: bool,
    /// Which directory is at the root's path (it changes when the root comes back as another).
    root_id: u64,
}

impl Disk {
    /// `RootGuard::check`: the root is there and is the directory the index accepted.
    fn root(&self, accepted: u64) -> Result<(), RootProblem> {
        if self.root_gone {
            Err(RootProblem::Missing)
        } else if self.root_id != accepted {
            Err(RootProblem::OtherDirectory)
        } else {
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The store: what the Index persists, behind the same `Records` the rules read

#[derive(Default, Clone)]
struct RemoteIndex {
    index_id: u64,
    max_sequence: u64,
    files: BTreeMap<String, FileRecord>,
}

#[derive(Default, Clone)]
struct Store {
    local: BTreeMap<String, FileRecord>,
    /// sequence -> path, for "what changed since N".
    by_sequence: BTreeMap<u64, String>,
    max_sequence: u64,
    index_id: u64,
    remote: BTreeMap<DeviceId, RemoteIndex>,
    /// The root the index accepted (`meta`'s root identity).
    root_id: u64,
}

impl Records for Store {
    type Error = std::convert::Infallible;
    fn local(&self, path: &str) -> Result<Option<FileRecord>, Self::Error> {
        Ok(self.local.get(path).cloned())
    }
    fn remote(&self, device: &DeviceId, path: &str) -> Result<Option<FileRecord>, Self::Error> {
        Ok(self.remote.get(device).and_then(|r| r.files.get(path)).cloned())
    }
    fn remote_page(
        &self,
        device: &DeviceId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FileRecord>, Self::Error> {
        Ok(replica::page_of(self.remote.get(device).map(|r| &r.files), after, limit))
    }
}

impl Store {
    /// `Store::commit_local`: each record gets the next sequence. Returns them as stored.
    fn commit(&mut self, records: Vec<FileRecord>) -> Vec<FileRecord> {
        let mut out = Vec::with_capacity(records.len());
        for mut r in records {
            self.max_sequence += 1;
            r.sequence = self.max_sequence;
            if let Some(old) = self.local.insert(r.path.clone(), r.clone()) {
                self.by_sequence.remove(&old.sequence);
            }
            self.by_sequence.insert(r.sequence, r.path.clone());
            out.push(r);
        }
        out
    }

    fn since(&self, after: u64) -> Vec<FileRecord> {
        self.by_sequence.range(after + 1..).map(|(_, p)| self.local[p].clone()).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The Puller's stored need queues

/// `pull::queue::StoredNeeds` (the `needs` column family of the store), in memory: the folder's
/// queue in pull order, and each peer's needs held over its budget. Like the node's, emptied at
/// each start.
#[derive(Default)]
struct StoredNeeds {
    queued: BTreeMap<NeedKey, (u64, Need)>,
    /// Where each queued path sorts.
    keys: BTreeMap<String, NeedKey>,
    held: BTreeMap<DeviceId, BTreeMap<NeedKey, u64>>,
}

fn counts<'a>(sizes: impl Iterator<Item = &'a u64>) -> Counts {
    sizes.fold(Counts::default(), |c, b| Counts { records: c.records + 1, bytes: c.bytes + b })
}

impl StoredNeeds {
    fn holds_any(&self) -> bool {
        self.held.values().any(|h| !h.is_empty())
    }
}

impl NeedStore for StoredNeeds {
    fn queued(&self) -> Counts {
        counts(self.queued.values().map(|(b, _)| b))
    }
    fn queue(&mut self, needs: &[(NeedKey, u64, &Need)]) -> bool {
        for (key, bytes, need) in needs {
            if let Some(old) = self.keys.insert(key.path.clone(), key.clone()) {
                self.queued.remove(&old);
            }
            self.queued.insert(key.clone(), (*bytes, (*need).clone()));
        }
        true
    }
    fn unqueue(&mut self, paths: &[&str]) {
        for p in paths {
            if let Some(key) = self.keys.remove(*p) {
                self.queued.remove(&key);
            }
        }
    }
    fn clear_queue(&mut self) {
        self.queued.clear();
        self.keys.clear();
    }
    fn queued_after(&mut self, after: Option<&NeedKey>, limit: usize) -> Vec<Need> {
        let rows = self.queued.iter().filter(|(k, _)| after.is_none_or(|a| *k > a));
        rows.take(limit).map(|(_, (_, n))| n.clone()).collect()
    }
    fn held(&self, peer: DeviceId) -> Counts {
        counts(self.held.get(&peer).into_iter().flat_map(|h| h.values()))
    }
    fn hold(&mut self, peer: DeviceId, needs: &[(NeedKey, u64)]) -> bool {
        let held = self.held.entry(peer).or_default();
        for (key, bytes) in needs {
            held.retain(|k, _| k.path != key.path);
            held.insert(key.clone(), *bytes);
        }
        true
    }
    fn unhold(&mut self, peer: DeviceId, paths: &[&str]) -> bool {
        if let Some(held) = self.held.get_mut(&peer) {
            held.retain(|k, _| !paths.contains(&k.path.as_str()));
        }
        true
    }
    fn clear_held(&mut self, peer: DeviceId) {
        self.held.remove(&peer);
    }
    fn held_first(&mut self, peer: DeviceId, limit: usize) -> Option<Vec<String>> {
        Some(self.held.get(&peer).map_or_else(Vec::new, |h| h.keys().take(limit).map(|k| k.path.clone()).collect()))
    }
}

/// What `core::folder` looks at (`index::FolderDisk`): the root, the disk and the index.
struct FolderView<'a> {
    store: &'a Store,
    disk: &'a Disk,
}

impl FolderIo for FolderView<'_> {
    fn check_root(&self) -> Result<(), RootProblem> {
        self.disk.root(self.store.root_id)
    }
    fn delete_holds(&self, delete: &FileRecord) -> bool {
        let absent = !self.disk.files.contains_key(&delete.path);
        replica::delete_still_holds(delete, self.store.local.get(&delete.path), absent)
    }
    fn live_records(&self) -> u64 {
        self.store.local.values().filter(|r| !r.deleted).count() as u64
    }
}

// ---------------------------------------------------------------------------------------------
// The network, and the messages inside a node

#[derive(Debug, Clone)]
enum Msg {
    /// The cluster config: how far the sender holds the receiver's index.
    Hello {
        your_index_id: u64,
        your_max_sequence: u64,
    },
    Index {
        index_id: u64,
        records: Vec<FileRecord>,
    },
    Request {
        id: u64,
        path: String,
        hash: [u8; 32],
    },
    Response {
        id: u64,
        content: Option<Content>,
    },
}

/// What the Index of a node is sent (`actors/messages.rs`), by its Puller, by itself, or by the
/// scan it started. `RootCheck`: the periodic look at the root (`check_roots`), after the root went
/// away or came back.
#[derive(Debug, Clone)]
enum ToIndex {
    Pulling {
        path: String,
        phase: PullPhase,
    },
    /// (Boxed: a record is large, and events move in the queue.)
    Applied(Box<Applied>),
    RecomputePaths(Vec<String>),
    LocalChanged(Vec<String>),
    RecomputeNeeds,
    RecomputeStep {
        generation: u64,
        after: Option<String>,
    },
    FlushDue {
        generation: u64,
    },
    /// `index::Scanned`; `took` is what the scan stores in the `last_full_scan_ms` gauge, and
    /// `periodic` (the simulator's, for `Stats`) says the periodic rescan started it.
    ScanDone {
        records: Vec<FileRecord>,
        full: bool,
        scope: Vec<String>,
        unreadable: Vec<(String, String)>,
        took: u64,
        periodic: bool,
    },
    RootCheck,
}

/// What the Puller of a node is sent: needs by the Index, the end of a pull by its task, and its
/// timer.
#[derive(Debug, Clone)]
enum ToPuller {
    Needs { items: Vec<Need>, complete: bool, settled: Vec<String> },
    Finished { path: String, result: Result<(), FailureKind> },
    RetryNow,
    Tick,
}

/// `Watcher`: the watcher's debounce is over, what changed goes to the Index. `Periodic`: the
/// Watcher's `Rescan` timer (every `sync.rescan_interval` from its start). `Overflow`: the Watcher's
/// look at its dropped events (`check_overflow`, every `ROOT_CHECK_EVERY`) found some: a full
/// rescan. `Answer`: the user answers a folder stopped by the mass-delete guard (confirms, or
/// restores the files), if it still is.
#[derive(Debug, Clone)]
enum Ev {
    Deliver { from: usize, to: usize, conn: u64, msg: Msg },
    Connect { a: usize, b: usize },
    Index { node: usize, life: u64, msg: ToIndex },
    Puller { node: usize, life: u64, msg: ToPuller },
    Watcher { node: usize, life: u64 },
    Periodic { node: usize, life: u64 },
    Overflow { node: usize, life: u64 },
    Answer { node: usize },
    Restart { node: usize },
    Heal { a: usize, b: usize },
    DiskFreed { node: usize },
    RootBack { node: usize },
    ConfirmRoot { node: usize },
}

struct Queued {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Default, Clone, Copy)]
struct Link {
    /// Bumped when the connection drops: messages of an older connection are lost.
    conn: u64,
    up: bool,
    partitioned: bool,
    dialing: bool,
    /// Index updates of one connection arrive in order (one stream): the last arrival time, per
    /// direction (index 0: from the lower node).
    last_arrival: [u64; 2],
}

// ---------------------------------------------------------------------------------------------
// A node: what survives a restart (store, disk) and what does not

/// One pull being carried out (`pull::execute`): where the fetched content goes, and the chunk
/// request it waits for.
struct Task {
    need: Need,
    target: String,
    request: (u64, usize),
}

/// The actors' state: lost at a restart.
struct Volatile {
    clock: Clock,
    /// The Index's rules for the folder.
    folder: Folder,
    /// The Puller's rules, and its stored queues.
    pull: PullState,
    needs: StoredNeeds,
    /// Pulls waiting for a chunk.
    tasks: BTreeMap<String, Task>,
    /// When the actors started (the Puller's timer fires every whole second from then), and
    /// whether its next tick is scheduled (only while something is parked or held).
    started: u64,
    ticking: bool,
    /// The watcher: paths changed and not yet handed to the Index, and whether the hand-over is
    /// scheduled.
    watched: BTreeSet<String>,
    watching: bool,
    /// Per peer: the session started (its Hello came), and how far our index went to it.
    sent: BTreeMap<usize, u64>,
    /// The folder's gauges: how long the last full scan took (`last_full_scan_ms`, what the
    /// periodic rescan is spaced by) and the files it cannot read (`unreadable`).
    last_full_ms: u64,
    unreadable: BTreeMap<String, String>,
    /// The Index is handling the periodic rescan (`Handler<Rescan>`), for `Stats`.
    periodic_step: bool,
    /// The last fault the Index said it entered, and whether the user confirmed the mass delete
    /// held by it (answered by the next judgement that empties the folder, or void when the hold
    /// ends otherwise): what the checks of `CommitDeletes` compare with.
    fault: Option<Fault>,
    confirmed: bool,
    /// The user confirmed a new root: its confirmation holds until the next full scan is done.
    new_root_scan: bool,
}

impl Volatile {
    fn new(tiny: bool, now: u64, guard: u64) -> Volatile {
        Volatile {
            clock: Clock::default(),
            folder: Folder::new(guard),
            pull: if tiny { tiny_puller() } else { PullState::default() },
            needs: StoredNeeds::default(),
            tasks: BTreeMap::new(),
            started: now,
            ticking: false,
            watched: BTreeSet::new(),
            watching: false,
            sent: BTreeMap::new(),
            last_full_ms: 0,
            unreadable: BTreeMap::new(),
            periodic_step: false,
            fault: None,
            confirmed: false,
            new_root_scan: false,
        }
    }
}

struct Node {
    id: DeviceId,
    me: ShortId,
    up: bool,
    /// Incremented at each start: events of an earlier life are dropped.
    life: u64,
    store: Store,
    disk: Disk,
    v: Volatile,
}

// ---------------------------------------------------------------------------------------------
// What the checks need to know of the history

#[derive(Default)]
struct Log {
    /// Every record any node committed, per path.
    committed: BTreeMap<String, Vec<FileRecord>>,
    /// Conflict losers (path and content) and the names their copies got, on any node; and
    /// contents a power loss destroyed.
    losers: BTreeMap<(String, Content), BTreeSet<String>>,
    lost_to_crash: HashSet<Content>,
    /// Conflict copies a user deleted (deleting every file of a node takes them too).
    copies_deleted: HashSet<Content>,
    /// Contents some node could not read (an I/O error) though they looked as recorded: a loser
    /// or a copy that cannot be read cannot be compared with the copies already there, so it may
    /// be kept twice (never lost).
    io_errors: HashSet<Content>,
    /// Contents a user overwrote or deleted where they were (the user saw them: a later write that
    /// replaced them, even if no scan saw them in between).
    replaced_by_user: HashSet<Content>,
    /// Per path, how many of its first committed records are proven superseded.
    proven: BTreeMap<String, usize>,
    tracing: bool,
}

struct Sim {
    rng: Rng,
    now: u64,
    seq: u64,
    events: BinaryHeap<Reverse<Queued>>,
    nodes: Vec<Node>,
    links: Vec<Vec<Link>>,
    next_content: Content,
    next_request: u64,
    log: Log,
    /// The Pullers run with tiny bounds (`tiny_puller`).
    tiny: bool,
    extra: Extra,
    stats: Stats,
    /// Events queued other than the periodic rescan's timer (the timer never stops), records
    /// committed, changes users made to a disk (seen by the watcher or not), and full scans each
    /// node completed: what tells a quiet period is over.
    work: u64,
    commits: u64,
    user_changes: u64,
    full_scans: Vec<u64>,
}

fn device(i: usize) -> DeviceId {
    let mut b = [0u8; 32];
    b[0] = 0x10 + i as u8 * 0x11;
    b[31] = i as u8;
    DeviceId(b)
}

fn is_copy(path: &str) -> bool {
    path.contains(".sync-conflict-")
}

impl Sim {
    fn new(seed: u64, tracing: bool, extra: u8) -> Sim {
        let extra = Extra::new(seed, extra);
        let mut rng = Rng(seed);
        let n = rng.range(2, 5) as usize;
        let tiny = rng.chance(50);
        let nodes = (0..n)
            .map(|i| Node {
                id: device(i),
                me: device(i).short(),
                up: false,
                life: 0,
                store: Store { index_id: rng.next() | 1, ..Store::default() },
                disk: Disk::default(),
                v: Volatile::new(tiny, EPOCH_MS, extra.guard),
            })
            .collect();
        let mut sim = Sim {
            rng,
            now: EPOCH_MS,
            seq: 0,
            events: BinaryHeap::new(),
            nodes,
            links: vec![vec![Link::default(); n]; n],
            next_content: 1,
            next_request: 1,
            log: Log { tracing, ..Log::default() },
            tiny,
            extra,
            stats: Stats::default(),
            work: 0,
            commits: 0,
            user_changes: 0,
            full_scans: vec![0; n],
        };
        for i in 0..n {
            sim.start(i);
        }
        sim
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if self.log.tracing {
            // Printed as it happens: a failed assertion ends the history mid-way.
            eprintln!("{:>9} {}", self.now - EPOCH_MS, line());
        }
    }

    fn at(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.work += u64::from(!matches!(ev, Ev::Periodic { .. }));
        self.events.push(Reverse(Queued { at: self.now + delay, seq: self.seq, ev }));
    }

    /// The next event, if it is due by `until`.
    fn next_event(&mut self, until: u64) -> Option<Ev> {
        if self.events.peek().is_none_or(|Reverse(q)| q.at > until) {
            return None;
        }
        let Reverse(q) = self.events.pop().expect("peeked");
        self.work -= u64::from(!matches!(q.ev, Ev::Periodic { .. }));
        self.now = q.at;
        Some(q.ev)
    }

    /// A message to node `i`'s Index, after `delay` (0: its mailbox, behind what is there).
    fn tell_index(&mut self, i: usize, delay: u64, msg: ToIndex) {
        let life = self.nodes[i].life;
        self.at(delay, Ev::Index { node: i, life, msg });
    }

    fn tell_puller(&mut self, i: usize, msg: ToPuller) {
        let life = self.nodes[i].life;
        self.at(0, Ev::Puller { node: i, life, msg });
    }

    fn link(&mut self, a: usize, b: usize) -> &mut Link {
        let (x, y) = if a < b { (a, b) } else { (b, a) };
        &mut self.links[x][y]
    }

    // ----- network

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        let ordered = matches!(msg, Msg::Hello { .. } | Msg::Index { .. });
        let latency = self.rng.range(1, 80);
        let dir = usize::from(from > to);
        let link = *self.link(from, to);
        if !link.up {
            return;
        }
        let mut at = self.now + latency;
        if ordered {
            at = at.max(link.last_arrival[dir]);
            self.link(from, to).last_arrival[dir] = at;
        }
        let delay = at - self.now;
        self.at(delay, Ev::Deliver { from, to, conn: link.conn, msg });
    }

    fn maybe_dial(&mut self, a: usize, b: usize) {
        let l = *self.link(a, b);
        if l.up || l.dialing || l.partitioned || !self.nodes[a].up || !self.nodes[b].up {
            return;
        }
        self.link(a, b).dialing = true;
        let delay = self.rng.range(10, 600);
        self.at(delay, Ev::Connect { a, b });
    }

    fn connect(&mut self, a: usize, b: usize) {
        self.link(a, b).dialing = false;
        let l = *self.link(a, b);
        if l.up || l.partitioned || !self.nodes[a].up || !self.nodes[b].up {
            return;
        }
        let l = self.link(a, b);
        l.up = true;
        l.conn += 1;
        l.last_arrival = [0, 0];
        self.trace(|| format!("connect {a}-{b}"));
        for (x, y) in [(a, b), (b, a)] {
            let held = self.nodes[x].store.remote.get(&self.nodes[y].id).cloned().unwrap_or_default();
            self.send(x, y, Msg::Hello { your_index_id: held.index_id, your_max_sequence: held.max_sequence });
        }
        // A peer came: every need is computed again.
        for x in [a, b] {
            self.tell_index(x, 0, ToIndex::RecomputeNeeds);
        }
    }

    fn disconnect(&mut self, a: usize, b: usize) {
        let l = self.link(a, b);
        if !l.up {
            return;
        }
        l.up = false;
        self.trace(|| format!("disconnect {a}-{b}"));
        for (x, y) in [(a, b), (b, a)] {
            self.nodes[x].v.sent.remove(&y);
            // Chunk requests to the peer that went away fail (a source gone mid-file).
            let waiting: Vec<String> =
                self.nodes[x].v.tasks.iter().filter(|(_, t)| t.request.1 == y).map(|(p, _)| p.clone()).collect();
            for path in waiting {
                self.pull_ended(x, &path, Err(FailureKind::Transient));
            }
        }
        self.maybe_dial(a, b);
    }

    fn deliver(&mut self, from: usize, to: usize, conn: u64, msg: Msg) {
        let l = *self.link(from, to);
        if !l.up || l.conn != conn || !self.nodes[to].up {
            return;
        }
        match msg {
            Msg::Hello { your_index_id, your_max_sequence } => {
                let me = &self.nodes[to];
                let start = if your_index_id == me.store.index_id { your_max_sequence } else { 0 };
                self.nodes[to].v.sent.insert(from, start);
                self.send_index(to, from);
            }
            Msg::Index { index_id, records } => self.remote_index(to, from, index_id, records),
            Msg::Request { id, path, hash } => {
                // The peer serves a chunk only while its file still holds it (`actors/peer.rs`:
                // "file changed since it was indexed" otherwise).
                let n = &self.nodes[to];
                let held = n.disk.files.get(&path).filter(|f| f.readable() && hash_of(f.content) == hash);
                let content =
                    held.filter(|f| !f.io_error).map(|f| f.content).filter(|_| n.disk.root(n.store.root_id).is_ok());
                // Reading it fails: "unreadable", which the requester takes as worth asking again.
                self.stats.failed_reads += u64::from(held.is_some_and(|f| f.io_error));
                self.send(to, from, Msg::Response { id, content });
            }
            Msg::Response { id, content } => self.response(to, id, content),
        }
    }

    /// Our index since what `peer` has, in sequence order (the Peer's index sender).
    fn send_index(&mut self, node: usize, peer: usize) {
        let Some(&after) = self.nodes[node].v.sent.get(&peer) else { return };
        let records = self.nodes[node].store.since(after);
        if records.is_empty() {
            return;
        }
        let last = records.last().expect("one").sequence;
        self.nodes[node].v.sent.insert(peer, last);
        let index_id = self.nodes[node].store.index_id;
        self.send(node, peer, Msg::Index { index_id, records });
    }

    // ----- a node's life

    /// The actors start (`IndexActor::started`): stale temp files go if the root is there, and the
    /// folder is scanned whole (or stopped, without its root).
    fn start(&mut self, i: usize) {
        let now = self.now;
        let n = &mut self.nodes[i];
        n.up = true;
        n.life += 1;
        n.v = Volatile::new(self.tiny, now, self.extra.guard);
        // `index::open_folder`.
        let root = n.disk.root(n.store.root_id);
        if root.is_ok() {
            n.disk.temps.clear();
        }
        self.trace(|| format!("start {i}"));
        self.step(i, |f, io| match root {
            Err(problem) => f.root_checked(Err(problem), io),
            Ok(()) => f.changed([String::new()], io),
        });
        for j in 0..self.nodes.len() {
            if j != i {
                self.maybe_dial(i, j);
            }
        }
        if self.extra.on {
            let life = self.nodes[i].life;
            self.at(self.extra.rescan_every, Ev::Periodic { node: i, life });
        }
    }

    fn stop(&mut self, i: usize, power_loss: bool) {
        if !self.nodes[i].up {
            return;
        }
        self.nodes[i].up = false;
        for j in 0..self.nodes.len() {
            if j != i {
                self.disconnect(i, j);
                self.link(i, j).dialing = false;
            }
        }
        let n = &mut self.nodes[i];
        n.v = Volatile::new(self.tiny, self.now, self.extra.guard);
        if power_loss {
            let durable: HashSet<Content> = n.disk.durable.values().map(|f| f.content).collect();
            for f in n.disk.files.values() {
                if !durable.contains(&f.content) {
                    self.log.lost_to_crash.insert(f.content);
                }
            }
            n.disk.files = n.disk.durable.clone();
            n.disk.temps.clear();
        }
        let delay = self.rng.range(200, 4000);
        self.trace(|| format!("stop {i} power_loss={power_loss}"));
        self.at(delay, Ev::Restart { node: i });
    }

    /// A change the user made: seen by the watcher, unless it misses it (a directory it could not
    /// watch: only the periodic rescan finds the change; or a dropped event queue: the Watcher's
    /// look at its overflow flag asks for a full rescan within `ROOT_CHECK_EVERY`).
    fn user_changed(&mut self, i: usize, path: &str) {
        self.user_changes += 1;
        if self.extra.on && self.nodes[i].up && self.extra.rng.chance(self.extra.missed) {
            self.stats.missed += 1;
            let overflow = self.extra.rng.chance(50);
            self.trace(|| format!("node {i} watcher misses {path} (overflow: {overflow})"));
            if overflow {
                let (delay, life) = (self.extra.rng.range(1, ROOT_CHECK_EVERY), self.nodes[i].life);
                self.at(delay, Ev::Overflow { node: i, life });
            }
            return;
        }
        self.local_changed(i, path);
    }

    /// A local change, seen by the watcher: handed to the Index after its debounce.
    fn local_changed(&mut self, i: usize, path: &str) {
        if !self.nodes[i].up {
            return;
        }
        let v = &mut self.nodes[i].v;
        v.watched.insert(path.to_string());
        if !std::mem::replace(&mut v.watching, true) {
            let life = self.nodes[i].life;
            self.at(DEBOUNCE_MS, Ev::Watcher { node: i, life });
        }
    }

    // ----- the Index (actors/index.rs)

    fn tick(&mut self, i: usize) -> u64 {
        let now = self.now;
        self.nodes[i].v.clock.tick(now)
    }

    /// Runs one step of the folder's rules, with its root, disk and index to look at, and carries
    /// out what it returns (`IndexActor::step`).
    fn step(&mut self, i: usize, f: impl FnOnce(&mut Folder, &FolderView) -> Vec<folder::Effect>) {
        let n = &mut self.nodes[i];
        let io = FolderView { store: &n.store, disk: &n.disk };
        let effects = f(&mut n.v.folder, &io);
        self.perform(i, effects);
    }

    /// `IndexActor::perform`.
    fn perform(&mut self, i: usize, effects: Vec<folder::Effect>) {
        for effect in effects {
            match effect {
                folder::Effect::StartScan { scope, full, suspect, busy, .. } => {
                    self.scan(i, scope, full, &suspect, &busy)
                }
                folder::Effect::EnterFault(fault) => {
                    self.trace(|| format!("node {i} folder stopped: {fault}"));
                    if let Fault::Emptied { files } = fault {
                        self.held(i, files);
                    }
                    self.nodes[i].v.fault = Some(fault);
                    self.tell_puller(i, ToPuller::Needs { items: Vec::new(), complete: true, settled: Vec::new() });
                }
                folder::Effect::LeaveFault => {
                    self.trace(|| format!("node {i} folder resumed"));
                    let v = &mut self.nodes[i].v;
                    // A confirm answers the hold it was given for, not a later one.
                    if matches!(v.fault.take(), Some(Fault::Emptied { .. })) {
                        v.confirmed = false;
                    }
                }
                folder::Effect::CommitDeletes(deletes) => {
                    self.check_deletes(i, &deletes);
                    self.commit(i, deletes)
                }
                folder::Effect::Recompute => self.recompute(i),
                folder::Effect::ScheduleFlush { at, generation } => {
                    let delay = at.saturating_sub(self.now);
                    self.tell_index(i, delay, ToIndex::FlushDue { generation });
                }
                folder::Effect::Unreadable { now, found, readable } => {
                    self.stats.unreadable += found.len() as u64;
                    if !found.is_empty() || !readable.is_empty() {
                        self.trace(|| format!("node {i} cannot read {found:?}, can read again {readable:?}"));
                    }
                    self.nodes[i].v.unreadable = now;
                }
            }
        }
    }

    /// The mass-delete guard stopped the folder: the index still holds every file the scan did
    /// not find (nothing was committed, so no peer deletes them), and the user will answer.
    fn held(&mut self, i: usize, files: u64) {
        self.stats.holds += 1;
        let n = &self.nodes[i];
        let kept = n.store.local.values().filter(|r| !r.deleted && !n.disk.files.contains_key(&r.path)).count();
        assert!(kept as u64 >= files, "node {i} held the deletes of {files} files, but its index kept {kept}");
        let delay = self.extra.rng.range(200, 10_000);
        self.at(delay, Ev::Answer { node: i });
    }

    /// What the Index commits as local deletes (the only way this node announces a delete of its
    /// own): never of a file that is there (an unreadable one above all), never while the
    /// mass-delete guard holds, and never every file of the folder (as many as the guard names)
    /// unless the user confirmed that.
    fn check_deletes(&mut self, i: usize, deletes: &[FileRecord]) {
        let n = &mut self.nodes[i];
        for d in deletes {
            if let Some(f) = n.disk.files.get(&d.path) {
                let how = if f.readable() { "a file" } else { "an unreadable file" };
                panic!("node {i} announces the delete of {}, {how} it holds", d.path);
            }
        }
        assert!(
            !matches!(n.v.folder.fault(), Some(Fault::Emptied { .. })),
            "node {i} announces deletes while the mass-delete guard holds"
        );
        let live = n.store.local.values().filter(|r| !r.deleted).count();
        let files = deletes.iter().filter(|r| r.kind == FileKind::File).count() as u64;
        let guard = self.extra.guard;
        if guard > 0 && deletes.len() >= live && files >= guard {
            assert!(
                std::mem::take(&mut n.v.confirmed),
                "node {i} announces the deletes of every file ({files}) without the user's confirm"
            );
        }
    }

    /// `Handler<Confirm>` on a folder the mass-delete guard stopped, or the user putting back what
    /// the index still holds (from a backup, size and mtime kept), or both (restored, then
    /// confirmed all the same).
    fn answer(&mut self, i: usize) {
        if !self.nodes[i].up || !matches!(self.nodes[i].v.folder.fault(), Some(Fault::Emptied { .. })) {
            return;
        }
        if self.nodes[i].disk.root_gone {
            // Nothing to put back yet, and the folder will stop for its root: the user answers
            // once it is back.
            let delay = self.extra.rng.range(1000, 5000);
            return self.at(delay, Ev::Answer { node: i });
        }
        let roll = self.extra.rng.below(100);
        if roll >= 50 {
            self.stats.restores += 1;
            let n = &self.nodes[i];
            let back: Vec<(String, File)> = n
                .store
                .local
                .values()
                .filter(|r| !r.deleted && !n.disk.files.contains_key(&r.path))
                .filter_map(|r| Some((r.path.clone(), File::new(content_of(r)?, r.mtime_ns))))
                .collect();
            self.trace(|| format!("node {i} user restores {:?}", back.iter().map(|(p, _)| p).collect::<Vec<_>>()));
            for (path, file) in back {
                self.nodes[i].disk.files.insert(path.clone(), file);
                self.user_changed(i, &path);
            }
        }
        if roll < 65 {
            self.stats.confirms += 1;
            self.trace(|| format!("node {i} user confirms"));
            self.nodes[i].v.confirmed = true;
            self.step(i, |f, io| f.confirm(io));
        }
    }

    /// The scanner (`index::ScanJob`): the records for `scope`, computed now against the index
    /// as it is, handed in later. A file that looks as recorded is not read; one that does not but
    /// cannot be read is reported as unreadable, with no record (`Scanner::judge`).
    fn scan(&mut self, i: usize, scope: Vec<String>, full: bool, suspect: &HashSet<String>, busy: &HashSet<String>) {
        let now = self.tick(i);
        let n = &self.nodes[i];
        let paths: BTreeSet<String> = if full {
            n.disk.files.keys().chain(n.store.local.keys()).cloned().collect()
        } else {
            scope.iter().cloned().collect()
        };
        let (mut records, mut unreadable) = (Vec::new(), Vec::new());
        for path in paths {
            if busy.contains(&path) {
                continue;
            }
            let previous = n.store.local.get(&path);
            match n.disk.files.get(&path) {
                Some(f) if !suspect.contains(&path) && previous.is_some_and(|p| f.matches(p)) => {}
                Some(f) if !f.readable() => unreadable.push((path, "Permission denied (os error 13)".to_string())),
                Some(f) if f.io_error => unreadable.push((path, "Input/output error (os error 5)".to_string())),
                Some(f) => {
                    let c = f.content;
                    let seen = Seen {
                        kind: FileKind::File,
                        size: size_of(c),
                        mtime_ns: f.mtime_ns,
                        permissions: 0o644,
                        chunks: vec![Chunk { offset: 0, size: size_of(c) as u32, hash: hash_of(c) }],
                        link_target: String::new(),
                    };
                    records.extend(replica::scanned(&path, seen, previous, n.me, now));
                }
                None => {
                    if let Some(p) = previous.filter(|p| !p.deleted) {
                        records.push(p.tombstone(n.me, now));
                    }
                }
            }
        }
        let periodic = n.v.periodic_step;
        let delay = self.rng.range(1, 60);
        self.tell_index(i, delay, ToIndex::ScanDone { records, full, scope, unreadable, took: delay, periodic });
    }

    fn index_handle(&mut self, i: usize, msg: ToIndex) {
        match msg {
            ToIndex::ScanDone { records, full, scope, unreadable, took, periodic } => {
                if full {
                    self.nodes[i].v.last_full_ms = took;
                }
                if periodic && !records.is_empty() {
                    self.stats.periodic_found += 1;
                }
                self.scan_done(i, records, full, scope, unreadable)
            }
            ToIndex::FlushDue { generation } => self.step(i, |f, io| f.flush_due(generation, io)),
            ToIndex::LocalChanged(paths) => self.step(i, |f, io| f.changed(paths, io)),
            ToIndex::Pulling { path, phase } => self.step(i, |f, io| f.pulling(path, phase, io)),
            ToIndex::RootCheck => self.step(i, |f, io| f.root_checked(io.check_root(), io)),
            ToIndex::RecomputeNeeds => self.recompute(i),
            ToIndex::RecomputeStep { generation, after } => self.recompute_step(i, generation, after),
            ToIndex::RecomputePaths(paths) => self.recompute_paths(i, paths),
            ToIndex::Applied(outcome) => self.applied(i, *outcome),
        }
    }

    /// `Handler<ScanDone>` and `take_scanned`.
    fn scan_done(
        &mut self,
        i: usize,
        records: Vec<FileRecord>,
        full: bool,
        scope: Vec<String>,
        unreadable: Vec<(String, String)>,
    ) {
        let n = &self.nodes[i];
        let root = n.disk.root(n.store.root_id);
        self.stats.failed_reads +=
            unreadable.iter().filter(|(p, _)| n.disk.files.get(p).is_some_and(|f| f.io_error)).count() as u64;
        let finished = self.nodes[i].v.folder.scan_finished(root, full, &scope, unreadable);
        // The root went away while the scan ran: what it saw means nothing.
        let void = finished.is_err();
        self.perform(i, finished.unwrap_or_else(|e| e));
        if void {
            return;
        }
        let (mut fresh, mut stale, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
        for record in records {
            match replica::judge_scanned(&record, self.nodes[i].store.local.get(&record.path)) {
                ScanVerdict::Stale => stale.push(record.path),
                ScanVerdict::HoldDelete => deletes.push(record),
                ScanVerdict::Commit => fresh.push(record),
            }
        }
        self.commit(i, fresh);
        let now = self.now;
        self.nodes[i].v.folder.scanned(stale, deletes, now);
        self.step(i, |f, io| f.scan_done(full, now, io));
        self.full_scans[i] += u64::from(full);
        // The confirm of a new root is spent by the full scan it asked for.
        let v = &mut self.nodes[i].v;
        if full && std::mem::take(&mut v.new_root_scan) {
            v.confirmed = false;
        }
    }

    /// The Index's `commit`: into the store, then announced to every connected peer.
    fn commit(&mut self, i: usize, records: Vec<FileRecord>) {
        if records.is_empty() {
            return;
        }
        self.commits += records.len() as u64;
        let stored = self.nodes[i].store.commit(records);
        for r in &stored {
            self.trace(|| {
                format!("node {i} commit {} {:?} v={:?} del={}", r.path, content_of(r), r.version, r.deleted)
            });
            self.log.committed.entry(r.path.clone()).or_default().push(r.clone());
        }
        let peers: Vec<usize> = self.nodes[i].v.sent.keys().copied().collect();
        for p in peers {
            self.send_index(i, p);
        }
    }

    fn devices(&self, i: usize) -> Vec<DeviceId> {
        self.nodes[i].store.remote.keys().copied().collect()
    }

    /// `Handler<RemoteIndex>`.
    fn remote_index(&mut self, i: usize, from: usize, index_id: u64, records: Vec<FileRecord>) {
        let peer = self.nodes[from].id;
        let store = &mut self.nodes[i].store;
        let entry = store.remote.entry(peer).or_default();
        if entry.index_id != index_id {
            *entry = RemoteIndex { index_id, ..RemoteIndex::default() };
        }
        for r in &records {
            entry.max_sequence = entry.max_sequence.max(r.sequence);
            entry.files.insert(r.path.clone(), r.clone());
        }
        let devices = self.devices(i);
        let Ok(items) = replica::needs(&self.nodes[i].store, &devices, Some(&records));
        self.dispatch(i, items, false, Vec::new());
    }

    /// `IndexActor::recompute`: a new generation, a page at a time (`Handler<RecomputeStep>`).
    fn recompute(&mut self, i: usize) {
        let generation = self.nodes[i].v.folder.next_recompute();
        self.tell_index(i, 0, ToIndex::RecomputeStep { generation, after: None });
    }

    /// One page of a whole-folder recompute: the first replaces the Puller's list, the others add
    /// to it; a newer recompute stops this one.
    fn recompute_step(&mut self, i: usize, generation: u64, after: Option<String>) {
        if !self.nodes[i].v.folder.recompute_current(generation) {
            return;
        }
        let devices = self.devices(i);
        let Ok((items, next)) = replica::needs_page(&self.nodes[i].store, &devices, after.as_deref(), SIM_NEEDS_PAGE);
        self.dispatch(i, items, after.is_none(), Vec::new());
        if let Some(next) = next {
            self.tell_index(i, 0, ToIndex::RecomputeStep { generation, after: Some(next) });
        }
    }

    /// `Handler<RecomputePaths>`.
    fn recompute_paths(&mut self, i: usize, paths: Vec<String>) {
        let devices = self.devices(i);
        let Ok(items) = replica::needs_at(&self.nodes[i].store, &devices, &paths);
        self.dispatch(i, items, false, paths);
    }

    /// `IndexActor::dispatch`: settles what needs no disk work, sends the rest to the Puller.
    fn dispatch(&mut self, i: usize, items: Vec<Need>, complete: bool, settled: Vec<String>) {
        if self.nodes[i].v.folder.fault().is_some() {
            return;
        }
        let Dispatched { commit, work, settled } = replica::dispatch(items, complete, settled, false, &|_| false);
        self.commit(i, commit);
        if !work.is_empty() || complete || !settled.is_empty() {
            self.tell_puller(i, ToPuller::Needs { items: work, complete, settled });
        }
    }

    /// `Handler<Applied>`: what the pull did, recorded against our current record
    /// (`replica::applied`, as the Index runs it for each `Applied`).
    fn applied(&mut self, i: usize, outcome: Applied) {
        let current = Current::Read(self.nodes[i].store.local.get(outcome.path()).cloned());
        let (me, now) = (self.nodes[i].me, self.now);
        let plan = replica::applied(vec![(outcome, current)], me, &mut self.nodes[i].v.clock, now);
        self.commit(i, plan.commit);
        if !plan.recompute.is_empty() {
            self.tell_index(i, 0, ToIndex::RecomputePaths(plan.recompute));
        }
        if !plan.look_again.is_empty() {
            self.step(i, |f, io| f.changed(plan.look_again, io));
        }
    }

    // ----- the Puller (actors/puller.rs)

    fn puller_handle(&mut self, i: usize, msg: ToPuller) {
        let now = self.now;
        let n = &mut self.nodes[i];
        let faulted = n.v.folder.fault().is_some();
        let free = (!faulted && n.v.pull.wants_free_space()).then_some(if n.disk.full { 0 } else { u64::MAX });
        let v = &mut n.v;
        let effects = match msg {
            ToPuller::Needs { items, complete, settled } => {
                v.pull.take_needs(now, items, complete, settled, faulted, &mut v.needs)
            }
            ToPuller::Finished { path, result } => {
                let result = result.map_err(|kind| (kind, format!("{kind:?}")));
                v.pull.finished(now, &path, result, faulted, &mut v.needs)
            }
            ToPuller::RetryNow => v.pull.retry_now(now, faulted, free).1,
            ToPuller::Tick => {
                v.ticking = false;
                v.pull.tick(now, faulted, free, &mut v.needs)
            }
        };
        self.perform_pull(i, effects);
        // The timer runs while a retry or a held need waits for it.
        let v = &mut self.nodes[i].v;
        if !v.ticking && (v.pull.parked().next().is_some() || v.needs.holds_any()) {
            v.ticking = true;
            let delay = RETRY_TICK_MS - (now - v.started) % RETRY_TICK_MS;
            let life = self.nodes[i].life;
            self.at(delay, Ev::Puller { node: i, life, msg: ToPuller::Tick });
        }
    }

    /// `Puller::perform`.
    fn perform_pull(&mut self, i: usize, effects: Vec<pull::Effect>) {
        for effect in effects {
            match effect {
                pull::Effect::Start { item, sources } => {
                    let path = item.remote.path.clone();
                    self.tell_index(i, 0, ToIndex::Pulling { path, phase: PullPhase::Started });
                    self.execute(i, *item, &sources);
                }
                pull::Effect::Ended { path, failed } => {
                    self.tell_index(i, 0, ToIndex::Pulling { path, phase: PullPhase::Ended { failed } })
                }
                pull::Effect::Recompute { paths, why } => {
                    self.trace(|| format!("node {i} puller asks again for {paths:?} ({why:?})"));
                    self.tell_index(i, 0, ToIndex::RecomputePaths(paths));
                }
                pull::Effect::Holding { peer } => {
                    let p = self.nodes.iter().position(|n| n.id == peer);
                    self.trace(|| format!("node {i} holds needs of node {p:?} over its budget"));
                }
                pull::Effect::Failed { path, failure, .. } => {
                    let (kind, at) = (failure.kind, failure.next_retry_ms.saturating_sub(EPOCH_MS));
                    self.trace(|| format!("node {i} pull of {path} failed ({kind:?}), retry at {at}"));
                }
                pull::Effect::Recovered { .. } | pull::Effect::Failures => {}
            }
        }
    }

    /// A pull's task is over: the Puller hears of it.
    fn pull_ended(&mut self, i: usize, path: &str, result: Result<(), FailureKind>) {
        if let Some(task) = self.nodes[i].v.tasks.remove(path) {
            self.nodes[i].disk.temps.remove(&task.target);
        }
        self.tell_puller(i, ToPuller::Finished { path: path.to_string(), result });
    }

    fn up(&self, a: usize, b: usize) -> bool {
        self.links[a.min(b)][a.max(b)].up
    }

    /// `pull::execute`: the disk work of one need, up to the chunk request it may wait for.
    fn execute(&mut self, i: usize, need: Need, sources: &Sources) {
        let path = need.remote.path.clone();
        self.trace(|| {
            format!(
                "node {i} execute {path} {:?} local={:?} remote={:?}",
                need.action,
                need.local.as_ref().map(|l| (content_of(l), &l.version)),
                (content_of(&need.remote), &need.remote.version)
            )
        });
        if self.nodes[i].disk.root(self.nodes[i].store.root_id).is_err() {
            return self.pull_ended(i, &path, Err(FailureKind::Transient));
        }
        let remote = &need.remote;
        let reissue = Applied::Reissue { path: path.clone(), other: remote.version.clone() };
        let target = match &need.action {
            Action::Take if remote.deleted => {
                let disk = &mut self.nodes[i].disk;
                if let Some(f) = disk.files.get(&path) {
                    // `remove_keeping`: only what the index recorded is removed.
                    if !need.local.as_ref().filter(|l| !l.deleted).is_some_and(|l| f.matches(l)) {
                        self.stats.refused_pulls += u64::from(!f.readable());
                        return self.pull_ended(i, &path, Err(FailureKind::Transient));
                    }
                    self.stats.pulls_over_io_errors += u64::from(f.io_error);
                    disk.files.remove(&path);
                    disk.durable.remove(&path);
                }
                self.tell_index(i, 0, ToIndex::Applied(Box::new(Applied::Took { record: remote.clone(), disk: None })));
                return self.pull_ended(i, &path, Ok(()));
            }
            Action::Take => path.clone(),
            Action::ConflictLocalLoses { copy } => {
                // `move_aside_recorded`: our file goes to the copy name first (or is dropped when
                // that copy exists already), if it is what the index recorded: the copy's name is
                // the recorded loser's. A file that is gone, changed since (a local edit the scan
                // has not seen), or cannot be read (its mode differs) is not moved: the pull
                // fails, and the scan decides. One whose reads fail though it looks as recorded is
                // moved (a rename needs no read), never found to hold what a copy holds.
                let disk = &mut self.nodes[i].disk;
                let recorded = |f: &File| need.local.as_ref().is_some_and(|l| !l.deleted && f.matches(l));
                let Some(f) = disk.files.get(&path).copied().filter(recorded) else {
                    self.stats.refused_pulls += u64::from(disk.files.get(&path).is_some_and(|f| !f.readable()));
                    return self.pull_ended(i, &path, Err(FailureKind::Transient));
                };
                let name = free_name(disk, copy, f.reads().then_some(f.content));
                self.stats.pulls_over_io_errors += u64::from(f.io_error);
                disk.files.remove(&path);
                disk.durable.remove(&path);
                if let Ok(name) = &name {
                    disk.files.insert(name.clone(), f);
                    disk.durable.insert(name.clone(), f);
                    self.tell_index(i, 0, ToIndex::LocalChanged(vec![name.clone()]));
                }
                let name = name.unwrap_or_else(|existing| existing);
                self.log.losers.entry((path.clone(), f.content)).or_default().insert(name);
                path.clone()
            }
            Action::ConflictRemoteLoses { copy } => {
                let c = content_of(remote).expect("a conflict is between edits");
                match free_name(&self.nodes[i].disk, copy, Some(c)) {
                    Ok(name) => name,
                    Err(existing) => {
                        self.log.losers.entry((path.clone(), c)).or_default().insert(existing);
                        self.tell_index(i, 0, ToIndex::Applied(Box::new(reissue)));
                        return self.pull_ended(i, &path, Ok(()));
                    }
                }
            }
            Action::KeepLocal => {
                self.tell_index(i, 0, ToIndex::Applied(Box::new(reissue)));
                return self.pull_ended(i, &path, Ok(()));
            }
            Action::Skip | Action::Merge => return self.pull_ended(i, &path, Ok(())),
        };
        // Nothing is created before a connected source is known and the file fits.
        let connected: Vec<usize> = {
            let sources = sources.read().expect("sources lock");
            (0..self.nodes.len()).filter(|&j| j != i && sources.contains(&self.nodes[j].id) && self.up(i, j)).collect()
        };
        if connected.is_empty() {
            return self.pull_ended(i, &path, Err(FailureKind::Transient));
        }
        if self.nodes[i].disk.full {
            return self.pull_ended(i, &path, Err(FailureKind::NeedsSpace));
        }
        let src = *self.rng.pick(&connected);
        let id = self.next_request;
        self.next_request += 1;
        self.nodes[i].disk.temps.insert(target.clone());
        let hash = need.remote.chunks[0].hash;
        self.nodes[i].v.tasks.insert(path.clone(), Task { need, target, request: (id, src) });
        self.send(i, src, Msg::Request { id, path, hash });
    }

    /// The chunk came (or the peer could not serve it): the rest of `execute`.
    fn response(&mut self, i: usize, id: u64, content: Option<Content>) {
        let Some(path) = self.nodes[i].v.tasks.iter().find(|(_, t)| t.request.0 == id).map(|(p, _)| p.clone()) else {
            return;
        };
        let task = self.nodes[i].v.tasks.remove(&path).expect("found");
        let target = task.target;
        self.nodes[i].disk.temps.remove(&target);
        let Some(content) = content else { return self.pull_ended(i, &path, Err(FailureKind::Transient)) };
        let root = self.nodes[i].disk.root(self.nodes[i].store.root_id);
        let disk = &mut self.nodes[i].disk;
        if root.is_err() {
            return self.pull_ended(i, &path, Err(FailureKind::Transient));
        }
        if disk.full {
            return self.pull_ended(i, &path, Err(FailureKind::NeedsSpace));
        }
        let remote = task.need.remote;
        assert_eq!(Some(content), content_of(&remote), "a pull wrote content that is not the version's");
        // The rename into place, if the target is still what the index recorded (`check_unchanged`).
        let local = if target == path { task.need.local.filter(|l| !l.deleted) } else { None };
        let ok = match (disk.files.get(&target), &local) {
            (None, _) => true,
            (Some(f), Some(l)) => f.matches(l),
            (Some(_), None) => false,
        };
        if !ok {
            self.stats.refused_pulls += u64::from(disk.files.get(&target).is_some_and(|f| !f.readable()));
            return self.pull_ended(i, &path, Err(FailureKind::Transient));
        }
        // A file that cannot be read though it looks as recorded is replaced only by a version that
        // has seen its record (what the index says it holds), never by a conflict's or another's.
        if let Some(f) = disk.files.get(&target).filter(|f| f.io_error) {
            let seen = local.as_ref().is_some_and(|l| remote.version.dominates(&l.version) && f.matches(l));
            assert!(seen, "node {i} pulled {target} over a file it cannot read that the pull had not seen");
            self.stats.pulls_over_io_errors += 1;
        }
        let file = File::new(content, remote.mtime_ns);
        disk.files.insert(target.clone(), file);
        disk.durable.insert(target.clone(), file);
        let outcome = match &task.need.action {
            Action::ConflictRemoteLoses { .. } => {
                self.log.losers.entry((path.clone(), content)).or_default().insert(target.clone());
                self.tell_index(i, 0, ToIndex::LocalChanged(vec![target]));
                Applied::Reissue { path: path.clone(), other: remote.version }
            }
            _ => Applied::Took { record: remote, disk: Some((file.mtime_ns, 0o644)) },
        };
        self.tell_index(i, 0, ToIndex::Applied(Box::new(outcome)));
        self.pull_ended(i, &path, Ok(()));
    }

    // ----- the loop

    fn handle(&mut self, ev: Ev) {
        let live = |s: &Sim, node: usize, life: u64| s.nodes[node].up && s.nodes[node].life == life;
        match ev {
            Ev::Deliver { from, to, conn, msg } => self.deliver(from, to, conn, msg),
            Ev::Connect { a, b } => self.connect(a, b),
            Ev::Index { node, life, msg } if live(self, node, life) => self.index_handle(node, msg),
            Ev::Puller { node, life, msg } if live(self, node, life) => self.puller_handle(node, msg),
            Ev::Watcher { node, life } if live(self, node, life) => {
                let v = &mut self.nodes[node].v;
                v.watching = false;
                let paths: Vec<String> = std::mem::take(&mut v.watched).into_iter().collect();
                self.step(node, |f, io| f.changed(paths, io));
            }
            // `Handler<Rescan>`.
            Ev::Periodic { node, life } if live(self, node, life) => {
                self.at(self.extra.rescan_every, Ev::Periodic { node, life });
                let (now, took) = (self.now, self.nodes[node].v.last_full_ms);
                self.nodes[node].v.periodic_step = true;
                self.step(node, |f, io| f.periodic(now, took, io));
                self.nodes[node].v.periodic_step = false;
            }
            Ev::Overflow { node, life } if live(self, node, life) => self.local_changed(node, ""),
            Ev::Answer { node } => self.answer(node),
            Ev::Restart { node } if !self.nodes[node].up => self.start(node),
            Ev::Heal { a, b } => {
                self.link(a, b).partitioned = false;
                self.maybe_dial(a, b);
            }
            // The Puller's timer sees the free space within a second.
            Ev::DiskFreed { node } => self.nodes[node].disk.full = false,
            Ev::RootBack { node } => {
                self.nodes[node].disk.root_gone = false;
                if self.extra.more && self.extra.more_rng.chance(NEW_ROOT_PERCENT) {
                    self.new_root(node);
                }
                self.root_changed(node);
            }
            Ev::ConfirmRoot { node } => self.confirm_root(node),
            _ => {}
        }
    }

    /// The root went away or came back: the Index's periodic look sees it within
    /// `ROOT_CHECK_EVERY` (and a scan, or a pull, that starts meanwhile at once).
    fn root_changed(&mut self, i: usize) {
        if self.nodes[i].up {
            let delay = self.rng.range(0, ROOT_CHECK_EVERY);
            self.tell_index(i, delay, ToIndex::RootCheck);
        }
    }

    /// The root came back as another directory (the user made a new one, or mounted another
    /// disk): empty, or holding some of the files as they were (copied with their metadata).
    /// The folder stays stopped until the user confirms it as the new root, a few seconds later.
    fn new_root(&mut self, i: usize) {
        let keep = if self.extra.more_rng.chance(30) { 0 } else { self.extra.more_rng.range(20, 90) };
        let d = &mut self.nodes[i].disk;
        d.root_id += 1;
        let before = std::mem::take(&mut d.files);
        let mut dropped = Vec::new();
        for (path, f) in before {
            if self.extra.more_rng.chance(keep) {
                d.files.insert(path, File { mode: READABLE, io_error: false, ..f });
            } else {
                dropped.push((path, f.content));
            }
        }
        d.durable = d.files.clone();
        d.temps.clear();
        self.trace(|| format!("node {i} root back as another directory, without {dropped:?}"));
        for (path, c) in dropped {
            self.log.replaced_by_user.insert(c);
            if is_copy(&path) {
                self.log.copies_deleted.insert(c);
            }
        }
        let delay = self.extra.more_rng.range(1000, 10_000);
        self.at(delay, Ev::ConfirmRoot { node: i });
    }

    /// `syncnode confirm` of a new root (`Handler<Confirm>`: `Folder::confirming`, then
    /// `index::accept_root` and `Folder::confirm`), once the Index has stopped the folder for it;
    /// asked again later while the node is down or the root away.
    fn confirm_root(&mut self, i: usize) {
        let n = &self.nodes[i];
        if n.store.root_id == n.disk.root_id {
            return;
        }
        if !n.up || n.disk.root_gone || n.v.folder.confirming() != Confirming::NewRoot {
            let delay = self.extra.more_rng.range(1000, 5000);
            return self.at(delay, Ev::ConfirmRoot { node: i });
        }
        self.stats.new_roots += 1;
        self.trace(|| format!("node {i} user confirms the new root"));
        let n = &mut self.nodes[i];
        n.store.root_id = n.disk.root_id;
        n.v.confirmed = true;
        n.v.new_root_scan = true;
        self.step(i, |f, io| f.confirm(io));
    }

    /// A file's reads start failing with an I/O error, its metadata as recorded (so no scan reads
    /// it); or one such file mends (a sector remapped).
    fn io_error_op(&mut self) {
        let i = self.extra.more_rng.below(self.nodes.len() as u64) as usize;
        let path = self.extra.more_rng.pick(&PATHS).to_string();
        let mend = self.extra.more_rng.chance(30);
        let n = &mut self.nodes[i];
        let recorded = n.store.local.get(&path).cloned();
        let Some(f) = n.disk.files.get_mut(&path) else { return };
        if mend {
            f.io_error = false;
        } else if !f.io_error && recorded.is_some_and(|r| f.matches(&r) && content_of(&r) == Some(f.content)) {
            let before = *f;
            f.io_error = true;
            if let Some(g) = n.disk.durable.get_mut(&path).filter(|g| **g == before) {
                g.io_error = true;
            }
            self.log.io_errors.insert(before.content);
            self.stats.io_errors += 1;
            self.trace(|| format!("node {i} cannot read {path} any more (I/O error)"));
        }
    }

    /// Runs every event due by `until`.
    fn run_until(&mut self, until: u64) {
        while let Some(ev) = self.next_event(until) {
            self.handle(ev);
        }
        self.now = self.now.max(until);
    }

    // ----- the users and the faults

    fn op(&mut self) {
        if self.extra.more && self.extra.more_rng.chance(IO_ERROR_PERCENT) {
            self.io_error_op();
        }
        if self.extra.on && self.extra.rng.chance(6) {
            self.extra_op();
            let wait = self.extra.rng.range(0, 200);
            return self.run_until(self.now + wait);
        }
        let n = self.nodes.len();
        let i = self.rng.below(n as u64) as usize;
        let roll = self.rng.below(100);
        let path = self.rng.pick(&PATHS).to_string();
        let usable = !self.nodes[i].disk.root_gone;
        match roll {
            0..=44 if usable && !self.nodes[i].disk.full => {
                let content = self.next_content;
                self.next_content += 1;
                // A new mtime, always (a write that kept size and mtime would be invisible to a scan).
                let before = self.nodes[i].disk.files.get(&path).map_or(0, |f| f.mtime_ns + 1);
                let mtime_ns = ((self.now * 1_000_000 + self.rng.below(1_000_000)) as i64).max(before);
                let file = File::new(content, mtime_ns);
                self.trace(|| format!("node {i} user writes {path} = {content}"));
                if let Some(old) = self.nodes[i].disk.files.insert(path.clone(), file) {
                    self.log.replaced_by_user.insert(old.content);
                }
                if self.rng.chance(30) {
                    self.nodes[i].disk.durable.insert(path.clone(), file);
                }
                self.user_changed(i, &path);
            }
            45..=54 if usable => {
                if let Some(old) = self.nodes[i].disk.files.remove(&path) {
                    self.log.replaced_by_user.insert(old.content);
                    self.trace(|| format!("node {i} user deletes {path}"));
                    self.user_changed(i, &path);
                }
            }
            55..=60 if usable => {
                let to = self.rng.pick(&PATHS).to_string();
                if to != path {
                    if let Some(f) = self.nodes[i].disk.files.remove(&path) {
                        self.trace(|| format!("node {i} user renames {path} -> {to}"));
                        if let Some(old) = self.nodes[i].disk.files.insert(to.clone(), f) {
                            self.log.replaced_by_user.insert(old.content);
                        }
                        self.user_changed(i, &path);
                        self.user_changed(i, &to);
                    }
                }
            }
            61..=63 => {
                let d = &mut self.nodes[i].disk;
                d.durable = d.files.clone();
            }
            64..=68 => {
                let j = self.rng.below(n as u64) as usize;
                if j != i {
                    self.disconnect(i, j);
                }
            }
            69..=71 => {
                let j = self.rng.below(n as u64) as usize;
                if j != i {
                    self.trace(|| format!("partition {i}-{j}"));
                    self.link(i, j).partitioned = true;
                    self.disconnect(i, j);
                    let delay = self.rng.range(500, 20_000);
                    self.at(delay, Ev::Heal { a: i, b: j });
                }
            }
            72..=74 => self.stop(i, false),
            75..=76 => self.stop(i, true),
            77..=79 if !self.nodes[i].disk.full => {
                self.trace(|| format!("node {i} disk full"));
                self.nodes[i].disk.full = true;
                let delay = self.rng.range(500, 15_000);
                self.at(delay, Ev::DiskFreed { node: i });
            }
            80..=81 if usable => {
                self.trace(|| format!("node {i} root gone"));
                self.nodes[i].disk.root_gone = true;
                self.root_changed(i);
                let delay = self.rng.range(500, 10_000);
                self.at(delay, Ev::RootBack { node: i });
            }
            // `syncnode retry`.
            82 if self.nodes[i].up => self.tell_puller(i, ToPuller::RetryNow),
            _ => {}
        }
        let wait = if self.rng.chance(15) { self.rng.range(500, 3000) } else { self.rng.range(0, 200) };
        self.run_until(self.now + wait);
    }

    /// What a user does that only `Extra` simulates: makes a file unreadable (`chmod 000`: its
    /// mode changes, so the next scan reads it and cannot), or readable again, or deletes every
    /// file of the folder at once.
    fn extra_op(&mut self) {
        let i = self.extra.rng.below(self.nodes.len() as u64) as usize;
        let roll = self.extra.rng.below(100);
        if self.nodes[i].disk.root_gone {
            return;
        }
        match roll {
            0..=79 => {
                let mode = if roll < 40 { UNREADABLE } else { READABLE };
                let path = self.extra.rng.pick(&PATHS).to_string();
                let d = &mut self.nodes[i].disk;
                let Some(f) = d.files.get_mut(&path).filter(|f| f.mode != mode) else { return };
                let before = *f;
                f.mode = mode;
                if let Some(g) = d.durable.get_mut(&path).filter(|g| **g == before) {
                    g.mode = mode;
                }
                self.trace(|| format!("node {i} user chmods {path} {mode:o}"));
                self.user_changed(i, &path);
            }
            _ => {
                let gone = std::mem::take(&mut self.nodes[i].disk.files);
                self.trace(|| format!("node {i} user deletes every file"));
                for (path, f) in gone {
                    self.log.replaced_by_user.insert(f.content);
                    if is_copy(&path) {
                        self.log.copies_deleted.insert(f.content);
                    }
                    self.user_changed(i, &path);
                }
            }
        }
    }

    /// Ends every fault, lets the nodes settle, and checks the invariants.
    fn quiet(&mut self) -> Result<(), String> {
        self.trace(|| "quiet".to_string());
        // Every file can be read again (and the watcher may miss that too).
        for i in 0..self.nodes.len() {
            let d = &mut self.nodes[i].disk;
            let locked: Vec<String> = d.files.iter().filter(|(_, f)| !f.readable()).map(|(p, _)| p.clone()).collect();
            for f in d.files.values_mut().chain(d.durable.values_mut()) {
                f.mode = READABLE;
                f.io_error = false;
            }
            for path in locked {
                self.user_changed(i, &path);
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].disk.root_gone {
                self.nodes[i].disk.root_gone = false;
                if self.nodes[i].up {
                    self.step(i, |f, io| f.root_checked(io.check_root(), io));
                }
            }
            self.nodes[i].disk.full = false;
            if !self.nodes[i].up {
                self.start(i);
            }
            // A folder still stopped by the mass-delete guard gets its answer.
            if matches!(self.nodes[i].v.folder.fault(), Some(Fault::Emptied { .. })) {
                let delay = self.extra.rng.range(200, 2000);
                self.at(delay, Ev::Answer { node: i });
            }
            // A new root not confirmed yet is (its `ConfirmRoot` may have been asked before).
            if self.nodes[i].disk.root_id != self.nodes[i].store.root_id {
                let delay = self.extra.more_rng.range(200, 2000);
                self.at(delay, Ev::ConfirmRoot { node: i });
            }
        }
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                self.links[a][b].partitioned = false;
                self.maybe_dial(a, b);
            }
        }
        // Settled: nothing left to do but the periodic rescan's timer, and since the last time it
        // was so, every node completed a full scan (the periodic rescan, which finds what the
        // watcher missed), nothing was committed anywhere, and no user changed a disk (a file
        // restored while the mass-delete guard holds, and missed by the watcher, is found only by
        // a full scan after it: one that ended before it, holding the folder, proves nothing).
        let limit = self.now + QUIET_LIMIT_MS;
        let mut budget = 1_000_000u32;
        let mut idle: Option<((u64, u64), Vec<u64>)> = None;
        loop {
            if self.work == 0 {
                let changes = (self.commits, self.user_changes);
                match &idle {
                    Some((since, scans)) if *since == changes => {
                        if scans.iter().zip(&self.full_scans).all(|(a, b)| a < b) {
                            break;
                        }
                    }
                    _ => idle = Some((changes, self.full_scans.clone())),
                }
            }
            let Some(ev) = self.next_event(u64::MAX) else { break };
            budget -= 1;
            if self.now > limit || budget == 0 {
                return Err("the nodes did not settle within 30 virtual minutes".into());
            }
            self.handle(ev);
        }
        let proven = self.check()?;
        self.log.proven.extend(proven);
        Ok(())
    }

    fn check(&self) -> Result<Vec<(String, usize)>, String> {
        let tree = |n: &Node| -> BTreeMap<String, Content> {
            n.disk.files.iter().map(|(p, f)| (p.clone(), f.content)).collect()
        };
        let first = tree(&self.nodes[0]);
        for (i, n) in self.nodes.iter().enumerate() {
            // Every node holds the same tree.
            if tree(n) != first {
                return Err(format!("node {i} differs from node 0: {:?} vs {:?}", tree(n), first));
            }
            // Its index says what its disk holds, nothing partial is left.
            if !n.disk.temps.is_empty() {
                return Err(format!("node {i} left temp files {:?}", n.disk.temps));
            }
            for (p, r) in &n.store.local {
                let ok = match n.disk.files.get(p) {
                    Some(f) => f.matches(r) && content_of(r) == Some(f.content),
                    None => r.deleted,
                };
                if !ok {
                    return Err(format!(
                        "node {i}: record of {p} ({:?}) is not the disk ({:?})",
                        content_of(r),
                        n.disk.files.get(p)
                    ));
                }
            }
            for p in n.disk.files.keys() {
                if !n.store.local.contains_key(p) {
                    return Err(format!("node {i}: {p} is on disk but not in the index"));
                }
            }
            // Its Index and Puller are idle: nothing left to scan, pull, retry or hold.
            if let Some(fault) = n.v.folder.fault() {
                return Err(format!("node {i}: the folder is still stopped ({fault})"));
            }
            // Every file can be read again, and a full scan since said so.
            if !n.v.unreadable.is_empty() {
                return Err(format!("node {i} still reports unreadable files: {:?}", n.v.unreadable));
            }
            let pull = n.v.pull.gauges(&n.v.needs);
            if pull.need_files != 0 || !n.v.pull.failures().is_empty() {
                return Err(format!(
                    "node {i}: the Puller still has {} needs (running {:?}, parked {:?}) and failures {:?}",
                    pull.need_files,
                    n.v.pull.running().collect::<Vec<_>>(),
                    n.v.pull.parked().collect::<Vec<_>>(),
                    n.v.pull.failures().keys().collect::<Vec<_>>()
                ));
            }
            // Every node holds the same version of every path.
            for (p, r) in &n.store.local {
                let o = self.nodes[0].store.local.get(p);
                if o.map(|o| &o.version) != Some(&r.version) && !(r.deleted && o.is_none_or(|o| o.deleted)) {
                    return Err(format!(
                        "node {i} holds {p} at {:?}, node 0 at {:?}",
                        r.version,
                        o.map(|o| &o.version)
                    ));
                }
            }
        }
        let visible: HashSet<Content> = first.values().copied().collect();
        // No write is lost unless a later record of its path that had seen it replaced it (a
        // write, a delete, a re-issue); a tombstone never beats an edit it did not see.
        // A record once superseded stays so (the log only grows): the prefix of each path's log
        // proven so is skipped by the next checks.
        let mut proven = Vec::new();
        for (path, records) in &self.log.committed {
            let from = self.log.proven.get(path).copied().unwrap_or(0);
            let mut prefix = true;
            for (k, r) in records.iter().enumerate().skip(from) {
                // The newest records are the likeliest to have seen it.
                let superseded = r.deleted
                    || records.iter().rev().any(|h| h.version != r.version && h.version.dominates(&r.version));
                if superseded && prefix {
                    proven.push((path.clone(), k + 1));
                }
                prefix &= superseded;
                let Some(c) = content_of(r) else { continue };
                let excused = visible.contains(&c)
                    || self.log.lost_to_crash.contains(&c)
                    || self.log.replaced_by_user.contains(&c);
                if !superseded && !excused {
                    return Err(format!("the write of {path} = {c} (version {:?}) is lost", r.version));
                }
            }
        }
        // Every conflict loser is kept as a conflict copy, exactly once: one of the names its copies
        // got holds it, and only one (a loser's name holds its content id, `core::conflict`),
        // unless a node could not read it to compare.
        for ((path, c), names) in &self.log.losers {
            if self.log.lost_to_crash.contains(c) || self.log.copies_deleted.contains(c) {
                continue;
            }
            let kept = first.iter().filter(|(p, v)| is_copy(p) && *v == c).count();
            if kept == 0 {
                return Err(format!("the loser {c} of {path} is not kept (its copies were {names:?}): {first:?}"));
            }
            let copies = names.iter().filter(|n| first.get(*n) == Some(c)).count();
            if copies != 1 && !(copies > 1 && self.log.io_errors.contains(c)) {
                return Err(format!("the loser {c} of {path} is kept {copies} times (as {names:?}): {first:?}"));
            }
        }
        Ok(proven)
    }
}

/// `fs::apply::free_name`: `copy`, or a numbered variant; or the name that holds `content` already,
/// that one or a copy of the same path named for the same content id (`conflict::same_loser`)
/// (`None`: what is moved cannot be read, and no file is found to hold it; nor does a file that
/// cannot be read hold anything).
fn free_name(disk: &Disk, copy: &str, content: Option<Content>) -> Result<String, String> {
    let holds = |f: &File| Some(f.content) == content && f.reads();
    let dir = copy.rsplit_once('/').map_or("", |(d, _)| d);
    let in_dir = |p: &str| p.rsplit_once('/').map_or("", |(d, _)| d) == dir;
    if let Some((name, _)) =
        disk.files.iter().find(|(p, f)| *p != copy && in_dir(p) && conflict::same_loser(copy, p) && holds(f))
    {
        return Err(name.clone());
    }
    let (dir, file) = copy.rsplit_once('/').map_or(("", copy), |(d, f)| (d, f));
    let (stem, ext) = match file.rfind('.') {
        Some(i) if i > 0 && file[..i].contains(".sync-conflict-") => (&file[..i], &file[i..]),
        _ => (file, ""),
    };
    for n in 1.. {
        let name = match (n, dir.is_empty()) {
            (1, _) => copy.to_string(),
            (_, true) => format!("{stem}-{n}{ext}"),
            (_, false) => format!("{dir}/{stem}-{n}{ext}"),
        };
        match disk.files.get(&name) {
            None => return Ok(name),
            Some(f) if holds(f) => return Err(name),
            Some(_) => {}
        }
    }
    unreachable!()
}

/// One history: its nodes, `OPS` operations with a quiet period every so often, and the checks;
/// with `extra`, what `Extra` simulates too.
fn run(seed: u64, tracing: bool, extra: u8) -> (Result<(), String>, Stats) {
    let mut sim = Sim::new(seed, tracing, extra);
    let mut result = Ok(());
    let mut next_quiet = sim.rng.range(20, 60) as usize;
    for op in 0..OPS {
        sim.op();
        if op + 1 == next_quiet || op + 1 == OPS {
            result = sim.quiet();
            if result.is_err() {
                break;
            }
            next_quiet += sim.rng.range(20, 60) as usize;
        }
    }
    (result, sim.stats)
}

fn run_caught(seed: u64, extra: u8) -> (Result<(), String>, Stats) {
    match std::panic::catch_unwind(|| run(seed, false, extra)) {
        Ok((r, stats)) => (r, stats),
        Err(e) => {
            let message =
                e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            (Err(message.unwrap_or_else(|| "panic".into())), Stats::default())
        }
    }
}

/// How much of what `Extra` does histories simulate: `SIM_EXTRA=0` as before any of it,
/// `SIM_EXTRA=1` as before new roots and I/O errors; all of it by default.
fn extra() -> u8 {
    match std::env::var("SIM_EXTRA").ok().as_deref() {
        Some("0") => 0,
        Some("1") => 1,
        _ => 2,
    }
}

/// Runs `seeds` on the machine's cores (each history on one thread, alone: it stays deterministic).
fn run_many(seeds: impl Iterator<Item = u64> + Send, deadline: Option<Instant>) -> (u64, Vec<(u64, String)>, Stats) {
    let seeds = std::sync::Mutex::new(seeds);
    let failures = std::sync::Mutex::new(Vec::new());
    let stats = std::sync::Mutex::new(Stats::default());
    let count = std::sync::atomic::AtomicU64::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return;
                }
                let Some(seed) = seeds.lock().unwrap().next() else { return };
                let (result, st) = run_caught(seed, extra());
                if let Err(e) = result {
                    eprintln!("simulation failed: SIM_SEED={seed} cargo test --release --test sim -- {e}");
                    failures.lock().unwrap().push((seed, e));
                }
                stats.lock().unwrap().add(&st);
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            });
        }
    });
    (count.into_inner(), failures.into_inner().unwrap(), stats.into_inner().unwrap())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number")))
}

#[test]
fn seeded_histories_converge_and_lose_nothing() {
    if let Some(seed) = env_u64("SIM_SEED") {
        let (result, stats) = run(seed, true, extra());
        eprintln!("{stats:?}");
        if let Err(e) = result {
            panic!("SIM_SEED={seed}: {e}");
        }
        return;
    }
    let started = Instant::now();
    let (count, failures, stats) = match env_u64("SIM_SOAK") {
        Some(secs) => {
            let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
            let seeds = (0..).map(move |k: u64| base.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            run_many(seeds, Some(started + Duration::from_secs(secs)))
        }
        None => run_many(0..env_u64("SIM_HISTORIES").unwrap_or(HISTORIES), None),
    };
    let secs = started.elapsed().as_secs_f64();
    eprintln!("simulation: {count} histories of {OPS} operations in {secs:.1} s ({:.0}/s)", count as f64 / secs);
    eprintln!("simulation: {stats:?}");
    assert!(
        failures.is_empty(),
        "{} histories failed; the first: SIM_SEED={} ({})",
        failures.len(),
        failures[0].0,
        failures[0].1
    );
    // Enough histories met each thing `Extra` simulates for its checks to mean something.
    if count >= 1000 {
        let Stats {
            missed,
            periodic_found,
            holds,
            confirms,
            restores,
            unreadable,
            refused_pulls,
            new_roots,
            io_errors,
            failed_reads,
            pulls_over_io_errors: _,
        } = stats;
        let level = extra();
        for (what, n, from) in [
            ("missed watcher events", missed, 1),
            ("periodic rescans that found a change", periodic_found, 1),
            ("mass deletes held", holds, 1),
            ("confirms", confirms, 1),
            ("restores", restores, 1),
            ("unreadable files", unreadable, 1),
            ("pulls refused on an unreadable file", refused_pulls, 1),
            ("confirmed new roots", new_roots, 2),
            ("files with I/O errors", io_errors, 2),
            ("reads failed on them", failed_reads, 2),
        ] {
            assert!(level < from || n >= count / 100, "only {n} {what} in {count} histories");
        }
    }
}

/// Seeds that once failed, kept as regression cases (the bug each found is named), and how much
/// of what `Extra` simulates they run with (each replays its history at the level it was found
/// with).
const REGRESSIONS: &[(u64, u8, &str)] = &[
    (297, 0, "a held local delete dropped because a re-issue changed the record was never looked at again"),
    (280, 0, "a pull that ended after a merge regressed the record below its peers' and was never redone"),
    (458, 0, "a pull that ended after a peer's tombstone was recorded undid the delete on this node"),
    (872, 0, "an older announcement of a path dropped the parked pull of a newer version"),
    (274, 0, "a re-issue renamed the content's author, so its loss made a second conflict copy"),
    (6953, 0, "a full scan's older sight of a path, committed after a scan beside it found nothing, stood"),
    (9585, 0, "the same, after a restart: a file renamed away while the full scan ran was sent forever"),
    (2, 1, "a scan of one path, running when the guard stopped the folder, sent its delete alone"),
    (202, 1, "a confirm answered by restored files stayed in force: a later mass delete was not held"),
    (188, 1, "two losers of one path by one device in one second shared a conflict name: a copy kept twice"),
    (19144, 2, "sim: a quiet period ended on the full scan that held a mass delete, before one saw the restore"),
    (9629236930949261617, 2, "a peer holding our own delete hid a concurrent edit from another peer for good"),
];

#[test]
fn regression_seeds_pass() {
    for (seed, extra, bug) in REGRESSIONS {
        if let Err(e) = run_caught(*seed, *extra).0 {
            panic!("SIM_SEED={seed} SIM_EXTRA={extra} ({bug}) fails again: {e}");
        }
    }
}
