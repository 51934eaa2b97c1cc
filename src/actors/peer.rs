//! The Peer actor: one per connected device, owning that connection's control and data streams.
//!
//! Control: our Hello first; then, per shared folder, a sender task streams our index from where the
//! peer left off (records of big files as chunk edits when the peer holds the previous version),
//! and pings keep the link honest. Data: the peer's chunk requests are served from disk on blocking
//! threads; our requests (from the Puller) are matched to their responses by id.
//!
//! The actor only ever sees the folders shared with its device (`core::SharedWith`): it offers,
//! sends and serves those, refuses index records and chunk requests for any other folder (logged
//! once per folder with the peer, and counted), and never asks the peer for another folder's chunks.
//!
//! A trusted peer may still turn hostile, so serving is bounded per peer: a chunk is read only if
//! our index announced it at that path, offset and size (never another range, never through a
//! symlink); at most a few reads run at once; the bytes being read or queued for the peer stay
//! within its connection's `SendBudget` (requests beyond it wait, and past a bounded queue are
//! refused). Whatever is refused is logged once per peer and kind and counted; a peer that breaks
//! the protocol is counted, cut off, and redialed only with backoff.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tonic::Status;

use super::directory::{PeerCounters, PeerDirectory};
use super::messages::*;
use crate::config::{Compression, FolderConfig, FolderMode};
use crate::core::DeviceId;
use crate::fs::chunker::{hash, read_range};
use crate::fs::safe_path::{open_inside, refuse_once, UnsafePath};
use crate::net::encoding::{decode, encode};
use crate::net::proto::{self, control_message, data_message, ControlMessage, DataMessage};
use crate::net::service::Duplex;
use crate::net::wire::{self, FetchError, RequestError};
use crate::store::Store;

pub const PING_INTERVAL: Duration = Duration::from_secs(5);
pub const PEER_TIMEOUT: Duration = Duration::from_secs(15);
const INDEX_BATCH: usize = 1000;
/// Largest index message we send (half the limit: room for framing and for the records' growth
/// in the receiver's eyes, which counts expanded edits).
const MAX_INDEX_BYTES: usize = crate::net::MAX_MESSAGE / 2;
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests of one peer waiting for its send budget or a reader; past either bound, refused.
const MAX_WAITING_REQUESTS: usize = 4096;
const MAX_WAITING_BYTES: usize = 8 << 20;
/// Chunk reads running at once for one peer (each on a blocking thread).
const READERS_PER_PEER: usize = 4;

/// Everything a Peer actor is started with.
pub struct PeerSetup {
    pub device: DeviceId,
    pub conn: u64,
    pub address: Option<std::net::SocketAddr>,
    pub my_name: String,
    pub folders: Arc<Vec<FolderConfig>>,
    pub store: Arc<Store>,
    pub index: IndexForPeers,
    pub supervisor: Recipient<PeerDown>,
    pub counters: Arc<PeerCounters>,
    pub directory: PeerDirectory,
    pub compression: Compression,
    pub control: Duplex<ControlMessage>,
    pub data: Duplex<DataMessage>,
}

/// A chunk request of ours waiting for its response.
struct Pending {
    size: u32,
    base: Option<Arc<Vec<u8>>>,
    signature: u64,
    reply: oneshot::Sender<Result<Fetched, FetchError>>,
}

/// What serving one peer holds besides its send budget: requests waiting, and reads running.
struct Serving {
    waiting: AtomicUsize,
    waiting_bytes: AtomicUsize,
    readers: Semaphore,
}

pub struct PeerActor {
    setup: PeerSetup,
    roots: HashMap<String, PathBuf>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    last_seen: Instant,
    hello: bool,
    reason: Option<String>,
    /// Folders this peer sent something for that is not shared with it (each logged once).
    refused_folders: std::collections::HashSet<String>,
    /// The connection ends because the peer broke the protocol.
    violation: bool,
    serving: Arc<Serving>,
}

