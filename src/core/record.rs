//! The record of one path in a folder: what it is, its metadata, its version and its chunks.

use serde::{Deserialize, Serialize};

use super::device::ShortId;
use super::version::VersionVector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Directory,
    /// A symbolic link, synced as a link: its content is its target text (`FileRecord::link_target`),
    /// which is data (it may be absolute or lead out of the folder) and is never followed.
    Symlink,
}

/// The longest link target accepted (from a peer or the disk): Linux's `PATH_MAX` less its NUL.
pub const MAX_LINK_TARGET: usize = 4095;

/// Why a link target is refused: only what no filesystem can store. An absolute target or one
/// with `..` is fine: it is text, never resolved by syncnode.
pub fn check_link_target(target: &str) -> Result<(), String> {
    if target.is_empty() {
        return Err("empty link target".into());
    }
    if target.len() > MAX_LINK_TARGET {
        return Err(format!("link target of {} bytes (at most {MAX_LINK_TARGET})", target.len()));
    }
    if target.contains('\0') {
        return Err("NUL in link target".into());
    }
    Ok(())
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
    /// What a live `Symlink` points to (its text, never resolved); empty for every other record.
    pub link_target: String,
}

impl FileRecord {
    pub fn is_file(&self) -> bool {
        self.kind == FileKind::File
    }

    /// A live symlink (not a tombstone of one).
    pub fn is_link(&self) -> bool {
        self.kind == FileKind::Symlink && !self.deleted
    }

    /// Same user-visible state: both deleted, or the same kind, content and executable bit (for
    /// links: the same target; a link has no mode of its own). Two concurrent versions with the
    /// same content are not a conflict.
    pub fn same_content(&self, other: &FileRecord) -> bool {
        if self.deleted || other.deleted {
            return self.deleted == other.deleted;
        }
        if self.kind == FileKind::Symlink || other.kind == FileKind::Symlink {
            return self.kind == other.kind && self.link_target == other.link_target;
        }
        self.kind == other.kind
            && self.size == other.size
            && (self.permissions & 0o111 != 0) == (other.permissions & 0o111 != 0)
            && self.chunks.len() == other.chunks.len()
            && self.chunks.iter().zip(&other.chunks).all(|(a, b)| a.hash == b.hash && a.size == b.size)
    }

    /// Same metadata as seen on disk: the test that lets a scan skip hashing a file. Never true
    /// for a link: its metadata does not show its target, which is read (`readlink`) every time.
    pub fn same_disk_state(&self, kind: FileKind, size: u64, mtime_ns: i64, permissions: u32) -> bool {
        !self.deleted
            && self.kind == kind
            && kind != FileKind::Symlink
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
            link_target: String::new(),
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
            link_target: String::new(),
        }
    }

    pub fn link(path: &str, target: &str, version: &[(u64, u64)], mtime_s: i64, by: u64) -> FileRecord {
        FileRecord {
            kind: FileKind::Symlink,
            size: 0,
            permissions: 0o777,
            chunks: Vec::new(),
            link_target: target.into(),
            ..file(path, 0, version, mtime_s, by)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{file, link};
    use super::*;

    #[test]
    fn a_link_is_the_same_only_as_a_link_with_the_same_target() {
        let a = link("l", "../x", &[(1, 1)], 10, 1);
        let mut b = link("l", "../x", &[(2, 1)], 99, 2);
        b.permissions = 0o755;
        assert!(a.same_content(&b), "mtime and mode are not a link's content");
        assert!(!a.same_content(&link("l", "/etc/x", &[(2, 1)], 10, 1)));
        // A file whose bytes happen to spell the target is still another thing.
        assert!(!a.same_content(&file("l", 0, &[(1, 1)], 10, 1)));
        assert!(!file("l", 0, &[(1, 1)], 10, 1).same_content(&a));
        assert!(a.tombstone(ShortId(1), 0).link_target.is_empty());
        assert!(!a.same_disk_state(FileKind::Symlink, 0, a.mtime_ns, 0o777), "a link is always read again");
    }

    #[test]
    fn link_targets_are_text_bounded_and_without_nul() {
        for ok in ["x", "../../outside", "/etc/passwd", "a/./b//c", &"y".repeat(MAX_LINK_TARGET)] {
            assert!(check_link_target(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a\0b", &"y".repeat(MAX_LINK_TARGET + 1)] {
            assert!(check_link_target(bad).is_err(), "{bad:?}");
        }
    }
}

/// One entry of a directory's slice of an index, listed in key order: a record directly inside
/// the directory, or the name of a child the index holds records below (`dir/name/...`, listed
/// after `name.txt` and `name-x`, since `/` sorts after `-` and `.`).
#[derive(Debug, Clone, PartialEq)]
pub enum Listed {
    Record(FileRecord),
    Below(String),
}
