//! Path rules: which relative paths a peer may name, and which names belong to syncnode itself.
//! The filesystem layer adds the checks that need the disk (no symlink on the way).

/// Prefix of in-flight downloads, beside their target; never synced.
pub const TEMP_PREFIX: &str = ".syncnode-tmp-";
/// The ignore file at a folder's root; never synced.
pub const IGNORE_FILE: &str = ".syncignore";
/// The version store at a folder's root (`fs::versions`): local only, never scanned or synced,
/// and no peer may name a path inside it.
pub const VERSIONS_DIR: &str = ".syncnode-versions";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("absolute path")]
    Absolute,
    #[error("path contains `..` or `.`")]
    Traversal,
    #[error("path contains an empty component, a backslash or a NUL byte")]
    Malformed,
    #[error("path names syncnode's own files")]
    Reserved,
    #[error("path longer than {0} bytes")]
    TooLong(usize),
}

pub const MAX_PATH_LEN: usize = 4096;

/// Checks a relative path received from a peer (or produced by a scan) before anything uses it.
pub fn validate(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong(MAX_PATH_LEN));
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.contains('\\') || path.contains('\0') {
        return Err(PathError::Malformed);
    }
    for component in path.split('/') {
        match component {
            "" => return Err(PathError::Malformed),
            "." | ".." => return Err(PathError::Traversal),
            _ => {}
        }
    }
    if is_internal(path) {
        return Err(PathError::Reserved);
    }
    Ok(())
}

/// Names that syncnode keeps out of sync: its temp files anywhere, the root ignore file with
/// anything below that name (a peer's `.syncignore/x` would turn the ignore file into a
/// directory), and the version store at the root with everything in it.
pub fn is_internal(path: &str) -> bool {
    path.split('/').next() == Some(IGNORE_FILE)
        || path == VERSIONS_DIR
        || is_inside(path, VERSIONS_DIR)
        || path.split('/').any(|c| c.starts_with(TEMP_PREFIX))
}

/// A temp file name for one download of `path` (same directory, so the rename is atomic). `token`
/// tells apart downloads of the same path: two writers must never share a temp file, or one's
/// truncation wipes what the other verified and wrote. A token holds no `-` (`is_temp_of` relies
/// on it).
pub fn temp_name(path: &str, token: &str) -> String {
    debug_assert!(!token.contains('-'), "a temp token with a dash: {token}");
    match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/{TEMP_PREFIX}{token}-{name}"),
        None => format!("{TEMP_PREFIX}{token}-{path}"),
    }
}

/// Whether `temp` is a name `temp_name` gives a download of `path`: a rename of the one onto the
/// other is a download put in place.
pub fn is_temp_of(temp: &str, path: &str) -> bool {
    fn split(p: &str) -> (&str, &str) {
        p.rsplit_once('/').unwrap_or(("", p))
    }
    let ((temp_dir, temp_file), (dir, name)) = (split(temp), split(path));
    temp_dir == dir
        && temp_file
            .strip_prefix(TEMP_PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .is_some_and(|(token, after)| !token.is_empty() && after == name)
}

/// The parent directory of a relative path, if it has one.
pub fn parent(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(dir, _)| dir)
}

/// Where a burst of changed paths gives way, one level up: a path's parent directory ("" for a
/// top-level path, the whole folder), since a scan of a directory covers everything below it. The
/// ignore file stays as it is (its change is what reloads the rules).
pub fn one_level_up(path: &str) -> &str {
    if path == IGNORE_FILE {
        path
    } else {
        parent(path).unwrap_or("")
    }
}

/// Most changed paths a folder keeps waiting, in the Watcher's debounce and in the Index's scan
/// queue: past it they give way to their directories, level by level ([`one_level_up`]) until at
/// most half remain. A burst of a million new files then costs a bounded set of directories (W8:
/// at most its 10,000), not a string each (A peaked at 222 MiB during W8 before).
pub const MAX_PENDING_PATHS: usize = 10_000;

