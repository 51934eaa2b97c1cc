//! `Store`: typed access to the RocksDB index. Everything that belongs together (a record, its
//! sequence entry, its chunk locations, the folder's counter) is written in one WriteBatch, so a
//! crash at any point leaves either the old or the new state, never half of each.

use std::path::Path;

use anyhow::{Context, Result};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use super::children::Children;
use super::keys;
use crate::core::chunks::{self, ChunkEdit};
use crate::core::root::RootId;
use crate::core::session;
use crate::core::{DeviceId, FileRecord};

const FAMILIES: &[&str] = &["files", "seq", "remote", "chunks", "diffs", "meta", "needs", "needpath"];

/// The block cache all column families share (`Store::open`).
const BLOCK_CACHE: usize = 16 << 20;

/// A folder's index identity and counter. The index id changes when the database is recreated,
/// which tells peers to forget what they had read of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderMeta {
    pub index_id: u64,
    pub max_sequence: u64,
}

/// How far we have read a peer's index of one folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub index_id: u64,
    pub max_sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLocation {
    pub folder: String,
    pub path: String,
    pub offset: u64,
    pub size: u32,
}

/// The chunk edits that turn the record at `base` into the one at `sequence` (for sending
/// record updates as differences). The base is the previous record of the same path, or, for a
/// file renamed, moved or copied from another path (`base_path`), that path's record: the peer
/// then receives a reference to a record it holds instead of the whole chunk list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredDiff {
    pub base: u64,
    pub sequence: u64,
    pub edits: Vec<ChunkEdit>,
    pub base_path: Option<String>,
}

/// Bits of Bloom filter per key in every table.
const BLOOM_BITS_PER_KEY: f64 = 10.0;

/// Size of an index or filter partition (`Store::open`).
const METADATA_BLOCK: usize = 4096;

/// A column family's memtable size before it is flushed (`Store::open`).
const MEMTABLE_SIZE: usize = 4 << 20;

/// RocksDB's info log: at most this big before it is rolled, and this many files kept.
const LOG_FILE_SIZE: usize = 4 << 20;
const LOG_FILES_KEPT: usize = 2;

/// How many files holding a new file's first chunk are tried as the base of a reference.
const DONOR_CANDIDATES: usize = 4;

pub struct Store {
    db: DB,
    /// Per folder, the live records and their bytes, counted once and then kept up to date by
    /// every commit: the status API answers in O(1) whatever the size of the tree.
    counts: std::sync::Mutex<std::collections::HashMap<String, LocalCounts>>,
    /// Per folder, the queued needs and the bytes they bring (kept by every change to them).
    need_counts: std::sync::Mutex<std::collections::HashMap<String, LocalCounts>>,
    /// Per need queue, a key at or below its first live need (`needs`): a queue is taken from
    /// the front, and reading it from the start would step over every need deleted before.
    need_floors: std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>,
}

/// Where a queued need sorts: its pull order (`core::plan::order`), then its path.
pub use crate::core::plan::NeedKey;

/// What the index holds in memory now, in bytes (RocksDB's own accounting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexMemory {
    /// The shared block cache: data blocks, and the index and filter blocks it holds.
    pub block_cache: u64,
    /// The part of the block cache that cannot be evicted now (pinned or in use).
    pub block_cache_pinned: u64,
    /// Every column family's memtables, mutable and immutable.
    pub memtables: u64,
    /// Table readers' memory outside the block cache.
    pub table_readers: u64,
}

/// Live (not deleted) records of a folder, and the bytes of their content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalCounts {
    pub records: u64,
    pub bytes: u64,
}

