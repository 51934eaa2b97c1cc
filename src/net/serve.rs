//! Our side of serving one peer: its chunk requests, read from disk only as our index announced
//! them, and our index, streamed per folder. What is served at all is the session's decision
//! (`core::session`, taken by the Peer actor); this module reads and sends, bounded per peer.
//!
//! A trusted peer may still turn hostile, so serving is bounded: a chunk is read only if our index
//! announced it at that path, offset and size (never another range, never through a symlink); at
//! most `READERS_PER_PEER` reads run at once, on blocking threads; the bytes being read or queued
//! for the peer stay within its connection's `SendBudget` (requests beyond it wait, and past a
//! bounded queue are refused as busy). Whatever is refused is logged once per peer and kind and
//! counted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prost::Message as _;
use tokio::sync::{mpsc, watch, Semaphore};

use super::counters::PeerCounters;
use super::encoding::encode;
use super::proto::{self, control_message, data_message, ControlMessage, DataMessage};
use super::service::SendBudget;
use super::wire::{self, RequestError};
use crate::config::Compression;
use crate::core::session::{Waiting, READERS_PER_PEER};
use crate::core::DeviceId;
use crate::fs::chunker::{hash, read_range};
use crate::fs::safe_path::{open_inside, refuse_once, UnsafePath};
use crate::fs::INLINE_IO;
use crate::store::Store;

/// Records read from the store for one index message, before it is cut to fit.
pub const INDEX_BATCH: usize = 1000;

/// Checks a peer's chunk request: `Err` (a violation) for a path no peer of ours would ever
/// name, `Ok(Err)` for a request refused as invalid, `Ok(Ok(hash))` for one to serve.
#[allow(clippy::type_complexity)]
pub fn check(request: &proto::ChunkRequest) -> Result<Result<[u8; 32], RequestError>, String> {
    match wire::check_request(request) {
        Err(e @ RequestError::Path { .. }) => Err(format!("chunk request: {e}")),
        checked => Ok(checked),
    }
}

/// What a connection's chunk server works with.
pub struct Serving {
    pub device: DeviceId,
    pub store: Arc<Store>,
    /// The folders shared with the peer, and where they are.
    pub roots: HashMap<String, PathBuf>,
    pub compression: Compression,
    /// The data stream's sender, and the budget of what it queues.
    pub tx: mpsc::Sender<DataMessage>,
    pub budget: SendBudget,
    pub counters: Arc<PeerCounters>,
    /// A file no longer matches its record although its size and mtime do: hash it again.
    pub rehash: Box<dyn Fn(String, String) + Send + Sync>,
}

/// The chunk server of one connection: the requests waiting, and the reads running.
pub struct Server {
    with: Serving,
    waiting: Mutex<Waiting>,
    readers: Semaphore,
}

impl Server {
    pub fn new(with: Serving) -> Server {
        Server { with, waiting: Mutex::new(Waiting::default()), readers: Semaphore::new(READERS_PER_PEER) }
    }

    /// The connection ended: requests still waiting to be served give up (nobody would read them).
    pub fn close(&self) {
        self.with.budget.close();
        self.readers.close();
    }

    /// Answers request `id` with a refusal (not counted). A full queue drops it: the requester's
    /// timeout covers that.
    pub fn answer_refusal(&self, id: u64, code: proto::ChunkError, detail: String) {
        let msg = DataMessage { kind: Some(data_message::Kind::Response(wire::refusal(id, code, detail))) };
        self.with.counters.add_out(msg.encoded_len());
        let _ = self.with.tx.try_send(msg);
    }

    /// Refuses request `id`: counted, logged the first time this kind comes from this peer, answered.
    pub fn refuse(&self, id: u64, code: proto::ChunkError, kind: &'static str, reason: String) {
        self.with.counters.refused(&self.with.device, kind, &reason);
        self.answer_refusal(id, code, reason);
    }

