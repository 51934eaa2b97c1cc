//! A hostile trusted peer for tests. It holds its own TLS identity (which the node under test is
//! told to trust), dials the node with syncnode's own dialer (gRPC over mutual TLS, the real
//! protocol of `proto/syncnode.proto`), and then sends whatever a test asks, valid or not: records,
//! edit scripts, chunk requests, garbage. It can answer the node's chunk requests, or never read
//! the node's answers at all. Plus what such tests measure: the node's peak RSS and its /metrics.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use syncnode::core::DeviceId;
use syncnode::net::dial::dial;
use syncnode::net::identity::Identity;
use syncnode::net::proto::{self, control_message, data_message, ControlMessage, DataMessage};
use syncnode::net::service::Incoming;
use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use crate::common::{wait_until, Node};

/// The index id the hostile peer announces its records under.
pub const INDEX_ID: u64 = 0x5eed;

pub struct HostilePeer {
    pub identity: Identity,
    pub device_id: String,
    rt: Runtime,
    _dir: tempfile::TempDir,
}

/// What the node sent on the control stream.
#[derive(Debug)]
pub enum Event {
    Index(proto::IndexUpdate),
    Close(String),
    /// The stream ended (with the error, if any).
    Ended(String),
}

/// One connection of the hostile peer to a node.
pub struct Conn<'a> {
    peer: &'a HostilePeer,
    control: mpsc::Sender<ControlMessage>,
    data: mpsc::Sender<DataMessage>,
    data_rx: Option<Incoming<DataMessage>>,
    events: std_mpsc::Receiver<Event>,
    responses: Option<std_mpsc::Receiver<proto::ChunkResponse>>,
    /// Everything the node announced so far, by path (the newest record of each).
    pub announced: HashMap<String, proto::FileInfo>,
    pub closed: Option<String>,
}

impl HostilePeer {
    /// Waits until `node` has taken this peer's Hello: its status shows the peer connected, under
    /// the name [`Conn::hello`] gives.
    pub fn hello_taken(&self, node: &Node, timeout: Duration) -> bool {
        wait_until(timeout, || {
            node.peer_status(&self.device_id).is_some_and(|p| p["connected"] == true && p["name"] == "hostile")
        })
    }

    pub fn new() -> HostilePeer {
        let dir = tempfile::Builder::new().prefix("syncnode-hostile-").tempdir().unwrap();
        let identity = Identity::load_or_create(dir.path()).unwrap();
        let device_id = identity.device_id.to_string();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        HostilePeer { identity, device_id, rt, _dir: dir }
    }

    /// Dials `node` as a trusted peer (it must list our device ID), with syncnode's dialer.
    pub fn connect(&self, node: &Node) -> Conn<'_> {
        let device: DeviceId = node.device_id.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let out = loop {
            match self.rt.block_on(dial(&self.identity, Some(device), &node.address(), None)) {
                Ok(out) => break out,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot dial {}: {e:#}", node.name),
            }
        };
        let (events_tx, events) = std_mpsc::channel();
        let mut control_rx = out.control.rx;
        self.rt.spawn(async move {
            while let Some(item) = control_rx.next().await {
                let event = match item {
                    Ok(ControlMessage { kind: Some(control_message::Kind::Index(u)) }) => Event::Index(u),
                    Ok(ControlMessage { kind: Some(control_message::Kind::Close(c)) }) => Event::Close(c.reason),
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = events_tx.send(Event::Ended(e.message().to_string()));
                        return;
                    }
                };
                if events_tx.send(event).is_err() {
                    return;
                }
            }
            let _ = events_tx.send(Event::Ended(String::new()));
        });
        Conn {
            peer: self,
            control: out.control.tx,
            data: out.data.tx,
            data_rx: Some(out.data.rx),
            events,
            responses: None,
            announced: HashMap::new(),
            closed: None,
        }
    }

    /// Completes a TLS handshake with `node` (a trusted identity), then sends raw bytes where
    /// HTTP/2 should start.
    pub fn send_garbage(&self, node: &Node, garbage: &[u8]) {
        let device: DeviceId = node.device_id.parse().unwrap();
        let config = std::sync::Arc::new(
            syncnode::net::tls::client_config(&self.identity, syncnode::net::tls::Admit::Device(device)).unwrap(),
        );
        let address = node.address();
        let garbage = garbage.to_vec();
        self.rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("syncnode").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
            tls.write_all(&garbage).await.unwrap();
            tls.flush().await.unwrap();
            // Wait for the node to hang up (or give up after a while).
            let mut buf = [0u8; 64];
            let _ =
                tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read(&mut tls, &mut buf)).await;
        });
    }
}

