//! The Index's side of one-way folders (`core::divergence`): which paths of a receive-only folder
//! were changed here (local changes), which peer changes a send-only folder did not take (remote
//! changes), and the two commands that settle them: `Revert` (receive-only: each local change goes
//! to the version store, and the cluster's version is pulled) and `Override` (send-only: our state
//! is re-issued above the peers', so it wins everywhere).

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use actix::prelude::*;

use super::IndexActor;
use crate::actors::messages::{Override, RecomputeNeeds, Revert};
use crate::config::FolderMode;
use crate::core::divergence::{overriding, reverted};
use crate::core::versioning::Reason;
use crate::core::FileRecord;
use crate::fs::safe_path::safe_entry_path;
use crate::fs::versions::VersionStore;
use crate::store::changes::{changes, diverges};

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

/// The paths where a one-way folder differs from its cluster, as 64-bit hashes under a key drawn
/// at start (8 bytes a divergent path; nothing for a send-receive folder). Their count is the
/// status's `local_changes` or `remote_changes`, kept up to date as commits and peers' batches
/// touch paths: a status request costs O(1), not a walk of the folder. (Two paths with one hash,
/// about 1 in 10^13 for a thousand changes, would count once until the next recount.)
#[derive(Default)]
pub(super) struct Diverged {
    key: RandomState,
    paths: HashSet<u64>,
}

impl IndexActor {
    /// Counts a one-way folder's divergent paths from the whole index: at start, and after paths
    /// changed that nobody named (a peer's index reset, old deletes purged).
    pub(super) fn recount_diverged(&mut self, folder: &str) {
        let Some(state) = self.folders.get_mut(folder) else { return };
        if state.config.mode == FolderMode::SendReceive {
            return;
        }
        match changes(&self.store, folder, state.config.mode, self.me) {
            Ok(list) => {
                let d = &mut state.diverged;
                d.paths = list.iter().map(|r| d.key.hash_one(&r.path)).collect();
                self.state.gauges(folder).diverged.store(d.paths.len() as u64, Relaxed);
            }
            Err(e) => tracing::error!(folder, error = %format!("{e:#}"), "cannot read the index to count changes"),
        }
    }

    /// Looks again at `paths` of a one-way folder, which a commit or a peer's batch just touched.
    pub(super) fn recheck_diverged<'a>(&mut self, folder: &str, paths: impl IntoIterator<Item = &'a str>) {
        let Some(state) = self.folders.get_mut(folder) else { return };
        let mode = state.config.mode;
        if mode == FolderMode::SendReceive {
            return;
        }
        let devices = match self.store.remote_devices(folder) {
            Ok(d) => d,
            Err(e) => {
                return tracing::error!(folder, error = %format!("{e:#}"), "cannot read the index to count changes")
            }
        };
        let d = &mut state.diverged;
        for path in paths {
            let h = d.key.hash_one(path);
            match diverges(&self.store, folder, mode, self.me, &devices, path) {
                Ok(true) => d.paths.insert(h),
                Ok(false) => d.paths.remove(&h),
                Err(e) => {
                    tracing::error!(folder, path, error = %format!("{e:#}"), "cannot read the index to count changes");
                    continue;
                }
            };
        }
        self.state.gauges(folder).diverged.store(d.paths.len() as u64, Relaxed);
    }

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
        let index_error = |e: anyhow::Error| format!("cannot read the index: {e:#}");
        let mut local = changes(&self.store, &msg.folder, FolderMode::ReceiveOnly, self.me).map_err(index_error)?;
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
        let index_error = |e: anyhow::Error| format!("cannot read the index: {e:#}");
        let remote = changes(&self.store, &msg.folder, FolderMode::SendOnly, self.me).map_err(index_error)?;
        let mut ours = Vec::with_capacity(remote.len());
        for r in &remote {
            let local = self.store.get(&msg.folder, &r.path).map_err(index_error)?;
            let now = self.tick();
            ours.push(overriding(local.as_ref(), r, self.me, now));
        }
        let n = ours.len();
        tracing::info!(folder = %msg.folder, paths = n, "overriding the peers' changes with ours");
        self.commit(&msg.folder, ours);
        Ok(n)
    }
}