impl LocalCounts {
    fn add(&mut self, r: &FileRecord, sign: i64) {
        if !r.deleted {
            self.records = self.records.wrapping_add_signed(sign);
            self.bytes = self.bytes.wrapping_add_signed(sign * r.size as i64);
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("in-memory serialization cannot fail")
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    postcard::from_bytes(bytes).context("corrupt index entry")
}

/// A record as indexes written before links were synced hold it: the same fields, without
/// `link_target` (postcard has no field names, so a missing last field fails the decode).
#[derive(Deserialize)]
struct RecordWithoutLink {
    path: String,
    kind: crate::core::FileKind,
    size: u64,
    mtime_ns: i64,
    permissions: u32,
    version: crate::core::VersionVector,
    deleted: bool,
    sequence: u64,
    modified_by: crate::core::ShortId,
    chunks: Vec<crate::core::Chunk>,
}

/// A stored record, of this version's layout or the one before it.
fn decode_record(bytes: &[u8]) -> Result<FileRecord> {
    decode::<FileRecord>(bytes).or_else(|e| {
        let old: RecordWithoutLink = postcard::from_bytes(bytes).map_err(|_| e)?;
        Ok(FileRecord {
            path: old.path,
            kind: old.kind,
            size: old.size,
            mtime_ns: old.mtime_ns,
            permissions: old.permissions,
            version: old.version,
            deleted: old.deleted,
            sequence: old.sequence,
            modified_by: old.modified_by,
            chunks: old.chunks,
            link_target: String::new(),
        })
    })
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // All memtables together stay under 16 MiB (the default is 64 MiB per column family): the
        // index of even a large folder is small, memory stays bounded under a burst of writes, and
        // the write-ahead log, preallocated at the memtable budget, takes 16 MiB of disk, not 70.
        opts.set_db_write_buffer_size(16 << 20);
        // RocksDB's own log: at info level it wrote 181 MB during W8 (a line per flush and per
        // deleted file); a few MiB of it are enough to read what happened lately.
        opts.set_max_log_file_size(LOG_FILE_SIZE);
        opts.set_keep_log_file_num(LOG_FILES_KEPT);
        // One block cache for every column family, index and filter blocks included: by default
        // each of the 8 families gets a cache of its own (32 MiB each in this RocksDB) and keeps
        // its index and filter blocks outside any cache, so memory grew with the index up to
        // ~256 MiB more (W8, a million files: 760 MiB per node). Now the index's share of memory
        // has one bound whatever the size of the folder.
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        // A Bloom filter per table (10 bits a key, ~1% false positives): a lookup of a key no
        // table holds (a new file's record, a chunk hash never seen) reads no data block. Without
        // it, at a million files, every new file's commit sought the chunk index through every
        // level for its first chunk (the rename check): half of a node's actor thread during W8.
        table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
        // Index and filter blocks cut in 4 KiB partitions under a small top level that stays
        // pinned: a lookup loads the one partition it needs. A table's whole filter and index are
        // one block each otherwise, over a megabyte each at a million files, larger than the
        // cache's share for them: during W8 every lookup on the receiver read them again from the
        // page cache and checksummed them (most of its actor thread; ~900 files a second).
        table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(METADATA_BLOCK);
        table.set_pin_top_level_index_and_filter(true);
        table.set_cache_index_and_filter_blocks_with_high_priority(true);
        table.set_optimize_filters_for_memory(true);
        opts.set_block_based_table_factory(&table);
        let cfs = FAMILIES.iter().map(|name| {
            let mut cf = Options::default();
            // Each family's memtable flushes at 4 MiB. At the default 64 MiB, a memtable takes
            // its memory in 8 MiB arena blocks: eight families with one block each are 64 MiB,
            // four times the 16 MiB budget above, so the budget forced a flush after every few
            // dozen writes (31,235 flushes for W8's million files on the receiver, SST files of
            // ~90 KiB, 1,987 of them, and the compactions to merge them).
            cf.set_write_buffer_size(MEMTABLE_SIZE);
            cf.set_block_based_table_factory(&table);
            cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
            if *name == "chunks" {
                // Keys start with the chunk's hash, and the chunk index is only ever listed by
                // hash: the filters hold the hash too, so a listing of a hash no table holds is
                // answered by the filters alone.
                cf.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(keys::HASH_LEN));
                cf.set_memtable_prefix_bloom_ratio(0.1);
            }
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs).with_context(|| {
            format!("cannot open the index at {} (is another node using this data_dir?)", path.display())
        })?;
        let store =
            Store { db, counts: Default::default(), need_counts: Default::default(), need_floors: Default::default() };
        // Needs are the Puller's queue, recomputed from the index whenever a peer connects: what a
        // previous run left is stale.
        for folder in store.need_folders() {
            store.clear_needs(&folder)?;
        }
        Ok(store)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    fn scan_prefix<'a>(&'a self, family: &str, prefix: Vec<u8>) -> impl Iterator<Item = (Box<[u8]>, Box<[u8]>)> + 'a {
        self.db
            .iterator_cf(self.cf(family), IteratorMode::From(&prefix, Direction::Forward))
            .map_while(|item| item.ok())
            .take_while(move |(k, _)| k.starts_with(&prefix))
    }

