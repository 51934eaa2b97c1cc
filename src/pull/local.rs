//! What this node already has of a file being pulled: chunks in local files (our previous version
//! of the path, else wherever the chunk index points), always verified and never read through a
//! symlink.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::core::{Chunk, FileKind, FileRecord};
use crate::fs::chunker::{hash, read_range};
use crate::fs::reuse::Plan;
use crate::fs::safe_path::{open_inside, safe_path};
use crate::store::Store;

/// Where this node already holds each chunk of `record`: our previous version of the same path
/// first (no index lookup), else wherever the chunk index points. Copies are verified as they are
/// made (and their files opened without following symlinks), so a stale location only costs a
/// fetch later; a location behind a link is dropped here already.
pub(super) fn locate(
    store: &Store,
    roots: &HashMap<String, PathBuf>,
    root: &std::path::Path,
    record: &FileRecord,
    previous: Option<&FileRecord>,
) -> Plan {
    let previous = previous.filter(|p| p.is_file() && !p.deleted).and_then(|p| {
        safe_path(root, &p.path).ok()?;
        Some(((root.to_path_buf(), p.path.clone()), p))
    });
    let in_previous: HashMap<[u8; 32], u64> =
        previous.iter().flat_map(|(_, p)| p.chunks.iter().map(|c| (c.hash, c.offset))).collect();
    let mut checked: HashMap<(String, String), Option<PathBuf>> = HashMap::new();
    Plan::build(record.chunks.len(), |i| {
        let chunk = &record.chunks[i];
        if let (Some((source, _)), Some(&offset)) = (&previous, in_previous.get(&chunk.hash)) {
            return Some((source.clone(), offset));
        }
        store.chunk_locations(&chunk.hash, 4).into_iter().find_map(|loc| {
            let folder_root = checked
                .entry((loc.folder.clone(), loc.path.clone()))
                .or_insert_with(|| {
                    let folder_root = roots.get(&loc.folder)?;
                    safe_path(folder_root, &loc.path).ok()?;
                    Some(folder_root.clone())
                })
                .clone()?;
            Some(((folder_root, loc.path), loc.offset))
        })
    })
}

/// Whether the entry at `path` holds exactly `record`'s content: a file its bytes, a link its
/// target. Never read through a link.
pub(super) fn holds(path: &std::path::Path, record: &FileRecord) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    if record.kind == FileKind::Symlink {
        return std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
            && crate::fs::scan::read_target(path).is_ok_and(|t| t == record.link_target);
    }
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| if f.metadata()?.is_file() { Ok(f) } else { Err(std::io::ErrorKind::InvalidInput.into()) })
    else {
        return false;
    };
    file.metadata().is_ok_and(|m| m.len() == record.size)
        && record
            .chunks
            .iter()
            .all(|c| matches!(read_range(&file, c.offset, c.size), Ok(Some(d)) if hash(&d) == c.hash))
}

/// A chunk from any local file the chunk index says has it, verified (the index may be stale), and
/// never read through a symlink.
pub fn find_local(store: &Store, roots: &HashMap<String, PathBuf>, chunk: &Chunk) -> Option<Vec<u8>> {
    for loc in store.chunk_locations(&chunk.hash, 4) {
        let Some(root) = roots.get(&loc.folder) else { continue };
        let Ok(file) = open_inside(root, &loc.path) else { continue };
        if let Ok(Some(data)) = read_range(&file, loc.offset, chunk.size) {
            if hash(&data) == chunk.hash {
                return Some(data);
            }
        }
    }
    None
}