impl PeerActor {
    pub fn new(mut setup: PeerSetup) -> Self {
        // From here on `folders` (and so `roots`) holds only the folders shared with this device.
        let shared: Vec<FolderConfig> =
            setup.folders.iter().filter(|f| f.devices.includes(&setup.device)).cloned().collect();
        setup.folders = Arc::new(shared);
        let roots = setup.folders.iter().map(|f| (f.id.clone(), f.path.clone())).collect();
        let serving = Arc::new(Serving {
            waiting: AtomicUsize::new(0),
            waiting_bytes: AtomicUsize::new(0),
            readers: Semaphore::new(READERS_PER_PEER),
        });
        PeerActor {
            setup,
            roots,
            pending: HashMap::new(),
            next_id: 1,
            last_seen: Instant::now(),
            hello: false,
            reason: None,
            refused_folders: Default::default(),
            violation: false,
            serving,
        }
    }

    /// Something the peer sent for `folder`, which is not shared with it: refused, logged once.
    fn refuse_unshared(&mut self, folder: &str, what: &str) {
        if self.refused_folders.len() < 64 && self.refused_folders.insert(folder.to_string()) {
            tracing::warn!(peer = %self.setup.device.prefix(), folder = %folder, what, "refused: folder not shared with this peer");
        } else {
            tracing::debug!(peer = %self.setup.device.prefix(), folder = %folder, what, "refused: folder not shared with this peer");
        }
    }

    pub fn device(&self) -> DeviceId {
        self.setup.device
    }

    fn send_control(&self, kind: control_message::Kind) {
        let msg = ControlMessage { kind: Some(kind) };
        self.setup.counters.add_out(msg.encoded_len());
        let _ = self.setup.control.tx.try_send(msg);
    }

    fn close(&mut self, reason: String, ctx: &mut Context<Self>) {
        self.send_control(control_message::Kind::Close(proto::Close { reason: reason.clone() }));
        self.reason = Some(reason);
        ctx.stop();
    }

    /// The peer broke the protocol: logged with the reason, counted (with the records refused
    /// with it), and the connection closed; the Supervisor redials only with backoff.
    fn violation(&mut self, reason: String, refused_records: usize, ctx: &mut Context<Self>) {
        tracing::warn!(peer = %self.setup.device.prefix(), reason = %reason, refused_records, "protocol violation; disconnecting");
        self.setup.counters.violation();
        self.setup.counters.refused_records(refused_records);
        self.violation = true;
        self.close(reason, ctx);
    }

    /// Answers a chunk request with a refusal: counted, and logged the first time this kind of
    /// refusal comes from this peer.
    fn refuse_request(&self, id: u64, code: proto::ChunkError, kind: &'static str, reason: String) {
        refused(&self.setup.counters, &self.setup.device, kind, &reason);
        let msg = DataMessage { kind: Some(data_message::Kind::Response(wire::refusal(id, code, reason))) };
        self.setup.counters.add_out(msg.encoded_len());
        // A full queue drops the refusal: the requester's timeout covers it.
        let _ = self.setup.data.tx.try_send(msg);
    }

    /// Our Hello: per folder, how far we have read this peer's index. An index that cannot be
    /// read is an error (the connection closes), never taken for "nothing read yet".
    fn hello(&self) -> anyhow::Result<proto::Hello> {
        let mut folders = Vec::with_capacity(self.setup.folders.len());
        for f in self.setup.folders.iter() {
            let progress = self.setup.store.progress(&self.setup.device, &f.id)?;
            folders.push(proto::FolderOffer {
                id: f.id.clone(),
                your_index_id: progress.index_id,
                your_max_sequence: progress.max_sequence,
                receive_only: f.mode == FolderMode::ReceiveOnly,
            });
        }
        Ok(proto::Hello {
            protocol_version: crate::net::PROTOCOL_VERSION,
            device_name: self.setup.my_name.clone(),
            folders,
        })
    }

