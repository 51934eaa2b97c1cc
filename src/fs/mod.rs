//! The filesystem side: chunking and hashing files, scanning folders into records, watching for
//! changes, and applying remote versions safely (temp file, verify, fsync, rename). Nothing a peer
//! sends reaches the disk without passing `safe_path`.

pub mod apply;
pub mod chunker;
pub mod ignore;
pub mod reuse;
pub mod root;
pub mod safe_path;
pub mod scan;
pub mod versions;

/// Disk work on at most this many bytes (a small file's temp file and lookups, a chunk's write or
/// read) is done on the async task that needs it: the trip to a blocking thread and back costs two
/// thread switches, more than the work itself, and was most of what a small file cost on 2 cores.
/// Anything larger goes to a blocking thread, where a slow disk cannot hold up the runtime.
pub const INLINE_IO: u64 = 64 << 10;

/// The wall clock, in milliseconds since the epoch: the floor of new version counters (the only
/// clock the decisions see) and the times in the version store's names.
pub fn now_millis() -> u64 {
    since_epoch().as_millis() as u64
}

/// The wall clock, in nanoseconds since the epoch: the unit of file mtimes.
pub fn now_ns() -> i64 {
    i64::try_from(since_epoch().as_nanos()).unwrap_or(i64::MAX)
}

fn since_epoch() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// The cores this process may use, asked once: `available_parallelism` reads the cgroup files on
/// every call (an open and a read each), which cost a tenth of a sender's CPU when every scan
/// batch and every pull asked it (perf, 100,000 new files).
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
