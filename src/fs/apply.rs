//! Applying remote versions to disk. Content goes to `.syncnode-tmp-<token>-<name>` beside the
//! target, is verified and fsynced, gets its mtime and permissions, and is renamed into place only if
//! the target still is what our index says it is: a user's edit made meanwhile is never overwritten.
//!
//! A link is made the same way: `symlinkat` at a temp name in its parent directory, opened one
//! component at a time without following links, then `renameat` over the target. Nothing here
//! follows a link: a link at a path is replaced, moved to the version store or unlinked as the link
//! itself, and only one we hold as a synced link may be acted on at all (`entry_path`); any other
//! link at the end of a path, or on the way, is refused as `safe_path` decides.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use std::ffi::CString;
use std::os::fd::OwnedFd;

use crate::core::path::temp_name;
use crate::core::record::check_link_target;
use crate::core::versioning::Reason;
use crate::core::{FileKind, FileRecord, ShortId};

use super::safe_path::{open_dir_inside, safe_entry_path, safe_path, UnsafePath};
use super::scan::{read_target, DiskState};

/// Where a file that a peer's change replaces or deletes is kept before it goes: the folder's
/// version store (`fs::versions`), which implements this so that applying needs nothing of it.
pub trait Keeper {
    /// Gives the file at `rel` (on disk at `full`) a second name; `None` when nothing is kept.
    fn keep(&self, full: &Path, rel: &str, reason: Reason, by: &str) -> io::Result<Option<PathBuf>>;
}

/// The keeper of what a peer's change replaces or deletes, and which peer that is.
pub type Keep<'a> = Option<(&'a dyn Keeper, ShortId)>;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Unsafe(#[from] UnsafePath),
    #[error("`{0}` changed on disk since it was last scanned; not overwriting it")]
    LocalChange(String),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

impl ApplyError {
    /// Whether retrying cannot help until the folder itself changes: the path is refused by the
    /// rules, or has a link or a file on the way. The refusal was logged once already (a link
    /// by `safe_path::refuse_once`); a retry loop would only repeat it.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ApplyError::Unsafe(e) if !matches!(e, UnsafePath::Io { .. }))
    }
}

fn io_err(path: &str) -> impl FnOnce(io::Error) -> ApplyError + '_ {
    move |source| ApplyError::Io { path: path.to_string(), source }
}

/// Fails unless the path on disk is what `local` (our record) describes, or absent where we have
/// no live record.
pub fn check_unchanged(full: &Path, rel: &str, local: Option<&FileRecord>) -> Result<(), ApplyError> {
    let state = DiskState::read(full).map_err(io_err(rel))?;
    let ok = match (state, local.filter(|l| !l.deleted)) {
        (None, _) => true,
        // A link is unchanged when it still points where our record says (read, never followed).
        (Some(s), Some(l)) if s.kind == FileKind::Symlink => {
            l.is_link() && read_target(full).is_ok_and(|t| t == l.link_target)
        }
        (Some(s), Some(l)) => s.matches(l),
        (Some(_), None) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ApplyError::LocalChange(rel.to_string()))
    }
}

/// Where a remote change acts on `rel`: `safe_path`'s decision, except that the path itself may
/// be a link when our record says it is one (a synced link, replaced by a rename, kept by a hard
/// link of the link, or unlinked: never followed). A link we do not hold as one (an ignored link,
/// or one not scanned yet) is refused like any link.
pub fn entry_path(root: &Path, rel: &str, local: Option<&FileRecord>) -> Result<PathBuf, UnsafePath> {
    if local.is_some_and(FileRecord::is_link) {
        safe_entry_path(root, rel)
    } else {
        safe_path(root, rel)
    }
}

fn ensure_parent(root: &Path, rel: &str) -> Result<(), ApplyError> {
    if let Some(parent) = crate::core::path::parent(rel) {
        let dir = safe_path(root, parent)?;
        std::fs::create_dir_all(&dir).map_err(io_err(rel))?;
    }
    Ok(())
}

/// A download in progress.
pub struct TempFile {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    rel: String,
    /// Bytes written since the disk was last asked to start writing back.
    unflushed: AtomicU64,
}

