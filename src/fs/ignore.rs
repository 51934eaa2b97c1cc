//! `.syncignore` at a folder's root, in gitignore syntax (the `ignore` crate's matcher). Matching
//! paths are neither sent nor deleted nor overwritten. syncnode's own temp files are always ignored.

use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::core::path::{is_internal, IGNORE_FILE};

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
}
