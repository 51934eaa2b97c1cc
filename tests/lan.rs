//! Zero-configuration discovery on a real LAN: Linux network namespaces, one per host, joined by
//! veth pairs to a bridge that lives in a namespace of its own (so nothing is added to the machine's
//! own network and no multicast leaks in or out), one `syncnode` per host with mDNS on and its peers
//! given by device ID only. The nodes must find each other, sync, notice a pulled cable, take the
//! host back when the cable returns, and ignore themselves, other services and strangers.
//! Needs root and `ip` (iproute2); without root the tests print why and pass, unless CI is set (then they fail).

mod common;

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{tree, wait_until, Node};

/// The peer port every node listens on (each host has its own port space).
const PORT: u16 = 22000;
/// The look-alike service's port, beside the stranger's node on the same host.
const FAKE_PORT: u16 = 22001;
/// Pings every 5 s, 15 s of silence closes a connection: a lost peer is noticed within 20 s.
const LOSS_DEADLINE: Duration = Duration::from_secs(25);
const T: Duration = Duration::from_secs(30);

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Runs `ip` with `args`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Why these tests cannot run here, if they cannot.
fn cannot_run() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root; network namespaces need root (CI runs as root)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`ip` (iproute2) not found; scripts/setup.sh installs it".into()),
    }
}

/// Namespaces left by an earlier run of these tests that was killed before its guard ran (their
/// names carry the test process's pid): the nodes still in them are stopped and they are deleted.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(pid) = name.strip_prefix("snlan-").and_then(|r| r.split('-').next()) else { continue };
        if PathBuf::from(format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_all_in(name);
        let _ = Command::new("ip").args(["netns", "del", name]).output();
    }
}

/// SIGKILLs the processes inside namespace `ns` (ours: the test's own nodes).
fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else { return };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// A LAN of `hosts` namespaces on the private subnet 10.213.N.0/24, each with loopback up, its own
/// address on `eth0` and a multicast route on it; the bridge does not snoop IGMP, so it floods
/// multicast to every port as a small unmanaged switch does. Dropping it removes everything.
struct Lan {
    switch: String,
    hosts: Vec<String>,
    subnet: usize,
}

impl Lan {
    fn new(hosts: usize) -> Option<Lan> {
        Lan::with(hosts, true)
    }

