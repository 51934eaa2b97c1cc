//! Deterministic simulation of 2 to 5 nodes in one process (docs/architecture.md, "Simulation").
//!
//! Real: the rules of `syncnode::core` the Index actor runs (`core::replica`: the version clock,
//! what a scan makes of a path, judging a scan result, `needs`, `dispatch`, `took`, `reissued`,
//! held deletes), `core::decide` and its conflict names, and the retry backoff of `core::retry`.
//! Simulated, after the code it stands for: the store (an in-memory `Records`), the Puller's disk
//! work (`pull::execute`, `fs::apply`), the peer sessions (`actors/peer.rs`: a Hello
//! says how far each side holds the other's index, then index updates stream in sequence order on
//! the connection; chunk requests travel beside them, unordered), the filesystem and the network.
//! Everything runs on one thread, one seeded RNG and a virtual clock: a seed is a history.
//!
//! `SIM_SEED=<n>` replays one history (with a trace of its operations); `SIM_SOAK=<seconds>` runs
//! random seeds for that long; `SIM_HISTORIES=<n>` sets how many seeds the default run covers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashSet};
use std::time::{Duration, Instant};

use syncnode::core::replica::{self, Clock, Dispatched, Need, Records, ScanVerdict, Seen};
use syncnode::core::retry::{backoff_ms, FailureKind};
use syncnode::core::{Action, Chunk, DeviceId, FileKind, FileRecord, ShortId};

/// Histories of the default run, and operations per history.
const HISTORIES: u64 = 10_000;
const OPS: usize = 200;
/// The virtual clock starts here (milliseconds since the epoch), so counters look like real ones.
const EPOCH_MS: u64 = 1_700_000_000_000;
/// How long a quiet period may take before the nodes are declared stuck (virtual time).
const QUIET_LIMIT_MS: u64 = 30 * 60 * 1000;
/// The Index's delete hold (`DELETE_QUIET` in actors/index.rs) and the watcher's debounce.
const DELETE_QUIET_MS: u64 = 100;
const DEBOUNCE_MS: u64 = 20;
/// Records per peer in one step of a whole-folder recompute (`replica::NEEDS_PAGE` in the node):
/// small, so that a recompute of the histories' few paths takes several steps.
const SIM_NEEDS_PAGE: usize = 2;
/// Paths users touch. Conflict copies appear beside them.
const PATHS: [&str; 5] = ["a", "b.txt", "d/c", "d/e.txt", "d/f/g"];

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct File {
    content: Content,
    mtime_ns: i64,
}

