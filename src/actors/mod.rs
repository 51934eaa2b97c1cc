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

pub use crate::fs::now_millis;

/// Hands the allocator's free memory back to the system. Called when a burst of work ends (a full
/// scan, a drained pull queue): glibc keeps what its arenas freed (every thread that hashed or
/// pulled may have one), so a node that indexed or pulled a big tree would otherwise stay at its
/// peak. Costs a walk of the arenas, a few milliseconds.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns unused pages of the malloc heaps to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
