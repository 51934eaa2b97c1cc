//! Any number of peers, restarts and refusals: three nodes in a line, a node restarted with changes
//! made while it was down, a receiver killed mid-transfer, and a stranger refused at the handshake.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

#[test]
fn a_change_crosses_a_line_of_three_nodes_both_ways() {
    let nodes = line(3);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    a.write("x/from-a.txt", b"hello from a");
    c.write("from-c.txt", b"hello from c");
    assert!(converged(&[a, b, c], T, |t| t.len() == 3), "{}", describe(&[a, b, c]));
    std::fs::remove_file(a.path("from-c.txt")).unwrap();
    std::fs::rename(c.path("x"), c.path("y")).unwrap();
    assert!(converged(&[a, b, c], T, |t| t.len() == 2 && t.contains_key("y/from-a.txt")), "{}", describe(&[a, b, c]));
}

#[test]
fn changes_made_while_a_node_was_down_are_found_and_exchanged() {
    let mut nodes = pair();
    nodes[0].write("keep.txt", b"1");
    nodes[0].write("gone.txt", b"2");
    nodes[0].write("edit.txt", b"3");
    assert!(converged(&[&nodes[0], &nodes[1]], T, |t| t.len() == 3));

    assert_eq!(nodes[1].stop(), Some(0), "clean stop exits 0");
    nodes[1].write("edit.txt", b"edited offline");
    std::fs::remove_file(nodes[1].path("gone.txt")).unwrap();
    nodes[1].write("new-offline.txt", b"4");
    nodes[0].write("new-online.txt", b"5");
    nodes[1].start();
    let (a, b) = (&nodes[0], &nodes[1]);
    assert!(
        converged(&[a, b], T, |t| t.len() == 4
            && !t.contains_key("gone.txt")
            && matches!(t.get("edit.txt"), Some(Entry::File { size: 14, .. }))),
        "{}",
        describe(&[a, b])
    );
    // The restart resumed from the index: an unchanged file was not pulled again.
    let pulls = b.log_text().lines().filter(|l| l.contains("pulled") && l.contains("path=keep.txt")).count();
    assert_eq!(pulls, 1, "{}", b.log_text());
}

#[test]
fn a_receiver_killed_mid_transfer_finishes_after_restart() {
    let mut nodes = pair();
    let data = random_bytes(200 << 20, 7);
    let staging = nodes[0].dir.join("big.staging");
    std::fs::write(&staging, &data).unwrap();
    std::fs::rename(&staging, nodes[0].path("big.bin")).unwrap();
    // Kill b as soon as its temp file exists.
    let temps = |n: &Node| {
        std::fs::read_dir(&n.folder)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".syncnode-tmp-"))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(60), || temps(&nodes[1]) > 0),
        "transfer never started:\n{}",
        nodes[1].log_text()
    );
    nodes[1].kill();
    assert!(!nodes[1].path("big.bin").exists(), "a partial file is visible under its real name");
    nodes[1].start();
    let (a, b) = (&nodes[0], &nodes[1]);
    assert!(converged(&[a, b], Duration::from_secs(120), |t| t.contains_key("big.bin")), "{}", b.log_text());
    assert_eq!(temps(b), 0, "temp file left behind");
}

#[test]
fn a_peer_with_an_unknown_certificate_is_refused_at_the_handshake() {
    let mut a = Node::new("a");
    let mut stranger = Node::new("stranger");
    // The stranger knows a's ID and address; a does not trust it.
    stranger.trust(&a);
    a.start();
    stranger.start();
    stranger.write("intrusion.txt", b"let me in");
    assert!(wait_until(T, || a.log_text().contains("refused connection at the TLS handshake")), "{}", a.log_text());
    assert!(!a.path("intrusion.txt").exists());
    assert!(!a.log_text().contains("peer connected"));
}
