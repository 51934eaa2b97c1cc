//! A trusted peer that turns hostile gets nothing: each test runs a real node B (and where it
//! matters an honest peer A syncing with it) and attacks B over the real protocol with a trusted
//! identity (`common/hostile.rs`), asserting what must hold: nothing outside B's folder read or
//! announced, B's memory bounded (peak RSS from /proc), refusals logged once and counted per peer
//! in /metrics, counters near overflow refused while honest edits still win, and no setuid bits.
//! Measured numbers are printed (`-- --nocapture` shows them).

mod common;
#[path = "common/hostile.rs"]
mod hostile_peer;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{each, peer_label, random_bytes, wait_until, Cluster, Node};
use hostile_peer::{file_record, memory_kib, reset_peak, short_id, HostilePeer};
use syncnode::net::proto;

const MIB: u64 = 1024;

/// B trusting the given hostile peers (no address: they dial B), started.
fn node_trusting(name: &str, hostile: &[&HostilePeer]) -> Node {
    let mut node = Node::new(name);
    for h in hostile {
        node.trust_id(&h.device_id);
    }
    node
}

#[test]
fn a_symlink_out_of_the_folder_is_never_followed_read_or_announced() {
    let h = HostilePeer::new();
    let mut b = node_trusting("b", &[&h]);
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(outside.path().join("sub")).unwrap();
    std::fs::write(outside.path().join("secret.txt"), b"the outside secret").unwrap();
    std::fs::write(outside.path().join("sub/deep.txt"), b"deeper secret").unwrap();
    std::os::unix::fs::symlink(outside.path(), b.path("link")).unwrap();
    b.write("mine.txt", b"mine");
    b.start();
    let mut conn = h.connect(&b);
    conn.hello();
    assert!(
        conn.pump(Duration::from_secs(10), |c| c.announced.contains_key("mine.txt")),
        "B never announced its own file"
    );

    // The attack: records under the link (B tries to pull them, is refused, and looks at those
    // paths again), and a request for the outside file's bytes under the link's name.
    let me = short_id(&h.device_id);
    let (secret_record, mut chunks) = file_record("link/secret.txt", b"the peer's version", 8, &[(me, 5)], 1, 0o644);
    let (deep_record, more) = file_record("link/sub/new.txt", b"planted", 8, &[(me, 5)], 2, 0o644);
    chunks.extend(more);
    conn.serve(chunks);
    conn.send_index(vec![secret_record, deep_record]);
    let secret = std::fs::read(outside.path().join("secret.txt")).unwrap();
    conn.request(proto::ChunkRequest {
        id: 1,
        folder: "default".into(),
        path: "link/secret.txt".into(),
        offset: 0,
        size: secret.len() as u32,
        hash: blake3::hash(&secret).as_bytes().to_vec(),
        signature: vec![],
    });
    let response = conn.response(Duration::from_secs(10)).expect("B answers the request");
    assert!(
        response.data.is_empty() && response.code() != proto::ChunkError::None,
        "B served bytes from outside its folder: {response:?}"
    );

    // Over more than one retry period of the Puller (5 s), nothing under the link is announced.
    conn.pump(Duration::from_secs(7), |_| false);
    let leaked: Vec<&String> = conn.announced.keys().filter(|p| p.starts_with("link/")).collect();
    assert!(leaked.is_empty(), "B announced paths behind the link: {leaked:?}");
    // The link itself is announced as what it is: a link, its target text, no content.
    let link = conn.announced.get("link").expect("B announces its link as a link");
    assert_eq!(link.kind, proto::FileKind::Symlink as i32);
    assert_eq!(link.link_target, outside.path().display().to_string());
    assert!(link.chunks.is_empty() && link.size == 0, "{link:?}");
    assert!(conn.closed.is_none(), "an honest-looking record is refused, not a protocol violation: {:?}", conn.closed);
    // Nothing outside was written, and the link's refusal was logged once, not once per retry.
    assert_eq!(std::fs::read(outside.path().join("secret.txt")).unwrap(), secret);
    assert!(!outside.path().join("sub/new.txt").exists());
    let names: Vec<_> = walkdir::WalkDir::new(outside.path())
        .min_depth(1)
        .into_iter()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names.len(), 3, "outside: {names:?}");
    let log = b.log_text();
    eprintln!(
        "symlink: {} link refusal line(s), {} Puller retry line(s) in 7 s",
        log.matches("a symlink would lead out of the folder").count(),
        log.matches("pull failed").count()
    );
    assert_eq!(
        log.matches("a symlink would lead out of the folder").count(),
        1,
        "the refusal is logged exactly once:\n{log}"
    );
    assert!(b.metric("syncnode_peer_refused_requests_total", &peer_label(&h.device_id)).unwrap_or(0) >= 1);
    assert_eq!(b.stop(), Some(0));
}