    fn on_hello(&mut self, hello: proto::Hello, ctx: &mut Context<Self>) {
        if hello.protocol_version != crate::net::PROTOCOL_VERSION {
            return self.close(
                format!("protocol version {} is not {}", hello.protocol_version, crate::net::PROTOCOL_VERSION),
                ctx,
            );
        }
        if self.hello {
            return self.violation("second Hello".into(), 0, ctx);
        }
        // Each folder once: a Hello offering one folder many times would start as many index
        // senders, each streaming our whole index.
        let mut offered = std::collections::HashSet::new();
        if let Some(twice) = hello.folders.iter().find(|o| !offered.insert(o.id.as_str())).map(|o| o.id.clone()) {
            return self.violation(format!("folder `{twice}` offered twice in Hello"), 0, ctx);
        }
        self.hello = true;
        // A name is for people: the first 256 characters are plenty.
        let name: String = hello.device_name.chars().take(256).collect();
        tracing::info!(peer = %self.setup.device.prefix(), name = %name, address = ?self.setup.address, "peer connected");
        self.setup.directory.update(self.setup.device, |e| e.name = name);
        for offer in hello.folders {
            let Some(folder) = self.setup.folders.iter().find(|f| f.id == offer.id) else { continue };
            if folder.mode != FolderMode::ReceiveOnly {
                let meta = match self.setup.store.folder_meta(&folder.id) {
                    Ok(meta) => meta,
                    Err(e) => return self.close(format!("cannot read the index of `{}`: {e:#}", folder.id), ctx),
                };
                let start = if offer.your_index_id == meta.index_id { offer.your_max_sequence } else { 0 };
                let Some(rx) = self.setup.index.sequences.watch(&folder.id) else { continue };
                tokio::spawn(send_index(
                    self.setup.store.clone(),
                    self.setup.control.tx.clone(),
                    self.setup.counters.clone(),
                    folder.id.clone(),
                    meta.index_id,
                    start,
                    rx,
                ));
            }
            self.setup.index.recompute.do_send(RecomputeNeeds { folder: folder.id.clone() });
        }
    }

    fn on_index(&mut self, update: proto::IndexUpdate, ctx: &mut Context<Self>) {
        if !self.hello {
            return self.violation("index before Hello".into(), update.files.len(), ctx);
        }
        // Judged by arithmetic before any record is decoded or any edit script expanded.
        if let Err(e) = wire::check_update(&update) {
            return self.violation(e.to_string(), update.files.len(), ctx);
        }
        if !self.roots.contains_key(&update.folder) {
            self.setup.counters.refused_records(update.files.len());
            return self.refuse_unshared(&update.folder, "index records");
        }
        let taken_in = self.setup.index.remote_index.send(RemoteIndex {
            device: self.setup.device,
            folder: update.folder,
            index_id: update.index_id,
            files: update.files,
            reply: ctx.address().recipient(),
        });
        // One batch at a time: the next message of this peer is read once the Index has taken
        // this one in. A peer sending batch after batch then never lines up many of them for the
        // actor thread to work through without a break (the signal handler and every other
        // actor run between two batches).
        ctx.wait(actix::fut::wrap_future::<_, Self>(taken_in).map(|_, _, _| ()));
    }

