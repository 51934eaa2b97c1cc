//! Move the fewest bytes: counted on the wire by a TCP proxy between the nodes (TLS and gRPC
//! framing included). Renames, copies and directory moves are rebuilt from local chunks; an
//! insertion near the start of a big file costs one chunk's delta; memory stays flat for 4 GiB.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

/// Forwards every connection to `target`, counting the bytes in both directions.
struct CountingProxy {
    port: u16,
    bytes: Arc<AtomicU64>,
}

impl CountingProxy {
    fn start(target: String) -> CountingProxy {
        CountingProxy::start_limited(target, u64::MAX)
    }

    /// A proxy that also holds each direction of each connection to `rate` bytes per second.
    fn start_limited(target: String, rate: u64) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else { continue };
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    let counter = counter.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 1 << 16];
                        let (started, mut sent) = (std::time::Instant::now(), 0u64);
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                            sent += n as u64;
                            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                                std::thread::sleep(ahead);
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        CountingProxy { port, bytes }
    }

    fn take(&self) -> u64 {
        self.bytes.swap(0, Ordering::Relaxed)
    }

    fn peek(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A and B, where B reaches A only through the proxy (A does not dial B).
fn proxied_pair() -> (Node, Node, CountingProxy) {
    let cluster = Cluster::new(&["a", "b"], &[]);
    let proxy = CountingProxy::start(cluster.nodes[0].address());
    let [a, b] = each(cluster.dials(1, 0, proxy.address()).start());
    (a, b, proxy)
}

fn place(node: &Node, rel: &str, data: &[u8]) {
    let staging = node.dir.join("staging.tmp");
    std::fs::write(&staging, data).unwrap();
    let target = node.path(rel);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::rename(staging, target).unwrap();
}

/// Waits for convergence, then for the link to fall quiet (trailing index messages counted).
fn settle(
    a: &Node,
    b: &Node,
    proxy: &CountingProxy,
    check: impl Fn(&std::collections::BTreeMap<String, Entry>) -> bool,
) -> u64 {
    assert!(converged(&[a, b], T, check), "{}", describe(&[a, b]));
    let mut total = proxy.take();
    // Quiet means no bytes for 300 ms (pings come every 5 s).
    let mut quiet = 0;
    assert!(wait_until(T, || {
        let n = proxy.take();
        total += n;
        quiet = if n == 0 { quiet + 1 } else { 0 };
        quiet >= 15
    }));
    total
}

#[test]
fn renames_copies_and_directory_moves_cost_a_record_not_a_file() {
    let (a, b, proxy) = proxied_pair();
    let size = 64 << 20;
    place(&a, "data/big.bin", &random_bytes(size, 3));
    let first = settle(&a, &b, &proxy, |t| t.len() == 2);
    assert!(first > size as u64, "the first transfer must carry the data ({first} bytes)");
    // Not the data, and not its chunk list either (about 50 KB for 64 MiB): each side announces
    // the new path as a reference to the record it came from, plus the old path's tombstone.
    let budget = 4096;

    std::fs::rename(a.path("data/big.bin"), a.path("data/renamed.bin")).unwrap();
    let renamed = settle(&a, &b, &proxy, |t| t.contains_key("data/renamed.bin") && !t.contains_key("data/big.bin"));
    std::fs::copy(a.path("data/renamed.bin"), a.path("copy.bin")).unwrap();
    let copied = settle(&a, &b, &proxy, |t| t.contains_key("copy.bin"));
    std::fs::rename(a.path("data"), a.path("moved")).unwrap();
    let moved = settle(&a, &b, &proxy, |t| t.contains_key("moved/renamed.bin") && !t.contains_key("data"));
    println!(
        "64 MiB: first {first} B, rename {renamed} B, copy {copied} B, directory move {moved} B (budget {budget})"
    );
    assert!(renamed < budget && copied < budget && moved < budget, "rename {renamed}, copy {copied}, move {moved}");
}

#[test]
fn ten_bytes_inserted_at_the_start_of_64_mib_cost_under_64_kib() {
    let (a, b, proxy) = proxied_pair();
    let data = random_bytes(64 << 20, 5);
    place(&a, "big.bin", &data);
    settle(&a, &b, &proxy, |t| t.len() == 1);
    let mut shifted = b"0123456789".to_vec();
    shifted.extend_from_slice(&data);
    place(&a, "big.bin", &shifted);
    let cost = settle(
        &a,
        &b,
        &proxy,
        |t| matches!(t.get("big.bin"), Some(Entry::File { size, .. }) if *size == shifted.len() as u64),
    );
    println!("10 bytes inserted at the start of 64 MiB: {cost} bytes on the wire");
    assert!(cost < 64 * 1024, "{cost} bytes");
    // One byte flipped in the middle.
    let mut flipped = shifted.clone();
    flipped[32 << 20] ^= 0xff;
    place(&a, "big.bin", &flipped);
    let cost = settle(&a, &b, &proxy, |_| std::fs::read(b.path("big.bin")).map(|d| d == flipped).unwrap_or(false));
    println!("1 byte flipped in the middle of 64 MiB: {cost} bytes on the wire");
    assert!(cost < 32 * 1024, "{cost} bytes");
    // B's own account of that pull (its info line per file): one chunk from A, carried by a delta
    // that fits in what the proxy counted; everything else taken from B's old copy.
    let mut counts = None;
    assert!(
        wait_until(T, || {
            counts = last_pull(&b, "big.bin");
            counts.as_ref().is_some_and(|c| c.received + c.reused == flipped.len() as u64)
        }),
        "no pull of the flipped file in b's log: {counts:?}"
    );
    let c = counts.unwrap();
    assert!(c.received > 0 && c.received < 1 << 20, "{c:?}");
    assert!(
        c.wire > 0 && c.wire < cost && c.wire < c.received / 4,
        "a delta must carry the chunk: {c:?}, {cost} bytes on the wire"
    );
}

#[derive(Debug, Clone)]
struct PullCounts {
    received: u64,
    wire: u64,
    reused: u64,
    /// Chunk bytes by peer (device ID prefix).
    from: Vec<(String, u64)>,
}

/// The counts of the last `pulled` line `node` logged for `path`.
fn last_pull(node: &Node, path: &str) -> Option<PullCounts> {
    let text = node.log_text();
    let line = text.lines().rev().find(|l| l.contains(" pulled ") && l.contains(&format!(" path={path} ")))?;
    let field =
        |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok());
    let list = line.split(" from=[").nth(1)?.split(']').next()?;
    let from = list
        .split(", ")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (peer, bytes) = e.trim_matches('"').split_once(':')?;
            Some((peer.to_string(), bytes.parse().ok()?))
        })
        .collect::<Option<_>>()?;
    Some(PullCounts { received: field("received")?, wire: field("wire")?, reused: field("reused")?, from })
}

