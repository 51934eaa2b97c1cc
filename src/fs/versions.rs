//! The version store of one folder: where the files that peers' changes replaced or deleted are
//! kept, local to this node. It lives in `.syncnode-versions/` at the folder's root (never
//! scanned, never synced: `core::path::is_internal`) or in `versions_path`, on the same
//! filesystem, and mirrors the folder's directories: the versions of `a/b.txt` are
//! `a/b~<UTC time>~<deleted|replaced>~<peer>.txt` in it (`core::versioning::version_name`), so a
//! user can browse it by hand too.
//!
//! Keeping a version costs a hard link, never a copy: the old file's inode gets a second name in
//! the store *before* the pull renames the new file over it (or unlinks it, for a delete). A crash
//! in between leaves the old file both at its path and in the store; at no moment is it only in
//! a place a scan could take for a delete. Listing, restoring and cleanup read the store's
//! directories one at a time; which versions survive is `core::versioning`'s decision.
//!
//! A symlink is kept as the link itself: a hard link of the link (`linkat` without
//! `AT_SYMLINK_FOLLOW`), never a copy of what it points to, and restored the same way.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::core::path as paths;
use crate::core::versioning::{parse_version_name, to_remove, version_name, Policy, Reason, SizeByTime, DAY};
use crate::core::{FileKind, FileRecord, ShortId};

use super::apply;
use super::safe_path::{safe_entry_path, safe_path, UnsafePath};
use super::scan::DiskState;

/// One kept version, as `versions list` and `GET /rest/versions` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The path it had in the folder.
    pub path: String,
    /// When it was kept (replaced or deleted), RFC 3339 in UTC.
    pub time: String,
    /// The same, in milliseconds since the epoch.
    pub time_ms: u64,
    pub size: u64,
    pub reason: Reason,
    /// The device (ID prefix) whose change replaced or deleted it.
    pub by: String,
    /// Its file in the store, relative to the store's directory.
    pub stored: String,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restored {
    pub path: String,
    pub version: Version,
    /// The file that was at the path (changed since), now kept under this conflict name.
    pub conflict_copy: Option<String>,
    /// The path already held exactly this content: nothing was changed.
    pub unchanged: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("no kept version of `{path}`{}", at.as_ref().map(|t| format!(" at or before {t}")).unwrap_or_default())]
    NotFound { path: String, at: Option<String> },
    #[error("`{0}` is a directory now; move it away to restore the file")]
    IsDirectory(String),
    #[error(transparent)]
    Unsafe(#[from] UnsafePath),
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> VersionError + '_ {
    move |source| VersionError::Io { path: path.display().to_string(), source }
}

/// What one cleanup pass found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Versions left, and their bytes.
    pub files: u64,
    pub bytes: u64,
    pub removed: u64,
    /// The size cap needs another pass to settle.
    pub again: bool,
}

/// Where the size cap cuts, carried from one cleanup pass to the next.
#[derive(Debug, Clone, Copy, Default)]
struct Cut {
    remove_before: u64,
    range: Option<(u64, u64)>,
}

pub struct VersionStore {
    root: PathBuf,
    dir: PathBuf,
    policy: Policy,
    files: AtomicU64,
    bytes: AtomicU64,
    cut: Mutex<Cut>,
}

/// Milliseconds since the epoch (the store's names are in UTC).
pub fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

impl apply::Keeper for VersionStore {
    fn keep(&self, full: &Path, rel: &str, reason: Reason, by: &str) -> io::Result<Option<PathBuf>> {
        VersionStore::keep(self, full, rel, reason, by)
    }
}

