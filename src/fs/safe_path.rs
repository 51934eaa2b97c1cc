//! The folder is a jail, for reading as much as for writing. Every relative path from the index or
//! a peer goes through [`safe_path`] before the disk is touched: it refuses what the path rules
//! refuse (absolute, `..`, NUL, syncnode's own names) and any symlink on the way to the target —
//! a link in the folder may point anywhere, and following it would read, announce or write files
//! outside. The target itself may not be a link either: we would act on what it points to.
//!
//! [`safe_path`] decides; the other functions here apply the same decision without races:
//! [`open_inside`] opens a file for reading by walking the path one component at a time with
//! `O_NOFOLLOW` (a link swapped in after a check is still refused), and [`lstat_inside`] gives the
//! scanner the state of an entry whose parents are real directories. A refusal caused by a link is
//! logged once per folder and path ([`refuse_once`]), never once per retry.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::core::path;

#[derive(Debug, thiserror::Error)]
pub enum UnsafePath {
    #[error("refused path `{path}`: {reason}")]
    Rule { path: String, reason: path::PathError },
    /// A symlink where a directory of the path should be: following it would leave the folder.
    #[error("refused path `{path}`: `{component}` is a symlink")]
    Symlink { path: String, component: String },
    /// The path itself is a symlink: reading or writing it would act on whatever it points to.
    #[error("refused path `{path}`: it is a symlink")]
    Link { path: String },
    /// A file (or another non-directory) where a directory of the path should be: the path cannot
    /// exist. Not an attack: a directory replaced by a file looks like this.
    #[error("refused path `{path}`: `{component}` is not a directory")]
    NotADirectory { path: String, component: String },
    /// Reads only: the target is a directory, a device, a FIFO or a socket, not a regular file.
    #[error("refused path `{path}`: not a regular file")]
    NotAFile { path: String },
    #[error("refused path `{path}`: {source}")]
    Io { path: String, source: io::Error },
}

impl UnsafePath {
    /// Whether a symlink caused the refusal (on the way, or the target itself).
    pub fn is_link(&self) -> bool {
        matches!(self, UnsafePath::Symlink { .. } | UnsafePath::Link { .. })
    }

    /// Whether the path (or one of its parents) simply does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, UnsafePath::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Joins `rel` to `root` after checking the path rules and that every existing parent inside the
/// folder is a real directory (not a symlink that could point elsewhere) and that the target, if it
/// exists, is not a symlink. Parents that do not exist yet are fine (a write creates them).
///
/// This is the one decision "is this path inside the folder, with no link on the way", for
/// reads and writes alike.
pub fn safe_path(root: &Path, rel: &str) -> Result<PathBuf, UnsafePath> {
    path::validate(rel).map_err(|reason| UnsafePath::Rule { path: rel.into(), reason })?;
    let mut current = root.to_path_buf();
    let components: Vec<&str> = rel.split('/').collect();
    for (i, component) in components.iter().enumerate() {
        current.push(component);
        if i + 1 == components.len() {
            break;
        }
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(UnsafePath::Symlink { path: rel.into(), component: components[..=i].join("/") })
            }
            Ok(_) => return Err(UnsafePath::NotADirectory { path: rel.into(), component: components[..=i].join("/") }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                current.extend(&components[i + 1..]);
                return Ok(current);
            }
            Err(source) => return Err(UnsafePath::Io { path: rel.into(), source }),
        }
    }
    // The target itself may not be a symlink either: we would read, write or delete through it.
    if std::fs::symlink_metadata(&current).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(UnsafePath::Link { path: rel.into() });
    }
    Ok(current)
}

/// `safe_path` for acting on the entry at `rel` itself, which may be a symlink: the same rules and
/// the same refusal of a link on the way, but a link at the end is accepted. Only for calls that
/// never follow their last component: `lstat`, `readlink`, `rename`, `unlink`, `linkat` without
/// `AT_SYMLINK_FOLLOW`, `symlinkat`. Reading or writing content always goes through `safe_path`
/// or `open_inside`.
pub fn safe_entry_path(root: &Path, rel: &str) -> Result<PathBuf, UnsafePath> {
    match safe_path(root, rel) {
        // Refused only for being a link itself: every parent was checked to be a real directory.
        Err(UnsafePath::Link { .. }) => Ok(root.join(rel)),
        other => other,
    }
}

/// The metadata of the entry at `rel` itself (a symlink is reported as one, never followed), or
/// `None` if it does not exist. Refused when a parent is a symlink or not a directory.
pub fn lstat_inside(root: &Path, rel: &str) -> Result<Option<std::fs::Metadata>, UnsafePath> {
    let full = safe_entry_path(root, rel)?;
    match std::fs::symlink_metadata(&full) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(UnsafePath::Io { path: rel.into(), source }),
    }
}

