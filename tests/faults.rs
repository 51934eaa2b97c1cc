//! Real-world faults lose nothing. A folder whose disk is unplugged (a loop-mounted ext4 lazily
//! unmounted), whose root is renamed away or replaced by an empty directory, or whose files all
//! vanish at once stops in state `error` and sends no delete; it resumes by itself when the same
//! root returns, and only the documented `syncnode confirm` turns the missing files into deletes.
//! A receiver whose disk is too small for an incoming file backs off instead of downloading it
//! again and again, shows the path's error, leaves no temp file, and converges once space is
//! freed. Ordinary mass deletes (a branch switch) are not held. A file the sender cannot read is
//! reported per path and skipped, never announced as deleted.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(30);
/// How long a stopped folder's peer is watched for any change (the bound).
const QUIET: Duration = Duration::from_secs(20);

/// Two connected nodes holding the same 12 files in 3 directories, and B's tree.
fn synced_pair_of_12_files() -> (Vec<Node>, BTreeMap<String, Entry>) {
    let nodes = pair();
    write_files(&nodes[0], 12);
    assert!(converged(&[&nodes[0], &nodes[1]], T, |t| t.len() == 15), "{}", describe(&[&nodes[0], &nodes[1]]));
    let before = tree(&nodes[1].folder);
    (nodes, before)
}

fn write_files(node: &Node, n: usize) {
    for i in 0..n {
        node.write(&format!("d{}/f{i}.txt", i % 3), format!("file {i}").as_bytes());
    }
}

