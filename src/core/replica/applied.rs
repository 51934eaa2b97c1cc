//! What the Index makes of what the Puller applied (the `Applied` message: one pull's outcome, or a
//! whole commit batch's): which records it commits, which paths it decides again, which it looks
//! at again on disk. The actor reads our current record of each path and hands both in.

use super::{overtaken, reissued, took, Clock};
use crate::core::device::ShortId;
use crate::core::record::{FileKind, FileRecord};
use crate::core::version::VersionVector;

/// What the Puller did with a need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The remote version is now on disk (or deleted), with the mtime and permissions the disk took
    /// (`None`: a delete, or a version whose disk state the Puller did not read).
    Took { record: FileRecord, disk: Option<(i64, u32)> },
    /// Our version stays; it is re-issued above `other` so it wins everywhere.
    Reissue { path: String, other: VersionVector },
}

impl Applied {
    pub fn path(&self) -> &str {
        match self {
            Applied::Took { record, .. } => &record.path,
            Applied::Reissue { path, .. } => path,
        }
    }
}

/// Our record of a path when an outcome is recorded, as the actor read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    Read(Option<FileRecord>),
    /// The index could not be read (the actor logged why).
    Unreadable,
}

/// What recording a batch of outcomes comes to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppliedPlan {
    /// The records to commit, in one write.
    pub commit: Vec<FileRecord>,
    /// Paths to decide again (`RecomputePaths`): those whose record moved on while the pull ran
    /// (`overtaken`), then those whose record could not be read, which get no record written
    /// over them blind.
    pub recompute: Vec<String>,
    /// Paths to scan again: the disk may differ from the record (a delete or a directory the Puller
    /// did not describe, a directory we could not delete, a re-issued version's file).
    pub look_again: Vec<String>,
}

/// Records `outcomes`, each against our current record of its path. A re-issue takes a fresh value
/// of `clock` at `now_ms`; a re-issue of a path we hold no record of is dropped. A file or link the
/// Puller wrote is as its disk state says: a later local change reaches the Index through the
/// watcher (or the periodic rescan) like any other, so it is not looked at again.
pub fn applied(outcomes: Vec<(Applied, Current)>, me: ShortId, clock: &mut Clock, now_ms: u64) -> AppliedPlan {
    let mut plan = AppliedPlan::default();
    let mut unread = Vec::new();
    for (outcome, current) in outcomes {
        let current = match current {
            Current::Read(current) => current,
            Current::Unreadable => {
                unread.push(outcome.path().to_string());
                continue;
            }
        };
        let record = match outcome {
            Applied::Took { record, disk } => {
                if disk.is_none() || record.kind == FileKind::Directory {
                    plan.look_again.push(record.path.clone());
                }
                if overtaken(&record, current.as_ref()) {
                    plan.recompute.push(record.path.clone());
                }
                took(record, current.as_ref(), disk)
            }
            Applied::Reissue { path, other } => {
                let Some(local) = current else { continue };
                plan.look_again.push(path);
                reissued(local, &other, me, clock.tick(now_ms))
            }
        };
        plan.commit.push(record);
    }
    plan.recompute.append(&mut unread);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::fixtures::file;

    const ME: ShortId = ShortId(9);

    fn dir(path: &str, version: &[(u64, u64)]) -> FileRecord {
        FileRecord { kind: FileKind::Directory, size: 0, chunks: Vec::new(), ..file(path, 0, version, 1, 1) }
    }

    #[test]
    fn a_pulled_file_is_recorded_as_the_disk_took_it_and_not_looked_at_again() {
        let ours = file("a", 1, &[(1, 1)], 10, 1);
        let mut ours_stored = ours.clone();
        ours_stored.sequence = 42;
        let theirs = file("a", 2, &[(1, 1), (2, 1)], 20, 2);
        let plan = applied(
            vec![(Applied::Took { record: theirs.clone(), disk: Some((7, 0o600)) }, Current::Read(Some(ours_stored)))],
            ME,
            &mut Clock::default(),
            1000,
        );
        let expected = FileRecord { sequence: 42, mtime_ns: 7, permissions: 0o600, ..theirs };
        assert_eq!(plan, AppliedPlan { commit: vec![expected], recompute: vec![], look_again: vec![] });
    }

    #[test]
    fn deletes_and_directories_are_looked_at_again() {
        let gone = file("a", 1, &[(1, 1)], 10, 1).tombstone(ShortId(2), 5);
        let d = dir("d", &[(2, 1)]);
        let plan = applied(
            vec![
                (Applied::Took { record: gone.clone(), disk: None }, Current::Read(None)),
                (Applied::Took { record: d.clone(), disk: Some((3, 0o755)) }, Current::Read(None)),
            ],
            ME,
            &mut Clock::default(),
            1000,
        );
        assert_eq!(plan.look_again, ["a", "d"]);
        assert_eq!(plan.commit.len(), 2);
        assert!(plan.recompute.is_empty());
    }

    #[test]
    fn a_pull_overtaken_meanwhile_is_recorded_then_decided_again() {
        // A merge settled by the Index while the pull ran: our record has seen more than the pull.
        let merged = file("a", 1, &[(1, 2), (2, 1)], 10, 1);
        let pulled = file("a", 2, &[(1, 2)], 20, 1);
        let plan = applied(
            vec![(Applied::Took { record: pulled.clone(), disk: Some((20, 0o644)) }, Current::Read(Some(merged)))],
            ME,
            &mut Clock::default(),
            1000,
        );
        assert_eq!(plan.commit.len(), 1, "what the disk holds is recorded");
        assert_eq!(plan.recompute, ["a"]);
    }

    #[test]
    fn an_unreadable_record_gets_nothing_written_and_is_decided_again_last() {
        let overtaken_pull = file("b", 2, &[(1, 2)], 20, 1);
        let plan = applied(
            vec![
                (Applied::Reissue { path: "a".into(), other: VersionVector::default() }, Current::Unreadable),
                (
                    Applied::Took { record: overtaken_pull, disk: Some((1, 0o644)) },
                    Current::Read(Some(file("b", 1, &[(1, 2), (2, 1)], 10, 1))),
                ),
            ],
            ME,
            &mut Clock::default(),
            1000,
        );
        assert_eq!(plan.recompute, ["b", "a"]);
        assert_eq!(plan.commit.len(), 1);
    }

    #[test]
    fn a_reissue_goes_above_both_versions_with_fresh_counters() {
        let ours = file("a", 1, &[(1, 1)], 10, 1);
        let theirs = VersionVector::from_counters([(ShortId(2), 5)]);
        let mut clock = Clock::default();
        let plan = applied(
            vec![
                (Applied::Reissue { path: "a".into(), other: theirs.clone() }, Current::Read(Some(ours.clone()))),
                (Applied::Reissue { path: "b".into(), other: theirs.clone() }, Current::Read(None)),
                (
                    Applied::Reissue { path: "c".into(), other: theirs.clone() },
                    Current::Read(Some(file("c", 3, &[(1, 1)], 10, 1))),
                ),
            ],
            ME,
            &mut clock,
            1000,
        );
        assert_eq!(plan.look_again, ["a", "c"], "a re-issue of no record is dropped");
        let [a, c] = &plan.commit[..] else { panic!("{plan:?}") };
        assert!(a.version.dominates(&theirs) && a.version.dominates(&ours.version));
        assert_eq!((a.version.get(ME), c.version.get(ME)), (1000, 1001), "one clock, never a repeat");
        assert_eq!(a.modified_by, ShortId(1), "the content keeps its author");
    }
}
