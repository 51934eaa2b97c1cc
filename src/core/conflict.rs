//! Conflict copies: the name under which a losing version is kept. The name depends only on the
//! losing record, so every node that resolves the same conflict makes the same copy.

use chrono::{DateTime, Utc};

use super::record::{FileKind, FileRecord};

/// Hex characters of `content_id` in a conflict name.
pub const CONTENT_ID_LEN: usize = 8;

/// `<stem>.sync-conflict-<YYYYMMDD-HHMMSS>-<content id>.<ext>` beside the original: the loser's
/// mtime, for the user, and what tells losers apart, its content (`content_id`).
///
/// Names used to hold the mtime and the prefix of the device that wrote the loser. Two losing
/// versions of one path written by one device within one second then shared a name, and each node
/// numbered the second copy (`-2`, `fs::apply::free_name`) in the order it met them, so the names
/// differed between nodes and a loser could end kept twice or as a copy of a copy. And one content
/// can lose as several records by several devices (the same bytes recorded again by another
/// device's scan: after a power loss, a restore, a rename onto the path), and two nodes that each
/// lost it at once made two copies of the same bytes under two devices' names (tests/sim.rs). The
/// content id makes the name differ exactly where the losers differ, and without the device the
/// same content lost at the same mtime gets one name wherever it lost; a copy of it under another
/// second's name is found by [`same_loser`].
pub fn conflict_name(loser: &FileRecord) -> String {
    let (dir, name) = match loser.path.rsplit_once('/') {
        Some((dir, name)) => (Some(dir), name),
        None => (None, loser.path.as_str()),
    };
    // A leading dot is part of the stem (".bashrc" has no extension).
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 && loser.is_file() => (&name[..i], Some(&name[i + 1..])),
        _ => (name, None),
    };
    let when = DateTime::<Utc>::from_timestamp_nanos(loser.mtime_ns).format("%Y%m%d-%H%M%S");
    let id = content_id(loser);
    let file = match ext {
        Some(ext) => format!("{stem}.sync-conflict-{when}-{id}.{ext}"),
        None => format!("{stem}.sync-conflict-{when}-{id}"),
    };
    match dir {
        Some(dir) => format!("{dir}/{file}"),
        None => file,
    }
}

/// A short identifier of a record's content: the first `CONTENT_ID_LEN` hex characters of a
/// BLAKE3 hash over what `FileRecord::same_content` compares — the kind, the executable bit, the
/// size and the chunk list (each chunk's hash and size) of a file, the target of a link.
///
/// Why the content and not the version vector: the same loser must get the same name on every
/// node, and one loser reaches nodes as different records. A re-issue or a merge gives the same
/// content a new version, a scan of the same bytes by another device a new author, and the node
/// that keeps the copy may meet the loser under any of them. The content is what the copy holds, so it is
/// what every node agrees on; two losers with equal content are one copy's worth (`free_name`
/// finds the bytes already there and makes none). Different losers differ in their content (else
/// they were merged, not conflicting), so they get different names. Links and directories have no
/// chunks: a link's content is its target; a directory has only its kind. 8 hex characters: two
/// different losers of one path within one second share them once in 4 billion.
/// The version store's restore names a file it moves aside without hashing it (no chunk list): its
/// id covers the size alone, and its copy is made on that node only, numbered there if needed.
pub fn content_id(record: &FileRecord) -> String {
    let mut h = blake3::Hasher::new();
    let kind: u8 = match record.kind {
        FileKind::File => 0,
        FileKind::Directory => 1,
        FileKind::Symlink => 2,
    };
    h.update(&[kind]);
    match record.kind {
        FileKind::File => {
            h.update(&[u8::from(record.permissions & 0o111 != 0)]);
            h.update(&record.size.to_le_bytes());
            for c in &record.chunks {
                h.update(&c.hash);
                h.update(&c.size.to_le_bytes());
            }
        }
        FileKind::Symlink => {
            h.update(record.link_target.as_bytes());
        }
        FileKind::Directory => {}
    }
    h.finalize().to_hex()[..CONTENT_ID_LEN].to_string()
}

