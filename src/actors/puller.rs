//! The Puller actor of one folder: turns needs into disk changes. Directories first, then files
//! (several at a time, each with many chunks in flight), deletes last and deepest first, so that a
//! rename's new name is built from the old file's chunks before the old name is removed.
//!
//! Each chunk comes from the cheapest place: a local file that has it (the chunk index), else one
//! of the peers that announced this exact version, in turn. Data is verified against its BLAKE3
//! hash before it is written; the file appears under its real name only when complete.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::StreamExt;

use super::directory::PeerDirectory;
use super::index::IndexActor;
use super::messages::*;
use super::peer::FetchChunk;
use super::status::FolderGauges;
use std::sync::atomic::Ordering::Relaxed;
use crate::core::{path as paths, Action, Chunk, DeviceId, FileKind, FileRecord};
use crate::fs::apply::{self, ApplyError, TempFile};
use crate::fs::chunker::{hash, read_range};
use crate::fs::safe_path::safe_path;
use crate::store::Store;

const FILES_IN_FLIGHT: usize = 8;
const CHUNKS_IN_FLIGHT: usize = 16;
const RETRY_AFTER: Duration = Duration::from_secs(5);
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
    pub root: PathBuf,
    /// Every folder's root, for chunks found in other folders.
    pub roots: Arc<HashMap<String, PathBuf>>,
    pub store: Arc<Store>,
    pub directory: PeerDirectory,
    pub index: Addr<IndexActor>,
    pub gauges: Arc<FolderGauges>,
}

pub struct Puller {
    ctx: PullContext,
    queue: BTreeMap<String, NeedItem>,
    /// Paths being worked on now: whether it is a delete, and the bytes it brings.
    in_flight: HashMap<String, (bool, u64)>,
    failed: HashSet<String>,
    retry_scheduled: bool,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Finished {
    path: String,
    result: Result<(), String>,
}

impl Puller {
    pub fn new(ctx: PullContext) -> Self {
        Puller { ctx, queue: BTreeMap::new(), in_flight: HashMap::new(), failed: HashSet::new(), retry_scheduled: false }
    }

    /// The next item to start: directories (shallow first), then files, then deletes (deep first)
    /// once nothing else is queued or running.
    fn next(&self) -> Option<String> {
        let busy = |p: &String| self.in_flight.contains_key(p) || self.in_flight.keys().any(|f| paths::is_inside(f, p) || paths::is_inside(p, f));
        let is_delete = |i: &NeedItem| i.remote.deleted && matches!(i.action, Action::Take);
        let creates = self.queue.iter().filter(|(_, i)| !is_delete(i));
        let dirs = creates.clone().filter(|(_, i)| i.remote.kind == FileKind::Directory);
        if let Some((p, _)) = dirs.filter(|(p, _)| !busy(p)).min_by_key(|(p, _)| paths::depth(p)) {
            return Some(p.clone());
        }
        if let Some((p, _)) = creates.clone().find(|(p, _)| !busy(p)) {
            return Some(p.clone());
        }
        let creating = creates.count() > 0 || self.in_flight.values().any(|(delete, _)| !delete);
        if creating {
            return None;
        }
        self.queue.iter().filter(|(p, _)| !busy(p)).max_by_key(|(p, _)| paths::depth(p)).map(|(p, _)| p.clone())
    }

