//! Symlinks with real nodes: a link travels as a link (its target text) and is made as the same
//! link on the peer, whatever it points to (a file in the folder, an absolute path, nothing, or a
//! place outside the folder); nothing is ever read or written through one. Retargets and deletes
//! propagate, a deleted or replaced link is kept in the version store as the link itself, and
//! `symlinks = "ignore"` leaves links alone.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

/// Every link in the folder (the version store excluded), by path, with its target text.
fn links(root: &Path) -> BTreeMap<String, String> {
    let store = root.join(".syncnode-versions");
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| e.path() != store)
        .flatten()
        .filter(|e| e.path_is_symlink())
        .map(|e| {
            let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().to_string();
            (rel, std::fs::read_link(e.path()).unwrap().to_string_lossy().to_string())
        })
        .collect()
}

/// What a directory outside every folder holds: each entry's kind, bytes, mtime and inode. Equal
/// snapshots mean nothing there was created, removed, written or replaced.
fn snapshot(dir: &Path) -> BTreeMap<String, (bool, Vec<u8>, i64, u64)> {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
        .map(|e| {
            let meta = e.path().symlink_metadata().unwrap();
            let data = if meta.is_file() { std::fs::read(e.path()).unwrap() } else { Vec::new() };
            let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy().to_string();
            (rel, (meta.is_dir(), data, meta.mtime_nsec() + meta.mtime() * 1_000_000_000, meta.ino()))
        })
        .collect()
}

/// Whether any regular file in `root` (links not followed) holds `needle`.
fn any_file_holds(root: &Path, needle: &[u8]) -> bool {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .any(|e| std::fs::read(e.path()).is_ok_and(|d| d.windows(needle.len()).any(|w| w == needle)))
}

/// Links in the version store, by their file name in it, with their targets.
fn kept_links(node: &Node) -> BTreeMap<String, String> {
    let store = node.folder.join(".syncnode-versions");
    walkdir::WalkDir::new(&store)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| e.path_is_symlink())
        .map(|e| {
            let rel = e.path().strip_prefix(&store).unwrap().to_string_lossy().to_string();
            (rel, std::fs::read_link(e.path()).unwrap().to_string_lossy().to_string())
        })
        .collect()
}

struct Outside {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

/// A directory outside both folders with a secret file and a subdirectory.
fn outside() -> Outside {
    let tmp = tempfile::Builder::new().prefix("syncnode-outside-").tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("secret.txt"), SECRET).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/deeper.txt"), SECRET).unwrap();
    Outside { _tmp: tmp, dir }
}

const SECRET: &[u8] = b"outside the folder: never read, never announced, never written 0x5ec7e7";

