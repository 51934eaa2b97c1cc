//! Live numbers about the node that the actors update and the status API reads: per folder its
//! state and what it still needs, per node the totals of pulls, conflicts and errors.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::directory::PeerDirectory;
use crate::config::FolderConfig;
use crate::core::retry::{FailureKind, PathFailure};
use crate::core::status::{folder_state, Failed};
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
    /// Files scans read and hashed (new or changed on disk), and their bytes: a restart on an
    /// unchanged tree adds nothing here.
    pub hashed_files: AtomicU64,
    pub hashed_bytes: AtomicU64,
    /// Paths that scans of changed paths looked at (full scans not counted): the watcher's events,
    /// rehashes, directories and links a pull made.
    pub looked_paths: AtomicU64,
    /// Full scans done since the start.
    pub full_scans: AtomicU64,
    /// How long the last full scan took (ms).
    pub last_full_scan_ms: AtomicU64,
    /// Chunk bytes from peers minus the bytes that carried them: what rsync deltas and compression
    /// kept off the wire.
    pub bytes_saved_on_wire: AtomicU64,
    /// Why the folder is stopped (its root is gone or replaced, or a scan would delete every file);
    /// `faulted` mirrors it for the hot paths.
    pub fault: Mutex<Option<String>>,
    pub faulted: AtomicBool,
    /// Paths whose pull failed and waits for a retry, as the Puller last published them.
    pub failures: Mutex<BTreeMap<String, PathFailure>>,
    /// Files that exist but could not be read, with why, as the Index last saw them.
    pub unreadable: Mutex<BTreeMap<String, String>>,
    /// Needs the Puller holds in memory now (its window; the rest waits in the store).
    pub window: AtomicU64,
    /// The most it ever held.
    pub window_peak: AtomicU64,
    /// A one-way folder's paths that differ from the cluster (receive-only: local changes;
    /// send-only: peer changes not taken), kept by the Index as paths change.
    pub diverged: AtomicU64,
}

/// Most failed paths listed in a status report (the count is always complete).
const FAILURES_LISTED: usize = 100;

impl FolderGauges {
    pub fn set_fault(&self, reason: Option<String>) {
        self.faulted.store(reason.is_some(), Relaxed);
        *self.fault.lock().expect("gauges lock") = reason;
    }

    /// Counts the files a scan read and hashed: every live file it has a record for (an unchanged
    /// one gets none).
    pub fn count_hashed(&self, records: &[crate::core::FileRecord]) {
        for r in records.iter().filter(|r| r.is_file() && !r.deleted) {
            self.hashed_files.fetch_add(1, Relaxed);
            self.hashed_bytes.fetch_add(r.size, Relaxed);
        }
    }
}

pub struct NodeState {
    pub device_id: DeviceId,
    pub name: String,
    pub folders: Vec<(FolderConfig, Arc<FolderGauges>)>,
    pub directory: PeerDirectory,
    pub store: Arc<Store>,
    /// Each folder's version store, by folder id.
    pub versions: std::collections::HashMap<String, Arc<VersionStore>>,
    /// The longest the actor thread (every actor and the signal handler share it) was busy
    /// past a timer, in milliseconds, since the node started.
    pub actor_stall_max_ms: AtomicU64,
}

impl NodeState {
    pub fn gauges(&self, folder: &str) -> Arc<FolderGauges> {
        self.folders.iter().find(|(f, _)| f.id == folder).map(|(_, g)| g.clone()).unwrap_or_default()
    }

