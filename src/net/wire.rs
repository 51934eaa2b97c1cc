//! Conversions between core records and protocol messages. Everything from a peer is checked here:
//! a path that breaks the rules, a hash of the wrong length or a chunk list that does not add up
//! is a protocol violation, and the connection is closed without applying anything of the batch.
//!
//! Every amount a peer controls is bounded here, before any work is done on it: records per
//! message, chunks per record and per message (an edit script is judged by what it expands to
//! before it is expanded), devices per version vector, chunk and request sizes; and counters near
//! overflow (a version counter, a size, an offset) are refused, never saturated. Only the
//! permission bits 0o777 travel: setuid, setgid and sticky are dropped on both sides.

use super::proto;
use crate::core::chunks::{self, ChunkEdit, MAX_CHUNKS_PER_RECORD};
use crate::core::record::check_link_target;
use crate::core::session::{self, Batch, Cost, Limits};
use crate::core::version::{MAX_COUNTER, MAX_COUNTERS};
use crate::core::{path, Chunk, FileKind, FileRecord, ShortId, VersionVector};

/// Most folders one Hello may offer.
pub const MAX_OFFERS: usize = 1024;
/// Most records in one index message.
pub const MAX_FILES_PER_UPDATE: usize = 10_000;
/// Most chunk entries one index message may amount to, whole lists and expanded edit scripts
/// together (a chunk costs about 48 bytes once decoded, so about 25 MiB): the sender cuts its
/// batches to fit.
pub const MAX_CHUNKS_PER_UPDATE: u64 = 1 << 19;
/// Most version counters in one index message, all records together (each decodes to a map entry
/// of some 40 bytes, so about 10 MiB): the sender cuts its batches to fit.
pub const MAX_COUNTERS_PER_UPDATE: u64 = 1 << 18;
/// Largest index message we send (half the limit: room for framing and for the records' growth
/// in the receiver's eyes, which counts expanded edits).
pub const MAX_INDEX_BYTES: usize = super::MAX_MESSAGE / 2;
/// What one of our index messages may carry: the limits the receiver checks (`check_update`).
pub const INDEX_LIMITS: Limits = Limits {
    records: MAX_FILES_PER_UPDATE,
    chunks: MAX_CHUNKS_PER_UPDATE,
    counters: MAX_COUNTERS_PER_UPDATE,
    bytes: MAX_INDEX_BYTES,
    record_chunks: MAX_CHUNKS_PER_RECORD,
};
/// Largest chunk: FastCDC's largest maximum size.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Largest file size and chunk request end: 2^43 bytes (8 TiB), as many chunks as a record may have
/// times the largest chunk, far from any overflow of the offset arithmetic.
pub const MAX_FILE_SIZE: u64 = MAX_CHUNKS_PER_RECORD * MAX_CHUNK_SIZE as u64;
/// Largest rsync signature in a chunk request (ours: about 64 blocks of 12 bytes; 1,024 for a
/// 16 MiB chunk).
pub const MAX_SIGNATURE: usize = 64 << 10;
/// Permission bits that travel and are applied: never setuid, setgid or sticky.
pub const PERMISSION_BITS: u32 = 0o777;

/// An index message that breaks a limit as a whole (nothing of it is looked at further).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpdateError {
    #[error("index update of {0} records (at most {MAX_FILES_PER_UPDATE})")]
    TooManyFiles(usize),
    #[error("index update of {0} chunks, counting expanded edits (at most {MAX_CHUNKS_PER_UPDATE})")]
    TooManyChunks(u64),
    #[error("index update of {0} version counters (at most {MAX_COUNTERS_PER_UPDATE})")]
    TooManyCounters(u64),
}

/// Version counters a record carries.
pub fn record_counters(info: &proto::FileInfo) -> u64 {
    info.version.as_ref().map_or(0, |v| v.counters.len() as u64)
}

/// Chunk entries a record amounts to once decoded: its whole list, or what its edits expand to
/// (copy lengths summed in u64: nothing is expanded to count them).
pub fn record_chunks(info: &proto::FileInfo) -> u64 {
    info.chunks.len() as u64 + info.edits.iter().map(|e| e.copy_len as u64 + e.insert.len() as u64).sum::<u64>()
}

