//! Turning a relative path from the index or a peer into a path on disk, refusing anything that
//! would leave the folder: absolute paths, `..`, and any symlink on the way to the target.

use std::io;
use std::path::{Path, PathBuf};

use crate::core::path;

#[derive(Debug, thiserror::Error)]
pub enum UnsafePath {
    #[error("refused path `{path}`: {reason}")]
    Rule { path: String, reason: path::PathError },
    #[error("refused path `{path}`: `{component}` is a symlink or not a directory")]
    Symlink { path: String, component: String },
    #[error("refused path `{path}`: {source}")]
    Io { path: String, source: io::Error },
}

/// Joins `rel` to `root` after checking the path rules and that every existing parent inside the
/// folder is a real directory (not a symlink that could point elsewhere).
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
            Ok(_) => return Err(UnsafePath::Symlink { path: rel.into(), component: components[..=i].join("/") }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                current.extend(&components[i + 1..]);
                return Ok(current);
            }
            Err(source) => return Err(UnsafePath::Io { path: rel.into(), source }),
        }
    }
    // The target itself may not be a symlink either: we would write or delete through it.
    if std::fs::symlink_metadata(&current).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(UnsafePath::Symlink { path: rel.into(), component: rel.into() });
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_on_the_way_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        assert!(matches!(safe_path(root.path(), "link/file"), Err(UnsafePath::Symlink { .. })));
        assert!(matches!(safe_path(root.path(), "link"), Err(UnsafePath::Symlink { .. })));
        assert!(matches!(safe_path(root.path(), "../x"), Err(UnsafePath::Rule { .. })));
        std::fs::create_dir(root.path().join("d")).unwrap();
        assert_eq!(safe_path(root.path(), "d/new/x").unwrap(), root.path().join("d/new/x"));
    }
}
