//! The disk side of the folder-root check (`core::root` has the rules): what is at a folder's root
//! path now, and how much space its filesystem has free. `RootGuard` is shared by the Index (before
//! and after every scan) and the Puller (before every pull and commit): while it fails, nothing of
//! the folder is read, written or announced.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::core::root::{check, Observed, RootId, RootProblem};

/// What is at `path` now (never follows a symlink at the root itself: a root replaced by a link
/// elsewhere is not a directory of ours).
pub fn observe(path: &Path) -> Observed {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Observed::Missing,
        Err(e) => Observed::Unreadable(e.to_string()),
        Ok(meta) if !meta.is_dir() => Observed::NotADirectory,
        Ok(meta) => Observed::Directory(RootId {
            dev: meta.dev(),
            ino: meta.ino(),
            fsid: statvfs(path).map_or(0, |s| s.f_fsid),
        }),
    }
}

fn statvfs(path: &Path) -> Option<libc::statvfs> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut out = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `out` points to writable memory of the right size.
    let rc = unsafe { libc::statvfs(c.as_ptr(), out.as_mut_ptr()) };
    // SAFETY: statvfs filled `out` when it returned 0.
    (rc == 0).then(|| unsafe { out.assume_init() })
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    statvfs(path).map(|s| s.f_bavail.saturating_mul(s.f_frsize))
}

/// The identity a folder's root must keep, shared by everything that touches the folder.
#[derive(Debug)]
pub struct RootGuard {
    pub path: PathBuf,
    expected: RwLock<Option<RootId>>,
}

impl RootGuard {
    pub fn new(path: PathBuf, expected: Option<RootId>) -> RootGuard {
        RootGuard { path, expected: RwLock::new(expected) }
    }

    pub fn expected(&self) -> Option<RootId> {
        *self.expected.read().expect("root guard lock")
    }

    /// From now on, `id` is the root (first start, or the user confirmed a new root).
    pub fn accept(&self, id: RootId) {
        *self.expected.write().expect("root guard lock") = Some(id);
    }

    /// Whether the root is still the one indexed. Without a recorded identity only existence counts.
    pub fn check(&self) -> Result<(), RootProblem> {
        let observed = observe(&self.path);
        match self.expected() {
            Some(expected) => check(&expected, &observed),
            None => match observed {
                Observed::Directory(_) => Ok(()),
                Observed::Missing => Err(RootProblem::Missing),
                Observed::NotADirectory => Err(RootProblem::NotADirectory),
                Observed::Unreadable(e) => Err(RootProblem::Unreadable(e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renamed_or_replaced_root_fails_the_check_and_the_same_root_passes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let Observed::Directory(id) = observe(&root) else { panic!("a directory") };
        let guard = RootGuard::new(root.clone(), Some(id));
        assert_eq!(guard.check(), Ok(()));
        std::fs::rename(&root, dir.path().join("away")).unwrap();
        assert_eq!(guard.check(), Err(RootProblem::Missing));
        std::fs::create_dir(&root).unwrap();
        assert_eq!(guard.check(), Err(RootProblem::OtherDirectory));
        std::fs::remove_dir(&root).unwrap();
        std::fs::rename(dir.path().join("away"), &root).unwrap();
        assert_eq!(guard.check(), Ok(()), "the same root came back");
        assert!(free_bytes(&root).is_some_and(|b| b > 0));
    }
}