impl File {
    /// What the Index compares with its record (`DiskState::matches`).
    fn matches(&self, r: &FileRecord) -> bool {
        r.same_disk_state(FileKind::File, size_of(self.content), self.mtime_ns, 0o644)
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
// The network

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

#[derive(Debug, Clone)]
enum Ev {
    Deliver { from: usize, to: usize, conn: u64, msg: Msg },
    Connect { a: usize, b: usize },
    ScanStart { node: usize, life: u64 },
    ScanDone { node: usize, life: u64, records: Vec<FileRecord>, full: bool },
    FlushDeletes { node: usize, life: u64, generation: u64 },
    Retry { node: usize, life: u64, path: String },
    Restart { node: usize },
    Heal { a: usize, b: usize },
    DiskFreed { node: usize },
    RootBack { node: usize },
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

/// A pull in progress (`core::pull` in-flight entry).
#[derive(Clone)]
struct Flight {
    need: Need,
    /// Where the fetched content goes (`None`: nothing to fetch).
    target: Option<String>,
    request: Option<(u64, usize)>,
    superseded: bool,
}

#[derive(Default)]
struct Volatile {
    clock: Clock,
    /// Paths waiting for a scan; "" is the whole folder.
    pending: BTreeSet<String>,
    scanning: bool,
    scan_due: bool,
    pulling: BTreeSet<String>,
    held_deletes: BTreeMap<String, FileRecord>,
    delete_flush: u64,
    recompute_after_scan: bool,
    fault: bool,
    /// Per peer: the session started (its Hello came), and how far our index went to it.
    sent: BTreeMap<usize, u64>,
    queue: BTreeMap<String, Need>,
    parked: BTreeMap<String, Need>,
    failures: BTreeMap<String, (FailureKind, u32, u64)>,
    flights: BTreeMap<String, Flight>,
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
    /// Contents a user overwrote or deleted where they were (the user saw them: a later write that
    /// replaced them, even if no scan saw them in between).
    replaced_by_user: HashSet<Content>,
    /// Per path, how many of its first committed records are proven superseded.
    proven: BTreeMap<String, usize>,
    trace: Vec<String>,
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
    strict_copies: bool,
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
    fn new(seed: u64, tracing: bool, strict_copies: bool) -> Sim {
        let mut rng = Rng(seed);
        let n = rng.range(2, 5) as usize;
        let nodes = (0..n)
            .map(|i| Node {
                id: device(i),
                me: device(i).short(),
                up: false,
                life: 0,
                store: Store { index_id: rng.next() | 1, ..Store::default() },
                disk: Disk::default(),
                v: Volatile::default(),
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
            strict_copies,
        };
        for i in 0..n {
            sim.start(i);
        }
        sim
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if self.log.tracing {
            let l = format!("{:>9} {}", self.now - EPOCH_MS, line());
            self.log.trace.push(l);
        }
    }

    fn at(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse(Queued { at: self.now + delay, seq: self.seq, ev }));
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
        // A peer came: every need is computed again (`RecomputeNeeds`).
        for x in [a, b] {
            self.recompute_all(x);
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
            let waiting: Vec<String> = self.nodes[x]
                .v
                .flights
                .iter()
                .filter(|(_, f)| f.request.is_some_and(|(_, peer)| peer == y))
                .map(|(p, _)| p.clone())
                .collect();
            for path in waiting {
                self.finish(x, &path, Err(FailureKind::Transient));
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
                let disk = &self.nodes[to].disk;
                let content =
                    disk.files.get(&path).map(|f| f.content).filter(|c| hash_of(*c) == hash && !disk.root_gone);
                self.send(to, from, Msg::Response { id, content });
            }
            Msg::Response { id, content } => self.response(to, id, content),
        }
    }

    /// Our index since what `peer` has, in sequence order (the Peer's index sender).
    fn send_index(&mut self, node: usize, peer: usize) {
        let Some(&after) = self.nodes[node].v.sent.get(&peer) else { return };
        if self.nodes[node].v.fault {
            return;
        }
        let records = self.nodes[node].store.since(after);
        if records.is_empty() {
            return;
        }
        let last = records.last().expect("one").sequence;
        self.nodes[node].v.sent.insert(peer, last);
        let index_id = self.nodes[node].store.index_id;
        self.send(node, peer, Msg::Index { index_id, records });
    }

    // ----- the Index

    fn start(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.up = true;
        n.life += 1;
        n.v = Volatile::default();
        // `remove_stale_temp_files`.
        n.disk.temps.clear();
        n.v.fault = n.disk.root_gone;
        n.v.pending.insert(String::new());
        self.trace(|| format!("start {i}"));
        self.schedule_scan(i, 0);
        for j in 0..self.nodes.len() {
            if j != i {
                self.maybe_dial(i, j);
            }
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
        n.v = Volatile::default();
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

    fn tick(&mut self, i: usize) -> u64 {
        let now = self.now;
        self.nodes[i].v.clock.tick(now)
    }

    /// The Index's `commit`: into the store, then announced to every connected peer.
    fn commit(&mut self, i: usize, records: Vec<FileRecord>) {
        if records.is_empty() {
            return;
        }
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

    fn local_changed(&mut self, i: usize, path: &str) {
        if !self.nodes[i].up {
            return;
        }
        self.nodes[i].v.pending.insert(path.to_string());
        self.schedule_scan(i, DEBOUNCE_MS);
    }

    fn schedule_scan(&mut self, i: usize, delay: u64) {
        let n = &mut self.nodes[i];
        if n.v.scan_due {
            return;
        }
        n.v.scan_due = true;
        let life = n.life;
        self.at(delay, Ev::ScanStart { node: i, life });
    }

    /// `start_scan` and the scanner: the records for what changed, computed now, handed in later.
    fn scan_start(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.v.scan_due = false;
        if n.disk.root_gone {
            n.v.pending.clear();
            if !n.v.fault {
                self.enter_fault(i);
            }
            return;
        }
        if n.v.scanning || n.v.pending.iter().all(|p| n.v.pulling.contains(p)) {
            return;
        }
        let (waiting, scope): (BTreeSet<String>, BTreeSet<String>) =
            std::mem::take(&mut n.v.pending).into_iter().partition(|p| n.v.pulling.contains(p));
        n.v.pending = waiting;
        n.v.scanning = true;
        let full = scope.contains("");
        let paths: BTreeSet<String> =
            if full { n.disk.files.keys().chain(n.store.local.keys()).cloned().collect() } else { scope };
        let now = self.tick(i);
        let n = &self.nodes[i];
        let mut records = Vec::new();
        for path in paths {
            if n.v.pulling.contains(&path) {
                continue;
            }
            let previous = n.store.local.get(&path);
            match n.disk.files.get(&path) {
                Some(f) if previous.is_some_and(|p| f.matches(p)) => {}
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
        let life = n.life;
        let delay = self.rng.range(1, 60);
        self.at(delay, Ev::ScanDone { node: i, life, records, full });
    }

    /// `Handler<ScanDone>`.
    fn scan_done(&mut self, i: usize, records: Vec<FileRecord>, full: bool) {
        self.nodes[i].v.scanning = false;
        if self.nodes[i].disk.root_gone {
            self.enter_fault(i);
            return;
        }
        let mut fresh = Vec::new();
        for record in records {
            let current = self.nodes[i].store.local.get(&record.path);
            match replica::judge_scanned(&record, current) {
                ScanVerdict::Stale => {
                    self.nodes[i].v.pending.insert(record.path);
                }
                ScanVerdict::HoldDelete => {
                    self.nodes[i].v.held_deletes.insert(record.path.clone(), record);
                }
                ScanVerdict::Commit => fresh.push(record),
            }
        }
        self.commit(i, fresh);
        if full {
            self.flush_deletes(i);
        } else if !self.nodes[i].v.held_deletes.is_empty() {
            let n = &mut self.nodes[i];
            n.v.delete_flush += 1;
            let (life, generation) = (n.life, n.v.delete_flush);
            self.at(DELETE_QUIET_MS, Ev::FlushDeletes { node: i, life, generation });
        }
        if std::mem::take(&mut self.nodes[i].v.recompute_after_scan) && !self.nodes[i].v.fault {
            self.recompute_all(i);
        }
        if !self.nodes[i].v.pending.is_empty() {
            self.schedule_scan(i, 0);
        }
    }

    fn flush_deletes(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let held = std::mem::take(&mut n.v.held_deletes);
        if n.disk.root_gone {
            self.enter_fault(i);
            return;
        }
        let (deletes, again): (Vec<FileRecord>, Vec<FileRecord>) = held.into_values().partition(|r| {
            let absent = !n.disk.files.contains_key(&r.path);
            replica::delete_still_holds(r, n.store.local.get(&r.path), absent)
        });
        n.v.pending.extend(again.into_iter().map(|r| r.path));
        self.commit(i, deletes);
        if !self.nodes[i].v.pending.is_empty() {
            self.schedule_scan(i, 0);
        }
    }

    fn enter_fault(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.v.pending.clear();
        n.v.held_deletes.clear();
        if n.v.fault {
            return;
        }
        self.trace(|| format!("node {i} folder stopped"));
        let n = &mut self.nodes[i];
        n.v.fault = true;
        n.v.queue.clear();
        n.v.parked.clear();
        n.v.failures.clear();
    }

    fn leave_fault(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if !n.v.fault || !n.up {
            return;
        }
        n.v.fault = false;
        n.v.recompute_after_scan = true;
        n.v.pending.insert(String::new());
        self.trace(|| format!("node {i} folder resumed"));
        self.schedule_scan(i, 0);
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

    fn recompute_all(&mut self, i: usize) {
        if !self.nodes[i].up {
            return;
        }
        // A page at a time as the Index does (`Handler<RecomputeStep>`): the first page replaces
        // the Puller's list, the others add to it. Small pages, so that histories cross them.
        let devices = self.devices(i);
        let mut after = None;
        let mut first = true;
        loop {
            let Ok((items, next)) =
                replica::needs_page(&self.nodes[i].store, &devices, after.as_deref(), SIM_NEEDS_PAGE);
            self.dispatch(i, items, first, Vec::new());
            first = false;
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }

    /// `Handler<RecomputePaths>`.
    fn recompute_paths(&mut self, i: usize, paths: Vec<String>) {
        let devices = self.devices(i);
        let store = &self.nodes[i].store;
        let announced: Vec<FileRecord> = paths
            .iter()
            .flat_map(|p| {
                devices.iter().filter_map(move |d| {
                    let Ok(r) = store.remote(d, p);
                    r
                })
            })
            .collect();
        let Ok(items) = replica::needs(store, &devices, Some(&announced));
        self.dispatch(i, items, false, paths);
    }

    /// The Index's `dispatch`, then the Puller's `Handler<Needs>`.
    fn dispatch(&mut self, i: usize, items: Vec<Need>, complete: bool, settled: Vec<String>) {
        if self.nodes[i].v.fault {
            return;
        }
        let Dispatched { commit, work, settled } = replica::dispatch(items, complete, settled, false, &|_| false);
        let now = self.now;
        self.commit(i, commit);
        let v = &mut self.nodes[i].v;
        if complete {
            v.queue.clear();
            let wanted: HashSet<&str> = work.iter().map(|w| w.remote.path.as_str()).collect();
            v.parked.retain(|p, _| wanted.contains(p.as_str()));
            let flights = &v.flights;
            v.failures.retain(|p, _| wanted.contains(p.as_str()) || flights.contains_key(p));
        }
        for p in &settled {
            v.parked.remove(p);
            v.failures.remove(p);
        }
        for item in work {
            let path = item.remote.path.clone();
            match v.flights.get_mut(&path) {
                None => {
                    // Parked until its retry is due, unless it is a different version now.
                    let waiting = v.failures.get(&path).is_some_and(|f| now < f.2);
                    let same = v.parked.get(&path).is_some_and(|p| p.remote.version == item.remote.version);
                    if waiting && (same || !v.parked.contains_key(&path)) {
                        v.parked.insert(path, item);
                    } else {
                        v.parked.remove(&path);
                        v.queue.insert(path, item);
                    }
                }
                Some(f) if f.need.remote.version == item.remote.version => {
                    for d in item.sources {
                        if !f.need.sources.contains(&d) {
                            f.need.sources.push(d);
                        }
                    }
                }
                Some(f) => f.superseded = true,
            }
        }
        self.pump(i);
    }

    // ----- the Puller

    fn pump(&mut self, i: usize) {
        if self.nodes[i].v.fault || !self.nodes[i].up {
            return;
        }
        while let Some((path, need)) = self.nodes[i].v.queue.pop_first() {
            if self.nodes[i].v.flights.contains_key(&path) {
                continue;
            }
            self.execute(i, need);
        }
    }

    fn up(&self, a: usize, b: usize) -> bool {
        self.links[a.min(b)][a.max(b)].up
    }

    fn source(&mut self, i: usize, need: &Need) -> Option<usize> {
        let connected: Vec<usize> = (0..self.nodes.len())
            .filter(|&j| j != i && need.sources.contains(&self.nodes[j].id) && self.up(i, j))
            .collect();
        (!connected.is_empty()).then(|| *self.rng.pick(&connected))
    }

    /// `execute`: the disk work of one need, up to the chunk request it may wait for.
    fn execute(&mut self, i: usize, need: Need) {
        let path = need.remote.path.clone();
        self.trace(|| {
            format!(
                "node {i} execute {path} {:?} local={:?} remote={:?}",
                need.action,
                need.local.as_ref().map(|l| (content_of(l), &l.version)),
                (content_of(&need.remote), &need.remote.version)
            )
        });
        self.nodes[i].v.pulling.insert(path.clone());
        let mut flight = Flight { need: need.clone(), target: None, request: None, superseded: false };
        let remote = &need.remote;
        match &need.action {
            Action::Take if remote.deleted => {
                self.nodes[i].v.flights.insert(path.clone(), flight);
                let disk = &mut self.nodes[i].disk;
                if let Some(f) = disk.files.get(&path) {
                    // `remove_keeping`: only what the index recorded is removed.
                    if !need.local.as_ref().filter(|l| !l.deleted).is_some_and(|l| f.matches(l)) {
                        return self.finish(i, &path, Err(FailureKind::Transient));
                    }
                    disk.files.remove(&path);
                    disk.durable.remove(&path);
                }
                let record = remote.clone();
                return self.applied_took(i, &path, record, None);
            }
            Action::Take => flight.target = Some(path.clone()),
            Action::ConflictLocalLoses { copy } => {
                // `move_aside`: our file goes to the copy name first (or is dropped when that copy
                // exists already).
                // A file that is gone cannot be renamed: the pull fails, and the scan decides.
                let disk = &mut self.nodes[i].disk;
                let Some(f) = disk.files.get(&path).copied() else {
                    self.nodes[i].v.flights.insert(path.clone(), flight);
                    return self.finish(i, &path, Err(FailureKind::Transient));
                };
                let name = free_name(disk, copy, f.content);
                disk.files.remove(&path);
                disk.durable.remove(&path);
                if let Ok(name) = &name {
                    disk.files.insert(name.clone(), f);
                    disk.durable.insert(name.clone(), f);
                    self.local_changed(i, name);
                }
                let name = name.unwrap_or_else(|existing| existing);
                self.log.losers.entry((path.clone(), f.content)).or_default().insert(name);
                flight.target = Some(path.clone());
            }
            Action::ConflictRemoteLoses { copy } => {
                let c = content_of(remote).expect("a conflict is between edits");
                match free_name(&self.nodes[i].disk, copy, c) {
                    Ok(name) => flight.target = Some(name),
                    Err(existing) => {
                        self.log.losers.entry((path.clone(), c)).or_default().insert(existing);
                        self.nodes[i].v.flights.insert(path.clone(), flight);
                        return self.reissue(i, &path);
                    }
                }
            }
            Action::KeepLocal => {
                self.nodes[i].v.flights.insert(path.clone(), flight);
                return self.reissue(i, &path);
            }
            Action::Skip | Action::Merge => {
                self.nodes[i].v.flights.insert(path.clone(), flight);
                return self.finish(i, &path, Ok(()));
            }
        }
        // Nothing is created before a connected source is known.
        let Some(src) = self.source(i, &need) else {
            self.nodes[i].v.flights.insert(path.clone(), flight);
            return self.finish(i, &path, Err(FailureKind::Transient));
        };
        let id = self.next_request;
        self.next_request += 1;
        flight.request = Some((id, src));
        let target = flight.target.clone().expect("a target");
        self.nodes[i].disk.temps.insert(target);
        self.nodes[i].v.flights.insert(path.clone(), flight);
        self.send(i, src, Msg::Request { id, path: path.clone(), hash: need.remote.chunks[0].hash });
    }

    fn response(&mut self, i: usize, id: u64, content: Option<Content>) {
        let Some(path) =
            self.nodes[i].v.flights.iter().find(|(_, f)| f.request.is_some_and(|r| r.0 == id)).map(|(p, _)| p.clone())
        else {
            return;
        };
        let flight = self.nodes[i].v.flights[&path].clone();
        let target = flight.target.clone().expect("a target");
        self.nodes[i].disk.temps.remove(&target);
        let Some(content) = content else { return self.finish(i, &path, Err(FailureKind::Transient)) };
        let disk = &mut self.nodes[i].disk;
        if disk.root_gone {
            return self.finish(i, &path, Err(FailureKind::Transient));
        }
        if disk.full {
            return self.finish(i, &path, Err(FailureKind::NeedsSpace));
        }
        let remote = flight.need.remote.clone();
        assert_eq!(Some(content), content_of(&remote), "a pull wrote content that is not the version's");
        // The rename into place, if the target is still what the index recorded (`check_unchanged`).
        let local = if target == path { flight.need.local.clone().filter(|l| !l.deleted) } else { None };
        let ok = match (disk.files.get(&target), &local) {
            (None, _) => true,
            (Some(f), Some(l)) => f.matches(l),
            (Some(_), None) => false,
        };
        if !ok {
            return self.finish(i, &path, Err(FailureKind::Transient));
        }
        let file = File { content, mtime_ns: remote.mtime_ns };
        disk.files.insert(target.clone(), file);
        disk.durable.insert(target.clone(), file);
        match &flight.need.action {
            Action::ConflictRemoteLoses { .. } => {
                self.log.losers.entry((path.clone(), content)).or_default().insert(target.clone());
                self.local_changed(i, &target);
                self.reissue(i, &path)
            }
            _ => self.applied_took(i, &path, remote, Some((file.mtime_ns, 0o644))),
        }
    }

    /// `Handler<Applied>` for `Outcome::Took`.
    fn applied_took(&mut self, i: usize, path: &str, record: FileRecord, disk: Option<(i64, u32)>) {
        let current = self.nodes[i].store.local.get(path);
        let again = replica::overtaken(&record, current);
        let record = replica::took(record, current, disk);
        self.commit(i, vec![record]);
        self.finish(i, path, Ok(()));
        if again {
            self.recompute_paths(i, vec![path.to_string()]);
        }
    }

    /// `Handler<Applied>` for `Outcome::Reissue`.
    fn reissue(&mut self, i: usize, path: &str) {
        let other = self.nodes[i].v.flights[path].need.remote.version.clone();
        if let Some(local) = self.nodes[i].store.local.get(path).cloned() {
            let now = self.tick(i);
            let me = self.nodes[i].me;
            let record = replica::reissued(local, &other, me, now);
            self.commit(i, vec![record]);
        }
        self.finish(i, path, Ok(()));
    }

    /// `Handler<Finished>`, and the Index's `Pulling { active: false }`.
    fn finish(&mut self, i: usize, path: &str, result: Result<(), FailureKind>) {
        let Some(flight) = self.nodes[i].v.flights.remove(path) else { return };
        if let Some(t) = &flight.target {
            self.nodes[i].disk.temps.remove(t);
        }
        let n = &mut self.nodes[i];
        n.v.pulling.remove(path);
        n.v.pending.insert(path.to_string());
        self.schedule_scan(i, 0);
        if flight.superseded {
            self.recompute_paths(i, vec![path.to_string()]);
        }
        let v = &mut self.nodes[i].v;
        match result {
            Ok(()) => {
                v.failures.remove(path);
            }
            Err(kind) => {
                let attempts = v.failures.get(path).map_or(0, |f| f.1) + 1;
                let delay = backoff_ms(kind, attempts);
                v.failures.insert(path.to_string(), (kind, attempts, self.now + delay));
                if !flight.superseded {
                    v.parked.insert(path.to_string(), flight.need);
                }
                let life = self.nodes[i].life;
                self.trace(|| format!("node {i} pull of {path} failed ({kind:?}), retry in {delay}"));
                self.at(delay, Ev::Retry { node: i, life, path: path.to_string() });
            }
        }
        self.pump(i);
    }

    fn retry(&mut self, i: usize, path: String) {
        if self.nodes[i].v.fault || self.nodes[i].v.parked.remove(&path).is_none() {
            return;
        }
        self.recompute_paths(i, vec![path]);
    }

    // ----- the loop

    fn handle(&mut self, ev: Ev) {
        let live = |s: &Sim, node: usize, life: u64| s.nodes[node].up && s.nodes[node].life == life;
        match ev {
            Ev::Deliver { from, to, conn, msg } => self.deliver(from, to, conn, msg),
            Ev::Connect { a, b } => self.connect(a, b),
            Ev::ScanStart { node, life } if live(self, node, life) => self.scan_start(node),
            Ev::ScanDone { node, life, records, full } if live(self, node, life) => self.scan_done(node, records, full),
            Ev::FlushDeletes { node, life, generation }
                if live(self, node, life) && self.nodes[node].v.delete_flush == generation =>
            {
                self.flush_deletes(node)
            }
            Ev::Retry { node, life, path } if live(self, node, life) => self.retry(node, path),
            Ev::Restart { node } if !self.nodes[node].up => self.start(node),
            Ev::Restart { .. } => {}
            Ev::Heal { a, b } => {
                self.link(a, b).partitioned = false;
                self.maybe_dial(a, b);
            }
            Ev::DiskFreed { node } => {
                self.nodes[node].disk.full = false;
                // The free space is looked at every second: parked pulls that need it go now.
                let due: Vec<String> = self.nodes[node]
                    .v
                    .failures
                    .iter()
                    .filter(|(_, f)| f.0 == FailureKind::NeedsSpace)
                    .map(|(p, _)| p.clone())
                    .collect();
                for p in due {
                    self.retry(node, p);
                }
            }
            Ev::RootBack { node } => {
                self.nodes[node].disk.root_gone = false;
                self.leave_fault(node);
            }
            _ => {}
        }
    }

    /// Runs every event due by `until`.
    fn run_until(&mut self, until: u64) {
        while let Some(Reverse(q)) = self.events.peek() {
            if q.at > until {
                break;
            }
            let Reverse(q) = self.events.pop().expect("peeked");
            self.now = q.at;
            self.handle(q.ev);
        }
        self.now = self.now.max(until);
    }

    // ----- the users and the faults

    fn op(&mut self) {
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
                let file = File { content, mtime_ns };
                self.trace(|| format!("node {i} user writes {path} = {content}"));
                if let Some(old) = self.nodes[i].disk.files.insert(path.clone(), file) {
                    self.log.replaced_by_user.insert(old.content);
                }
                if self.rng.chance(30) {
                    self.nodes[i].disk.durable.insert(path.clone(), file);
                }
                self.local_changed(i, &path);
            }
            45..=54 if usable => {
                if let Some(old) = self.nodes[i].disk.files.remove(&path) {
                    self.log.replaced_by_user.insert(old.content);
                    self.trace(|| format!("node {i} user deletes {path}"));
                    self.local_changed(i, &path);
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
                        self.local_changed(i, &path);
                        self.local_changed(i, &to);
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
                if self.nodes[i].up {
                    self.enter_fault(i);
                }
                let delay = self.rng.range(500, 10_000);
                self.at(delay, Ev::RootBack { node: i });
            }
            _ => {}
        }
        let wait = if self.rng.chance(15) { self.rng.range(500, 3000) } else { self.rng.range(0, 200) };
        self.run_until(self.now + wait);
    }

    /// Ends every fault, lets the nodes settle, and checks the invariants.
    fn quiet(&mut self) -> Result<(), String> {
        self.trace(|| "quiet".to_string());
        for i in 0..self.nodes.len() {
            if self.nodes[i].disk.root_gone {
                self.nodes[i].disk.root_gone = false;
                self.leave_fault(i);
            }
            if self.nodes[i].disk.full {
                self.handle(Ev::DiskFreed { node: i });
            }
            if !self.nodes[i].up {
                self.start(i);
            }
        }
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                self.links[a][b].partitioned = false;
                self.maybe_dial(a, b);
            }
        }
        let limit = self.now + QUIET_LIMIT_MS;
        let mut budget = 1_000_000u32;
        while let Some(Reverse(q)) = self.events.pop() {
            budget -= 1;
            if q.at > limit || budget == 0 {
                return Err("the nodes did not settle within 30 virtual minutes".into());
            }
            self.now = q.at;
            self.handle(q.ev);
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
        // Every conflict loser is kept as a conflict copy. Exactly once (one of the names its copies
        // got holds it, and only one) only under SIM_STRICT_COPIES=1: two known bugs break it
        // (docs/architecture.md, "Simulation").
        for ((path, c), names) in &self.log.losers {
            if self.log.lost_to_crash.contains(c) {
                continue;
            }
            let kept = first.iter().filter(|(p, v)| is_copy(p) && *v == c).count();
            if kept == 0 {
                return Err(format!("the loser {c} of {path} is not kept (its copies were {names:?}): {first:?}"));
            }
            let copies = names.iter().filter(|n| first.get(*n) == Some(c)).count();
            if self.strict_copies && copies != 1 {
                return Err(format!("the loser {c} of {path} is kept {copies} times (as {names:?}): {first:?}"));
            }
        }
        Ok(proven)
    }
}

/// `fs::apply::free_name`: `copy`, or a numbered variant; or the name that holds `content` already.
fn free_name(disk: &Disk, copy: &str, content: Content) -> Result<String, String> {
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
            Some(f) if f.content == content => return Err(name),
            Some(_) => {}
        }
    }
    unreachable!()
}

/// One history: its nodes, `OPS` operations with a quiet period every so often, and the checks.
fn run(seed: u64, tracing: bool, strict_copies: bool) -> (Result<(), String>, Vec<String>) {
    let mut sim = Sim::new(seed, tracing, strict_copies);
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
    (result, std::mem::take(&mut sim.log.trace))
}

fn strict_copies() -> bool {
    std::env::var("SIM_STRICT_COPIES").is_ok_and(|v| v == "1")
}

fn run_caught(seed: u64, strict: bool) -> Result<(), String> {
    match std::panic::catch_unwind(|| run(seed, false, strict).0) {
        Ok(r) => r,
        Err(e) => Err(e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())),
    }
}

/// Runs `seeds` on the machine's cores (each history on one thread, alone: it stays deterministic).
fn run_many(seeds: impl Iterator<Item = u64> + Send, deadline: Option<Instant>) -> (u64, Vec<(u64, String)>) {
    let seeds = std::sync::Mutex::new(seeds);
    let failures = std::sync::Mutex::new(Vec::new());
    let count = std::sync::atomic::AtomicU64::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return;
                }
                let Some(seed) = seeds.lock().unwrap().next() else { return };
                if let Err(e) = run_caught(seed, strict_copies()) {
                    eprintln!("simulation failed: SIM_SEED={seed} cargo test --release --test sim -- {e}");
                    failures.lock().unwrap().push((seed, e));
                }
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            });
        }
    });
    (count.into_inner(), failures.into_inner().unwrap())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number")))
}

