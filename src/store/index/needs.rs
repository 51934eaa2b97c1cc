//! The folder's stored need queue (family `needs`, in pull order, and `needpath`, by path) and its
//! counts, kept up to date as needs are queued and forgotten.

use anyhow::{Context, Result};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::*;

impl Store {
    pub(super) fn need_folders(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (k, _) in self.db.iterator_cf(self.cf("needpath"), IteratorMode::Start).map_while(|i| i.ok()) {
            let folder =
                k.split(|b| *b == 0).next().map(|f| String::from_utf8_lossy(f).to_string()).unwrap_or_default();
            if out.last() != Some(&folder) {
                out.push(folder);
            }
        }
        out
    }

    /// Queues needs (replacing any queued need of the same path); `value` is the caller's encoding
    /// of the need, `size` the bytes it brings.
    pub fn put_needs(&self, folder: &str, needs: &[(NeedKey, u64, Vec<u8>)]) -> Result<()> {
        let mut batch = WriteBatch::default();
        let mut counts = self.need_counts.lock().expect("counts lock");
        let c = counts.entry(folder.to_string()).or_default();
        // Held through the write: a reader of the queue's front sees the floor and the needs
        // below it together.
        let mut floors = self.need_floors.lock().expect("floors lock");
        for (key, size, value) in needs {
            self.forget_need(folder, &key.path, &mut batch, c)?;
            let mut v = size.to_be_bytes().to_vec();
            v.extend_from_slice(value);
            let need = keys::need(folder, key.order, &key.path);
            if let Some(floor) = floors.get_mut(folder).filter(|f| need < **f) {
                *floor = need.clone();
            }
            batch.put_cf(self.cf("needs"), need, v);
            batch.put_cf(self.cf("needpath"), keys::file(folder, &key.path), key.order);
            c.records += 1;
            c.bytes += size;
        }
        self.write_unlogged(batch)?;
        Ok(())
    }

    fn forget_need(&self, folder: &str, path: &str, batch: &mut WriteBatch, c: &mut LocalCounts) -> Result<()> {
        let Some(order) = self.db.get_cf(self.cf("needpath"), keys::file(folder, path))? else { return Ok(()) };
        let order: [u8; 3] = order.as_slice().try_into().context("corrupt need entry")?;
        let key = keys::need(folder, order, path);
        if let Some(v) = self.db.get_cf(self.cf("needs"), &key)? {
            let size = u64::from_be_bytes(v.get(..8).context("corrupt need entry")?.try_into()?);
            c.records -= 1;
            c.bytes -= size;
        }
        batch.delete_cf(self.cf("needs"), key);
        batch.delete_cf(self.cf("needpath"), keys::file(folder, path));
        Ok(())
    }

    /// Writes a change of the need queues without the write-ahead log: the queues are dropped when
    /// the index opens (`Store::open`: they are recomputed from the records), so a crash can lose
    /// nothing of them that matters, and a pulled file costs no log append for them (two writes
    /// of the queue per file: queued, then dropped).
    fn write_unlogged(&self, batch: WriteBatch) -> Result<()> {
        let mut options = rocksdb::WriteOptions::default();
        options.disable_wal(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    /// Drops the queued needs of these paths.
    pub fn remove_needs(&self, folder: &str, paths: &[&str]) -> Result<()> {
        let mut batch = WriteBatch::default();
        let mut counts = self.need_counts.lock().expect("counts lock");
        let c = counts.entry(folder.to_string()).or_default();
        for path in paths {
            self.forget_need(folder, path, &mut batch, c)?;
        }
        self.write_unlogged(batch)?;
        Ok(())
    }

    /// Drops every queued need of the folder.
    pub fn clear_needs(&self, folder: &str) -> Result<()> {
        let (prefix, end) = (keys::folder_prefix(folder), keys::folder_end(folder));
        self.db.delete_range_cf(self.cf("needs"), &prefix, &end)?;
        self.db.delete_range_cf(self.cf("needpath"), &prefix, &end)?;
        self.need_counts.lock().expect("counts lock").insert(folder.to_string(), LocalCounts::default());
        self.need_floors.lock().expect("floors lock").remove(folder);
        Ok(())
    }

    /// Queued needs (count and bytes).
    pub fn need_counts(&self, folder: &str) -> LocalCounts {
        self.need_counts.lock().expect("counts lock").get(folder).copied().unwrap_or_default()
    }

    /// Up to `limit` queued needs after `after` (from the first without it), in pull order.
    /// Reads from the queue's floor at the earliest, and moves the floor up to the first need a
    /// read from the front finds: the deleted needs before it are never stepped over again.
    pub fn needs_after(&self, folder: &str, after: Option<&NeedKey>, limit: usize) -> Result<Vec<(NeedKey, Vec<u8>)>> {
        let prefix = keys::folder_prefix(folder);
        let mut floors = self.need_floors.lock().expect("floors lock");
        let floor = floors.get(folder).cloned().unwrap_or_else(|| prefix.clone());
        let start = match after {
            Some(k) => {
                let mut s = keys::need(folder, k.order, &k.path);
                s.push(0);
                s.max(floor)
            }
            None => floor,
        };
        let mut out = Vec::new();
        let mut first = None;
        for item in self.db.iterator_cf(self.cf("needs"), IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let rest = &k[prefix.len()..];
            let order: [u8; 3] = rest.get(..3).context("corrupt need key")?.try_into()?;
            let path = std::str::from_utf8(&rest[3..]).context("corrupt need key")?.to_string();
            first.get_or_insert_with(|| k.to_vec());
            out.push((NeedKey { order, path }, v.get(8..).context("corrupt need entry")?.to_vec()));
        }
        if after.is_none() {
            // Nothing live: the floor goes past the queue's every key, and the next need lowers it.
            floors.insert(folder.to_string(), first.unwrap_or_else(|| keys::folder_end(folder)));
        }
        Ok(out)
    }
}
