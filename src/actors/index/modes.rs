//! The Index's side of one-way folders (`core::divergence`): which paths of a receive-only folder
//! were changed here (local changes), which peer changes a send-only folder did not take (remote
//! changes), and the two commands that settle them: `Revert` (receive-only: each local change goes
//! to the version store, and the cluster's version is pulled) and `Override` (send-only: our state
//! is re-issued above the peers', so it wins everywhere).

use std::path::Path;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use super::IndexActor;
use crate::actors::messages::RecomputeNeeds;
use crate::config::FolderMode;
use crate::core::divergence::{is_local_change, is_remote_change, overriding, reverted};
use crate::core::versioning::Reason;
use crate::core::{FileKind, FileRecord, ShortId};
use crate::fs::safe_path::safe_entry_path;
use crate::fs::versions::VersionStore;
use crate::store::Store;

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
fn cluster(store: &Store, devices: &[crate::core::DeviceId], folder: &str, path: &str) -> Option<FileRecord> {
    let mut best: Option<FileRecord> = None;
    for r in devices.iter().filter_map(|d| store.remote(d, folder, path).ok().flatten()) {
        if best.as_ref().is_none_or(|b| r.version.dominates(&b.version)) {
            best = Some(r);
        }
    }
    best
}

/// Local changes of a receive-only folder (our records), or remote changes not taken by a
/// send-only one (the peers' records); nothing for a send-receive folder. Path order. Memory
/// holds only the changes: the records are streamed from the index (this runs for every status
/// request of a one-way folder).
pub fn changes(store: &Store, folder: &str, mode: FolderMode, me: ShortId) -> Vec<FileRecord> {
    let devices = store.remote_devices(folder).unwrap_or_default();
    match mode {
        FolderMode::SendReceive => Vec::new(),
        // Only records made here can be local changes.
        FolderMode::ReceiveOnly => store
            .local_records(folder)
            .filter(|l| {
                l.modified_by == me && is_local_change(l, me, cluster(store, &devices, folder, &l.path).as_ref())
            })
            .collect(),
        FolderMode::SendOnly => {
            let mut out: std::collections::BTreeMap<String, FileRecord> = std::collections::BTreeMap::new();
            for d in &devices {
                for r in store.remote_records(d, folder) {
                    if out.get(&r.path).is_some_and(|cur| !r.version.dominates(&cur.version)) {
                        continue;
                    }
                    if is_remote_change(store.get(folder, &r.path).ok().flatten().as_ref(), &r) {
                        out.insert(r.path.clone(), r);
                    }
                }
            }
            out.into_values().collect()
        }
    }
}

/// The same, as shown by the API.
pub fn listed(store: &Store, folder: &str, mode: FolderMode, me: ShortId) -> Vec<Divergent> {
    changes(store, folder, mode, me).iter().map(divergent).collect()
}

/// Moves a locally changed path out of the folder: a file into the version store, a directory
/// away if it is empty (its children are reverted before it). A local delete has nothing on disk.
fn set_aside(root: &Path, versions: &VersionStore, record: &FileRecord) -> Result<(), String> {
    if record.deleted {
        return Ok(());
    }
    // A link is set aside as the link itself (kept, then unlinked), never followed.
    let full = safe_entry_path(root, &record.path).map_err(|e| e.to_string())?;
    match std::fs::symlink_metadata(&full) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir(&full);
            Ok(())
        }
        Ok(_) => {
            versions
                .keep(&full, &record.path, Reason::Reverted, "local")
                .map_err(|e| format!("{}: {e}", record.path))?;
            std::fs::remove_file(&full).map_err(|e| format!("{}: {e}", record.path))
        }
        Err(_) => Ok(()),
    }
}

/// Give a receive-only folder's local changes back to the cluster; answers how many paths.
#[derive(Message)]
#[rtype(result = "Result<usize, String>")]
pub struct Revert {
    pub folder: String,
}

/// Make a send-only folder's state win on every peer; answers how many paths were re-issued.
#[derive(Message)]
#[rtype(result = "Result<usize, String>")]
pub struct Override {
    pub folder: String,
}

impl IndexActor {
    /// The folder's mode, unless the folder is unknown or stopped (root gone or replaced: nothing
    /// on disk is what the index says, so neither command may act on it).
    fn mode_of(&self, folder: &str) -> Result<FolderMode, String> {
        let mode = self.folders.get(folder).map(|f| f.config.mode).ok_or_else(|| format!("no folder `{folder}`"))?;
        if self.state.gauges(folder).faulted.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(format!("folder `{folder}` is in state error; see `syncnode status`"));
        }
        Ok(mode)
    }
}

impl Handler<Revert> for IndexActor {
    type Result = Result<usize, String>;
    fn handle(&mut self, msg: Revert, ctx: &mut Context<Self>) -> Self::Result {
        if self.mode_of(&msg.folder)? != FolderMode::ReceiveOnly {
            return Err(format!("folder `{}` is not receive-only; nothing to revert", msg.folder));
        }
        let root = self.folders[&msg.folder].config.path.clone();
        let versions = self.state.versions.get(&msg.folder).cloned().ok_or("no version store")?;
        let mut local = changes(&self.store, &msg.folder, FolderMode::ReceiveOnly, self.me);
        // Children before their directories.
        local.sort_by_key(|r| std::cmp::Reverse(crate::core::path::depth(&r.path)));
        let mut back = Vec::with_capacity(local.len());
        for record in &local {
            match set_aside(&root, &versions, record) {
                Ok(()) => back.push(reverted(record)),
                Err(e) => {
                    tracing::warn!(folder = %msg.folder, error = %e, "revert: cannot set a local change aside; it stays")
                }
            }
        }
        let n = back.len();
        tracing::info!(folder = %msg.folder, paths = n, "reverted local changes; taking the cluster's versions");
        self.commit(&msg.folder, back);
        ctx.address().do_send(RecomputeNeeds { folder: msg.folder });
        Ok(n)
    }
}

impl Handler<Override> for IndexActor {
    type Result = Result<usize, String>;
    fn handle(&mut self, msg: Override, _: &mut Context<Self>) -> Self::Result {
        if self.mode_of(&msg.folder)? != FolderMode::SendOnly {
            return Err(format!("folder `{}` is not send-only; nothing to override", msg.folder));
        }
        let remote = changes(&self.store, &msg.folder, FolderMode::SendOnly, self.me);
        let mut ours = Vec::with_capacity(remote.len());
        for r in &remote {
            let local = self.store.get(&msg.folder, &r.path).ok().flatten();
            let now = self.tick();
            ours.push(overriding(local.as_ref(), r, self.me, now));
        }
        let n = ours.len();
        tracing::info!(folder = %msg.folder, paths = n, "overriding the peers' changes with ours");
        self.commit(&msg.folder, ours);
        Ok(n)
    }
}
