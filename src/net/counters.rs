//! The traffic and refusal counters of one peer, kept across its connections: shared by the Peer
//! actor, the chunk server and index senders (`net::serve`), the Pullers and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::DeviceId;

/// Traffic and refusal counters of one peer, kept across reconnections.
#[derive(Debug, Default)]
pub struct PeerCounters {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Records the peer sent that were refused (nothing of their batch is applied).
    pub refused_records: AtomicU64,
    /// Chunk requests of the peer that were refused (bad, over a limit, not ours to serve).
    pub refused_requests: AtomicU64,
    /// Times the peer broke the protocol (garbage, bad messages) and was cut off.
    pub protocol_violations: AtomicU64,
    /// Our chunk requests to the peer that failed (refused, timed out, or cut by a disconnect).
    pub failed_fetches: AtomicU64,
    /// Needs charged to the peer in the Pullers now (`core::need_budget`), and needs of the peer
    /// held back in the index until its budget frees.
    pub needs_admitted: AtomicU64,
    pub needs_held: AtomicU64,
    /// Index messages of the peer taken in, and the most records one of them held: the exchange
    /// goes in bounded batches, and these show it.
    pub index_batches: AtomicU64,
    pub index_batch_max: AtomicU64,
    /// Kinds of refusal already logged for this peer: each is logged once, then only counted.
    logged: std::sync::Mutex<std::collections::HashSet<&'static str>>,
}

impl PeerCounters {
    pub fn add_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn add_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn refused_records(&self, n: usize) {
        self.refused_records.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn refused_request(&self) {
        self.refused_requests.fetch_add(1, Ordering::Relaxed);
    }
    /// An index message of `records` records taken in.
    pub fn index_batch(&self, records: usize) {
        self.index_batches.fetch_add(1, Ordering::Relaxed);
        self.index_batch_max.fetch_max(records as u64, Ordering::Relaxed);
    }
    pub fn failed_fetch(&self) {
        self.failed_fetches.fetch_add(1, Ordering::Relaxed);
    }
    pub fn violation(&self) {
        self.protocol_violations.fetch_add(1, Ordering::Relaxed);
    }
    /// True the first time a refusal of this kind comes from this peer: the caller logs it then
    /// (with the peer and the reason), and only counts the ones after, so a peer repeating itself
    /// cannot flood the log.
    pub fn first(&self, kind: &'static str) -> bool {
        self.logged.lock().expect("refusal kinds lock").insert(kind)
    }
}

impl PeerCounters {
    /// Counts a refused chunk request, and logs it the first time this kind comes from `device`.
    pub fn refused(&self, device: &DeviceId, kind: &'static str, reason: &str) {
        self.refused_request();
        if self.first(kind) {
            tracing::warn!(peer = %device.prefix(), kind, reason, "refused a chunk request (further ones of this kind only counted)");
        } else {
            tracing::debug!(peer = %device.prefix(), kind, reason, "refused a chunk request");
        }
    }
}
