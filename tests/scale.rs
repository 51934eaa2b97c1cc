//! A tree larger than the Puller's window: 20,000 files wait in the index, ordered for the pull,
//! and the Puller never holds more than its bounded window of them in memory (4096), whatever the
//! size of the tree. One peer has at most its need budget (1024, `core::need_budget`) in the pull
//! queue at once; the rest of its files are held in the index and all of them still arrive. The
//! index exchange goes in bounded batches (`/metrics` counts them). A tree with more directories
//! than the kernel lets a user watch still syncs. A pulled file is not looked at again for its own
//! rename into place. Not timed: speed at scale is measured by `benches/scale.py`.

mod common;

use std::time::Duration;

use common::*;

const FILES: usize = 20_000;
const PER_DIR: usize = 100;
const WINDOW: u64 = 4096;
/// The most records a node puts in one index message.
const SENT_BATCH: u64 = syncnode::net::serve::INDEX_BATCH as u64;

#[test]
fn twenty_thousand_files_pass_through_a_bounded_window() {
    let mut nodes = Cluster::pair()
        .with(0, |a| {
            for i in 0..FILES {
                a.write(&format!("d{:03}/f{i:05}", i / PER_DIR), format!("file number {i}").as_bytes());
            }
        })
        .start();
    let (a, b) = (&nodes[0], &nodes[1]);
    let entries = FILES + FILES / PER_DIR;
    let held_peak = std::cell::Cell::new(0u64);
    let held_label = peer_label(&a.device_id);
    let (done, f) = b.folder_until("default", Duration::from_secs(300), |f| {
        let held = b.metric("syncnode_peer_needs_held", &held_label).unwrap_or(0);
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
    // A's index reached B in bounded batches: many messages, none over the sender's batch.
    let batches = b.metric("syncnode_peer_index_batches_total", &held_label).unwrap_or(0);
    let largest = b.metric("syncnode_peer_index_batch_max", &held_label).unwrap_or(0);
    assert!(largest > 0 && largest <= SENT_BATCH, "largest index message: {largest} records");
    assert!(batches >= (entries as u64).div_ceil(SENT_BATCH), "{entries} records in {batches} index messages");
    // A pulled file is neither read back nor looked at again for the watcher's event of its own
    // rename into place: B's scans looked at the directories it made, not at the files.
    let f = b.folder_status("default").unwrap();
    assert_eq!(f["hashed_files"], 0, "{f}");
    assert!(f["looked_paths"].as_u64().is_some_and(|n| n < (FILES / 10) as u64), "{f}");

    // A read and hashed each of its files once, at its first scan; restarted on the unchanged tree
    // with its index intact, it reads none of them again.
    let f = a.folder_status("default").unwrap();
    assert_eq!(f["hashed_files"], FILES as u64, "{f}");
    let a = &mut nodes[0];
    a.stop();
    a.start();
    let (done, f) = a.folder_until("default", Duration::from_secs(120), |f| {
        f["full_scans"].as_u64() >= Some(1) && f["state"] == "idle"
    });
    assert!(done, "A did not finish its first scan after the restart: {f}");
    assert_eq!((&f["hashed_files"], &f["local_files"]), (&0.into(), &(entries as u64).into()), "{f}");
}

/// Directories in the tree of the watch-limit test, and the inotify watches its node may have.
const DIRS: usize = 120;
const WATCHES: usize = 40;

#[test]
fn a_tree_with_more_directories_than_the_inotify_limit_still_syncs() {
    // The limit is set in a user namespace of the node's own (`/proc/sys/user/max_inotify_watches`
    // is per namespace), so nothing else on the machine is affected.
    let unshare = std::process::Command::new("unshare").args(["-U", "-r", "true"]).status();
    if !unshare.is_ok_and(|s| s.success()) {
        return skip(
            "a_tree_with_more_directories_than_the_inotify_limit_still_syncs",
            "no user namespaces (unshare -U)",
        );
    }
    let nodes = Cluster::pair()
        .with(0, |a| {
            for d in 0..DIRS {
                a.write(&format!("d{d:03}/f"), format!("file in directory {d}").as_bytes());
            }
            a.runner = ["unshare", "-U", "-r", "sh", "-c"]
                .into_iter()
                .map(String::from)
                .chain([format!("echo {WATCHES} > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\"")])
                .collect();
            // A rescan every 2 s covers the directories past the limit.
            a.sync.insert("rescan_interval", "2s".into());
        })
        .start();
    let (a, b) = (&nodes[0], &nodes[1]);
    assert!(converged(&[a, b], Duration::from_secs(60), |t| t.len() == 2 * DIRS), "{}", describe(&[a, b]));
    // Changes in a directory past the limit, and in a new directory, arrive too.
    a.write(&format!("d{:03}/late", DIRS - 1), b"written after the start");
    a.write("new-dir/inside", b"a directory made after the start");
    assert!(converged(&[a, b], Duration::from_secs(60), |t| t.len() == 2 * DIRS + 3), "{}", describe(&[a, b]));
    let log = a.log_text();
    let warnings: Vec<&str> =
        log.lines().filter(|l| l.contains("WARN") && l.contains("fs.inotify.max_user_watches")).collect();
    assert_eq!(warnings.len(), 1, "one warning naming the sysctl, got: {warnings:#?}");
}
