//! A connection's data stream, read on the multi-threaded runtime: the peer's chunk requests go
//! straight to the connection's chunk server, its answers to ours straight to the pulls waiting
//! for them (`FetchPort`). Neither goes through the Peer actor: on the actor's thread, shared with
//! the Index, each chunk cost a thread switch or two and waited behind the Index's work (a third
//! of a small file's CPU was context switches between threads). The actor hears only how the
//! stream ended.
//!
//! What a request may have is still the session's decision (`core::session`, shared with the
//! actor, which owns the Hello and liveness): a request before Hello or naming a path no peer of
//! ours would send is a violation; one for a folder not shared with the peer is answered with a
//! refusal and logged once per folder.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use prost::Message as _;

use super::counters::PeerCounters;
use super::fetch::FetchPort;
use super::proto::{self, data_message, DataMessage};
use super::serve::{self, Server};
use super::service::{is_garbage, Incoming};
use crate::core::session::{Session, Verdict};
use crate::core::DeviceId;

/// What reading one connection's data stream works with.
pub struct DataSide {
    pub device: DeviceId,
    pub session: Arc<Mutex<Session>>,
    pub server: Arc<Server>,
    pub fetches: Arc<FetchPort>,
    pub counters: Arc<PeerCounters>,
}

/// How a data stream ended.
#[derive(Debug)]
pub enum DataEnd {
    /// The peer closed it.
    Finished,
    /// A transport error: the connection closes.
    Closed(String),
    /// The peer broke the protocol: counted, and redialed only with backoff.
    Violation(String),
}

/// Something the peer sent for `folder`, which is not shared with it: refused, logged once (at
/// debug after the first time).
pub fn refuse_unshared(device: &DeviceId, folder: &str, what: &str, warn: bool) {
    if warn {
        tracing::warn!(peer = %device.prefix(), folder = %folder, what, "refused: folder not shared with this peer");
    } else {
        tracing::debug!(peer = %device.prefix(), folder = %folder, what, "refused: folder not shared with this peer");
    }
}

impl DataSide {
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().expect("session lock")
    }

    /// Reads the stream until it ends or the peer breaks the protocol.
    pub async fn run(self, mut rx: Incoming<DataMessage>) -> DataEnd {
        while let Some(item) = rx.next().await {
            self.session().seen(Instant::now());
            let msg = match item {
                Ok(msg) => msg,
                Err(e) if is_garbage(&e) => return DataEnd::Violation(format!("data stream: {}", e.message())),
                Err(e) => return DataEnd::Closed(format!("data stream error: {}", e.message())),
            };
            self.counters.add_in(msg.encoded_len());
            match msg.kind {
                Some(data_message::Kind::Request(r)) => {
                    if let Err(reason) = self.request(r) {
                        return DataEnd::Violation(reason);
                    }
                }
                Some(data_message::Kind::Response(r)) => self.fetches.answered(r),
                None => return DataEnd::Violation("empty data message".into()),
            }
        }
        DataEnd::Finished
    }

    /// A chunk request of the peer: served, refused, or (`Err`) a violation.
    fn request(&self, r: proto::ChunkRequest) -> Result<(), String> {
        let verdict = self.session().request(&r.folder, &r.path, || serve::check(&r));
        match verdict {
            Verdict::Take(Ok(hash)) => self.server.serve(r, hash),
            Verdict::Take(Err(e)) => {
                self.server.refuse(r.id, e.code(), e.kind(), format!("chunk request refused: {e}"))
            }
            Verdict::Unshared { warn } => {
                refuse_unshared(&self.device, &r.folder, "chunk request", warn);
                self.counters.refused_request();
                // An answer, so an honest requester moves on at once instead of timing out.
                let detail = "folder not shared with this peer".into();
                self.server.answer_refusal(r.id, proto::ChunkError::NotShared, detail);
            }
            Verdict::Violation(reason) => return Err(reason),
        }
        Ok(())
    }
}
