//! The Watcher's rules, as plain data in and decisions out (no notify types, no clock, no disk):
//! which file events are dropped on notify's thread ([`EventFilter`]: reads, anything that only
//! touches our own files, a download's rename into place), what an event that goes on says of each
//! of its paths to the debounce ([`Event::changes`], `core::debounce::Seen`), and what becomes of a
//! folder's watch when the directory at its root changes ([`RootWatch`]).
//!
//! The Watcher maps each notify event to an [`Event`] (its kind narrowed to what these rules tell
//! apart, its paths made relative to the folder root) and each look at a root to a [`DirId`].

use std::collections::HashMap;

use super::debounce::Seen;
use super::path::{is_internal, is_temp_of, IGNORE_FILE, TEMP_PREFIX};

/// What an event did, as far as the Watcher's rules tell kinds apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Data was written to a file, or a file was created: open for writing until its close.
    Written,
    /// A writer closed the file (it ends the wait of a file open for writing).
    WriterClosed,
    /// An access that changes nothing: an open, a read, a reader's close.
    Read,
    /// One half of a rename, or both halves in one event (paired by the event's cookie).
    Renamed(Rename),
    /// Anything else: a directory created, a removal, a mode or mtime change, a rename of
    /// unknown shape.
    Changed,
}

/// Which part of a rename an event reports (inotify: a "from", then a "to" and a "both" sharing
/// its cookie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rename {
    From,
    To,
    /// Both names: from, then to.
    Both,
}

/// A file event of one folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    /// Each path relative to the folder's root ("" is the root itself); `None`: a path outside the
    /// root, or not UTF-8.
    pub paths: Vec<Option<String>>,
    /// The cookie that pairs a rename's halves, if the event has one.
    pub cookie: Option<usize>,
    /// The kernel dropped events (its queue overflowed): the folder must be scanned whole.
    pub rescan: bool,
}

impl Kind {
    /// What an event of this kind says of its path, for the debounce.
    pub fn seen(self) -> Seen {
        match self {
            Kind::Written => Seen::Write,
            Kind::WriterClosed => Seen::Closed,
            _ => Seen::Change,
        }
    }
}

/// Whether `rel` is syncnode's own (a temp file, the version store), not the user's: its events
/// are no change. The root ignore file is the user's.
fn ours(rel: &str) -> bool {
    is_internal(rel) && rel != IGNORE_FILE
}

impl Event {
    /// What the event hands the debounce: the whole folder ("") if the kernel dropped events, then
    /// each of its paths inside the folder that is the user's, with what the event says of it.
    pub fn changes(&self) -> impl Iterator<Item = (&str, Seen)> + '_ {
        let seen = self.kind.seen();
        let paths = self.paths.iter().flatten().map(String::as_str).filter(|rel| !rel.is_empty() && !ours(rel));
        self.rescan.then_some(("", Seen::Change)).into_iter().chain(paths.map(move |rel| (rel, seen)))
    }
}

/// What an event the watch could not follow hands the debounce: the new directories past the
/// inotify watch limit it names (scanned now; later changes in them wait for the periodic rescan),
/// or the whole folder ("") if it names none inside the folder.
pub fn past_limit(paths: impl IntoIterator<Item = Option<String>>) -> Vec<String> {
    let rels: Vec<String> = paths.into_iter().flatten().collect();
    if rels.is_empty() {
        vec![String::new()]
    } else {
        rels
    }
}

/// Unmatched halves of our own renames kept at most (a dropped event leaves one behind).
pub const TEMP_RENAMES_KEPT: usize = 4096;

/// What of a folder's file events goes to the Watcher actor, decided on notify's thread: no reads
/// (a writer's close goes on: it ends the wait of a file open for writing), nothing that only
/// touches our own files (a download's temp file: its create, writes, mode and mtime; the version
/// store), and not a download's rename into place (`own_commit`). A pulled file then costs the
/// actor thread no event at all (it was about six).
#[derive(Debug, Default)]
pub struct EventFilter {
    /// Renames away from one of our temp files not yet matched with their other half, by cookie.
    temp_renames: HashMap<usize, String>,
}

impl EventFilter {
    pub fn passes(&mut self, event: &Event) -> bool {
        if event.kind == Kind::Read || self.own_commit(event) {
            return false;
        }
        // An event with no path (a queue overflow) or a path outside the root goes on.
        event.paths.is_empty() || !event.paths.iter().all(|p| p.as_deref().is_some_and(ours))
    }

