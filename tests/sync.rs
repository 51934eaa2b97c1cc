//! Two-way sync between real nodes: every file operation a user makes reaches the peers, byte for
//! byte, with mtime and the executable bit.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

#[test]
fn every_file_operation_reaches_the_peer() {
    let nodes = pair();
    let (a, b) = (&nodes[0], &nodes[1]);

    // create: nested dirs, an empty dir, a zero-byte file, an executable
    a.write("docs/notes/todo.txt", b"buy milk\n");
    a.write("empty.bin", b"");
    std::fs::create_dir_all(a.path("nothing/here")).unwrap();
    a.write("run.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(a.path("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(converged(&[a, b], T, |t| t.len() == 7), "create did not converge:\n{}", describe(&[a, b]));
    assert!(std::fs::metadata(b.path("run.sh")).unwrap().permissions().mode() & 0o111 != 0);

    // modify, append, truncate
    a.write("docs/notes/todo.txt", b"buy oat milk\n");
    std::fs::OpenOptions::new().append(true).open(a.path("empty.bin")).unwrap();
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(a.path("run.sh")).unwrap().write_all(b"echo more\n").unwrap();
    assert!(
        converged(&[a, b], T, |t| matches!(t.get("run.sh"), Some(Entry::File { size: 28, .. }))),
        "{}",
        describe(&[a, b])
    );
    std::fs::OpenOptions::new().write(true).open(a.path("run.sh")).unwrap().set_len(4).unwrap();
    assert!(converged(&[a, b], T, |t| matches!(t.get("run.sh"), Some(Entry::File { size: 4, .. }))));
    assert_eq!(std::fs::read(b.path("docs/notes/todo.txt")).unwrap(), b"buy oat milk\n");

    // rename a file, move it to another dir, rename a whole directory, delete
    std::fs::rename(a.path("empty.bin"), a.path("still-empty.bin")).unwrap();
    std::fs::rename(a.path("run.sh"), a.path("nothing/run.sh")).unwrap();
    std::fs::rename(a.path("docs"), a.path("papers")).unwrap();
    assert!(
        converged(&[a, b], T, |t| t.contains_key("papers/notes/todo.txt")
            && t.contains_key("nothing/run.sh")
            && !t.contains_key("docs")),
        "{}",
        describe(&[a, b])
    );
    std::fs::remove_dir_all(a.path("papers")).unwrap();
    std::fs::remove_file(a.path("still-empty.bin")).unwrap();
    assert!(
        converged(&[a, b], T, |t| !t.contains_key("papers") && !t.contains_key("still-empty.bin")),
        "{}",
        describe(&[a, b])
    );
}

#[test]
fn changes_flow_both_ways_and_keep_mtimes() {
    let nodes = pair();
    let (a, b) = (&nodes[0], &nodes[1]);
    a.write("from-a.txt", b"a");
    b.write("sub/from-b.txt", b"b");
    let old = filetime::FileTime::from_unix_time(1_500_000_000, 0);
    filetime::set_file_mtime(a.path("from-a.txt"), old).unwrap();
    assert!(
        converged(&[a, b], T, |t| t.len() == 3
            && matches!(t.get("from-a.txt"), Some(Entry::File { mtime: 1_500_000_000, .. }))),
        "{}",
        describe(&[a, b])
    );
    // No echo: once converged, neither side keeps producing versions. A pull is counted just
    // after its file is in place, so the counters are read once both folders are idle.
    let idle = |n: &Node| n.folder_status("default").is_some_and(|f| f["state"] == "idle");
    assert!(wait_until(T, || idle(a) && idle(b)), "{:?} {:?}", a.folder_status("default"), b.folder_status("default"));
    let pulls = |n: &Node| n.folder_status("default").and_then(|f| f["pulls"].as_u64());
    let (pa, pb) = (pulls(a).unwrap(), pulls(b).unwrap());
    b.write("sub/from-b.txt", b"b2");
    assert!(converged(&[a, b], T, |t| matches!(t.get("sub/from-b.txt"), Some(Entry::File { size: 2, .. }))));
    assert!(wait_until(T, || pulls(a) == Some(pa + 1)), "{:?}", a.folder_status("default"));
    assert_eq!(pulls(b), Some(pb), "b pulled its own change back:\n{}", b.log_text());
}

#[test]
fn a_large_file_arrives_whole_and_never_half_written() {
    let nodes = pair();
    let (a, b) = (&nodes[0], &nodes[1]);
    let data = random_bytes(300 << 20, 42);
    // Written beside the folder and moved in, so every version A announces is the whole file.
    let staging = a.dir.join("big.staging");
    std::fs::write(&staging, &data).unwrap();
    std::fs::rename(&staging, a.path("big.bin")).unwrap();
    // While it travels, the real name holds either nothing or the complete file.
    let mut seen_partial = false;
    let done = wait_until(Duration::from_secs(120), || {
        match std::fs::metadata(b.path("big.bin")) {
            Ok(m) if m.len() != data.len() as u64 => seen_partial = true,
            Ok(_) => return true,
            Err(_) => {}
        }
        false
    });
    assert!(done, "big file did not arrive:\n{}", b.log_text());
    assert!(!seen_partial);
    assert!(converged(&[a, b], T, |_| true));
}

#[test]
fn a_file_being_written_is_announced_once_when_its_writer_is_done() {
    let nodes = pair();
    let (a, b) = (&nodes[0], &nodes[1]);
    // A slow writer: 48 pieces of 64 KiB, 5 ms apart (the folder's debounce is 20 ms), so the file
    // grows for about a quarter of a second.
    let data = random_bytes(48 << 16, 11);
    {
        use std::io::Write;
        let mut file = std::fs::File::create(a.path("growing.bin")).unwrap();
        for piece in data.chunks(1 << 16) {
            file.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(
        converged(
            &[a, b],
            T,
            |t| matches!(t.get("growing.bin"), Some(Entry::File { size, .. }) if *size == data.len() as u64)
        ),
        "{}",
        describe(&[a, b])
    );
    assert_eq!(std::fs::read(b.path("growing.bin")).unwrap(), data);
    // Each partial state hashed would be a version of its own (and a pull for the peer). A writer
    // stalled for more than the debounce by a busy machine may add one or two; not one per piece.
    let versions =
        a.log_text().lines().filter(|l| l.contains("local change") && l.contains("path=growing.bin")).count();
    assert!((1..=3).contains(&versions), "{versions} versions of a file written once:\n{}", a.log_text());
}

/// A node started while a file is being written: its first full scan meets the file half-written
/// and leaves it until it settles (the Watcher hands it back when the writer closes it), so the
/// peer only ever sees the whole file, and keeps no half of it as a replaced version.
#[test]
fn a_file_being_written_while_the_node_starts_arrives_whole_never_in_part() {
    use std::io::Write;
    let [mut a, mut b] = each(Cluster::pair().configured());
    let piece = random_bytes(64 << 10, 7);
    let pieces = 12;
    let whole: Vec<u8> = piece.iter().copied().cycle().take(piece.len() * pieces).collect();
    let mut file = std::fs::File::create(a.path("growing.bin")).unwrap();
    file.write_all(&piece).unwrap();
    let writer = std::thread::spawn(move || {
        // A slow writer (a download, a copy from a slow disk): a piece every 150 ms, then the close.
        for _ in 1..pieces {
            std::thread::sleep(Duration::from_millis(150));
            file.write_all(&piece).unwrap();
        }
    });
    b.start();
    a.start();
    let mut sizes_seen = std::collections::BTreeSet::new();
    let arrived = wait_until(T, || match std::fs::read(b.path("growing.bin")) {
        Ok(data) => {
            sizes_seen.insert(data.len());
            data == whole
        }
        Err(_) => false,
    });
    writer.join().unwrap();
    assert!(arrived, "the file never arrived whole on B:\n{}\n{}", a.log_text(), b.log_text());
    assert_eq!(sizes_seen.into_iter().collect::<Vec<_>>(), vec![whole.len()], "B saw the file in part");
    let kept = walkdir::WalkDir::new(b.path(".syncnode-versions"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .count();
    assert_eq!(kept, 0, "B kept a replaced part of the file as a version");
}
