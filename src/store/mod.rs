//! The index in RocksDB: what this node has (by path and by sequence), what each peer announced,
//! where every chunk lives on disk, and how far each peer has read our index.

pub mod changes;
pub mod children;
pub mod index;
mod keys;

pub use index::{ChunkLocation, FolderMeta, IndexMemory, NeedKey, Progress, Store};
