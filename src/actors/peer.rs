//! The Peer actor: one per connected device, owning that connection's control and data streams.
//!
//! Control: our Hello first; then, per shared folder, a sender task streams our index from where the
//! peer left off (records of big files as chunk edits when the peer holds the previous version),
//! and pings keep the link honest. Data: the peer's chunk requests are served from disk on blocking
//! threads; our requests (from the Puller) are matched to their responses by id.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;

use super::directory::{PeerCounters, PeerDirectory};
use super::index::IndexActor;
use super::messages::*;
use crate::config::{Compression, FolderConfig, FolderMode};
use crate::core::{path as paths, Chunk, DeviceId};
use crate::fs::chunker::{hash, read_range};
use crate::fs::safe_path::safe_path;
use crate::net::encoding::{decode, encode};
use crate::net::proto::{self, control_message, data_message, ControlMessage, DataMessage};
use crate::net::service::Duplex;
use crate::net::wire;
use crate::store::Store;

pub const PING_INTERVAL: Duration = Duration::from_secs(5);
pub const PEER_TIMEOUT: Duration = Duration::from_secs(15);
const INDEX_BATCH: usize = 1000;
const MAX_FILES_PER_UPDATE: usize = 10_000;
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything a Peer actor is started with.
pub struct PeerSetup {
    pub device: DeviceId,
    pub conn: u64,
    pub address: Option<std::net::SocketAddr>,
    pub my_name: String,
    pub folders: Arc<Vec<FolderConfig>>,
    pub store: Arc<Store>,
    pub index: Addr<IndexActor>,
    pub supervisor: Recipient<PeerDown>,
    pub counters: Arc<PeerCounters>,
    pub directory: PeerDirectory,
    pub compression: Compression,
    pub control: Duplex<ControlMessage>,
    pub data: Duplex<DataMessage>,
}

/// A connection ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerDown {
    pub device: DeviceId,
    pub conn: u64,
}

/// Ask the peer for one chunk of a file (the caller verifies the hash). With `base` (our old data
/// for that region) and its rsync `signature`, the peer may answer with a delta against it.
#[derive(Message)]
#[rtype(result = "Result<Fetched, String>")]
pub struct FetchChunk {
    pub folder: String,
    pub path: String,
    pub chunk: Chunk,
    pub signature: Vec<u8>,
    pub base: Option<Arc<Vec<u8>>>,
}

/// A chunk's bytes, and what they cost on the wire: the signature we sent plus the encoded answer
/// (a delta or compressed data may be far smaller than the chunk).
#[derive(Debug)]
pub struct Fetched {
    pub data: Vec<u8>,
    pub wire: u64,
}

/// A chunk request of ours waiting for its response.
struct Pending {
    size: u32,
    base: Option<Arc<Vec<u8>>>,
    signature: u64,
    reply: oneshot::Sender<Result<Fetched, String>>,
}

pub struct PeerActor {
    setup: PeerSetup,
    roots: HashMap<String, PathBuf>,
    senders: HashMap<String, watch::Sender<u64>>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    last_seen: Instant,
    hello: bool,
    reason: Option<String>,
}