    /// Whether `event` is a download of ours put in place: the rename of one of our temp files onto
    /// the path it was made for (`core::path::is_temp_of`). Its commit told the Index what is at
    /// the path now, so looking at it again would find nothing (it was a look per pulled file: ~10%
    /// of a receiver's CPU in a million-file sync). Anything done to the path afterwards has events
    /// of its own.
    fn own_commit(&mut self, event: &Event) -> bool {
        let Kind::Renamed(mode) = event.kind else { return false };
        let rels: Vec<&str> = event.paths.iter().flatten().map(String::as_str).collect();
        match (mode, &rels[..], event.cookie) {
            (Rename::From, [from], Some(cookie))
                if from.rsplit('/').next().is_some_and(|n| n.starts_with(TEMP_PREFIX)) =>
            {
                if self.temp_renames.len() >= TEMP_RENAMES_KEPT {
                    self.temp_renames.clear();
                }
                self.temp_renames.insert(cookie, from.to_string());
                true
            }
            (Rename::To, [to], Some(cookie)) => self.temp_renames.get(&cookie).is_some_and(|from| is_temp_of(from, to)),
            (Rename::Both, [from, to], cookie) => {
                if let Some(cookie) = cookie {
                    self.temp_renames.remove(&cookie);
                }
                is_temp_of(from, to)
            }
            _ => false,
        }
    }
}

/// A directory's identity: its (device, inode).
pub type DirId = (u64, u64);

/// One folder's watch as far as its root goes. A watch dies with its directory (an unmounted disk,
/// a root renamed away or replaced): each look at the root compares the directory there with the
/// one watched, drops a dead watch, and sets up a new one as soon as a directory is there again,
/// followed by a full rescan (what changed while nothing watched). A root on which setting up a
/// watch failed is not tried again until the root changes: the periodic rescan covers it meanwhile.
#[derive(Debug, Default)]
pub struct RootWatch {
    /// The directory watched now.
    watched: Option<DirId>,
    /// The directory on which setting up a watch failed.
    failed: Option<DirId>,
    /// Whether a watch was ever attempted (the first needs no rescan: the Index scans at start).
    attempted: bool,
    /// Whether the inotify watch limit was met (said once per run).
    limit_met: bool,
}

/// What a look at the root asks of the Watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    /// The watch is dead (its directory is gone or replaced): drop it.
    pub lost: bool,
    /// Set up a watch on this directory (then call [`RootWatch::watching`] or [`RootWatch::failed`]).
    pub set_up: Option<DirId>,
}

impl RootWatch {
    /// The directory at the root now (`None`: none there).
    pub fn look(&mut self, now: Option<DirId>) -> Look {
        if now == self.watched || (now.is_some() && now == self.failed) {
            return Look { lost: false, set_up: None };
        }
        Look { lost: self.watched.take().is_some(), set_up: now }
    }

    /// A watch is set up on `root`: whether the folder is to be rescanned (every watch after the
    /// first: whatever changed while nothing was watching).
    pub fn watching(&mut self, root: DirId) -> bool {
        self.watched = Some(root);
        self.failed = None;
        std::mem::replace(&mut self.attempted, true)
    }

    /// Setting up a watch on `root` failed: whether to say so (not again until a watch succeeds).
    pub fn failed(&mut self, root: DirId) -> bool {
        self.attempted = true;
        self.failed.replace(root).is_none()
    }

