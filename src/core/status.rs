//! What a folder's status says of it (`GET /rest/status`, the `folder_error` metric): its state and
//! the one line that says why it is in `error`. The numbers come from the gauges the actors keep;
//! the rule that turns them into a state is here.

use super::retry::FailureKind;

/// A folder's state, by precedence: an error shows over a scan, a scan over the pulls still to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderState {
    /// Stopped (its root is gone or replaced, or a scan would delete every file), or paths fail to
    /// pull in a way that waits for the user (`FailureKind::is_error`).
    Error,
    Scanning,
    /// Files are still needed from peers.
    Syncing,
    Idle,
}

impl FolderState {
    /// The name the API and the CLI show.
    pub fn as_str(self) -> &'static str {
        match self {
            FolderState::Error => "error",
            FolderState::Scanning => "scanning",
            FolderState::Syncing => "syncing",
            FolderState::Idle => "idle",
        }
    }
}

/// A failed pull as the status lists it: its path, what would fix it, and why it failed.
pub struct Failed<'a> {
    pub path: &'a str,
    pub kind: FailureKind,
    pub reason: &'a str,
}

/// The state of a folder and, in `error`, why: the reason it is stopped (`fault`), or else how many
/// of the `failed` pulls wait for the user and the first of them. A transient failure, or a peer's
/// record this node refuses, is retried on its own and is no error (a hostile peer could otherwise
/// put the folder in `error` at will).
pub fn folder_state<'a>(
    fault: Option<String>,
    failed: impl IntoIterator<Item = Failed<'a>>,
    scanning: bool,
    need_files: u64,
) -> (FolderState, Option<String>) {
    let mut stuck = failed.into_iter().filter(|f| f.kind.is_error());
    let error = fault.or_else(|| {
        let first = stuck.next()?;
        Some(format!("{} path(s) cannot be pulled; {}: {}", 1 + stuck.count(), first.path, first.reason))
    });
    let state = if error.is_some() {
        FolderState::Error
    } else if scanning {
        FolderState::Scanning
    } else if need_files > 0 {
        FolderState::Syncing
    } else {
        FolderState::Idle
    };
    (state, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(path: &str, kind: FailureKind) -> Failed<'_> {
        Failed { path, kind, reason: "why" }
    }

    #[test]
    fn an_error_shows_over_a_scan_and_a_scan_over_pulls_to_do() {
        let fault = || Some("the folder root does not exist".to_string());
        assert_eq!(folder_state(fault(), [], true, 5), (FolderState::Error, fault()));
        assert_eq!(folder_state(None, [], true, 5), (FolderState::Scanning, None));
        assert_eq!(folder_state(None, [], false, 5), (FolderState::Syncing, None));
        assert_eq!(folder_state(None, [], false, 0), (FolderState::Idle, None));
        let names: Vec<&str> = [FolderState::Error, FolderState::Scanning, FolderState::Syncing, FolderState::Idle]
            .map(|s| s.as_str())
            .into();
        assert_eq!(names, ["error", "scanning", "syncing", "idle"]);
    }

    #[test]
    fn only_failures_that_wait_for_the_user_are_an_error_and_the_first_is_named() {
        let retried = [failed("a", FailureKind::Transient), failed("b", FailureKind::Refused)];
        assert_eq!(folder_state(None, retried, false, 2), (FolderState::Syncing, None));
        let failures = [
            failed("a", FailureKind::Transient),
            failed("b", FailureKind::NeedsSpace),
            failed("c", FailureKind::Refused),
            failed("d", FailureKind::Permanent),
        ];
        let (state, error) = folder_state(None, failures, true, 2);
        assert_eq!(state, FolderState::Error);
        assert_eq!(error.as_deref(), Some("2 path(s) cannot be pulled; b: why"));
        // A stopped folder says why it stopped, not what fails to pull.
        let (_, error) = folder_state(Some("stopped".into()), [failed("b", FailureKind::Permanent)], false, 0);
        assert_eq!(error.as_deref(), Some("stopped"));
    }
}
