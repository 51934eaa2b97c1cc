//! The Discovery actor: tells the Supervisor where trusted peers can be reached. Static `[[peer]]`
//! entries with an address are announced once at start; with mDNS on, every trusted syncnode seen
//! on the LAN is reported as it appears and as it leaves. An untrusted one is logged once with its
//! device ID and address, so a user can add it, and never dialed.

use std::collections::HashSet;

use actix::prelude::*;

use super::supervisor::{PeerDiscovered, PeerVanished, Supervisor};
use crate::config::PeerConfig;
use crate::core::DeviceId;
use crate::net::mdns::{Mdns, Sighting, SightingFilter};

pub struct Discovery {
    me: DeviceId,
    name: String,
    port: u16,
    mdns_enabled: bool,
    peers: Vec<PeerConfig>,
    supervisor: Addr<Supervisor>,
    mdns: Option<Mdns>,
    filter: SightingFilter,
    reported_strangers: HashSet<DeviceId>,
}

struct MdnsEvent(mdns_sd::ServiceEvent);

impl Message for MdnsEvent {
    type Result = ();
}

impl Discovery {
    pub fn new(me: DeviceId, name: String, port: u16, mdns_enabled: bool, peers: Vec<PeerConfig>, supervisor: Addr<Supervisor>) -> Self {
        Discovery { me, name, port, mdns_enabled, peers, supervisor, mdns: None, filter: SightingFilter::new(me), reported_strangers: HashSet::new() }
    }

    fn trusted(&self, device: &DeviceId) -> bool {
        self.peers.iter().any(|p| p.device_id.as_ref() == Some(device))
    }
}

impl Actor for Discovery {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        for p in &self.peers {
            if let (Some(device), Some(address)) = (p.device_id, &p.address) {
                self.supervisor.do_send(PeerDiscovered { device, addresses: vec![address.clone()] });
            }
        }
        if !self.mdns_enabled {
            return;
        }
        match Mdns::start(self.me, &self.name, self.port) {
            Ok((mdns, events)) => {
                self.mdns = Some(mdns);
                ctx.add_stream(events.into_stream().map(MdnsEvent));
                // Interfaces come and go (a cable, a VPN): re-read them now and then.
                ctx.run_interval(std::time::Duration::from_secs(30), |this, _| this.filter.refresh_interfaces());
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "mDNS discovery unavailable; only static peers will be dialed"),
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(m) = &self.mdns {
            m.stop();
        }
    }
}

use futures::StreamExt as _;

/// Withdraw the announcement (the node is stopping).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopDiscovery;

impl Handler<StopDiscovery> for Discovery {
    type Result = ();
    fn handle(&mut self, _: StopDiscovery, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl StreamHandler<MdnsEvent> for Discovery {
    fn handle(&mut self, MdnsEvent(event): MdnsEvent, _: &mut Context<Self>) {
        match self.filter.handle(event) {
            Some(Sighting::Found { device, addresses }) => {
                if self.trusted(&device) {
                    tracing::debug!(peer = %device.prefix(), ?addresses, "found on the LAN");
                    self.supervisor.do_send(PeerDiscovered { device, addresses: addresses.iter().map(|a| a.to_string()).collect() });
                } else if self.reported_strangers.insert(device) {
                    tracing::info!(device = %device, ?addresses, "untrusted syncnode on the LAN; add it as a [[peer]] to sync with it");
                }
            }
            Some(Sighting::Lost { device }) => {
                if self.trusted(&device) {
                    tracing::debug!(peer = %device.prefix(), "left the LAN");
                    self.supervisor.do_send(PeerVanished { device });
                }
            }
            None => {}
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}