fn openat(dir: &OwnedFd, name: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    let name = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated string; on success the
    // returned descriptor is ours alone.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor from openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `rel` opened for reading below `dir` by openat2 with no symlink allowed anywhere on the way
/// and nothing above `dir`; `None` when that fails, for whatever reason.
fn open_beneath(dir: &OwnedFd, rel: &str) -> Option<File> {
    let name = CString::new(rel).ok()?;
    // SAFETY: open_how is plain integers; all zero is a valid value (libc marks it non-exhaustive).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: an open descriptor, a NUL-terminated path, and an open_how of the size passed; on
    // success the returned descriptor is ours alone.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    // SAFETY: a fresh descriptor from openat2.
    (fd >= 0).then(|| File::from(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }))
}

/// Opens the directory at `rel` ("" for the root itself) the way `open_inside` opens a file's
/// parents: one component at a time with `O_NOFOLLOW`, so the descriptor is of a real directory
/// inside the folder even if a link was swapped in after a check. Calls relative to it
/// (`symlinkat`, `renameat`) then cannot be redirected out of the folder.
pub fn open_dir_inside(root: &Path, rel: &str) -> Result<OwnedFd, UnsafePath> {
    let io_err = |source: io::Error| UnsafePath::Io { path: rel.into(), source };
    let mut dir: OwnedFd = File::open(root).map_err(io_err)?.into();
    if rel.is_empty() {
        return Ok(dir);
    }
    path::validate(rel).map_err(|reason| UnsafePath::Rule { path: rel.into(), reason })?;
    let components: Vec<&str> = rel.split('/').collect();
    for (i, component) in components.iter().enumerate() {
        dir = openat(&dir, component, libc::O_RDONLY | libc::O_DIRECTORY).map_err(|e| {
            let component = components[..=i].join("/");
            match e.raw_os_error() {
                Some(libc::ELOOP) => UnsafePath::Symlink { path: rel.into(), component },
                Some(libc::ENOTDIR) if is_symlink(&dir, components[i]) => {
                    UnsafePath::Symlink { path: rel.into(), component }
                }
                Some(libc::ENOTDIR) => UnsafePath::NotADirectory { path: rel.into(), component },
                _ => io_err(e),
            }
        })?;
    }
    Ok(dir)
}

/// Opens the regular file at `rel` for reading, without ever following a symlink below `root`:
/// each directory on the way is opened relative to the previous one with `O_NOFOLLOW`, so a link
/// swapped in after any check is refused too. FIFOs, devices and sockets are refused (opened
/// non-blocking, so a FIFO cannot hang the reader).
pub fn open_inside(root: &Path, rel: &str) -> Result<File, UnsafePath> {
    path::validate(rel).map_err(|reason| UnsafePath::Rule { path: rel.into(), reason })?;
    let io_err = |source: io::Error| UnsafePath::Io { path: rel.into(), source };
    // The root itself is the user's choice (it may be a link to where the data lives).
    let mut dir: OwnedFd = File::open(root).map_err(io_err)?.into();
    // The kernel walks the path in one call, refusing any link on the way and at the end; what it
    // refuses (or a kernel without openat2) is walked a component at a time below, which names
    // the component at fault. A served chunk cost an open per component before (the sender's
    // reads were 12% of its CPU in a million-file sync).
    if let Some(file) = open_beneath(&dir, rel) {
        if file.metadata().map_err(io_err)?.file_type().is_file() {
            return Ok(file);
        }
        return Err(UnsafePath::NotAFile { path: rel.into() });
    }
    let components: Vec<&str> = rel.split('/').collect();
    let (name, parents) = components.split_last().expect("validated paths are not empty");
    for (i, component) in parents.iter().enumerate() {
        dir = match openat(&dir, component, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) => {
                let component = components[..=i].join("/");
                return Err(match e.raw_os_error() {
                    // O_NOFOLLOW on a link fails with ELOOP; O_DIRECTORY on a file with ENOTDIR.
                    Some(libc::ELOOP) => UnsafePath::Symlink { path: rel.into(), component },
                    Some(libc::ENOTDIR) if is_symlink(&dir, parents[i]) => {
                        UnsafePath::Symlink { path: rel.into(), component }
                    }
                    Some(libc::ENOTDIR) => UnsafePath::NotADirectory { path: rel.into(), component },
                    _ => io_err(e),
                });
            }
        };
    }
    let fd =
        openat(&dir, name, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => UnsafePath::Link { path: rel.into() },
            _ => io_err(e),
        })?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(io_err)?;
    if !meta.file_type().is_file() {
        return Err(UnsafePath::NotAFile { path: rel.into() });
    }
    Ok(file)
}