    /// Serves one chunk request: checked at once; then it waits for the peer's send budget and a
    /// reader, and the chunk is read on a blocking thread (only if our index announced it).
    fn serve_chunk(&mut self, request: proto::ChunkRequest, ctx: &mut Context<Self>) {
        let hash = match wire::check_request(&request) {
            Ok(hash) => hash,
            // A path no peer of ours would ever name: not a mistake.
            Err(e @ RequestError::Path { .. }) => return self.violation(format!("chunk request: {e}"), 0, ctx),
            Err(e) => {
                return self.refuse_request(request.id, e.code(), e.kind(), format!("chunk request refused: {e}"))
            }
        };
        let Some(root) = self.roots.get(&request.folder).cloned() else {
            return self.refuse_request(
                request.id,
                proto::ChunkError::NotShared,
                "folder",
                format!("folder `{}` is not shared", request.folder),
            );
        };
        let cost = request.encoded_len();
        let serving = self.serving.clone();
        if serving.waiting.load(Relaxed) >= MAX_WAITING_REQUESTS
            || serving.waiting_bytes.load(Relaxed) + cost > MAX_WAITING_BYTES
        {
            return self.refuse_request(
                request.id,
                proto::ChunkError::Busy,
                "busy",
                "too many requests waiting; ask again later".into(),
            );
        }
        serving.waiting.fetch_add(1, Relaxed);
        serving.waiting_bytes.fetch_add(cost, Relaxed);
        let tx = self.setup.data.tx.clone();
        let budget = self.setup.data.budget.clone();
        let counters = self.setup.counters.clone();
        let compression = self.setup.compression;
        let rehash = self.setup.index.rehash.clone();
        let store = self.setup.store.clone();
        let device = self.setup.device;
        tokio::spawn(async move {
            let size = request.size;
            // Both fail only once the connection has ended (see `stopped`): nobody would read the answer.
            let (Ok(()), Ok(reader)) = (budget.take(size).await, serving.readers.acquire().await) else { return };
            serving.waiting.fetch_sub(1, Relaxed);
            serving.waiting_bytes.fetch_sub(cost, Relaxed);
            let (id, folder, path) = (request.id, request.folder.clone(), request.path.clone());
            let read_root = root.clone();
            let result = tokio::task::spawn_blocking(move || {
                read_chunk(&store, &read_root, &request, &hash)
                    .map(|data| encode(data, &request.signature, compression))
            })
            .await
            .unwrap_or_else(|e| Err(ServeError::Io(e.to_string())));
            drop(reader);
            match &result {
                Err(ServeError::Changed) => rehash.do_send(Rehash { folder: folder.clone(), path: path.clone() }),
                Err(ServeError::Unsafe(e)) if e.is_link() => {
                    counters.refused_request();
                    refuse_once(&root, e, Some(&device.prefix()));
                }
                Err(e @ ServeError::NotIndexed) => {
                    refused(&counters, &device, "not-indexed", &format!("chunk request for `{path}`: {e}"))
                }
                _ => {}
            }
            let response = match result {
                Ok((data, encoding)) => {
                    proto::ChunkResponse { id, data, encoding: encoding as i32, ..Default::default() }
                }
                Err(e) => wire::refusal(id, e.code(), e.to_string()),
            };
            // What was taken for the read and is not queued goes back now; the queued data goes
            // back as the transport takes it.
            let queued = response.data.len();
            budget.give(size as usize - queued.min(size as usize));
            let msg = DataMessage { kind: Some(data_message::Kind::Response(response)) };
            counters.add_out(msg.encoded_len());
            if tx.send(msg).await.is_err() {
                budget.give(queued);
            }
        });
    }
}

/// Counts a refused request, and logs it the first time this kind comes from this peer.
fn refused(counters: &PeerCounters, device: &DeviceId, kind: &'static str, reason: &str) {
    counters.refused_request();
    if counters.first(kind) {
        tracing::warn!(peer = %device.prefix(), kind, reason, "refused a chunk request (further ones of this kind only counted)");
    } else {
        tracing::debug!(peer = %device.prefix(), kind, reason, "refused a chunk request");
    }
}

/// Why a chunk was not served (the text goes back to the requester).
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("no such chunk in our index")]
    NotIndexed,
    #[error(transparent)]
    Unsafe(#[from] UnsafePath),
    #[error("file is shorter now")]
    Shorter,
    #[error("file changed since it was indexed")]
    Changed,
    #[error("{0}")]
    Io(String),
}

impl ServeError {
    fn code(&self) -> proto::ChunkError {
        match self {
            ServeError::NotIndexed => proto::ChunkError::NoSuchChunk,
            ServeError::Shorter | ServeError::Changed => proto::ChunkError::Changed,
            ServeError::Unsafe(_) | ServeError::Io(_) => proto::ChunkError::Unreadable,
        }
    }
}

