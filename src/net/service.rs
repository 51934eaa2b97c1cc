//! The gRPC service a node serves to its peers. It only authenticates and hands each inbound
//! stream, tagged with the peer's device ID (from its TLS certificate) and the connection id, to
//! whoever owns connections (the Supervisor actor); the protocol itself lives in the Peer actor.
//!
//! It also holds the memory bound of serving: each stream carries a [`SendBudget`], the bytes of
//! chunk data that may be read for the peer or queued for it at once. The Peer actor takes a
//! request's size from it before reading; the bytes come back as the transport takes each
//! response off the queue, so a peer that never reads its answers stalls only itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::proto::sync_server::Sync;
use super::proto::{data_message, ControlMessage, DataMessage};
use super::tls::peer_device;
use super::CONN_HEADER;
use crate::core::DeviceId;

pub type Incoming<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Bytes of chunk data being read for one peer or queued for it (per connection), at most
/// [`SEND_BUDGET`]. Requests beyond it wait for earlier answers to leave.
#[derive(Debug, Clone)]
pub struct SendBudget(Arc<Semaphore>);

/// Every peer connection's serving budget: two of the largest chunks, or 512 average ones.
pub const SEND_BUDGET: u32 = 32 << 20;

impl SendBudget {
    pub fn new(bytes: u32) -> Self {
        SendBudget(Arc::new(Semaphore::new(bytes as usize)))
    }

    /// Waits until `bytes` are free and takes them; they come back with [`SendBudget::give`]
    /// (the outgoing stream gives back what it sends).
    pub async fn take(&self, bytes: u32) -> Result<(), tokio::sync::AcquireError> {
        self.0.acquire_many(bytes).await?.forget();
        Ok(())
    }

    pub fn give(&self, bytes: usize) {
        if bytes > 0 {
            self.0.add_permits(bytes);
        }
    }

    /// Ends the budget with its connection: requests still waiting for it give up.
    pub fn close(&self) {
        self.0.close();
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// What a queued outgoing message holds of a [`SendBudget`]: the chunk data of a response.
pub trait Budgeted {
    fn budgeted(&self) -> usize;
}

impl Budgeted for ControlMessage {
    fn budgeted(&self) -> usize {
        0
    }
}

impl Budgeted for DataMessage {
    fn budgeted(&self) -> usize {
        match &self.kind {
            Some(data_message::Kind::Response(r)) => r.data.len(),
            _ => 0,
        }
    }
}

/// The stream the transport sends from: each message gives its bytes back to `budget` as the
/// transport takes it.
pub fn outgoing<T: Budgeted + Send + 'static>(
    out: mpsc::Receiver<T>,
    budget: SendBudget,
) -> impl Stream<Item = T> + Send + 'static {
    ReceiverStream::new(out).map(move |m| {
        budget.give(m.budgeted());
        m
    })
}

/// One direction pair of a stream: what we send, and what the peer sends us; and the budget of
/// what we send (see [`SendBudget`]).
pub struct Duplex<T> {
    pub tx: mpsc::Sender<T>,
    pub rx: Incoming<T>,
    pub budget: SendBudget,
}

pub enum InboundHalf {
    Control(Duplex<ControlMessage>),
    Data(Duplex<DataMessage>),
    /// The peer authenticated, then broke the protocol before any stream (garbage where HTTP/2
    /// should start): the listener logged it and closed the connection; counted against the peer.
    Refused(String),
}

/// A stream a peer opened to us.
pub struct InboundStream {
    pub device: DeviceId,
    pub conn: u64,
    pub address: Option<SocketAddr>,
    pub half: InboundHalf,
}

/// The two streams of each inbound connection, paired as they arrive.
#[derive(Default)]
pub struct Pairing(HashMap<(DeviceId, u64), Halves>);

#[derive(Default)]
struct Halves {
    control: Option<Duplex<ControlMessage>>,
    data: Option<Duplex<DataMessage>>,
    address: Option<SocketAddr>,
    since: Option<Instant>,
}

/// Both streams of an inbound connection.
pub struct Paired {
    pub device: DeviceId,
    pub conn: u64,
    pub address: Option<SocketAddr>,
    pub control: Duplex<ControlMessage>,
    pub data: Duplex<DataMessage>,
}

