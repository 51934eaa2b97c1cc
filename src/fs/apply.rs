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

/// A temp file at least this big gets its length before its chunks are written.
const PRESIZE_FROM: u64 = 1 << 20;

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
        // The target's parents were checked by safe_path; the temp file sits beside it, under a
        // name no other download uses (never opened twice: a second open would truncate the first
        // writer's verified data under it). A missing parent is made (and checked) only when the
        // create says it is missing: the parent of most pulls exists, and looking first cost
        // a `statx`, a `mkdir` and another `statx` per pulled file.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut parent_made = false;
        let (temp, file) = loop {
            let token = format!("{:x}.{:x}", std::process::id(), NEXT.fetch_add(1, Relaxed));
            let temp = root.join(temp_name(rel, &token));
            match OpenOptions::new().read(true).write(true).create_new(true).open(&temp) {
                Ok(file) => break (temp, file),
                // A leftover of an earlier process with the same pid: take the next number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound && !parent_made => {
                    ensure_parent(root, rel)?;
                    parent_made = true;
                }
                Err(e) => return Err(io_err(rel)(e)),
            }
        };
        // The length up front for a large file (its chunks arrive in any order); a small one's
        // writes give it its length.
        if size >= PRESIZE_FROM {
            file.set_len(size).map_err(io_err(rel))?;
        }
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
        // A path we hold nothing at: the rename itself refuses a target that appeared meanwhile,
        // so there is nothing to look at first, and nothing to keep.
        if local.is_none_or(|l| l.deleted) {
            match rename_noreplace(&self.temp, &self.target) {
                Ok(()) => return self.state(),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(ApplyError::LocalChange(self.rel.clone()))
                }
                // A filesystem without RENAME_NOREPLACE: look, then rename.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {}
                Err(e) => return Err(io_err(&self.rel)(e)),
            }
        }
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
        self.state()
    }

    /// What the file put in place is on disk (the renamed temp file's own metadata: its mode and
    /// mtime were set before the rename, which changes neither).
    fn state(&self) -> Result<DiskState, ApplyError> {
        let meta = self.file.metadata().map_err(io_err(&self.rel))?;
        DiskState::of(&meta).ok_or_else(|| ApplyError::LocalChange(self.rel.clone()))
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
/// numbered variant), or a copy of the same path named for the same content id under another
/// author or second (`core::conflict::same_loser`), already holds the same content (another node
/// made this copy first and it synced here, or the content lost before as another record); else
/// `copy` with `-2`, `-3`, ... before the extension (the name is taken by other bytes: a copy the
/// user edited, or one that cannot be read to compare).
pub fn free_name(root: &Path, copy: &str, same: impl Fn(&Path) -> bool) -> Option<String> {
    let (dir, file) = copy.rsplit_once('/').map_or(("", copy), |(d, f)| (d, f));
    let parent = if dir.is_empty() { Ok(root.to_path_buf()) } else { safe_path(root, dir) };
    for entry in parent.ok().and_then(|p| std::fs::read_dir(p).ok()).into_iter().flatten().flatten() {
        let Some(name) =
            entry.file_name().to_str().map(|n| if dir.is_empty() { n.to_string() } else { format!("{dir}/{n}") })
        else {
            continue;
        };
        if name != copy && crate::core::conflict::same_loser(copy, &name) {
            let Ok(path) = safe_entry_path(root, &name) else { continue };
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() || m.file_type().is_symlink()) && same(&path)
            {
                return None;
            }
        }
    }
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

/// `move_aside` for a loser the index recorded (`local`): only while the file is still what the
/// record says, since the copy's name is the record's (`core::conflict`). A local edit the scan
/// has not seen yet, or a file made unreadable, is left alone (`LocalChange`): the scan looks at
/// it, and the path is decided again.
pub fn move_aside_recorded(
    root: &Path,
    rel: &str,
    local: Option<&FileRecord>,
    copy: &str,
) -> Result<String, ApplyError> {
    let from = entry_path(root, rel, local)?;
    if local.is_none_or(|l| l.deleted) {
        return Err(ApplyError::LocalChange(rel.to_string()));
    }
    check_unchanged(&from, rel, local)?;
    move_aside(root, rel, copy)
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

/// `rename(from, to)` that fails with `AlreadyExists` instead of replacing an entry at `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let (from, to) =
        (std::ffi::CString::new(from.as_os_str().as_bytes())?, std::ffi::CString::new(to.as_os_str().as_bytes())?);
    // SAFETY: two NUL-terminated paths; AT_FDCWD makes them relative to the working directory as
    // rename(2) does (ours are absolute).
    let rc =
        unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests;