/// `b`'s tree stays exactly `before` for `QUIET`, polled; returns a description if it changed.
fn stays_unchanged(b: &Node, before: &BTreeMap<String, Entry>) -> Result<(), String> {
    let deadline = Instant::now() + QUIET;
    while Instant::now() < deadline {
        let now = tree(&b.folder);
        if &now != before {
            return Err(format!(
                "{} changed: had {} entries, now {}: {:?}",
                b.name,
                before.len(),
                now.len(),
                now.keys().collect::<Vec<_>>()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// `a`'s folder is stopped with `reason`, `b` keeps `before` for `QUIET`; then `syncnode confirm`
/// on `a` lets the deletes through, and both end empty.
fn held_until_confirmed(a: &Node, b: &Node, before: &BTreeMap<String, Entry>, reason: &str) {
    let (held, f) = a.folder_until("default", T, |f| state(f) == "error");
    assert!(held && error_text(&f).contains(reason), "{f}");
    stays_unchanged(b, before).unwrap();
    let (code, out, err) = a.cli(&["confirm", "--folder", "default"]);
    assert_eq!(code, 0, "confirm failed: {out} {err}");
    assert!(converged(&[a, b], T, |t| t.is_empty()), "{}", describe(&[a, b]));
    assert!(a.folder_until("default", T, |f| state(f) == "idle").0);
}

fn state(f: &serde_json::Value) -> &str {
    f["state"].as_str().unwrap_or_default()
}

fn error_text(f: &serde_json::Value) -> String {
    f["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn an_unplugged_disk_stops_the_folder_and_resumes_when_it_is_plugged_back() {
    if !require_root("an_unplugged_disk_stops_the_folder_and_resumes_when_it_is_plugged_back") {
        return;
    }
    let cluster = Cluster::pair();
    let disk = Disk::mount(&cluster.nodes[0].folder, 32);
    let nodes = cluster.start();
    let (a, b) = (&nodes[0], &nodes[1]);
    write_files(a, 30);
    assert!(converged(&[a, b], T, |t| t.len() == 33), "{}", describe(&[a, b]));
    let before = tree(&b.folder);
    let pulls_before = a.folder_status("default").unwrap()["pulls"].as_u64().unwrap();

    disk.unplug();
    let (stopped, f) = a.folder_until("default", T, |f| state(f) == "error");
    assert!(stopped, "A's folder never went to error: {f}");
    assert!(error_text(&f).contains("another filesystem"), "{f}");
    assert!(a.metrics().lines().any(|l| l == "syncnode_folder_error{folder=\"default\"} 1"), "{}", a.metrics());
    let (code, out, _) = a.cli(&["status"]);
    assert!(code == 0 && out.contains("error") && out.contains("another filesystem"), "{out}");
    stays_unchanged(b, &before).unwrap();
    let warnings = a.log_text().lines().filter(|l| l.contains("folder stopped")).count();
    assert_eq!(warnings, 1, "one WARN line, not one per check:\n{}", a.log_text());

    disk.remount();
    let (resumed, f) = a.folder_until("default", T, |f| state(f) == "idle");
    assert!(resumed, "A did not resume: {f}");
    // The watcher is back: a new file arrives without waiting for the periodic rescan (1 min).
    let started = Instant::now();
    a.write("after.txt", b"written after the disk came back");
    assert!(
        converged(&[a, b], Duration::from_secs(10), |t| t.contains_key("after.txt") && t.len() == 34),
        "{}",
        describe(&[a, b])
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let pulls_after = a.folder_status("default").unwrap()["pulls"].as_u64().unwrap();
    assert_eq!(pulls_before, pulls_after, "nothing that was still there was downloaded again");
}

#[test]
fn a_root_renamed_away_stops_the_folder_until_it_returns() {
    let (nodes, before) = synced_pair_of_12_files();
    let (a, b) = (&nodes[0], &nodes[1]);

    let away = a.dir.join("sync-away");
    std::fs::rename(&a.folder, &away).unwrap();
    let (stopped, f) = a.folder_until("default", T, |f| state(f) == "error");
    assert!(stopped && error_text(&f).contains("does not exist"), "{f}");
    stays_unchanged(b, &before).unwrap();
    assert!(!a.log_text().contains("local delete"), "{}", a.log_text());

    std::fs::rename(&away, &a.folder).unwrap();
    assert!(a.folder_until("default", T, |f| state(f) == "idle").0);
    a.write("back.txt", b"the root is back");
    assert!(converged(&[a, b], Duration::from_secs(10), |t| t.len() == 16), "{}", describe(&[a, b]));
}

#[test]
fn a_root_replaced_by_an_empty_directory_is_held_until_the_user_confirms_it() {
    let (nodes, before) = synced_pair_of_12_files();
    let (a, b) = (&nodes[0], &nodes[1]);

    std::fs::rename(&a.folder, a.dir.join("old-sync")).unwrap();
    std::fs::create_dir(&a.folder).unwrap();
    held_until_confirmed(a, b, &before, "replaced");
}

#[test]
fn a_folder_emptied_by_rm_is_held_and_a_branch_switch_is_not() {
    let nodes = pair();
    let (a, b) = (&nodes[0], &nodes[1]);
    for i in 0..20 {
        a.write(&format!("f{i:02}.txt"), format!("file {i}").as_bytes());
    }
    assert!(converged(&[a, b], T, |t| t.len() == 20), "{}", describe(&[a, b]));

    // A branch switch: 16 of 20 files go at once, the rest stays. Normal work, not held.
    for i in 0..16 {
        std::fs::remove_file(a.path(&format!("f{i:02}.txt"))).unwrap();
    }
    assert!(converged(&[a, b], T, |t| t.len() == 4), "{}", describe(&[a, b]));
    for i in 0..16 {
        a.write(&format!("f{i:02}.txt"), format!("file {i} again").as_bytes());
    }
    assert!(converged(&[a, b], T, |t| t.len() == 20), "{}", describe(&[a, b]));
    let before = tree(&b.folder);

    // Every file gone at once: held.
    for entry in std::fs::read_dir(&a.folder).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    held_until_confirmed(a, b, &before, "all 20 files disappeared");
}

#[test]
fn a_full_disk_backs_off_shows_the_path_and_resumes_when_space_is_freed() {
    if !require_root("a_full_disk_backs_off_shows_the_path_and_resumes_when_space_is_freed") {
        return;
    }
    let mut cluster = Cluster::pair();
    // B's folder lives on a 64 MiB disk that a 30 MiB file outside the folder shares.
    let disk = Disk::mount(&cluster.nodes[1].dir.join("disk"), 64);
    let filler = disk.dir.join("filler");
    std::fs::write(&filler, random_bytes(30 << 20, 3)).unwrap();
    std::fs::create_dir(disk.dir.join("sync")).unwrap();
    cluster.nodes[1].folder = disk.dir.join("sync");
    let nodes = cluster.start();
    let (a, b) = (&nodes[0], &nodes[1]);
    a.write("small.txt", b"fits");
    assert!(converged(&[a, b], T, |t| t.len() == 1), "{}", describe(&[a, b]));

    let big = random_bytes(48 << 20, 9);
    let staging = a.dir.join("big.staging");
    std::fs::write(&staging, &big).unwrap();
    std::fs::rename(&staging, a.path("big.bin")).unwrap();
    let (stuck, f) = b.folder_until("default", T, |f| state(f) == "error");
    assert!(stuck, "B's folder never showed the error: {f}");
    let errors = f["pull_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{f}");
    assert_eq!(errors[0]["path"], "big.bin");
    assert_eq!(errors[0]["kind"], "needs-space");
    assert!(errors[0]["reason"].as_str().unwrap().contains("not enough space"), "{f}");

    // While stuck it does not download the file again and again: the bytes it receives stay
    // far below one copy of it.
    let received = |n: &Node| n.status().unwrap()["peers"][0]["bytes_in"].as_u64().unwrap();
    let at_first = received(b);
    std::thread::sleep(Duration::from_secs(12));
    let later = received(b);
    assert!(later - at_first < 1 << 20, "B received {} bytes while the disk was full", later - at_first);
    let temps = std::fs::read_dir(&b.folder)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".syncnode-tmp-"))
        .count();
    assert_eq!(temps, 0, "no temp file is left behind");
    let f = b.folder_status("default").unwrap();
    assert!(
        f["pull_errors"][0]["attempts"].as_u64().unwrap() <= 2,
        "one attempt per backoff step (10 s, then 20 s): {f}"
    );

    // Space comes back: the pull resumes at once, not at the next backoff step.
    std::fs::remove_file(&filler).unwrap();
    assert!(converged(&[a, b], Duration::from_secs(10), |t| t.len() == 2), "{}", describe(&[a, b]));
    assert!(
        b.folder_until("default", T, |f| state(f) == "idle"
            && f["pull_errors"].as_array().is_some_and(|e| e.is_empty()))
            .0
    );

    // A file larger than the whole disk: never downloaded; deleted on the sender, the error goes.
    let staging = a.dir.join("huge.staging");
    std::fs::write(&staging, random_bytes(80 << 20, 11)).unwrap();
    let at_first = received(b);
    std::fs::rename(&staging, a.path("huge.bin")).unwrap();
    let (stuck, f) = b.folder_until("default", T, |f| {
        f["pull_errors"].as_array().is_some_and(|e| e.iter().any(|e| e["path"] == "huge.bin"))
    });
    assert!(stuck && state(&f) == "error", "{f}");
    std::fs::remove_file(a.path("huge.bin")).unwrap();
    assert!(
        b.folder_until("default", T, |f| state(f) == "idle"
            && f["pull_errors"].as_array().is_some_and(|e| e.is_empty()))
            .0
    );
    assert!(
        received(b) - at_first < 1 << 20,
        "B received {} bytes for a file it could never hold",
        received(b) - at_first
    );
    assert!(converged(&[a, b], T, |t| t.len() == 2), "{}", describe(&[a, b]));
    drop(nodes);
    drop(disk);
}

#[test]
fn an_unreadable_file_is_reported_and_skipped_never_announced_as_deleted() {
    if !require_root("an_unreadable_file_is_reported_and_skipped_never_announced_as_deleted") {
        return;
    }
    // A runs as an unprivileged user, for whom file permissions matter (root reads everything).
    const NOBODY: u32 = 65534;
    let nodes = Cluster::pair()
        .with(0, |a| {
            assert!(std::process::Command::new("chown")
                .arg("-R")
                .arg(format!("{NOBODY}:{NOBODY}"))
                .arg(&a.dir)
                .status()
                .unwrap()
                .success());
            a.run_as = Some(NOBODY);
        })
        .start();
    let (a, b) = (&nodes[0], &nodes[1]);
    a.write("open.txt", b"readable");
    a.write("secret.txt", b"version 1");
    assert!(converged(&[a, b], T, |t| t.len() == 2), "{}", describe(&[a, b]));

    // The file changes and becomes unreadable to A's node at once.
    let secret = a.path("secret.txt");
    std::fs::write(&secret, b"version 2, not readable").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let (reported, f) = a.folder_until("default", T, |f| {
        f["read_errors"].as_array().is_some_and(|e| e.iter().any(|e| e["path"] == "secret.txt"))
    });
    assert!(reported, "A never reported the unreadable file: {f}");
    assert_eq!(f["unreadable_paths"], 1, "{f}");
    assert!(a.metrics().contains("syncnode_folder_unreadable_paths{folder=\"default\"} 1"), "{}", a.metrics());
    // B keeps the last version it had: an unreadable file is not a deleted one.
    let before = tree(&b.folder);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        assert_eq!(tree(&b.folder), before, "B's folder changed while A could not read the file");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!a.log_text().contains("local delete"), "{}", a.log_text());

    // Readable again: the new version goes out and the report clears.
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    assert!(
        converged(&[a, b], T, |t| matches!(t.get("secret.txt"), Some(Entry::File { size: 23, .. }))),
        "{}",
        describe(&[a, b])
    );
    assert!(a.folder_until("default", T, |f| f["unreadable_paths"] == 0).0);
}
