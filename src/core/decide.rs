//! What to do with a record a peer announced, given ours: the single place where "which version
//! wins" and "what is a conflict" are decided.
//!
//! Rules (see docs/consistency.md):
//! - a version that descends from ours is taken (content pulled, directory made, or path deleted);
//! - a version ours descends from is ignored;
//! - concurrent versions with the same content are merged, nothing changes on disk;
//! - concurrent edit against delete: the edit wins, always;
//! - concurrent edits: the newer mtime wins, then the larger device id; the loser is kept as a
//!   conflict copy whose name depends only on the loser (its time, author and content), so every
//!   node makes the same copy and two losers never share a name.

use super::conflict::conflict_name;
use super::record::FileRecord;
use super::version::Ordering;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Action {
    /// We have this version or a newer one.
    Skip,
    /// Take the remote version as ours: pull its content, make the directory, or delete the path.
    Take,
    /// Concurrent, same content: record the merged version, touch nothing on disk.
    Merge,
    /// Concurrent edit against our delete or a losing remote edit we already hold as a copy:
    /// keep our version and re-issue it above both, so it wins everywhere.
    KeepLocal,
    /// Concurrent, the remote version wins: move our file to `copy`, then take the remote version.
    ConflictLocalLoses { copy: String },
    /// Concurrent, our version wins: fetch the remote version into `copy`, and re-issue ours
    /// above both versions.
    ConflictRemoteLoses { copy: String },
}

pub fn decide(local: Option<&FileRecord>, remote: &FileRecord) -> Action {
    let Some(local) = local else {
        // A tombstone for a path we never had is still recorded, so that it travels on to
        // peers that do have the file (A - B - C: B relays A's delete to C).
        return Action::Take;
    };
    match local.version.compare(&remote.version) {
        Ordering::Equal | Ordering::Greater => Action::Skip,
        Ordering::Lesser => Action::Take,
        Ordering::Concurrent => concurrent(local, remote),
    }
}

fn concurrent(local: &FileRecord, remote: &FileRecord) -> Action {
    if local.same_content(remote) {
        return Action::Merge;
    }
    match (local.deleted, remote.deleted) {
        (true, false) => Action::Take,
        (false, true) => Action::KeepLocal,
        (true, true) => Action::Merge,
        (false, false) => {
            if remote_wins(local, remote) {
                Action::ConflictLocalLoses { copy: conflict_name(local) }
            } else {
                Action::ConflictRemoteLoses { copy: conflict_name(remote) }
            }
        }
    }
}