    /// The inotify watch limit left directories unwatched: whether to say so (once per run: the
    /// periodic rescan covers them, and the user's fix is the same each time).
    pub fn limit_met(&mut self) -> bool {
        !std::mem::replace(&mut self.limit_met, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::path::temp_name;
    use proptest::prelude::*;

    fn event(kind: Kind, paths: &[&str], cookie: Option<usize>) -> Event {
        Event { kind, paths: paths.iter().map(|p| Some(p.to_string())).collect(), cookie, rescan: false }
    }

    fn renamed(mode: Rename, paths: &[&str], cookie: usize) -> Event {
        event(Kind::Renamed(mode), paths, Some(cookie))
    }

    #[test]
    fn a_downloads_own_events_stop_and_a_users_go_on() {
        let mut f = EventFilter::default();
        let temp = temp_name("d/file.txt", "1f.2");
        // A download: its temp file's events, then its rename into place.
        assert!(!f.passes(&event(Kind::Written, &[&temp], None)));
        assert!(!f.passes(&event(Kind::Changed, &[&temp], None)));
        assert!(!f.passes(&event(Kind::Read, &[&temp], None)));
        assert!(!f.passes(&renamed(Rename::From, &[&temp], 7)));
        assert!(!f.passes(&renamed(Rename::To, &["d/file.txt"], 7)));
        assert!(!f.passes(&renamed(Rename::Both, &[&temp, "d/file.txt"], 7)));
        assert!(f.temp_renames.is_empty(), "the rename's halves are matched and forgotten");
        // The user's own changes, renames onto the same path included, go on.
        assert!(f.passes(&renamed(Rename::From, &["d/other.txt"], 8)));
        assert!(f.passes(&renamed(Rename::To, &["d/file.txt"], 8)));
        assert!(f.passes(&renamed(Rename::Both, &["d/other.txt", "d/file.txt"], 8)));
        assert!(f.passes(&event(Kind::Changed, &["d/file.txt"], None)));
        assert!(f.passes(&event(Kind::Written, &[IGNORE_FILE], None)));
        // Our temp file renamed onto another path is not a download put in place.
        assert!(!f.passes(&renamed(Rename::From, &[&temp], 9)));
        assert!(f.passes(&renamed(Rename::To, &["d/elsewhere.txt"], 9)));
        // An overflow (no path) always goes on; so does a writer's close of the user's file, and
        // an event of a path outside the root. A user's read does not.
        assert!(f.passes(&Event { kind: Kind::Changed, paths: Vec::new(), cookie: None, rescan: true }));
        assert!(f.passes(&event(Kind::WriterClosed, &["d/file.txt"], None)));
        assert!(!f.passes(&event(Kind::WriterClosed, &[&temp], None)));
        assert!(f.passes(&Event { kind: Kind::Changed, paths: vec![None], cookie: None, rescan: false }));
        assert!(!f.passes(&event(Kind::Read, &["d/file.txt"], None)));
        // The version store is ours.
        assert!(!f.passes(&event(Kind::Written, &[".syncnode-versions/d/file.txt"], None)));
    }

    #[test]
    fn an_event_hands_the_debounce_the_users_paths_and_a_rescan_first() {
        let e = Event {
            kind: Kind::Written,
            paths: vec![
                Some("a".into()),
                None,
                Some(String::new()),
                Some(temp_name("a", "1")),
                Some(IGNORE_FILE.into()),
            ],
            cookie: None,
            rescan: true,
        };
        let changes: Vec<(&str, Seen)> = e.changes().collect();
        assert_eq!(changes, vec![("", Seen::Change), ("a", Seen::Write), (IGNORE_FILE, Seen::Write)]);
        assert_eq!(Kind::WriterClosed.seen(), Seen::Closed);
        assert_eq!(Kind::Renamed(Rename::To).seen(), Seen::Change);
        assert_eq!(Kind::Changed.seen(), Seen::Change);
    }

    #[test]
    fn unmatched_halves_of_our_renames_are_bounded() {
        let mut f = EventFilter::default();
        for cookie in 0..TEMP_RENAMES_KEPT + 10 {
            let temp = temp_name("x", &format!("{cookie}"));
            assert!(!f.passes(&renamed(Rename::From, &[&temp], cookie)));
            assert!(f.temp_renames.len() <= TEMP_RENAMES_KEPT);
        }
        // Halves forgotten with the clear are then the user's: a look too many, never one missed.
        assert!(f.passes(&renamed(Rename::To, &["x"], 0)));
        assert!(!f.passes(&renamed(Rename::To, &["x"], TEMP_RENAMES_KEPT + 9)));
    }

    #[test]
    fn a_watch_follows_the_directory_at_the_root() {
        let (a, b) = ((1, 10), (1, 11));
        let mut w = RootWatch::default();
        // The first watch: no rescan (the Index scans at start).
        assert_eq!(w.look(Some(a)), Look { lost: false, set_up: Some(a) });
        assert!(!w.watching(a));
        assert_eq!(w.look(Some(a)), Look { lost: false, set_up: None });
        // The root goes away: the watch is dropped once, nothing is set up until it is back.
        assert_eq!(w.look(None), Look { lost: true, set_up: None });
        assert_eq!(w.look(None), Look { lost: false, set_up: None });
        // Back as another directory, on which a watch fails: said once, not tried again on it.
        assert_eq!(w.look(Some(b)), Look { lost: false, set_up: Some(b) });
        assert!(w.failed(b));
        assert_eq!(w.look(Some(b)), Look { lost: false, set_up: None });
        // Replaced again: tried again; a second failure is not said again.
        assert_eq!(w.look(Some(a)), Look { lost: false, set_up: Some(a) });
        assert!(!w.failed(a));
        // Then a watch that works: a rescan, and failures are said again afterwards.
        assert_eq!(w.look(Some(b)), Look { lost: false, set_up: Some(b) });
        assert!(w.watching(b));
        assert_eq!(w.look(Some(a)), Look { lost: true, set_up: Some(a) });
        assert!(w.failed(a));
        // The watch limit is said once.
        assert!(w.limit_met());
        assert!(!w.limit_met());
    }

    #[test]
    fn past_the_watch_limit_the_named_directories_are_scanned_else_the_folder() {
        assert_eq!(past_limit([Some("d/new".to_string()), None]), vec!["d/new".to_string()]);
        assert_eq!(past_limit([None]), vec![String::new()]);
        assert_eq!(past_limit([]), vec![String::new()]);
    }

    /// A few paths: the user's, a temp file of each, and the version store's.
    const USER: [&str; 3] = ["a", "d/b", IGNORE_FILE];

    fn path(i: usize) -> String {
        match i % 3 {
            0 => USER[i / 3 % USER.len()].to_string(),
            1 => temp_name(USER[i / 3 % 2], "7"),
            _ => format!(".syncnode-versions/{}", USER[i / 3 % 2]),
        }
    }

    proptest! {
        /// Any mix of events: no user change other than a rename is ever dropped; a rename between
        /// the user's paths is dropped only if a temp file of ours went away under its cookie onto
        /// its path (the other half of one of our downloads); every download put in place is
        /// dropped, whatever came between its halves under other cookies.
        #[test]
        fn only_reads_and_our_own_files_and_downloads_are_dropped(
            events in proptest::collection::vec((0u8..6, proptest::collection::vec(0usize..9, 0..3), 0usize..4), 0..40)
        ) {
            let mut f = EventFilter::default();
            let mut away: HashMap<usize, String> = HashMap::new();
            for (kind, paths, cookie) in events {
                let paths: Vec<String> = paths.into_iter().map(path).collect();
                let users = paths.iter().any(|p| !ours(p));
                let kind = match kind {
                    0 => Kind::Written,
                    1 => Kind::WriterClosed,
                    2 => Kind::Read,
                    3 => Kind::Changed,
                    4 => Kind::Renamed(Rename::From),
                    _ => Kind::Renamed(Rename::To),
                };
                let e = Event { kind, paths: paths.iter().cloned().map(Some).collect(), cookie: Some(cookie), rescan: false };
                let passes = f.passes(&e);
                match kind {
                    Kind::Read => prop_assert!(!passes),
                    Kind::Renamed(Rename::From) => {
                        if let [from] = &paths[..] {
                            if from.rsplit('/').next().unwrap().starts_with(TEMP_PREFIX) {
                                away.insert(cookie, from.clone());
                            }
                        }
                        prop_assert_eq!(passes, paths.is_empty() || users);
                    }
                    Kind::Renamed(_) => {
                        let download = matches!(&paths[..], [to] if away.get(&cookie).is_some_and(|from| is_temp_of(from, to)));
                        prop_assert_eq!(passes, !download && (paths.is_empty() || users));
                    }
                    _ => prop_assert_eq!(passes, paths.is_empty() || users),
                }
                // A download of a user's path, put in place under a fresh cookie, is dropped.
                let temp = temp_name(&paths.first().cloned().unwrap_or_default(), "9");
                if let Some(to) = paths.first().filter(|p| !ours(p)) {
                    prop_assert!(!f.passes(&renamed(Rename::From, &[&temp], 100)));
                    prop_assert!(!f.passes(&renamed(Rename::To, &[to], 100)));
                    prop_assert!(!f.passes(&renamed(Rename::Both, &[&temp, to], 100)));
                }
            }
        }
    }
}
