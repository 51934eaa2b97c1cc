//! The actors: thin shells that each own one resource and wire the layers together.
//!
//! | actor      | owns                                   |
//! |------------|----------------------------------------|
//! | Supervisor | the listener, the peer registry, dialing with backoff |
//! | Discovery  | static peers and mDNS announce/browse  |
//! | Watcher    | the notify watchers, debouncing, periodic rescans |
//! | Index      | all writes to the RocksDB index, scans, the pull decisions |
//! | Peer       | one connection's control and data streams |
//! | Puller     | one folder's downloads and temp files  |
//! | VersionCleaner | the schedule of the version stores' cleanup passes |

pub mod directory;
pub mod discovery;
pub mod index;
pub mod messages;
pub mod peer;
pub mod puller;
pub mod status;
pub mod supervisor;
pub mod versions;
pub mod watcher;

/// Milliseconds since the epoch, the floor for new version counters (the only clock the decisions see).
pub fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
