//! Conversions between core records and protocol messages. Everything from a peer is checked here:
//! a path that breaks the rules, a hash of the wrong length or a chunk list that does not add up
//! is a protocol violation, and the connection is closed without applying anything of the batch.

use super::proto;
use crate::core::chunks::{self, ChunkEdit};
use crate::core::{path, Chunk, FileKind, FileRecord, ShortId, VersionVector};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("bad path `{path}`: {reason}")]
    Path { path: String, reason: path::PathError },
    #[error("`{path}`: {what}")]
    Invalid { path: String, what: String },
    #[error("`{path}`: difference against sequence {base}, which we do not hold")]
    MissingBase { path: String, base: u64 },
}

pub fn chunk_to_wire(c: &Chunk) -> proto::Chunk {
    proto::Chunk { offset: c.offset, size: c.size, hash: c.hash.to_vec() }
}

fn chunk_from_wire(p: &str, c: &proto::Chunk) -> Result<Chunk, WireError> {
    let hash: [u8; 32] = c.hash.as_slice().try_into().map_err(|_| WireError::Invalid { path: p.into(), what: "chunk hash is not 32 bytes".into() })?;
    if c.size == 0 || c.size as usize > super::MAX_MESSAGE {
        return Err(WireError::Invalid { path: p.into(), what: format!("chunk size {}", c.size) });
    }
    Ok(Chunk { offset: c.offset, size: c.size, hash })
}

/// A record for the wire; with `diff` (a base sequence and edits), as chunk edits against the
/// record at that base.
pub fn to_wire(record: &FileRecord, diff: Option<(u64, &[ChunkEdit])>) -> proto::FileInfo {
    let version = proto::Vector { counters: record.version.counters().map(|(id, value)| proto::Counter { id: id.0, value }).collect() };
    let (chunks, base_sequence, edits) = match diff {
        Some((base, edits)) => (
            Vec::new(),
            base,
            edits.iter().map(|e| proto::ChunkEdit { copy_from: e.copy_from, copy_len: e.copy_len, insert: e.insert.iter().map(chunk_to_wire).collect() }).collect(),
        ),
        None => (record.chunks.iter().map(chunk_to_wire).collect(), 0, Vec::new()),
    };
    proto::FileInfo {
        path: record.path.clone(),
        kind: match record.kind {
            FileKind::File => proto::FileKind::File as i32,
            FileKind::Directory => proto::FileKind::Directory as i32,
        },
        size: record.size,
        mtime_ns: record.mtime_ns,
        permissions: record.permissions,
        version: Some(version),
        deleted: record.deleted,
        sequence: record.sequence,
        modified_by: record.modified_by.0,
        chunks,
        base_sequence,
        edits,
    }
}

/// A record from the wire. `base` finds the chunks of the record we hold from this peer at a
/// sequence, for records sent as differences.
pub fn from_wire(info: proto::FileInfo, base: impl Fn(&str, u64) -> Option<Vec<Chunk>>) -> Result<FileRecord, WireError> {
    let p = info.path.clone();
    path::validate(&p).map_err(|reason| WireError::Path { path: p.clone(), reason })?;
    let invalid = |what: &str| WireError::Invalid { path: p.clone(), what: what.into() };
    let kind = match proto::FileKind::try_from(info.kind) {
        Ok(proto::FileKind::File) => FileKind::File,
        Ok(proto::FileKind::Directory) => FileKind::Directory,
        Err(_) => return Err(invalid("unknown file kind")),
    };
    let version = VersionVector::from_counters(info.version.unwrap_or_default().counters.into_iter().map(|c| (ShortId(c.id), c.value)));
    if version.is_empty() {
        return Err(invalid("empty version vector"));
    }
    let chunks = if info.base_sequence != 0 {
        let old = base(&p, info.base_sequence).ok_or(WireError::MissingBase { path: p.clone(), base: info.base_sequence })?;
        let mut edits = Vec::with_capacity(info.edits.len());
        for e in &info.edits {
            let insert = e.insert.iter().map(|c| chunk_from_wire(&p, c)).collect::<Result<Vec<_>, _>>()?;
            edits.push(ChunkEdit { copy_from: e.copy_from, copy_len: e.copy_len, insert });
        }
        chunks::apply(&old, &edits).map_err(|e| invalid(&e.to_string()))?
    } else {
        info.chunks.iter().map(|c| chunk_from_wire(&p, c)).collect::<Result<Vec<_>, _>>()?
    };
    let live_file = kind == FileKind::File && !info.deleted;
    if live_file && !chunks::is_consistent(&chunks, info.size) {
        return Err(invalid("chunk list does not cover the file size"));
    }
    if !live_file && !chunks.is_empty() {
        return Err(invalid("chunks on a directory or tombstone"));
    }
    Ok(FileRecord {
        path: info.path,
        kind,
        size: if live_file { info.size } else { 0 },
        mtime_ns: info.mtime_ns,
        permissions: info.permissions & 0o7777,
        version,
        deleted: info.deleted,
        sequence: info.sequence,
        modified_by: ShortId(info.modified_by),
        chunks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::fixtures::file;

    #[test]
    fn records_survive_the_wire() {
        let r = file("a/b", 3, &[(1, 2), (7, 9)], 12, 7);
        assert_eq!(from_wire(to_wire(&r, None), |_, _| None).unwrap(), r);
    }

    #[test]
    fn hostile_records_are_refused() {
        let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
        info.path = "../../etc/passwd".into();
        assert!(matches!(from_wire(info, |_, _| None), Err(WireError::Path { .. })));
        let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
        info.size = 1 << 40;
        assert!(from_wire(info, |_, _| None).is_err());
        let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
        info.chunks[0].hash.truncate(5);
        assert!(from_wire(info, |_, _| None).is_err());
        let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
        info.base_sequence = 4;
        assert!(matches!(from_wire(info, |_, _| None), Err(WireError::MissingBase { .. })));
    }
}