impl VersionStore {
    /// The store of the folder at `root`: in `dir`, or `.syncnode-versions/` at the root.
    pub fn new(root: &Path, dir: Option<&Path>, policy: Policy) -> VersionStore {
        let dir = dir.map_or_else(|| root.join(paths::VERSIONS_DIR), Path::to_path_buf);
        VersionStore {
            root: root.to_path_buf(),
            dir,
            policy,
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            cut: Mutex::new(Cut::default()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Versions held and their bytes (as of the last cleanup pass, plus what was kept since).
    pub fn usage(&self) -> (u64, u64) {
        (self.files.load(Relaxed), self.bytes.load(Relaxed))
    }

    /// Gives the file at `rel` (on disk at `full`) a second name in the store, before a peer's
    /// change replaces or deletes it; returns that name, or `None` when nothing is kept (no
    /// versioning, or neither a regular file nor a link). Same inode, no data copied, unless the
    /// store is on another filesystem (a mount point inside the folder), where it falls back to a
    /// copy (of a link: a new link with the same target).
    pub fn keep(&self, full: &Path, rel: &str, reason: Reason, by: &str) -> io::Result<Option<PathBuf>> {
        if !self.policy.keeps_versions() {
            return Ok(None);
        }
        let meta = match std::fs::symlink_metadata(full) {
            Ok(m) if m.file_type().is_file() || m.file_type().is_symlink() => m,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let (parent, name) = rel.rsplit_once('/').map_or(("", rel), |(d, n)| (d, n));
        let dir = self.store_dir(parent)?;
        std::fs::create_dir_all(&dir)?;
        let mut time = now_millis();
        loop {
            let dest = dir.join(version_name(name, time, reason, by));
            match link_entry(full, &dest) {
                Ok(()) => {}
                // Another version of this path in the same millisecond.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    time += 1;
                    continue;
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EXDEV | libc::EPERM | libc::EMLINK | libc::EOPNOTSUPP)
                    ) =>
                {
                    if meta.file_type().is_symlink() {
                        std::os::unix::fs::symlink(std::fs::read_link(full)?, &dest)?
                    } else {
                        copy_new(full, &dest, &meta)?
                    }
                }
                Err(e) => return Err(e),
            }
            self.files.fetch_add(1, Relaxed);
            self.bytes.fetch_add(meta.len(), Relaxed);
            return Ok(Some(dest));
        }
    }

    /// The store's directory for the folder's directory `parent` ("" for the root), refusing a
    /// symlink on the way as the folder does.
    fn store_dir(&self, parent: &str) -> io::Result<PathBuf> {
        if parent.is_empty() {
            return Ok(self.dir.clone());
        }
        safe_path(&self.dir, parent).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
    }

    /// Kept versions, newest first: all of them, or those of `path` (a file, or everything under a
    /// directory).
    pub fn list(&self, path: Option<&str>) -> io::Result<Vec<Version>> {
        let mut out = Vec::new();
        match path.filter(|p| !p.is_empty()) {
            None => self.walk("", &mut out)?,
            Some(path) => {
                paths::validate(path)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("`{path}`: {e}")))?;
                let (parent, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
                self.read_dir(parent, &mut out, Some(name))?;
                if self.store_dir(path).is_ok_and(|d| d.is_dir()) {
                    self.walk(path, &mut out)?;
                }
            }
        }
        out.sort_by(|a, b| {
            b.time_ms.cmp(&a.time_ms).then_with(|| a.path.cmp(&b.path)).then_with(|| a.stored.cmp(&b.stored))
        });
        Ok(out)
    }

    /// Every version under the folder's directory `under`.
    fn walk(&self, under: &str, out: &mut Vec<Version>) -> io::Result<()> {
        let start = self.store_dir(under)?;
        if !start.is_dir() {
            return Ok(());
        }
        for entry in
            walkdir::WalkDir::new(&start).follow_links(false).into_iter().filter_entry(|e| e.file_type().is_dir())
        {
            let entry = entry.map_err(io::Error::other)?;
            let rel = entry
                .path()
                .strip_prefix(&self.dir)
                .ok()
                .and_then(Path::to_str)
                .map(str::to_string)
                .unwrap_or_default();
            self.read_dir(&rel, out, None)?;
        }
        Ok(())
    }

    /// The versions in the store's directory for the folder's directory `parent` (of the file
    /// `only`, if given).
    fn read_dir(&self, parent: &str, out: &mut Vec<Version>, only: Option<&str>) -> io::Result<()> {
        let dir = self.store_dir(parent)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(file) = entry.file_name().to_str().map(str::to_string) else { continue };
            let Some(tag) = parse_version_name(&file) else { continue };
            if only.is_some_and(|n| n != tag.name) {
                continue;
            }
            // The entry's own metadata: a kept link is listed as the link.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() && !meta.file_type().is_symlink() {
                continue;
            }
            let join = |a: &str, b: &str| if a.is_empty() { b.to_string() } else { format!("{a}/{b}") };
            out.push(Version {
                path: join(parent, &tag.name),
                time: rfc3339(tag.time),
                time_ms: tag.time,
                size: meta.len(),
                reason: tag.reason,
                by: tag.by,
                stored: join(parent, &file),
            });
        }
        Ok(())
    }

    /// Puts a kept version of `path` back: the newest, or the newest kept at or before `at`
    /// (milliseconds). It becomes a local change like any edit (the watcher or the next scan
    /// sees it, and it syncs). A different file at the path is never overwritten: it is moved to
    /// a conflict copy first (a synced file, named for this device `me`). A restored version
    /// leaves the store.
    pub fn restore(&self, path: &str, at: Option<u64>, me: ShortId) -> Result<Restored, VersionError> {
        let not_found = || VersionError::NotFound { path: path.to_string(), at: at.map(rfc3339) };
        let versions = self.list(Some(path)).map_err(io_err(&self.dir))?;
        let version = versions
            .into_iter()
            .filter(|v| v.path == path)
            .find(|v| at.is_none_or(|t| v.time_ms <= t))
            .ok_or_else(not_found)?;
        let (parent, file) = version.stored.rsplit_once('/').map_or(("", version.stored.as_str()), |(d, n)| (d, n));
        let source = self.store_dir(parent).map_err(io_err(&self.dir))?.join(file);
        // The path may hold a link now: it is moved aside as the link, never followed.
        let target = safe_entry_path(&self.root, path)?;
        let mut conflict_copy = None;
        match DiskState::read(&target).map_err(io_err(&target))? {
            None => {}
            Some(s) if s.kind == FileKind::Directory => return Err(VersionError::IsDirectory(path.to_string())),
            Some(current) => {
                if apply::same_bytes(&target, &source) {
                    return Ok(Restored { path: path.to_string(), version, conflict_copy: None, unchanged: true });
                }
                let loser = FileRecord {
                    path: path.to_string(),
                    kind: current.kind,
                    size: current.size,
                    mtime_ns: current.mtime_ns,
                    permissions: current.permissions,
                    version: Default::default(),
                    deleted: false,
                    sequence: 0,
                    modified_by: me,
                    chunks: Vec::new(),
                    link_target: String::new(),
                };
                conflict_copy =
                    Some(apply::move_aside(&self.root, path, &crate::core::conflict::conflict_name(&loser))?);
                // Same size and mtime as the file it replaces would look unchanged to a scan.
                let kept = DiskState::read(&source).map_err(io_err(&source))?;
                if kept.is_some_and(|k| {
                    k.kind == FileKind::File && k.size == current.size && k.mtime_ns == current.mtime_ns
                }) {
                    let bumped = current.mtime_ns + 1000;
                    let time = filetime::FileTime::from_unix_time(
                        bumped.div_euclid(1_000_000_000),
                        bumped.rem_euclid(1_000_000_000) as u32,
                    );
                    filetime::set_file_mtime(&source, time).map_err(io_err(&source))?;
                }
            }
        }
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        // A link fails rather than replace a file that appeared meanwhile.
        link_entry(&source, &target).map_err(io_err(&target))?;
        std::fs::remove_file(&source).map_err(io_err(&source))?;
        let _ = self.files.fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
        let _ = self.bytes.fetch_update(Relaxed, Relaxed, |b| Some(b.saturating_sub(version.size)));
        tracing::info!(path, version = %version.time, conflict_copy = ?conflict_copy, "restored a kept version");
        Ok(Restored { path: path.to_string(), version, conflict_copy, unchanged: false })
    }

    /// One cleanup pass at `now`: each store directory is read on its own (memory grows with the
    /// largest directory, not with the store), each path's versions go through the policy, and the
    /// size cap's cut from the previous pass is applied. With `again`, the cap has not settled yet
    /// and the caller should run another pass soon.
    pub fn cleanup(&self, now: u64) -> io::Result<CleanupReport> {
        let cut = *self.cut.lock().expect("cut lock");
        let default_range = (now.saturating_sub(self.policy.max_age.unwrap_or(365 * DAY)), now + 1);
        let (lo, hi) = cut.range.unwrap_or(default_range);
        let mut sizes = SizeByTime::new(lo, hi);
        let mut report = CleanupReport::default();
        if !self.dir.is_dir() {
            self.files.store(0, Relaxed);
            self.bytes.store(0, Relaxed);
            return Ok(report);
        }
        // Children before their parents, so emptied directories can go too.
        for entry in walkdir::WalkDir::new(&self.dir)
            .follow_links(false)
            .contents_first(true)
            .into_iter()
            .filter_entry(|e| e.file_type().is_dir())
        {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "version cleanup: cannot read an entry");
                    continue;
                }
            };
            let mut groups: HashMap<String, Vec<(u64, u64, PathBuf)>> = HashMap::new();
            for file in std::fs::read_dir(entry.path())?.flatten() {
                let Some(tag) = file.file_name().to_str().and_then(parse_version_name) else { continue };
                let Ok(meta) = file.metadata() else { continue };
                if meta.is_file() || meta.file_type().is_symlink() {
                    groups.entry(tag.name).or_default().push((tag.time, meta.len(), file.path()));
                }
            }
            for versions in groups.values() {
                let times: Vec<u64> = versions.iter().map(|v| v.0).collect();
                for ((time, size, path), gone) in versions.iter().zip(to_remove(&self.policy, &times, now)) {
                    if gone || *time < cut.remove_before {
                        match std::fs::remove_file(path) {
                            Ok(()) => report.removed += 1,
                            Err(e) => {
                                tracing::warn!(path = %path.display(), error = %e, "version cleanup: cannot remove")
                            }
                        }
                    } else {
                        sizes.add(*time, *size);
                        report.files += 1;
                        report.bytes += size;
                    }
                }
            }
            if entry.path() != self.dir {
                // Fails, as it should, while the directory still holds anything.
                let _ = std::fs::remove_dir(entry.path());
            }
        }
        let next = self.policy.max_size.and_then(|max| sizes.cut(max));
        report.again = next.is_some();
        *self.cut.lock().expect("cut lock") = match next {
            Some(c) => Cut { remove_before: c.remove_before, range: c.refine },
            None => Cut::default(),
        };
        self.files.store(report.files, Relaxed);
        self.bytes.store(report.bytes, Relaxed);
        Ok(report)
    }
}

