//! Paths from a peer or a scan: `core::path::validate` and `fs::safe_path`. A path the rules accept
//! must name something strictly inside the folder (only normal components, nothing Rust's `Path`
//! would collapse, no NUL), its temp name must be reserved and beside it; `safe_path` in a real
//! folder holding symlinks (to a directory outside, to `..`, dangling) must return the plain join
//! and only when no existing component on the way, nor the target, is a symlink or a non-directory.
#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use syncnode::core::path::{depth, is_inside, is_internal, parent, temp_name, validate, PathError, MAX_PATH_LEN};
use syncnode::fs::safe_path::safe_path;
use syncnode_fuzz::write_seeds_if_asked;

/// The folder: `d/` `d/e/` `d/file` `f` and the symlinks `l -> ../outside`, `d/up -> ..`,
/// `dangling -> /nonexistent`; one per process.
fn jail() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("syncnode-fuzz-path-{}", std::process::id()));
        let root = base.join("root");
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::create_dir_all(base.join("outside/secret")).unwrap();
        std::fs::write(root.join("d/file"), b"x").unwrap();
        std::fs::write(root.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("../outside", root.join("l")).unwrap();
        std::os::unix::fs::symlink("..", root.join("d/up")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", root.join("dangling")).unwrap();
        root
    })
}

fn seeds() -> Vec<Vec<u8>> {
    [
        "a.txt",
        "d/e/new.txt",
        "d/file/x",
        "l/secret/x",
        "d/up/f",
        "dangling",
        "../x",
        "/etc/passwd",
        "a//b",
        "a/./b",
        "a\\b",
        ".syncignore",
        "d/.syncnode-tmp-1-x",
        "d/.syncignore",
        "a/..b/c.d",
        "\u{e9}t\u{e9}/\u{1f600}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fuzz_target!(
    init: write_seeds_if_asked(seeds),
    |data: &[u8]| {
        // Paths travel as protobuf strings: valid UTF-8 or refused by the decoder.
        let Ok(p) = std::str::from_utf8(data) else { return };
        let root = jail();
        let verdict = validate(p);
        if verdict.is_ok() {
            assert!(!p.is_empty() && p.len() <= MAX_PATH_LEN && !p.contains('\0') && !p.contains('\\'));
            let components: Vec<Component> = Path::new(p).components().collect();
            assert_eq!(components.len(), p.split('/').count(), "Path collapses a component of {p:?}");
            assert!(components.iter().all(|c| matches!(c, Component::Normal(_))), "{p:?} has a non-normal component");
            assert_eq!(depth(p), components.len());
            assert!(!is_internal(p));
            if let Some(dir) = parent(p) {
                assert!(is_inside(p, dir) && validate(dir).is_ok(), "parent {dir:?} of {p:?}");
            }
            let temp = temp_name(p, "7f");
            assert!(is_internal(&temp), "temp name {temp:?} is not internal");
            assert!(matches!(validate(&temp), Err(PathError::Reserved | PathError::TooLong(_))), "temp name {temp:?} passes validation");
            assert_eq!(parent(&temp), parent(p), "temp name in another directory");
        }
        if let Ok(full) = safe_path(root, p) {
            assert!(verdict.is_ok(), "safe_path accepted {p:?}, which validate refuses");
            assert_eq!(full, root.join(p));
            let mut at = root.to_path_buf();
            let parts: Vec<&str> = p.split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                at.push(part);
                match std::fs::symlink_metadata(&at) {
                    Ok(meta) if i + 1 < parts.len() => assert!(meta.is_dir(), "{p:?}: passes through non-directory {at:?}"),
                    Ok(meta) => assert!(!meta.file_type().is_symlink(), "{p:?}: target is a symlink"),
                    Err(_) => break,
                }
            }
        }
    }
);