/// Whether `path` lies strictly inside directory `dir`.
pub fn is_inside(path: &str, dir: &str) -> bool {
    path.len() > dir.len() + 1 && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// Depth of a path (number of components), used to order deletes children-first.
pub fn depth(path: &str) -> usize {
    path.split('/').count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_temp_name_is_known_as_the_download_of_its_path_only() {
        assert!(is_temp_of(&temp_name("a/b-c.txt", "1f.2"), "a/b-c.txt"));
        assert!(is_temp_of(&temp_name("top", "9"), "top"));
        assert!(!is_temp_of(&temp_name("a/b.txt", "1f.2"), "b.txt"), "another directory");
        assert!(!is_temp_of(&temp_name("a/b.txt", "1f.2"), "a/c.txt"));
        assert!(!is_temp_of(&temp_name("b.txt", "1"), "a/b.txt"));
        assert!(!is_temp_of("a/b.txt", "a/b.txt"), "not a temp name");
        assert!(!is_temp_of(".syncnode-tmp--b.txt", "b.txt"), "no token");
    }

    proptest! {
        #[test]
        fn a_download_is_told_apart_from_any_other_path(
            path in "[a-z.-]{1,6}(/[a-z.-]{1,6}){0,2}",
            other in "[a-z.-]{1,6}(/[a-z.-]{1,6}){0,2}",
            token in "[0-9a-f.]{1,8}",
        ) {
            let temp = temp_name(&path, &token);
            prop_assert!(is_temp_of(&temp, &path));
            prop_assert_eq!(is_temp_of(&temp, &other), other == path);
        }
    }

    #[test]
    fn paths_that_leave_the_folder_are_refused() {
        assert_eq!(validate("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(validate("../x"), Err(PathError::Traversal));
        assert_eq!(validate("a/../../x"), Err(PathError::Traversal));
        assert_eq!(validate("a/./x"), Err(PathError::Traversal));
        assert_eq!(validate("a//x"), Err(PathError::Malformed));
        assert_eq!(validate("a/"), Err(PathError::Malformed));
        assert_eq!(validate("a\\..\\x"), Err(PathError::Malformed));
        assert_eq!(validate(""), Err(PathError::Empty));
    }

    #[test]
    fn syncnode_files_are_reserved() {
        assert_eq!(validate(".syncignore"), Err(PathError::Reserved));
        assert_eq!(validate("a/.syncnode-tmp-b"), Err(PathError::Reserved));
        assert!(validate("a/.syncignore").is_ok());
        assert_eq!(validate(".syncnode-versions"), Err(PathError::Reserved));
        assert_eq!(validate(".syncnode-versions/a~20250101-000000-000~deleted~local"), Err(PathError::Reserved));
        assert!(validate("a/.syncnode-versions/x").is_ok());
        assert!(validate(".syncnode-versions-not/x").is_ok());
        // Found by the `path` fuzz target: a path below the reserved name was accepted.
        assert_eq!(validate(".syncignore/x"), Err(PathError::Reserved));
        assert!(validate(".syncignorex/y").is_ok());
        assert!(validate("a/..b/c.d").is_ok());
    }

    #[test]
    fn temp_names_stay_in_the_same_directory() {
        assert_eq!(temp_name("a/b/c.txt", "7"), "a/b/.syncnode-tmp-7-c.txt");
        assert_eq!(temp_name("c", "1f"), ".syncnode-tmp-1f-c");
    }

    #[test]
    fn inside_means_strictly_below() {
        assert!(is_inside("a/b", "a"));
        assert!(!is_inside("ab/c", "a"));
        assert!(!is_inside("a", "a"));
    }

    proptest! {
        #[test]
        fn a_valid_path_never_escapes(components in proptest::collection::vec("[a-z.]{1,4}", 1..6)) {
            let path = components.join("/");
            if validate(&path).is_ok() {
                // Resolving it lexically never goes above the root.
                let mut depth = 0i32;
                for c in path.split('/') {
                    depth += if c == ".." { -1 } else { 1 };
                    prop_assert!(depth > 0);
                }
            }
        }
    }
}
