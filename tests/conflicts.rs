//! Never lose a byte: concurrent edits keep both versions on every node, an edit beats a delete it
//! did not see, rapid rewrites converge without conflict storms.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn conflict_copies(t: &std::collections::BTreeMap<String, Entry>) -> Vec<String> {
    t.keys().filter(|k| k.contains(".sync-conflict-")).cloned().collect()
}

fn set_mtime(n: &Node, rel: &str, secs: i64) {
    filetime::set_file_mtime(n.path(rel), filetime::FileTime::from_unix_time(secs, 0)).unwrap();
}

#[test]
fn concurrent_edits_keep_both_versions_on_every_node() {
    let mut nodes = pair();
    nodes[0].write("notes.txt", b"original");
    assert!(converged(&[&nodes[0], &nodes[1]], T, |t| t.len() == 1));
    nodes[1].stop();
    nodes[0].write("notes.txt", b"alice's edit");
    set_mtime(&nodes[0], "notes.txt", 1_700_000_000);
    nodes[1].write("notes.txt", b"bob's longer edit");
    set_mtime(&nodes[1], "notes.txt", 1_700_000_100);
    nodes[1].start();
    let (a, b) = (&nodes[0], &nodes[1]);
    assert!(converged(&[a, b], T, |t| t.len() == 2), "{}", describe(&[a, b]));
    // The newer edit wins the name; the other is kept beside it, named after its time and content.
    assert_eq!(std::fs::read(a.path("notes.txt")).unwrap(), b"bob's longer edit");
    let copies = conflict_copies(&tree(&a.folder));
    assert_eq!(copies.len(), 1);
    assert!(copies[0].starts_with("notes.sync-conflict-20231114-221320-") && copies[0].ends_with(".txt"), "{copies:?}");
    let id = copies[0].trim_start_matches("notes.sync-conflict-20231114-221320-").trim_end_matches(".txt");
    assert!(id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()), "a content id: {copies:?}");
    assert_eq!(std::fs::read(a.path(&copies[0])).unwrap(), b"alice's edit");
}

#[test]
fn an_edit_survives_a_delete_that_did_not_see_it() {
    let mut nodes = pair();
    nodes[0].write("keep-me.txt", b"v1");
    assert!(converged(&[&nodes[0], &nodes[1]], T, |t| t.len() == 1));
    nodes[1].stop();
    std::fs::remove_file(nodes[0].path("keep-me.txt")).unwrap();
    nodes[1].write("keep-me.txt", b"v2, edited offline");
    nodes[1].start();
    let (a, b) = (&nodes[0], &nodes[1]);
    assert!(
        converged(&[a, b], T, |t| matches!(t.get("keep-me.txt"), Some(Entry::File { size: 18, .. }))),
        "{}",
        describe(&[a, b])
    );
    // And a delete that had seen the edit does win.
    std::fs::remove_file(b.path("keep-me.txt")).unwrap();
    assert!(converged(&[a, b], T, |t| t.is_empty()), "{}", describe(&[a, b]));
}

#[test]
fn a_file_and_a_directory_of_one_name_both_survive() {
    let mut nodes = pair();
    nodes[1].stop();
    nodes[0].write("thing", b"a file");
    set_mtime(&nodes[0], "thing", 1_700_000_000);
    nodes[1].write("thing/inside.txt", b"a file in a directory");
    nodes[1].start();
    let (a, b) = (&nodes[0], &nodes[1]);
    assert!(
        converged(&[a, b], T, |t| {
            let copies = conflict_copies(t);
            t.values().any(|e| matches!(e, Entry::File { size: 6, .. }))
                && t.values().any(|e| matches!(e, Entry::File { size: 21, .. }))
                && copies.len() == 1
        }),
        "{}",
        describe(&[a, b])
    );
}

#[test]
fn rapid_rewrites_and_editor_saves_converge_without_conflicts() {
    let nodes = pair();
    let (a, b) = (&nodes[0], &nodes[1]);
    for i in 0..200 {
        a.write("hot.txt", format!("version {i}").as_bytes());
    }
    // An editor saving through a temp file and a rename, a few times.
    for i in 0..20 {
        a.write(".hot.txt.swp", format!("saved {i}").as_bytes());
        std::fs::rename(a.path(".hot.txt.swp"), a.path("doc.txt")).unwrap();
    }
    b.write("other.txt", b"meanwhile on b");
    assert!(
        converged(&[a, b], T, |t| {
            t.len() == 3
                && std::fs::read(a.path("hot.txt")).ok().as_deref() == Some(&b"version 199"[..])
                && std::fs::read(a.path("doc.txt")).ok().as_deref() == Some(&b"saved 19"[..])
        }),
        "{}",
        describe(&[a, b])
    );
    assert!(conflict_copies(&tree(&a.folder)).is_empty());
}