#[test]
fn an_amplifying_edit_script_is_refused_before_it_is_expanded() {
    let h = HostilePeer::new();
    let mut b = node_trusting("b", &[&h]);
    b.start();
    let mut conn = h.connect(&b);
    conn.hello();
    assert!(h.hello_taken(&b, Duration::from_secs(10)));
    // A base record of 10,000 chunks that B then holds from us.
    let me = short_id(&h.device_id);
    let data = random_bytes(10_000 * 64, 7);
    let (base, _) = file_record("big", &data, 64, &[(me, 1)], 1, 0o644);
    conn.send_index(vec![base]);
    assert!(
        wait_until(Duration::from_secs(10), || b
            .metric("syncnode_folder_need_files", "folder=\"default\"")
            .unwrap_or(0)
            >= 1),
        "B never took in the base record"
    );
    let pid = b.pid().unwrap();
    reset_peak(pid);
    let (before, _) = memory_kib(pid);

    // 1,400 edits that each copy the whole base: 14 million chunks (682 MiB) if expanded.
    let edits = vec![proto::ChunkEdit { copy_from: 0, copy_len: 10_000, insert: vec![] }; 1_400];
    let (mut edit, _) = file_record("big", b"", 64, &[(me, 2)], 2, 0o644);
    edit.chunks.clear();
    edit.base_sequence = 1;
    edit.size = 14_000_000 * 64;
    edit.edits = edits;
    let started = Instant::now();
    conn.send_index(vec![edit]);
    let reason = conn.wait_closed(Duration::from_secs(10));
    let refused_in = started.elapsed();
    let (after, rss) = memory_kib(pid);
    eprintln!("amplifying edit script: closed after {refused_in:?} ({reason:?}); B's peak RSS {} MiB before, {} MiB after (now {} MiB)", before / MIB, after / MIB, rss / MIB);
    let reason = reason.expect("B cuts the peer off");
    assert!(reason.contains("14000000 chunks"), "{reason}");
    assert!(after < before + 16 * MIB, "B's peak RSS grew from {before} KiB to {after} KiB");
    let label = peer_label(&h.device_id);
    assert!(wait_until(Duration::from_secs(5), || b
        .metric("syncnode_peer_protocol_violations_total", &label)
        .unwrap_or(0)
        >= 1));
    assert!(b.metric("syncnode_peer_refused_records_total", &label).unwrap_or(0) >= 1);
    assert!(b.log_text().contains("protocol violation"));
    assert_eq!(b.stop(), Some(0));
}

