//! Is the folder root still the directory we indexed? An unplugged disk leaves its mount point
//! behind (an empty directory of the parent filesystem), a dropped network mount does the same, a
//! renamed root leaves nothing: in every case a scan would read "every file was deleted" and send
//! that to every peer. The node remembers the root's identity (device, inode and filesystem id, in
//! the index; nothing is written into the user's folder) and checks it before every scan and every
//! pull. This module holds the rules; `fs::root` observes the disk.
//!
//! A second guard catches what an identity check cannot (an odd mount that presents an empty
//! directory with the old inode): a scan that would delete every file of a folder that held at
//! least a configured number of files is held until the user confirms it.

use serde::{Deserialize, Serialize};

/// What identifies a folder root: the filesystem it lives on and its inode there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootId {
    /// `st_dev`: the device number of the filesystem (may change when a disk is remounted on
    /// another loop or block device).
    pub dev: u64,
    pub ino: u64,
    /// `statfs`'s `f_fsid`: derived from the filesystem's UUID on ext4, xfs and btrfs, so it
    /// survives a remount on another device; 0 where the filesystem gives none.
    pub fsid: u64,
}

/// What is at the root path now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    Missing,
    NotADirectory,
    Directory(RootId),
    /// The path could not be examined (permissions, I/O error).
    Unreadable(String),
}

/// Why a folder stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootProblem {
    Missing,
    NotADirectory,
    OtherFilesystem,
    OtherDirectory,
    Unreadable(String),
}

impl std::fmt::Display for RootProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootProblem::Missing => write!(f, "the folder root does not exist (unmounted disk, or renamed?)"),
            RootProblem::NotADirectory => write!(f, "the folder root is not a directory"),
            RootProblem::OtherFilesystem => write!(f, "the folder root is on another filesystem than the one indexed (an unmounted disk leaves its mount point behind)"),
            RootProblem::OtherDirectory => write!(f, "the folder root was replaced by another directory"),
            RootProblem::Unreadable(e) => write!(f, "the folder root cannot be examined: {e}"),
        }
    }
}

/// Whether `observed` is the root recorded as `expected`. The same inode on the same device is
/// the same root; a remount on another device is accepted when the filesystem id proves it is the
/// same filesystem.
pub fn check(expected: &RootId, observed: &Observed) -> Result<(), RootProblem> {
    match observed {
        Observed::Missing => Err(RootProblem::Missing),
        Observed::NotADirectory => Err(RootProblem::NotADirectory),
        Observed::Unreadable(e) => Err(RootProblem::Unreadable(e.clone())),
        Observed::Directory(now) => {
            let same_fs = now.dev == expected.dev || (expected.fsid != 0 && now.fsid == expected.fsid);
            if !same_fs {
                Err(RootProblem::OtherFilesystem)
            } else if now.ino != expected.ino {
                Err(RootProblem::OtherDirectory)
            } else {
                Ok(())
            }
        }
    }
}

/// Whether local deletes must be held for the user: they would leave nothing at all of a folder
/// (`deleted` records of its `live` ones, files and directories) and take at least `guard` files
/// with them (`guard` 0 turns the rule off). Deleting most of a tree is normal work (a branch
/// switch, `rm -r` of a subdirectory) and goes through; deleting all of it is what a vanished disk
/// looks like.
pub fn holds_mass_delete(live: u64, deleted: u64, deleted_files: u64, guard: u64) -> bool {
    guard > 0 && deleted >= live && deleted_files >= guard
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ROOT: RootId = RootId { dev: 2049, ino: 2, fsid: 0xabcd };

    #[test]
    fn the_same_inode_on_the_same_device_is_the_same_root() {
        assert_eq!(check(&ROOT, &Observed::Directory(ROOT)), Ok(()));
    }

    #[test]
    fn an_unmounted_disk_leaves_a_directory_of_another_filesystem() {
        let mount_point = RootId { dev: 64769, ino: 131_073, fsid: 0x1234 };
        assert_eq!(check(&ROOT, &Observed::Directory(mount_point)), Err(RootProblem::OtherFilesystem));
    }

    #[test]
    fn a_remount_on_another_device_with_the_same_filesystem_id_is_the_same_root() {
        let remounted = RootId { dev: 1793, ..ROOT };
        assert_eq!(check(&ROOT, &Observed::Directory(remounted)), Ok(()));
        let no_fsid = RootId { fsid: 0, ..ROOT };
        assert_eq!(
            check(&no_fsid, &Observed::Directory(RootId { dev: 1793, ..no_fsid })),
            Err(RootProblem::OtherFilesystem)
        );
    }

    #[test]
    fn a_replaced_directory_is_refused() {
        let other = RootId { ino: 99, ..ROOT };
        assert_eq!(check(&ROOT, &Observed::Directory(other)), Err(RootProblem::OtherDirectory));
        assert_eq!(check(&ROOT, &Observed::Missing), Err(RootProblem::Missing));
        assert_eq!(check(&ROOT, &Observed::NotADirectory), Err(RootProblem::NotADirectory));
    }

    #[test]
    fn a_folder_emptied_entirely_is_held_and_a_branch_switch_is_not() {
        assert!(holds_mass_delete(140, 140, 133, 10));
        assert!(!holds_mass_delete(140, 112, 107, 10), "80% deleted, the rest stays");
        assert!(!holds_mass_delete(10, 10, 9, 10), "below the guard");
        assert!(!holds_mass_delete(140, 140, 133, 0), "guard off");
        assert!(!holds_mass_delete(142, 140, 133, 10), "new files came meanwhile");
    }

    proptest! {
        #[test]
        fn only_an_identical_identity_or_a_proven_remount_passes(dev in 0u64..4, ino in 0u64..4, fsid in 0u64..4) {
            let now = RootId { dev, ino, fsid };
            let expected = RootId { dev: 1, ino: 1, fsid: 1 };
            let ok = check(&expected, &Observed::Directory(now)).is_ok();
            prop_assert_eq!(ok, ino == 1 && (dev == 1 || fsid == 1));
        }

        #[test]
        fn a_hold_needs_everything_gone(live in 0u64..100, deleted in 0u64..100, files in 0u64..100, guard in 0u64..20) {
            let held = holds_mass_delete(live, deleted, files, guard);
            prop_assert_eq!(held, guard > 0 && deleted >= live && files >= guard);
            if deleted < live {
                prop_assert!(!held, "something stays: never held");
            }
        }
    }
}
