//! syncnode: a peer-to-peer folder synchronization daemon.
//!
//! Layers, each knowing only the ones above it in this list:
//! - [`core`]: records, version vectors, path rules and the decisions (no I/O);
//! - [`store`]: the RocksDB index;
//! - [`fs`]: scanning, chunking, watching support and safe application of remote versions;
//! - [`net`]: the protocol, TLS identities, the gRPC service and dialer;
//! - [`actors`]: the actix actors wiring it all together, and beside them [`pull`]: the I/O of one
//!   pull (fetch, verify, apply) for the Puller, and [`index`]: the Index's store views and scans;
//! - [`api`], [`status`], [`versions`]: the local HTTP API, `syncnode status` and `syncnode versions`;
//! - [`config`], [`cli`], [`node`]: settings, the command line, and running a node.
//!
//! Without the default feature `node` only [`core`], [`fs`], [`net`] and [`config`] are built: no
//! RocksDB, no actors. The fuzz targets (fuzz/) use that, since RocksDB's C++ takes 25 minutes to
//! compile per set of compiler flags.

#[cfg(feature = "node")]
pub mod actors;
#[cfg(feature = "node")]
pub mod api;
#[cfg(feature = "node")]
pub mod cli;
pub mod config;
pub mod core;
pub mod fs;
#[cfg(feature = "node")]
pub mod index;
pub mod net;
#[cfg(feature = "node")]
pub mod node;
#[cfg(feature = "node")]
pub mod oneway;
#[cfg(feature = "node")]
pub mod pull;
#[cfg(feature = "node")]
pub mod status;
#[cfg(feature = "node")]
pub mod store;
#[cfg(feature = "node")]
pub mod versions;
