//! A folder's need queues in the store, as `core::pull` reaches them: the folder's own queue (the
//! `needs` column family, each need encoded whole) and one queue per peer of its needs held over
//! the budget. A failed write or read is logged here, once, with the folder.

use crate::core::plan::NeedKey;
use crate::core::pull::{Counts, NeedStore};
use crate::core::replica::Need;
use crate::core::DeviceId;
use crate::store::index::LocalCounts;
use crate::store::Store;

/// One folder's need queues.
pub struct StoredNeeds<'a> {
    store: &'a Store,
    folder: &'a str,
}

impl<'a> StoredNeeds<'a> {
    pub fn new(store: &'a Store, folder: &'a str) -> Self {
        StoredNeeds { store, folder }
    }

    /// Where a peer's needs over its budget wait: a need queue of its own in the store, beside the
    /// folder's (folder ids never hold control characters, so it can be no folder's queue). Only
    /// the paths count: a held need is decided again by the Index when it is taken.
    fn held_queue(&self, device: DeviceId) -> String {
        format!("{}\u{1}held\u{1}{device}", self.folder)
    }

    fn wrote<T>(&self, result: anyhow::Result<T>) -> bool {
        if let Err(e) = &result {
            tracing::error!(folder = %self.folder, error = %e, "cannot write the need queue");
        }
        result.is_ok()
    }

    fn read<T>(&self, result: anyhow::Result<T>) -> Option<T> {
        result.map_err(|e| tracing::error!(folder = %self.folder, error = %e, "cannot read the need queue")).ok()
    }
}

fn counts(c: LocalCounts) -> Counts {
    Counts { records: c.records, bytes: c.bytes }
}

impl NeedStore for StoredNeeds<'_> {
    fn queued(&self) -> Counts {
        counts(self.store.need_counts(self.folder))
    }

    fn queue(&mut self, needs: &[(NeedKey, u64, &Need)]) -> bool {
        let rows: Vec<(NeedKey, u64, Vec<u8>)> = needs
            .iter()
            .map(|(k, size, i)| (k.clone(), *size, postcard::to_stdvec(i).expect("in-memory serialization")))
            .collect();
        self.wrote(self.store.put_needs(self.folder, &rows))
    }

    fn unqueue(&mut self, paths: &[&str]) {
        self.wrote(self.store.remove_needs(self.folder, paths));
    }

    fn clear_queue(&mut self) {
        self.wrote(self.store.clear_needs(self.folder));
    }

    fn queued_after(&mut self, after: Option<&NeedKey>, limit: usize) -> Vec<Need> {
        let rows = self.read(self.store.needs_after(self.folder, after, limit)).unwrap_or_default();
        let mut needs = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            match postcard::from_bytes::<Need>(&value) {
                Ok(item) => needs.push(item),
                Err(e) => {
                    tracing::error!(folder = %self.folder, path = %key.path, error = %e, "corrupt need entry; dropped");
                    let _ = self.store.remove_needs(self.folder, &[key.path.as_str()]);
                }
            }
        }
        needs
    }

    fn held(&self, peer: DeviceId) -> Counts {
        counts(self.store.need_counts(&self.held_queue(peer)))
    }

    fn hold(&mut self, peer: DeviceId, needs: &[(NeedKey, u64)]) -> bool {
        let rows: Vec<(NeedKey, u64, Vec<u8>)> = needs.iter().map(|(k, size)| (k.clone(), *size, Vec::new())).collect();
        self.wrote(self.store.put_needs(&self.held_queue(peer), &rows))
    }

    fn unhold(&mut self, peer: DeviceId, paths: &[&str]) -> bool {
        self.wrote(self.store.remove_needs(&self.held_queue(peer), paths))
    }

    fn clear_held(&mut self, peer: DeviceId) {
        self.wrote(self.store.clear_needs(&self.held_queue(peer)));
    }

    fn held_first(&mut self, peer: DeviceId, limit: usize) -> Option<Vec<String>> {
        let rows = self.read(self.store.needs_after(&self.held_queue(peer), None, limit))?;
        Some(rows.into_iter().map(|(key, _)| key.path).collect())
    }
}