/// Every this many bytes written, writeback of the temp file is started in the background, so the
/// fsync before the rename finds little left to do.
const WRITEBACK_EVERY: u64 = 8 << 20;

impl TempFile {
    pub fn create(root: &Path, rel: &str, size: u64) -> Result<TempFile, ApplyError> {
        Self::create_replacing(root, rel, size, None)
    }

    /// A download that will replace what we hold at `rel` as `local` (which may be a synced link:
    /// the rename replaces the link itself).
    pub fn create_replacing(
        root: &Path,
        rel: &str,
        size: u64,
        local: Option<&FileRecord>,
    ) -> Result<TempFile, ApplyError> {
        let target = entry_path(root, rel, local)?;
        ensure_parent(root, rel)?;
        // The target's parents were checked by safe_path; the temp file sits beside it, under a
        // name no other download uses (never opened twice: a second open would truncate the first
        // writer's verified data under it).
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let (temp, file) = loop {
            let token = format!("{:x}.{:x}", std::process::id(), NEXT.fetch_add(1, Relaxed));
            let temp = root.join(temp_name(rel, &token));
            match OpenOptions::new().read(true).write(true).create_new(true).open(&temp) {
                Ok(file) => break (temp, file),
                // A leftover of an earlier process with the same pid: take the next number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(rel)(e)),
            }
        };
        file.set_len(size).map_err(io_err(rel))?;
        Ok(TempFile { file, temp, target, rel: rel.to_string(), unflushed: AtomicU64::new(0) })
    }

    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), ApplyError> {
        self.file.write_all_at(data, offset).map_err(io_err(&self.rel))?;
        let len = data.len() as u64;
        if self.unflushed.fetch_add(len, Relaxed) + len >= WRITEBACK_EVERY {
            self.unflushed.store(0, Relaxed);
            // SAFETY: an open descriptor; the call only queues writeback of the file's dirty pages
            // (no wait), and a failure just leaves the work to the fsync.
            unsafe { libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        }
        Ok(())
    }

    /// fsync, metadata, and the atomic rename, if the target is still as `local` describes.
    pub fn commit(self, record: &FileRecord, local: Option<&FileRecord>) -> Result<DiskState, ApplyError> {
        commit_all(vec![(self, record.clone(), local.cloned())]).pop().expect("one result")
    }

    /// Mode and mtime of the finished file (only the permission bits: a peer never makes a file
    /// setuid, setgid or sticky here, whatever its record says).
    fn finish(&self, record: &FileRecord) -> Result<(), ApplyError> {
        self.file
            .set_permissions(std::fs::Permissions::from_mode(applied_mode(record.permissions)))
            .map_err(io_err(&self.rel))?;
        let mtime = filetime::FileTime::from_unix_time(
            record.mtime_ns.div_euclid(1_000_000_000),
            record.mtime_ns.rem_euclid(1_000_000_000) as u32,
        );
        filetime::set_file_handle_times(&self.file, None, Some(mtime)).map_err(io_err(&self.rel))
    }

    /// The rename into place, if the target is still as `local` describes. The file it replaces
    /// is kept in the version store first (a hard link; skipped when only metadata changed).
    fn replace(&self, local: Option<&FileRecord>, record: &FileRecord, keep: Keep) -> Result<DiskState, ApplyError> {
        check_unchanged(&self.target, &self.rel, local)?;
        let kept = match keep {
            Some((store, by)) if !local.is_some_and(|l| l.same_content(record)) => {
                store.keep(&self.target, &self.rel, Reason::Replaced, &by.prefix()).map_err(io_err(&self.rel))?
            }
            _ => None,
        };
        if let Err(e) = std::fs::rename(&self.temp, &self.target) {
            if let Some(k) = kept {
                let _ = std::fs::remove_file(k);
            }
            return Err(io_err(&self.rel)(e));
        }
        DiskState::read(&self.target)
            .map_err(io_err(&self.rel))?
            .ok_or_else(|| ApplyError::LocalChange(self.rel.clone()))
    }

    /// Removes the temp file (a writer still holding it only keeps its space until it is done).
    pub fn abandon(&self) {
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// Commits finished downloads: each gets its record's mode and mtime, all are made durable, and only
/// then is each renamed into place (if its target is still what `local` describes), so a crash at
/// any point leaves either a temp file (removed at start) or a complete file. Several files are
/// made durable with one `syncfs` (one journal commit and one disk cache flush for the batch)
/// instead of an fsync each; a single file with its own fsync.
pub fn commit_all(batch: Vec<(TempFile, FileRecord, Option<FileRecord>)>) -> Vec<Result<DiskState, ApplyError>> {
    commit_all_keeping(batch, None)
}

/// `commit_all`, keeping each file that a download replaces in `versions` (with the device that
/// made the new version) before the rename.
pub fn commit_all_keeping(
    batch: Vec<(TempFile, FileRecord, Option<FileRecord>)>,
    versions: Option<&dyn Keeper>,
) -> Vec<Result<DiskState, ApplyError>> {
    let finished: Vec<Result<(), ApplyError>> = batch.iter().map(|(temp, record, _)| temp.finish(record)).collect();
    let ready: Vec<&TempFile> =
        batch.iter().zip(&finished).filter(|(_, f)| f.is_ok()).map(|((t, _, _), _)| t).collect();
    let durable = match ready.as_slice() {
        [] => Ok(()),
        [one] => one.file.sync_all(),
        // One flush per filesystem the batch touches (a folder may hold mount points).
        many => {
            let mut filesystems: HashMap<u64, &File> = HashMap::new();
            for t in many {
                filesystems.entry(t.file.metadata().map_or(0, |m| m.dev())).or_insert(&t.file);
            }
            filesystems.values().try_for_each(|file| {
                // SAFETY: an open descriptor; syncfs only flushes the filesystem it is on.
                match unsafe { libc::syncfs(file.as_raw_fd()) } {
                    0 => Ok(()),
                    _ => Err(io::Error::last_os_error()),
                }
            })
        }
    };
    batch
        .into_iter()
        .zip(finished)
        .map(|((temp, record, local), finished)| {
            let result = finished.and_then(|()| match &durable {
                Ok(()) => temp.replace(local.as_ref(), &record, versions.map(|v| (v, record.modified_by))),
                Err(e) => {
                    Err(ApplyError::Io { path: temp.rel.clone(), source: io::Error::new(e.kind(), e.to_string()) })
                }
            });
            if result.is_err() {
                let _ = std::fs::remove_file(&temp.temp);
            }
            result
        })
        .collect()
}

/// The mode a record's permissions become on disk: the permission bits 0o777 and nothing else.
pub fn applied_mode(permissions: u32) -> u32 {
    permissions & 0o777
}

/// Makes a directory (and its parents) with the record's permissions.
pub fn make_dir(root: &Path, record: &FileRecord, local: Option<&FileRecord>) -> Result<DiskState, ApplyError> {
    make_dir_keeping(root, record, local, None)
}

/// `make_dir`, keeping a file that the directory replaces in the version store first.
pub fn make_dir_keeping(
    root: &Path,
    record: &FileRecord,
    local: Option<&FileRecord>,
    keep: Keep,
) -> Result<DiskState, ApplyError> {
    let full = entry_path(root, &record.path, local)?;
    match DiskState::read(&full).map_err(io_err(&record.path))? {
        Some(s) if s.kind == FileKind::Directory => {}
        Some(_) => {
            check_unchanged(&full, &record.path, local)?;
            if let Some((store, by)) = keep {
                store.keep(&full, &record.path, Reason::Replaced, &by.prefix()).map_err(io_err(&record.path))?;
            }
            std::fs::remove_file(&full).map_err(io_err(&record.path))?;
            std::fs::create_dir_all(&full).map_err(io_err(&record.path))?;
        }
        None => std::fs::create_dir_all(&full).map_err(io_err(&record.path))?,
    }
    let mode = if record.permissions & 0o700 == 0 { 0o755 } else { applied_mode(record.permissions) };
    std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).map_err(io_err(&record.path))?;
    DiskState::read(&full).map_err(io_err(&record.path))?.ok_or_else(|| ApplyError::LocalChange(record.path.clone()))
}

/// Deletes a path we hold as `local`. A file that changed since its scan is kept (it becomes a new
/// version that wins over the delete); a directory that still has content is kept.
pub fn remove(root: &Path, rel: &str, local: Option<&FileRecord>) -> Result<bool, ApplyError> {
    remove_keeping(root, rel, local, None)
}

/// `remove`, keeping a deleted file in the version store first (a hard link, then the unlink: a
/// crash between the two leaves the file in both places, never in neither).
pub fn remove_keeping(root: &Path, rel: &str, local: Option<&FileRecord>, keep: Keep) -> Result<bool, ApplyError> {
    let full = entry_path(root, rel, local)?;
    match DiskState::read(&full).map_err(io_err(rel))? {
        None => Ok(true),
        Some(s) if s.kind == FileKind::Directory => match std::fs::remove_dir(&full) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(false),
            Err(e) => Err(io_err(rel)(e)),
        },
        Some(_) => {
            check_unchanged(&full, rel, local)?;
            let kept = match keep {
                Some((store, by)) => store.keep(&full, rel, Reason::Deleted, &by.prefix()).map_err(io_err(rel))?,
                None => None,
            };
            if let Err(e) = std::fs::remove_file(&full) {
                if let Some(k) = kept {
                    let _ = std::fs::remove_file(k);
                }
                return Err(io_err(rel)(e));
            }
            Ok(true)
        }
    }
}