    /// The JSON of `GET /rest/status` (CONTRACT.md), plus a few extra fields.
    pub fn snapshot(&self) -> anyhow::Result<StatusReport> {
        let folders = self
            .folders
            .iter()
            .map(|(f, g)| -> anyhow::Result<FolderReport> {
                let counts = self.store.local_counts(&f.id);
                let (files, bytes) = (counts.records, counts.bytes);
                let need_files = g.need_files.load(Relaxed);
                let (versions_files, versions_bytes) = self.versions.get(&f.id).map_or((0, 0), |v| v.usage());
                let (local_changes, remote_changes) = f.mode.changes(g.diverged.load(Relaxed));
                let fault = g.fault.lock().expect("gauges lock").clone();
                let (failed_paths, pull_errors) = {
                    let failures = g.failures.lock().expect("gauges lock");
                    let listed = failures
                        .iter()
                        .take(FAILURES_LISTED)
                        .map(|(path, f)| PullErrorReport::new(path, f))
                        .collect::<Vec<_>>();
                    (failures.len() as u64, listed)
                };
                let read_errors: Vec<ReadErrorReport> = g
                    .unreadable
                    .lock()
                    .expect("gauges lock")
                    .iter()
                    .take(FAILURES_LISTED)
                    .map(|(path, reason)| ReadErrorReport { path: path.clone(), reason: reason.clone() })
                    .collect();
                let unreadable_paths = g.unreadable.lock().expect("gauges lock").len() as u64;
                let failed = pull_errors.iter().map(|e| Failed { path: &e.path, kind: e.kind, reason: &e.reason });
                let (state, error) = folder_state(fault, failed, g.scanning.load(Relaxed), need_files);
                Ok(FolderReport {
                    id: f.id.clone(),
                    path: f.path.display().to_string(),
                    state: state.as_str().into(),
                    error,
                    failed_paths,
                    pull_errors,
                    unreadable_paths,
                    read_errors,
                    need_window: g.window.load(Relaxed),
                    need_window_peak: g.window_peak.load(Relaxed),
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
                    hashed_files: g.hashed_files.load(Relaxed),
                    hashed_bytes: g.hashed_bytes.load(Relaxed),
                    looked_paths: g.looked_paths.load(Relaxed),
                    full_scans: g.full_scans.load(Relaxed),
                    last_full_scan_ms: g.last_full_scan_ms.load(Relaxed),
                    bytes_saved_on_wire: g.bytes_saved_on_wire.load(Relaxed),
                    versions_files,
                    versions_bytes,
                    local_changes,
                    remote_changes,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
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
                refused_records: e.counters.refused_records.load(Relaxed),
                refused_requests: e.counters.refused_requests.load(Relaxed),
                protocol_violations: e.counters.protocol_violations.load(Relaxed),
                failed_fetches: e.counters.failed_fetches.load(Relaxed),
                needs_admitted: e.counters.needs_admitted.load(Relaxed),
                needs_held: e.counters.needs_held.load(Relaxed),
                index_batches: e.counters.index_batches.load(Relaxed),
                index_batch_max: e.counters.index_batch_max.load(Relaxed),
            })
            .collect();
        Ok(StatusReport {
            device_id: self.device_id.to_string(),
            name: self.name.clone(),
            folders,
            peers,
            actor_stall_max_ms: self.actor_stall_max_ms.load(Relaxed),
            index_memory: self.store.memory(),
        })
    }
}

#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct StatusReport {
    pub device_id: String,
    pub name: String,
    pub folders: Vec<FolderReport>,
    pub peers: Vec<PeerReport>,
    /// The longest the actor thread was held past a timer since the node started (ms).
    #[serde(default)]
    pub actor_stall_max_ms: u64,
    /// What the index holds in memory now (RocksDB's block cache, memtables, table readers).
    #[serde(default)]
    pub index_memory: crate::store::IndexMemory,
}

#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct FolderReport {
    pub id: String,
    pub path: String,
    pub state: String,
    /// One line saying why, when `state` is `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Paths whose last pull failed (transient ones included), and the first of them in detail.
    #[serde(default)]
    pub failed_paths: u64,
    #[serde(default)]
    pub pull_errors: Vec<PullErrorReport>,
    /// Local files that could not be read (skipped, not announced, never taken for deleted).
    #[serde(default)]
    pub unreadable_paths: u64,
    #[serde(default)]
    pub read_errors: Vec<ReadErrorReport>,
    /// Needs held in memory by the Puller now, and at most so far (the rest wait in the index).
    #[serde(default)]
    pub need_window: u64,
    #[serde(default)]
    pub need_window_peak: u64,
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
    /// Files the folder's scans read and hashed, and their bytes.
    #[serde(default)]
    pub hashed_files: u64,
    #[serde(default)]
    pub hashed_bytes: u64,
    /// Paths scans of changed paths looked at (full scans not counted).
    #[serde(default)]
    pub looked_paths: u64,
    /// Full scans of the folder done since the node started.
    #[serde(default)]
    pub full_scans: u64,
    /// How long the last of them took, in milliseconds.
    #[serde(default)]
    pub last_full_scan_ms: u64,
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

/// A local file that exists but could not be read.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ReadErrorReport {
    pub path: String,
    pub reason: String,
}

/// One path whose pull failed: why, since when, and when it is tried again (ms since the epoch).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct PullErrorReport {
    pub path: String,
    pub kind: FailureKind,
    pub reason: String,
    pub attempts: u32,
    pub since_ms: u64,
    pub next_retry_ms: u64,
}

impl PullErrorReport {
    fn new(path: &str, f: &PathFailure) -> Self {
        PullErrorReport {
            path: path.to_string(),
            kind: f.kind,
            reason: f.reason.clone(),
            attempts: f.attempts,
            since_ms: f.since_ms,
            next_retry_ms: f.next_retry_ms,
        }
    }
}

#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct PeerReport {
    pub device_id: String,
    pub name: String,
    pub address: String,
    pub connected: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(default)]
    pub refused_records: u64,
    #[serde(default)]
    pub refused_requests: u64,
    #[serde(default)]
    pub protocol_violations: u64,
    /// Our chunk requests to the peer that failed.
    #[serde(default)]
    pub failed_fetches: u64,
    /// The peer's needs admitted to the pull queue now, and those held until its budget frees.
    #[serde(default)]
    pub needs_admitted: u64,
    #[serde(default)]
    pub needs_held: u64,
    /// Index messages of the peer taken in, and the most records one of them held.
    #[serde(default)]
    pub index_batches: u64,
    #[serde(default)]
    pub index_batch_max: u64,
}
