//! Our chunk requests to one peer: each gets an id, and its answer (matched by that id) is decoded
//! against the base it was asked with; one that gets no answer gives up after `FETCH_TIMEOUT`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use prost::Message as _;

use super::counters::PeerCounters;
use super::encoding::decode;
use super::proto::{self, data_message, DataMessage};
use super::wire::{self, FetchError};
use crate::core::session::FETCH_TIMEOUT;
use crate::core::Chunk;

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
    reply: oneshot::Sender<Result<Fetched, FetchError>>,
}

/// The requests of one connection waiting for their answers.
pub struct Fetches {
    pending: HashMap<u64, Pending>,
    next_id: u64,
}

impl Default for Fetches {
    fn default() -> Self {
        Fetches { pending: HashMap::new(), next_id: 1 }
    }
}

impl Fetches {
    /// A request for `chunk` of `path`: the message to send, and where its answer will come.
    /// With `base` (our old data for that region) and its rsync `signature`, the peer may answer
    /// with a delta against it.
    pub fn request(
        &mut self,
        folder: String,
        path: String,
        chunk: &Chunk,
        signature: Vec<u8>,
        base: Option<Arc<Vec<u8>>>,
    ) -> (DataMessage, oneshot::Receiver<Result<Fetched, FetchError>>) {
        let id = self.next_id;
        self.next_id += 1;
        let (reply, answer) = oneshot::channel();
        self.pending.insert(id, Pending { size: chunk.size, base, signature: signature.len() as u64, reply });
        let (offset, size, hash) = (chunk.offset, chunk.size, chunk.hash.to_vec());
        let request = proto::ChunkRequest { id, folder, path, offset, size, hash, signature };
        (DataMessage { kind: Some(data_message::Kind::Request(request)) }, answer)
    }

    /// The peer's answer to one of our requests (one we did not ask, or no longer wait for, is
    /// dropped).
    pub fn answered(&mut self, r: proto::ChunkResponse) {
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
}

/// Sends a request made by `Fetches::request` and waits for its answer.
pub async fn fetch(
    tx: mpsc::Sender<DataMessage>,
    request: DataMessage,
    answer: oneshot::Receiver<Result<Fetched, FetchError>>,
) -> Result<Fetched, FetchError> {
    tx.send(request).await.map_err(|_| FetchError::Closed)?;
    match tokio::time::timeout(FETCH_TIMEOUT, answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(FetchError::Closed),
        Err(_) => Err(FetchError::TimedOut),
    }
}

/// Our chunk requests on one connection, shared by the pulls and the Peer actor: a pull registers
/// its request and puts it on the data stream itself, then waits for the answer, which the actor
/// (reading the stream) hands over by id. A request no longer travels through the actor's mailbox
/// and back: on a 2-core machine each such trip was a thread switch or two per small file.
pub struct FetchPort {
    pending: Mutex<Fetches>,
    tx: mpsc::Sender<DataMessage>,
    counters: Arc<PeerCounters>,
    /// The folders shared with this peer: it is never asked for another folder's chunks.
    shared: HashSet<String>,
    open: AtomicBool,
}

impl FetchPort {
    pub fn new(tx: mpsc::Sender<DataMessage>, counters: Arc<PeerCounters>, shared: HashSet<String>) -> FetchPort {
        FetchPort { pending: Mutex::new(Fetches::default()), tx, counters, shared, open: AtomicBool::new(true) }
    }

    /// Whether the connection is still up.
    pub fn is_open(&self) -> bool {
        self.open.load(Relaxed) && !self.tx.is_closed()
    }

    /// Asks for `chunk` of `path` and waits for the answer (see `Fetches::request`).
    pub async fn fetch(
        &self,
        folder: String,
        path: String,
        chunk: &Chunk,
        signature: Vec<u8>,
        base: Option<Arc<Vec<u8>>>,
    ) -> Result<Fetched, FetchError> {
        if !self.shared.contains(&folder) {
            // Never reveal another folder's names or hashes to this peer (say, from records it
            // sent before the folder stopped being shared with it).
            let detail = "folder not shared with this peer".into();
            return Err(FetchError::Refused { code: proto::ChunkError::NotShared, detail });
        }
        if !self.is_open() {
            return Err(FetchError::Closed);
        }
        let (request, answer) = self.pending.lock().expect("fetch lock").request(folder, path, chunk, signature, base);
        self.counters.add_out(request.encoded_len());
        fetch(self.tx.clone(), request, answer).await
    }

    /// The peer's answer to one of our requests.
    pub fn answered(&self, r: proto::ChunkResponse) {
        self.pending.lock().expect("fetch lock").answered(r);
    }

    /// The connection ended: every request still waiting fails now.
    pub fn close(&self) {
        self.open.store(false, Relaxed);
        self.pending.lock().expect("fetch lock").pending.clear();
    }
}
