//! The Supervisor actor: owns the node's connections. It pairs the two inbound streams of a
//! connection, dials known peers, redials a lost one with exponential backoff, and keeps exactly one
//! connection per device: when both sides dial each other, both keep the one dialed by the smaller
//! device ID, so they agree without a further message. Under `trust = "network-key"` a peer may
//! also be known by an address alone: that address is dialed accepting whoever proves the key
//! there, and the device learned from its certificate then counts like any other.

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
use crate::core::dial::{self, Backoff};
use crate::core::DeviceId;
use crate::net::dial::{dial, Outbound, OwnAddress};
use crate::net::identity::Identity;
use crate::net::network_key::NetworkKey;
use crate::net::proto::{ControlMessage, DataMessage};
use crate::net::service::{Duplex, InboundHalf, InboundStream};
use crate::store::Store;

const TICK: Duration = Duration::from_millis(250);
/// How long one stream of an inbound connection waits for its other stream.
const HALF_OPEN_FOR: Duration = Duration::from_secs(30);

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
    backoff: Backoff,
    next_attempt: Option<Instant>,
    dialing: bool,
    /// The peer broke the protocol: until then, its own connections are refused too (it is cut
    /// off, not just disconnected), and our redial waits as long.
    cut_off_until: Option<Instant>,
}

/// Dial state of an address configured without a device ID.
#[derive(Default)]
struct AddressSlot {
    /// The device that answered there last; while it is connected the address is not dialed.
    device: Option<DeviceId>,
    backoff: Backoff,
    next_attempt: Option<Instant>,
    dialing: bool,
}

#[derive(Default)]
struct Halves {
    control: Option<Duplex<ControlMessage>>,
    data: Option<Duplex<DataMessage>>,
    address: Option<std::net::SocketAddr>,
    since: Option<Instant>,
}

pub struct Supervisor {
    identity: Identity,
    name: String,
    folders: Arc<Vec<FolderConfig>>,
    store: Arc<Store>,
    index: IndexForPeers,
    directory: PeerDirectory,
    compression: Compression,
    /// Under trust = "network-key": every dial proves and checks it.
    network_key: Option<Arc<NetworkKey>>,
    peers: HashMap<DeviceId, Slot>,
    addresses: HashMap<String, AddressSlot>,
    halves: HashMap<(DeviceId, u64), Halves>,
    stopping: bool,
}