/// Reads a chunk we announced: the index must hold this hash at this path and offset with this
/// size (so a request can make us read nothing else, and a wrong hash cannot make us rehash a
/// file), and the file is opened without following any symlink.
fn read_chunk(
    store: &Store,
    root: &std::path::Path,
    r: &proto::ChunkRequest,
    hash_: &[u8; 32],
) -> Result<Vec<u8>, ServeError> {
    match store.chunk_at(hash_, &r.folder, &r.path, r.offset) {
        Ok(Some(size)) if size == r.size => {}
        Ok(_) => return Err(ServeError::NotIndexed),
        Err(e) => return Err(ServeError::Io(e.to_string())),
    }
    let file = open_inside(root, &r.path)?;
    let data =
        read_range(&file, r.offset, r.size).map_err(|e| ServeError::Io(e.to_string()))?.ok_or(ServeError::Shorter)?;
    if &hash(&data) != hash_ {
        return Err(ServeError::Changed);
    }
    Ok(data)
}

/// The longest prefix of `records` (in sequence order) that makes one message within the limits
/// the receiver checks: chunk entries counting expanded edits, and bytes. Always at least one
/// record, unless that one can never be sent (over a limit alone): it is then skipped, logged.
fn fit_batch(folder: &str, records: &mut Vec<proto::FileInfo>) -> usize {
    let (mut chunks, mut counters, mut bytes, mut n) = (0u64, 0u64, 0usize, 0usize);
    while n < records.len() {
        let (c, v, b) =
            (wire::record_chunks(&records[n]), wire::record_counters(&records[n]), records[n].encoded_len() + 8);
        if c > crate::core::chunks::MAX_CHUNKS_PER_RECORD || b > MAX_INDEX_BYTES {
            tracing::warn!(folder, path = %records[n].path, chunks = c, bytes = b, "file has too many chunks to announce; not synced");
            records.remove(n);
            continue;
        }
        if n > 0
            && (chunks + c > wire::MAX_CHUNKS_PER_UPDATE
                || counters + v > wire::MAX_COUNTERS_PER_UPDATE
                || bytes + b > MAX_INDEX_BYTES)
        {
            break;
        }
        chunks += c;
        counters += v;
        bytes += b;
        n += 1;
    }
    n
}

