//! The Supervisor actor: owns the node's connections. It pairs the two inbound streams of a
//! connection, dials known peers, redials a lost one with exponential backoff, and keeps exactly one
//! connection per device: when both sides dial each other, both keep the one dialed by the smaller
//! device ID, so they agree without a further message. Under `trust = "network-key"` a peer may
//! also be known by an address alone: that address is dialed accepting whoever proves the key
//! there, and the device learned from its certificate then counts like any other. Which slots are
//! due, how long they wait and which connection is kept are `core::dial`'s rules.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::directory::PeerDirectory;
use super::messages::{
    Disconnect, IndexForPeers, PeerAtAddress, PeerDiscovered, PeerDown, PeerHandle, PeerVanished, Shutdown,
};
use super::peer::{PeerActor, PeerSetup};
use crate::config::{Compression, FolderConfig};
use crate::core::dial::{self, Schedule};
use crate::core::DeviceId;
use crate::net::dial::{dial, dial_any, Outbound, OwnAddress};
use crate::net::identity::Identity;
use crate::net::network_key::NetworkKey;
use crate::net::service::{InboundHalf, InboundStream, Paired, Pairing};
use crate::store::Store;

const TICK: Duration = Duration::from_millis(250);

struct Active {
    conn: u64,
    dialer: DeviceId,
    addr: Addr<PeerActor>,
    since: Instant,
}

#[derive(Default)]
struct Slot {
    addresses: Vec<String>,
    active: Option<Active>,
    dial: Schedule,
}

/// Dial state of an address configured without a device ID.
#[derive(Default)]
struct AddressSlot {
    /// The device that answered there last; while it is connected the address is not dialed.
    device: Option<DeviceId>,
    dial: Schedule,
}

/// Everything the Supervisor is started with.
pub struct SupervisorSetup {
    pub identity: Identity,
    pub name: String,
    pub folders: Arc<Vec<FolderConfig>>,
    pub store: Arc<Store>,
    pub index: IndexForPeers,
    pub directory: PeerDirectory,
    pub compression: Compression,
    /// Under trust = "network-key": every dial proves and checks it.
    pub network_key: Option<Arc<NetworkKey>>,
}

pub struct Supervisor {
    setup: SupervisorSetup,
    peers: HashMap<DeviceId, Slot>,
    addresses: HashMap<String, AddressSlot>,
    inbound: Pairing,
    stopping: bool,
}

impl Supervisor {
    pub fn new(setup: SupervisorSetup) -> Self {
        Supervisor {
            setup,
            peers: HashMap::new(),
            addresses: HashMap::new(),
            inbound: Pairing::default(),
            stopping: false,
        }
    }

    fn me(&self) -> DeviceId {
        self.setup.identity.device_id
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let now = Instant::now();
        let slots = (self.peers.iter_mut())
            .map(|(d, s)| (*d, &mut s.dial, dial::peer_blocked(s.active.is_some(), s.addresses.len())));
        for device in dial::start_due(slots, now) {
            let (identity, network_key) = (self.setup.identity.clone(), self.setup.network_key.clone());
            let addresses = self.peers[&device].addresses.clone();
            let fut = async move { dial_any(&identity, device, &addresses, network_key).await };
            ctx.spawn(fut.into_actor(self).map(move |result, this, ctx| this.dialed(device, result, ctx)));
        }
        self.dial_addresses(now, ctx);
        // Half-open inbound connections whose second stream never came.
        self.inbound.expire(now, dial::HALF_OPEN_FOR);
    }

    /// Dials the due addresses known without a device ID, unless the device last found there is
    /// connected (by this or any other way).
    fn dial_addresses(&mut self, now: Instant, ctx: &mut Context<Self>) {
        let Some(network_key) = self.setup.network_key.clone() else { return };
        let (me, peers) = (self.me(), &self.peers);
        let connected = |d: &DeviceId| peers.get(d).is_some_and(|p| p.active.is_some());
        let slots =
            self.addresses.iter_mut().map(|(a, s)| (a, &mut s.dial, dial::address_blocked(s.device, me, connected)));
        let due: Vec<String> = dial::start_due(slots, now).into_iter().cloned().collect();
        for address in due {
            let (identity, key, target) = (self.setup.identity.clone(), network_key.clone(), address.clone());
            let fut = async move {
                dial(&identity, None, &target, Some(key)).await.map_err(|e| (e.is::<OwnAddress>(), format!("{e:#}")))
            };
            ctx.spawn(fut.into_actor(self).map(move |result, this, ctx| this.dialed_address(address, result, ctx)));
        }
    }

    fn dialed_address(&mut self, address: String, result: Result<Outbound, (bool, String)>, ctx: &mut Context<Self>) {
        let me = self.me();
        let Some(slot) = self.addresses.get_mut(&address) else { return };
        slot.dial.dialed();
        match result {
            Err((true, _)) => {
                // A config listing every node's address, this one's included: never dialed again.
                tracing::debug!(address = %address, "this node's own address; not dialed");
                slot.device = Some(me);
            }
            Ok(out) => {
                slot.device = Some(out.device);
                tracing::debug!(peer = %out.device.prefix(), address = %address, "reached by address");
                self.establish(out.into(), me, ctx);
            }
            Err((false, e)) => {
                let wait = slot.dial.failed(Instant::now(), rand::random());
                tracing::debug!(address = %address, error = %e, retry_in_ms = wait.as_millis() as u64, "dial failed");
            }
        }
    }

