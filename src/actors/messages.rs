//! Every message actors send each other, and the ports (bundles of `Recipient`s) through which
//! they send them. An actor never holds another actor's concrete address: it holds the port of
//! what it may ask, so no actor module imports another, and `node.rs` wires them all in one place.
//! Messages an actor sends only to itself stay private in its own module.

use std::sync::Arc;

use actix::prelude::*;

use crate::core::folder::PullPhase;
use crate::core::{DeviceId, FileRecord, VersionVector};
use crate::fs::scan::DiskState;
pub use crate::net::fetch::{FetchPort, Fetched};
use crate::net::proto::FileInfo;

/// What a Peer actor asks of the Index.
#[derive(Clone)]
pub struct IndexForPeers {
    pub remote_index: Recipient<RemoteIndex>,
    pub rehash: Recipient<Rehash>,
    pub sequences: Sequences,
    pub recompute: Recipient<RecomputeNeeds>,
}

/// What the Index sends a folder's Puller.
#[derive(Clone)]
pub struct PullerPort {
    pub needs: Recipient<Needs>,
    pub barrier: Recipient<Barrier>,
}

/// Answered once the Puller has handled every message sent to it before this one (a mailbox is
/// first in, first out): a sender waits on it until its needs are taken in.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Barrier;

/// What a Puller tells the Index.
#[derive(Clone)]
pub struct IndexForPuller {
    pub applied: Recipient<Applied>,
    pub changed: Recipient<LocalChanged>,
    pub pulling: Recipient<Pulling>,
    pub recompute_paths: Recipient<RecomputePaths>,
}

/// What the local API asks of the actors.
#[derive(Clone)]
pub struct Control {
    pub confirm: Recipient<Confirm>,
    pub revert: Recipient<Revert>,
    pub override_: Recipient<Override>,
    /// Per folder, its Puller.
    pub retry: std::collections::HashMap<String, Recipient<RetryNow>>,
}

/// Where Discovery reports what it finds (the Supervisor).
#[derive(Clone)]
pub struct DiscoveryReports {
    pub discovered: Recipient<PeerDiscovered>,
    pub at_address: Recipient<PeerAtAddress>,
    pub vanished: Recipient<PeerVanished>,
}

/// A live connection, as the Pullers see it: where to ask for chunks.
#[derive(Clone)]
pub struct PeerHandle {
    pub fetch: Arc<FetchPort>,
}

impl PeerHandle {
    pub fn connected(&self) -> bool {
        self.fetch.is_open()
    }
}

/// Paths of a folder that may have changed ("" = the whole folder).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LocalChanged {
    pub folder: String,
    pub paths: Vec<String>,
}

/// Files a full scan left because they were modified under a second ago
/// (`core::debounce::settling`): the Watcher takes them as written to, so each comes back as a
/// `LocalChanged` once its writer closes it or it has been quiet for `core::debounce::OPEN_QUIET`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Settling {
    pub folder: String,
    pub paths: Vec<String>,
}

/// The periodic rescan of a folder is due (the Index may space it out: `core::folder`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Rescan {
    pub folder: String,
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

/// Each folder's highest local sequence, as the Index last committed it. A Peer's index sender
/// watches it: a watch holds the latest value, so a sender that starts watching at any moment
/// (before or after a commit) never misses one. (A subscription by message did: a commit that the
/// Index handled before the Peer's `Subscribe` went unannounced until the next change.)
#[derive(Clone, Default)]
pub struct Sequences(Arc<std::collections::HashMap<String, tokio::sync::watch::Sender<u64>>>);

impl Sequences {
    /// Starting from each folder's current highest sequence.
    pub fn new(folders: impl IntoIterator<Item = (String, u64)>) -> Sequences {
        Sequences(Arc::new(folders.into_iter().map(|(f, seq)| (f, tokio::sync::watch::Sender::new(seq))).collect()))
    }

    /// The Index committed records of `folder` up to `max_sequence`.
    pub fn publish(&self, folder: &str, max_sequence: u64) {
        if let Some(tx) = self.0.get(folder) {
            tx.send_replace(max_sequence);
        }
    }

    /// A watch of `folder`'s highest sequence, its current value taken as seen.
    pub fn watch(&self, folder: &str) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.0.get(folder).map(|tx| tx.subscribe())
    }
}

/// Recompute what a folder needs (a peer came or went, or a retry is due).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecomputeNeeds {
    pub folder: String,
}

/// The Puller starts or ends work on a path (`core::folder::Folder::pulling`). While a path is
/// being written, local events on it are held back: hashing it then would only race the Puller's
/// `Applied`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Pulling {
    pub folder: String,
    /// In the order the Puller saw them: the pulls its last step started and ended.
    pub phases: Vec<(String, PullPhase)>,
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
    /// True when this starts a new complete list (earlier items not in it are obsolete): the
    /// first page of a recompute, whose later pages add to it.
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

impl From<Outcome> for crate::core::replica::Applied {
    /// What the Index's rules read of it (`replica::applied`): of the disk state, the mtime and
    /// permissions the disk took.
    fn from(outcome: Outcome) -> Self {
        use crate::core::replica::Applied;
        match outcome {
            Outcome::Took { record, disk } => Applied::Took { record, disk: disk.map(|d| (d.mtime_ns, d.permissions)) },
            Outcome::Reissue { path, other } => Applied::Reissue { path, other },
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Applied {
    pub folder: String,
    /// One pull's, or a whole commit batch's (recorded in one write).
    pub outcomes: Vec<Outcome>,
}

/// A connection ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerDown {
    pub device: DeviceId,
    pub conn: u64,
    /// The peer broke the protocol: redial (and accept it) only after a growing backoff.
    pub violation: bool,
}

/// Try every parked path now (the user asked: space was freed, permissions fixed).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct RetryNow;

/// A device became reachable at these addresses (from static config or mDNS).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerDiscovered {
    pub device: DeviceId,
    pub addresses: Vec<String>,
}

/// A peer known by its address alone (network-key trust: whoever proves the key there).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerAtAddress {
    pub address: String,
}

/// A device is no longer announced at these addresses.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerVanished {
    pub device: DeviceId,
}

/// Close every connection (the node is stopping).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Withdraw the announcement (the node is stopping).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopDiscovery;

/// The user accepts a folder's current state: a new root, or a scan that deletes every file.
#[derive(Message)]
#[rtype(result = "Result<String, String>")]
pub struct Confirm {
    pub folder: String,
}

/// Give a receive-only folder's local changes back to the cluster; answers how many paths.
#[derive(Message)]
#[rtype(result = "Result<usize, String>")]
pub struct Revert {
    pub folder: String,
}

/// Make a send-only folder's state win on every peer; answers how many paths were re-issued.
#[derive(Message)]
#[rtype(result = "Result<usize, String>")]
pub struct Override {
    pub folder: String,
}
