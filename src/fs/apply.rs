//! Applying remote versions to disk. Content goes to `.syncnode-tmp-<name>` beside the target, is
//! verified and fsynced, gets its mtime and permissions, and is renamed into place only if the
//! target still is what our index says it is: a user's edit made meanwhile is never overwritten.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::core::path::temp_name;
use crate::core::{FileKind, FileRecord};

use super::safe_path::{safe_path, UnsafePath};
use super::scan::DiskState;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Unsafe(#[from] UnsafePath),
    #[error("`{0}` changed on disk since it was last scanned; not overwriting it")]
    LocalChange(String),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
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
        (Some(s), Some(l)) => s.matches(l),
        (Some(_), None) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ApplyError::LocalChange(rel.to_string()))
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
}

impl TempFile {
    pub fn create(root: &Path, rel: &str, size: u64) -> Result<TempFile, ApplyError> {
        let target = safe_path(root, rel)?;
        ensure_parent(root, rel)?;
        // The target's parents were checked by safe_path; the temp file sits beside it.
        let temp = root.join(temp_name(rel));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&temp).map_err(io_err(rel))?;
        file.set_len(size).map_err(io_err(rel))?;
        Ok(TempFile { file, temp, target, rel: rel.to_string() })
    }

    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), ApplyError> {
        self.file.write_all_at(data, offset).map_err(io_err(&self.rel))
    }

    /// fsync, metadata, and the atomic rename, if the target is still as `local` describes.
    pub fn commit(self, record: &FileRecord, local: Option<&FileRecord>) -> Result<DiskState, ApplyError> {
        let rel = self.rel.clone();
        let result = (|| {
            self.file.set_permissions(std::fs::Permissions::from_mode(record.permissions & 0o7777)).map_err(io_err(&rel))?;
            self.file.sync_all().map_err(io_err(&rel))?;
            let mtime = filetime::FileTime::from_unix_time(record.mtime_ns.div_euclid(1_000_000_000), record.mtime_ns.rem_euclid(1_000_000_000) as u32);
            filetime::set_file_handle_times(&self.file, None, Some(mtime)).map_err(io_err(&rel))?;
            check_unchanged(&self.target, &rel, local)?;
            std::fs::rename(&self.temp, &self.target).map_err(io_err(&rel))?;
            DiskState::read(&self.target).map_err(io_err(&rel))?.ok_or_else(|| ApplyError::LocalChange(rel.clone()))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.temp);
        }
        result
    }

    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// Makes a directory (and its parents) with the record's permissions.
pub fn make_dir(root: &Path, record: &FileRecord, local: Option<&FileRecord>) -> Result<DiskState, ApplyError> {
    let full = safe_path(root, &record.path)?;
    match DiskState::read(&full).map_err(io_err(&record.path))? {
        Some(s) if s.kind == FileKind::Directory => {}
        Some(_) => {
            check_unchanged(&full, &record.path, local)?;
            std::fs::remove_file(&full).map_err(io_err(&record.path))?;
            std::fs::create_dir_all(&full).map_err(io_err(&record.path))?;
        }
        None => std::fs::create_dir_all(&full).map_err(io_err(&record.path))?,
    }
    let mode = if record.permissions & 0o700 == 0 { 0o755 } else { record.permissions & 0o7777 };
    std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).map_err(io_err(&record.path))?;
    DiskState::read(&full).map_err(io_err(&record.path))?.ok_or_else(|| ApplyError::LocalChange(record.path.clone()))
}

/// Deletes a path we hold as `local`. A file that changed since its scan is kept (it becomes a new
/// version that wins over the delete); a directory that still has content is kept.
pub fn remove(root: &Path, rel: &str, local: Option<&FileRecord>) -> Result<bool, ApplyError> {
    let full = safe_path(root, rel)?;
    match DiskState::read(&full).map_err(io_err(rel))? {
        None => Ok(true),
        Some(s) if s.kind == FileKind::Directory => match std::fs::remove_dir(&full) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(false),
            Err(e) => Err(io_err(rel)(e)),
        },
        Some(_) => {
            check_unchanged(&full, rel, local)?;
            std::fs::remove_file(&full).map_err(io_err(rel))?;
            Ok(true)
        }
    }
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
        if dir.is_empty() { name } else { format!("{dir}/{name}") }
    }));
    for name in candidates {
        let Ok(path) = safe_path(root, &name) else { return Some(name) };
        match std::fs::symlink_metadata(&path) {
            Err(_) => return Some(name),
            Ok(m) if m.is_file() && same(&path) => return None,
            Ok(_) => {}
        }
    }
    unreachable!("the candidate names are endless")
}

/// Whether two files hold the same bytes.
pub fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(fa), Ok(fb)) = (File::open(a), File::open(b)) else { return false };
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
/// name used (or drops ours if an identical copy is already there).
pub fn move_aside(root: &Path, rel: &str, copy: &str) -> Result<String, ApplyError> {
    let from = safe_path(root, rel)?;
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

    #[test]
    fn a_download_is_invisible_until_committed() {
        let root = tempfile::tempdir().unwrap();
        let record = file("d/x.bin", 1, &[(1, 1)], 1_600_000_000, 1);
        let temp = TempFile::create(root.path(), &record.path, 5).unwrap();
        temp.write_at(0, b"hello").unwrap();
        assert!(!root.path().join("d/x.bin").exists());
        assert!(root.path().join("d/.syncnode-tmp-x.bin").exists());
        let state = temp.commit(&record, None).unwrap();
        assert_eq!(std::fs::read(root.path().join("d/x.bin")).unwrap(), b"hello");
        assert_eq!(state.mtime_ns, record.mtime_ns);
        assert!(!root.path().join("d/.syncnode-tmp-x.bin").exists());
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

    #[test]
    fn a_local_edit_is_not_overwritten() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("x"), b"mine").unwrap();
        let record = file("x", 1, &[(1, 1)], 1, 1);
        let temp = TempFile::create(root.path(), "x", 5).unwrap();
        assert!(matches!(temp.commit(&record, None), Err(ApplyError::LocalChange(_))));
        assert_eq!(std::fs::read(root.path().join("x")).unwrap(), b"mine");
        assert!(!root.path().join(".syncnode-tmp-x").exists());
    }
}
