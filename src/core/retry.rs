//! When to try a failed pull again. A failure is classified by what would fix it, not by its
//! message: a source that went away is fixed by another source within a second or two
//! (`Transient`); a full disk or quota needs space freed (`NeedsSpace`); a read-only filesystem or
//! a permission error needs the user (`Permanent` for this path). Only transient failures are
//! retried promptly; the others back off exponentially, so a file the disk can never hold is not
//! downloaded again and again. Times are milliseconds, passed in: no clock here.

use serde::{Deserialize, Serialize};

/// What would make a failed pull succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// Another source, or the same one again shortly (a peer disconnected, a local edit raced).
    Transient,
    /// Disk full or quota exceeded: retried when space is back, or on the backoff.
    NeedsSpace,
    /// Read-only filesystem, permission denied: retried on the backoff, or when the user asks.
    Permanent,
    /// A peer's record this node will not carry out (its path lies behind a symlink, or breaks
    /// the path rules): retried only on the slow backoff, and not an `error` state of the folder,
    /// which a hostile peer could otherwise cause at will.
    Refused,
}

impl FailureKind {
    /// Whether paths failing this way put the folder in state `error`.
    pub fn is_error(self) -> bool {
        matches!(self, FailureKind::NeedsSpace | FailureKind::Permanent)
    }

    /// Classifies an OS error number (`errno`).
    pub fn of_errno(errno: i32) -> FailureKind {
        match errno {
            libc_errno::ENOSPC | libc_errno::EDQUOT => FailureKind::NeedsSpace,
            libc_errno::EROFS | libc_errno::EACCES | libc_errno::EPERM => FailureKind::Permanent,
            _ => FailureKind::Transient,
        }
    }
}

/// Linux's numbers, spelled out so core needs no libc.
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const EACCES: i32 = 13;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const EDQUOT: i32 = 122;
}

/// First and longest delay before retrying a transient failure.
pub const TRANSIENT_FIRST_MS: u64 = 1_000;
pub const TRANSIENT_MAX_MS: u64 = 30_000;
/// First and longest delay for failures that will not fix themselves: 10 s doubling to 10 min.
pub const STUCK_FIRST_MS: u64 = 10_000;
pub const STUCK_MAX_MS: u64 = 600_000;

/// The delay before attempt `attempts + 1`, after `attempts` failures (at least 1).
pub fn backoff_ms(kind: FailureKind, attempts: u32) -> u64 {
    let (first, max) = match kind {
        FailureKind::Transient => (TRANSIENT_FIRST_MS, TRANSIENT_MAX_MS),
        FailureKind::NeedsSpace | FailureKind::Permanent | FailureKind::Refused => (STUCK_FIRST_MS, STUCK_MAX_MS),
    };
    let doublings = attempts.saturating_sub(1).min(20);
    first.saturating_mul(1 << doublings).min(max)
}

/// A path whose pull failed, and when it is due again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathFailure {
    pub kind: FailureKind,
    pub reason: String,
    /// When it first failed (ms since the epoch): kept across attempts.
    pub since_ms: u64,
    pub attempts: u32,
    pub next_retry_ms: u64,
    /// Bytes the pull needs on disk (for `NeedsSpace`: retried as soon as that much is free).
    pub needs_bytes: u64,
}

impl PathFailure {
    /// The record after one more failure at `now`.
    pub fn after(
        previous: Option<&PathFailure>,
        kind: FailureKind,
        reason: String,
        needs_bytes: u64,
        now_ms: u64,
    ) -> PathFailure {
        // A different kind of failure starts its own backoff.
        let attempts = previous.filter(|p| p.kind == kind).map_or(0, |p| p.attempts) + 1;
        PathFailure {
            kind,
            reason,
            since_ms: previous.map_or(now_ms, |p| p.since_ms),
            attempts,
            next_retry_ms: now_ms.saturating_add(backoff_ms(kind, attempts)),
            needs_bytes,
        }
    }

    /// Whether it should be tried now, given the free space of its filesystem.
    pub fn due(&self, now_ms: u64, free_bytes: Option<u64>) -> bool {
        now_ms >= self.next_retry_ms
            || (self.kind == FailureKind::NeedsSpace && free_bytes.is_some_and(|f| f >= self.needs_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_full_disk_backs_off_from_seconds_to_minutes() {
        let delays: Vec<u64> = (1..=8).map(|a| backoff_ms(FailureKind::NeedsSpace, a)).collect();
        assert_eq!(delays, vec![10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 600_000, 600_000]);
        assert_eq!(backoff_ms(FailureKind::Transient, 1), 1_000);
        assert_eq!(backoff_ms(FailureKind::Transient, 10), 30_000);
    }

    #[test]
    fn errors_are_classified_by_number() {
        assert_eq!(FailureKind::of_errno(28), FailureKind::NeedsSpace);
        assert_eq!(FailureKind::of_errno(122), FailureKind::NeedsSpace);
        assert_eq!(FailureKind::of_errno(30), FailureKind::Permanent);
        assert_eq!(FailureKind::of_errno(13), FailureKind::Permanent);
        assert_eq!(FailureKind::of_errno(104), FailureKind::Transient);
    }

    #[test]
    fn attempts_accumulate_and_space_coming_back_makes_a_path_due_at_once() {
        let first = PathFailure::after(None, FailureKind::NeedsSpace, "full".into(), 100, 1_000);
        assert_eq!((first.attempts, first.next_retry_ms, first.since_ms), (1, 11_000, 1_000));
        let second = PathFailure::after(Some(&first), FailureKind::NeedsSpace, "full".into(), 100, 11_000);
        assert_eq!((second.attempts, second.next_retry_ms, second.since_ms), (2, 31_000, 1_000));
        assert!(!second.due(12_000, Some(99)));
        assert!(second.due(12_000, Some(100)));
        assert!(second.due(31_000, None));
        let other = PathFailure::after(Some(&second), FailureKind::Transient, "gone".into(), 100, 12_000);
        assert_eq!(other.attempts, 1, "a new kind of failure starts its own backoff");
    }

    proptest! {
        #[test]
        fn backoff_never_shrinks_and_stays_bounded(attempts in 1u32..100) {
            for kind in [FailureKind::Transient, FailureKind::NeedsSpace, FailureKind::Permanent, FailureKind::Refused] {
                let now = backoff_ms(kind, attempts);
                prop_assert!(now <= backoff_ms(kind, attempts + 1));
                prop_assert!((TRANSIENT_FIRST_MS..=STUCK_MAX_MS).contains(&now));
            }
        }
    }
}