impl Supervisor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: Identity,
        name: String,
        folders: Arc<Vec<FolderConfig>>,
        store: Arc<Store>,
        index: IndexForPeers,
        directory: PeerDirectory,
        compression: Compression,
        network_key: Option<Arc<NetworkKey>>,
    ) -> Self {
        Supervisor {
            identity,
            name,
            folders,
            store,
            index,
            directory,
            compression,
            network_key,
            peers: HashMap::new(),
            addresses: HashMap::new(),
            halves: HashMap::new(),
            stopping: false,
        }
    }

    fn me(&self) -> DeviceId {
        self.identity.device_id
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let now = Instant::now();
        let due: Vec<(DeviceId, Vec<String>)> = self
            .peers
            .iter_mut()
            .filter(|(_, s)| {
                s.active.is_none() && !s.dialing && !s.addresses.is_empty() && s.next_attempt.is_none_or(|t| t <= now)
            })
            .map(|(d, s)| {
                s.dialing = true;
                (*d, s.addresses.clone())
            })
            .collect();
        for (device, addresses) in due {
            let identity = self.identity.clone();
            let network_key = self.network_key.clone();
            // Every known address in turn (mDNS lists IPv4 first), so one the peer does not
            // listen on (say its IPv6 link-local one) costs a refused connection, not a backoff.
            let fut = async move {
                let mut errors = Vec::new();
                for address in &addresses {
                    match dial(&identity, Some(device), address, network_key.clone()).await {
                        Ok(out) => return Ok(out),
                        Err(e) => errors.push(format!("{address}: {e:#}")),
                    }
                }
                Err(errors.join("; "))
            };
            ctx.spawn(fut.into_actor(self).map(move |result, this, ctx| this.dialed(device, result, ctx)));
        }
        self.dial_addresses(now, ctx);
        // Half-open inbound connections whose second stream never came.
        self.halves.retain(|_, h| h.since.is_none_or(|t| t.elapsed() < HALF_OPEN_FOR));
    }

    /// Dials the due addresses known without a device ID, unless the device last found there is
    /// connected (by this or any other way).
    fn dial_addresses(&mut self, now: Instant, ctx: &mut Context<Self>) {
        let Some(network_key) = self.network_key.clone() else { return };
        let (me, peers) = (self.me(), &self.peers);
        let due: Vec<String> = self
            .addresses
            .iter_mut()
            .filter(|(_, s)| !s.dialing && s.next_attempt.is_none_or(|t| t <= now))
            .filter(|(_, s)| s.device.is_none_or(|d| d != me && peers.get(&d).is_none_or(|p| p.active.is_none())))
            .map(|(a, s)| {
                s.dialing = true;
                a.clone()
            })
            .collect();
        for address in due {
            let identity = self.identity.clone();
            let key = network_key.clone();
            let target = address.clone();
            let fut = async move {
                dial(&identity, None, &target, Some(key)).await.map_err(|e| (e.is::<OwnAddress>(), format!("{e:#}")))
            };
            ctx.spawn(fut.into_actor(self).map(move |result, this, ctx| this.dialed_address(address, result, ctx)));
        }
    }

    fn dialed_address(&mut self, address: String, result: Result<Outbound, (bool, String)>, ctx: &mut Context<Self>) {
        let me = self.me();
        let Some(slot) = self.addresses.get_mut(&address) else { return };
        slot.dialing = false;
        match result {
            Err((true, _)) => {
                // A config listing every node's address, this one's included: never dialed again.
                tracing::debug!(address = %address, "this node's own address; not dialed");
                slot.device = Some(me);
            }
            Ok(out) => {
                slot.device = Some(out.device);
                tracing::debug!(peer = %out.device.prefix(), address = %address, "reached by address");
                self.establish(out.device, out.conn, me, Some(out.address), out.control, out.data, ctx);
            }
            Err((false, e)) => {
                let wait = slot.backoff.failed(rand::random());
                slot.next_attempt = Some(Instant::now() + wait);
                tracing::debug!(address = %address, error = %e, retry_in_ms = wait.as_millis() as u64, "dial failed");
            }
        }
    }

    fn dialed(&mut self, device: DeviceId, result: Result<Outbound, String>, ctx: &mut Context<Self>) {
        let Some(slot) = self.peers.get_mut(&device) else { return };
        slot.dialing = false;
        match result {
            Ok(out) => {
                let me = self.me();
                self.establish(device, out.conn, me, Some(out.address), out.control, out.data, ctx);
            }
            Err(e) => {
                let wait = slot.backoff.failed(rand::random());
                slot.next_attempt = Some(Instant::now() + wait);
                tracing::debug!(peer = %device.prefix(), error = %e, retry_in_ms = wait.as_millis() as u64, "dial failed");
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn establish(
        &mut self,
        device: DeviceId,
        conn: u64,
        dialer: DeviceId,
        address: Option<std::net::SocketAddr>,
        control: Duplex<ControlMessage>,
        data: Duplex<DataMessage>,
        ctx: &mut Context<Self>,
    ) {
        if self.stopping {
            return;
        }
        let me = self.me();
        let slot = self.peers.entry(device).or_default();
        if dialer == device && slot.cut_off_until.is_some_and(|t| t > Instant::now()) {
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
            my_name: self.name.clone(),
            folders: self.folders.clone(),
            store: self.store.clone(),
            index: self.index.clone(),
            supervisor: ctx.address().recipient(),
            counters: self.directory.counters(&device),
            directory: self.directory.clone(),
            compression: self.compression,
            control,
            data,
        };
        let addr = PeerActor::new(setup).start();
        slot.active = Some(Active { conn, dialer, addr: addr.clone(), since: Instant::now() });
        self.directory.update(device, |e| {
            e.connected = Some(PeerHandle { fetch: addr.clone().recipient() });
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
        let mut changed = false;
        for a in msg.addresses {
            if !slot.addresses.contains(&a) {
                slot.addresses.push(a);
                changed = true;
            }
        }
        if changed {
            slot.next_attempt = None;
            self.tick(ctx);
        }
    }
}

impl Handler<PeerAtAddress> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: PeerAtAddress, ctx: &mut Context<Self>) {
        if self.network_key.is_none() {
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
        let key = (stream.device, stream.conn);
        let half = match stream.half {
            InboundHalf::Refused(_) => {
                // Logged by the listener; counted here, where the peer's counters live, and the
                // peer is cut off for a backoff like one that broke the protocol mid-connection.
                self.directory.counters(&stream.device).violation();
                let slot = self.peers.entry(stream.device).or_default();
                let until = Instant::now() + slot.backoff.failed(rand::random());
                slot.cut_off_until = Some(until);
                slot.next_attempt = Some(slot.next_attempt.map_or(until, |t| t.max(until)));
                return;
            }
            half => half,
        };
        let halves = self.halves.entry(key).or_default();
        halves.address = halves.address.or(stream.address);
        halves.since.get_or_insert_with(Instant::now);
        match half {
            InboundHalf::Control(d) => halves.control = Some(d),
            InboundHalf::Data(d) => halves.data = Some(d),
            InboundHalf::Refused(_) => unreachable!("handled above"),
        }
        if halves.control.is_some() && halves.data.is_some() {
            let h = self.halves.remove(&key).expect("present");
            let (control, data) = (h.control.expect("control"), h.data.expect("data"));
            self.establish(stream.device, stream.conn, stream.device, h.address, control, data, ctx);
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<PeerDown> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: PeerDown, _: &mut Context<Self>) {
        let Some(slot) = self.peers.get_mut(&msg.device) else { return };
        if slot.active.as_ref().is_none_or(|a| a.conn != msg.conn) {
            return;
        }
        let active = slot.active.take().expect("checked");
        // A peer that broke the protocol is cut off until its next attempt (`core::dial`).
        let wait = slot.backoff.ended(active.since.elapsed(), msg.violation, rand::random());
        slot.next_attempt = Some(Instant::now() + wait);
        if msg.violation {
            slot.cut_off_until = slot.next_attempt;
        }
        // An address where this device was found is redialed on the same schedule.
        let (backoff, next_attempt) = (slot.backoff, slot.next_attempt);
        for a in self.addresses.values_mut().filter(|a| a.device == Some(msg.device)) {
            (a.backoff, a.next_attempt) = (backoff, next_attempt);
        }
        self.directory.update(msg.device, |e| e.connected = None);
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