#[test]
fn links_of_every_kind_arrive_as_the_same_links_and_nothing_behind_them_is_read() {
    let out = outside();
    let before = snapshot(&out.dir);
    let nodes = pair();
    let (a, b) = (&nodes[0], &nodes[1]);
    a.write("docs/readme.txt", b"inside\n");
    // From the folder's root, the outside directory is two levels up and then over.
    let up = format!("../../{}", out.dir.file_name().unwrap().to_str().unwrap());
    let made: BTreeMap<String, String> = [
        ("relative", "docs/readme.txt".to_string()),
        ("docs/up", "../relative".to_string()),
        ("absolute", out.dir.join("secret.txt").display().to_string()),
        ("dangling", "no/such/thing".to_string()),
        ("leaves", format!("{up}/secret.txt")),
        ("outdir", out.dir.display().to_string()),
        ("outdir-relative", format!("{up}/sub")),
    ]
    .into_iter()
    .map(|(p, t)| (p.to_string(), t))
    .collect();
    for (path, target) in &made {
        symlink(target, a.path(path)).unwrap();
    }
    assert!(wait_until(T, || links(&b.folder) == made), "B has {:?}\n{}", links(&b.folder), describe(&[a, b]));
    assert_eq!(links(&a.folder), made, "A's links are untouched");
    assert!(converged(&[a, b], T, |t| t.contains_key("docs/readme.txt")), "{}", describe(&[a, b]));
    // Nothing outside was read into either folder, announced (no path below a link reached
    // either node's log), or changed.
    for n in [a, b] {
        assert!(!any_file_holds(&n.folder, SECRET), "{}: outside content in the folder", n.name);
        let log = n.log_text();
        for below in ["outdir/", "outdir-relative/", "deeper.txt"] {
            assert!(!log.contains(below), "{}'s log names `{below}`:\n{log}", n.name);
        }
    }
    assert_eq!(snapshot(&out.dir), before, "the outside directory changed");

    // A retarget travels (same length, so only the target text tells).
    std::fs::remove_file(a.path("dangling")).unwrap();
    symlink("no/such/thinG", a.path("dangling")).unwrap();
    assert!(
        wait_until(T, || links(&b.folder).get("dangling").map(String::as_str) == Some("no/such/thinG")),
        "{:?}",
        links(&b.folder)
    );

    // Deleting a link deletes the link on B, not what it points to, and B keeps it.
    std::fs::remove_file(a.path("absolute")).unwrap();
    std::fs::remove_file(a.path("outdir")).unwrap();
    assert!(wait_until(T, || {
        let l = links(&b.folder);
        !l.contains_key("absolute") && !l.contains_key("outdir")
    }));
    assert_eq!(snapshot(&out.dir), before, "a deleted link took its target with it");
    let kept = kept_links(b);
    let kept_absolute: Vec<_> = kept.iter().filter(|(name, _)| name.starts_with("absolute~")).collect();
    assert_eq!(kept_absolute.len(), 1, "{kept:?}");
    assert_eq!(kept_absolute[0].1, &made["absolute"]);
    assert!(kept
        .iter()
        .any(|(name, t)| name.starts_with("outdir~") && name.contains("~deleted~") && *t == made["outdir"]));
    // The retarget replaced the old link: kept too, as the old link.
    assert!(kept
        .iter()
        .any(|(name, t)| name.starts_with("dangling~") && name.contains("~replaced~") && t == "no/such/thing"));

    // Restored on B as the same link, it travels back to A.
    let (code, stdout, err) = b.cli(&["versions", "restore", "--folder", "default", "absolute"]);
    assert_eq!(code, 0, "restore failed: {err}");
    assert!(stdout.contains("restored absolute"), "{stdout}");
    assert_eq!(std::fs::read_link(b.path("absolute")).unwrap().to_string_lossy(), made["absolute"]);
    assert!(
        wait_until(T, || std::fs::read_link(a.path("absolute")).is_ok_and(|t| t.to_string_lossy() == made["absolute"])),
        "the restored link never reached A: {:?}",
        links(&a.folder)
    );
    assert_eq!(snapshot(&out.dir), before);
    assert!(!any_file_holds(&b.folder, SECRET) && !any_file_holds(&a.folder, SECRET));
}

#[test]
fn a_file_replacing_a_link_replaces_the_link_and_never_writes_through_it() {
    let out = outside();
    let before = snapshot(&out.dir);
    let nodes = pair();
    let (a, b) = (&nodes[0], &nodes[1]);
    let target = out.dir.join("secret.txt").display().to_string();
    symlink(&target, a.path("victim")).unwrap();
    std::fs::create_dir(a.path("d")).unwrap();
    symlink(out.dir.join("sub").display().to_string(), a.path("d/dirlink")).unwrap();
    assert!(wait_until(T, || links(&b.folder).len() == 2), "{:?}", links(&b.folder));
    // On A, each link becomes a regular file (a directory, for the link to a directory) with new
    // content: B must replace its link, never write the file where the link points.
    std::fs::remove_file(a.path("victim")).unwrap();
    a.write("victim", b"a regular file now\n");
    std::fs::remove_file(a.path("d/dirlink")).unwrap();
    a.write("d/dirlink/inside.txt", b"in a real directory\n");
    assert!(
        converged(&[a, b], T, |t| t.contains_key("victim") && t.contains_key("d/dirlink/inside.txt")),
        "{}",
        describe(&[a, b])
    );
    assert!(links(&b.folder).is_empty(), "{:?}", links(&b.folder));
    assert!(std::fs::symlink_metadata(b.path("victim")).unwrap().is_file());
    assert!(std::fs::symlink_metadata(b.path("d/dirlink")).unwrap().is_dir());
    assert_eq!(snapshot(&out.dir), before, "written through a link");
    // The replaced link is in B's store, as the link.
    assert!(kept_links(b).iter().any(|(n, t)| n.starts_with("victim~") && n.contains("~replaced~") && *t == target));
    // And back: the file becomes a link again on A; B replaces its file by the link, keeping the file.
    std::fs::remove_file(a.path("victim")).unwrap();
    symlink("d/dirlink/inside.txt", a.path("victim")).unwrap();
    assert!(
        wait_until(T, || std::fs::read_link(b.path("victim")).is_ok_and(|t| t == Path::new("d/dirlink/inside.txt")))
    );
    let store = b.folder.join(".syncnode-versions");
    let kept_file = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("victim~") && e.file_type().unwrap().is_file());
    assert_eq!(std::fs::read(kept_file.expect("the replaced file is kept").path()).unwrap(), b"a regular file now\n");
    assert_eq!(snapshot(&out.dir), before);
}