    fn dialed(&mut self, device: DeviceId, result: Result<Outbound, String>, ctx: &mut Context<Self>) {
        let Some(slot) = self.peers.get_mut(&device) else { return };
        slot.dial.dialed();
        match result {
            Ok(out) => {
                let me = self.me();
                self.establish(out.into(), me, ctx);
            }
            Err(e) => {
                let wait = slot.dial.failed(Instant::now(), rand::random());
                tracing::debug!(peer = %device.prefix(), error = %e, retry_in_ms = wait.as_millis() as u64, "dial failed");
            }
        }
    }

    /// Starts the Peer actor of connection `c`, dialed by `dialer`, unless the peer is cut off or
    /// the connection it has is the one both sides keep.
    fn establish(&mut self, c: Paired, dialer: DeviceId, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let (me, device, conn, address) = (self.me(), c.device, c.conn, c.address);
        let slot = self.peers.entry(device).or_default();
        if dialer == device && slot.dial.cut_off(Instant::now()) {
            tracing::debug!(peer = %device.prefix(), "connection of a peer that broke the protocol refused until its backoff ends");
            return;
        }
        if let Some(active) = &slot.active {
            // Keep the existing one if it is the preferred direction and the new one is not.
            if !dial::replaces(me, device, active.dialer, active.addr.connected(), dialer) {
                tracing::debug!(peer = %device.prefix(), "duplicate connection dropped");
                return;
            }
            active.addr.do_send(Disconnect { reason: "replaced by another connection".into(), violation: None });
        }
        let setup = PeerSetup {
            device,
            conn,
            address,
            my_name: self.setup.name.clone(),
            folders: self.setup.folders.clone(),
            store: self.setup.store.clone(),
            index: self.setup.index.clone(),
            supervisor: ctx.address().recipient(),
            counters: self.setup.directory.counters(&device),
            directory: self.setup.directory.clone(),
            compression: self.setup.compression,
            control: c.control,
            data: c.data,
        };
        let actor = PeerActor::new(setup);
        let fetch = actor.fetch_port();
        let addr = actor.start();
        slot.active = Some(Active { conn, dialer, addr: addr.clone(), since: Instant::now() });
        self.setup.directory.update(device, |e| {
            e.connected = Some(PeerHandle { fetch: fetch.clone() });
            e.address = address;
        });
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(TICK, |this, ctx| this.tick(ctx));
    }
}

impl Handler<PeerDiscovered> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: PeerDiscovered, ctx: &mut Context<Self>) {
        if msg.device == self.me() {
            return;
        }
        let slot = self.peers.entry(msg.device).or_default();
        if dial::learn_addresses(&mut slot.addresses, &mut slot.dial, msg.addresses) {
            self.tick(ctx);
        }
    }
}

impl Handler<PeerAtAddress> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: PeerAtAddress, ctx: &mut Context<Self>) {
        if self.setup.network_key.is_none() {
            tracing::warn!(address = %msg.address, "a peer address without a device ID needs trust = \"network-key\"; ignored");
            return;
        }
        self.addresses.entry(msg.address).or_default();
        self.tick(ctx);
    }
}

impl Handler<PeerVanished> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: PeerVanished, _: &mut Context<Self>) {
        if let Some(slot) = self.peers.get_mut(&msg.device) {
            slot.addresses.clear();
        }
    }
}

impl StreamHandler<InboundStream> for Supervisor {
    fn handle(&mut self, stream: InboundStream, ctx: &mut Context<Self>) {
        if let InboundHalf::Refused(_) = stream.half {
            // Logged by the listener; counted here, where the peer's counters live, and the
            // peer is cut off for a backoff like one that broke the protocol mid-connection.
            self.setup.directory.counters(&stream.device).violation();
            self.peers.entry(stream.device).or_default().dial.refused(Instant::now(), rand::random());
            return;
        }
        if let Some(c) = self.inbound.add(stream, Instant::now()) {
            let dialer = c.device;
            self.establish(c, dialer, ctx);
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<PeerDown> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: PeerDown, _: &mut Context<Self>) {
        let Some(slot) = self.peers.get_mut(&msg.device) else { return };
        let Some(active) = slot.active.take_if(|a| a.conn == msg.conn) else { return };
        // A peer that broke the protocol is cut off until its next attempt (`core::dial`).
        slot.dial.ended(Instant::now(), active.since.elapsed(), msg.violation, rand::random());
        // An address where this device was found is redialed on the same schedule.
        let schedule = slot.dial;
        for a in self.addresses.values_mut().filter(|a| a.device == Some(msg.device)) {
            a.dial.follow(&schedule);
        }
        self.setup.directory.update(msg.device, |e| e.connected = None);
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) {
        self.stopping = true;
        for slot in self.peers.values() {
            if let Some(a) = &slot.active {
                a.addr.do_send(Disconnect { reason: "node shutting down".into(), violation: None });
            }
        }
    }
}