    /// The identity of the folder's root as last accepted (None before the first start).
    pub fn root_id(&self, folder: &str) -> Result<Option<RootId>> {
        self.db.get_cf(self.cf("meta"), keys::root_id(folder))?.map(|v| decode(&v)).transpose()
    }

    pub fn put_root_id(&self, folder: &str, id: &RootId) -> Result<()> {
        self.db.put_cf(self.cf("meta"), keys::root_id(folder), encode(id))?;
        Ok(())
    }

    /// The folder's meta, created with a fresh random index id on first use.
    pub fn folder_meta(&self, folder: &str) -> Result<FolderMeta> {
        match self.db.get_cf(self.cf("meta"), keys::folder_meta(folder))? {
            Some(v) => decode(&v),
            None => {
                let meta = FolderMeta { index_id: rand::random::<u64>() | 1, max_sequence: 0 };
                self.db.put_cf(self.cf("meta"), keys::folder_meta(folder), encode(&meta))?;
                Ok(meta)
            }
        }
    }

    pub fn get(&self, folder: &str, path: &str) -> Result<Option<FileRecord>> {
        self.db.get_cf(self.cf("files"), keys::file(folder, path))?.map(|v| decode_record(&v)).transpose()
    }

    /// All our records of a folder, in path order.
    pub fn local_records(&self, folder: &str) -> impl Iterator<Item = FileRecord> + '_ {
        self.scan_prefix("files", keys::folder_prefix(folder)).filter_map(|(_, v)| decode_record(&v).ok())
    }

    /// Our records directly inside directory `dir` ("" for the root), in path order, with a mark
    /// for each child that has records below it (`Listed::Below`).
    pub fn local_children(&self, folder: &str, dir: &str) -> Children<'_> {
        let prefix = if dir.is_empty() { keys::folder_prefix(folder) } else { keys::file(folder, &format!("{dir}/")) };
        let mut iter = self.db.raw_iterator_cf(self.cf("files"));
        iter.seek(&prefix);
        Children { iter, prefix, decode: decode_record }
    }

    /// Our records strictly inside directory `dir`.
    pub fn local_records_under<'a>(&'a self, folder: &str, dir: &str) -> impl Iterator<Item = FileRecord> + 'a {
        self.scan_prefix("files", keys::file(folder, &format!("{dir}/"))).filter_map(|(_, v)| decode_record(&v).ok())
    }

    /// What the index holds in memory now. A property RocksDB cannot report counts as 0.
    pub fn memory(&self) -> IndexMemory {
        // The block cache is shared: any family reports all of it (the database itself reports
        // nothing when each family names its table options).
        let db = |name: &str| self.db.property_int_value_cf(self.cf("files"), name).map_or(0, |v| v.unwrap_or(0));
        let families = |name: &str| -> u64 {
            let family = |f: &&str| self.db.property_int_value_cf(self.cf(f), name).map_or(0, |v| v.unwrap_or(0));
            FAMILIES.iter().map(family).sum()
        };
        IndexMemory {
            block_cache: db("rocksdb.block-cache-usage"),
            block_cache_pinned: db("rocksdb.block-cache-pinned-usage"),
            memtables: families("rocksdb.cur-size-all-mem-tables"),
            table_readers: families("rocksdb.estimate-table-readers-mem"),
        }
    }

    /// The folder's live records and bytes (counted on first use, then kept by each commit).
    pub fn local_counts(&self, folder: &str) -> LocalCounts {
        let mut counts = self.counts.lock().expect("counts lock");
        *counts.entry(folder.to_string()).or_insert_with(|| {
            let mut c = LocalCounts::default();
            self.local_records(folder).for_each(|r| c.add(&r, 1));
            c
        })
    }

    /// Commits records as ours: each gets the next sequence; old sequence and chunk entries go.
    /// Returns the records as stored.
    pub fn commit_local(&self, folder: &str, records: Vec<FileRecord>) -> Result<Vec<FileRecord>> {
        let mut meta = self.folder_meta(folder)?;
        // A record of this batch cannot serve as another's base: its new sequence may reach the
        // peer before the record that refers to its old one.
        let in_batch: std::collections::HashSet<String> = records.iter().map(|r| r.path.clone()).collect();
        let mut batch = WriteBatch::default();
        let mut stored = Vec::with_capacity(records.len());
        let mut delta = (0i64, 0i64);
        for mut record in records {
            let previous = self.get(folder, &record.path)?;
            // A path committed twice in one batch: the first one's entries are already replaced.
            let previous = stored.iter().rev().find(|r: &&FileRecord| r.path == record.path).cloned().or(previous);
            for (r, sign) in previous.iter().map(|p| (p, -1)).chain([(&record, 1)]) {
                if !r.deleted {
                    delta.0 += sign;
                    delta.1 += sign * r.size as i64;
                }
            }
            meta.max_sequence += 1;
            record.sequence = meta.max_sequence;
            if let Some(prev) = &previous {
                batch.delete_cf(self.cf("seq"), keys::seq(folder, prev.sequence));
                for c in &prev.chunks {
                    batch.delete_cf(self.cf("chunks"), keys::chunk(&c.hash, folder, &prev.path, c.offset));
                }
            }
            for c in &record.chunks {
                batch.put_cf(
                    self.cf("chunks"),
                    keys::chunk(&c.hash, folder, &record.path, c.offset),
                    c.size.to_be_bytes(),
                );
            }
            match self.stored_diff(folder, previous.as_ref(), &record, &in_batch)? {
                Some(diff) => batch.put_cf(self.cf("diffs"), keys::file(folder, &record.path), encode(&diff)),
                // A path never seen has no difference stored (one is only ever stored beside
                // its record, and purged with it): nothing to delete, no tombstone to write.
                None if previous.is_some() => batch.delete_cf(self.cf("diffs"), keys::file(folder, &record.path)),
                None => {}
            }
            batch.put_cf(self.cf("seq"), keys::seq(folder, record.sequence), record.path.as_bytes());
            batch.put_cf(self.cf("files"), keys::file(folder, &record.path), encode(&record));
            stored.push(record);
        }
        batch.put_cf(self.cf("meta"), keys::folder_meta(folder), encode(&meta));
        // Counted under the lock, so a first count running meanwhile sees before or after, not half.
        let mut counts = self.counts.lock().expect("counts lock");
        self.db.write(batch)?;
        if let Some(c) = counts.get_mut(folder) {
            c.records = c.records.wrapping_add_signed(delta.0);
            c.bytes = c.bytes.wrapping_add_signed(delta.1);
        }
        Ok(stored)
    }

    /// Our records with a sequence above `after`, in sequence order, at most `limit`.
    pub fn since(&self, folder: &str, after: u64, limit: usize) -> Result<Vec<FileRecord>> {
        let prefix = keys::folder_prefix(folder);
        let start = keys::seq(folder, after.saturating_add(1));
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf("seq"), IteratorMode::From(&start, Direction::Forward)) {
            let (k, path) = item?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let path = std::str::from_utf8(&path).context("corrupt sequence entry")?;
            if let Some(record) = self.get(folder, path)? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// The chunk edits from the record at `base` to `record`, if the stored difference is for exactly that step.
    pub fn diff_for(&self, folder: &str, record: &FileRecord) -> Result<Option<StoredDiff>> {
        let Some(bytes) = self.db.get_cf(self.cf("diffs"), keys::file(folder, &record.path))? else { return Ok(None) };
        let diff: StoredDiff = decode(&bytes)?;
        Ok((diff.sequence == record.sequence).then_some(diff))
    }

    /// The difference to send `record` as, to a peer that holds every record we sent up to
    /// sequence `sent`: its base must be one the peer has (`base <= sent`), and, for a base at
    /// another path, one the peer still holds when this record arrives (records go out in
    /// sequence order, so that path must not have changed between its base and this record).
    pub fn diff_to_send(&self, folder: &str, record: &FileRecord, sent: u64) -> Result<Option<StoredDiff>> {
        let Some(diff) = self.diff_for(folder, record)?.filter(|d| session::difference_sendable(d.base, sent)) else {
            return Ok(None);
        };
        if let Some(base_path) = &diff.base_path {
            let now = self.get(folder, base_path)?.map_or(0, |r| r.sequence);
            if !session::base_still_held(diff.base, now, record.sequence) {
                return Ok(None);
            }
        }
        Ok(Some(diff))
    }

    /// A live file of the folder, outside this batch, whose content `record` starts with (a
    /// rename, move or copy), and the edits from it, when a reference to it is cheaper on the wire
    /// than the chunk list (`core::chunks::reference_pays`).
    /// The difference stored beside `record`: from its own last version (`previous`), or from
    /// another file that starts the same (a rename, a copy: `donor`) when that inserts fewer
    /// chunks. A file that grew after a scan caught it part-written (a `cp` of a big file under
    /// load) then refers to the copy's source instead of listing every chunk copied since.
    fn stored_diff(
        &self,
        folder: &str,
        previous: Option<&FileRecord>,
        record: &FileRecord,
        in_batch: &std::collections::HashSet<String>,
    ) -> Result<Option<StoredDiff>> {
        let own = previous
            .filter(|p| !p.deleted && p.is_file() && !record.deleted && record.is_file())
            .map(|prev| (prev.sequence, chunks::diff(&prev.chunks, &record.chunks)));
        let inserted = |e: &[chunks::ChunkEdit]| e.iter().map(|e| e.insert.len()).sum::<usize>();
        let donated = match &own {
            Some((_, edits)) if inserted(edits) == 0 => None,
            _ => self.donor(folder, record, in_batch)?,
        };
        let sequence = record.sequence;
        let from_donor = |(donor, edits): (FileRecord, Vec<chunks::ChunkEdit>)| StoredDiff {
            base: donor.sequence,
            sequence,
            edits,
            base_path: Some(donor.path),
        };
        Ok(match (own, donated) {
            (Some((_, own)), Some(d)) if inserted(&d.1) < inserted(&own) => Some(from_donor(d)),
            (Some((base, edits)), _) => Some(StoredDiff { base, sequence, edits, base_path: None }),
            (None, donated) => donated.map(from_donor),
        })
    }

    fn donor(
        &self,
        folder: &str,
        record: &FileRecord,
        in_batch: &std::collections::HashSet<String>,
    ) -> Result<Option<(FileRecord, Vec<ChunkEdit>)>> {
        let wanted = record.is_file() && !record.deleted && chunks::worth_a_reference(record.chunks.len());
        let Some(first) = record.chunks.first().filter(|_| wanted) else {
            return Ok(None);
        };
        for loc in self.chunk_locations(&first.hash, DONOR_CANDIDATES) {
            if loc.folder != folder || loc.offset != 0 || loc.path == record.path || in_batch.contains(&loc.path) {
                continue;
            }
            let Some(donor) = self.get(folder, &loc.path)?.filter(|d| d.is_file() && !d.deleted) else { continue };
            let edits = chunks::diff(&donor.chunks, &record.chunks);
            if chunks::reference_pays(&edits, record.chunks.len(), donor.path.len()) {
                return Ok(Some((donor, edits)));
            }
        }
        Ok(None)
    }

    /// Where a chunk with this hash lives in our folders (entries may be stale: verify the bytes).
    pub fn chunk_locations(&self, hash: &[u8; 32], limit: usize) -> Vec<ChunkLocation> {
        // Within the hash's prefix only (the family's prefix extractor): the filters answer for a
        // hash no table holds.
        let mut read = rocksdb::ReadOptions::default();
        read.set_prefix_same_as_start(true);
        self.db
            .iterator_cf_opt(self.cf("chunks"), read, IteratorMode::From(hash, Direction::Forward))
            .map_while(|item| item.ok())
            .take_while(|(k, _)| k.starts_with(hash))
            .filter_map(|(k, v)| {
                let (folder, path, offset) = keys::parse_chunk(&k)?;
                let size = u32::from_be_bytes(v.as_ref().try_into().ok()?);
                Some(ChunkLocation { folder, path, offset, size })
            })
            .take(limit)
            .collect()
    }

    /// The size of our chunk with this hash at this offset of this path, if our index has one: a
    /// peer is served only chunks we announced, so a request cannot make us read (or rehash) any
    /// other range of a file.
    pub fn chunk_at(&self, hash: &[u8; 32], folder: &str, path: &str, offset: u64) -> Result<Option<u32>> {
        Ok(self
            .db
            .get_cf(self.cf("chunks"), keys::chunk(hash, folder, path, offset))?
            .and_then(|v| Some(u32::from_be_bytes(v.as_slice().try_into().ok()?))))
    }

    pub fn flush(&self) -> Result<()> {
        for name in FAMILIES {
            self.db.flush_cf(self.cf(name))?;
        }
        // The need queue is written and emptied as a sync runs: compacted at a clean stop, its
        // deleted entries leave the disk instead of waiting for RocksDB to get to them.
        for name in ["needs", "needpath"] {
            self.db.compact_range_cf(self.cf(name), None::<&[u8]>, None::<&[u8]>);
        }
        self.db.flush_wal(true)?;
        Ok(())
    }
}

mod needs;
mod remote;
#[cfg(test)]
mod tests;