/// The limits of a whole index message, checked before any record of it is decoded.
pub fn check_update(update: &proto::IndexUpdate) -> Result<(), UpdateError> {
    if update.files.len() > MAX_FILES_PER_UPDATE {
        return Err(UpdateError::TooManyFiles(update.files.len()));
    }
    let chunks: u64 = update.files.iter().map(record_chunks).sum();
    if chunks > MAX_CHUNKS_PER_UPDATE {
        return Err(UpdateError::TooManyChunks(chunks));
    }
    let counters: u64 = update.files.iter().map(record_counters).sum();
    if counters > MAX_COUNTERS_PER_UPDATE {
        return Err(UpdateError::TooManyCounters(counters));
    }
    Ok(())
}

/// What a record costs in an index message, as `check_update` counts it (bytes with room for its
/// field header).
pub fn record_cost(info: &proto::FileInfo) -> Cost {
    use prost::Message as _;
    Cost { chunks: record_chunks(info), counters: record_counters(info), bytes: info.encoded_len() + 8 }
}

/// Cuts our next index message from `records` (in sequence order): the longest prefix within
/// `INDEX_LIMITS` (`core::session::fit_batch`), returning its length. A record that no message
/// could carry is dropped from `records`, logged: it is skipped, not sent to be refused forever.
pub fn fit_batch(folder: &str, records: &mut Vec<proto::FileInfo>) -> usize {
    let batch: Batch = session::fit_batch(records.iter().map(record_cost), &INDEX_LIMITS);
    for &i in &batch.skip {
        let Cost { chunks, bytes, .. } = record_cost(&records[i]);
        tracing::warn!(folder, path = %records[i].path, chunks, bytes, "file has too many chunks to announce; not synced");
    }
    for &i in batch.skip.iter().rev() {
        records.remove(i);
    }
    batch.len()
}

/// A chunk request that is refused before anything is read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("bad path `{path}`: {reason}")]
    Path { path: String, reason: path::PathError },
    #[error("chunk size {0} (at most {MAX_CHUNK_SIZE})")]
    Size(u32),
    #[error("chunk range {offset}+{size} ends past {MAX_FILE_SIZE}")]
    Range { offset: u64, size: u32 },
    #[error("hash is not 32 bytes")]
    Hash,
    #[error("signature of {0} bytes (at most {MAX_SIGNATURE})")]
    Signature(usize),
}

impl RequestError {
    /// A short name of the reason, for logging each kind once per peer.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestError::Path { .. } => "path",
            RequestError::Size(_) => "size",
            RequestError::Range { .. } => "range",
            RequestError::Hash => "hash",
            RequestError::Signature(_) => "signature",
        }
    }
}

impl RequestError {
    /// The code a refusal of this request carries on the wire.
    pub fn code(&self) -> proto::ChunkError {
        proto::ChunkError::Invalid
    }
}

/// Why a chunk could not be had from one peer: what the requester acts on, never a message text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The peer answered with a refusal.
    #[error("refused ({}): {detail}", code.as_str_name())]
    Refused { code: proto::ChunkError, detail: String },
    /// The answer did not decode to the chunk asked for.
    #[error("bad answer: {0}")]
    BadAnswer(String),
    #[error("connection closed")]
    Closed,
    #[error("timed out")]
    TimedOut,
}

impl FetchError {
    /// Whether the same peer may serve this chunk if asked again later: a busy peer, a file it is
    /// rehashing, or a connection that comes back. A peer that lacks the chunk or refuses the
    /// request as invalid will give the same answer until it announces something new.
    pub fn worth_retrying(&self) -> bool {
        match self {
            FetchError::Refused { code, .. } => {
                matches!(code, proto::ChunkError::Busy | proto::ChunkError::Changed | proto::ChunkError::Unreadable)
            }
            FetchError::BadAnswer(_) => false,
            FetchError::Closed | FetchError::TimedOut => true,
        }
    }
}

/// A refusal to send back for chunk request `id`.
pub fn refusal(id: u64, code: proto::ChunkError, detail: String) -> proto::ChunkResponse {
    proto::ChunkResponse { id, data: Vec::new(), encoding: 0, error: detail, code: code as i32 }
}