/// The winner of two concurrent edits, the same on every node: newer mtime, then the larger
/// device id, then (for two versions of one device, which only a lost index can produce) the
/// larger content hash or link target. Links and files are ranked alike: a link against a file
/// is an ordinary concurrent edit.
pub fn remote_wins(local: &FileRecord, remote: &FileRecord) -> bool {
    let key =
        |r: &FileRecord| (r.mtime_ns, r.modified_by, r.chunks.first().map(|c| c.hash), r.size, r.link_target.clone());
    key(remote) > key(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::fixtures::file;

    #[test]
    fn a_newer_version_is_taken_and_an_older_one_skipped() {
        let old = file("a", 1, &[(1, 1)], 10, 1);
        let new = file("a", 2, &[(1, 2)], 5, 1);
        assert_eq!(decide(Some(&old), &new), Action::Take);
        assert_eq!(decide(Some(&new), &old), Action::Skip);
        assert_eq!(decide(Some(&new), &new), Action::Skip);
        assert_eq!(decide(None, &new), Action::Take);
    }

    #[test]
    fn concurrent_edits_keep_both_and_agree_on_the_winner() {
        let a = file("x.txt", 1, &[(1, 1)], 100, 1);
        let b = file("x.txt", 2, &[(2, 1)], 200, 2);
        // On the node holding a, b arrives: b is newer, a becomes the copy.
        let on_a = decide(Some(&a), &b);
        let on_b = decide(Some(&b), &a);
        let copy_of_a = conflict_name(&a);
        assert_eq!(on_a, Action::ConflictLocalLoses { copy: copy_of_a.clone() });
        assert_eq!(on_b, Action::ConflictRemoteLoses { copy: copy_of_a });
    }

    #[test]
    fn two_losers_of_one_device_in_one_second_are_kept_under_two_names() {
        // Device 1 wrote x twice within a second (two versions a peer never saw in between, such as
        // an edit then a restore); both lose to device 2's newer edit, on every node alike.
        let first = file("x.txt", 1, &[(1, 1)], 100, 1);
        let mut second = file("x.txt", 2, &[(1, 2)], 100, 1);
        second.mtime_ns += 500_000_000;
        let winner = file("x.txt", 3, &[(2, 1)], 200, 2);
        let copy = |local: &FileRecord| match decide(Some(local), &winner) {
            Action::ConflictLocalLoses { copy } => copy,
            other => panic!("{other:?}"),
        };
        assert_ne!(copy(&first), copy(&second));
        // The node holding the winner names each loser as the loser's node does.
        assert_eq!(decide(Some(&winner), &first), Action::ConflictRemoteLoses { copy: copy(&first) });
        assert_eq!(decide(Some(&winner), &second), Action::ConflictRemoteLoses { copy: copy(&second) });
    }

    #[test]
    fn equal_mtimes_are_settled_by_the_device_id() {
        let a = file("x", 1, &[(1, 1)], 100, 1);
        let b = file("x", 2, &[(2, 1)], 100, 2);
        assert!(remote_wins(&a, &b));
        assert!(!remote_wins(&b, &a));
    }

    #[test]
    fn an_edit_beats_a_delete_it_did_not_see() {
        let base = file("x", 1, &[(1, 1)], 100, 1);
        let deleted = base.tombstone(crate::core::ShortId(2), 0);
        let mut edited = file("x", 2, &[(1, 2)], 50, 1);
        edited.version = base.version.updated(crate::core::ShortId(1), 0);
        assert_eq!(decide(Some(&deleted), &edited), Action::Take);
        assert_eq!(decide(Some(&edited), &deleted), Action::KeepLocal);
        // A delete that saw the edit wins.
        let later = edited.tombstone(crate::core::ShortId(2), 0);
        assert_eq!(decide(Some(&edited), &later), Action::Take);
    }

    #[test]
    fn links_are_taken_deleted_and_conflicted_like_files() {
        use crate::core::record::fixtures::link;
        let old = link("l", "a", &[(1, 1)], 10, 1);
        let retargeted = link("l", "/elsewhere", &[(1, 2)], 5, 1);
        assert_eq!(decide(Some(&old), &retargeted), Action::Take);
        assert_eq!(decide(Some(&retargeted), &old), Action::Skip);
        // A delete that saw the link wins; one that did not loses to the edit.
        let gone = old.tombstone(crate::core::ShortId(2), 0);
        assert_eq!(decide(Some(&old), &gone), Action::Take);
        assert_eq!(decide(Some(&retargeted), &gone), Action::KeepLocal);
        // Two links made concurrently with the same target are one.
        assert_eq!(decide(Some(&link("l", "t", &[(1, 1)], 1, 1)), &link("l", "t", &[(2, 1)], 9, 2)), Action::Merge);
        // Concurrent retargets: the newer wins on both nodes and the loser is kept as a copy, which
        // is a link too (the copy is made from the losing record).
        let a = link("dir/l.txt", "one", &[(1, 1)], 100, 1);
        let b = link("dir/l.txt", "two", &[(2, 1)], 200, 2);
        let copy = conflict_name(&a);
        assert!(copy.starts_with("dir/l.txt.sync-conflict-"), "a link's name has no extension to keep: {copy}");
        assert_eq!(decide(Some(&a), &b), Action::ConflictLocalLoses { copy: copy.clone() });
        assert_eq!(decide(Some(&b), &a), Action::ConflictRemoteLoses { copy });
        // The same device, the same second: the target settles it, the same way on both sides.
        let (c, d) = (link("l", "c", &[(1, 1)], 100, 1), link("l", "d", &[(2, 1)], 100, 1));
        assert!(remote_wins(&c, &d) != remote_wins(&d, &c));
    }

    #[test]
    fn a_link_against_a_file_is_an_ordinary_concurrent_edit() {
        use crate::core::record::fixtures::link;
        let f = file("x", 1, &[(1, 1)], 100, 1);
        let l = link("x", "target", &[(2, 1)], 200, 2);
        assert_eq!(decide(Some(&f), &l), Action::ConflictLocalLoses { copy: conflict_name(&f) });
        assert_eq!(decide(Some(&l), &f), Action::ConflictRemoteLoses { copy: conflict_name(&f) });
        // A link replacing a file it saw (or the other way round) is simply taken.
        let mut replaced = link("x", "target", &[(1, 2)], 50, 1);
        replaced.version = f.version.updated(crate::core::ShortId(1), 0);
        assert_eq!(decide(Some(&f), &replaced), Action::Take);
    }

    #[test]
    fn concurrent_identical_content_merges() {
        let a = file("x", 7, &[(1, 1)], 100, 1);
        let b = file("x", 7, &[(2, 1)], 300, 2);
        assert_eq!(decide(Some(&a), &b), Action::Merge);
    }
}