#[test]
fn with_symlinks_ignore_links_are_neither_sent_nor_made_nor_written_through() {
    let out = outside();
    let before = snapshot(&out.dir);
    let secret = out.dir.join("secret.txt");
    let nodes = Cluster::pair()
        .folder_keys(1, "symlinks = \"ignore\"")
        .with(1, |b| {
            // B's own links: an ignored link to a file outside, and one to a directory outside.
            std::fs::create_dir_all(&b.folder).unwrap();
            symlink(&secret, b.path("mine")).unwrap();
            symlink(&out.dir, b.path("mydir")).unwrap();
        })
        .start();
    let (a, b) = (&nodes[0], &nodes[1]);
    symlink("elsewhere", a.path("from-a")).unwrap();
    a.write("plain.txt", b"plain\n");
    assert!(wait_until(T, || b.path("plain.txt").exists()), "{}", describe(&[a, b]));
    // A file from A at the path of B's ignored link: B refuses to write through it.
    a.write("mine", b"would overwrite the outside file through B's link\n");
    // A later change shows every earlier one was looked at.
    a.write("z-last.txt", b"last\n");
    assert!(wait_until(T, || b.path("z-last.txt").exists()), "{}", describe(&[a, b]));
    assert!(
        wait_until(T, || b.log_text().contains("refused path `mine`: it is a symlink")),
        "B never refused the file at its link:\n{}",
        b.log_text()
    );
    let expected: BTreeMap<String, String> =
        [("mine".to_string(), secret.display().to_string()), ("mydir".to_string(), out.dir.display().to_string())]
            .into();
    assert_eq!(links(&b.folder), expected, "B's links were touched, or A's link was made on B");
    assert!(!links(&a.folder).contains_key("mine") && !links(&a.folder).contains_key("mydir"));
    assert!(!a.path("mydir").exists(), "an ignored link reached A");
    assert_eq!(snapshot(&out.dir), before, "written through an ignored link");
    assert!(!any_file_holds(&a.folder, SECRET), "read through an ignored link");
}

#[test]
fn concurrent_retargets_make_a_conflict_copy_that_is_a_link_on_both_nodes() {
    let mut nodes = pair();
    symlink("one", nodes[0].path("l")).unwrap();
    assert!(wait_until(T, || links(&nodes[1].folder).get("l").map(String::as_str) == Some("one")));
    // B offline: both retarget the link, B later (its version wins, A's is kept as a copy).
    assert_eq!(nodes[1].stop(), Some(0));
    std::fs::remove_file(nodes[0].path("l")).unwrap();
    symlink("from-a", nodes[0].path("l")).unwrap();
    std::fs::remove_file(nodes[1].path("l")).unwrap();
    symlink("from-b", nodes[1].path("l")).unwrap();
    // Two links made within one clock tick share an mtime: make B's a second newer, on the link.
    let a_time = std::fs::symlink_metadata(nodes[0].path("l")).unwrap().mtime();
    let b_time = filetime::FileTime::from_unix_time(a_time + 1, 0);
    filetime::set_symlink_file_times(nodes[1].path("l"), b_time, b_time).unwrap();
    nodes[1].start();
    let (a, b) = (&nodes[0], &nodes[1]);
    let settled = |l: &BTreeMap<String, String>| {
        let copies: Vec<_> = l.iter().filter(|(p, _)| p.starts_with("l.sync-conflict-")).collect();
        l.get("l").map(String::as_str) == Some("from-b") && copies.len() == 1 && copies[0].1 == "from-a"
    };
    assert!(
        wait_until(T, || settled(&links(&a.folder)) && links(&a.folder) == links(&b.folder)),
        "A: {:?}\nB: {:?}",
        links(&a.folder),
        links(&b.folder)
    );
}
