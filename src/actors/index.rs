//! The Index actor: the only writer of the RocksDB index. It runs scans (on blocking threads),
//! commits their results, stores what peers announce, asks `core::decide` what each announcement
//! means, hands the work to the folder's Puller, and records what the Puller applied.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;

use super::status::NodeState;
use super::messages::*;
use super::now_millis;
use super::puller::Puller;
use crate::config::{FolderConfig, FolderMode};
use crate::core::{decide, Action, DeviceId, FileRecord, ShortId};
use crate::fs::chunker::ChunkParams;
use crate::fs::ignore::IgnoreRules;
use crate::fs::scan::{remove_stale_temp_files, KnownRecords, Scanner};
use crate::net::wire;
use crate::store::{Progress, Store};

pub mod modes;

/// Per-folder state the Index keeps.
struct FolderState {
    config: FolderConfig,
    ignore: IgnoreRules,
    /// A scan is running; paths that change meanwhile wait here.
    scanning: bool,
    pending: BTreeSet<String>,
    /// Paths to hash even if size and mtime match their record.
    suspect: HashSet<String>,
    /// Paths the Puller is writing now: not scanned until it is done with them.
    pulling: HashSet<String>,
    puller: Option<Addr<Puller>>,
}

pub struct IndexActor {
    store: Arc<Store>,
    me: ShortId,
    params: ChunkParams,
    folders: HashMap<String, FolderState>,
    subscribers: Vec<Recipient<IndexUpdated>>,
    state: Arc<NodeState>,
    /// The last value this node put in its own version counters. Every new version gets a larger
    /// one: two different versions of a path made by this node must never carry the same counter,
    /// or one would wrongly look like it had seen the other.
    clock: u64,
    tombstone_ttl: std::time::Duration,
}

/// The scanner's view of our records, straight from the store.
struct StoreView<'a> {
    store: &'a Store,
    folder: &'a str,
    suspect: &'a HashSet<String>,
}

