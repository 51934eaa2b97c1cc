//! One-way folders and their cluster (`core::divergence`), read from the index: which paths of a
//! receive-only folder were changed here (local changes), and which peer changes a send-only
//! folder did not take (remote changes). The Index acts on them (revert, override); the status
//! and the API list them.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::Store;
use crate::config::FolderMode;
use crate::core::divergence::{is_local_change, is_remote_change};
use crate::core::{DeviceId, FileKind, FileRecord, ShortId};

/// One path where a one-way folder and its cluster differ.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Divergent {
    pub path: String,
    /// "file", "directory" or "symlink".
    pub kind: String,
    /// The change is a delete (ours for a local change, the peer's for a remote change).
    pub deleted: bool,
    pub size: u64,
    /// The device (ID prefix) that made the change.
    pub by: String,
}

fn divergent(r: &FileRecord) -> Divergent {
    let kind = match r.kind {
        FileKind::File => "file",
        FileKind::Directory => "directory",
        FileKind::Symlink => "symlink",
    };
    Divergent { path: r.path.clone(), kind: kind.into(), deleted: r.deleted, size: r.size, by: r.modified_by.prefix() }
}

/// The newest version of `path` the peers announced (of two concurrent ones, the first seen).
fn cluster(store: &Store, devices: &[DeviceId], folder: &str, path: &str) -> Result<Option<FileRecord>> {
    let mut best: Option<FileRecord> = None;
    for d in devices {
        let Some(r) = store.remote(d, folder, path)? else { continue };
        if best.as_ref().is_none_or(|b| r.version.dominates(&b.version)) {
            best = Some(r);
        }
    }
    Ok(best)
}

/// Local changes of a receive-only folder (our records), or remote changes not taken by a
/// send-only one (the peers' records); nothing for a send-receive folder. Path order. Memory
/// holds only the changes: the records are streamed from the index (this runs for every status
/// request of a one-way folder).
pub fn changes(store: &Store, folder: &str, mode: FolderMode, me: ShortId) -> Result<Vec<FileRecord>> {
    let devices = store.remote_devices(folder)?;
    match mode {
        FolderMode::SendReceive => Ok(Vec::new()),
        // Only records made here can be local changes.
        FolderMode::ReceiveOnly => {
            let mut out = Vec::new();
            for l in store.local_records(folder).filter(|l| l.modified_by == me) {
                if is_local_change(&l, me, cluster(store, &devices, folder, &l.path)?.as_ref()) {
                    out.push(l);
                }
            }
            Ok(out)
        }
        FolderMode::SendOnly => {
            let mut out: std::collections::BTreeMap<String, FileRecord> = std::collections::BTreeMap::new();
            for d in &devices {
                for r in store.remote_records(d, folder) {
                    if out.get(&r.path).is_some_and(|cur| !r.version.dominates(&cur.version)) {
                        continue;
                    }
                    if is_remote_change(store.get(folder, &r.path)?.as_ref(), &r) {
                        out.insert(r.path.clone(), r);
                    }
                }
            }
            Ok(out.into_values().collect())
        }
    }
}

/// The same, as shown by the API.
pub fn listed(store: &Store, folder: &str, mode: FolderMode, me: ShortId) -> Result<Vec<Divergent>> {
    Ok(changes(store, folder, mode, me)?.iter().map(divergent).collect())
}
