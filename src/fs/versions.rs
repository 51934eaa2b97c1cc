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

use super::safe_path::{safe_entry_path, safe_path, UnsafePath};
use super::scan::DiskState;
use super::{apply, now_millis};

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
mod tests;