/// Whether `name` in `dir` is a symlink (for telling ENOTDIR's two causes apart).
fn is_symlink(dir: &OwnedFd, name: &str) -> bool {
    let Ok(name) = CString::new(name) else { return false };
    // SAFETY: an open descriptor, a NUL-terminated name and a zeroed stat buffer of the right type.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    rc == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFLNK
}

/// Folders and paths whose link refusal was logged already. Bounded: past it, refusals are no
/// longer logged at all (a hostile peer naming a million paths must not fill memory or the log).
static LOGGED: Mutex<Option<HashSet<(PathBuf, String)>>> = Mutex::new(None);
const LOGGED_MAX: usize = 10_000;

/// Logs a refusal caused by a symlink once per (folder root, link); other refusals are the
/// caller's to report. `peer` names the device whose request or record led here, if any.
/// Returns whether this call logged.
pub fn refuse_once(root: &Path, error: &UnsafePath, peer: Option<&str>) -> bool {
    let link = match error {
        UnsafePath::Symlink { component, .. } => component.clone(),
        UnsafePath::Link { path } => path.clone(),
        _ => return false,
    };
    let mut logged = LOGGED.lock().expect("refusal log lock");
    let set = logged.get_or_insert_with(HashSet::new);
    if set.len() >= LOGGED_MAX || !set.insert((root.to_path_buf(), link.clone())) {
        return false;
    }
    match peer {
        Some(peer) => {
            tracing::warn!(folder = %root.display(), peer, link = %link, error = %error, "refused: a symlink would lead out of the folder; not following it")
        }
        None => {
            tracing::warn!(folder = %root.display(), link = %link, error = %error, "refused: a symlink would lead out of the folder; not following it")
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Read;

    #[test]
    fn a_symlink_on_the_way_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("file"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        assert!(matches!(safe_path(root.path(), "link/file"), Err(UnsafePath::Symlink { .. })));
        assert!(matches!(safe_path(root.path(), "link"), Err(UnsafePath::Link { .. })));
        assert!(matches!(safe_path(root.path(), "../x"), Err(UnsafePath::Rule { .. })));
        std::fs::create_dir(root.path().join("d")).unwrap();
        assert_eq!(safe_path(root.path(), "d/new/x").unwrap(), root.path().join("d/new/x"));
        // Reading refuses the same paths, and never returns the outside file's bytes.
        assert!(matches!(open_inside(root.path(), "link/file"), Err(UnsafePath::Symlink { .. })));
        assert!(matches!(lstat_inside(root.path(), "link/file"), Err(UnsafePath::Symlink { .. })));
        // The link itself is seen as a link, never as what it points to.
        assert!(lstat_inside(root.path(), "link").unwrap().unwrap().file_type().is_symlink());
        // Acting on the link itself is allowed; on anything behind it, not.
        assert_eq!(safe_entry_path(root.path(), "link").unwrap(), root.path().join("link"));
        assert!(matches!(safe_entry_path(root.path(), "link/file"), Err(UnsafePath::Symlink { .. })));
        assert!(matches!(open_dir_inside(root.path(), "link"), Err(UnsafePath::Symlink { .. })));
        assert!(matches!(open_dir_inside(root.path(), "d/../link"), Err(UnsafePath::Rule { .. })));
        std::fs::create_dir(root.path().join("d/inner")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("d/inner/out")).unwrap();
        assert!(open_dir_inside(root.path(), "d/inner").is_ok());
        assert!(open_dir_inside(root.path(), "").is_ok());
        assert!(matches!(open_dir_inside(root.path(), "d/inner/out"), Err(UnsafePath::Symlink { .. })));
    }

    #[test]
    fn a_link_to_a_file_and_special_files_are_not_read() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("s")).unwrap();
        assert!(matches!(open_inside(root.path(), "s"), Err(UnsafePath::Link { .. })));
        std::fs::create_dir(root.path().join("d")).unwrap();
        assert!(matches!(open_inside(root.path(), "d"), Err(UnsafePath::NotAFile { .. })));
        let fifo = CString::new(root.path().join("fifo").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(matches!(open_inside(root.path(), "fifo"), Err(UnsafePath::NotAFile { .. })));
        std::fs::write(root.path().join("f"), b"x").unwrap();
        assert!(matches!(open_inside(root.path(), "f/x"), Err(UnsafePath::NotADirectory { .. })));
        assert!(matches!(safe_path(root.path(), "f/x"), Err(UnsafePath::NotADirectory { .. })));
        assert!(open_inside(root.path(), "nope/x").unwrap_err().is_not_found());
    }

    #[test]
    fn a_link_refusal_is_logged_once() {
        let root = tempfile::tempdir().unwrap();
        let e = UnsafePath::Symlink { path: "l/x".into(), component: "l".into() };
        assert!(refuse_once(root.path(), &e, Some("PEER")));
        assert!(!refuse_once(root.path(), &e, None));
        assert!(!refuse_once(
            root.path(),
            &UnsafePath::NotADirectory { path: "f/x".into(), component: "f".into() },
            None
        ));
    }

    /// One entry of a generated tree: a directory, a file, a link to a directory outside the
    /// folder, or a link to a directory inside it.
    #[derive(Debug, Clone, Copy)]
    enum Node {
        Dir,
        File,
        LinkOut,
        LinkIn,
    }

    fn node() -> impl Strategy<Value = Node> {
        prop_oneof![4 => Just(Node::Dir), 2 => Just(Node::File), 1 => Just(Node::LinkOut), 1 => Just(Node::LinkIn)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Over random trees with links pointing out of and back into the folder, and random
        /// paths through them: a path is accepted exactly when no component on the way is a link
        /// (or a file), what is accepted resolves inside the folder, and reading agrees with the
        /// decision: it opens exactly the accepted regular files and never reaches the outside.
        #[test]
        fn the_folder_is_a_jail_for_reads_and_writes(
            tree in proptest::collection::vec((0usize..4, node()), 1..12),
            probes in proptest::collection::vec(proptest::collection::vec(0usize..4, 1..4), 1..12),
        ) {
            let names = ["a", "b", "c", "d"];
            let root = tempfile::tempdir().unwrap();
            let outside = tempfile::tempdir().unwrap();
            for n in names {
                std::fs::write(outside.path().join(n), b"outside").unwrap();
                std::fs::create_dir_all(outside.path().join(format!("{n}{n}"))).unwrap();
            }
            std::fs::create_dir(root.path().join("in")).unwrap();
            std::fs::write(root.path().join("in/a"), b"inside").unwrap();
            // Build the tree: entry k hangs below the directory made by an earlier entry, if any.
            let mut dirs: Vec<String> = vec![String::new()];
            for (k, (name, kind)) in tree.iter().enumerate() {
                let parent = dirs[k % dirs.len()].clone();
                let rel = if parent.is_empty() { names[*name].to_string() } else { format!("{parent}/{}", names[*name]) };
                let full = root.path().join(&rel);
                if std::fs::symlink_metadata(&full).is_ok() {
                    continue;
                }
                match kind {
                    Node::Dir => {
                        std::fs::create_dir(&full).unwrap();
                        dirs.push(rel);
                    }
                    Node::File => std::fs::write(&full, b"inside").unwrap(),
                    Node::LinkOut => std::os::unix::fs::symlink(outside.path(), &full).unwrap(),
                    Node::LinkIn => std::os::unix::fs::symlink(root.path().join("in"), &full).unwrap(),
                }
            }
            let canonical_root = root.path().canonicalize().unwrap();
            for probe in probes {
                let rel = probe.iter().map(|i| names[*i]).collect::<Vec<_>>().join("/");
                // What the disk says, component by component, without following anything.
                let mut expect_ok = true;
                let mut prefix = root.path().to_path_buf();
                for (i, c) in probe.iter().enumerate() {
                    prefix.push(names[*c]);
                    match std::fs::symlink_metadata(&prefix) {
                        Ok(m) if m.file_type().is_dir() => {}
                        Ok(m) if m.file_type().is_symlink() => { expect_ok = false; break; }
                        Ok(_) if i + 1 == probe.len() => {}
                        Ok(_) => { expect_ok = false; break; }
                        Err(_) => break,
                    }
                }
                let decided = safe_path(root.path(), &rel);
                prop_assert_eq!(decided.is_ok(), expect_ok, "{} {:?}", rel, decided);
                if let Ok(full) = &decided {
                    // Whatever exists of an accepted path resolves inside the folder.
                    let mut existing = full.clone();
                    while !existing.exists() {
                        existing.pop();
                    }
                    prop_assert!(existing.canonicalize().unwrap().starts_with(&canonical_root));
                }
                match open_inside(root.path(), &rel) {
                    Ok(mut file) => {
                        prop_assert!(decided.is_ok(), "{} opened but refused", rel);
                        let mut text = String::new();
                        file.read_to_string(&mut text).unwrap();
                        prop_assert_eq!(text, "inside");
                    }
                    Err(e) => prop_assert!(decided.is_err() || e.is_not_found() || matches!(e, UnsafePath::NotAFile { .. }), "{}: {:?}", rel, e),
                }
            }
        }
    }
}
