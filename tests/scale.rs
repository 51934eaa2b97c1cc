//! A tree larger than the Puller's window: 20,000 files wait in the index, ordered for the pull,
//! and the Puller never holds more than its bounded window of them in memory (4096), whatever the
//! size of the tree. One peer has at most its need budget (1024, `core::need_budget`) in the pull
//! queue at once; the rest of its files are held in the index and all of them still arrive. Not
//! timed: speed at scale is measured by `benches/scale.py`.

mod common;

use std::time::Duration;

use common::*;

const FILES: usize = 20_000;
const PER_DIR: usize = 100;
const WINDOW: u64 = 4096;

#[test]
fn twenty_thousand_files_pass_through_a_bounded_window() {
    let mut nodes = vec![Node::new("a"), Node::new("b")];
    for i in 0..FILES {
        nodes[0].write(&format!("d{:03}/f{i:05}", i / PER_DIR), format!("file number {i}").as_bytes());
    }
    connect(&mut nodes, &[(0, 1)]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let entries = FILES + FILES / PER_DIR;
    let held_peak = std::cell::Cell::new(0u64);
    let held_label = format!("syncnode_peer_needs_held{{peer=\"{}\"}} ", a.device_id);
    let (done, f) = b.folder_until("default", Duration::from_secs(300), |f| {
        let held = b.metrics().lines().find_map(|l| l.strip_prefix(&held_label)?.trim().parse().ok()).unwrap_or(0);
        held_peak.set(held_peak.get().max(held));
        f["local_files"] == entries as u64 && f["need_files"] == 0
    });
    assert!(done, "B did not get every file: {f}");
    assert!(converged(&[a, b], Duration::from_secs(60), |t| t.len() == entries), "{}", describe(&[a, b]));
    let peak = f["need_window_peak"].as_u64().unwrap();
    // The window was used and never grew past its bound; what one peer had beyond its need
    // budget waited in the index (held), and arrived all the same.
    assert!(peak > 0 && peak <= WINDOW, "{f}");
    assert!(
        b.metrics().contains(&format!("syncnode_folder_need_window_peak{{folder=\"default\"}} {peak}")),
        "{}",
        b.metrics()
    );
    assert!(held_peak.get() > 0, "nothing was ever held: the need budget was not exercised");
    assert_eq!(f["need_window"], 0, "{f}");
}