/// The path a conflict copy was made for, its content id and its extension (with the dot, or
/// ""), from its name: one `conflict_name` made, or a numbered variant (`-2` before the
/// extension). `None` for any other name, a copy named before names held a content id included.
fn copy_parts(name: &str) -> Option<(&str, &str, &str)> {
    const MARK: &str = ".sync-conflict-";
    let at = name.rfind(MARK)?;
    let (original, rest) = (&name[..at], &name[at + MARK.len()..]);
    let ext = rest.rfind('.').map_or("", |i| &rest[i..]);
    let fields: Vec<&str> = rest[..rest.len() - ext.len()].split('-').collect();
    // <YYYYMMDD>-<HHMMSS>-<content id>[-<n>]
    let id = match fields[..] {
        [_, _, id] => id,
        [_, _, id, n] if n.bytes().all(|b| b.is_ascii_digit()) => id,
        _ => return None,
    };
    (id.len() == CONTENT_ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some((original, id, ext))
}

/// Whether `other` is a conflict copy of the same path as `copy` holding a loser with the same
/// content id: the same content, kept already under another second's name (one content can lose
/// as several records: a `touch` to another second, say). `fs::apply::free_name` makes no second
/// copy beside such a one when its bytes are the same.
pub fn same_loser(copy: &str, other: &str) -> bool {
    match (copy_parts(copy), copy_parts(other)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::fixtures::{file, link};

    #[test]
    fn the_name_keeps_the_extension_last() {
        let loser = file("docs/report.txt", 1, &[(1, 1)], 1_700_000_000, 0);
        let name = conflict_name(&loser);
        assert!(name.starts_with("docs/report.sync-conflict-20231114-221320-"), "{name}");
        assert!(name.ends_with(&format!("-{}.txt", content_id(&loser))), "{name}");
        assert!(crate::core::path::validate(&name).is_ok());
    }

    #[test]
    fn dotfiles_and_plain_names_get_no_extension() {
        let bashrc = conflict_name(&file(".bashrc", 1, &[], 0, 0));
        assert!(bashrc.starts_with(".bashrc.sync-conflict-19700101-000000-"), "{bashrc}");
        assert!(bashrc.ends_with(&format!("-{}", content_id(&file(".bashrc", 1, &[], 0, 0)))), "{bashrc}");
        assert!(conflict_name(&file("Makefile", 1, &[], 0, 0)).starts_with("Makefile.sync-conflict-19700101-000000-"));
    }

    #[test]
    fn two_losers_of_one_device_in_one_second_get_two_names() {
        // The same path, device and second; another content (the old names were equal).
        let a = file("x.txt", 1, &[(1, 1)], 100, 1);
        let mut b = file("x.txt", 2, &[(1, 2)], 100, 1);
        b.mtime_ns += 400_000_000;
        assert_ne!(conflict_name(&a), conflict_name(&b));
        // Links: another target.
        assert_ne!(
            conflict_name(&link("l", "one", &[(1, 1)], 5, 1)),
            conflict_name(&link("l", "two", &[(1, 2)], 5, 1))
        );
        // The executable bit is content too (`same_content`).
        let mut exec = a.clone();
        exec.permissions = 0o755;
        assert_ne!(conflict_name(&a), conflict_name(&exec));
        // A file whose bytes spell a link's target is another thing than the link.
        assert_ne!(content_id(&file("l", 0, &[], 5, 1)), content_id(&link("l", "", &[], 5, 1)));
    }

    #[test]
    fn one_loser_gets_one_name_whatever_its_version() {
        // A re-issue or a merge moves the version, never the author, mtime or content; the mode's
        // other bits and the sequence are not content either.
        let a = file("d/x.txt", 1, &[(1, 1)], 100, 1);
        let mut reissued = a.clone();
        reissued.version = a.version.updated(crate::core::ShortId(2), 7);
        reissued.sequence = 99;
        reissued.permissions = 0o600;
        assert_eq!(conflict_name(&a), conflict_name(&reissued));
        let l = link("l", "t", &[(1, 1)], 5, 1);
        let mut l2 = l.clone();
        l2.version = l.version.updated(crate::core::ShortId(3), 1);
        assert_eq!(conflict_name(&l), conflict_name(&l2));
    }

    #[test]
    fn copies_of_one_content_are_recognised_by_name_whoever_lost_it_when() {
        let a = file("d/x.txt", 1, &[(1, 1)], 100, 1);
        // Another author, the same second: the same name.
        assert_eq!(conflict_name(&a), conflict_name(&file("d/x.txt", 1, &[(2, 1)], 100, 2)));
        let by_another = file("d/x.txt", 1, &[(2, 1)], 107, 2);
        let (ca, cb) = (conflict_name(&a), conflict_name(&by_another));
        assert_ne!(ca, cb);
        assert!(same_loser(&ca, &cb) && same_loser(&cb, &ca) && same_loser(&ca, &ca));
        let numbered = format!("{}-2.txt", ca.strip_suffix(".txt").unwrap());
        assert!(same_loser(&cb, &numbered), "{numbered}");
        // Another content, another path, another extension, or a name from before content ids.
        assert!(!same_loser(&ca, &conflict_name(&file("d/x.txt", 2, &[(1, 1)], 100, 1))));
        assert!(!same_loser(&ca, &conflict_name(&file("x.txt", 1, &[(1, 1)], 100, 1))));
        assert!(!same_loser(&ca, &conflict_name(&file("d/x.md", 1, &[(1, 1)], 100, 1))));
        assert!(!same_loser(&ca, "d/x.sync-conflict-19700101-000140-AAAAAAA.txt"));
        assert!(!same_loser(&ca, "d/x.sync-conflict-19700101-000140-AAAAAAA-2.txt"));
        assert!(!same_loser(&ca, "d/x.sync-conflict-19700101-000140-12.txt"));
        assert!(!same_loser(&ca, "d/x.txt"));
        // Names without an extension, links among them.
        let (l1, l2) = (link("l", "t", &[(1, 1)], 5, 1), link("l", "t", &[(2, 1)], 9, 2));
        assert!(same_loser(&conflict_name(&l1), &conflict_name(&l2)));
        assert!(same_loser(&conflict_name(&l1), &format!("{}-3", conflict_name(&l2))));
    }
}
