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

/// Whether `path` is one of [`changes`] now: what the Index asks of each path a commit or a peer's
/// batch touched, so that the status keeps a count instead of walking the folder per request.
/// `devices`: the folder's peers with an index here (`Store::remote_devices`).
pub fn diverges(
    store: &Store,
    folder: &str,
    mode: FolderMode,
    me: ShortId,
    devices: &[DeviceId],
    path: &str,
) -> Result<bool> {
    match mode {
        FolderMode::SendReceive => Ok(false),
        FolderMode::ReceiveOnly => match store.get(folder, path)? {
            Some(l) if l.modified_by == me => {
                Ok(is_local_change(&l, me, cluster(store, devices, folder, path)?.as_ref()))
            }
            _ => Ok(false),
        },
        // As `changes` picks a path's remote change: the first peer record that is one, replaced by
        // a later one only if that dominates it.
        FolderMode::SendOnly => {
            let local = store.get(folder, path)?;
            let mut found: Option<FileRecord> = None;
            for d in devices {
                let Some(r) = store.remote(d, folder, path)? else { continue };
                if found.as_ref().is_some_and(|cur| !r.version.dominates(&cur.version)) {
                    continue;
                }
                if is_remote_change(local.as_ref(), &r) {
                    found = Some(r);
                }
            }
            Ok(found.is_some())
        }
    }
}

/// The same, as shown by the API.
pub fn listed(store: &Store, folder: &str, mode: FolderMode, me: ShortId) -> Result<Vec<Divergent>> {
    Ok(changes(store, folder, mode, me)?.iter().map(divergent).collect())
}
