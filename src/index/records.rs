//! A folder's index in the store, as the scanner and the rules read it.

use std::collections::HashSet;
use std::path::Path;

use crate::core::folder::FolderIo;
use crate::core::replica::{self, Records};
use crate::core::root::RootProblem;
use crate::core::{DeviceId, FileRecord};
use crate::fs::root::RootGuard;
use crate::fs::scan::{DiskState, KnownRecords};
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