    /// Serves one checked request (`hash` is the one it names): it waits for the peer's send
    /// budget and a reader, and the chunk is read on a blocking thread (only if our index
    /// announced it), or it is refused at once as busy.
    pub fn serve(self: &Arc<Self>, request: proto::ChunkRequest, hash: [u8; 32]) {
        let Some(root) = self.with.roots.get(&request.folder).cloned() else {
            let reason = format!("folder `{}` is not shared", request.folder);
            return self.refuse(request.id, proto::ChunkError::NotShared, "folder", reason);
        };
        let cost = request.encoded_len();
        if !self.waiting.lock().expect("waiting lock").admit(cost) {
            let reason = "too many requests waiting; ask again later".into();
            return self.refuse(request.id, proto::ChunkError::Busy, "busy", reason);
        }
        let this = self.clone();
        tokio::spawn(async move {
            let (w, size) = (&this.with, request.size);
            // Both fail only once the connection has ended (`close`): nobody would read the answer.
            let (Ok(()), Ok(reader)) = (w.budget.take(size).await, this.readers.acquire().await) else {
                return;
            };
            this.waiting.lock().expect("waiting lock").started(cost);
            let (id, folder, path) = (request.id, request.folder.clone(), request.path.clone());
            let (store, read_root, compression) = (w.store.clone(), root.clone(), w.compression);
            let read = move || {
                read_chunk(&store, &read_root, &request, &hash)
                    .map(|data| encode(data, &request.signature, compression))
            };
            // A small chunk is read right here: the trip to a blocking thread and back cost more
            // than the read (most of what serving a small file cost).
            let result = if u64::from(size) <= INLINE_IO {
                read()
            } else {
                tokio::task::spawn_blocking(read).await.unwrap_or_else(|e| Err(ServeError::Io(e.to_string())))
            };
            drop(reader);
            match &result {
                Err(ServeError::Changed) => (w.rehash)(folder, path),
                Err(ServeError::Unsafe(e)) if e.is_link() => {
                    w.counters.refused_request();
                    refuse_once(&root, e, Some(&w.device.prefix()));
                }
                Err(e @ ServeError::NotIndexed) => {
                    w.counters.refused(&w.device, "not-indexed", &format!("chunk request for `{path}`: {e}"))
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
            w.budget.give(size as usize - queued.min(size as usize));
            let msg = DataMessage { kind: Some(data_message::Kind::Response(response)) };
            w.counters.add_out(msg.encoded_len());
            if w.tx.send(msg).await.is_err() {
                w.budget.give(queued);
            }
        });
    }
}

/// Why a chunk was not served (the text goes back to the requester).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
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
    /// The code the refusal carries on the wire.
    pub fn code(&self) -> proto::ChunkError {
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
pub fn read_chunk(
    store: &Store,
    root: &Path,
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

/// Up to `INDEX_BATCH` of our records of `folder` after sequence `sent`, for a peer that holds
/// every one up to it: a record of a big file goes as its chunk edits when the peer holds the
/// previous version (of this path, or of the one it was renamed from).
fn index_since(store: &Store, folder: &str, sent: u64) -> anyhow::Result<Vec<proto::FileInfo>> {
    let records = store.since(folder, sent, INDEX_BATCH)?;
    Ok(records
        .into_iter()
        .map(|r| {
            // A difference is only a saving: one that cannot be read goes as the whole record.
            let diff = store.diff_to_send(folder, &r, sent).unwrap_or_else(|e| {
                tracing::warn!(folder = %folder, path = %r.path, error = %e, "cannot read a stored difference; sending the whole record");
                None
            });
            let diff =
                diff.as_ref().map(|d| wire::Diff { base: d.base, base_path: d.base_path.as_deref(), edits: &d.edits });
            wire::to_wire(&r, diff)
        })
        .collect())
}

/// Streams our index of one folder to the peer: everything after `start`, then each update.
pub async fn send_index(
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
        let (store, read) = (store.clone(), folder.clone());
        let Ok(Ok(mut records)) = tokio::task::spawn_blocking(move || index_since(&store, &read, sent)).await else {
            return;
        };
        if records.is_empty() {
            if updates.changed().await.is_err() {
                return;
            }
            continue;
        }
        let last = records.last().map_or(sent, |r| r.sequence);
        let fit = wire::fit_batch(&folder, &mut records);
        records.truncate(fit);
        // Within a batch a record may also be the base of a later one; the receiver resolves that.
        // A batch cut short resumes after its last record; one whose records were all skipped,
        // after what was read.
        sent = records.iter().map(|r| r.sequence).max().unwrap_or(last);
        if records.is_empty() {
            continue;
        }
        let update = proto::IndexUpdate { folder: folder.clone(), index_id, files: records };
        let msg = ControlMessage { kind: Some(control_message::Kind::Index(update)) };
        counters.add_out(msg.encoded_len());
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}