fn cstring(rel: &str, text: &str) -> Result<CString, ApplyError> {
    CString::new(text).map_err(|e| io_err(rel)(io::Error::new(io::ErrorKind::InvalidInput, e)))
}

fn check(rel: &str, rc: libc::c_int) -> Result<(), ApplyError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io_err(rel)(io::Error::last_os_error()))
    }
}

/// Makes `record` (a link) at its path: a new link at a temp name in the parent directory, which
/// is opened without following links (`open_dir_inside`), with the record's mtime set on the link
/// itself, then renamed over the path if the path is still what `local` describes. What it
/// replaces is kept in the version store first (a file or a link, as itself); an empty directory
/// is removed. The target text is never resolved: it may be absolute, dangling or lead out of the
/// folder, and nothing is read or written through it.
pub fn make_link_keeping(
    root: &Path,
    record: &FileRecord,
    local: Option<&FileRecord>,
    keep: Keep,
) -> Result<DiskState, ApplyError> {
    let rel = record.path.as_str();
    check_link_target(&record.link_target).map_err(|m| io_err(rel)(io::Error::new(io::ErrorKind::InvalidInput, m)))?;
    let full = entry_path(root, rel, local)?;
    ensure_parent(root, rel)?;
    let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let dir = open_dir_inside(root, parent)?;
    let existing = DiskState::read(&full).map_err(io_err(rel))?;
    if existing.is_some() {
        check_unchanged(&full, rel, local)?;
    }
    let target = cstring(rel, &record.link_target)?;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let temp = loop {
        let token = format!("{:x}.{:x}", std::process::id(), NEXT.fetch_add(1, Relaxed));
        let temp = cstring(rel, &temp_name(name, &token))?;
        // SAFETY: NUL-terminated strings and an open directory descriptor.
        match check(rel, unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), temp.as_ptr()) }) {
            Ok(()) => break temp,
            Err(ApplyError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    };
    let unlink_temp = |dir: &OwnedFd| {
        // SAFETY: as above; removes the temp link (never what it points to).
        unsafe { libc::unlinkat(dir.as_raw_fd(), temp.as_ptr(), 0) };
    };
    let result = (|| -> Result<(), ApplyError> {
        let mtime = libc::timespec {
            tv_sec: record.mtime_ns.div_euclid(1_000_000_000) as libc::time_t,
            tv_nsec: record.mtime_ns.rem_euclid(1_000_000_000) as _,
        };
        let times = [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }, mtime];
        // SAFETY: as above, and a two-element times array; AT_SYMLINK_NOFOLLOW sets the link's own
        // times. A failure (a filesystem without link times) leaves the link's mtime as it is.
        unsafe { libc::utimensat(dir.as_raw_fd(), temp.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
        let kept = match existing {
            Some(s) if s.kind == FileKind::Directory => {
                std::fs::remove_dir(&full).map_err(io_err(rel))?;
                None
            }
            Some(_) => match keep {
                Some((store, by)) if !local.is_some_and(|l| l.same_content(record)) => {
                    store.keep(&full, rel, Reason::Replaced, &by.prefix()).map_err(io_err(rel))?
                }
                _ => None,
            },
            None => None,
        };
        let name = cstring(rel, name)?;
        // SAFETY: as above; rename replaces whatever is at `name` (a link included) without
        // following it.
        let renamed =
            check(rel, unsafe { libc::renameat(dir.as_raw_fd(), temp.as_ptr(), dir.as_raw_fd(), name.as_ptr()) });
        if renamed.is_err() {
            if let Some(k) = kept {
                let _ = std::fs::remove_file(k);
            }
        }
        renamed
    })();
    if let Err(e) = result {
        unlink_temp(&dir);
        return Err(e);
    }
    DiskState::read(&full).map_err(io_err(rel))?.ok_or_else(|| ApplyError::LocalChange(rel.to_string()))
}

/// Where a conflict copy goes: `copy` if nothing has that name yet; `None` if a file there (or at a
/// numbered variant) already holds the same content (another node made this copy first and it
/// synced here); else `copy` with `-2`, `-3`, ... before the extension. Two losing versions by one
/// device within one second share a conflict name, and the second must not replace the first.
pub fn free_name(root: &Path, copy: &str, same: impl Fn(&Path) -> bool) -> Option<String> {
    let (dir, file) = copy.rsplit_once('/').map_or(("", copy), |(d, f)| (d, f));
    let (stem, ext) = match file.rfind('.') {
        Some(i) if i > 0 && file[..i].contains(".sync-conflict-") => (&file[..i], &file[i..]),
        _ => (file, ""),
    };
    let candidates = std::iter::once(copy.to_string()).chain((2..).map(|n| {
        let name = format!("{stem}-{n}{ext}");
        if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        }
    }));
    for name in candidates {
        let Ok(path) = safe_entry_path(root, &name) else { return Some(name) };
        match std::fs::symlink_metadata(&path) {
            Err(_) => return Some(name),
            Ok(m) if (m.is_file() || m.file_type().is_symlink()) && same(&path) => return None,
            Ok(_) => {}
        }
    }
    unreachable!("the candidate names are endless")
}

