//! Versioning with real nodes: what a peer deletes or replaces is kept on the receiving side (a
//! hard link into `.syncnode-versions/`, never a copy), listed and restored with
//! `syncnode versions`, and a restore syncs back to every peer.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn list_json(node: &Node, file: Option<&str>) -> Vec<Value> {
    let mut args = vec!["versions", "list", "--json"];
    args.extend(file);
    let (code, out, err) = node.cli(&args);
    assert_eq!(code, 0, "versions list failed: {err}");
    serde_json::from_str::<Vec<Value>>(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Regular files under the store, by path relative to it.
fn store_files(node: &Node) -> BTreeMap<String, PathBuf> {
    let store = node.folder.join(".syncnode-versions");
    walkdir::WalkDir::new(&store)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().strip_prefix(&store).unwrap().to_string_lossy().to_string(), e.path().to_path_buf()))
        .collect()
}

/// A sample of folder `default` in the node's /metrics.
fn metric(node: &Node, name: &str) -> Option<u64> {
    node.metric(name, "folder=\"default\"")
}

#[test]
fn a_delete_on_a_is_restorable_on_b_and_the_restore_reaches_a() {
    let nodes = pair();
    let (a, b) = (&nodes[0], &nodes[1]);
    a.write("docs/plan.txt", b"the plan, first draft\n");
    assert!(converged(&[a, b], T, |t| t.contains_key("docs/plan.txt")), "{}", describe(&[a, b]));

    std::fs::remove_file(a.path("docs/plan.txt")).unwrap();
    assert!(converged(&[a, b], T, |t| !t.contains_key("docs/plan.txt")), "{}", describe(&[a, b]));
    // The store is local: B holds the version, A (which deleted it itself) holds none.
    let listed = list_json(b, Some("docs/plan.txt"));
    assert_eq!(listed.len(), 1, "{listed:?}");
    let v = &listed[0];
    assert_eq!(
        (v["folder"].as_str(), v["path"].as_str(), v["reason"].as_str()),
        (Some("default"), Some("docs/plan.txt"), Some("deleted"))
    );
    assert_eq!(v["size"].as_u64(), Some(22));
    assert_eq!(v["by"].as_str(), Some(&a.device_id[..7]), "the deleting peer");
    assert!(list_json(a, None).is_empty());
    assert!(wait_until(T, || metric(b, "syncnode_versions_files") == Some(1)));
    assert_eq!(metric(b, "syncnode_versions_bytes"), Some(22));
    // The table names it too.
    let (code, out, err) = b.cli(&["versions", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("docs/plan.txt") && out.contains("deleted") && out.contains(&a.device_id[..7]), "{out}");

    let (code, out, err) = b.cli(&["versions", "restore", "--folder", "default", "docs/plan.txt"]);
    assert_eq!(code, 0, "restore failed: {err}");
    assert!(out.contains("restored docs/plan.txt"), "{out}");
    assert!(converged(&[a, b], T, |t| t.contains_key("docs/plan.txt")), "{}", describe(&[a, b]));
    assert_eq!(std::fs::read(a.path("docs/plan.txt")).unwrap(), b"the plan, first draft\n");
    assert!(list_json(b, None).is_empty(), "a restored version leaves the store");
    // Nothing left to restore: a clear failure, exit 1.
    let (code, _, err) = b.cli(&["versions", "restore", "--folder", "default", "docs/plan.txt"]);
    assert_eq!(code, 1);
    assert!(err.contains("no kept version of `docs/plan.txt`"), "{err}");
    let (code, _, err) = b.cli(&["versions", "restore", "--folder", "nope", "x"]);
    assert_eq!(code, 2, "{err}");
}

/// The ransomware drill: every file rewritten on A; B keeps each previous version, as the very
/// inode it had (a link, no copy), and `--at` restores one of them.
#[test]
fn a_thousand_files_rewritten_on_a_leave_every_old_version_on_b_without_a_copy() {
    const N: usize = 1000;
    let nodes = pair();
    let (a, b) = (&nodes[0], &nodes[1]);
    let name = |i: usize| format!("d{}/file-{i:04}.txt", i % 10);
    let old = |i: usize| format!("original content of file {i}\n").into_bytes();
    // Each file appears whole (written beside the folder, renamed in): a scan that met a file
    // half-written (the node's first full scan runs while the files are written) would announce an
    // empty first version, and B would rightly keep that too when the whole file replaced it.
    let scratch = a.dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    for i in 0..N {
        let tmp = scratch.join(format!("{i}"));
        std::fs::write(&tmp, old(i)).unwrap();
        std::fs::create_dir_all(a.path(&name(i)).parent().unwrap()).unwrap();
        std::fs::rename(&tmp, a.path(&name(i))).unwrap();
    }
    assert!(converged(&[a, b], Duration::from_secs(120), |t| t.len() == N + 10), "{}", describe(&[a, b]));
    let inodes: HashMap<String, u64> =
        (0..N).map(|i| (name(i), std::fs::metadata(b.path(&name(i))).unwrap().ino())).collect();

    // Each file is replaced whole (written beside the folder, renamed over the original), the way
    // an encrypting program leaves it, so A announces exactly one new version of each.
    let started = std::time::Instant::now();
    for i in 0..N {
        let tmp = scratch.join(format!("{i}"));
        std::fs::write(&tmp, format!("ENCRYPTED {i:04} {}\n", "x".repeat(i % 50))).unwrap();
        std::fs::rename(&tmp, a.path(&name(i))).unwrap();
    }
    assert!(
        converged(&[a, b], Duration::from_secs(120), |t| (0..N)
            .all(|i| matches!(t.get(&name(i)), Some(Entry::File { size, .. }) if *size == 16 + (i % 50) as u64))),
        "{}",
        describe(&[a, b])
    );

    eprintln!("{N} files rewritten on A and replaced on B (each kept) in {:?}", started.elapsed());
    let stored = store_files(b);
    assert_eq!(stored.len(), N, "one version per rewritten file");
    let listed = list_json(b, None);
    assert_eq!(listed.len(), N);
    let mut seen = 0;
    for v in &listed {
        let path = v["path"].as_str().unwrap();
        assert_eq!(v["reason"].as_str(), Some("replaced"));
        assert_eq!(v["by"].as_str(), Some(&a.device_id[..7]));
        let file = &stored[v["stored"].as_str().unwrap()];
        assert_eq!(
            std::fs::metadata(file).unwrap().ino(),
            inodes[path],
            "{path}: the version is the old inode, not a copy"
        );
        let i: usize = path[path.len() - 8..path.len() - 4].parse().unwrap();
        assert_eq!(std::fs::read(file).unwrap(), old(i));
        seen += 1;
    }
    assert_eq!(seen, N);
    // Newest first.
    assert!(listed.windows(2).all(|w| w[0]["time_ms"].as_u64() >= w[1]["time_ms"].as_u64()));
    assert!(wait_until(T, || metric(b, "syncnode_versions_files") == Some(N as u64)));

    // Restoring one at its listed time puts the original back on both nodes; the encrypted file
    // that was there is kept as a conflict copy (a restore never overwrites a changed file).
    let pick = listed.iter().find(|v| v["path"].as_str() == Some(&name(7))).unwrap();
    let (code, out, err) =
        b.cli(&["versions", "restore", "--folder", "default", &name(7), "--at", pick["time"].as_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sync-conflict"), "{out}");
    assert!(
        converged(
            &[a, b],
            T,
            |t| matches!(t.get(&name(7)), Some(Entry::File { size, .. }) if *size == old(7).len() as u64)
                && t.len() == N + 11
        ),
        "{}",
        describe(&[a, b])
    );
    assert_eq!(std::fs::read(a.path(&name(7))).unwrap(), old(7));
}

#[test]
fn without_versioning_nothing_is_kept() {
    let nodes = Cluster::pair().folder_keys(1, "versioning = \"none\"").start();
    let (a, b) = (&nodes[0], &nodes[1]);
    a.write("x.txt", b"x");
    assert!(converged(&[a, b], T, |t| t.contains_key("x.txt")));
    a.write("x.txt", b"xy");
    assert!(converged(&[a, b], T, |t| matches!(t.get("x.txt"), Some(Entry::File { size: 2, .. }))));
    std::fs::remove_file(a.path("x.txt")).unwrap();
    assert!(converged(&[a, b], T, |t| t.is_empty()));
    assert!(!b.folder.join(".syncnode-versions").exists());
    assert!(list_json(b, None).is_empty());
}

/// A node killed while it replaces files loses no old version: each one is at its path or in the
/// store at every moment, and after the restart every original is in the store.
#[test]
fn a_kill_in_the_middle_of_replacing_loses_no_old_version() {
    const N: usize = 300;
    let mut nodes = pair();
    let name = |i: usize| format!("f{i:03}.bin");
    for i in 0..N {
        nodes[0].write(&name(i), &random_bytes(20_000, i as u64 + 1));
    }
    assert!(
        converged(&[&nodes[0], &nodes[1]], Duration::from_secs(120), |t| t.len() == N),
        "{}",
        describe(&[&nodes[0], &nodes[1]])
    );
    let originals: Vec<[u8; 32]> =
        (0..N).map(|i| *blake3::hash(&random_bytes(20_000, i as u64 + 1)).as_bytes()).collect();

    let pulled = |n: &Node| n.folder_status("default").map_or(0, |f| f["pulls"].as_u64().unwrap_or(0));
    let before = pulled(&nodes[1]);
    let scratch = nodes[0].dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    for i in 0..N {
        std::fs::write(scratch.join("t"), random_bytes(20_000, 1000 + i as u64)).unwrap();
        std::fs::rename(scratch.join("t"), nodes[0].path(&name(i))).unwrap();
    }
    // Kill B once it has replaced some, not all.
    assert!(wait_until(T, || pulled(&nodes[1]) > before + 20));
    nodes[1].kill();
    nodes[1].start();
    let new: Vec<[u8; 32]> = (0..N).map(|i| *blake3::hash(&random_bytes(20_000, 1000 + i as u64)).as_bytes()).collect();
    assert!(
        converged(&[&nodes[0], &nodes[1]], Duration::from_secs(120), |t| (0..N)
            .all(|i| matches!(t.get(&name(i)), Some(Entry::File { hash, .. }) if *hash == new[i]))),
        "{}",
        describe(&[&nodes[0], &nodes[1]])
    );
    let kept: std::collections::HashSet<[u8; 32]> =
        store_files(&nodes[1]).values().map(|p| *blake3::hash(&std::fs::read(p).unwrap()).as_bytes()).collect();
    let lost: Vec<String> = (0..N).filter(|&i| !kept.contains(&originals[i])).map(name).collect();
    assert!(lost.is_empty(), "old versions lost: {lost:?}");
}

#[test]
fn a_bad_versioning_setting_is_a_config_error_naming_the_key() {
    let mut node = Node::new("a");
    let cfg = node.config.to_str().unwrap().to_string();
    for (keys, key) in [
        ("versioning = \"weekly\"", "folder[0].versioning.type"),
        ("versioning = { type = \"simple\", keep = 0 }", "folder[0].versioning.keep"),
        ("versioning = { type = \"trash\", max_age = \"a while\" }", "folder[0].versioning.max_age"),
        ("versioning = { type = \"trash\", colour = \"red\" }", "folder.versioning.colour"),
        ("versioning = { path = \"sync/old\" }", "folder[0].versioning.path"),
    ] {
        node.folder_keys = keys.to_string();
        node.write_config();
        let (code, _, err) = node.cli(&[]);
        assert_eq!(code, 2, "{keys}: {err}");
        assert!(err.contains(&cfg) && err.contains(key), "{keys}: {err}");
    }
    // A store outside the folder on the same filesystem is fine.
    node.folder_keys = "versioning = { type = \"staggered\", max_size = \"1GiB\", path = \"versions\" }".into();
    node.write_config();
    let (code, out, err) = node.cli(&["versions", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no versions kept"), "{out}");
}

fn status_of(node: &Node, field: &str) -> Option<u64> {
    node.folder_status("default")?[field].as_u64()
}

fn changes_json(node: &Node) -> Vec<Value> {
    let (code, out, err) = node.cli(&["changes", "--json"]);
    assert_eq!(code, 0, "changes failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// A receive-only node's own edits are shown as local changes (never sent), and `revert` gives
/// the paths back to the cluster, keeping the local files in the version store.
#[test]
fn a_receive_only_nodes_local_edit_is_listed_and_reverted() {
    let nodes = Cluster::pair().folder_keys(1, "mode = \"receive-only\"").start();
    let (a, b) = (&nodes[0], &nodes[1]);
    a.write("doc.txt", b"cluster version\n");
    assert!(converged(&[a, b], T, |t| t.contains_key("doc.txt")), "{}", describe(&[a, b]));

    b.write("doc.txt", b"edited on the receive-only node\n");
    b.write("extra.txt", b"added there\n");
    assert!(wait_until(T, || status_of(b, "local_changes") == Some(2)), "B never counted its local changes");
    let listed = changes_json(b);
    let paths: Vec<(&str, &str, bool)> = listed
        .iter()
        .map(|c| (c["path"].as_str().unwrap(), c["side"].as_str().unwrap(), c["deleted"].as_bool().unwrap()))
        .collect();
    assert_eq!(paths, vec![("doc.txt", "local", false), ("extra.txt", "local", false)]);
    assert_eq!(
        std::fs::read(a.path("doc.txt")).unwrap(),
        b"cluster version\n",
        "a receive-only node announced its edit"
    );
    assert!(!a.path("extra.txt").exists());

    let (code, out, err) = b.cli(&["revert", "--folder", "default"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("reverted 2"), "{out}");
    assert!(
        converged(&[a, b], T, |t| t.len() == 1 && matches!(t.get("doc.txt"), Some(Entry::File { size: 16, .. }))),
        "{}",
        describe(&[a, b])
    );
    assert_eq!(std::fs::read(b.path("doc.txt")).unwrap(), b"cluster version\n");
    assert!(wait_until(T, || status_of(b, "local_changes") == Some(0)));
    // The local edits are not lost: they are versions now.
    let kept = list_json(b, None);
    let mut reverted: Vec<(&str, u64)> = kept
        .iter()
        .filter(|v| v["reason"] == "reverted")
        .map(|v| (v["path"].as_str().unwrap(), v["size"].as_u64().unwrap()))
        .collect();
    reverted.sort();
    assert_eq!(reverted, vec![("doc.txt", 32), ("extra.txt", 12)]);
    // revert is for receive-only folders only.
    let (code, _, err) = a.cli(&["revert", "--folder", "default"]);
    assert_eq!(code, 1);
    assert!(err.contains("not receive-only"), "{err}");
}

/// A send-only node shows what peers changed and it did not take, and `override` makes its own
/// state win on every peer (which keep what they lose as versions).
#[test]
fn a_send_only_override_wins_on_every_peer() {
    let nodes = Cluster::pair().folder_keys(0, "mode = \"send-only\"").start();
    let (a, b) = (&nodes[0], &nodes[1]);
    a.write("settings.ini", b"golden\n");
    a.write("keep.txt", b"untouched\n");
    assert!(converged(&[a, b], T, |t| t.len() == 2), "{}", describe(&[a, b]));

    b.write("settings.ini", b"tampered with\n");
    b.write("junk.txt", b"junk\n");
    std::fs::remove_file(b.path("keep.txt")).unwrap();
    assert!(
        wait_until(T, || status_of(a, "remote_changes") == Some(3)),
        "A never counted the peer's changes: {:?}",
        changes_json(a)
    );
    let listed = changes_json(a);
    let paths: Vec<(&str, &str, bool)> = listed
        .iter()
        .map(|c| (c["path"].as_str().unwrap(), c["side"].as_str().unwrap(), c["deleted"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        paths,
        vec![("junk.txt", "remote", false), ("keep.txt", "remote", true), ("settings.ini", "remote", false)]
    );
    assert_eq!(std::fs::read(a.path("settings.ini")).unwrap(), b"golden\n", "a send-only node took a peer's change");

    let (code, out, err) = a.cli(&["override", "--folder", "default"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("re-issued 3"), "{out}");
    assert!(
        converged(&[a, b], T, |t| t.len() == 2
            && matches!(t.get("settings.ini"), Some(Entry::File { size: 7, .. }))
            && t.contains_key("keep.txt")),
        "{}",
        describe(&[a, b])
    );
    assert_eq!(std::fs::read(b.path("settings.ini")).unwrap(), b"golden\n");
    assert!(wait_until(T, || status_of(a, "remote_changes") == Some(0)), "{:?}", changes_json(a));
    // What B lost is kept there.
    let kept = list_json(b, None);
    let mut lost: Vec<(&str, &str)> =
        kept.iter().map(|v| (v["path"].as_str().unwrap(), v["reason"].as_str().unwrap())).collect();
    lost.sort();
    assert_eq!(lost, vec![("junk.txt", "deleted"), ("settings.ini", "replaced")]);
}

/// Without a running node, `versions list` and `restore` work on the store directly; the restored
/// file is found by the node's startup scan and syncs then.
#[test]
fn versions_work_without_a_running_node() {
    let mut nodes = pair();
    nodes[0].write("letter.txt", b"dear peer\n");
    assert!(
        converged(&[&nodes[0], &nodes[1]], T, |t| t.contains_key("letter.txt")),
        "{}",
        describe(&[&nodes[0], &nodes[1]])
    );
    std::fs::remove_file(nodes[0].path("letter.txt")).unwrap();
    assert!(converged(&[&nodes[0], &nodes[1]], T, |t| t.is_empty()), "{}", describe(&[&nodes[0], &nodes[1]]));
    assert!(wait_until(T, || list_json(&nodes[1], None).len() == 1));
    assert_eq!(nodes[1].stop(), Some(0));

    let listed = list_json(&nodes[1], Some("letter.txt"));
    assert_eq!(listed.len(), 1);
    let (code, out, err) = nodes[1].cli(&["versions", "restore", "--folder", "default", "letter.txt"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored letter.txt") && err.contains("no node is running"), "{out} {err}");
    assert_eq!(std::fs::read(nodes[1].path("letter.txt")).unwrap(), b"dear peer\n");
    nodes[1].start();
    assert!(
        converged(&[&nodes[0], &nodes[1]], T, |t| t.contains_key("letter.txt")),
        "{}",
        describe(&[&nodes[0], &nodes[1]])
    );
}

/// Past `max_size`, the oldest versions go first, within seconds of the store growing past it.
#[test]
fn a_size_cap_keeps_the_newest_versions() {
    let nodes = Cluster::pair().folder_keys(1, "versioning = { type = \"trash\", max_size = \"25KiB\" }").start();
    let (a, b) = (&nodes[0], &nodes[1]);
    let name = |i: usize| format!("f{i}.bin");
    for i in 0..5 {
        a.write(&name(i), &random_bytes(10_000, i as u64 + 7));
    }
    assert!(converged(&[a, b], T, |t| t.len() == 5), "{}", describe(&[a, b]));
    for i in 0..5 {
        std::fs::remove_file(a.path(&name(i))).unwrap();
        assert!(converged(&[a, b], T, |t| !t.contains_key(&name(i))), "{}", describe(&[a, b]));
    }
    let mut left = Vec::new();
    let trimmed = wait_until(T, || {
        left = list_json(b, None).iter().map(|v| v["path"].as_str().unwrap().to_string()).collect();
        left == [name(4), name(3)]
    });
    assert!(trimmed, "the store kept {left:?}");
    assert!(wait_until(T, || metric(b, "syncnode_versions_bytes") == Some(20_000)));
}