impl Pairing {
    /// One stream arrived at `now` (a refused one is not a stream: ignored); with its other
    /// stream already here, the connection is whole.
    pub fn add(&mut self, stream: InboundStream, now: Instant) -> Option<Paired> {
        if let InboundHalf::Refused(_) = stream.half {
            return None;
        }
        let key = (stream.device, stream.conn);
        let halves = self.0.entry(key).or_default();
        halves.address = halves.address.or(stream.address);
        halves.since.get_or_insert(now);
        match stream.half {
            InboundHalf::Control(d) => halves.control = Some(d),
            InboundHalf::Data(d) => halves.data = Some(d),
            InboundHalf::Refused(_) => unreachable!("returned above"),
        }
        if halves.control.is_none() || halves.data.is_none() {
            return None;
        }
        let h = self.0.remove(&key).expect("present");
        let (device, conn) = key;
        let (control, data) = (h.control.expect("control"), h.data.expect("data"));
        Some(Paired { device, conn, address: h.address, control, data })
    }

    /// Drops the half-open connections whose second stream has not come `wait` after the first.
    pub fn expire(&mut self, now: Instant, wait: Duration) {
        self.0.retain(|_, h| h.since.is_none_or(|t| now.saturating_duration_since(t) < wait));
    }
}

pub struct SyncService {
    pub inbound: mpsc::Sender<InboundStream>,
}

pub const STREAM_BUFFER: usize = 64;

/// Whether a stream error means the peer sent what the protocol does not allow (a message that
/// does not decode, or one over the size limit) rather than the connection failing.
pub fn is_garbage(status: &Status) -> bool {
    let message = status.message();
    status.code() == tonic::Code::OutOfRange
        || (status.code() == tonic::Code::Internal
            && (message.starts_with("failed to decode") || message.starts_with("protocol error")))
}

fn identify<T>(request: &Request<T>) -> Result<(DeviceId, u64, Option<SocketAddr>), Status> {
    let certs = request.peer_certs();
    let device = peer_device(certs.as_deref().map(|v| v.as_slice()))
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let conn = request
        .metadata()
        .get(CONN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| Status::invalid_argument("missing connection id"))?;
    Ok((device, conn, request.remote_addr()))
}

impl SyncService {
    async fn accept<T: Budgeted + Send + 'static>(
        &self,
        request: Request<Streaming<T>>,
        wrap: fn(Duplex<T>) -> InboundHalf,
    ) -> Result<Response<Incoming<T>>, Status> {
        let (device, conn, address) = identify(&request)?;
        let (tx, out) = mpsc::channel(STREAM_BUFFER);
        let rx: Incoming<T> = Box::pin(request.into_inner());
        let budget = SendBudget::new(SEND_BUDGET);
        let half = wrap(Duplex { tx, rx, budget: budget.clone() });
        self.inbound
            .send(InboundStream { device, conn, address, half })
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        let outgoing: Incoming<T> = Box::pin(outgoing(out, budget).map(Ok));
        Ok(Response::new(outgoing))
    }
}

#[tonic::async_trait]
impl Sync for SyncService {
    type ControlStream = Incoming<ControlMessage>;
    type DataStream = Incoming<DataMessage>;

    async fn control(
        &self,
        request: Request<Streaming<ControlMessage>>,
    ) -> Result<Response<Self::ControlStream>, Status> {
        self.accept(request, InboundHalf::Control).await
    }

    async fn data(&self, request: Request<Streaming<DataMessage>>) -> Result<Response<Self::DataStream>, Status> {
        self.accept(request, InboundHalf::Data).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::proto::ChunkResponse;

    fn response(len: usize) -> DataMessage {
        DataMessage {
            kind: Some(data_message::Kind::Response(ChunkResponse { id: 1, data: vec![0; len], ..Default::default() })),
        }
    }

    #[tokio::test]
    async fn the_budget_comes_back_as_the_transport_takes_answers_and_waiters_give_up_when_it_closes() {
        let budget = SendBudget::new(100);
        let (tx, rx) = mpsc::channel(8);
        let mut stream = Box::pin(outgoing(rx, budget.clone()));
        budget.take(100).await.unwrap();
        tx.send(response(100)).await.unwrap();
        // Nothing is free until the transport takes the answer off the queue.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.take(60).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(budget.available(), 0);
        stream.next().await.unwrap();
        assert!(waiting.await.unwrap().is_ok());
        assert_eq!(budget.available(), 40);
        // A closed budget (its connection ended) turns every waiter away.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.take(60).await }
        });
        tokio::task::yield_now().await;
        budget.close();
        assert!(waiting.await.unwrap().is_err());
    }
}
