//! syncnode: a peer-to-peer folder synchronization daemon.
//!
//! Layers, each knowing only the ones above it in this list:
//! - [`core`]: records, version vectors, path rules and the decisions (no I/O);
//! - [`store`]: the RocksDB index;
//! - [`fs`]: scanning, chunking, watching support and safe application of remote versions;
//! - [`net`]: the protocol, TLS identities, the gRPC service and dialer;
//! - [`actors`]: the actix actors wiring it all together;
//! - [`api`], [`status`], [`versions`]: the local HTTP API, `syncnode status` and `syncnode versions`;
//! - [`config`], [`cli`], [`node`]: settings, the command line, and running a node.

pub mod actors;
pub mod api;
pub mod cli;
pub mod config;
pub mod core;
pub mod fs;
pub mod net;
pub mod node;
pub mod oneway;
pub mod status;
pub mod store;
pub mod versions;
