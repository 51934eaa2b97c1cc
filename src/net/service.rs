//! The gRPC service a node serves to its peers. It only authenticates and hands each inbound
//! stream, tagged with the peer's device ID (from its TLS certificate) and the connection id, to
//! whoever owns connections (the Supervisor actor); the protocol itself lives in the Peer actor.

use std::net::SocketAddr;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::proto::sync_server::Sync;
use super::proto::{ControlMessage, DataMessage};
use super::tls::peer_device;
use super::CONN_HEADER;
use crate::core::DeviceId;

pub type Incoming<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One direction pair of a stream: what we send, and what the peer sends us.
pub struct Duplex<T> {
    pub tx: mpsc::Sender<T>,
    pub rx: Incoming<T>,
}

pub enum InboundHalf {
    Control(Duplex<ControlMessage>),
    Data(Duplex<DataMessage>),
}

/// A stream a peer opened to us.
pub struct InboundStream {
    pub device: DeviceId,
    pub conn: u64,
    pub address: Option<SocketAddr>,
    pub half: InboundHalf,
}

pub struct SyncService {
    pub inbound: mpsc::Sender<InboundStream>,
}

pub const STREAM_BUFFER: usize = 64;

fn identify<T>(request: &Request<T>) -> Result<(DeviceId, u64, Option<SocketAddr>), Status> {
    let certs = request.peer_certs();
    let device = peer_device(certs.as_deref().map(|v| v.as_slice())).ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let conn = request
        .metadata()
        .get(CONN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| Status::invalid_argument("missing connection id"))?;
    Ok((device, conn, request.remote_addr()))
}

impl SyncService {
    async fn accept<T: Send + 'static>(
        &self,
        request: Request<Streaming<T>>,
        wrap: fn(Duplex<T>) -> InboundHalf,
    ) -> Result<Response<Incoming<T>>, Status> {
        let (device, conn, address) = identify(&request)?;
        let (tx, out) = mpsc::channel(STREAM_BUFFER);
        let rx: Incoming<T> = Box::pin(request.into_inner());
        let half = wrap(Duplex { tx, rx });
        self.inbound
            .send(InboundStream { device, conn, address, half })
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        let outgoing: Incoming<T> = Box::pin(ReceiverStream::new(out).map(Ok));
        Ok(Response::new(outgoing))
    }
}

#[tonic::async_trait]
impl Sync for SyncService {
    type ControlStream = Incoming<ControlMessage>;
    type DataStream = Incoming<DataMessage>;

    async fn control(&self, request: Request<Streaming<ControlMessage>>) -> Result<Response<Self::ControlStream>, Status> {
        self.accept(request, InboundHalf::Control).await
    }

    async fn data(&self, request: Request<Streaming<DataMessage>>) -> Result<Response<Self::DataStream>, Status> {
        self.accept(request, InboundHalf::Data).await
    }
}
