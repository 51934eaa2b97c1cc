//! A folder's index in the store, as the scanner and the rules read it.

use std::collections::HashSet;
use std::path::Path;

use crate::config::FolderConfig;
use crate::core::folder::FolderIo;
use crate::core::record::Listed;
use crate::core::replica::{self, Need, Records, NEEDS_PAGE};
use crate::core::root::{Observed, RootProblem};
use crate::core::{DeviceId, FileRecord};
use crate::fs::root::{observe, RootGuard};
use crate::fs::scan::{remove_stale_temp_files, DiskState, KnownRecords};
use crate::store::Store;

/// The scanner's view of our records, straight from the store.
pub struct StoreView<'a> {
    pub store: &'a Store,
    pub folder: &'a str,
    /// Paths hashed again even if size and mtime match their record.
    pub suspect: &'a HashSet<String>,
}

impl KnownRecords for StoreView<'_> {
    fn get(&self, path: &str) -> Option<FileRecord> {
        // The scanner's trait has no error: a failed read hashes the file as new, which costs a
        // concurrent version (a conflict copy at worst), never a lost file. Logged.
        let mut record = match self.store.get(self.folder, path) {
            Ok(r) => r?,
            Err(e) => {
                tracing::error!(folder = self.folder, path, error = %format!("{e:#}"), "cannot read the index");
                return None;
            }
        };
        if self.suspect.contains(path) {
            record.mtime_ns = i64::MIN; // never matches the disk: the file is hashed again
        }
        Some(record)
    }
    fn children<'a>(&'a self, dir: &str) -> Box<dyn Iterator<Item = Listed> + 'a> {
        Box::new(self.store.local_children(self.folder, dir).map(|listed| match listed {
            Listed::Record(mut record) if self.suspect.contains(&record.path) => {
                record.mtime_ns = i64::MIN; // as in `get`: hashed again
                Listed::Record(record)
            }
            other => other,
        }))
    }
    fn each_under(&self, dir: &str, f: &mut dyn FnMut(FileRecord)) {
        if dir.is_empty() {
            self.store.local_records(self.folder).for_each(f)
        } else {
            self.store.local_records_under(self.folder, dir).for_each(f)
        }
    }
}

/// The rules' view of a folder's index (`core::replica::Records`), straight from the store.
pub struct FolderRecords<'a> {
    pub store: &'a Store,
    pub folder: &'a str,
}

impl Records for FolderRecords<'_> {
    type Error = anyhow::Error;
    fn local(&self, path: &str) -> anyhow::Result<Option<FileRecord>> {
        self.store.get(self.folder, path)
    }
    fn remote(&self, device: &DeviceId, path: &str) -> anyhow::Result<Option<FileRecord>> {
        self.store.remote(device, self.folder, path)
    }
    fn remote_page(&self, device: &DeviceId, after: Option<&str>, limit: usize) -> anyhow::Result<Vec<FileRecord>> {
        self.store.remote_page(device, self.folder, after, limit)
    }
}

/// What `core::folder` looks at: the root, the disk and the index of one folder.
pub struct FolderDisk<'a> {
    pub store: &'a Store,
    pub folder: &'a str,
    pub root: &'a Path,
    pub guard: &'a RootGuard,
}

impl FolderIo for FolderDisk<'_> {
    fn check_root(&self) -> Result<(), RootProblem> {
        self.guard.check()
    }
    fn delete_holds(&self, delete: &FileRecord) -> bool {
        let absent = matches!(DiskState::read(&self.root.join(&delete.path)), Ok(None));
        // A record that cannot be read makes the delete look again (a scan), never commit blind.
        self.store
            .get(self.folder, &delete.path)
            .is_ok_and(|now| replica::delete_still_holds(delete, now.as_ref(), absent))
    }
    fn live_records(&self) -> u64 {
        self.store.local_counts(self.folder).records
    }
}

/// The devices whose records decide what the folder needs: records kept from a device the folder
/// is no longer shared with are neither pulled nor asked for (the Peer actor refuses anything new
/// from it).
pub fn sources(store: &Store, config: &FolderConfig) -> anyhow::Result<Vec<DeviceId>> {
    let mut devices = store.remote_devices(&config.id)?;
    devices.retain(|d| config.devices.includes(d));
    Ok(devices)
}

/// Needs for the given remote records. An index that cannot be read gives none, with an ERROR
/// line: the work waits for the next recompute (a peer connecting) instead of being decided on
/// records taken for absent.
pub fn needs(store: &Store, config: &FolderConfig, records: &[FileRecord]) -> Vec<Need> {
    let folder = config.id.as_str();
    let read = || replica::needs(&FolderRecords { store, folder }, &sources(store, config)?, Some(records));
    logged(folder, read()).unwrap_or_default()
}

/// What the folder needs at `paths` now (held needs taken back, retries due, pulls overtaken);
/// none, logged, if the index cannot be read.
pub fn needs_at(store: &Store, config: &FolderConfig, paths: &[String]) -> Vec<Need> {
    let folder = config.id.as_str();
    let read = || replica::needs_at(&FolderRecords { store, folder }, &sources(store, config)?, paths);
    logged(folder, read()).unwrap_or_default()
}

/// One page of a whole-folder recompute (`replica::needs_page`): the needs of the paths after
/// `after`, and where the next page starts. `None` (logged) when the index cannot be read.
pub fn needs_page(store: &Store, config: &FolderConfig, after: Option<&str>) -> Option<(Vec<Need>, Option<String>)> {
    let folder = config.id.as_str();
    let read = || replica::needs_page(&FolderRecords { store, folder }, &sources(store, config)?, after, NEEDS_PAGE);
    logged(folder, read())
}

/// A decision's reads, or `None` with the error logged: nothing is pulled on an index that
/// cannot be read.
fn logged<T>(folder: &str, read: anyhow::Result<T>) -> Option<T> {
    read.map_err(|e| tracing::error!(folder, error = %format!("{e:#}"), "cannot read the index to decide what to pull"))
        .ok()
}

/// Forgets the folder's deletes older than `cutoff`.
pub fn purge_tombstones(store: &Store, folder: &str, cutoff: u64) {
    match store.purge_tombstones(folder, cutoff) {
        Ok(0) => {}
        Ok(n) => tracing::info!(folder = %folder, purged = n, "forgot old deletes"),
        Err(e) => tracing::warn!(folder = %folder, error = %e, "cannot purge tombstones"),
    }
}

/// Makes the directory at the root path the folder's root, in the index and for `guard`.
/// `Ok(false)`: there is no directory there.
pub fn accept_root(store: &Store, folder: &str, guard: &RootGuard) -> anyhow::Result<bool> {
    let Observed::Directory(root) = observe(&guard.path) else { return Ok(false) };
    store.put_root_id(folder, &root)?;
    guard.accept(root);
    Ok(true)
}

/// Opens a folder at start: its root recorded if none is yet (a first start, or an index from
/// before roots were recorded: this root is the one), the temp files an interrupted run left
/// removed if the root holds. Returns what the look at the root found.
pub fn open_folder(store: &Store, folder: &str, guard: &RootGuard) -> Result<(), RootProblem> {
    if guard.expected().is_none() {
        if let Err(e) = accept_root(store, folder, guard) {
            tracing::error!(folder, error = %e, "cannot write the index");
        }
    }
    let root = guard.check();
    if root.is_ok() {
        let removed = remove_stale_temp_files(&guard.path);
        if removed > 0 {
            tracing::info!(folder, removed, "removed temp files left by an interrupted run");
        }
    }
    root
}