#[test]
fn a_message_of_many_empty_records_is_refused_before_it_is_decoded() {
    let h = HostilePeer::new();
    let mut b = node_trusting("b", &[&h]);
    b.start();
    let mut conn = h.connect(&b);
    conn.hello();
    assert!(h.hello_taken(&b, Duration::from_secs(10)));
    let pid = b.pid().unwrap();
    reset_peak(pid);
    let (before, _) = memory_kib(pid);
    // 8 million empty records: 2 bytes each on the wire (16 MB, under the message size limit),
    // some 170 bytes each if decoded.
    conn.send_index(vec![proto::FileInfo::default(); 8_000_000]);
    let reason = conn.wait_closed(Duration::from_secs(20));
    let (after, _) = memory_kib(pid);
    eprintln!(
        "8M empty records in one message: closed ({reason:?}); B's peak RSS {} MiB before, {} MiB after",
        before / MIB,
        after / MIB
    );
    let reason = reason.expect("B cuts the peer off");
    assert!(reason.contains("8000000 records"), "{reason}");
    assert!(after < before + 48 * MIB, "B's peak RSS grew from {before} KiB to {after} KiB");
    assert!(wait_until(Duration::from_secs(5), || b
        .metric("syncnode_peer_protocol_violations_total", &peer_label(&h.device_id))
        .unwrap_or(0)
        >= 1));
    assert_eq!(b.stop(), Some(0));
}

#[test]
fn unread_and_oversized_chunk_requests_keep_memory_bounded_while_an_honest_peer_syncs() {
    let h = HostilePeer::new();
    // Large chunks on B (4 MiB average, up to 16 MiB), and A ignores the big file (only the
    // hostile peer asks for it).
    let [mut a, mut b] = each(
        Cluster::pair()
            .trusts(1, &h.device_id)
            .with(1, |b| {
                b.sync.insert("chunk_size", "4MiB".into());
            })
            .configured(),
    );
    a.write(".syncignore", b"big.bin\n");
    b.write("big.bin", &random_bytes(160 << 20, 3));
    a.start();
    b.start();
    let mut conn = h.connect(&b);
    conn.hello();
    assert!(
        conn.pump(Duration::from_secs(30), |c| c.announced.get("big.bin").is_some_and(|f| !f.chunks.is_empty())),
        "B never announced big.bin"
    );
    let mut chunks = conn.announced["big.bin"].chunks.clone();
    chunks.sort_by_key(|c| std::cmp::Reverse(c.size));
    let largest = chunks[0].size;
    let pid = b.pid().unwrap();
    // The scan of big.bin had its own peak; what counts is the peak from here on.
    let (scan_peak, _) = memory_kib(pid);
    reset_peak(pid);
    let (before, _) = memory_kib(pid);

    // 48 requests for B's largest chunks, whose answers we never read; and one over the limit.
    for id in 0..48u64 {
        let c = &chunks[id as usize % chunks.len().min(8)];
        conn.request(proto::ChunkRequest {
            id,
            folder: "default".into(),
            path: "big.bin".into(),
            offset: c.offset,
            size: c.size,
            hash: c.hash.clone(),
            signature: vec![],
        });
    }
    conn.request(proto::ChunkRequest {
        id: 99,
        folder: "default".into(),
        path: "big.bin".into(),
        offset: 0,
        size: (16 << 20) + 1,
        hash: vec![0; 32],
        signature: vec![],
    });
    // Meanwhile the honest peer's change still arrives.
    let started = Instant::now();
    a.write("honest.txt", b"an honest change");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read(b.path("honest.txt"))
            .is_ok_and(|d| d == b"an honest change")),
        "A's change never reached B"
    );
    let latency = started.elapsed();
    // Give B time to do its worst with the requests it holds.
    let label = peer_label(&h.device_id);
    let counted = wait_until(Duration::from_secs(10), || {
        b.metric("syncnode_peer_refused_requests_total", &label).unwrap_or(0) >= 1
    });
    let mut peak = before;
    wait_until(Duration::from_secs(4), || {
        peak = memory_kib(pid).0;
        false
    });
    eprintln!(
        "unread chunk requests: 48 x up to {} MiB; B's RSS {} MiB before (peak of its startup scan {} MiB), peak {} MiB after; honest change arrived in {latency:?}",
        largest >> 20,
        before / MIB,
        scan_peak / MIB,
        peak / MIB
    );
    assert!(counted, "the oversized request was not counted");
    // The serving budget is 32 MiB per connection, plus what the transport holds of one answer.
    assert!(peak < before + 96 * MIB, "B's peak RSS grew from {before} KiB to {peak} KiB");
    assert!(b.log_text().contains("refused a chunk request"));
    assert_eq!(b.stop(), Some(0));
    a.stop();
}