    fn update_gauges(&self) {
        let queued: u64 = self.queue.values().filter(|i| !i.remote.deleted).map(|i| i.remote.size).sum();
        let bytes = queued + self.in_flight.values().map(|(_, b)| b).sum::<u64>();
        self.ctx.gauges.need_files.store((self.queue.len() + self.in_flight.len()) as u64, Relaxed);
        self.ctx.gauges.need_bytes.store(bytes, Relaxed);
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        while self.in_flight.len() < FILES_IN_FLIGHT {
            let Some(path) = self.next() else { break };
            let item = self.queue.remove(&path).expect("queued");
            let delete = item.remote.deleted && matches!(item.action, Action::Take);
            self.in_flight.insert(path.clone(), (delete, if item.remote.deleted { 0 } else { item.remote.size }));
            let pctx = self.ctx.clone();
            let me = ctx.address();
            tokio::spawn(async move {
                let result = execute(&pctx, item).await.map_err(|e| e.to_string());
                me.do_send(Finished { path, result });
            });
        }
        self.update_gauges();
    }
}

impl Actor for Puller {
    type Context = Context<Self>;
}

impl Handler<Needs> for Puller {
    type Result = ();
    fn handle(&mut self, msg: Needs, ctx: &mut Context<Self>) {
        if msg.complete {
            self.queue.clear();
            self.failed.clear();
        }
        for item in msg.items {
            if !self.in_flight.contains_key(&item.remote.path) {
                self.queue.insert(item.remote.path.clone(), item);
            }
        }
        self.pump(ctx);
    }
}

impl Handler<Finished> for Puller {
    type Result = ();
    fn handle(&mut self, msg: Finished, ctx: &mut Context<Self>) {
        self.in_flight.remove(&msg.path);
        if let Err(e) = msg.result {
            self.ctx.gauges.errors.fetch_add(1, Relaxed);
            tracing::warn!(folder = %self.ctx.folder, path = %msg.path, error = %e, "pull failed; will retry");
            self.failed.insert(msg.path);
            if !self.retry_scheduled {
                self.retry_scheduled = true;
                ctx.run_later(RETRY_AFTER, |this, _| {
                    this.retry_scheduled = false;
                    this.failed.clear();
                    this.ctx.index.do_send(RecomputeNeeds { folder: this.ctx.folder.clone() });
                });
            }
        }
        self.pump(ctx);
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
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, PullError> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

/// Carries out one need; tells the Index what it did.
async fn execute(ctx: &PullContext, item: NeedItem) -> Result<(), PullError> {
    let remote = item.remote.clone();
    let path = remote.path.clone();
    let outcome = match &item.action {
        Action::Take if remote.deleted => {
            let (root, p, local) = (ctx.root.clone(), path.clone(), item.local.clone());
            let removed = blocking(move || apply::remove(&root, &p, local.as_ref())).await??;
            if removed {
                tracing::info!(folder = %ctx.folder, path = %path, "deleted");
            }
            Outcome::Took { record: remote, disk: None }
        }
        Action::Take => {
            let disk = materialize(ctx, &remote, &path, item.local.clone(), &item.sources).await?;
            Outcome::Took { record: remote, disk: Some(disk) }
        }
        Action::ConflictLocalLoses { copy } => {
            let (root, p, c) = (ctx.root.clone(), path.clone(), copy.clone());
            let copy = blocking(move || apply::move_aside(&root, &p, &c)).await??;
            ctx.gauges.conflicts.fetch_add(1, Relaxed);
            tracing::warn!(folder = %ctx.folder, path = %path, copy = %copy, "conflict: our version kept as a copy");
            ctx.index.do_send(LocalChanged { folder: ctx.folder.clone(), paths: vec![copy] });
            let disk = materialize(ctx, &remote, &path, None, &item.sources).await?;
            Outcome::Took { record: remote, disk: Some(disk) }
        }
        Action::ConflictRemoteLoses { copy } => {
            if remote.kind == FileKind::File {
                let (root, c, wanted) = (ctx.root.clone(), copy.clone(), remote.clone());
                let has_remote = move |p: &std::path::Path| holds(p, &wanted);
                // The winner's node may have made this copy already, and it may have synced here.
                if let Some(copy) = blocking(move || apply::free_name(&root, &c, has_remote)).await? {
                    materialize(ctx, &remote, &copy, None, &item.sources).await?;
                    ctx.index.do_send(LocalChanged { folder: ctx.folder.clone(), paths: vec![copy] });
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
    ctx.index.do_send(Applied { folder: ctx.folder.clone(), outcome });
    Ok(())
}

/// Puts `record`'s content (or directory) at `target`.
async fn materialize(ctx: &PullContext, record: &FileRecord, target: &str, local: Option<FileRecord>, sources: &[DeviceId]) -> Result<crate::fs::scan::DiskState, PullError> {
    if record.kind == FileKind::Directory {
        let (root, r) = (ctx.root.clone(), FileRecord { path: target.to_string(), ..record.clone() });
        return Ok(blocking(move || apply::make_dir(&root, &r, local.as_ref())).await??);
    }
    let (root, t, size) = (ctx.root.clone(), target.to_string(), record.size);
    let temp = Arc::new(blocking(move || TempFile::create(&root, &t, size)).await??);
    let mut reused = 0u64;
    let mut received = 0u64;
    let mut by_peer: HashMap<DeviceId, u64> = HashMap::new();
    let mut results = futures::stream::iter(record.chunks.iter().copied().enumerate())
        .map(|(i, chunk)| fetch_chunk(ctx, record, chunk, sources, i, local.as_ref()))
        .buffer_unordered(CHUNKS_IN_FLIGHT);
    let mut failure = None;
    let progress = Progress::new(ctx, target, record.size);
    while let Some(result) = results.next().await {
        match result {
            Ok((chunk, data, from)) => {
                match from {
                    Some(d) => {
                        received += data.len() as u64;
                        *by_peer.entry(d).or_default() += data.len() as u64;
                    }
                    None => reused += data.len() as u64,
                }
                progress.advance(data.len() as u64);
                let temp = temp.clone();
                if let Err(e) = blocking(move || temp.write_at(chunk.offset, &data)).await? {
                    failure = Some(PullError::from(e));
                    break;
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(results);
    let temp = Arc::try_unwrap(temp).map_err(|_| PullError::NoSource { offset: 0, size: 0 })?;
    if let Some(e) = failure {
        temp.abandon();
        return Err(e);
    }
    let r = record.clone();
    let disk = blocking(move || temp.commit(&r, local.as_ref())).await??;
    ctx.gauges.bytes_reused.fetch_add(reused, Relaxed);
    let from: Vec<String> = by_peer.keys().map(|d| d.prefix()).collect();
    tracing::info!(folder = %ctx.folder, path = %target, size = record.size, received, reused, from = ?from, "pulled");
    Ok(disk)
}

/// One chunk's bytes, verified: from a local file if any has it, else from a peer.
async fn fetch_chunk(ctx: &PullContext, record: &FileRecord, chunk: Chunk, sources: &[DeviceId], index: usize, previous: Option<&FileRecord>) -> Result<(Chunk, Vec<u8>, Option<DeviceId>), PullError> {
    let (store, roots) = (ctx.store.clone(), ctx.roots.clone());
    if let Some(data) = blocking(move || find_local(&store, &roots, &chunk)).await? {
        return Ok((chunk, data, None));
    }
    // Our old data for this region, to receive a delta against instead of the whole chunk.
    let old = previous.filter(|p| !p.deleted && chunk.size >= DELTA_MIN_CHUNK).and_then(|p| {
        p.chunks.iter().find(|o| o.offset == chunk.offset).or(p.chunks.get(index)).map(|o| (p.path.clone(), *o))
    });
    let (base, signature) = match old {
        Some((path, old)) => {
            let root = ctx.root.clone();
            blocking(move || {
                let file = std::fs::File::open(safe_path(&root, &path).ok()?).ok()?;
                let data = read_range(&file, old.offset, old.size).ok()??;
                (hash(&data) == old.hash).then(|| {
                    let options = fast_rsync::SignatureOptions { block_size: delta_block(old.size), crypto_hash_size: 8 };
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
    let n = sources.len().max(1);
    for k in 0..sources.len() {
        let device = sources[(index + k) % n];
        let Some(peer) = ctx.directory.connected(&device) else { continue };
        let request = FetchChunk { folder: ctx.folder.clone(), path: record.path.clone(), chunk, signature: signature.clone(), base: base.clone() };
        match peer.send(request).await {
            Ok(Ok(data)) if data.len() == chunk.size as usize && hash(&data) == chunk.hash => return Ok((chunk, data, Some(device))),
            Ok(Ok(_)) => tracing::warn!(peer = %device.prefix(), path = %record.path, "chunk failed verification; trying another source"),
            Ok(Err(e)) => tracing::debug!(peer = %device.prefix(), path = %record.path, error = %e, "chunk request failed"),
            Err(_) => {}
        }
    }
    Err(PullError::NoSource { offset: chunk.offset, size: chunk.size })
}

/// Whether the file at `path` holds exactly `record`'s content.
fn holds(path: &std::path::Path, record: &FileRecord) -> bool {
    let Ok(file) = std::fs::File::open(path) else { return false };
    file.metadata().is_ok_and(|m| m.len() == record.size)
        && record.chunks.iter().all(|c| matches!(read_range(&file, c.offset, c.size), Ok(Some(d)) if hash(&d) == c.hash))
}

/// A chunk from any local file the chunk index says has it, verified (the index may be stale).
pub fn find_local(store: &Store, roots: &HashMap<String, PathBuf>, chunk: &Chunk) -> Option<Vec<u8>> {
    for loc in store.chunk_locations(&chunk.hash, 4) {
        let Some(root) = roots.get(&loc.folder) else { continue };
        let Ok(path) = safe_path(root, &loc.path) else { continue };
        let Ok(file) = std::fs::File::open(&path) else { continue };
        if let Ok(Some(data)) = read_range(&file, loc.offset, chunk.size) {
            if hash(&data) == chunk.hash {
                return Some(data);
            }
        }
    }
    None
}

/// Progress of one large download: in the status gauges, and a log line every few seconds
/// (percent and rate), never one per chunk.
struct Progress<'a> {
    ctx: &'a PullContext,
    path: &'a str,
    total: u64,
    done: std::cell::Cell<u64>,
    started: std::time::Instant,
    last_log: std::cell::Cell<std::time::Instant>,
}

impl<'a> Progress<'a> {
    const LOG_EVERY: Duration = Duration::from_secs(3);

    fn new(ctx: &'a PullContext, path: &'a str, total: u64) -> Self {
        ctx.gauges.current_total.store(total, Relaxed);
        ctx.gauges.current_done.store(0, Relaxed);
        let now = std::time::Instant::now();
        Progress { ctx, path, total, done: 0.into(), started: now, last_log: now.into() }
    }

    fn advance(&self, n: u64) {
        self.done.set(self.done.get() + n);
        self.ctx.gauges.current_done.store(self.done.get(), Relaxed);
        if self.last_log.get().elapsed() >= Self::LOG_EVERY {
            self.last_log.set(std::time::Instant::now());
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            let percent = 100.0 * self.done.get() as f64 / self.total.max(1) as f64;
            let mib_per_s = self.done.get() as f64 / secs / (1 << 20) as f64;
            tracing::info!(folder = %self.ctx.folder, path = %self.path, percent = format!("{percent:.0}"), rate = format!("{mib_per_s:.1} MiB/s"), "pulling");
        }
    }
}

impl Drop for Progress<'_> {
    fn drop(&mut self) {
        self.ctx.gauges.current_total.store(0, Relaxed);
        self.ctx.gauges.current_done.store(0, Relaxed);
    }
}