/// A second name `to` for the entry at `from`, which may be a symlink: the link itself gets the
/// name (`linkat` without `AT_SYMLINK_FOLLOW`), never what it points to.
fn link_entry(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: NUL-terminated paths; flags 0 links the entry itself.
    match unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), 0) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// A copy of `from` at `to` (which must not exist yet), with its mtime and permissions: the
/// fallback where a hard link cannot be made.
fn copy_new(from: &Path, to: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    let mut source = std::fs::File::open(from)?;
    let mut dest = std::fs::OpenOptions::new().write(true).create_new(true).open(to)?;
    io::copy(&mut source, &mut dest)?;
    dest.set_permissions(meta.permissions())?;
    filetime::set_file_handle_times(&dest, None, Some(filetime::FileTime::from_last_modification_time(meta)))?;
    dest.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::versioning::{Kind, HOUR};
    use std::os::unix::fs::MetadataExt;

    fn store(root: &Path, policy: Policy) -> VersionStore {
        VersionStore::new(root, None, policy)
    }

    #[test]
    fn a_kept_version_is_the_same_inode_and_survives_the_replace() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        let file = root.path().join("d/report.txt");
        std::fs::write(&file, b"old").unwrap();
        let inode = std::fs::metadata(&file).unwrap().ino();
        let s = store(root.path(), Policy::DEFAULT);
        let kept = s.keep(&file, "d/report.txt", Reason::Replaced, "ABCDEFG").unwrap().unwrap();
        std::fs::write(root.path().join("new"), b"new content").unwrap();
        std::fs::rename(root.path().join("new"), &file).unwrap();
        assert_eq!(std::fs::metadata(&kept).unwrap().ino(), inode);
        assert_eq!(std::fs::read(&kept).unwrap(), b"old");
        let listed = s.list(None).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].path.as_str(), listed[0].size, listed[0].reason, listed[0].by.as_str()),
            ("d/report.txt", 3, Reason::Replaced, "ABCDEFG")
        );
        assert_eq!(s.usage(), (1, 3));
    }

    #[test]
    fn a_file_replaced_by_a_directory_or_deleted_by_a_peer_is_kept() {
        use crate::core::record::fixtures::file;
        let root = tempfile::tempdir().unwrap();
        let s = store(root.path(), Policy::DEFAULT);
        std::fs::write(root.path().join("x"), b"was a file").unwrap();
        std::fs::write(root.path().join("y"), b"deleted").unwrap();
        let disk = |p: &str| DiskState::read(&root.path().join(p)).unwrap().unwrap();
        let local = |p: &str| FileRecord {
            size: disk(p).size,
            mtime_ns: disk(p).mtime_ns,
            permissions: disk(p).permissions,
            ..file(p, 1, &[(1, 1)], 0, 1)
        };
        let (lx, ly) = (local("x"), local("y"));
        let dir =
            FileRecord { kind: FileKind::Directory, chunks: Vec::new(), size: 0, ..file("x", 1, &[(1, 2)], 0, 2) };
        apply::make_dir_keeping(root.path(), &dir, Some(&lx), Some((&s as &dyn apply::Keeper, ShortId(2)))).unwrap();
        assert!(root.path().join("x").is_dir());
        assert!(
            apply::remove_keeping(root.path(), "y", Some(&ly), Some((&s as &dyn apply::Keeper, ShortId(2)))).unwrap()
        );
        let kept: Vec<(String, Reason)> = s.list(None).unwrap().into_iter().map(|v| (v.path, v.reason)).collect();
        assert!(
            kept.contains(&("x".into(), Reason::Replaced)) && kept.contains(&("y".into(), Reason::Deleted)),
            "{kept:?}"
        );
    }

    #[test]
    fn nothing_is_kept_without_versioning() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("x"), b"x").unwrap();
        let s = store(root.path(), Policy { kind: Kind::None, ..Policy::DEFAULT });
        assert_eq!(s.keep(&root.path().join("x"), "x", Reason::Deleted, "local").unwrap(), None);
        assert!(!root.path().join(paths::VERSIONS_DIR).exists());
    }

    #[test]
    fn versions_are_listed_newest_first_and_by_path() {
        let root = tempfile::tempdir().unwrap();
        let s = store(root.path(), Policy::DEFAULT);
        for (rel, content) in [("a.txt", "1"), ("a.txt", "22"), ("sub/b.txt", "333"), ("a.txt.bak", "4444")] {
            let full = root.path().join(rel);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, content).unwrap();
            s.keep(&full, rel, Reason::Deleted, "local").unwrap();
            std::fs::remove_file(&full).unwrap();
        }
        let all = s.list(None).unwrap();
        assert_eq!(all.len(), 4);
        assert!(all.windows(2).all(|w| w[0].time_ms >= w[1].time_ms));
        let a: Vec<u64> = s.list(Some("a.txt")).unwrap().iter().map(|v| v.size).collect();
        assert_eq!(a, vec![2, 1]);
        assert_eq!(s.list(Some("sub")).unwrap().len(), 1);
        assert!(s.list(Some("nothing/here")).unwrap().is_empty());
    }

    #[test]
    fn a_restore_puts_the_file_back_and_never_overwrites_a_changed_one() {
        let root = tempfile::tempdir().unwrap();
        let s = store(root.path(), Policy::DEFAULT);
        let file = root.path().join("notes.txt");
        std::fs::write(&file, b"version one").unwrap();
        s.keep(&file, "notes.txt", Reason::Deleted, "ABCDEFG").unwrap();
        std::fs::remove_file(&file).unwrap();
        // Deleted: it comes back as it was, and leaves the store.
        let r = s.restore("notes.txt", None, ShortId(7)).unwrap();
        assert!(r.conflict_copy.is_none() && !r.unchanged);
        assert_eq!(std::fs::read(&file).unwrap(), b"version one");
        assert!(s.list(None).unwrap().is_empty());
        // Replaced meanwhile: the newer file becomes a conflict copy, the version goes back.
        s.keep(&file, "notes.txt", Reason::Replaced, "ABCDEFG").unwrap();
        std::fs::write(root.path().join("tmp"), b"version two").unwrap();
        std::fs::rename(root.path().join("tmp"), &file).unwrap();
        let r = s.restore("notes.txt", None, ShortId(7)).unwrap();
        let copy = r.conflict_copy.unwrap();
        assert!(copy.starts_with("notes.sync-conflict-") && copy.ends_with(".txt"), "{copy}");
        assert_eq!(std::fs::read(root.path().join(&copy)).unwrap(), b"version two");
        assert_eq!(std::fs::read(&file).unwrap(), b"version one");
        // Nothing left to restore.
        assert!(matches!(s.restore("notes.txt", None, ShortId(7)), Err(VersionError::NotFound { .. })));
    }

    #[test]
    fn restore_at_a_time_takes_the_newest_kept_by_then() {
        let root = tempfile::tempdir().unwrap();
        let s = store(root.path(), Policy::DEFAULT);
        let dir = root.path().join(paths::VERSIONS_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        let t0 = 1_700_000_000_000;
        for (i, content) in ["first", "second", "third"].iter().enumerate() {
            std::fs::write(dir.join(version_name("f.txt", t0 + i as u64 * HOUR, Reason::Replaced, "ABCDEFG")), content)
                .unwrap();
        }
        s.restore("f.txt", Some(t0 + HOUR + 5), ShortId(1)).unwrap();
        assert_eq!(std::fs::read(root.path().join("f.txt")).unwrap(), b"second");
        assert!(matches!(s.restore("f.txt", Some(t0 - 1), ShortId(1)), Err(VersionError::NotFound { .. })));
    }

    #[test]
    fn cleanup_applies_the_policy_and_the_size_cap() {
        let root = tempfile::tempdir().unwrap();
        let now = 1_800_000_000_000;
        let policy = Policy { kind: Kind::Simple, keep: 2, max_age: Some(30 * DAY), max_size: Some(250) };
        let s = store(root.path(), policy);
        let dir = root.path().join(paths::VERSIONS_DIR).join("a/b");
        std::fs::create_dir_all(&dir).unwrap();
        // Three versions of x (one too many), one too old, one of y: 100 bytes each.
        for (name, age) in [("x", HOUR), ("x", 2 * HOUR), ("x", 3 * HOUR), ("x", 31 * DAY), ("y", 4 * HOUR)] {
            std::fs::write(dir.join(version_name(name, now - age, Reason::Replaced, "ABCDEFG")), [0u8; 100]).unwrap();
        }
        std::fs::create_dir_all(root.path().join(paths::VERSIONS_DIR).join("empty/dir")).unwrap();
        let first = s.cleanup(now).unwrap();
        assert_eq!((first.files, first.bytes, first.removed, first.again), (3, 300, 2, true));
        assert!(!root.path().join(paths::VERSIONS_DIR).join("empty").exists());
        // The cap: the oldest (y) goes.
        let mut last = first;
        for _ in 0..6 {
            if !last.again {
                break;
            }
            last = s.cleanup(now).unwrap();
        }
        assert_eq!((last.files, last.bytes, last.again), (2, 200, false));
        let left: Vec<String> = s.list(None).unwrap().into_iter().map(|v| v.path).collect();
        assert_eq!(left, vec!["a/b/x", "a/b/x"]);
        assert_eq!(s.usage(), (2, 200));
    }
}
