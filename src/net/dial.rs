//! Both ends of a connection's transport: the listener (TCP accept, TLS handshake that refuses
//! strangers, then tonic's HTTP/2 server) and the dialer (TLS client expecting one device ID, then a
//! tonic channel carrying the control and data streams). Under `trust = "network-key"` both run the
//! network-key exchange (`network_key.rs`) between the TLS handshake and the first HTTP/2 byte.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Endpoint, Server};
use tonic::Request;

use super::identity::Identity;
use super::network_key::{NetworkKey, ProofError, SessionBinding};
use super::proto::sync_client::SyncClient;
use super::proto::sync_server::SyncServer;
use super::service::{
    outgoing, Duplex, InboundHalf, InboundStream, Incoming, Paired, SendBudget, SyncService, SEND_BUDGET, STREAM_BUFFER,
};
use super::tls::{client_config, peer_device, server_config, Admit};
use super::{CONN_HEADER, MAX_MESSAGE};
use crate::core::DeviceId;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// What every HTTP/2 client sends first. Checked by the listener itself: tonic would close a
/// connection that starts with anything else without a word, and a trusted peer sending garbage
/// must be logged (with its device ID, known from the handshake) and counted.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A stream whose first bytes were read already (to check them): they are replayed first.
struct Rewind<T> {
    prefix: Vec<u8>,
    at: usize,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Rewind<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Why an inbound connection was refused before gRPC.
enum Refusal {
    Tls(io::Error),
    Key(Option<DeviceId>, ProofError),
    TimedOut,
}

/// Accepts peers until `shutdown` resolves. Streams of authenticated peers go to `inbound`.
/// `admit` decides at the TLS handshake; with `network_key`, the peer must then also prove the key.
pub async fn serve(
    listener: TcpListener,
    identity: &Identity,
    admit: Admit,
    network_key: Option<Arc<NetworkKey>>,
    inbound: mpsc::Sender<InboundStream>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    anyhow::ensure!(
        network_key.is_some() || !matches!(admit, Admit::AnyCertificate),
        "a listener admitting any certificate needs the network key"
    );
    let me = identity.device_id;
    let acceptor = TlsAcceptor::from(Arc::new(server_config(identity, admit)?));
    let (conn_tx, conn_rx) = mpsc::channel(16);
    let refused_tx = inbound.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let handshake_tx = conn_tx.clone();
            let refused_tx = refused_tx.clone();
            let network_key = network_key.clone();
            tokio::spawn(async move {
                let admitted = async {
                    let mut tls = acceptor.accept(tcp).await.map_err(Refusal::Tls)?;
                    if let Some(key) = &network_key {
                        let peer = peer_device(tls.get_ref().1.peer_certificates());
                        let dialer = peer.ok_or(Refusal::Key(None, ProofError::NoProof))?;
                        if dialer == me {
                            return Err(Refusal::Key(peer, ProofError::OwnDevice));
                        }
                        let binding =
                            SessionBinding::of(tls.get_ref().1, dialer, me).map_err(|e| Refusal::Key(peer, e))?;
                        key.listener_exchange(&mut tls, &binding).await.map_err(|e| Refusal::Key(peer, e))?;
                    }
                    Ok(tls)
                };
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, admitted).await.unwrap_or(Err(Refusal::TimedOut)) {
                    Ok(mut tls) => {
                        let device = peer_device(tls.get_ref().1.peer_certificates());
                        let mut preface = [0u8; 24];
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.read_exact(&mut preface)).await {
                            Ok(Ok(_)) if &preface == H2_PREFACE => {
                                let _ = handshake_tx
                                    .send(Ok::<_, io::Error>(Rewind { prefix: preface.to_vec(), at: 0, inner: tls }))
                                    .await;
                            }
                            Ok(Ok(_)) => {
                                let reason = "garbage after the TLS handshake (not HTTP/2)".to_string();
                                tracing::warn!(peer = ?device.map(|d| d.prefix()), from = %addr, reason, "protocol violation; connection closed");
                                if let Some(device) = device {
                                    let _ = refused_tx
                                        .send(InboundStream {
                                            device,
                                            conn: 0,
                                            address: Some(addr),
                                            half: InboundHalf::Refused(reason),
                                        })
                                        .await;
                                }
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(peer = ?device.map(|d| d.prefix()), from = %addr, error = %e, "connection closed right after the TLS handshake")
                            }
                            Err(_) => {
                                tracing::warn!(peer = ?device.map(|d| d.prefix()), from = %addr, "nothing sent after the TLS handshake; connection closed")
                            }
                        }
                    }
                    Err(Refusal::Tls(e)) => {
                        tracing::warn!(from = %addr, error = %e, "refused connection at the TLS handshake")
                    }
                    Err(Refusal::TimedOut) => tracing::warn!(from = %addr, "TLS handshake timed out"),
                    Err(Refusal::Key(peer, e)) => {
                        // Once per device: a peer with the wrong key redials with backoff forever.
                        let device = peer.map(|d| d.to_string()).unwrap_or_default();
                        let first = network_key.as_ref().is_some_and(|k| k.first_refusal(&format!("in {device}")));
                        if matches!(e, ProofError::OwnDevice) {
                            tracing::debug!(from = %addr, "refused a connection from this node itself");
                        } else if first {
                            tracing::warn!(from = %addr, device = %device, error = %e, "refused peer: no valid network-key proof");
                        } else {
                            tracing::debug!(from = %addr, device = %device, error = %e, "refused peer: no valid network-key proof");
                        }
                    }
                }
            });
            if conn_tx.is_closed() {
                break;
            }
        }
    });
    let service = SyncServer::new(SyncService { inbound })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .add_service(service)
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), shutdown)
        .await
        .context("peer listener failed")
}

