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

/// The cores this process may use, asked once: `available_parallelism` reads the cgroup files on
/// every call (an open and a read each), which cost a tenth of a sender's CPU when every scan
/// batch and every pull asked it (perf, 100,000 new files).
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
