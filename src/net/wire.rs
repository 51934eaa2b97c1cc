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
mod tests;
