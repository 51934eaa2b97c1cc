//! What each peer announced (family `remote`), how far each peer has read ours (`meta`), and
//! the expiry of tombstones.

use anyhow::Result;
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::*;

impl Store {
    pub fn progress(&self, device: &DeviceId, folder: &str) -> Result<Progress> {
        Ok(match self.db.get_cf(self.cf("meta"), keys::progress(device, folder))? {
            Some(v) => decode(&v)?,
            None => Progress::default(),
        })
    }

    pub fn remote(&self, device: &DeviceId, folder: &str, path: &str) -> Result<Option<FileRecord>> {
        self.db.get_cf(self.cf("remote"), keys::remote(device, folder, path))?.map(|v| decode_record(&v)).transpose()
    }

    pub fn remote_records<'a>(&'a self, device: &DeviceId, folder: &str) -> impl Iterator<Item = FileRecord> + 'a {
        self.scan_prefix("remote", keys::remote_prefix(device, folder)).filter_map(|(_, v)| decode_record(&v).ok())
    }

    /// Up to `limit` of `device`'s records, in path order, after path `after` (from the first with
    /// `None`). A record that cannot be read is an error, never left out.
    pub fn remote_page(
        &self,
        device: &DeviceId,
        folder: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FileRecord>> {
        let prefix = keys::remote_prefix(device, folder);
        let start = match after {
            Some(path) => {
                let mut k = keys::remote(device, folder, path);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf("remote"), IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push(decode_record(&v)?);
        }
        Ok(out)
    }

    /// Devices we hold an index from, for a folder.
    pub fn remote_devices(&self, folder: &str) -> Result<Vec<DeviceId>> {
        let mut out = Vec::new();
        for (k, _) in self.scan_prefix("meta", b"p".to_vec()) {
            if k.len() > 33 && &k[33..] == folder.as_bytes() {
                out.push(DeviceId(k[1..33].try_into().expect("32 bytes")));
            }
        }
        Ok(out)
    }

    /// Stores records a peer announced and how far we have read its index, in one batch.
    pub fn put_remote(
        &self,
        device: &DeviceId,
        folder: &str,
        progress: Progress,
        records: &[FileRecord],
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        for r in records {
            batch.put_cf(self.cf("remote"), keys::remote(device, folder, &r.path), encode(r));
        }
        batch.put_cf(self.cf("meta"), keys::progress(device, folder), encode(&progress));
        self.db.write(batch)?;
        Ok(())
    }

    /// Forgets a peer's index of a folder (its index id changed: it will send everything again).
    pub fn clear_remote(&self, device: &DeviceId, folder: &str) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (k, _) in self.scan_prefix("remote", keys::remote_prefix(device, folder)) {
            batch.delete_cf(self.cf("remote"), k);
        }
        batch.delete_cf(self.cf("meta"), keys::progress(device, folder));
        self.db.write(batch)?;
        Ok(())
    }

    /// Forgets tombstones (ours and the ones peers announced) whose delete happened before
    /// `cutoff` (the deleting device's counter, milliseconds since the epoch). Returns how many.
    pub fn purge_tombstones(&self, folder: &str, cutoff: u64) -> Result<usize> {
        let old = |r: &FileRecord| crate::core::replica::expired(r, cutoff);
        let mut batch = WriteBatch::default();
        let mut purged = 0;
        for r in self.local_records(folder).filter(|r| old(r)) {
            batch.delete_cf(self.cf("files"), keys::file(folder, &r.path));
            batch.delete_cf(self.cf("seq"), keys::seq(folder, r.sequence));
            batch.delete_cf(self.cf("diffs"), keys::file(folder, &r.path));
            purged += 1;
        }
        for device in self.remote_devices(folder)? {
            for r in self.remote_records(&device, folder).filter(|r| old(r)) {
                batch.delete_cf(self.cf("remote"), keys::remote(&device, folder, &r.path));
            }
        }
        self.db.write(batch)?;
        Ok(purged)
    }
}
