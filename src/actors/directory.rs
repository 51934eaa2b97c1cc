//! The directory of live connections and their counters, shared read-mostly between the
//! Supervisor (which writes it), the Pullers (which pick sources from it) and the status API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use super::messages::PeerHandle;
use crate::core::DeviceId;
pub use crate::net::counters::PeerCounters;

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
