//! The Peer actor: one per connected device, owning that connection's control and data streams.
//! It receives a message, asks the session (`core::session`) what it means, and does that.
//!
//! Control: our Hello first; then, per shared folder the peer opens, an index sender
//! (`net::serve::send_index`) streams our index from where the peer left off, and pings keep the
//! link honest. Data: a task of its own reads that stream (`net::data`, off this actor's thread):
//! the peer's chunk requests go to the connection's chunk server (`net::serve::Server`, bounded
//! per peer), the answers to ours (put on the stream by the pulls) to the pulls by id; the actor
//! hears only how the stream ended.
//!
//! The actor only ever sees the folders shared with its device (`core::SharedWith`): it offers,
//! sends and serves those, refuses index records and chunk requests for any other folder (logged
//! once per folder with the peer, and counted), and never asks the peer for another folder's chunks.
//! A peer that breaks the protocol is counted, cut off, and redialed only with backoff.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use actix::prelude::*;
use prost::Message as _;
use tonic::Status;

use super::directory::{PeerCounters, PeerDirectory};
use super::messages::*;
use crate::config::{Compression, FolderConfig, FolderMode};
use crate::core::session::{self, End, Liveness, Offer, Session, Shared, Verdict};
use crate::core::DeviceId;
use crate::net::data::{refuse_unshared, DataEnd, DataSide};
use crate::net::fetch::FetchPort;
use crate::net::proto::{self, control_message, ControlMessage, DataMessage};
use crate::net::serve::{send_index, Server, Serving};
use crate::net::service::{is_garbage, Duplex};
use crate::net::wire;
use crate::net::PROTOCOL_VERSION;
use crate::store::Store;

/// Everything a Peer actor is started with.
pub struct PeerSetup {
    pub device: DeviceId,
    pub conn: u64,
    pub address: Option<std::net::SocketAddr>,
    pub my_name: String,
    pub folders: Arc<Vec<FolderConfig>>,
    pub store: Arc<Store>,
    pub index: IndexForPeers,
    pub supervisor: Recipient<PeerDown>,
    pub counters: Arc<PeerCounters>,
    pub directory: PeerDirectory,
    pub compression: Compression,
    pub control: Duplex<ControlMessage>,
    pub data: Duplex<DataMessage>,
}

pub struct PeerActor {
    setup: PeerSetup,
    /// Shared with the task reading the data stream (`net::data`).
    session: Arc<Mutex<Session>>,
    server: Arc<Server>,
    /// Our chunk requests on this connection (the pulls send them; answers are matched here).
    fetches: Arc<FetchPort>,
    /// Ends the data stream's task when this actor goes.
    stop_data: Option<tokio::sync::oneshot::Sender<()>>,
    reason: Option<String>,
    /// The connection ends because the peer broke the protocol.
    violation: bool,
}

impl PeerActor {
    /// Where the pulls ask this connection for chunks.
    pub fn fetch_port(&self) -> Arc<FetchPort> {
        self.fetches.clone()
    }

    pub fn new(setup: PeerSetup) -> Self {
        // From here on only the folders shared with this device exist for this connection.
        let shared: Vec<&FolderConfig> = setup.folders.iter().filter(|f| f.devices.includes(&setup.device)).collect();
        let folders = shared
            .iter()
            .map(|f| Shared { folder: f.id.clone(), receive_only: f.mode == FolderMode::ReceiveOnly })
            .collect();
        let roots = shared.iter().map(|f| (f.id.clone(), f.path.clone())).collect();
        let rehash = setup.index.rehash.clone();
        let server = Server::new(Serving {
            device: setup.device,
            store: setup.store.clone(),
            roots,
            compression: setup.compression,
            tx: setup.data.tx.clone(),
            budget: setup.data.budget.clone(),
            counters: setup.counters.clone(),
            rehash: Box::new(move |folder, path| rehash.do_send(Rehash { folder, path })),
        });
        let shared_ids = shared.iter().map(|f| f.id.clone()).collect();
        let fetches = Arc::new(FetchPort::new(setup.data.tx.clone(), setup.counters.clone(), shared_ids));
        PeerActor {
            session: Arc::new(Mutex::new(Session::new(PROTOCOL_VERSION, folders, Instant::now()))),
            server: Arc::new(server),
            setup,
            fetches,
            stop_data: None,
            reason: None,
            violation: false,
        }
    }

    pub fn device(&self) -> DeviceId {
        self.setup.device
    }