/// Opens a regular file for reading without following a link at its last component.
fn open_no_follow(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).ok()?;
    file.metadata().ok().filter(|m| m.is_file()).map(|_| file)
}

/// Whether two entries hold the same content: two regular files with the same bytes, or two links
/// with the same target. A link is compared by its target text, never read through.
pub fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(ma), Ok(mb)) = (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) else { return false };
    if ma.file_type().is_symlink() || mb.file_type().is_symlink() {
        return ma.file_type().is_symlink()
            && mb.file_type().is_symlink()
            && matches!((std::fs::read_link(a), std::fs::read_link(b)), (Ok(x), Ok(y)) if x == y);
    }
    let (Some(fa), Some(fb)) = (open_no_follow(a), open_no_follow(b)) else { return false };
    if fa.metadata().map(|m| m.len()).ok() != fb.metadata().map(|m| m.len()).ok() {
        return false;
    }
    let (mut ra, mut rb) = (io::BufReader::new(fa), io::BufReader::new(fb));
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = match ra.read(&mut ba) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return true;
        }
        if rb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// Moves our losing version aside to its conflict name, never over another file; returns the
/// name used (or drops ours if an identical copy is already there). A link is moved as the link.
pub fn move_aside(root: &Path, rel: &str, copy: &str) -> Result<String, ApplyError> {
    let from = safe_entry_path(root, rel)?;
    match free_name(root, copy, |existing| same_bytes(existing, &from)) {
        Some(copy) => {
            let to = safe_path(root, &copy)?;
            ensure_parent(root, &copy)?;
            std::fs::rename(&from, to).map_err(io_err(rel))?;
            Ok(copy)
        }
        None => {
            std::fs::remove_file(&from).map_err(io_err(rel))?;
            Ok(copy.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::fixtures::file;
    use crate::fs::versions::VersionStore;

    fn temp_files(root: &Path) -> Vec<PathBuf> {
        walkdir::WalkDir::new(root)
            .into_iter()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".syncnode-tmp-"))
            .map(|e| e.into_path())
            .collect()
    }

    #[test]
    fn a_download_is_invisible_until_committed() {
        let root = tempfile::tempdir().unwrap();
        let record = file("d/x.bin", 1, &[(1, 1)], 1_600_000_000, 1);
        let temp = TempFile::create(root.path(), &record.path, 5).unwrap();
        temp.write_at(0, b"hello").unwrap();
        assert!(!root.path().join("d/x.bin").exists());
        assert_eq!(temp_files(root.path()).len(), 1);
        let state = temp.commit(&record, None).unwrap();
        assert_eq!(std::fs::read(root.path().join("d/x.bin")).unwrap(), b"hello");
        assert_eq!(state.mtime_ns, record.mtime_ns);
        assert!(temp_files(root.path()).is_empty());
    }

    #[test]
    fn a_path_behind_a_link_is_a_permanent_refusal() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        let e = TempFile::create(root.path(), "link/x", 5).err().unwrap();
        assert!(e.is_permanent(), "{e}");
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none(), "nothing written outside");
        assert!(!ApplyError::LocalChange("x".into()).is_permanent());
    }

    #[test]
    fn setuid_setgid_and_sticky_bits_are_never_applied() {
        let root = tempfile::tempdir().unwrap();
        let mut record = file("x", 1, &[(1, 1)], 1_600_000_000, 1);
        record.size = 5;
        record.permissions = 0o7755;
        let temp = TempFile::create(root.path(), "x", 5).unwrap();
        temp.write_at(0, b"hello").unwrap();
        let state = temp.commit(&record, None).unwrap();
        assert_eq!(std::fs::metadata(root.path().join("x")).unwrap().permissions().mode() & 0o7777, 0o755);
        assert_eq!(state.permissions, 0o755);
        let dir = FileRecord {
            path: "d".into(),
            kind: FileKind::Directory,
            size: 0,
            chunks: vec![],
            permissions: 0o3777,
            ..record
        };
        make_dir(root.path(), &dir, None).unwrap();
        assert_eq!(std::fs::metadata(root.path().join("d")).unwrap().permissions().mode() & 0o7777, 0o777);
    }

    #[test]
    fn two_downloads_of_one_path_never_share_a_temp_file() {
        let root = tempfile::tempdir().unwrap();
        let record = file("x", 1, &[(1, 1)], 1_600_000_000, 1);
        let first = TempFile::create(root.path(), "x", 5).unwrap();
        first.write_at(0, b"hello").unwrap();
        // A second writer of the same path starts (and fails) meanwhile.
        let second = TempFile::create(root.path(), "x", 5).unwrap();
        assert_eq!(temp_files(root.path()).len(), 2);
        second.abandon();
        first.commit(&record, None).unwrap();
        assert_eq!(std::fs::read(root.path().join("x")).unwrap(), b"hello");
        assert!(temp_files(root.path()).is_empty());
    }

    #[test]
    fn a_batch_commits_each_file_unless_its_target_changed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("edited.txt"), b"a local edit").unwrap();
        let batch: Vec<_> = ["a.txt", "edited.txt", "b/c.txt"]
            .iter()
            .map(|name| {
                let record = file(name, 1, &[(1, 1)], 1_600_000_000, 1);
                let temp = TempFile::create(root.path(), name, 3).unwrap();
                temp.write_at(0, &name.as_bytes()[..3]).unwrap();
                // We hold no record of `edited.txt`, so the file on disk is someone's edit.
                (temp, record, None)
            })
            .collect();
        let results = commit_all(batch);
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(matches!(results[1], Err(ApplyError::LocalChange(_))), "{results:?}");
        assert_eq!(std::fs::read(root.path().join("a.txt")).unwrap(), b"a.t");
        assert_eq!(std::fs::read(root.path().join("b/c.txt")).unwrap(), b"b/c");
        assert_eq!(std::fs::read(root.path().join("edited.txt")).unwrap(), b"a local edit");
        assert!(temp_files(root.path()).is_empty(), "temp files left");
    }

    #[test]
    fn a_conflict_copy_never_replaces_another() {
        let root = tempfile::tempdir().unwrap();
        let copy = "d/x.sync-conflict-20240101-000000-ABCDEFG.txt";
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::fs::write(root.path().join(copy), b"first loser").unwrap();
        std::fs::write(root.path().join("d/x.txt"), b"second loser").unwrap();
        let moved = move_aside(root.path(), "d/x.txt", copy).unwrap();
        assert_eq!(moved, "d/x.sync-conflict-20240101-000000-ABCDEFG-2.txt");
        assert_eq!(std::fs::read(root.path().join(copy)).unwrap(), b"first loser");
        assert_eq!(std::fs::read(root.path().join(moved)).unwrap(), b"second loser");
    }

    /// A folder, a directory outside it holding `secret`, and a version store.
    fn with_outside() -> (tempfile::TempDir, tempfile::TempDir, VersionStore) {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"outside").unwrap();
        let store = VersionStore::new(root.path(), None, crate::core::versioning::Policy::DEFAULT);
        (root, outside, store)
    }

    fn target_of(root: &Path, rel: &str) -> String {
        std::fs::read_link(root.join(rel)).unwrap().to_str().unwrap().to_string()
    }

    #[test]
    fn a_link_is_made_as_the_same_link_whatever_it_points_to() {
        use crate::core::record::fixtures::link;
        let (root, outside, store) = with_outside();
        let secret = outside.path().join("secret").display().to_string();
        let by = Some((&store as &dyn Keeper, ShortId(2)));
        for (rel, target) in [("d/rel", "../x"), ("abs", secret.as_str()), ("dangling", "no/such"), ("up", "../../..")]
        {
            let record = link(rel, target, &[(2, 1)], 1_600_000_000, 2);
            let state = make_link_keeping(root.path(), &record, None, by).unwrap();
            assert_eq!(state.kind, FileKind::Symlink);
            assert_eq!(target_of(root.path(), rel), target);
            let mtime = std::fs::symlink_metadata(root.path().join(rel)).unwrap().mtime();
            assert_eq!(mtime, 1_600_000_000, "the record's mtime is set on the link itself");
        }
        assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"outside");
        assert!(temp_files(root.path()).is_empty());
        // Retargeting replaces the link; the old link is kept in the store as the link.
        let old = link("abs", &secret, &[(2, 1)], 1_600_000_000, 2);
        let new = link("abs", "elsewhere", &[(2, 2)], 1_600_000_001, 2);
        make_link_keeping(root.path(), &new, Some(&old), by).unwrap();
        assert_eq!(target_of(root.path(), "abs"), "elsewhere");
        let kept = store.list(Some("abs")).unwrap();
        assert_eq!(kept.len(), 1);
        let kept_path = store.dir().join(&kept[0].stored);
        assert_eq!(std::fs::read_link(kept_path).unwrap().to_str().unwrap(), secret);
        // A link we do not hold as one (an ignored link, or one not scanned yet) is refused.
        let e = make_link_keeping(root.path(), &link("abs", "x", &[(2, 3)], 1, 2), None, by).unwrap_err();
        assert!(e.is_permanent(), "{e}");
        // A link whose target changed since its scan is a local change, not replaced.
        let e = make_link_keeping(root.path(), &link("abs", "x", &[(2, 3)], 1, 2), Some(&old), by).unwrap_err();
        assert!(matches!(e, ApplyError::LocalChange(_)), "{e}");
        assert_eq!(target_of(root.path(), "abs"), "elsewhere");
        // Never a link below a link.
        std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
        let e = make_link_keeping(root.path(), &link("out/l", "x", &[(2, 1)], 1, 2), None, by).unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1, "nothing made outside");
    }

    #[test]
    fn a_file_replaces_a_link_without_writing_through_it_and_a_delete_removes_only_the_link() {
        use crate::core::record::fixtures::link;
        let (root, outside, store) = with_outside();
        let secret = outside.path().join("secret");
        std::os::unix::fs::symlink(&secret, root.path().join("l")).unwrap();
        let held = link("l", secret.to_str().unwrap(), &[(1, 1)], 1, 1);
        // Not held as a link: refused before anything is written.
        assert!(TempFile::create_replacing(root.path(), "l", 5, None).err().unwrap().is_permanent());
        // Held as a link: the file replaces the link itself, which goes to the store.
        let record = FileRecord { size: 5, ..file("l", 1, &[(1, 2)], 1_600_000_000, 2) };
        let temp = TempFile::create_replacing(root.path(), "l", 5, Some(&held)).unwrap();
        temp.write_at(0, b"hello").unwrap();
        let state = commit_all_keeping(vec![(temp, record.clone(), Some(held.clone()))], Some(&store)).pop().unwrap();
        assert_eq!(state.unwrap().kind, FileKind::File);
        assert_eq!(std::fs::read(root.path().join("l")).unwrap(), b"hello");
        assert_eq!(std::fs::read(&secret).unwrap(), b"outside", "written through the link");
        let kept = store.list(Some("l")).unwrap();
        assert_eq!(kept.len(), 1);
        assert!(std::fs::symlink_metadata(store.dir().join(&kept[0].stored)).unwrap().file_type().is_symlink());
        // A link deleted by a peer: the link goes, its target stays, the store keeps the link.
        std::os::unix::fs::symlink(&secret, root.path().join("m")).unwrap();
        let m = link("m", secret.to_str().unwrap(), &[(1, 1)], 1, 1);
        assert!(remove_keeping(root.path(), "m", Some(&m), Some((&store as &dyn Keeper, ShortId(2)))).unwrap());
        assert!(std::fs::symlink_metadata(root.path().join("m")).is_err());
        assert_eq!(std::fs::read(&secret).unwrap(), b"outside");
        assert_eq!(store.list(Some("m")).unwrap().len(), 1);
        // Restored, it is the same link again.
        store.restore("m", None, ShortId(1)).unwrap();
        assert_eq!(target_of(root.path(), "m"), secret.to_str().unwrap());
        // A directory from a peer where we hold a link: the link is kept and replaced.
        let n = link("n", "/", &[(1, 1)], 1, 1);
        std::os::unix::fs::symlink("/", root.path().join("n")).unwrap();
        let dir = FileRecord { kind: FileKind::Directory, size: 0, chunks: vec![], ..file("n", 0, &[(1, 2)], 1, 2) };
        make_dir_keeping(root.path(), &dir, Some(&n), Some((&store as &dyn Keeper, ShortId(2)))).unwrap();
        assert!(std::fs::symlink_metadata(root.path().join("n")).unwrap().is_dir());
        // Conflict copies of links: a link is compared by its target, never read through.
        std::os::unix::fs::symlink(&secret, root.path().join("c1")).unwrap();
        std::os::unix::fs::symlink(&secret, root.path().join("c2")).unwrap();
        std::fs::write(root.path().join("c3"), b"outside").unwrap();
        assert!(same_bytes(&root.path().join("c1"), &root.path().join("c2")));
        assert!(!same_bytes(&root.path().join("c1"), &root.path().join("c3")), "a link is not its target's bytes");
        let moved = move_aside(root.path(), "c1", "c1.sync-conflict-x").unwrap();
        assert_eq!(target_of(root.path(), &moved), secret.to_str().unwrap());
    }

    #[test]
    fn a_local_edit_is_not_overwritten() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("x"), b"mine").unwrap();
        let record = file("x", 1, &[(1, 1)], 1, 1);
        let temp = TempFile::create(root.path(), "x", 5).unwrap();
        assert!(matches!(temp.commit(&record, None), Err(ApplyError::LocalChange(_))));
        assert_eq!(std::fs::read(root.path().join("x")).unwrap(), b"mine");
        assert!(temp_files(root.path()).is_empty());
    }
}