    /// `ipv6: false` turns IPv6 off in the hosts (before their link comes up): they then have
    /// IPv4 addresses only.
    fn with(hosts: usize, ipv6: bool) -> Option<Lan> {
        if let Some(why) = cannot_run() {
            common::skip("LAN test", &why);
            return None;
        }
        sweep_stale();
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let tag = format!("snlan-{}-{seq}", std::process::id());
        let lan = Lan {
            switch: format!("{tag}-sw"),
            hosts: (0..hosts).map(|i| format!("{tag}-h{i}")).collect(),
            subnet: 1 + seq % 250,
        };
        // From here on, `lan`'s Drop removes whatever was made, even if a step fails.
        let sw = lan.switch.as_str();
        ip(&["netns", "add", sw]);
        ip(&["-n", sw, "link", "set", "lo", "up"]);
        ip(&["-n", sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]);
        ip(&["-n", sw, "link", "set", "br0", "up"]);
        for (i, ns) in lan.hosts.iter().enumerate() {
            let port = format!("p{i}");
            let cidr = format!("{}/24", lan.ip(i));
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            if !ipv6 {
                // /proc/sys/net shows the namespace of the thread that opens it.
                let i = lan.hosts.iter().position(|h| h == ns).expect("own host");
                for conf in ["all", "default"] {
                    let path = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
                    lan.inside(i, move || std::fs::write(&path, "1"))
                        .unwrap_or_else(|e| panic!("turning IPv6 off: {e}"));
                }
            }
            // The host's end is created directly in its namespace: nothing passes through ours.
            ip(&["-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns]);
            ip(&["-n", sw, "link", "set", &port, "master", "br0"]);
            ip(&["-n", sw, "link", "set", &port, "up"]);
            ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        }
        // Like a real LAN whose hosts have been up a while: wait until the kernel's duplicate
        // address detection has finished, so the IPv6 link-local addresses exist when nodes start.
        let settled = wait_until(Duration::from_secs(10), || {
            lan.hosts.iter().all(|ns| {
                let out = Command::new("ip")
                    .args(["-n", ns, "-6", "addr", "show", "dev", "eth0", "tentative"])
                    .output()
                    .expect("running ip");
                out.status.success() && out.stdout.is_empty()
            })
        });
        assert!(settled, "IPv6 duplicate address detection did not finish within 10 s");
        Some(lan)
    }

    fn ip(&self, host: usize) -> String {
        format!("10.213.{}.{}", self.subnet, 10 + host)
    }

    /// Plugs or pulls `host`'s cable: its bridge port goes up or down, so the host sees its carrier
    /// come and go while keeping its address, as with a real cable.
    fn set_cable(&self, host: usize, plugged: bool) {
        ip(&["-n", &self.switch, "link", "set", &format!("p{host}"), if plugged { "up" } else { "down" }]);
    }

    /// Cuts `host` off from the others, or joins it again, with its link staying up on both ends
    /// (its port leaves the bridge): the network fails somewhere between hosts, say a switch's
    /// uplink, and no host notices anything but silence.
    fn set_bridged(&self, host: usize, bridged: bool) {
        let port = format!("p{host}");
        if bridged {
            ip(&["-n", &self.switch, "link", "set", &port, "master", "br0"]);
        } else {
            ip(&["-n", &self.switch, "link", "set", &port, "nomaster"]);
        }
    }

    /// Runs `f` on a thread inside `host`'s namespace; sockets and threads it creates stay there.
    fn inside<R: Send + 'static>(&self, host: usize, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/run/netns/{}", self.hosts[host]);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // setns changes only the calling thread; threads it spawns inherit the namespace.
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns {path}: {}",
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .expect("thread inside the namespace")
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.switch]) {
            kill_all_in(ns);
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A syncnode on host `host` of `lan`: identity from `syncnode init` (outside the namespaces, it
/// only writes files), listening on the host's address, mDNS on, peers by device ID only (see
/// [`trust`]). It runs under `ip netns exec`, which execs the node, so the child's pid is the node's.
fn lan_node(name: &str, lan: &Lan, host: usize) -> Node {
    let mut node = Node::new(name);
    node.host = lan.ip(host);
    node.port = PORT;
    node.mdns = true;
    node.runner = ["ip", "netns", "exec", &lan.hosts[host]].map(String::from).to_vec();
    node.write_config();
    node
}

/// `node` trusts the devices `ids`, knowing no address (mDNS finds them).
fn trust(node: &mut Node, ids: &[String]) {
    for id in ids {
        node.trust_id(id);
    }
}

/// Lines of `node`'s log containing `what` about `peer` (`peer=` + the 7-character prefix of its
/// device ID, as the logs write it).
fn about(node: &Node, what: &str, peer: &Node) -> usize {
    let tag = format!("peer={}", &peer.device_id[..7]);
    node.log_text().lines().filter(|l| l.contains(what) && l.contains(&tag)).count()
}

/// Polls `check` until it holds; how long that took, or None after `timeout`.
fn time_until(timeout: Duration, check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    wait_until(timeout, check).then(|| start.elapsed())
}

/// Every node connected to every other one and found it by mDNS itself (a connection can come
/// from the other side's dial first; redialing needs the addresses of one's own sighting).
fn all_connected(nodes: &[Node]) -> bool {
    nodes.iter().all(|n| {
        nodes
            .iter()
            .all(|m| std::ptr::eq(n, m) || (about(n, "peer connected", m) > 0 && about(n, "found on the LAN", m) > 0))
    })
}

fn same_trees(nodes: &[Node], check: impl Fn(&std::collections::BTreeMap<String, common::Entry>) -> bool) -> bool {
    let first = tree(&nodes[0].folder);
    check(&first) && nodes[1..].iter().all(|n| tree(&n.folder) == first)
}

fn listing(nodes: &[Node]) -> String {
    nodes.iter().map(|n| format!("{}: {:?}\n", n.name, tree(&n.folder).keys().collect::<Vec<_>>())).collect()
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

#[test]
fn three_hosts_find_each_other_by_mdns_sync_and_survive_a_pulled_cable() {
    let Some(lan) = Lan::new(3) else { return };
    let mut nodes: Vec<Node> = ["a", "b", "c"].iter().enumerate().map(|(i, n)| lan_node(n, &lan, i)).collect();
    let ids: Vec<String> = nodes.iter().map(|n| n.device_id.clone()).collect();
    for n in nodes.iter_mut() {
        let others: Vec<String> = ids.iter().filter(|id| **id != n.device_id).cloned().collect();
        trust(n, &others);
    }

    let started = Instant::now();
    for n in nodes.iter_mut() {
        n.start();
    }
    let first = time_until(T, || nodes.iter().any(|n| n.log_text().contains("peer connected")));
    let first = first.unwrap_or_else(|| panic!("no connection within {T:?}"));
    assert!(wait_until(T, || all_connected(&nodes)), "not every pair connected within {T:?}");
    let mesh = started.elapsed();
    println!("lan: start to first connection {}, to all three pairs connected {}", ms(first), ms(mesh));

    // A file made on one host appears on the other two.
    nodes[0].write("hello.txt", b"hello from a");
    let synced = time_until(T, || same_trees(&nodes, |t| t.contains_key("hello.txt")));
    println!(
        "lan: hello.txt from a on b and c after {}",
        ms(synced.unwrap_or_else(|| panic!("no sync:\n{}", listing(&nodes))))
    );

    // Pull c's cable: a and b must drop it once pings go unanswered, and keep syncing between them.
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let lost_before =
        [about(a, "peer lost", c), about(b, "peer lost", c), about(c, "peer lost", a), about(c, "peer lost", b)];
    let pulled = Instant::now();
    lan.set_cable(2, false);
    a.write("while-c-away.txt", b"made while c was unplugged");
    assert!(
        wait_until(T, || b.folder.join("while-c-away.txt").exists()),
        "a and b stopped syncing:\n{}",
        listing(&nodes)
    );
    // Each side's "peer lost", timed from the pull.
    let checks = [(a, c, "a lost c"), (b, c, "b lost c"), (c, a, "c lost a"), (c, b, "c lost b")];
    let mut detected: [Option<Duration>; 4] = [None; 4];
    wait_until(LOSS_DEADLINE.saturating_sub(pulled.elapsed()), || {
        for (i, (n, p, _)) in checks.iter().enumerate() {
            if detected[i].is_none() && about(n, "peer lost", p) > lost_before[i] {
                detected[i] = Some(pulled.elapsed());
            }
        }
        detected.iter().all(Option::is_some)
    });
    let report: Vec<String> = checks
        .iter()
        .zip(&detected)
        .map(|((_, _, what), t)| format!("{what} {}", t.map_or("never".into(), ms)))
        .collect();
    println!("lan: cable pulled; loss detected: {}", report.join(", "));
    assert!(
        detected.iter().all(Option::is_some),
        "not every side dropped the unplugged link within {LOSS_DEADLINE:?}: {}",
        report.join(", ")
    );
    assert!(!c.folder.join("while-c-away.txt").exists(), "c got a file through a pulled cable");

    // a and b keep redialing c at the addresses mDNS gave them; let each fail once against the
    // pulled cable, so the reconnection below goes through the backoff as it would in real life.
    let dials_before = [about(a, "dial failed", c), about(b, "dial failed", c)];
    let redial =
        time_until(T, || about(a, "dial failed", c) > dials_before[0] && about(b, "dial failed", c) > dials_before[1]);
    let redial = redial.unwrap_or_else(|| panic!("a and b did not try to redial c within {T:?}"));
    println!("lan: a and b each failed to redial c {} after the last loss was noticed", ms(redial));

    // Plug it back: c is dialed again and catches up.
    let connected_before = [about(a, "peer connected", c), about(b, "peer connected", c)];
    let plugged = Instant::now();
    lan.set_cable(2, true);
    let back = Duration::from_secs(90);
    assert!(
        wait_until(back, || about(a, "peer connected", c) > connected_before[0]
            && about(b, "peer connected", c) > connected_before[1]),
        "c not reconnected to a and b within {back:?} of plugging the cable back"
    );
    let reconnected = plugged.elapsed();
    c.write("back.txt", b"c is back");
    let caught_up = time_until(T, || same_trees(&nodes, |t| t.len() == 3));
    let caught_up =
        caught_up.unwrap_or_else(|| panic!("no convergence after the cable came back:\n{}", listing(&nodes)));
    println!(
        "lan: cable plugged back; c reconnected to a and b after {}, all three converged {} later",
        ms(reconnected),
        ms(caught_up)
    );
    println!("lan: timeline since start: first connection {}, total {}", ms(first), ms(started.elapsed()));
    // For the record: which dials failed on the way (with the cable out, or to an address the
    // peer announces but does not listen on).
    for n in &nodes {
        for line in n.log_text().lines().filter(|l| l.contains("dial failed")) {
            println!("lan: {}: {}", n.name, line.split_once("DEBUG ").map_or(line, |(_, rest)| rest));
        }
    }
}

/// Keeps a test-side mDNS daemon (running inside a namespace) until the end of the test.
struct Daemon(mdns_sd::ServiceDaemon);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

#[test]
fn mdns_ignores_itself_other_services_and_untrusted_nodes() {
    let Some(lan) = Lan::new(3) else { return };
    let mut a = lan_node("a", &lan, 0);
    let mut b = lan_node("b", &lan, 1);
    let mut stranger = lan_node("stranger", &lan, 2);
    // A device a trusts that never runs: only the look-alike service below carries its ID.
    let ghost = lan_node("ghost", &lan, 2);
    // a's list includes a itself, as a peer list copied to every machine would.
    let trusted_by_a = [a.device_id.clone(), b.device_id.clone(), ghost.device_id.clone()];
    trust(&mut a, &trusted_by_a);
    trust(&mut b, &trusted_by_a[..1]);
    // The stranger trusts nobody: if anyone dialed it, its handshake refusal would be in its log.

    // Another kind of service on the stranger's host, with a TXT record that claims to be the
    // ghost and speak our protocol, and a listener that would notice being dialed.
    let (fake_ip, ghost_id) = (lan.ip(2), ghost.device_id.clone());
    let (listener, _foreign) = lan.inside(2, move || {
        let listener = TcpListener::bind((fake_ip.as_str(), FAKE_PORT)).expect("binding the look-alike's port");
        listener.set_nonblocking(true).unwrap();
        let daemon = mdns_sd::ServiceDaemon::new().expect("mDNS daemon for the look-alike");
        let props = [("id", ghost_id.as_str()), ("proto", "1"), ("name", "ghost")];
        let info = mdns_sd::ServiceInfo::new(
            "_http._tcp.local.",
            "syncnode-look-alike",
            "look-alike.local.",
            fake_ip.as_str(),
            FAKE_PORT,
            &props[..],
        )
        .unwrap();
        daemon.register(info).expect("announcing the look-alike");
        (listener, Daemon(daemon))
    });
    // An observer on a's host: proves the look-alike and the stranger are heard where a runs.
    let (_observer, http_events, syncnode_events) = lan.inside(0, || {
        let daemon = mdns_sd::ServiceDaemon::new().expect("observer mDNS daemon");
        let http = daemon.browse("_http._tcp.local.").unwrap();
        let sync = daemon.browse("_syncnode._tcp.local.").unwrap();
        (Daemon(daemon), http, sync)
    });

    a.start();
    b.start();
    stranger.start();

    // The positive control: a and b find each other in this same LAN.
    assert!(
        wait_until(T, || about(&a, "peer connected", &b) > 0 && about(&b, "peer connected", &a) > 0),
        "a and b did not connect"
    );
    let heard = |rx: &mdns_sd::Receiver<mdns_sd::ServiceEvent>, fullname: &str, resolved: bool| {
        let deadline = Instant::now() + T;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(mdns_sd::ServiceEvent::ServiceResolved(s)) if resolved && s.fullname == fullname => return true,
                Ok(mdns_sd::ServiceEvent::ServiceRemoved(_, name)) if !resolved && name == fullname => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    };
    assert!(
        heard(&http_events, "syncnode-look-alike._http._tcp.local.", true),
        "the look-alike was never heard on a's host"
    );
    let stranger_name = format!("{}._syncnode._tcp.local.", stranger.device_id);
    assert!(heard(&syncnode_events, &stranger_name, true), "the stranger was never heard on a's host");
    let stranger_id = stranger.device_id.clone();
    let untrusted = |n: &Node| {
        n.log_text().lines().filter(|l| l.contains("untrusted syncnode on the LAN") && l.contains(&stranger_id)).count()
    };
    assert!(wait_until(T, || untrusted(&a) > 0 && untrusted(&b) > 0), "the stranger was not reported");

    // The stranger leaves and comes back: a hears it go and announce itself again, and must not
    // report it a second time. Once the observer next to a has heard the new announcement, a few
    // more seconds let the re-resolutions that trickle in (more addresses, refreshes) arrive too.
    stranger.stop();
    assert!(heard(&syncnode_events, &stranger_name, false), "the stranger's goodbye was not heard");
    stranger.start();
    assert!(heard(&syncnode_events, &stranger_name, true), "the stranger's return was not heard");
    let repeated = wait_until(Duration::from_secs(5), || untrusted(&a) > 1 || untrusted(&b) > 1);

    let a_log = a.log_text();
    assert!(!repeated, "the stranger was reported more than once:\n{a_log}");
    // Never dialed: no connection, no dial attempt, no handshake on the stranger's side.
    assert_eq!(about(&a, "", &stranger), 0, "a dialed or connected to the stranger");
    assert_eq!(about(&b, "", &stranger), 0, "b dialed or connected to the stranger");
    assert!(
        !stranger.log_text().contains("refused connection at the TLS handshake"),
        "someone dialed the stranger:\n{}",
        stranger.log_text()
    );
    // Not itself: a neither dialed nor connected to itself nor saw itself as a stranger.
    assert_eq!(about(&a, "", &a), 0, "a dialed itself:\n{a_log}");
    assert!(
        !a_log.lines().any(|l| l.contains("untrusted syncnode") && l.contains(&a.device_id)),
        "a reported itself:\n{a_log}"
    );
    // Not the look-alike: its TXT id is trusted, but it is not a syncnode service.
    assert_eq!(about(&a, "", &ghost), 0, "a took the look-alike for the ghost:\n{a_log}");
    let mut dialed = 0;
    while listener.accept().is_ok() {
        dialed += 1;
    }
    assert_eq!(dialed, 0, "the look-alike's port was dialed");
    assert_eq!(untrusted(&a), 1, "{a_log}");
    println!("lan: a ignored itself, the _http._tcp look-alike and the stranger (reported once)");
}

/// The time a log line starts with (RFC 3339, UTC).
fn stamp(line: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(line.split_whitespace().next()?).ok()
}

/// Whether `node` logged a failed dial to `peer` that began after it last saw `peer`'s mDNS
/// records go: more than the 5 s connect timeout after that, so not a dial already under way.
fn redialed_after_expiry(node: &Node, peer: &Node) -> bool {
    let tag = format!("peer={}", &peer.device_id[..7]);
    let text = node.log_text();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(&tag)).collect();
    let Some(gone) = lines.iter().rev().find(|l| l.contains("left the LAN")).and_then(|l| stamp(l)) else {
        return false;
    };
    lines
        .iter()
        .filter(|l| l.contains("dial failed"))
        .filter_map(|l| stamp(l))
        .any(|t| t > gone + chrono::Duration::seconds(6))
}

/// A network failure that lasts longer than mDNS records live (2 minutes), with no host losing its
/// link: each side sees the other's records expire, and nothing announces anything when the
/// network comes back. The nodes must keep redialing the addresses mDNS gave them and reconnect.
/// IPv6 is off here so that redials go to addresses the nodes listen on (they listen on IPv4 but
/// mDNS also announces their IPv6 link-local addresses, and a refused dial there doubles the
/// backoff), which keeps the reconnection within one backoff period. Takes about 3.5 minutes.
#[test]
fn a_partition_that_outlives_the_mdns_records_heals() {
    let Some(lan) = Lan::with(2, false) else { return };
    let mut nodes: Vec<Node> = ["a", "b"].iter().enumerate().map(|(i, n)| lan_node(n, &lan, i)).collect();
    let ids: Vec<String> = nodes.iter().map(|n| n.device_id.clone()).collect();
    trust(&mut nodes[0], &ids[1..]);
    trust(&mut nodes[1], &ids[..1]);
    for n in nodes.iter_mut() {
        n.start();
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    assert!(wait_until(T, || all_connected(&nodes)), "a and b did not connect");
    a.write("before.txt", b"before the partition");
    assert!(wait_until(T, || same_trees(&nodes, |t| t.len() == 1)), "no sync:\n{}", listing(&nodes));

    let cut = Instant::now();
    lan.set_bridged(1, false);
    // Records live 120 s from when they were last heard; mdns-sd's refresh queries go unanswered.
    let expiry = Duration::from_secs(150);
    let expired = time_until(expiry, || about(a, "left the LAN", b) > 0 && about(b, "left the LAN", a) > 0);
    let expired = expired.unwrap_or_else(|| panic!("the mDNS records did not expire within {expiry:?} of the cut"));
    println!("lan: partition; records expired on both sides {} after the cut", ms(expired));
    // Still dialed after that: the addresses were not forgotten (backoff is at most a minute).
    let redial = Duration::from_secs(80);
    let redialed = time_until(redial, || redialed_after_expiry(a, b) && redialed_after_expiry(b, a));
    let redialed = redialed.unwrap_or_else(|| {
        panic!("no redial within {redial:?} of the records expiring: the addresses mDNS gave were forgotten")
    });
    println!("lan: both still redialing {} after the records expired", ms(redialed));

    b.write("during.txt", b"written during the partition");
    let connected_before = [about(a, "peer connected", b), about(b, "peer connected", a)];
    let healed = Instant::now();
    lan.set_bridged(1, true);
    let back = Duration::from_secs(75);
    let reconnected = time_until(back, || {
        about(a, "peer connected", b) > connected_before[0] && about(b, "peer connected", a) > connected_before[1]
    });
    let reconnected =
        reconnected.unwrap_or_else(|| panic!("a and b did not reconnect within {back:?} of the network coming back"));
    assert!(
        wait_until(T, || same_trees(&nodes, |t| t.len() == 2)),
        "no convergence after the partition:\n{}",
        listing(&nodes)
    );
    println!(
        "lan: partition of {} healed; reconnected {} after the network came back",
        ms(healed - cut),
        ms(reconnected)
    );
}