impl KnownRecords for StoreView<'_> {
    fn get(&self, path: &str) -> Option<FileRecord> {
        let mut record = self.store.get(self.folder, path).ok().flatten()?;
        if self.suspect.contains(path) {
            record.mtime_ns = i64::MIN; // never matches the disk: the file is hashed again
        }
        Some(record)
    }
    fn under(&self, dir: &str) -> Vec<FileRecord> {
        if dir.is_empty() {
            self.store.local_records(self.folder).collect()
        } else {
            self.store.local_records_under(self.folder, dir)
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct ScanDone {
    folder: String,
    records: Vec<FileRecord>,
}

/// Wires the Pullers in after they start (they need the Index's address too).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPuller {
    pub folder: String,
    pub puller: Addr<Puller>,
}

impl IndexActor {
    pub fn new(store: Arc<Store>, me: DeviceId, chunk_size: u32, tombstone_ttl: std::time::Duration, folders: &[FolderConfig], state: Arc<NodeState>) -> Self {
        let folders = folders
            .iter()
            .map(|f| {
                let state = FolderState { config: f.clone(), ignore: IgnoreRules::load(&f.path), scanning: false, pending: BTreeSet::new(), suspect: HashSet::new(), pulling: HashSet::new(), puller: None };
                (f.id.clone(), state)
            })
            .collect();
        IndexActor { store, me: me.short(), params: ChunkParams::new(chunk_size), folders, subscribers: Vec::new(), state, clock: 0, tombstone_ttl }
    }

    /// A fresh counter value: milliseconds since the epoch, or one more than the last one issued.
    fn tick(&mut self) -> u64 {
        self.clock = now_millis().max(self.clock + 1);
        self.clock
    }

    fn start_scan(&mut self, folder: &str, ctx: &mut Context<Self>) {
        let Some(state) = self.folders.get_mut(folder) else { return };
        if state.scanning || state.pending.iter().all(|p| state.pulling.contains(p)) {
            return;
        }
        state.scanning = true;
        self.state.gauges(folder).scanning.store(true, std::sync::atomic::Ordering::Relaxed);
        let (waiting, scope): (BTreeSet<String>, BTreeSet<String>) = std::mem::take(&mut state.pending).into_iter().partition(|p| state.pulling.contains(p));
        state.pending = waiting;
        let scope: Vec<String> = scope.into_iter().collect();
        if scope.iter().any(|p| p == crate::core::path::IGNORE_FILE) {
            state.ignore = IgnoreRules::load(&state.config.path);
        }
        let scanner = Scanner { root: state.config.path.clone(), params: self.params, me: self.me, ignore: state.ignore.clone(), busy: state.pulling.clone() };
        let suspect = std::mem::take(&mut state.suspect);
        let store = self.store.clone();
        let folder = folder.to_string();
        let full = scope.iter().any(|p| p.is_empty());
        let now = self.tick();
        let addr = ctx.address();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let view = StoreView { store: &store, folder: &folder, suspect: &suspect };
            let records = match scanner.scan(&scope, &view, now) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(folder = %folder, error = %e, "scan failed");
                    Vec::new()
                }
            };
            let ms = started.elapsed().as_millis() as u64;
            if full {
                tracing::debug!(folder = %folder, changed = records.len(), ms, "full scan done");
            } else {
                tracing::debug!(folder = %folder, paths = scope.len(), changed = records.len(), ms, "scan done");
            }
            addr.do_send(ScanDone { folder, records });
        });
    }

    fn notify(&mut self, folder: &str) {
        let Ok(meta) = self.store.folder_meta(folder) else { return };
        let msg = IndexUpdated { folder: folder.to_string(), max_sequence: meta.max_sequence };
        self.subscribers.retain(|s| s.connected());
        for s in &self.subscribers {
            s.do_send(msg.clone());
        }
    }

    fn commit(&mut self, folder: &str, records: Vec<FileRecord>) -> bool {
        if records.is_empty() {
            return false;
        }
        match self.store.commit_local(folder, records) {
            Ok(_) => {
                self.notify(folder);
                true
            }
            Err(e) => {
                tracing::error!(folder, error = %e, "cannot write the index");
                false
            }
        }
    }

    /// Needs for the given remote records (or, with `None`, for everything every peer announced).
    fn needs(&self, folder: &str, records: Option<&[(DeviceId, FileRecord)]>) -> Vec<NeedItem> {
        let devices = self.store.remote_devices(folder).unwrap_or_default();
        let mut best: HashMap<String, FileRecord> = HashMap::new();
        let mut consider = |remote: &FileRecord| {
            match best.get(&remote.path) {
                Some(cur) if cur.version.dominates(&remote.version) => {}
                Some(cur) if remote.version.dominates(&cur.version) => {
                    best.insert(remote.path.clone(), remote.clone());
                }
                // Two peers disagree concurrently: decide against ours one at a time; the
                // outcome of the first changes ours, and the next round takes the other.
                Some(_) => {}
                None => {
                    best.insert(remote.path.clone(), remote.clone());
                }
            }
        };
        match records {
            Some(list) => list.iter().for_each(|(_, r)| consider(r)),
            None => {
                for d in &devices {
                    self.store.remote_records(d, folder).for_each(|r| consider(&r));
                }
            }
        }
        let mut items = Vec::new();
        for (path, remote) in best {
            let local = self.store.get(folder, &path).ok().flatten();
            let action = decide(local.as_ref(), &remote);
            if action == Action::Skip {
                continue;
            }
            let sources = devices
                .iter()
                .filter(|d| self.store.remote(d, folder, &path).ok().flatten().is_some_and(|r| r.version == remote.version))
                .copied()
                .collect();
            items.push(NeedItem { action, remote, local, sources });
        }
        items
    }

    /// Settles what needs no disk work right here; sends the rest to the Puller.
    fn dispatch(&mut self, folder: &str, items: Vec<NeedItem>, complete: bool) {
        let Some(state) = self.folders.get(folder) else { return };
        let mode = state.config.mode;
        let puller = state.puller.clone();
        let mut direct = Vec::new();
        let mut work = Vec::new();
        for item in items {
            let ignored = state.ignore.is_ignored(&item.remote.path, item.remote.kind == crate::core::FileKind::Directory);
            match &item.action {
                _ if ignored => {}
                Action::Merge => {
                    let mut merged = item.local.clone().expect("merge has a local record");
                    merged.version = merged.version.merged(&item.remote.version);
                    direct.push(merged);
                }
                // A tombstone for a path we do not have: record it, so it travels on.
                Action::Take if item.remote.deleted && item.local.as_ref().is_none_or(|l| l.deleted) => {
                    let mut r = item.remote.clone();
                    r.sequence = item.local.as_ref().map_or(0, |l| l.sequence);
                    direct.push(r);
                }
                _ if mode == FolderMode::SendOnly => {}
                _ => work.push(item),
            }
        }
        self.commit(folder, direct);
        if let Some(p) = puller {
            if !work.is_empty() || complete {
                p.do_send(Needs { items: work, complete });
            }
        }
    }
}