/// An outbound connection's two streams.
pub struct Outbound {
    pub device: DeviceId,
    pub conn: u64,
    pub address: SocketAddr,
    pub control: Duplex<super::proto::ControlMessage>,
    pub data: Duplex<super::proto::DataMessage>,
}

impl From<Outbound> for Paired {
    fn from(out: Outbound) -> Paired {
        Paired { device: out.device, conn: out.conn, address: Some(out.address), control: out.control, data: out.data }
    }
}

/// A dial reached this node itself (its own address is among its peers' addresses).
#[derive(Debug, thiserror::Error)]
#[error("{0} is this node's own address")]
pub struct OwnAddress(pub String);

/// Dials `device` at every known address in turn until one answers (mDNS lists IPv4 first, so one
/// the peer does not listen on, say its IPv6 link-local one, costs a refused connection, not a
/// backoff); fails with the errors of all of them.
pub async fn dial_any(
    identity: &Identity,
    device: DeviceId,
    addresses: &[String],
    network_key: Option<Arc<NetworkKey>>,
) -> Result<Outbound, String> {
    let mut errors = Vec::new();
    for address in addresses {
        match dial(identity, Some(device), address, network_key.clone()).await {
            Ok(out) => return Ok(out),
            Err(e) => errors.push(format!("{address}: {e:#}")),
        }
    }
    Err(errors.join("; "))
}

/// Dials `address`, expecting the certificate of `device`; anything else fails the handshake.
/// With `network_key`, the peer must also prove the key, and `device` may be `None`: whoever
/// answers there with the key is admitted, and `Outbound::device` says who that was.
pub async fn dial(
    identity: &Identity,
    device: Option<DeviceId>,
    address: &str,
    network_key: Option<Arc<NetworkKey>>,
) -> Result<Outbound> {
    let admit = match device {
        Some(d) => Admit::Device(d),
        None if network_key.is_some() => Admit::AnyCertificate,
        None => anyhow::bail!("dialing {address} without a device ID needs trust = \"network-key\""),
    };
    let config = Arc::new(client_config(identity, admit)?);
    let socket: SocketAddr =
        tokio::net::lookup_host(address).await?.next().with_context(|| format!("{address} does not resolve"))?;
    let me = identity.device_id;
    // The connector learns whom it reached (from the certificate) for a dial without a device ID.
    let reached = Arc::new(std::sync::Mutex::new(device));
    let reached_by_connector = reached.clone();
    let address_text = address.to_string();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let config = config.clone();
        let network_key = network_key.clone();
        let reached = reached_by_connector.clone();
        let address = address_text.clone();
        async move {
            let tcp = TcpStream::connect(socket).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("syncnode").map_err(io::Error::other)?;
            let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
            let peer = peer_device(tls.get_ref().1.peer_certificates())
                .ok_or_else(|| io::Error::other("the peer sent no certificate"))?;
            if let Some(key) = &network_key {
                if peer == me {
                    *reached.lock().expect("reached lock") = Some(me);
                    return Err(io::Error::other(ProofError::OwnDevice));
                }
                let proved = match SessionBinding::of(tls.get_ref().1, me, peer) {
                    Ok(binding) => key.dialer_exchange(&mut tls, &binding).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = proved {
                    // Once per address and device; the Supervisor redials with backoff.
                    if key.first_refusal(&format!("out {address} {peer}")) {
                        tracing::warn!(address = %address, device = %peer, error = %e, "network-key exchange failed; not connecting");
                    }
                    return Err(io::Error::other(e));
                }
            }
            *reached.lock().expect("reached lock") = Some(peer);
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    });
    let channel = Endpoint::from_shared(format!("http://{socket}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .connect_with_connector(connector)
        .await;
    let channel = match channel {
        Err(_) if device.is_none() && *reached.lock().expect("reached lock") == Some(me) => {
            return Err(OwnAddress(address.to_string()).into())
        }
        other => other.with_context(|| format!("cannot connect to {address}"))?,
    };
    let mut client =
        SyncClient::new(channel).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE);
    let conn: u64 = rand::random();
    let (ctl_tx, ctl_out) = mpsc::channel(STREAM_BUFFER);
    let ctl_budget = SendBudget::new(SEND_BUDGET);
    let mut request = Request::new(outgoing(ctl_out, ctl_budget.clone()));
    request.metadata_mut().insert(CONN_HEADER, conn.to_string().parse()?);
    let ctl_in: Incoming<_> = Box::pin(client.control(request).await?.into_inner());
    let (data_tx, data_out) = mpsc::channel(STREAM_BUFFER);
    let data_budget = SendBudget::new(SEND_BUDGET);
    let mut request = Request::new(outgoing(data_out, data_budget.clone()));
    request.metadata_mut().insert(CONN_HEADER, conn.to_string().parse()?);
    let data_in: Incoming<_> = Box::pin(client.data(request).await?.into_inner());
    let device = reached.lock().expect("reached lock").context("connected without learning the peer's device")?;
    Ok(Outbound {
        device,
        conn,
        address: socket,
        control: Duplex { tx: ctl_tx, rx: ctl_in, budget: ctl_budget },
        data: Duplex { tx: data_tx, rx: data_in, budget: data_budget },
    })
}
