//! Both ends of a connection's transport: the listener (TCP accept, TLS handshake that refuses
//! strangers, then tonic's HTTP/2 server) and the dialer (TLS client expecting one device ID, then a
//! tonic channel carrying the control and data streams).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Endpoint, Server};
use tonic::Request;

use super::identity::Identity;
use super::proto::sync_client::SyncClient;
use super::proto::sync_server::SyncServer;
use super::service::{Duplex, Incoming, InboundStream, SyncService, STREAM_BUFFER};
use super::tls::{client_config, server_config, TrustedDevices};
use super::{CONN_HEADER, MAX_MESSAGE};
use crate::core::DeviceId;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts peers until `shutdown` resolves. Streams of authenticated peers go to `inbound`.
pub async fn serve(
    listener: TcpListener,
    identity: &Identity,
    trusted: TrustedDevices,
    inbound: mpsc::Sender<InboundStream>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(identity, trusted)?));
    let (conn_tx, conn_rx) = mpsc::channel(16);
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
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = handshake_tx.send(Ok::<_, io::Error>(tls)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(from = %addr, error = %e, "refused connection at the TLS handshake"),
                    Err(_) => tracing::warn!(from = %addr, "TLS handshake timed out"),
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

/// Dials `address`, expecting the certificate of `device`; anything else fails the handshake.
pub async fn dial(identity: &Identity, device: DeviceId, address: &str) -> Result<Outbound> {
    let config = Arc::new(client_config(identity, device)?);
    let socket: SocketAddr = tokio::net::lookup_host(address).await?.next().with_context(|| format!("{address} does not resolve"))?;
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let config = config.clone();
        async move {
            let tcp = TcpStream::connect(socket).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("syncnode").map_err(io::Error::other)?;
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
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
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    let mut client = SyncClient::new(channel).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE);
    let conn: u64 = rand::random();
    let (ctl_tx, ctl_out) = mpsc::channel(STREAM_BUFFER);
    let mut request = Request::new(ReceiverStream::new(ctl_out));
    request.metadata_mut().insert(CONN_HEADER, conn.to_string().parse()?);
    let ctl_in: Incoming<_> = Box::pin(client.control(request).await?.into_inner());
    let (data_tx, data_out) = mpsc::channel(STREAM_BUFFER);
    let mut request = Request::new(ReceiverStream::new(data_out));
    request.metadata_mut().insert(CONN_HEADER, conn.to_string().parse()?);
    let data_in: Incoming<_> = Box::pin(client.data(request).await?.into_inner());
    Ok(Outbound {
        device,
        conn,
        address: socket,
        control: Duplex { tx: ctl_tx, rx: ctl_in },
        data: Duplex { tx: data_tx, rx: data_in },
    })
}