/// Splits a peer's answer into its encoded data or its refusal. An unknown code, or an error text
/// without a code, is still a refusal.
pub fn answer(r: proto::ChunkResponse) -> Result<(Vec<u8>, i32), FetchError> {
    match proto::ChunkError::try_from(r.code) {
        Ok(proto::ChunkError::None) if r.error.is_empty() => Ok((r.data, r.encoding)),
        Ok(proto::ChunkError::None) => {
            Err(FetchError::Refused { code: proto::ChunkError::Unreadable, detail: r.error })
        }
        Ok(code) => Err(FetchError::Refused { code, detail: r.error }),
        Err(_) => Err(FetchError::Refused {
            code: proto::ChunkError::Unreadable,
            detail: format!("unknown refusal code {}: {}", r.code, r.error),
        }),
    }
}

/// Checks a peer's chunk request; returns the hash it names.
pub fn check_request(r: &proto::ChunkRequest) -> Result<[u8; 32], RequestError> {
    path::validate(&r.path).map_err(|reason| RequestError::Path { path: r.path.clone(), reason })?;
    if r.size == 0 || r.size > MAX_CHUNK_SIZE {
        return Err(RequestError::Size(r.size));
    }
    if r.offset.checked_add(r.size as u64).is_none_or(|end| end > MAX_FILE_SIZE) {
        return Err(RequestError::Range { offset: r.offset, size: r.size });
    }
    if r.signature.len() > MAX_SIGNATURE {
        return Err(RequestError::Signature(r.signature.len()));
    }
    r.hash.as_slice().try_into().map_err(|_| RequestError::Hash)
}

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
    let hash: [u8; 32] = c
        .hash
        .as_slice()
        .try_into()
        .map_err(|_| WireError::Invalid { path: p.into(), what: "chunk hash is not 32 bytes".into() })?;
    if c.size == 0 || c.size > MAX_CHUNK_SIZE {
        return Err(WireError::Invalid { path: p.into(), what: format!("chunk size {}", c.size) });
    }
    if c.offset > MAX_FILE_SIZE {
        return Err(WireError::Invalid { path: p.into(), what: format!("chunk offset {}", c.offset) });
    }
    Ok(Chunk { offset: c.offset, size: c.size, hash })
}

/// A record for the wire; with `diff` (a base sequence and edits), as chunk edits against the
/// record at that base.
/// A record sent as edits from a record the peer holds from us: at `base` of the same path, or of
/// `base_path` (a file renamed, moved or copied from there).
#[derive(Debug, Clone, Copy)]
pub struct Diff<'a> {
    pub base: u64,
    pub base_path: Option<&'a str>,
    pub edits: &'a [ChunkEdit],
}

pub fn to_wire(record: &FileRecord, diff: Option<Diff<'_>>) -> proto::FileInfo {
    let version = proto::Vector {
        counters: record.version.counters().map(|(id, value)| proto::Counter { id: id.0, value }).collect(),
    };
    let (chunks, base_sequence, base_path, edits) = match diff {
        Some(Diff { base, base_path, edits }) => (
            Vec::new(),
            base,
            base_path.unwrap_or_default().to_string(),
            edits
                .iter()
                .map(|e| proto::ChunkEdit {
                    copy_from: e.copy_from,
                    copy_len: e.copy_len,
                    insert: e.insert.iter().map(chunk_to_wire).collect(),
                })
                .collect(),
        ),
        None => (record.chunks.iter().map(chunk_to_wire).collect(), 0, String::new(), Vec::new()),
    };
    proto::FileInfo {
        path: record.path.clone(),
        kind: match record.kind {
            FileKind::File => proto::FileKind::File as i32,
            FileKind::Directory => proto::FileKind::Directory as i32,
            FileKind::Symlink => proto::FileKind::Symlink as i32,
        },
        size: record.size,
        mtime_ns: record.mtime_ns,
        permissions: record.permissions & PERMISSION_BITS,
        version: Some(version),
        deleted: record.deleted,
        sequence: record.sequence,
        modified_by: record.modified_by.0,
        chunks,
        base_sequence,
        edits,
        base_path,
        link_target: record.link_target.clone(),
    }
}