/// s1 and s2 hold the same version of a 64 MiB file; r pulls it from both at once, each through a
/// throttled counting proxy, and s2 is killed mid-file. r finishes from s1 without starting over:
/// both proxies together carry the file once, plus at most the chunks that were in flight to s2.
#[test]
fn a_source_that_leaves_mid_file_costs_only_its_chunks_in_flight() {
    let cluster = Cluster::new(&["s1", "s2", "r"], &[]);
    let rate = 24 << 20;
    let limited = |i: usize| CountingProxy::start_limited(cluster.nodes[i].address(), rate);
    let (p1, p2) = (limited(0), limited(1));
    let s1_address = cluster.nodes[0].address();
    // r dials both sources through the proxies; they never dial r.
    let [mut s1, mut s2, mut r] =
        each(cluster.dials(1, 0, s1_address).dials(2, 0, p1.address()).dials(2, 1, p2.address()).configured());
    s1.start();
    s2.start();
    let size = 64 << 20;
    let data = random_bytes(size, 9);
    place(&s1, "big.bin", &data);
    assert!(converged(&[&s1, &s2], T, |t| t.len() == 1), "{}", describe(&[&s1, &s2]));
    r.start();
    // Both serve r at once (whichever connected first had a head start), then s2 dies mid-file.
    assert!(
        wait_until(T, || p1.peek() >= 4 << 20 && p2.peek() >= 4 << 20),
        "r did not pull from both: {}",
        r.log_text()
    );
    s2.kill();
    let before_kill = (p1.peek(), p2.peek());
    assert!(converged(&[&s1, &r], T, |t| t.len() == 1), "{}", describe(&[&s1, &r]));
    assert!(std::fs::read(r.path("big.bin")).unwrap() == data);
    let total = p1.take() + p2.take();
    // The puller keeps about 4 MiB of a file's chunks in flight (half of them to s2); TLS, HTTP/2
    // and gRPC framing add under 3%.
    let in_flight = 4 << 20;
    let budget = size as u64 + in_flight + size as u64 * 3 / 100;
    println!("64 MiB from two sources, one killed mid-file: {total} B on the wire (s1 {} B, s2 {} B when killed); budget {budget}", before_kill.0, before_kill.1);
    assert!(total <= budget, "{total} B on the wire for a {size} B file (budget {budget})");
    // r's line for the file names both sources with the bytes each sent, adding up to what came
    // over the network (all of it: r had nothing to reuse).
    let mut counts = None;
    assert!(
        wait_until(T, || {
            counts = last_pull(&r, "big.bin");
            counts.is_some()
        }),
        "r never logged the pull:\n{}",
        r.log_text()
    );
    let c = counts.unwrap();
    assert_eq!(c.received, size as u64, "{c:?}");
    assert_eq!(c.from.iter().map(|(_, n)| n).sum::<u64>(), c.received, "{c:?}");
    for source in [&s1, &s2] {
        assert!(
            c.from.iter().any(|(p, n)| source.device_id.starts_with(p.as_str()) && *n > 0),
            "{} missing: {c:?}",
            source.name
        );
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_4_gib_file_syncs_with_the_receiver_under_200_mib() {
    let nodes = pair();
    let (a, b) = (&nodes[0], &nodes[1]);
    // A sparse 4 GiB file with some random data sprinkled in.
    let staging = a.dir.join("huge.tmp");
    let f = std::fs::File::create(&staging).unwrap();
    f.set_len(4 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    for i in 0..64u64 {
        f.write_all_at(&random_bytes(1 << 20, i + 1), i * (64 << 20)).unwrap();
    }
    drop(f);
    std::fs::rename(&staging, a.path("huge.bin")).unwrap();
    let pid = b.pid().expect("b runs");
    let mut peak = 0;
    assert!(
        wait_until(Duration::from_secs(240), || {
            peak = peak.max(peak_rss_kib(pid));
            std::fs::metadata(b.path("huge.bin")).is_ok_and(|m| m.len() == 4 << 30)
        }),
        "{}",
        b.log_text()
    );
    peak = peak.max(peak_rss_kib(pid));
    println!("4 GiB: receiver peak RSS {} MiB", peak / 1024);
    assert!(peak < 200 * 1024, "peak RSS {} MiB", peak / 1024);
    assert!(converged(&[a, b], T, |_| true));
}
