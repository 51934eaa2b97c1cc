//! Live numbers about the node that the actors update and the status API reads: per folder its
//! state and what it still needs, per node the totals of pulls, conflicts and errors.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde::Serialize;

use super::directory::PeerDirectory;
use crate::config::FolderConfig;
use crate::core::DeviceId;
use crate::fs::versions::VersionStore;
use crate::store::Store;

#[derive(Debug, Default)]
pub struct FolderGauges {
    pub scanning: AtomicBool,
    pub need_files: AtomicU64,
    pub need_bytes: AtomicU64,
    /// Bytes of the file being pulled right now, and how far it is.
    pub current_total: AtomicU64,
    pub current_done: AtomicU64,
    pub pulls: AtomicU64,
    pub conflicts: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_reused: AtomicU64,
    /// Chunk bytes from peers minus the bytes that carried them: what rsync deltas and compression
    /// kept off the wire.
    pub bytes_saved_on_wire: AtomicU64,
}

pub struct NodeState {
    pub device_id: DeviceId,
    pub name: String,
    pub folders: Vec<(FolderConfig, Arc<FolderGauges>)>,
    pub directory: PeerDirectory,
    pub store: Arc<Store>,
    /// Each folder's version store, by folder id.
    pub versions: std::collections::HashMap<String, Arc<VersionStore>>,
    /// The Index, once started (the API sends it `Revert` and `Override`).
    pub index: std::sync::OnceLock<actix::Addr<super::index::IndexActor>>,
}

impl NodeState {
    pub fn gauges(&self, folder: &str) -> Arc<FolderGauges> {
        self.folders.iter().find(|(f, _)| f.id == folder).map(|(_, g)| g.clone()).unwrap_or_default()
    }

    /// The JSON of `GET /rest/status` (CONTRACT.md), plus a few extra fields.
    pub fn snapshot(&self) -> StatusReport {
        let folders = self
            .folders
            .iter()
            .map(|(f, g)| {
                let (mut files, mut bytes) = (0u64, 0u64);
                for r in self.store.local_records(&f.id).filter(|r| !r.deleted) {
                    files += 1;
                    bytes += r.size;
                }
                let need_files = g.need_files.load(Relaxed);
                let (versions_files, versions_bytes) = self.versions.get(&f.id).map_or((0, 0), |v| v.usage());
                let diverged = super::index::modes::changes(&self.store, &f.id, f.mode, self.device_id.short()).len() as u64;
                let (local_changes, remote_changes) = match f.mode {
                    crate::config::FolderMode::ReceiveOnly => (diverged, 0),
                    crate::config::FolderMode::SendOnly => (0, diverged),
                    crate::config::FolderMode::SendReceive => (0, 0),
                };
                let state = if g.scanning.load(Relaxed) {
                    "scanning"
                } else if need_files > 0 {
                    "syncing"
                } else {
                    "idle"
                };
                FolderReport {
                    id: f.id.clone(),
                    path: f.path.display().to_string(),
                    state: state.into(),
                    local_files: files,
                    local_bytes: bytes,
                    need_files,
                    need_bytes: g.need_bytes.load(Relaxed),
                    current_total: g.current_total.load(Relaxed),
                    current_done: g.current_done.load(Relaxed),
                    pulls: g.pulls.load(Relaxed),
                    conflicts: g.conflicts.load(Relaxed),
                    errors: g.errors.load(Relaxed),
                    bytes_reused: g.bytes_reused.load(Relaxed),
                    bytes_saved_on_wire: g.bytes_saved_on_wire.load(Relaxed),
                    versions_files,
                    versions_bytes,
                    local_changes,
                    remote_changes,
                }
            })
            .collect();
        let peers = self
            .directory
            .snapshot()
            .into_iter()
            .map(|(id, e)| PeerReport {
                device_id: id.to_string(),
                name: e.name,
                address: e.address.map(|a| a.to_string()).unwrap_or_default(),
                connected: e.connected.is_some_and(|a| a.connected()),
                bytes_in: e.counters.bytes_in.load(Relaxed),
                bytes_out: e.counters.bytes_out.load(Relaxed),
            })
            .collect();
        StatusReport { device_id: self.device_id.to_string(), name: self.name.clone(), folders, peers }
    }
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct StatusReport {
    pub device_id: String,
    pub name: String,
    pub folders: Vec<FolderReport>,
    pub peers: Vec<PeerReport>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct FolderReport {
    pub id: String,
    pub path: String,
    pub state: String,
    pub local_files: u64,
    pub local_bytes: u64,
    pub need_files: u64,
    pub need_bytes: u64,
    pub current_total: u64,
    pub current_done: u64,
    pub pulls: u64,
    pub conflicts: u64,
    pub errors: u64,
    pub bytes_reused: u64,
    pub bytes_saved_on_wire: u64,
    /// Kept versions in the folder's version store, and their bytes.
    #[serde(default)]
    pub versions_files: u64,
    #[serde(default)]
    pub versions_bytes: u64,
    /// Receive-only: paths changed here and not announced (`syncnode revert` gives them back).
    #[serde(default)]
    pub local_changes: u64,
    /// Send-only: peer changes not taken (`syncnode override` makes ours win).
    #[serde(default)]
    pub remote_changes: u64,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct PeerReport {
    pub device_id: String,
    pub name: String,
    pub address: String,
    pub connected: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
}