#[test]
fn a_counter_at_u64_max_is_refused_and_honest_edits_still_win() {
    let h = HostilePeer::new();
    let [mut a, mut b] = each(Cluster::pair().trusts(1, &h.device_id).start());
    a.write("f.txt", b"version one");
    assert!(wait_until(Duration::from_secs(15), || std::fs::read(b.path("f.txt")).is_ok_and(|d| d == b"version one")));
    let mut conn = h.connect(&b);
    conn.hello();
    assert!(conn.pump(Duration::from_secs(10), |c| c.announced.contains_key("f.txt")));
    // A version that has seen B's and whose own counter is at u64::MAX: it would win now, and
    // (saturated) it would win against every later honest edit too.
    let mut version: Vec<(u64, u64)> =
        conn.announced["f.txt"].version.as_ref().unwrap().counters.iter().map(|c| (c.id, c.value)).collect();
    version.insert(0, (short_id(&h.device_id), u64::MAX));
    let (record, chunks) = file_record("f.txt", b"hostile content", 8, &version, 1, 0o644);
    conn.serve(chunks);
    conn.send_index(vec![record]);
    let reason = conn.wait_closed(Duration::from_secs(10)).expect("B cuts the peer off");
    assert!(reason.contains("near overflow"), "{reason}");
    // The honest peer's next edit still wins, promptly.
    std::thread::sleep(Duration::from_millis(1100)); // a new mtime second for the edit
    let started = Instant::now();
    a.write("f.txt", b"version two, honest");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read(b.path("f.txt"))
            .is_ok_and(|d| d == b"version two, honest")),
        "A's edit never won on B"
    );
    eprintln!("counter at u64::MAX: refused ({reason}); A's next edit reached B in {:?}", started.elapsed());
    assert!(!b.log_text().contains("hostile content"));
    assert!(b.metric("syncnode_peer_refused_records_total", &peer_label(&h.device_id)).unwrap_or(0) >= 1);
    assert_eq!(b.stop(), Some(0));
    a.stop();
}

