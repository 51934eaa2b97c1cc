//! The directory of live connections and their counters, shared read-mostly between the
//! Supervisor (which writes it), the Pullers (which pick sources from it) and the status API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::messages::PeerHandle;
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

#[derive(Clone)]
pub struct PeerEntry {
    pub name: String,
    pub address: Option<SocketAddr>,
    pub connected: Option<PeerHandle>,
    pub counters: Arc<PeerCounters>,
}

#[derive(Clone, Default)]
pub struct PeerDirectory(Arc<RwLock<HashMap<DeviceId, PeerEntry>>>);

impl PeerDirectory {
    pub fn counters(&self, device: &DeviceId) -> Arc<PeerCounters> {
        let mut map = self.0.write().expect("directory lock");
        map.entry(*device)
            .or_insert_with(|| PeerEntry {
                name: String::new(),
                address: None,
                connected: None,
                counters: Arc::default(),
            })
            .counters
            .clone()
    }

    pub fn update(&self, device: DeviceId, f: impl FnOnce(&mut PeerEntry)) {
        let mut map = self.0.write().expect("directory lock");
        let entry = map.entry(device).or_insert_with(|| PeerEntry {
            name: String::new(),
            address: None,
            connected: None,
            counters: Arc::default(),
        });
        f(entry);
    }

    pub fn connected(&self, device: &DeviceId) -> Option<PeerHandle> {
        self.0.read().expect("directory lock").get(device).and_then(|e| e.connected.clone())
    }

    pub fn snapshot(&self) -> Vec<(DeviceId, PeerEntry)> {
        let mut v: Vec<_> = self.0.read().expect("directory lock").iter().map(|(k, v)| (*k, v.clone())).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }
}
