//! What to do with a record a peer announced, given ours: the single place where "which version
//! wins" and "what is a conflict" are decided.
//!
//! Rules (see docs/consistency.md):
//! - a version that descends from ours is taken (content pulled, directory made, or path deleted);
//! - a version ours descends from is ignored;
//! - concurrent versions with the same content are merged, nothing changes on disk;
//! - concurrent edit against delete: the edit wins, always;
//! - concurrent edits: the newer mtime wins, then the larger device id; the loser is kept as a
//!   conflict copy whose name depends only on the loser, so every node makes the same copy.

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
/// larger content hash.
pub fn remote_wins(local: &FileRecord, remote: &FileRecord) -> bool {
    let key = |r: &FileRecord| (r.mtime_ns, r.modified_by, r.chunks.first().map(|c| c.hash), r.size);
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
    fn concurrent_identical_content_merges() {
        let a = file("x", 7, &[(1, 1)], 100, 1);
        let b = file("x", 7, &[(2, 1)], 300, 2);
        assert_eq!(decide(Some(&a), &b), Action::Merge);
    }
}