impl IndexActor {
    /// Forgets deletes older than `sync.tombstone_ttl`. A peer that was offline for longer and
    /// still has such a file brings it back (it is then a new file to everyone): the setting is the
    /// longest absence after which a delete is still honoured.
    fn purge(&mut self) {
        let cutoff = now_millis().saturating_sub(self.tombstone_ttl.as_millis() as u64);
        for folder in self.folders.keys() {
            match self.store.purge_tombstones(folder, cutoff) {
                Ok(0) => {}
                Ok(n) => tracing::info!(folder = %folder, purged = n, "forgot old deletes"),
                Err(e) => tracing::warn!(folder = %folder, error = %e, "cannot purge tombstones"),
            }
        }
    }
}

impl Actor for IndexActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.purge();
        ctx.run_interval(std::time::Duration::from_secs(3600), |this, _| this.purge());
        let ids: Vec<String> = self.folders.keys().cloned().collect();
        for id in ids {
            let state = self.folders.get_mut(&id).expect("folder");
            let removed = remove_stale_temp_files(&state.config.path);
            if removed > 0 {
                tracing::info!(folder = %id, removed, "removed temp files left by an interrupted run");
            }
            state.pending.insert(String::new());
            self.start_scan(&id, ctx);
        }
    }
}

impl Handler<SetPuller> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: SetPuller, _: &mut Context<Self>) {
        if let Some(state) = self.folders.get_mut(&msg.folder) {
            state.puller = Some(msg.puller);
        }
    }
}

impl Handler<Subscribe> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        self.subscribers.push(msg.0);
    }
}

impl Handler<LocalChanged> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: LocalChanged, ctx: &mut Context<Self>) {
        let Some(state) = self.folders.get_mut(&msg.folder) else { return };
        state.pending.extend(msg.paths);
        self.start_scan(&msg.folder, ctx);
    }
}

impl Handler<Rehash> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: Rehash, ctx: &mut Context<Self>) {
        let Some(state) = self.folders.get_mut(&msg.folder) else { return };
        tracing::warn!(folder = %msg.folder, path = %msg.path, "content no longer matches the index; hashing it again");
        state.suspect.insert(msg.path.clone());
        state.pending.insert(msg.path);
        self.start_scan(&msg.folder, ctx);
    }
}

impl Handler<ScanDone> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: ScanDone, ctx: &mut Context<Self>) {
        let mut fresh = Vec::new();
        let mut stale = Vec::new();
        for record in msg.records {
            // The scan compared against the record at `record.sequence`; if that changed since
            // (a pull landed meanwhile), the result is stale: look at the path again.
            let current = self.store.get(&msg.folder, &record.path).ok().flatten().map_or(0, |r| r.sequence);
            if current == record.sequence {
                if record.deleted {
                    tracing::info!(folder = %msg.folder, path = %record.path, "local delete");
                } else {
                    tracing::debug!(folder = %msg.folder, path = %record.path, size = record.size, "local change");
                }
                fresh.push(record);
            } else {
                stale.push(record.path);
            }
        }
        self.commit(&msg.folder, fresh);
        if let Some(state) = self.folders.get_mut(&msg.folder) {
            state.scanning = false;
            state.pending.extend(stale);
        }
        self.state.gauges(&msg.folder).scanning.store(false, std::sync::atomic::Ordering::Relaxed);
        self.start_scan(&msg.folder, ctx);
    }
}

