//! Where a one-way folder and its cluster part ways, and how to bring them together again.
//!
//! A receive-only folder never announces what is changed in it here: such a change is a *local
//! change*, shown to the user instead of silently diverging, and `revert` gives the path back to
//! the cluster (the file goes to the version store, then the cluster's version is pulled). A
//! send-only folder never takes what peers changed: such a change is a *remote change*, shown,
//! and `override` re-issues this node's state above it so that it wins on every peer.

use super::decide::{decide, Action};
use super::record::FileRecord;
use super::version::VersionVector;
use super::ShortId;

/// Whether our record of a receive-only folder is a local change: made on this device, and not
/// what the cluster (the newest version peers announced) has. A path we hold exactly as the
/// cluster does (made here too, say before the node first synced) is no change.
pub fn is_local_change(local: &FileRecord, me: ShortId, cluster: Option<&FileRecord>) -> bool {
    if local.modified_by != me {
        return false;
    }
    match cluster {
        Some(c) => !c.same_content(local),
        // Deleted here, and unknown to the cluster: nothing differs.
        None => !local.deleted,
    }
}

/// The record that gives a locally changed path back to the cluster: a tombstone that has seen
/// nothing, so that any version a peer announces descends from it and is taken (and, while no
/// peer has the path, it stays deleted).
pub fn reverted(local: &FileRecord) -> FileRecord {
    FileRecord {
        size: 0,
        permissions: 0,
        version: VersionVector::new(),
        deleted: true,
        chunks: Vec::new(),
        ..local.clone()
    }
}

/// Whether a peer's version is a change a send-only folder did not take.
pub fn is_remote_change(local: Option<&FileRecord>, remote: &FileRecord) -> bool {
    // A delete of something we do not have either is no change.
    let nothing_either_side = remote.deleted && local.is_none_or(|l| l.deleted);
    !nothing_either_side && !matches!(decide(local, remote), Action::Skip | Action::Merge)
}

/// Our state of `remote.path` re-issued above `remote`, so that it wins everywhere: our record
/// with a version that has seen the remote one, or a tombstone where we have nothing. `now` is a
/// fresh value of this device's counter clock.
pub fn overriding(local: Option<&FileRecord>, remote: &FileRecord, me: ShortId, now: u64) -> FileRecord {
    match local {
        Some(l) => {
            FileRecord { version: l.version.merged(&remote.version).updated(me, now), modified_by: me, ..l.clone() }
        }
        None => FileRecord { modified_by: me, sequence: 0, ..remote.tombstone(me, now) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::fixtures::file;
    use crate::core::Ordering;

    const ME: ShortId = ShortId(9);

    #[test]
    fn a_local_edit_is_a_change_and_the_cluster_state_is_not() {
        let cluster = file("a", 1, &[(1, 5)], 10, 1);
        let edited = file("a", 2, &[(1, 5), (9, 6)], 11, 9);
        assert!(is_local_change(&edited, ME, Some(&cluster)));
        // Made here with the cluster's content (an initial scan): no change.
        let same = file("a", 1, &[(9, 1)], 10, 9);
        assert!(!is_local_change(&same, ME, Some(&cluster)));
        // Pulled from a peer: no change.
        assert!(!is_local_change(&cluster, ME, Some(&cluster)));
        // Added here, unknown to the cluster: a change; deleted here and unknown: none.
        assert!(is_local_change(&edited, ME, None));
        assert!(!is_local_change(&edited.tombstone(ME, 20), ME, None));
        // Deleted here while the cluster has it: a change.
        assert!(is_local_change(&cluster.tombstone(ME, 20), ME, Some(&cluster)));
    }

    #[test]
    fn a_reverted_path_takes_whatever_the_cluster_announces() {
        let edited = file("a", 2, &[(1, 5), (9, 6)], 11, 9);
        let back = reverted(&edited);
        assert!(back.deleted && back.version.is_empty());
        for cluster in [file("a", 1, &[(1, 5)], 10, 1), file("a", 1, &[(1, 5)], 10, 1).tombstone(ShortId(1), 7)] {
            assert_eq!(decide(Some(&back), &cluster), Action::Take);
        }
    }

    #[test]
    fn an_override_dominates_the_remote_change() {
        let ours = file("a", 1, &[(9, 3)], 10, 9);
        let theirs = file("a", 2, &[(9, 3), (1, 4)], 11, 1);
        assert!(is_remote_change(Some(&ours), &theirs));
        let win = overriding(Some(&ours), &theirs, ME, 100);
        assert_eq!(win.version.compare(&theirs.version), Ordering::Greater);
        assert!(win.same_content(&ours) && win.modified_by == ME);
        assert_eq!(decide(Some(&theirs), &win), Action::Take, "the peer takes ours");
        // A file a peer added: ours is a tombstone above it.
        let win = overriding(None, &theirs, ME, 100);
        assert!(win.deleted && win.version.compare(&theirs.version) == Ordering::Greater);
        assert_eq!(decide(Some(&theirs), &win), Action::Take);
        // Nothing to override once it is settled.
        assert!(!is_remote_change(Some(&win), &theirs));
        assert!(!is_remote_change(None, &theirs.tombstone(ShortId(1), 5)));
    }
}