#[test]
fn seeded_histories_converge_and_lose_nothing() {
    if let Some(seed) = env_u64("SIM_SEED") {
        let (result, trace) = run(seed, true, strict_copies());
        for line in &trace {
            eprintln!("{line}");
        }
        if let Err(e) = result {
            panic!("SIM_SEED={seed}: {e}");
        }
        return;
    }
    let started = Instant::now();
    let (count, failures) = match env_u64("SIM_SOAK") {
        Some(secs) => {
            let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
            let seeds = (0..).map(move |k: u64| base.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            run_many(seeds, Some(started + Duration::from_secs(secs)))
        }
        None => run_many(0..env_u64("SIM_HISTORIES").unwrap_or(HISTORIES), None),
    };
    let secs = started.elapsed().as_secs_f64();
    eprintln!("simulation: {count} histories of {OPS} operations in {secs:.1} s ({:.0}/s)", count as f64 / secs);
    assert!(
        failures.is_empty(),
        "{} histories failed; the first: SIM_SEED={} ({})",
        failures.len(),
        failures[0].0,
        failures[0].1
    );
}

/// Seeds that once failed, kept as regression cases (the bug each found is named), and whether
/// they are run with "exactly once" for conflict copies (SIM_STRICT_COPIES).
const REGRESSIONS: &[(u64, bool, &str)] = &[
    (297, false, "a held local delete dropped because a re-issue changed the record was never looked at again"),
    (280, false, "a pull that ended after a merge regressed the record below its peers' and was never redone"),
    (458, false, "a pull that ended after a peer's tombstone was recorded undid the delete on this node"),
    (872, false, "an older announcement of a path dropped the parked pull of a newer version"),
    (274, true, "a re-issue renamed the content's author, so its loss made a second conflict copy"),
];

#[test]
fn regression_seeds_pass() {
    for (seed, strict, bug) in REGRESSIONS {
        if let Err(e) = run_caught(*seed, *strict) {
            panic!("SIM_SEED={seed} ({bug}) fails again: {e}");
        }
    }
}
