//! Folder modes and `.syncignore`, on real nodes. A receive-only folder takes its peers' changes
//! but announces nothing, so its own files stay home, and a local edit that a newer remote version
//! supersedes is kept beside it as a conflict copy (the index decides as for any concurrent edit,
//! see src/core/decide.rs; the copy then stays home too). A send-only folder applies nothing from
//! its peers. Paths matching `.syncignore` are neither sent, nor deleted, nor overwritten; the file
//! itself is never synced, and editing it while the node runs takes effect at once.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(30);
/// How long a node is watched for something that must not happen. Index updates and pulls on
/// 127.0.0.1 take milliseconds; this is the bounded stand-in for "never".
const QUIET: Duration = Duration::from_secs(5);

/// Two nodes trusting each other, folder `default` in the given modes, started.
fn pair_in_modes(mode_a: &str, mode_b: &str) -> Vec<Node> {
    Cluster::pair()
        .folder_keys(0, &format!("mode = \"{mode_a}\""))
        .folder_keys(1, &format!("mode = \"{mode_b}\""))
        .start()
}

/// `n`'s tree stays exactly `before` for `QUIET`, polled.
fn stays_unchanged(n: &Node, before: &BTreeMap<String, Entry>) -> Result<(), String> {
    let deadline = Instant::now() + QUIET;
    while Instant::now() < deadline {
        let now = tree(&n.folder);
        if &now != before {
            return Err(format!(
                "{} changed: had {:?}, now {:?}",
                n.name,
                before.keys().collect::<Vec<_>>(),
                now.keys().collect::<Vec<_>>()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn read(n: &Node, rel: &str) -> Vec<u8> {
    std::fs::read(n.path(rel)).unwrap_or_default()
}

fn has(n: &Node, rel: &str, data: &[u8]) -> bool {
    std::fs::read(n.path(rel)).is_ok_and(|d| d == data)
}

fn folder_u64(n: &Node, key: &str) -> u64 {
    n.folder_status("default").map_or(0, |f| f[key].as_u64().unwrap_or(0))
}

/// Waits until `n`'s index holds `bytes` bytes of live files: its scan has recorded a change.
fn indexed(n: &Node, bytes: u64) -> bool {
    n.folder_until("default", T, |f| f["local_bytes"] == bytes).0
}

/// What `a` has received from its one peer so far, in bytes (index updates included).
fn bytes_in(a: &Node) -> u64 {
    a.status().map_or(0, |s| s["peers"][0]["bytes_in"].as_u64().unwrap_or(0))
}

/// Writes `rel` with mtime `secs` in one step (staged outside the folder, then renamed in), so
/// no scan records it with the time of the write.
fn write_at(n: &Node, rel: &str, data: &[u8], secs: i64) {
    let staging = n.dir.join("staging");
    std::fs::write(&staging, data).unwrap();
    filetime::set_file_mtime(&staging, filetime::FileTime::from_unix_time(secs, 0)).unwrap();
    std::fs::rename(&staging, n.path(rel)).unwrap();
}

#[test]
fn a_receive_only_node_keeps_its_own_files_home_and_still_takes_the_peers_changes() {
    let nodes = pair_in_modes("send-receive", "receive-only");
    let (a, b) = (&nodes[0], &nodes[1]);
    a.write("from-a.txt", b"hello from a");
    assert!(wait_until(T, || has(b, "from-a.txt", b"hello from a")), "{}", describe(&[a, b]));

    b.write("mine.txt", b"b's own file");
    b.write("own-dir/deep.txt", b"b's own deep file");
    // b has indexed its own files (12 + 12 + 17 bytes): they are in its index, not on a.
    assert!(indexed(b, 41), "{:?}", b.folder_status("default"));
    // The peer's changes still arrive after that: an edit and a new file.
    a.write("from-a.txt", b"hello again from a");
    a.write("x/new.txt", b"new on a");
    assert!(
        wait_until(T, || has(b, "from-a.txt", b"hello again from a") && has(b, "x/new.txt", b"new on a")),
        "{}",
        describe(&[a, b])
    );

    let on_a = tree(&a.folder);
    assert_eq!(on_a.keys().collect::<Vec<_>>(), ["from-a.txt", "x", "x/new.txt"]);
    stays_unchanged(a, &on_a).unwrap();
    assert!(
        has(b, "mine.txt", b"b's own file") && has(b, "own-dir/deep.txt", b"b's own deep file"),
        "{}",
        describe(&[a, b])
    );
    assert_eq!(folder_u64(a, "pulls"), 0, "a pulled nothing from the receive-only node");
}

#[test]
fn a_receive_only_nodes_local_edit_superseded_by_a_newer_remote_version_is_kept_as_a_conflict_copy() {
    let nodes = pair_in_modes("send-receive", "receive-only");
    let (a, b) = (&nodes[0], &nodes[1]);
    a.write("notes.txt", b"original");
    assert!(converged(&[a, b], T, |t| t.len() == 1), "{}", describe(&[a, b]));

    // b edits locally; the edit is never announced, so a's next edit is concurrent with it (not a
    // descendant), and the index settles it as any concurrent edit: the newer mtime wins the name
    // and b's edit is moved aside as a conflict copy (ConflictLocalLoses), never thrown away.
    write_at(b, "notes.txt", b"b's local edit", 1_700_000_000);
    assert!(indexed(b, 14), "{:?}", b.folder_status("default"));
    write_at(a, "notes.txt", b"a's newer edit, later", 1_700_000_100);

    let copy_of = |n: &Node| tree(&n.folder).into_keys().find(|k| k.contains(".sync-conflict-"));
    assert!(
        wait_until(T, || has(b, "notes.txt", b"a's newer edit, later") && copy_of(b).is_some()),
        "{}",
        describe(&[a, b])
    );
    let copy = copy_of(b).unwrap();
    assert!(copy.starts_with("notes.sync-conflict-20231114-221320-") && copy.ends_with(".txt"), "{copy}");
    let id = copy.trim_start_matches("notes.sync-conflict-20231114-221320-").trim_end_matches(".txt");
    assert!(id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()), "named after the loser's content: {copy}");
    assert_eq!(read(b, &copy), b"b's local edit");
    assert_eq!(folder_u64(b, "conflicts"), 1);
    // The copy is one of b's own files: it stays home too.
    let on_a = tree(&a.folder);
    assert_eq!(on_a.keys().collect::<Vec<_>>(), ["notes.txt"]);
    stays_unchanged(a, &on_a).unwrap();
    assert_eq!(tree(&b.folder).len(), 2, "{}", describe(&[a, b]));
}

#[test]
fn a_send_only_node_applies_nothing_from_its_peer_and_still_sends_its_own_changes() {
    let nodes = pair_in_modes("send-only", "send-receive");
    let (a, b) = (&nodes[0], &nodes[1]);
    a.write("shared.txt", b"a's shared file");
    a.write("other.txt", b"another of a's files");
    a.write("dir/x.txt", b"x");
    assert!(converged(&[a, b], T, |t| t.len() == 4), "{}", describe(&[a, b]));
    let before = tree(&a.folder);

    // b makes a new file, edits one and deletes one; b's index then holds 11 + 12 + 1 bytes.
    let received = bytes_in(a);
    b.write("shared.txt", b"b's edit!!!");
    std::fs::remove_file(b.path("other.txt")).unwrap();
    b.write("from-b.txt", b"new on b, 12");
    assert!(indexed(b, 11 + 12 + 1), "{:?}", b.folder_status("default"));
    // b's index update reached a (a received more than before), and a changes nothing.
    assert!(wait_until(T, || bytes_in(a) > received), "a received nothing from b");
    stays_unchanged(a, &before).unwrap();
    assert_eq!(folder_u64(a, "pulls"), 0, "a pulled nothing");

    // a's own changes still reach b: a new file and an edit.
    a.write("later.txt", b"a's later file");
    a.write("dir/x.txt", b"x, edited on a");
    assert!(
        wait_until(T, || has(b, "later.txt", b"a's later file") && has(b, "dir/x.txt", b"x, edited on a")),
        "{}",
        describe(&[a, b])
    );
    assert!(
        has(a, "shared.txt", b"a's shared file")
            && has(a, "other.txt", b"another of a's files")
            && !a.path("from-b.txt").exists()
    );
}

#[test]
fn ignored_files_and_directories_are_neither_sent_nor_deleted_and_the_ignore_file_stays_home() {
    let nodes = Cluster::pair()
        // Each node's own rules, worded differently: neither copy travels.
        .files(
            0,
            &[
                (".syncignore", b"*.log\nbuild/\n"),
                ("app.log", b"a's log"),
                ("build/out.bin", b"a's build output"),
                ("src/main.rs", b"fn main() {}"),
            ],
        )
        .files(
            1,
            &[
                (".syncignore", b"# b's rules\n*.log\nbuild/\n"),
                ("app.log", b"b's own log, longer"),
                ("build/keep.o", b"b's object"),
            ],
        )
        .start();
    let (a, b) = (&nodes[0], &nodes[1]);
    assert!(wait_until(T, || has(b, "src/main.rs", b"fn main() {}")), "{}", describe(&[a, b]));
    let on_a = tree(&a.folder);
    let on_b = tree(&b.folder);
    assert_eq!(
        on_b.keys().collect::<Vec<_>>(),
        [".syncignore", "app.log", "build", "build/keep.o", "src", "src/main.rs"]
    );
    stays_unchanged(b, &on_b).unwrap();
    assert_eq!(tree(&a.folder), on_a, "nothing of b's ignored files reached a");
    assert_eq!(read(b, "app.log"), b"b's own log, longer");
    assert_eq!(read(b, ".syncignore"), b"# b's rules\n*.log\nbuild/\n");

    // a deletes its ignored file and directory, and a synced file: only the synced delete travels.
    std::fs::remove_file(a.path("app.log")).unwrap();
    std::fs::remove_dir_all(a.path("build")).unwrap();
    std::fs::remove_file(a.path("src/main.rs")).unwrap();
    assert!(wait_until(T, || !b.path("src/main.rs").exists()), "{}", describe(&[a, b]));
    let on_b = tree(&b.folder);
    assert!(on_b.contains_key("app.log") && on_b.contains_key("build/keep.o"), "{}", describe(&[a, b]));
    stays_unchanged(b, &on_b).unwrap();
    assert_eq!(read(a, ".syncignore"), b"*.log\nbuild/\n");
}

#[test]
fn editing_the_ignore_file_while_running_takes_effect_at_once() {
    let nodes = Cluster::pair()
        .files(
            0,
            &[
                (".syncignore", b"secret.txt\n"),
                ("secret.txt", b"not yet"),
                ("old.tmp", b"synced while not ignored"),
                ("gone.tmp", b"also synced"),
                ("plain.txt", b"plain"),
            ],
        )
        .start();
    let (a, b) = (&nodes[0], &nodes[1]);
    assert!(converged(&[b], T, |t| t.len() == 3), "{}", describe(&[a, b]));
    assert!(!b.path("secret.txt").exists() && !b.path(".syncignore").exists(), "{}", describe(&[a, b]));

    // The pattern is removed and another added. The file ignored before is sent well before the
    // periodic rescan (1 min in the harness's config) could find it.
    let changed = Instant::now();
    a.write(".syncignore", b"*.tmp\n");
    assert!(wait_until(Duration::from_secs(20), || has(b, "secret.txt", b"not yet")), "{}", describe(&[a, b]));
    eprintln!("un-ignored file arrived {:?} after the edit of .syncignore", changed.elapsed());

    // Newly ignored: an edit, a new file and a delete stay on a. A plain file written after
    // them shows that a's changes are flowing.
    a.write("old.tmp", b"edited while ignored");
    a.write("new.tmp", b"new while ignored");
    std::fs::remove_file(a.path("gone.tmp")).unwrap();
    a.write("plain.txt", b"plain, edited");
    assert!(wait_until(T, || has(b, "plain.txt", b"plain, edited")), "{}", describe(&[a, b]));
    let on_b = tree(&b.folder);
    assert_eq!(on_b.keys().collect::<Vec<_>>(), ["gone.tmp", "old.tmp", "plain.txt", "secret.txt"]);
    stays_unchanged(b, &on_b).unwrap();
    assert_eq!(read(b, "old.tmp"), b"synced while not ignored");
}

#[test]
fn a_pattern_removed_on_the_receiver_lets_the_peers_file_in() {
    let nodes = Cluster::pair()
        .files(1, &[(".syncignore", b"*.log\n")])
        .files(0, &[("app.log", b"a's log"), ("plain.txt", b"plain")])
        .start();
    let (a, b) = (&nodes[0], &nodes[1]);
    assert!(wait_until(T, || has(b, "plain.txt", b"plain")), "{}", describe(&[a, b]));
    let on_b = tree(&b.folder);
    stays_unchanged(b, &on_b).unwrap();
    assert!(!b.path("app.log").exists());

    // What a announced while b ignored it is pulled as soon as b's rules allow it.
    b.write(".syncignore", b"# nothing ignored\n");
    assert!(wait_until(Duration::from_secs(20), || has(b, "app.log", b"a's log")), "{}", describe(&[a, b]));
    assert!(!a.path(".syncignore").exists());
}