impl Conn<'_> {
    /// Sends on the control stream; a connection the node closed already just drops it (tests
    /// look at how the node ended it with [`Conn::wait_closed`]).
    fn send_control(&self, kind: control_message::Kind) {
        let tx = self.control.clone();
        let _ = self.peer.rt.block_on(async move { tx.send(ControlMessage { kind: Some(kind) }).await });
    }

    /// Our Hello, as `hostile`: we share folder `default` and have read nothing of the node's index.
    pub fn hello(&self) {
        let folders = vec![proto::FolderOffer {
            id: "default".into(),
            your_index_id: 0,
            your_max_sequence: 0,
            receive_only: false,
        }];
        self.send_control(control_message::Kind::Hello(proto::Hello {
            protocol_version: syncnode::net::PROTOCOL_VERSION,
            device_name: "hostile".into(),
            folders,
        }));
    }

    pub fn send_index(&self, files: Vec<proto::FileInfo>) {
        self.send_control(control_message::Kind::Index(proto::IndexUpdate {
            folder: "default".into(),
            index_id: INDEX_ID,
            files,
        }));
    }

    pub fn send_raw_control(&self, msg: ControlMessage) {
        let tx = self.control.clone();
        let _ = self.peer.rt.block_on(async move { tx.send(msg).await });
    }

    pub fn request(&self, request: proto::ChunkRequest) {
        let tx = self.data.clone();
        let _ = self
            .peer
            .rt
            .block_on(async move { tx.send(DataMessage { kind: Some(data_message::Kind::Request(request)) }).await });
    }

    /// Reads the node's data stream from now on: its chunk requests are answered from `chunks`
    /// (by hash; unknown ones get an error), its answers to ours are kept for [`Conn::response`].
    pub fn serve(&mut self, chunks: HashMap<[u8; 32], Vec<u8>>) {
        let mut rx = self.data_rx.take().expect("data stream already taken");
        let tx = self.data.clone();
        let (responses_tx, responses) = std_mpsc::channel();
        self.responses = Some(responses);
        self.peer.rt.spawn(async move {
            while let Some(Ok(msg)) = rx.next().await {
                match msg.kind {
                    Some(data_message::Kind::Request(r)) => {
                        let hash: [u8; 32] = r.hash.as_slice().try_into().unwrap_or([0; 32]);
                        let response = match chunks.get(&hash) {
                            Some(data) => proto::ChunkResponse {
                                id: r.id,
                                data: data.clone(),
                                encoding: proto::Encoding::Raw as i32,
                                ..Default::default()
                            },
                            None => proto::ChunkResponse {
                                id: r.id,
                                code: proto::ChunkError::NoSuchChunk as i32,
                                error: "no such chunk".into(),
                                ..Default::default()
                            },
                        };
                        if tx.send(DataMessage { kind: Some(data_message::Kind::Response(response)) }).await.is_err() {
                            return;
                        }
                    }
                    Some(data_message::Kind::Response(r)) => {
                        let _ = responses_tx.send(r);
                    }
                    None => {}
                }
            }
        });
    }

    /// Reads the node's data stream from now on and answers none of its chunk requests as asked:
    /// those with an odd id get a refusal, those with an even id no answer at all (the node's
    /// fetch waits until its timeout). The requests seen are counted in the returned counter.
    pub fn stonewall(&mut self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        let mut rx = self.data_rx.take().expect("data stream already taken");
        let tx = self.data.clone();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = seen.clone();
        self.peer.rt.spawn(async move {
            while let Some(Ok(msg)) = rx.next().await {
                if let Some(data_message::Kind::Request(r)) = msg.kind {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if r.id % 2 == 1 {
                        let refusal = proto::ChunkResponse {
                            id: r.id,
                            code: proto::ChunkError::Busy as i32,
                            error: "not now".into(),
                            ..Default::default()
                        };
                        if tx.send(DataMessage { kind: Some(data_message::Kind::Response(refusal)) }).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        seen
    }

    /// Pings the node every `every` from now on, so that a peer that sends nothing else is not
    /// taken for gone.
    pub fn keepalive(&self, every: Duration) {
        let tx = self.control.clone();
        self.peer.rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let ping = ControlMessage { kind: Some(control_message::Kind::Ping(proto::Ping { nonce: 1 })) };
                if tx.send(ping).await.is_err() {
                    return;
                }
            }
        });
    }

    /// The node's answer to one of our chunk requests (needs [`Conn::serve`]).
    pub fn response(&self, timeout: Duration) -> Option<proto::ChunkResponse> {
        self.responses.as_ref().expect("call serve first").recv_timeout(timeout).ok()
    }

    /// Takes in what the node sent on the control stream, for up to `timeout` or until `until`
    /// holds. Returns whether it held.
    pub fn pump(&mut self, timeout: Duration, mut until: impl FnMut(&Conn) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if until(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.events.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(Event::Index(u)) => {
                    for f in u.files {
                        self.announced.insert(f.path.clone(), f);
                    }
                }
                Ok(Event::Close(reason)) => self.closed = Some(reason),
                Ok(Event::Ended(e)) => {
                    if self.closed.is_none() {
                        self.closed = Some(format!("stream ended: {e}"));
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    if self.closed.is_none() {
                        self.closed = Some("stream ended".into());
                    }
                    std::thread::sleep(left.min(Duration::from_millis(50)));
                }
            }
        }
    }

    /// Waits for the node to close the connection; its reason.
    pub fn wait_closed(&mut self, timeout: Duration) -> Option<String> {
        self.pump(timeout, |c| c.closed.is_some());
        self.closed.clone()
    }
}

/// A file record as a peer would announce it, cut into fixed chunks of `chunk` bytes, with the
/// chunks' data by hash (to answer the node's requests).
pub fn file_record(
    path: &str,
    data: &[u8],
    chunk: usize,
    version: &[(u64, u64)],
    sequence: u64,
    permissions: u32,
) -> (proto::FileInfo, HashMap<[u8; 32], Vec<u8>>) {
    let mut chunks = Vec::new();
    let mut by_hash = HashMap::new();
    for (i, piece) in data.chunks(chunk.max(1)).enumerate() {
        let hash = *blake3::hash(piece).as_bytes();
        chunks.push(proto::Chunk { offset: (i * chunk) as u64, size: piece.len() as u32, hash: hash.to_vec() });
        by_hash.insert(hash, piece.to_vec());
    }
    let info = proto::FileInfo {
        path: path.into(),
        kind: proto::FileKind::File as i32,
        size: data.len() as u64,
        mtime_ns: 1_700_000_000_000_000_000,
        permissions,
        version: Some(proto::Vector {
            counters: version.iter().map(|(id, value)| proto::Counter { id: *id, value: *value }).collect(),
        }),
        deleted: false,
        sequence,
        modified_by: version.first().map_or(0, |(id, _)| *id),
        chunks,
        base_sequence: 0,
        edits: Vec::new(),
        base_path: String::new(),
        link_target: String::new(),
    };
    (info, by_hash)
}

/// The short id (first 8 bytes of the device ID) a device's counters are kept under.
pub fn short_id(device_id: &str) -> u64 {
    device_id.parse::<DeviceId>().unwrap().short().0
}

/// Forgets the node's peak resident memory so far, so the next [`memory_kib`] peak is the one of
/// what happens from now on (Linux: writing 5 to `clear_refs` resets VmHWM to the current RSS).
pub fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// The node's peak resident memory so far (VmHWM) and now (VmRSS), in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}
