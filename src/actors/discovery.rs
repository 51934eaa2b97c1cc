//! The Discovery actor: tells the Supervisor where trusted peers can be reached. Static `[[peer]]`
//! entries with an address are announced once at start; with mDNS on, every trusted syncnode seen
//! on the LAN is reported as it appears, and again, to be dialed at once, when it reappears after
//! its records went away. An untrusted one is logged once with its device ID and address, so a user
//! can add it, and never dialed. Under `trust = "network-key"` every syncnode seen is dialed (the
//! key exchange decides), and a static peer may be an address alone.

use std::collections::HashSet;

use actix::prelude::*;

use super::messages::{DiscoveryReports, PeerAtAddress, PeerDiscovered, PeerVanished, StopDiscovery};
use crate::config::PeerConfig;
use crate::core::DeviceId;
use crate::net::mdns::{Mdns, Sighting, SightingFilter};

pub struct Discovery {
    me: DeviceId,
    name: String,
    port: u16,
    mdns_enabled: bool,
    peers: Vec<PeerConfig>,
    /// trust = "network-key": any device may be dialed; its key proof admits it or not.
    network_key: bool,
    supervisor: DiscoveryReports,
    mdns: Option<Mdns>,
    filter: SightingFilter,
    reported_strangers: HashSet<DeviceId>,
    /// Trusted devices whose mDNS records went away (a goodbye, or their lifetime ran out).
    away: HashSet<DeviceId>,
}

struct MdnsEvent(mdns_sd::ServiceEvent);

impl Message for MdnsEvent {
    type Result = ();
}

impl Discovery {
    pub fn new(
        me: DeviceId,
        name: String,
        port: u16,
        mdns_enabled: bool,
        peers: Vec<PeerConfig>,
        network_key: bool,
        supervisor: DiscoveryReports,
    ) -> Self {
        Discovery {
            me,
            name,
            port,
            mdns_enabled,
            peers,
            network_key,
            supervisor,
            mdns: None,
            filter: SightingFilter::new(me),
            reported_strangers: HashSet::new(),
            away: HashSet::new(),
        }
    }

    fn trusted(&self, device: &DeviceId) -> bool {
        self.network_key || self.peers.iter().any(|p| p.device_id.as_ref() == Some(device))
    }
}

impl Actor for Discovery {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        for p in &self.peers {
            match (p.device_id, &p.address) {
                (Some(device), Some(address)) => {
                    self.supervisor.discovered.do_send(PeerDiscovered { device, addresses: vec![address.clone()] })
                }
                (None, Some(address)) => self.supervisor.at_address.do_send(PeerAtAddress { address: address.clone() }),
                _ => {}
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
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "mDNS discovery unavailable; only static peers will be dialed")
            }
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(m) = &self.mdns {
            m.stop();
        }
    }
}

use futures::StreamExt as _;

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
                    if self.away.remove(&device) {
                        // The Supervisor dials at once only for an address it did not know; it
                        // still knows these from before, so it would wait out its backoff (up to a
                        // minute). Clearing them first makes them new: a returning peer is dialed now.
                        self.supervisor.vanished.do_send(PeerVanished { device });
                    }
                    self.supervisor.discovered.do_send(PeerDiscovered {
                        device,
                        addresses: addresses.iter().map(|a| a.to_string()).collect(),
                    });
                } else if self.reported_strangers.insert(device) {
                    tracing::info!(device = %device, ?addresses, "untrusted syncnode on the LAN; add it as a [[peer]] to sync with it");
                }
            }
            Some(Sighting::Lost { device }) if self.trusted(&device) => {
                // Not proof that it is gone: its records also expire (after 2 minutes) when the
                // network between us fails without either host losing its link, and then nothing
                // makes either side look again until the next browse query, which mdns-sd spaces
                // out to an hour. So the Supervisor keeps its addresses and keeps redialing with
                // backoff, as for a static peer; if the peer is seen again, it is dialed at once
                // (above).
                tracing::debug!(peer = %device.prefix(), "left the LAN");
                self.away.insert(device);
            }
            Some(Sighting::Lost { .. }) | None => {}
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}