    fn session(&self) -> MutexGuard<'_, Session> {
        self.session.lock().expect("session lock")
    }

    fn send_control(&self, kind: control_message::Kind) {
        let msg = ControlMessage { kind: Some(kind) };
        self.setup.counters.add_out(msg.encoded_len());
        let _ = self.setup.control.tx.try_send(msg);
    }

    fn close(&mut self, reason: String, ctx: &mut Context<Self>) {
        self.send_control(control_message::Kind::Close(proto::Close { reason: reason.clone() }));
        self.reason = Some(reason);
        ctx.stop();
    }

    /// The peer broke the protocol: logged with the reason, counted (with the records refused
    /// with it), and the connection closed; the Supervisor redials only with backoff.
    fn violation(&mut self, reason: String, refused_records: usize, ctx: &mut Context<Self>) {
        tracing::warn!(peer = %self.setup.device.prefix(), reason = %reason, refused_records, "protocol violation; disconnecting");
        self.setup.counters.violation();
        self.setup.counters.refused_records(refused_records);
        self.violation = true;
        self.close(reason, ctx);
    }

    /// Our Hello: per folder, how far we have read this peer's index. An index that cannot be
    /// read is an error (the connection closes), never taken for "nothing read yet".
    fn hello(&self) -> anyhow::Result<proto::Hello> {
        let offer = |f: &Shared| {
            let progress = self.setup.store.progress(&self.setup.device, &f.folder)?;
            Ok(proto::FolderOffer {
                id: f.folder.clone(),
                your_index_id: progress.index_id,
                your_max_sequence: progress.max_sequence,
                receive_only: f.receive_only,
            })
        };
        let folders = self.session().folders().iter().map(offer).collect::<anyhow::Result<_>>()?;
        Ok(proto::Hello { protocol_version: PROTOCOL_VERSION, device_name: self.setup.my_name.clone(), folders })
    }

    fn on_hello(&mut self, hello: proto::Hello, ctx: &mut Context<Self>) {
        let offers: Vec<Offer<'_>> = (hello.folders.iter())
            .map(|o| Offer { folder: &o.id, your_index_id: o.your_index_id, your_max_sequence: o.your_max_sequence })
            .collect();
        let verdict = self.session().hello(hello.protocol_version, &hello.device_name, &offers);
        let accepted = match verdict {
            Ok(accepted) => accepted,
            Err(End::Close(reason)) => return self.close(reason, ctx),
            Err(End::Violation(reason)) => return self.violation(reason, 0, ctx),
        };
        tracing::info!(peer = %self.setup.device.prefix(), name = %accepted.name, address = ?self.setup.address, "peer connected");
        self.setup.directory.update(self.setup.device, |e| e.name = accepted.name);
        for opened in accepted.opened {
            if let Some(resume) = opened.send {
                let meta = match self.setup.store.folder_meta(&opened.folder) {
                    Ok(meta) => meta,
                    Err(e) => return self.close(format!("cannot read the index of `{}`: {e:#}", opened.folder), ctx),
                };
                let Some(rx) = self.setup.index.sequences.watch(&opened.folder) else { continue };
                let (store, tx, counters) =
                    (self.setup.store.clone(), self.setup.control.tx.clone(), self.setup.counters.clone());
                let start = resume.start(meta.index_id);
                tokio::spawn(send_index(store, tx, counters, opened.folder.clone(), meta.index_id, start, rx));
            }
            self.setup.index.recompute.do_send(RecomputeNeeds { folder: opened.folder });
        }
    }

    fn on_index(&mut self, update: proto::IndexUpdate, ctx: &mut Context<Self>) {
        let records = update.files.len();
        // The limits are judged by arithmetic before any record is decoded or edit script expanded.
        let verdict = self.session().index(&update.folder, || wire::check_update(&update).map_err(|e| e.to_string()));
        match verdict {
            Verdict::Take(()) => self.setup.counters.index_batch(records),
            Verdict::Unshared { warn } => {
                self.setup.counters.refused_records(records);
                return refuse_unshared(&self.setup.device, &update.folder, "index records", warn);
            }
            Verdict::Violation(reason) => return self.violation(reason, records, ctx),
        }
        let taken_in = self.setup.index.remote_index.send(RemoteIndex {
            device: self.setup.device,
            folder: update.folder,
            index_id: update.index_id,
            files: update.files,
            reply: ctx.address().recipient(),
        });
        // One batch at a time: the next message of this peer is read once the Index has taken
        // this one in. A peer sending batch after batch then never lines up many of them for the
        // actor thread to work through without a break (the signal handler and every other
        // actor run between two batches).
        ctx.wait(actix::fut::wrap_future::<_, Self>(taken_in).map(|_, _, _| ()));
    }

    /// A message arrived on one of the streams: the peer is alive; a stream error that means
    /// garbage from the peer is a violation, any other closes the connection.
    fn received<M: prost::Message>(
        &mut self,
        item: Result<M, Status>,
        stream: &str,
        ctx: &mut Context<Self>,
    ) -> Option<M> {
        self.session().seen(Instant::now());
        match item {
            Ok(m) => {
                self.setup.counters.add_in(m.encoded_len());
                Some(m)
            }
            Err(e) if is_garbage(&e) => {
                self.violation(format!("{stream} stream: {}", e.message()), 0, ctx);
                None
            }
            Err(e) => {
                self.close(format!("{stream} stream error: {}", e.message()), ctx);
                None
            }
        }
    }
}

