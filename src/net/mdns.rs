//! LAN discovery over mDNS (the `mdns-sd` crate: announce and browse in one daemon thread, works
//! across hosts, on one host and in loopback-only namespaces, where libmdns + mdns did not; see
//! docs/architecture.md). A node announces `_syncnode._tcp.local.` with TXT records `id` (device
//! ID), `proto` (protocol version) and `name`, and reports every other syncnode it resolves.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use mdns_sd::{ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::core::DeviceId;

pub const SERVICE_TYPE: &str = "_syncnode._tcp.local.";

/// What browsing found: a syncnode instance with its addresses (merged over resolutions), or one
/// that left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sighting {
    Found { device: DeviceId, addresses: Vec<SocketAddr> },
    Lost { device: DeviceId },
}

pub struct Mdns {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Mdns {
    /// Announces this node and starts browsing; sightings arrive on the returned receiver.
    pub fn start(me: DeviceId, name: &str, port: u16) -> Result<(Mdns, mdns_sd::Receiver<ServiceEvent>)> {
        let daemon = ServiceDaemon::new().context("starting the mDNS daemon")?;
        let id = me.to_string();
        let host = format!("syncnode-{}.local.", me.prefix().to_lowercase());
        let props = [("id", id.as_str()), ("proto", "1"), ("name", name)];
        let info = ServiceInfo::new(SERVICE_TYPE, &id, &host, "", port, &props[..])
            .context("building the mDNS announcement")?
            .enable_addr_auto();
        let fullname = info.get_fullname().to_string();
        daemon.register(info).context("announcing over mDNS")?;
        let events = daemon.browse(SERVICE_TYPE).context("browsing mDNS")?;
        Ok((Mdns { daemon, fullname }, events))
    }

    pub fn stop(&self) {
        let _ = self.daemon.unregister(&self.fullname);
        let _ = self.daemon.shutdown();
    }
}

/// Turns raw mDNS events into sightings: ignores ourselves and other services, checks the TXT
/// records, merges addresses over repeated resolutions, keeps only addresses on our subnets.
pub struct SightingFilter {
    me: DeviceId,
    known: HashMap<String, (DeviceId, HashSet<SocketAddr>)>,
    subnets: Vec<(IpAddr, u8)>,
}

impl SightingFilter {
    pub fn new(me: DeviceId) -> Self {
        SightingFilter { me, known: HashMap::new(), subnets: local_subnets() }
    }

    pub fn refresh_interfaces(&mut self) {
        self.subnets = local_subnets();
    }

    pub fn handle(&mut self, event: ServiceEvent) -> Option<Sighting> {
        match event {
            ServiceEvent::ServiceResolved(info) => {
                if info.ty_domain != SERVICE_TYPE || info.get_property_val_str("proto") != Some("1") {
                    return None;
                }
                let device: DeviceId = info.get_property_val_str("id")?.parse().ok()?;
                if device == self.me {
                    return None;
                }
                let port = info.get_port();
                let subnets = &self.subnets;
                let fresh: Vec<SocketAddr> = info
                    .get_addresses()
                    .iter()
                    .filter_map(|ip| socket_addr(ip, port))
                    .filter(|a| on_subnet(subnets, a.ip()))
                    .collect();
                let entry =
                    self.known.entry(info.get_fullname().to_string()).or_insert_with(|| (device, HashSet::new()));
                entry.0 = device;
                entry.1.extend(fresh);
                if entry.1.is_empty() {
                    return None;
                }
                let mut addresses: Vec<SocketAddr> = entry.1.iter().copied().collect();
                // IPv4 first: link-local IPv6 needs a scope and is the fallback.
                addresses.sort_by_key(|a| (a.is_ipv6(), *a));
                Some(Sighting::Found { device, addresses })
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                let (device, _) = self.known.remove(&fullname)?;
                Some(Sighting::Lost { device })
            }
            _ => None,
        }
    }
}

fn socket_addr(ip: &ScopedIp, port: u16) -> Option<SocketAddr> {
    match ip {
        ScopedIp::V4(v4) => Some(SocketAddr::new(IpAddr::V4(*v4.addr()), port)),
        ScopedIp::V6(v6) => {
            let addr = *v6.addr();
            let scope = if addr.is_unicast_link_local() { v6.scope_id().index } else { 0 };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(addr, port, 0, scope)))
        }
        _ => None,
    }
}

/// (network address, prefix length) of every interface address of this host.
fn local_subnets() -> Vec<(IpAddr, u8)> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|iface| match iface.addr {
            if_addrs::IfAddr::V4(v4) => (IpAddr::V4(v4.ip), u32::from(v4.netmask).count_ones() as u8),
            if_addrs::IfAddr::V6(v6) => (IpAddr::V6(v6.ip), u128::from(v6.netmask).count_ones() as u8),
        })
        .collect()
}

fn on_subnet(subnets: &[(IpAddr, u8)], ip: IpAddr) -> bool {
    subnets.iter().any(|(net, prefix)| same_prefix(*net, ip, *prefix))
}

/// Whether two addresses share their first `prefix` bits.
pub fn same_prefix(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix.min(32) as u32) };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix.min(128) as u32) };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_membership() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_prefix(ip("10.9.0.1"), ip("10.9.0.200"), 24));
        assert!(!same_prefix(ip("10.9.0.1"), ip("10.9.1.1"), 24));
        assert!(same_prefix(ip("fe80::1"), ip("fe80::2:3"), 64));
        assert!(!same_prefix(ip("10.0.0.1"), ip("fe80::1"), 0));
    }
}
