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