impl PeerActor {
    pub fn new(setup: PeerSetup) -> Self {
        let roots = setup.folders.iter().map(|f| (f.id.clone(), f.path.clone())).collect();
        PeerActor { setup, roots, senders: HashMap::new(), pending: HashMap::new(), next_id: 1, last_seen: Instant::now(), hello: false, reason: None }
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

    fn hello(&self) -> proto::Hello {
        let folders = self
            .setup
            .folders
            .iter()
            .map(|f| {
                let progress = self.setup.store.progress(&self.setup.device, &f.id).unwrap_or_default();
                proto::FolderOffer { id: f.id.clone(), your_index_id: progress.index_id, your_max_sequence: progress.max_sequence, receive_only: f.mode == FolderMode::ReceiveOnly }
            })
            .collect();
        proto::Hello { protocol_version: crate::net::PROTOCOL_VERSION, device_name: self.setup.my_name.clone(), folders }
    }

    fn on_hello(&mut self, hello: proto::Hello, ctx: &mut Context<Self>) {
        if hello.protocol_version != crate::net::PROTOCOL_VERSION {
            return self.close(format!("protocol version {} is not {}", hello.protocol_version, crate::net::PROTOCOL_VERSION), ctx);
        }
        if self.hello {
            return self.close("second Hello".into(), ctx);
        }
        self.hello = true;
        tracing::info!(peer = %self.setup.device.prefix(), name = %hello.device_name, address = ?self.setup.address, "peer connected");
        let name = hello.device_name.clone();
        self.setup.directory.update(self.setup.device, |e| e.name = name);
        for offer in hello.folders {
            let Some(folder) = self.setup.folders.iter().find(|f| f.id == offer.id) else { continue };
            if folder.mode != FolderMode::ReceiveOnly {
                let meta = self.setup.store.folder_meta(&folder.id).unwrap_or_default();
                let start = if offer.your_index_id == meta.index_id { offer.your_max_sequence } else { 0 };
                let (tx, rx) = watch::channel(meta.max_sequence);
                self.senders.insert(folder.id.clone(), tx);
                tokio::spawn(send_index(self.setup.store.clone(), self.setup.control.tx.clone(), self.setup.counters.clone(), folder.id.clone(), meta.index_id, start, rx));
            }
            self.setup.index.do_send(RecomputeNeeds { folder: folder.id.clone() });
        }
    }

    fn on_index(&mut self, update: proto::IndexUpdate, ctx: &mut Context<Self>) {
        if !self.hello {
            return self.close("index before Hello".into(), ctx);
        }
        if update.files.len() > MAX_FILES_PER_UPDATE {
            return self.close(format!("index update of {} records", update.files.len()), ctx);
        }
        if !self.roots.contains_key(&update.folder) {
            return; // a folder we do not share with anyone; ignore
        }
        self.setup.index.do_send(RemoteIndex {
            device: self.setup.device,
            folder: update.folder,
            index_id: update.index_id,
            files: update.files,
            reply: ctx.address().recipient(),
        });
    }

    fn serve_chunk(&self, request: proto::ChunkRequest) {
        let root = self.roots.get(&request.folder).cloned();
        let tx = self.setup.data.tx.clone();
        let counters = self.setup.counters.clone();
        let compression = self.setup.compression;
        let index = self.setup.index.clone();
        tokio::task::spawn_blocking(move || {
            let result = read_chunk(root, &request).map(|data| encode(data, &request.signature, compression));
            if matches!(&result, Err(e) if e == CHANGED) {
                index.do_send(Rehash { folder: request.folder.clone(), path: request.path.clone() });
            }
            let response = match result {
                Ok((data, encoding)) => proto::ChunkResponse { id: request.id, data, encoding: encoding as i32, error: String::new() },
                Err(e) => proto::ChunkResponse { id: request.id, data: Vec::new(), encoding: 0, error: e },
            };
            let msg = DataMessage { kind: Some(data_message::Kind::Response(response)) };
            counters.add_out(msg.encoded_len());
            let _ = tx.blocking_send(msg);
        });
    }
}

const CHANGED: &str = "file changed since it was indexed";

fn read_chunk(root: Option<PathBuf>, r: &proto::ChunkRequest) -> Result<Vec<u8>, String> {
    let root = root.ok_or("folder not shared")?;
    if r.size as usize > crate::net::MAX_MESSAGE {
        return Err("chunk too large".into());
    }
    let path = safe_path(&root, &r.path).map_err(|e| e.to_string())?;
    let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
    let data = read_range(&file, r.offset, r.size).map_err(|e| e.to_string())?.ok_or("file is shorter now")?;
    if hash(&data).as_slice() != r.hash.as_slice() {
        return Err(CHANGED.into());
    }
    Ok(data)
}

/// Streams our index of one folder to the peer: everything after `start`, then each update.
async fn send_index(store: Arc<Store>, tx: mpsc::Sender<ControlMessage>, counters: Arc<PeerCounters>, folder: String, index_id: u64, start: u64, mut updates: watch::Receiver<u64>) {
    let mut sent = start;
    loop {
        let records = {
            let store = store.clone();
            let folder = folder.clone();
            match tokio::task::spawn_blocking(move || store.since(&folder, sent, INDEX_BATCH).map(|rs| {
                rs.into_iter()
                    .map(|r| {
                        // The peer holds our previous record of this path if we sent it before.
                        let diff = store.diff_for(&folder, &r).ok().flatten().filter(|d| d.base <= sent && d.base > 0);
                        wire::to_wire(&r, diff.as_ref().map(|d| (d.base, d.edits.as_slice())))
                    })
                    .collect::<Vec<_>>()
            }))
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
        // Within a batch a record may also be the base of a later one; the receiver resolves that.
        sent = records.iter().map(|r| r.sequence).max().unwrap_or(sent);
        let msg = ControlMessage { kind: Some(control_message::Kind::Index(proto::IndexUpdate { folder: folder.clone(), index_id, files: records })) };
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
        self.send_control(control_message::Kind::Hello(self.hello()));
        self.setup.index.do_send(Subscribe(ctx.address().recipient()));
        ctx.run_interval(PING_INTERVAL, |this, _| this.send_control(control_message::Kind::Ping(proto::Ping { nonce: 0 })));
        // Checked every second, so silence is noticed within a second of PEER_TIMEOUT.
        ctx.run_interval(Duration::from_secs(1), |this, ctx| {
            if this.last_seen.elapsed() > PEER_TIMEOUT {
                this.close(format!("no message for {}s", PEER_TIMEOUT.as_secs()), ctx);
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // The peer's protocol bytes since this node started, over all its connections.
        let (bytes_in, bytes_out) = (self.setup.counters.bytes_in.load(std::sync::atomic::Ordering::Relaxed), self.setup.counters.bytes_out.load(std::sync::atomic::Ordering::Relaxed));
        tracing::info!(peer = %self.setup.device.prefix(), reason = self.reason.as_deref().unwrap_or("connection closed"), bytes_in, bytes_out, "peer lost");
        self.setup.supervisor.do_send(PeerDown { device: self.setup.device, conn: self.setup.conn });
    }
}

impl StreamHandler<Result<ControlMessage, Status>> for PeerActor {
    fn handle(&mut self, item: Result<ControlMessage, Status>, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        let msg = match item {
            Ok(m) => m,
            Err(e) => return self.close(format!("control stream error: {}", e.message()), ctx),
        };
        self.setup.counters.add_in(msg.encoded_len());
        match msg.kind {
            Some(control_message::Kind::Hello(h)) => self.on_hello(h, ctx),
            Some(control_message::Kind::Index(u)) => self.on_index(u, ctx),
            Some(control_message::Kind::Ping(p)) => self.send_control(control_message::Kind::Pong(proto::Pong { nonce: p.nonce })),
            Some(control_message::Kind::Pong(_)) => {}
            Some(control_message::Kind::Close(c)) => {
                self.reason = Some(format!("peer closed: {}", c.reason));
                ctx.stop();
            }
            None => self.close("empty control message".into(), ctx),
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
            Err(e) => return self.close(format!("data stream error: {}", e.message()), ctx),
        };
        self.setup.counters.add_in(msg.encoded_len());
        match msg.kind {
            Some(data_message::Kind::Request(r)) => {
                if !self.hello || paths::validate(&r.path).is_err() {
                    return self.close(format!("bad chunk request for `{}`", r.path), ctx);
                }
                self.serve_chunk(r);
            }
            Some(data_message::Kind::Response(r)) => {
                if let Some(p) = self.pending.remove(&r.id) {
                    let wire = p.signature + r.data.len() as u64;
                    let result = if r.error.is_empty() {
                        decode(r.data, r.encoding, p.size, p.base.as_deref().map(|b| b.as_slice())).map(|data| Fetched { data, wire })
                    } else {
                        Err(r.error)
                    };
                    let _ = p.reply.send(result);
                }
            }
            None => self.close("empty data message".into(), ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<FetchChunk> for PeerActor {
    type Result = ResponseFuture<Result<Fetched, String>>;

    fn handle(&mut self, msg: FetchChunk, _: &mut Context<Self>) -> Self::Result {
        let id = self.next_id;
        self.next_id += 1;
        let (reply, response) = oneshot::channel();
        self.pending.insert(id, Pending { size: msg.chunk.size, base: msg.base, signature: msg.signature.len() as u64, reply });
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
            tx.send(data).await.map_err(|_| "connection closed".to_string())?;
            match tokio::time::timeout(FETCH_TIMEOUT, response).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err("connection closed".into()),
                Err(_) => Err("timed out".into()),
            }
        })
    }
}

impl Handler<IndexUpdated> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: IndexUpdated, _: &mut Context<Self>) {
        if let Some(tx) = self.senders.get(&msg.folder) {
            let _ = tx.send(msg.max_sequence);
        }
    }
}

impl Handler<Disconnect> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: Disconnect, ctx: &mut Context<Self>) {
        self.close(msg.reason, ctx);
    }
}
