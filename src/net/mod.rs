//! The network side: the generated protocol, conversions between wire messages and core records
//! (with every field checked), the TLS identity and verifiers, and the gRPC service and dialer.

pub mod codec;
pub mod counters;
#[cfg(feature = "node")]
pub mod data;
pub mod dial;
pub mod encoding;
pub mod fetch;
pub mod identity;
pub mod mdns;
pub mod network_key;
#[cfg(feature = "node")]
pub mod serve;
pub mod service;
pub mod tls;
pub mod wire;

#[allow(clippy::all)]
pub mod proto {
    tonic::include_proto!("syncnode.v1");
}

pub const PROTOCOL_VERSION: u32 = 1;
/// Largest gRPC message either side accepts (a 16 MiB chunk, the largest FastCDC allows, plus framing).
pub const MAX_MESSAGE: usize = 17 * 1024 * 1024;
/// Metadata key pairing a connection's control and data streams.
pub const CONN_HEADER: &str = "x-syncnode-conn";