/// A record from the wire. `base` finds the chunks of the record we hold from this peer at a
/// sequence, for records sent as differences.
pub fn from_wire(
    mut info: proto::FileInfo,
    base: impl Fn(&str, u64) -> Option<Vec<Chunk>>,
) -> Result<FileRecord, WireError> {
    let p = info.path.clone();
    path::validate(&p).map_err(|reason| WireError::Path { path: p.clone(), reason })?;
    let invalid = |what: &str| WireError::Invalid { path: p.clone(), what: what.into() };
    let kind = match proto::FileKind::try_from(info.kind) {
        Ok(proto::FileKind::File) => FileKind::File,
        Ok(proto::FileKind::Directory) => FileKind::Directory,
        Ok(proto::FileKind::Symlink) => FileKind::Symlink,
        Err(_) => return Err(invalid("unknown file kind")),
    };
    // A link's target is text: bounded, no NUL, and nothing else (absolute or `..` is data, never
    // resolved). Only a live link carries one.
    if kind == FileKind::Symlink && !info.deleted {
        check_link_target(&info.link_target).map_err(|what| invalid(&what))?;
    } else if !info.link_target.is_empty() {
        return Err(invalid("link target on a file, directory or tombstone"));
    }
    let counters = info.version.take().unwrap_or_default().counters;
    if counters.len() > MAX_COUNTERS {
        return Err(invalid(&format!("version vector of {} devices (at most {MAX_COUNTERS})", counters.len())));
    }
    if let Some(c) = counters.iter().find(|c| c.value > MAX_COUNTER) {
        return Err(invalid(&format!("version counter {} near overflow (at most {MAX_COUNTER})", c.value)));
    }
    let version = VersionVector::from_counters(counters.into_iter().map(|c| (ShortId(c.id), c.value)));
    if version.is_empty() {
        return Err(invalid("empty version vector"));
    }
    if info.size > MAX_FILE_SIZE {
        return Err(invalid(&format!("size {} (at most {MAX_FILE_SIZE})", info.size)));
    }
    let declared = record_chunks(&info);
    if declared > MAX_CHUNKS_PER_RECORD {
        return Err(invalid(&format!("{declared} chunks (at most {MAX_CHUNKS_PER_RECORD})")));
    }
    if info.edits.len() as u64 > MAX_CHUNKS_PER_RECORD {
        return Err(invalid(&format!("{} chunk edits (at most {MAX_CHUNKS_PER_RECORD})", info.edits.len())));
    }
    if info.base_sequence == 0 && !info.base_path.is_empty() {
        return Err(invalid("a base path without a base sequence"));
    }
    let base_path = match info.base_path.as_str() {
        "" => p.as_str(),
        other => {
            path::validate(other).map_err(|reason| WireError::Path { path: other.to_string(), reason })?;
            other
        }
    };
    let chunks = if info.base_sequence != 0 {
        let old = base(base_path, info.base_sequence)
            .ok_or(WireError::MissingBase { path: base_path.to_string(), base: info.base_sequence })?;
        let mut edits = Vec::with_capacity(info.edits.len());
        for e in &info.edits {
            let insert = e.insert.iter().map(|c| chunk_from_wire(&p, c)).collect::<Result<Vec<_>, _>>()?;
            edits.push(ChunkEdit { copy_from: e.copy_from, copy_len: e.copy_len, insert });
        }
        chunks::apply(&old, &edits, MAX_CHUNKS_PER_RECORD).map_err(|e| invalid(&e.to_string()))?
    } else {
        info.chunks.iter().map(|c| chunk_from_wire(&p, c)).collect::<Result<Vec<_>, _>>()?
    };
    let live_file = kind == FileKind::File && !info.deleted;
    if live_file && !chunks::is_consistent(&chunks, info.size) {
        return Err(invalid("chunk list does not cover the file size"));
    }
    if !live_file && !chunks.is_empty() {
        return Err(invalid("chunks on a directory, link or tombstone"));
    }
    Ok(FileRecord {
        path: info.path,
        kind,
        size: if live_file { info.size } else { 0 },
        mtime_ns: info.mtime_ns,
        permissions: info.permissions & PERMISSION_BITS,
        version,
        deleted: info.deleted,
        sequence: info.sequence,
        modified_by: ShortId(info.modified_by),
        chunks,
        link_target: info.link_target,
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
    fn a_renamed_file_travels_as_a_reference_to_the_record_it_came_from() {
        let old = file("old/name", 3, &[(1, 2)], 12, 7);
        let mut moved = old.clone();
        moved.path = "new/name".into();
        moved.sequence = 9;
        let edits = chunks::diff(&old.chunks, &moved.chunks);
        let info = to_wire(&moved, Some(Diff { base: 7, base_path: Some("old/name"), edits: &edits }));
        assert!(info.chunks.is_empty());
        assert_eq!(info.base_path, "old/name");
        let held = |path: &str, seq: u64| (path == "old/name" && seq == 7).then(|| old.chunks.clone());
        assert_eq!(from_wire(info.clone(), held).unwrap(), moved);
        // A base we do not hold is named as such; a base path that leaves the folder is refused.
        assert!(
            matches!(from_wire(info.clone(), |_, _| None), Err(WireError::MissingBase { path, .. }) if path == "old/name")
        );
        let mut escape = info.clone();
        escape.base_path = "../x".into();
        assert!(matches!(from_wire(escape, held), Err(WireError::Path { .. })));
        let mut orphan = info;
        orphan.base_sequence = 0;
        assert!(matches!(from_wire(orphan, held), Err(WireError::Invalid { .. })));
    }

    #[test]
    fn links_travel_as_their_target_text_and_bad_targets_are_refused() {
        use crate::core::record::fixtures::link;
        for target in ["rel/x", "../../../etc", "/etc/passwd", "dangling", "a b\tc\u{e9}"] {
            let r = link("dir/l", target, &[(1, 2)], 12, 7);
            assert_eq!(from_wire(to_wire(&r, None), |_, _| None).unwrap(), r, "{target}");
        }
        let bad = |f: &dyn Fn(&mut proto::FileInfo)| {
            let mut info = to_wire(&link("l", "t", &[(1, 2)], 12, 7), None);
            f(&mut info);
            from_wire(info, |_, _| None).is_err()
        };
        assert!(bad(&|i| i.link_target.clear()), "a live link needs a target");
        assert!(bad(&|i| i.link_target = "a\0b".into()), "NUL");
        assert!(bad(&|i| i.link_target = "x".repeat(crate::core::record::MAX_LINK_TARGET + 1)), "length");
        assert!(bad(&|i| i.chunks = vec![proto::Chunk { offset: 0, size: 1, hash: vec![1; 32] }]), "chunks");
        assert!(bad(&|i| i.kind = proto::FileKind::File as i32), "a target on a file");
        assert!(bad(&|i| i.deleted = true), "a target on a tombstone");
        // The tombstone of a link travels without one, and a link's size is always 0.
        let gone = link("l", "t", &[(1, 2)], 12, 7).tombstone(ShortId(7), 0);
        assert_eq!(from_wire(to_wire(&gone, None), |_, _| None).unwrap(), gone);
        let mut sized = to_wire(&link("l", "t", &[(1, 2)], 12, 7), None);
        sized.size = 99;
        assert_eq!(from_wire(sized, |_, _| None).unwrap().size, 0);
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

    #[test]
    fn an_amplifying_edit_script_is_refused_before_it_is_expanded() {
        // A 10,000-chunk base and 1,400 edits copying all of it: 14 million chunks if expanded.
        let base: Vec<Chunk> = chunks::with_offsets(
            (0..10_000u32).map(|i| Chunk { offset: 0, size: 1000, hash: [(i % 251) as u8; 32] }).collect(),
        );
        let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
        info.chunks.clear();
        info.base_sequence = 9;
        info.edits = vec![proto::ChunkEdit { copy_from: 0, copy_len: 10_000, insert: vec![] }; 1_400];
        info.size = 14_000_000 * 1000;
        assert_eq!(record_chunks(&info), 14_000_000);
        let looked_up = std::cell::Cell::new(false);
        let result = from_wire(info.clone(), |_, _| {
            looked_up.set(true);
            Some(base.clone())
        });
        assert!(
            matches!(result, Err(WireError::Invalid { ref what, .. }) if what.contains("14000000 chunks")),
            "{result:?}"
        );
        assert!(!looked_up.get(), "refused before the base was even fetched");
        // The same in a message: refused as a whole by arithmetic.
        let update = proto::IndexUpdate { folder: "default".into(), index_id: 1, files: vec![info] };
        assert_eq!(check_update(&update), Err(UpdateError::TooManyChunks(14_000_000)));
        // Many records that each fit, but not together.
        let mut one = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
        one.chunks = vec![one.chunks[0].clone(); 100_000];
        let update = proto::IndexUpdate { folder: "default".into(), index_id: 1, files: vec![one; 6] };
        assert_eq!(check_update(&update), Err(UpdateError::TooManyChunks(600_000)));
        let many = proto::IndexUpdate {
            folder: "default".into(),
            index_id: 1,
            files: vec![proto::FileInfo::default(); MAX_FILES_PER_UPDATE + 1],
        };
        assert_eq!(check_update(&many), Err(UpdateError::TooManyFiles(MAX_FILES_PER_UPDATE + 1)));
        // Version vectors that each fit, but not together.
        let mut wide = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
        wide.version = Some(proto::Vector {
            counters: (1..=MAX_COUNTERS as u64).map(|id| proto::Counter { id, value: 1 }).collect(),
        });
        let update = proto::IndexUpdate { folder: "default".into(), index_id: 1, files: vec![wide; 300] };
        assert_eq!(check_update(&update), Err(UpdateError::TooManyCounters(300 * MAX_COUNTERS as u64)));
    }

    #[test]
    fn counters_and_sizes_near_overflow_are_refused_not_saturated() {
        for value in [u64::MAX, u64::MAX - 1, MAX_COUNTER + 1] {
            let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
            info.version.as_mut().unwrap().counters[0].value = value;
            assert!(
                matches!(from_wire(info, |_, _| None), Err(WireError::Invalid { ref what, .. }) if what.contains("near overflow"))
            );
        }
        let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
        info.version.as_mut().unwrap().counters[0].value = MAX_COUNTER;
        assert!(from_wire(info, |_, _| None).is_ok());
        let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
        info.version = Some(proto::Vector {
            counters: (1..=MAX_COUNTERS as u64 + 1).map(|id| proto::Counter { id, value: 1 }).collect(),
        });
        assert!(from_wire(info, |_, _| None).is_err());
        // A tombstone with a huge size, a chunk at an offset near overflow.
        let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
        info.deleted = true;
        info.chunks.clear();
        info.size = u64::MAX;
        assert!(from_wire(info, |_, _| None).is_err());
        let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
        info.chunks[0].offset = u64::MAX - 5;
        assert!(from_wire(info, |_, _| None).is_err());
    }

    #[test]
    fn only_permission_bits_travel() {
        let mut r = file("a", 3, &[(1, 2)], 12, 7);
        r.permissions = 0o7755;
        assert_eq!(to_wire(&r, None).permissions, 0o755);
        let mut info = to_wire(&file("a", 3, &[(1, 2)], 12, 7), None);
        info.permissions = 0o7777 | 0o170000;
        assert_eq!(from_wire(info, |_, _| None).unwrap().permissions, 0o777);
    }

    #[test]
    fn chunk_requests_are_bounded() {
        let ok = proto::ChunkRequest {
            id: 1,
            folder: "default".into(),
            path: "a".into(),
            offset: 0,
            size: 65536,
            hash: vec![0; 32],
            signature: vec![],
        };
        assert_eq!(check_request(&ok), Ok([0; 32]));
        let bad = |f: &dyn Fn(&mut proto::ChunkRequest)| {
            let mut r = ok.clone();
            f(&mut r);
            check_request(&r).unwrap_err()
        };
        assert_eq!(bad(&|r| r.size = MAX_CHUNK_SIZE + 1).kind(), "size");
        assert_eq!(bad(&|r| r.size = 0).kind(), "size");
        assert_eq!(bad(&|r| r.offset = u64::MAX).kind(), "range");
        assert_eq!(bad(&|r| r.offset = MAX_FILE_SIZE).kind(), "range");
        assert_eq!(bad(&|r| r.hash = vec![1; 5]).kind(), "hash");
        assert_eq!(bad(&|r| r.path = "../x".into()).kind(), "path");
        assert_eq!(bad(&|r| r.signature = vec![0; MAX_SIGNATURE + 1]).kind(), "signature");
    }

    #[test]
    fn a_refusal_travels_as_a_code_and_comes_back_typed() {
        let r = refusal(7, proto::ChunkError::Busy, "later".into());
        assert_eq!(r.id, 7);
        let e = answer(r).unwrap_err();
        assert_eq!(e, FetchError::Refused { code: proto::ChunkError::Busy, detail: "later".into() });
        assert!(e.worth_retrying());
        let gone = answer(refusal(1, proto::ChunkError::NoSuchChunk, String::new())).unwrap_err();
        assert!(!gone.worth_retrying());
        // An older peer's text-only error, or a code from a newer one, is still a refusal.
        let text_only = proto::ChunkResponse { id: 1, error: "nope".into(), ..Default::default() };
        assert!(matches!(answer(text_only), Err(FetchError::Refused { .. })));
        let unknown = proto::ChunkResponse { id: 1, code: 99, ..Default::default() };
        assert!(matches!(answer(unknown), Err(FetchError::Refused { .. })));
        let ok = proto::ChunkResponse { id: 1, data: vec![1, 2], encoding: 0, ..Default::default() };
        assert_eq!(answer(ok), Ok((vec![1, 2], 0)));
    }

    fn info(path: &str, chunks: usize, expanded: u32, counters: usize) -> proto::FileInfo {
        proto::FileInfo {
            path: path.into(),
            chunks: vec![proto::Chunk { offset: 0, size: 1, hash: vec![7; 32] }; chunks],
            edits: (expanded > 0)
                .then(|| proto::ChunkEdit { copy_len: expanded, ..Default::default() })
                .into_iter()
                .collect(),
            version: Some(proto::Vector { counters: vec![proto::Counter { id: 1, value: 1 }; counters] }),
            ..Default::default()
        }
    }

    /// Sends `records` as our index sender does, checking every message as the receiver would:
    /// returns the paths sent, in order.
    fn send_all(mut records: Vec<proto::FileInfo>) -> Vec<String> {
        use prost::Message as _;
        let mut sent = Vec::new();
        while !records.is_empty() {
            let n = fit_batch("default", &mut records);
            let batch =
                proto::IndexUpdate { folder: "default".into(), index_id: 1, files: records.drain(..n).collect() };
            assert!(n > 0 || batch.files.is_empty() && records.is_empty(), "an empty batch left records behind");
            assert_eq!(check_update(&batch), Ok(()));
            assert!(batch.encoded_len() <= MAX_INDEX_BYTES + 64, "{}", batch.encoded_len());
            sent.extend(batch.files.into_iter().map(|f| f.path));
        }
        sent
    }

    #[test]
    fn our_index_batches_stay_within_what_the_receiver_accepts() {
        // Three records of 200,000 chunks: two fit one message by count, but not by bytes.
        let mut records = vec![info("a", 200_000, 0, 1), info("b", 200_000, 0, 1), info("c", 10, 0, 1)];
        let n = fit_batch("default", &mut records);
        assert!((1..3).contains(&n), "{n}");
        assert_eq!(send_all(records), ["a", "b", "c"]);
        // A record that no message could carry is skipped, not sent to be refused forever.
        let mut records = vec![info("huge", 600_000, 0, 1), info("small", 1, 0, 1)];
        assert_eq!(fit_batch("default", &mut records), 1);
        assert_eq!(records[0].path, "small");
        assert_eq!(send_all(vec![info("huge", 0, 600_000, 1)]), Vec::<String>::new());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

        /// Every batch passes `check_update` and fits a message; a record is left out only if
        /// it alone is over a limit, and the others go in order.
        #[test]
        fn every_batch_of_ours_passes_the_receivers_check(
            shapes in proptest::collection::vec(
                (0usize..3_000_000, 0usize..40, 0u32..700_000, 0usize..2_000), 0..300)
        ) {
            let records: Vec<proto::FileInfo> = shapes
                .iter()
                .enumerate()
                .map(|(i, &(pad, chunks, expanded, counters))| {
                    // Mostly small records; a few long paths to reach the byte limit.
                    let pad = if i % 37 == 0 { pad } else { pad % 64 };
                    info(&format!("{i}-{}", "x".repeat(pad)), chunks, expanded % (if i % 5 == 0 { 700_000 } else { 5_000 }), counters)
                })
                .collect();
            let sendable: Vec<String> = records
                .iter()
                .filter(|r| !INDEX_LIMITS.too_big(&record_cost(r)))
                .map(|r| r.path.clone())
                .collect();
            proptest::prop_assert_eq!(send_all(records), sendable);
        }
    }
}