#[test]
fn garbage_and_refused_requests_are_logged_counted_and_cut_off() {
    let garbage_peer = HostilePeer::new();
    let h = HostilePeer::new();
    let mut b = node_trusting("b", &[&garbage_peer, &h]);
    b.start();
    assert!(wait_until(Duration::from_secs(10), || b.log_text().contains("node starting")));

    // Bytes that are not HTTP/2, straight after a successful TLS handshake.
    garbage_peer.send_garbage(&b, &random_bytes(4096, 11));
    let g = peer_label(&garbage_peer.device_id);
    assert!(
        wait_until(Duration::from_secs(10), || b.metric("syncnode_peer_protocol_violations_total", &g).unwrap_or(0)
            >= 1),
        "garbage not counted"
    );
    let prefix = &garbage_peer.device_id[..7];
    assert!(
        b.log_text().lines().any(|l| l.contains("garbage after the TLS handshake") && l.contains(prefix)),
        "garbage not logged with the peer:\n{}",
        b.log_text()
    );

    // A chunk request over the size limit: refused, logged once with the peer, counted.
    let mut conn = h.connect(&b);
    conn.hello();
    conn.serve(Default::default());
    // The control and data streams are not ordered with each other: ask only once B took the Hello.
    assert!(h.hello_taken(&b, Duration::from_secs(10)));
    for id in 0..3 {
        conn.request(proto::ChunkRequest {
            id,
            folder: "default".into(),
            path: "x".into(),
            offset: 0,
            size: 64 << 20,
            hash: vec![0; 32],
            signature: vec![],
        });
        let r = conn.response(Duration::from_secs(10)).expect("an answer");
        assert_eq!(r.code(), proto::ChunkError::Invalid, "{r:?}");
        assert!(r.error.contains("chunk size"), "{r:?}");
    }
    let label = peer_label(&h.device_id);
    assert_eq!(b.metric("syncnode_peer_refused_requests_total", &label), Some(3));
    assert_eq!(b.log_text().matches("refused a chunk request (further ones").count(), 1);

    // Then a message that means nothing: a protocol violation, and the peer is cut off.
    conn.send_raw_control(proto::ControlMessage { kind: None });
    let reason = conn.wait_closed(Duration::from_secs(10)).expect("B cuts the peer off");
    assert!(reason.contains("empty control message"), "{reason}");
    assert!(wait_until(Duration::from_secs(5), || b
        .metric("syncnode_peer_protocol_violations_total", &label)
        .unwrap_or(0)
        >= 1));
    assert!(b.log_text().lines().any(|l| l.contains("protocol violation") && l.contains(&h.device_id[..7])));
    // Coming straight back does not work: its connection is refused until the backoff ends.
    let mut again = h.connect(&b);
    again.hello();
    assert!(
        again.wait_closed(Duration::from_secs(5)).is_some(),
        "a peer that broke the protocol was let back in at once"
    );
    assert!(b.log_text().contains("refused until its backoff ends"));

    // A Hello offering one folder twice (each offer would start a sender of our whole index).
    let twice = HostilePeer::new();
    b.stop();
    b.trust_id(&twice.device_id);
    b.start();
    let mut conn = twice.connect(&b);
    let offer =
        proto::FolderOffer { id: "default".into(), your_index_id: 0, your_max_sequence: 0, receive_only: false };
    let hello = proto::Hello {
        protocol_version: syncnode::net::PROTOCOL_VERSION,
        device_name: "twice".into(),
        folders: vec![offer; 1000],
    };
    conn.send_raw_control(proto::ControlMessage { kind: Some(proto::control_message::Kind::Hello(hello)) });
    let reason = conn.wait_closed(Duration::from_secs(10)).expect("B cuts the peer off");
    assert!(reason.contains("offered twice"), "{reason}");
    assert_eq!(b.stop(), Some(0));
}

#[test]
fn setuid_setgid_and_sticky_bits_from_a_peer_are_not_applied() {
    let h = HostilePeer::new();
    let mut b = node_trusting("b", &[&h]);
    b.start();
    let mut conn = h.connect(&b);
    conn.hello();
    let me = short_id(&h.device_id);
    let (file, chunks) = file_record("tool.sh", b"#!/bin/sh\necho hi\n", 8, &[(me, 1)], 1, 0o6755);
    let dir = proto::FileInfo {
        path: "shared".into(),
        kind: proto::FileKind::Directory as i32,
        permissions: 0o1777,
        version: file.version.clone(),
        sequence: 2,
        modified_by: me,
        ..Default::default()
    };
    conn.serve(chunks);
    conn.send_index(vec![file, dir]);
    assert!(
        wait_until(Duration::from_secs(10), || b.path("tool.sh").exists() && b.path("shared").is_dir()),
        "B never pulled the records"
    );
    let mode = |p: &str| std::fs::metadata(b.path(p)).unwrap().permissions().mode() & 0o7777;
    assert!(wait_until(Duration::from_secs(5), || mode("shared") == 0o777));
    assert_eq!(mode("tool.sh"), 0o755);
    // And B's own record of it (announced back) carries no such bits either.
    assert!(conn.pump(Duration::from_secs(10), |c| c.announced.get("tool.sh").is_some_and(|f| f.sequence > 0)));
    assert_eq!(conn.announced["tool.sh"].permissions & 0o7000, 0);
    assert_eq!(b.stop(), Some(0));
}