/// Streams our index of one folder to the peer: everything after `start`, then each update.
async fn send_index(
    store: Arc<Store>,
    tx: mpsc::Sender<ControlMessage>,
    counters: Arc<PeerCounters>,
    folder: String,
    index_id: u64,
    start: u64,
    mut updates: watch::Receiver<u64>,
) {
    let mut sent = start;
    loop {
        let mut records = {
            let store = store.clone();
            let folder = folder.clone();
            match tokio::task::spawn_blocking(move || {
                store.since(&folder, sent, INDEX_BATCH).map(|rs| {
                    rs.into_iter()
                        .map(|r| {
                            // The peer holds our previous record of this path (or of the path
                            // it was renamed from) if we sent it before. A difference is only a
                            // saving: one that cannot be read goes as the whole record.
                            let diff = store.diff_to_send(&folder, &r, sent).unwrap_or_else(|e| {
                                tracing::warn!(folder = %folder, path = %r.path, error = %e, "cannot read a stored difference; sending the whole record");
                                None
                            });
                            wire::to_wire(
                                &r,
                                diff.as_ref().map(|d| wire::Diff {
                                    base: d.base,
                                    base_path: d.base_path.as_deref(),
                                    edits: &d.edits,
                                }),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .await
            {
                Ok(Ok(r)) => r,
                _ => return,
            }
        };
        if records.is_empty() {
            if updates.changed().await.is_err() {
                return;
            }
            continue;
        }
        let last = records.last().map_or(sent, |r| r.sequence);
        let fit = fit_batch(&folder, &mut records);
        records.truncate(fit);
        // Within a batch a record may also be the base of a later one; the receiver resolves that.
        // A batch cut short resumes after its last record; one whose records were all skipped,
        // after what was read.
        sent = records.iter().map(|r| r.sequence).max().unwrap_or(last);
        if records.is_empty() {
            continue;
        }
        let msg = ControlMessage {
            kind: Some(control_message::Kind::Index(proto::IndexUpdate {
                folder: folder.clone(),
                index_id,
                files: records,
            })),
        };
        counters.add_out(msg.encoded_len());
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

impl Actor for PeerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let control = std::mem::replace(&mut self.setup.control.rx, Box::pin(futures::stream::empty()));
        let data = std::mem::replace(&mut self.setup.data.rx, Box::pin(futures::stream::empty()));
        ctx.add_stream(control);
        ctx.add_stream(data);
        match self.hello() {
            Ok(hello) => self.send_control(control_message::Kind::Hello(hello)),
            Err(e) => return self.close(format!("cannot read the index: {e:#}"), ctx),
        }
        ctx.run_interval(PING_INTERVAL, |this, _| {
            this.send_control(control_message::Kind::Ping(proto::Ping { nonce: 0 }))
        });
        // Checked every second, so silence is noticed within a second of PEER_TIMEOUT.
        ctx.run_interval(Duration::from_secs(1), |this, ctx| {
            if this.last_seen.elapsed() > PEER_TIMEOUT {
                this.close(format!("no message for {}s", PEER_TIMEOUT.as_secs()), ctx);
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // Requests of this connection still waiting to be served give up (nobody would read them).
        self.setup.data.budget.close();
        self.serving.readers.close();
        // The peer's protocol bytes since this node started, over all its connections.
        let (bytes_in, bytes_out) = (
            self.setup.counters.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
            self.setup.counters.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
        );
        tracing::info!(peer = %self.setup.device.prefix(), reason = self.reason.as_deref().unwrap_or("connection closed"), bytes_in, bytes_out, "peer lost");
        self.setup.supervisor.do_send(PeerDown {
            device: self.setup.device,
            conn: self.setup.conn,
            violation: self.violation,
        });
    }
}

impl StreamHandler<Result<ControlMessage, Status>> for PeerActor {
    fn handle(&mut self, item: Result<ControlMessage, Status>, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        let msg = match item {
            Ok(m) => m,
            Err(e) if is_garbage(&e) => return self.violation(format!("control stream: {}", e.message()), 0, ctx),
            Err(e) => return self.close(format!("control stream error: {}", e.message()), ctx),
        };
        self.setup.counters.add_in(msg.encoded_len());
        match msg.kind {
            Some(control_message::Kind::Hello(h)) => self.on_hello(h, ctx),
            Some(control_message::Kind::Index(u)) => self.on_index(u, ctx),
            Some(control_message::Kind::Ping(p)) => {
                self.send_control(control_message::Kind::Pong(proto::Pong { nonce: p.nonce }))
            }
            Some(control_message::Kind::Pong(_)) => {}
            Some(control_message::Kind::Close(c)) => {
                self.reason = Some(format!("peer closed: {}", c.reason));
                ctx.stop();
            }
            None => self.violation("empty control message".into(), 0, ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl StreamHandler<Result<DataMessage, Status>> for PeerActor {
    fn handle(&mut self, item: Result<DataMessage, Status>, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        let msg = match item {
            Ok(m) => m,
            Err(e) if is_garbage(&e) => return self.violation(format!("data stream: {}", e.message()), 0, ctx),
            Err(e) => return self.close(format!("data stream error: {}", e.message()), ctx),
        };
        self.setup.counters.add_in(msg.encoded_len());
        match msg.kind {
            Some(data_message::Kind::Request(r)) => {
                if !self.hello {
                    return self.violation(format!("chunk request for `{}` before Hello", r.path), 0, ctx);
                }
                if !self.roots.contains_key(&r.folder) {
                    self.refuse_unshared(&r.folder, "chunk request");
                    self.setup.counters.refused_request();
                    // An answer, so an honest requester moves on at once instead of timing out.
                    let refusal =
                        wire::refusal(r.id, proto::ChunkError::NotShared, "folder not shared with this peer".into());
                    let msg = DataMessage { kind: Some(data_message::Kind::Response(refusal)) };
                    self.setup.counters.add_out(msg.encoded_len());
                    let _ = self.setup.data.tx.try_send(msg);
                    return;
                }
                self.serve_chunk(r, ctx);
            }
            Some(data_message::Kind::Response(r)) => {
                if let Some(p) = self.pending.remove(&r.id) {
                    let wire = p.signature + r.data.len() as u64;
                    let result = wire::answer(r).and_then(|(data, encoding)| {
                        decode(data, encoding, p.size, p.base.as_deref().map(|b| b.as_slice()))
                            .map(|data| Fetched { data, wire })
                            .map_err(FetchError::BadAnswer)
                    });
                    let _ = p.reply.send(result);
                }
            }
            None => self.violation("empty data message".into(), 0, ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<FetchChunk> for PeerActor {
    type Result = ResponseFuture<Result<Fetched, FetchError>>;

    fn handle(&mut self, msg: FetchChunk, _: &mut Context<Self>) -> Self::Result {
        if !self.roots.contains_key(&msg.folder) {
            // Never reveal another folder's names or hashes to this peer (say, from records it
            // sent before the folder stopped being shared with it).
            return Box::pin(async {
                Err(FetchError::Refused {
                    code: proto::ChunkError::NotShared,
                    detail: "folder not shared with this peer".into(),
                })
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let (reply, response) = oneshot::channel();
        self.pending
            .insert(id, Pending { size: msg.chunk.size, base: msg.base, signature: msg.signature.len() as u64, reply });
        let request = proto::ChunkRequest {
            id,
            folder: msg.folder,
            path: msg.path,
            offset: msg.chunk.offset,
            size: msg.chunk.size,
            hash: msg.chunk.hash.to_vec(),
            signature: msg.signature,
        };
        let data = DataMessage { kind: Some(data_message::Kind::Request(request)) };
        self.setup.counters.add_out(data.encoded_len());
        let tx = self.setup.data.tx.clone();
        Box::pin(async move {
            tx.send(data).await.map_err(|_| FetchError::Closed)?;
            match tokio::time::timeout(FETCH_TIMEOUT, response).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(FetchError::Closed),
                Err(_) => Err(FetchError::TimedOut),
            }
        })
    }
}

impl Handler<Disconnect> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: Disconnect, ctx: &mut Context<Self>) {
        // The Index logged the refused records already; here they are counted.
        if let Some(records) = msg.violation {
            self.setup.counters.violation();
            self.setup.counters.refused_records(records);
            self.violation = true;
        }
        self.close(msg.reason, ctx);
    }
}

/// Whether a stream error means the peer sent what the protocol does not allow (a message that
/// does not decode, or one over the size limit) rather than the connection failing.
fn is_garbage(status: &Status) -> bool {
    let message = status.message();
    status.code() == tonic::Code::OutOfRange
        || (status.code() == tonic::Code::Internal
            && (message.starts_with("failed to decode") || message.starts_with("protocol error")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_index_batches_stay_within_what_the_receiver_accepts() {
        let record = |path: &str, chunks: usize| proto::FileInfo {
            path: path.into(),
            chunks: vec![proto::Chunk { offset: 0, size: 1, hash: vec![7; 32] }; chunks],
            version: Some(proto::Vector { counters: vec![proto::Counter { id: 1, value: 1 }] }),
            ..Default::default()
        };
        // Three records of 200,000 chunks: two fit one message by count, but not by bytes.
        let mut records = vec![record("a", 200_000), record("b", 200_000), record("c", 10)];
        let n = fit_batch("default", &mut records);
        assert!((1..3).contains(&n), "{n}");
        let batch = proto::IndexUpdate { folder: "default".into(), index_id: 1, files: records[..n].to_vec() };
        assert!(wire::check_update(&batch).is_ok());
        assert!(batch.encoded_len() <= MAX_INDEX_BYTES);
        // A record that no message could carry is skipped, not sent to be refused forever.
        let mut records = vec![record("huge", 600_000), record("small", 1)];
        assert_eq!(fit_batch("default", &mut records), 1);
        assert_eq!(records[0].path, "small");
    }
}