impl Actor for PeerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let control = std::mem::replace(&mut self.setup.control.rx, Box::pin(futures::stream::empty()));
        let data = std::mem::replace(&mut self.setup.data.rx, Box::pin(futures::stream::empty()));
        ctx.add_stream(control);
        // The data stream is read off this thread; its task ends with the connection or with
        // this actor (the sender of `stop` goes with it).
        let side = DataSide {
            device: self.setup.device,
            session: self.session.clone(),
            server: self.server.clone(),
            fetches: self.fetches.clone(),
            counters: self.setup.counters.clone(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self.stop_data = Some(stop);
        let me = ctx.address();
        tokio::spawn(async move {
            tokio::select! {
                end = side.run(data) => me.do_send(DataEnded(end)),
                _ = stopped => {}
            }
        });
        match self.hello() {
            Ok(hello) => self.send_control(control_message::Kind::Hello(hello)),
            Err(e) => return self.close(format!("cannot read the index: {e:#}"), ctx),
        }
        ctx.run_interval(session::LIVENESS_CHECK, |this, ctx| {
            let liveness = this.session().liveness(Instant::now());
            match liveness {
                Liveness::Fine => {}
                Liveness::Ping => this.send_control(control_message::Kind::Ping(proto::Ping { nonce: 0 })),
                Liveness::TimedOut(reason) => this.close(reason, ctx),
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // Our requests still waiting for an answer fail now (their pulls try another source).
        self.fetches.close();
        // Requests of this connection still waiting to be served give up (nobody would read them).
        self.server.close();
        // The peer's protocol bytes since this node started, over all its connections.
        let (bytes_in, bytes_out) = (
            self.setup.counters.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
            self.setup.counters.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
        );
        tracing::info!(peer = %self.setup.device.prefix(), reason = self.reason.as_deref().unwrap_or("connection closed"), bytes_in, bytes_out, "peer lost");
        self.setup.supervisor.do_send(PeerDown {
            device: self.setup.device,
            conn: self.setup.conn,
            violation: self.violation,
        });
    }
}

impl StreamHandler<Result<ControlMessage, Status>> for PeerActor {
    fn handle(&mut self, item: Result<ControlMessage, Status>, ctx: &mut Context<Self>) {
        let Some(msg) = self.received(item, "control", ctx) else { return };
        match msg.kind {
            Some(control_message::Kind::Hello(h)) => self.on_hello(h, ctx),
            Some(control_message::Kind::Index(u)) => self.on_index(u, ctx),
            Some(control_message::Kind::Ping(p)) => {
                self.send_control(control_message::Kind::Pong(proto::Pong { nonce: p.nonce }))
            }
            Some(control_message::Kind::Pong(_)) => {}
            Some(control_message::Kind::Close(c)) => {
                self.reason = Some(format!("peer closed: {}", c.reason));
                ctx.stop();
            }
            None => self.violation("empty control message".into(), 0, ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// How the data stream's task (`net::data`) saw the stream end.
#[derive(Message)]
#[rtype(result = "()")]
struct DataEnded(DataEnd);

impl Handler<DataEnded> for PeerActor {
    type Result = ();
    fn handle(&mut self, DataEnded(end): DataEnded, ctx: &mut Context<Self>) {
        match end {
            DataEnd::Finished => ctx.stop(),
            DataEnd::Closed(reason) => self.close(reason, ctx),
            DataEnd::Violation(reason) => self.violation(reason, 0, ctx),
        }
    }
}

impl Handler<Disconnect> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: Disconnect, ctx: &mut Context<Self>) {
        // The Index logged the refused records already; here they are counted.
        if let Some(records) = msg.violation {
            self.setup.counters.violation();
            self.setup.counters.refused_records(records);
            self.violation = true;
        }
        self.close(msg.reason, ctx);
    }
}
