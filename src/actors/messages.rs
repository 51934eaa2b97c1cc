//! Typed messages exchanged between actors.

use actix::prelude::*;

use crate::core::{DeviceId, FileRecord, VersionVector};
use crate::fs::scan::DiskState;
use crate::net::proto::FileInfo;

/// Paths of a folder that may have changed ("" = the whole folder).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LocalChanged {
    pub folder: String,
    pub paths: Vec<String>,
}

/// A file's content no longer matches its record although its size and mtime do (found when a
/// peer asked for a chunk of it): hash it again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Rehash {
    pub folder: String,
    pub path: String,
}

/// Records a peer sent for a folder; `reply` learns if they were refused.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoteIndex {
    pub device: DeviceId,
    pub folder: String,
    pub index_id: u64,
    pub files: Vec<FileInfo>,
    pub reply: Recipient<Disconnect>,
}

/// Close a connection, logging why.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub reason: String,
    /// Set when the peer broke the protocol (it is then counted, and redialed only with backoff):
    /// how many of its records were refused with it.
    pub violation: Option<usize>,
}

/// Our index of `folder` has new records up to `max_sequence`.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct IndexUpdated {
    pub folder: String,
    pub max_sequence: u64,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<IndexUpdated>);

/// Recompute what a folder needs (a peer came or went, or a retry is due).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecomputeNeeds {
    pub folder: String,
}

/// The Puller starts (`active`) or ends work on a path. While a path is being written, local
/// events on it are held back: its rename into place is the pull itself, not a local change, and
/// hashing it again would only race the Puller's `Applied`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Pulling {
    pub folder: String,
    pub path: String,
    pub active: bool,
}

/// Recompute what these paths of a folder need: a newer version arrived while one was being pulled.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecomputePaths {
    pub folder: String,
    pub paths: Vec<String>,
}

/// One thing a folder needs from its peers (the rule that finds it is `core::replica::needs`).
pub use crate::core::replica::Need as NeedItem;

#[derive(Message)]
#[rtype(result = "()")]
pub struct Needs {
    pub items: Vec<NeedItem>,
    /// True when this is the complete list (earlier items not in it are obsolete).
    pub complete: bool,
    /// Paths the Puller asked to have decided again (`RecomputePaths`) that need nothing now.
    pub settled: Vec<String>,
}

/// What the Puller did with a need, for the Index to record.
#[derive(Debug)]
pub enum Outcome {
    /// The remote version is now on disk (or deleted) as described.
    Took { record: FileRecord, disk: Option<DiskState> },
    /// Our version stays; re-issue it above `other` so it wins everywhere.
    Reissue { path: String, other: VersionVector },
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Applied {
    pub folder: String,
    pub outcome: Outcome,
}