impl Handler<RemoteIndex> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: RemoteIndex, _: &mut Context<Self>) {
        if !self.folders.contains_key(&msg.folder) {
            return;
        }
        let store = self.store.clone();
        let mut progress = store.progress(&msg.device, &msg.folder).unwrap_or_default();
        if progress.index_id != msg.index_id {
            // The peer's index was recreated: forget what we had of it.
            if progress.index_id != 0 {
                tracing::info!(peer = %msg.device.prefix(), folder = %msg.folder, "peer index was reset; rereading it");
            }
            let _ = store.clear_remote(&msg.device, &msg.folder);
            progress = Progress { index_id: msg.index_id, max_sequence: 0 };
        }
        let mut records = Vec::with_capacity(msg.files.len());
        let mut batch: HashMap<String, FileRecord> = HashMap::new();
        for info in msg.files {
            let base = |path: &str, seq: u64| {
                batch
                    .get(path)
                    .cloned()
                    .or_else(|| store.remote(&msg.device, &msg.folder, path).ok().flatten())
                    .filter(|r| r.sequence == seq)
                    .map(|r| r.chunks)
            };
            match wire::from_wire(info, base) {
                Ok(record) => {
                    progress.max_sequence = progress.max_sequence.max(record.sequence);
                    batch.insert(record.path.clone(), record.clone());
                    records.push(record);
                }
                Err(e) => {
                    if matches!(e, wire::WireError::MissingBase { .. }) {
                        // Ask for everything again on the next connection.
                        let _ = store.put_remote(&msg.device, &msg.folder, Progress { index_id: 0, max_sequence: 0 }, &[]);
                    }
                    tracing::warn!(peer = %msg.device.prefix(), folder = %msg.folder, error = %e, "peer sent an invalid record; disconnecting");
                    msg.reply.do_send(Disconnect { reason: format!("invalid index update: {e}") });
                    return;
                }
            }
        }
        if let Err(e) = store.put_remote(&msg.device, &msg.folder, progress, &records) {
            tracing::error!(error = %e, "cannot store a peer's index");
            return;
        }
        let tagged: Vec<(DeviceId, FileRecord)> = records.into_iter().map(|r| (msg.device, r)).collect();
        let items = self.needs(&msg.folder, Some(&tagged));
        self.dispatch(&msg.folder, items, false);
    }
}

impl Handler<RecomputeNeeds> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: RecomputeNeeds, _: &mut Context<Self>) {
        if self.folders.contains_key(&msg.folder) {
            let items = self.needs(&msg.folder, None);
            self.dispatch(&msg.folder, items, true);
        }
    }
}

impl Handler<Pulling> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: Pulling, ctx: &mut Context<Self>) {
        let Some(state) = self.folders.get_mut(&msg.folder) else { return };
        if msg.active {
            state.pulling.insert(msg.path);
        } else {
            // Look once at what the pull left (or a local edit that was held back meanwhile).
            state.pulling.remove(&msg.path);
            state.pending.insert(msg.path);
            self.start_scan(&msg.folder, ctx);
        }
    }
}

impl Handler<RecomputePaths> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: RecomputePaths, _: &mut Context<Self>) {
        let devices = self.store.remote_devices(&msg.folder).unwrap_or_default();
        let announced: Vec<(DeviceId, FileRecord)> = msg
            .paths
            .iter()
            .flat_map(|path| devices.iter().filter_map(|d| Some((*d, self.store.remote(d, &msg.folder, path).ok().flatten()?))))
            .collect();
        let items = self.needs(&msg.folder, Some(&announced));
        self.dispatch(&msg.folder, items, false);
    }
}

impl Handler<Applied> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: Applied, ctx: &mut Context<Self>) {
        let folder = msg.folder;
        let current = |path: &str| self.store.get(&folder, path).ok().flatten();
        let record = match msg.outcome {
            Outcome::Took { mut record, disk } => {
                record.sequence = current(&record.path).map_or(0, |r| r.sequence);
                if let Some(d) = disk {
                    record.mtime_ns = d.mtime_ns;
                    record.permissions = d.permissions;
                }
                record
            }
            Outcome::Reissue { path, other } => {
                let Some(mut local) = current(&path) else { return };
                let now = self.tick();
                local.version = local.version.merged(&other).updated(self.me, now);
                local.modified_by = self.me;
                local
            }
        };
        let path = record.path.clone();
        self.commit(&folder, vec![record]);
        // The disk may differ from the record (a directory we could not delete): look again.
        if let Some(state) = self.folders.get_mut(&folder) {
            state.pending.insert(path);
        }
        self.start_scan(&folder, ctx);
    }
}

/// The data dir's index location.
pub fn index_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("index")
}
