//! Conflict copies: the name under which a losing version is kept. The name depends only on the
//! losing record, so every node that resolves the same conflict makes the same copy.

use chrono::{DateTime, Utc};

use super::record::FileRecord;

/// `<stem>.sync-conflict-<YYYYMMDD-HHMMSS>-<device id prefix>.<ext>` beside the original.
pub fn conflict_name(loser: &FileRecord) -> String {
    let (dir, name) = match loser.path.rsplit_once('/') {
        Some((dir, name)) => (Some(dir), name),
        None => (None, loser.path.as_str()),
    };
    // A leading dot is part of the stem (".bashrc" has no extension).
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 && loser.is_file() => (&name[..i], Some(&name[i + 1..])),
        _ => (name, None),
    };
    let when = DateTime::<Utc>::from_timestamp_nanos(loser.mtime_ns).format("%Y%m%d-%H%M%S");
    let who = loser.modified_by.prefix();
    let file = match ext {
        Some(ext) => format!("{stem}.sync-conflict-{when}-{who}.{ext}"),
        None => format!("{stem}.sync-conflict-{when}-{who}"),
    };
    match dir {
        Some(dir) => format!("{dir}/{file}"),
        None => file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::fixtures::file;

    #[test]
    fn the_name_keeps_the_extension_last() {
        let loser = file("docs/report.txt", 1, &[(1, 1)], 1_700_000_000, 0);
        let name = conflict_name(&loser);
        assert!(name.starts_with("docs/report.sync-conflict-20231114-221320-"), "{name}");
        assert!(name.ends_with(".txt"));
        assert!(crate::core::path::validate(&name).is_ok());
    }

    #[test]
    fn dotfiles_and_plain_names_get_no_extension() {
        assert!(!conflict_name(&file(".bashrc", 1, &[], 0, 0)).contains(".sync-conflict-19700101-000000-AAAAAAA."));
        assert!(conflict_name(&file("Makefile", 1, &[], 0, 0)).starts_with("Makefile.sync-conflict-19700101-000000-"));
    }
}
