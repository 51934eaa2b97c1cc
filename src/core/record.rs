//! The record of one path in a folder: what it is, its metadata, its version and its chunks.

use serde::{Deserialize, Serialize};

use super::device::ShortId;
use super::version::VersionVector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Directory,
}

/// A content-defined piece of a file, named by its BLAKE3 hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Chunk {
    pub offset: u64,
    pub size: u32,
    pub hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Relative to the folder root, '/'-separated, checked by `core::path`.
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    /// Nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Unix permission bits (only the executable bits are compared between peers).
    pub permissions: u32,
    pub version: VersionVector,
    /// A tombstone: the path was deleted at this version.
    pub deleted: bool,
    /// This node's sequence number for the record. Before it is committed: the sequence of the
    /// record it replaces (0 for a new path), which lets the index refuse a stale scan result.
    pub sequence: u64,
    /// The device that made this version.
    pub modified_by: ShortId,
    pub chunks: Vec<Chunk>,
}

impl FileRecord {
    pub fn is_file(&self) -> bool {
        self.kind == FileKind::File
    }

    /// Same user-visible state: both deleted, or the same kind, content and executable bit.
    /// Two concurrent versions with the same content are not a conflict.
    pub fn same_content(&self, other: &FileRecord) -> bool {
        if self.deleted || other.deleted {
            return self.deleted == other.deleted;
        }
        self.kind == other.kind
            && self.size == other.size
            && (self.permissions & 0o111 != 0) == (other.permissions & 0o111 != 0)
            && self.chunks.len() == other.chunks.len()
            && self.chunks.iter().zip(&other.chunks).all(|(a, b)| a.hash == b.hash && a.size == b.size)
    }

    /// Same metadata as seen on disk: the test that lets a scan skip hashing a file.
    pub fn same_disk_state(&self, kind: FileKind, size: u64, mtime_ns: i64, permissions: u32) -> bool {
        !self.deleted
            && self.kind == kind
            && (kind == FileKind::Directory || (self.size == size && self.mtime_ns == mtime_ns))
            && self.permissions & 0o777 == permissions & 0o777
    }

    /// The tombstone that replaces this record when the path is gone.
    pub fn tombstone(&self, by: ShortId, now: u64) -> FileRecord {
        FileRecord {
            path: self.path.clone(),
            kind: self.kind,
            size: 0,
            mtime_ns: self.mtime_ns,
            permissions: 0,
            version: self.version.updated(by, now),
            deleted: true,
            sequence: self.sequence,
            modified_by: by,
            chunks: Vec::new(),
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn file(path: &str, content: u8, version: &[(u64, u64)], mtime_s: i64, by: u64) -> FileRecord {
        FileRecord {
            path: path.into(),
            kind: FileKind::File,
            size: 10,
            mtime_ns: mtime_s * 1_000_000_000,
            permissions: 0o644,
            version: VersionVector::from_counters(version.iter().map(|(k, v)| (ShortId(*k), *v))),
            deleted: false,
            sequence: 1,
            modified_by: ShortId(by),
            chunks: vec![Chunk { offset: 0, size: 10, hash: [content; 32] }],
        }
    }
}
