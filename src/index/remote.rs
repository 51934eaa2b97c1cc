//! A batch of a peer's records, decoded against what we hold of its index and stored.

use std::collections::HashMap;

use crate::core::replica::{self, ScanVerdict};
use crate::core::{DeviceId, FileRecord};
use crate::net::proto::FileInfo;
use crate::net::wire;
use crate::store::{Progress, Store};

/// Why a peer's batch was refused: the connection is closed with `reason`; `violation`, when the
/// peer broke the protocol, is how many records were refused with it.
pub struct Refusal {
    pub reason: String,
    pub violation: Option<usize>,
}

/// A peer's batch as stored.
pub struct Stored {
    pub records: Vec<FileRecord>,
    /// The peer's index was recreated: every record we had of it is gone, named in the batch or not.
    pub reset: bool,
}

/// Decodes `files` (a chunk list may be an edit of the version of the path we hold of the peer)
/// and stores them as `device`'s records of `folder` with its read position (an index of another
/// `index_id` replaces what we had of it). `Err(None)`: the store failed, logged, and the batch is
/// dropped; `Err(Some(_))`: the connection must close.
pub fn store_remote(
    store: &Store,
    device: &DeviceId,
    folder: &str,
    index_id: u64,
    files: Vec<FileInfo>,
) -> Result<Stored, Option<Refusal>> {
    let mut progress = match store.progress(device, folder) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(peer = %device.prefix(), folder = %folder, error = %format!("{e:#}"), "cannot read the index; disconnecting");
            return Err(Some(Refusal { reason: "cannot read our index".into(), violation: None }));
        }
    };
    let reset = progress.index_id != 0 && progress.index_id != index_id;
    if progress.index_id != index_id {
        // The peer's index was recreated: forget what we had of it.
        if reset {
            tracing::info!(peer = %device.prefix(), folder = %folder, "peer index was reset; rereading it");
        }
        let _ = store.clear_remote(device, folder);
        progress = Progress { index_id, max_sequence: 0 };
    }
    let total = files.len();
    let mut records = Vec::with_capacity(total);
    let mut batch: HashMap<String, FileRecord> = HashMap::new();
    for info in files {
        let base = |path: &str, seq: u64| {
            batch
                .get(path)
                .cloned()
                .or_else(|| match store.remote(device, folder, path) {
                    Ok(r) => r,
                    // Taken for a missing base: everything is asked for again.
                    Err(e) => {
                        tracing::error!(folder = %folder, path, error = %format!("{e:#}"), "cannot read the index");
                        None
                    }
                })
                .filter(|r| r.sequence == seq)
                .map(|r| r.chunks)
        };
        match wire::from_wire(info, base) {
            Ok(record) => {
                progress.max_sequence = progress.max_sequence.max(record.sequence);
                batch.insert(record.path.clone(), record.clone());
                records.push(record);
            }
            Err(e) => {
                // A missing base is a race (we lost what the peer assumes we hold), not abuse.
                let missing_base = matches!(e, wire::WireError::MissingBase { .. });
                if missing_base {
                    // Ask for everything again on the next connection.
                    let _ = store.put_remote(device, folder, Progress { index_id: 0, max_sequence: 0 }, &[]);
                }
                tracing::warn!(peer = %device.prefix(), folder = %folder, error = %e, refused_records = total, "peer sent an invalid record; disconnecting");
                return Err(Some(Refusal {
                    reason: format!("invalid index update: {e}"),
                    violation: (!missing_base).then_some(total),
                }));
            }
        }
    }
    if let Err(e) = store.put_remote(device, folder, progress, &records) {
        tracing::error!(error = %e, "cannot store a peer's index");
        return Err(None);
    }
    Ok(Stored { records, reset })
}

/// A scan's records, judged against our records now (`replica::judge_scanned`).
#[derive(Default)]
pub struct Judged {
    /// To commit.
    pub fresh: Vec<FileRecord>,
    /// A pull changed their record meanwhile: look again.
    pub stale: Vec<String>,
    /// Local deletes, to be held.
    pub deletes: Vec<FileRecord>,
}

/// Judges what a scan found against our records now. A record we cannot read is skipped (the
/// periodic rescan looks at the path again): nothing is committed against it.
pub fn judge_scanned(store: &Store, folder: &str, records: Vec<FileRecord>) -> Judged {
    let mut judged = Judged::default();
    for record in records {
        // The scan compared against the record at `record.sequence`; if that changed since
        // (a pull landed meanwhile), the result is stale: look at the path again.
        let current = match store.get(folder, &record.path) {
            Ok(current) => current,
            Err(e) => {
                tracing::error!(folder, path = %record.path, error = %format!("{e:#}"), "cannot read the index");
                continue;
            }
        };
        match replica::judge_scanned(&record, current.as_ref()) {
            ScanVerdict::Stale => judged.stale.push(record.path),
            ScanVerdict::HoldDelete => judged.deletes.push(record),
            ScanVerdict::Commit => {
                tracing::debug!(folder, path = %record.path, size = record.size, "local change");
                judged.fresh.push(record);
            }
        }
    }
    judged
}
