//! `.syncignore` at a folder's root, in gitignore syntax (the `ignore` crate's matcher). Matching
//! paths are neither sent nor deleted nor overwritten. syncnode's own temp files are always ignored.

use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::config::{FolderMode, SymlinkMode};
use crate::core::path::{is_internal, IGNORE_FILE};
use crate::core::{FileKind, FileRecord};

#[derive(Clone)]
pub struct IgnoreRules {
    matcher: Gitignore,
}

impl IgnoreRules {
    /// Reads `<root>/.syncignore`; a missing file means nothing is ignored, a bad line is logged.
    pub fn load(root: &Path) -> IgnoreRules {
        let mut builder = GitignoreBuilder::new(root);
        let file = root.join(IGNORE_FILE);
        if file.exists() {
            if let Some(e) = builder.add(&file) {
                tracing::warn!(file = %file.display(), error = %e, "bad line in .syncignore");
            }
        }
        let matcher = builder.build().unwrap_or_else(|e| {
            tracing::warn!(file = %file.display(), error = %e, "cannot use .syncignore");
            Gitignore::empty()
        });
        IgnoreRules { matcher }
    }

    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        is_internal(rel) || self.matcher.matched_path_or_any_parents(rel, is_dir).is_ignore()
    }
}

/// What a folder leaves alone, in one place: the paths `.syncignore` names, every link under
/// `symlinks = "ignore"`, and, for a send-only folder, every peer's change. The Index's dispatch of
/// a peer's records asks it ([`FolderFilter::ignores`], [`FolderFilter::send_only`]), and its scans
/// are made from it ([`FolderFilter::rules`], [`FolderFilter::links`]), so the scanner skips what
/// the dispatch refuses: an ignored path or link is neither announced nor made, replaced or deleted.
#[derive(Clone)]
pub struct FolderFilter {
    rules: IgnoreRules,
    symlinks: SymlinkMode,
    mode: FolderMode,
}

impl FolderFilter {
    /// With `root`'s `.syncignore` read now.
    pub fn load(root: &Path, symlinks: SymlinkMode, mode: FolderMode) -> FolderFilter {
        FolderFilter { rules: IgnoreRules::load(root), symlinks, mode }
    }

    /// Reads `root`'s `.syncignore` again (it was edited).
    pub fn reload(&mut self, root: &Path) {
        self.rules = IgnoreRules::load(root);
    }

    /// The `.syncignore` rules, as the scanner takes them.
    pub fn rules(&self) -> &IgnoreRules {
        &self.rules
    }

    /// Links are synced as links (`symlinks = "link"`); otherwise they are left alone.
    pub fn links(&self) -> bool {
        self.symlinks == SymlinkMode::Link
    }

    /// Whether the folder takes no change from its peers (`mode = "send-only"`).
    pub fn send_only(&self) -> bool {
        self.mode == FolderMode::SendOnly
    }

    /// Whether a record (a peer's, or ours) is of something this folder leaves alone: a path
    /// `.syncignore` names, or a link while links are not synced.
    pub fn ignores(&self, record: &FileRecord) -> bool {
        self.rules.is_ignored(&record.path, record.kind == FileKind::Directory)
            || (record.kind == FileKind::Symlink && !self.links())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_patterns_apply_to_paths_and_their_children() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join(IGNORE_FILE), "*.tmp\nbuild/\n").unwrap();
        let rules = IgnoreRules::load(root.path());
        assert!(rules.is_ignored("a/b.tmp", false));
        assert!(rules.is_ignored("build/out/x.o", false));
        assert!(rules.is_ignored(".syncignore", false));
        assert!(rules.is_ignored("x/.syncnode-tmp-y", false));
        assert!(!rules.is_ignored("src/main.rs", false));
    }

    #[test]
    fn a_folder_filter_leaves_ignored_paths_and_unsynced_links_alone() {
        use crate::core::record::fixtures::{file, link};
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join(IGNORE_FILE), "*.tmp\nbuild/\n").unwrap();
        let synced = FolderFilter::load(root.path(), SymlinkMode::Link, FolderMode::SendReceive);
        let unsynced = FolderFilter::load(root.path(), SymlinkMode::Ignore, FolderMode::SendOnly);
        for f in [&synced, &unsynced] {
            assert!(f.ignores(&file("a/b.tmp", 1, &[], 1, 1)));
            assert!(f.ignores(&file("build/x", 1, &[], 1, 1)));
            assert!(!f.ignores(&file("a/b.txt", 1, &[], 1, 1)));
        }
        assert!(!synced.ignores(&link("l", "t", &[], 1, 1)) && synced.links() && !synced.send_only());
        assert!(unsynced.ignores(&link("l", "t", &[], 1, 1)) && !unsynced.links() && unsynced.send_only());
        // A tombstone of a link is still a link's: left alone too.
        assert!(unsynced.ignores(&link("l", "t", &[(1, 1)], 1, 1).tombstone(crate::core::ShortId(1), 2)));
        // An edit of .syncignore counts once reloaded.
        std::fs::write(root.path().join(IGNORE_FILE), "*.txt\n").unwrap();
        let mut reloaded = synced.clone();
        assert!(!reloaded.ignores(&file("a/b.txt", 1, &[], 1, 1)));
        reloaded.reload(root.path());
        assert!(reloaded.ignores(&file("a/b.txt", 1, &[], 1, 1)) && !reloaded.ignores(&file("a/b.tmp", 1, &[], 1, 1)));
    }
}
