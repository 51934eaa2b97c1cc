//! Debounce of file events: a changed path is handed on once it has been quiet for `quiet`, or
//! once it has waited `MAX_DELAY` since its first event if it never goes quiet. A file written to
//! and not closed since (a copy under way, a log) waits longer: `OPEN_QUIET` without an event, or
//! `MAX_DELAY_OPEN` in all, so that a copy that stalls for a moment is not hashed half-written (its
//! half would be announced, and pulled, as a version). A change of "" (the whole folder) is handed
//! on at once and covers every other path. Time comes in as an argument.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::path::{one_level_up, MAX_PENDING_PATHS};

/// A path that keeps changing is still handed on this often.
pub const MAX_DELAY: Duration = Duration::from_secs(1);
/// A file open for writing is handed on after this long without an event...
pub const OPEN_QUIET: Duration = Duration::from_secs(1);
/// ...or this long after its first event, if it keeps changing (a log written to all day).
pub const MAX_DELAY_OPEN: Duration = Duration::from_secs(10);

/// A full scan leaves a file modified less than this long ago for a look of its own once it has
/// settled (`settling`): the watcher's debounce knows when a writer closes a file, a walk of the
/// whole folder does not, and a copy it met in the middle would otherwise be announced, and
/// pulled by every peer, half-written.
pub const SETTLE: Duration = Duration::from_secs(1);
/// At most this many settling files are left by one full scan; past it they are judged at once
/// (as before this rule), so that memory stays bounded whatever is being written.
pub const SETTLING_MAX: usize = 4096;

/// Whether a file last modified at `mtime_ns` is still settling at `now_ns` (both nanoseconds
/// since the epoch): modified less than `SETTLE` ago. A time further in the future than that
/// (a clock set ahead, an mtime set by a program) never settles by waiting: it is judged at once.
pub fn settling(mtime_ns: i64, now_ns: i64) -> bool {
    let settle = SETTLE.as_nanos() as i64;
    let age = now_ns.saturating_sub(mtime_ns);
    -settle < age && age < settle
}

/// What an event says of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// It changed (created, renamed, its mode...).
    Change,
    /// Data was written to it: it is open for writing until `Closed`.
    Write,
    /// A writer closed it.
    Closed,
}

/// A pending path: its first and latest event, and whether a write was seen without its close.
#[derive(Debug, Clone, Copy)]
struct Pending {
    first: Instant,
    last: Instant,
    open: bool,
}

impl Pending {
    fn due(&self, quiet: Duration) -> Instant {
        if self.open {
            (self.last + OPEN_QUIET).min(self.first + MAX_DELAY_OPEN)
        } else {
            (self.last + quiet).min(self.first + MAX_DELAY)
        }
    }
}

#[derive(Debug, Default)]
pub struct Debouncer {
    /// Per folder, each changed path.
    pending: HashMap<String, HashMap<String, Pending>>,
}

impl Debouncer {
    /// An event for `path` of `folder` at `now`. A close of a path with no event pending is none:
    /// nothing was seen written (the Puller's own download is closed after its rename, under its
    /// final name).
    pub fn mark(&mut self, folder: &str, path: String, now: Instant, seen: Seen) {
        if seen == Seen::Closed && !self.pending.get(folder).is_some_and(|paths| paths.contains_key(&path)) {
            return;
        }
        let paths = self.pending.entry(folder.to_string()).or_default();
        let p = paths.entry(path).or_insert(Pending { first: now, last: now, open: false });
        p.last = now;
        match seen {
            Seen::Change => {}
            Seen::Write => p.open = true,
            Seen::Closed => p.open = false,
        }
        if paths.len() > MAX_PENDING_PATHS {
            collapse(paths);
        }
    }

    /// The paths due at `now`, per folder, and when the next of the others is due.
    pub fn take_due(&mut self, now: Instant, quiet: Duration) -> (Vec<(String, Vec<String>)>, Option<Instant>) {
        let due = |p: &Pending| p.due(quiet);
        let mut next: Option<Instant> = None;
        let mut ready_all = Vec::new();
        for (folder, paths) in self.pending.iter_mut() {
            let ready: Vec<String> = if paths.contains_key("") {
                paths.clear();
                vec![String::new()]
            } else {
                let mut ready: Vec<String> =
                    paths.iter().filter(|(_, t)| due(t) <= now).map(|(p, _)| p.clone()).collect();
                ready.sort();
                paths.retain(|_, t| due(t) > now);
                ready
            };
            next = paths.values().map(due).chain(next).min();
            if !ready.is_empty() {
                ready_all.push((folder.clone(), ready));
            }
        }
        self.pending.retain(|_, paths| !paths.is_empty());
        ready_all.sort();
        (ready_all, next)
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Replaces paths by their directories, one level at a time, until at most half of
/// `MAX_PENDING_PATHS` remain (or only the whole folder): each directory keeps the earliest first
/// event and the latest event of the paths it stands for, and is open if any of them is.
fn collapse(paths: &mut HashMap<String, Pending>) {
    while paths.len() > MAX_PENDING_PATHS / 2 {
        let before = paths.len();
        let mut up: HashMap<String, Pending> = HashMap::with_capacity(before / 2);
        for (path, p) in paths.drain() {
            up.entry(one_level_up(&path).to_string())
                .and_modify(|u| {
                    u.first = u.first.min(p.first);
                    u.last = u.last.max(p.last);
                    u.open |= p.open;
                })
                .or_insert(p);
        }
        *paths = up;
        if paths.len() == before {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(20);

    #[test]
    fn a_path_goes_once_it_is_quiet_and_a_busy_one_at_the_latest_after_max_delay() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut d = Debouncer::default();
        d.mark("f", "a".into(), t0, Seen::Change);
        d.mark("f", "busy".into(), t0, Seen::Change);
        // Not quiet yet.
        let (ready, next) = d.take_due(ms(10), QUIET);
        assert!(ready.is_empty());
        assert_eq!(next, Some(ms(20)));
        // `busy` keeps changing every 10 ms; `a` went quiet.
        d.mark("f", "busy".into(), ms(15), Seen::Change);
        let (ready, _) = d.take_due(ms(20), QUIET);
        assert_eq!(ready, vec![("f".to_string(), vec!["a".to_string()])]);
        let mut t = 15;
        while t + 10 < 1000 {
            t += 10;
            d.mark("f", "busy".into(), ms(t), Seen::Change);
            let (ready, _) = d.take_due(ms(t), QUIET);
            assert!(ready.is_empty(), "handed on at {t} ms although it never went quiet");
        }
        let (ready, _) = d.take_due(ms(1000), QUIET);
        assert_eq!(ready, vec![("f".to_string(), vec!["busy".to_string()])]);
        assert!(d.is_empty());
    }

    #[test]
    fn a_file_open_for_writing_waits_for_its_close_or_a_long_quiet() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut d = Debouncer::default();
        // A copy that stalls for 500 ms half-way is not handed on; its close makes it due after
        // the usual quiet.
        d.mark("f", "copy".into(), t0, Seen::Write);
        d.mark("f", "copy".into(), ms(10), Seen::Write);
        let (ready, next) = d.take_due(ms(510), QUIET);
        assert!(ready.is_empty());
        assert_eq!(next, Some(ms(10) + OPEN_QUIET));
        d.mark("f", "copy".into(), ms(520), Seen::Closed);
        assert!(d.take_due(ms(530), QUIET).0.is_empty());
        assert_eq!(d.take_due(ms(540), QUIET).0, vec![("f".to_string(), vec!["copy".to_string()])]);
        // A close alone is no change.
        d.mark("f", "closed".into(), t0, Seen::Closed);
        assert!(d.is_empty());
        // A writer that goes silent without closing: handed on after OPEN_QUIET.
        d.mark("f", "idle".into(), t0, Seen::Write);
        assert_eq!(d.take_due(t0 + OPEN_QUIET, QUIET).0, vec![("f".to_string(), vec!["idle".to_string()])]);
        // One that writes all the time: every MAX_DELAY_OPEN.
        let mut t = 0;
        while t < MAX_DELAY_OPEN.as_millis() as u64 - 100 {
            d.mark("f", "log".into(), ms(t), Seen::Write);
            assert!(d.take_due(ms(t), QUIET).0.is_empty(), "handed on at {t} ms");
            t += 100;
        }
        d.mark("f", "log".into(), ms(t), Seen::Write);
        assert_eq!(d.take_due(t0 + MAX_DELAY_OPEN, QUIET).0, vec![("f".to_string(), vec!["log".to_string()])]);
    }

    #[test]
    fn the_whole_folder_goes_at_once_and_covers_every_path() {
        let t0 = Instant::now();
        let mut d = Debouncer::default();
        d.mark("f", "a".into(), t0, Seen::Change);
        d.mark("f", String::new(), t0, Seen::Change);
        d.mark("g", "b".into(), t0, Seen::Change);
        let (ready, next) = d.take_due(t0, QUIET);
        assert_eq!(ready, vec![("f".to_string(), vec![String::new()])]);
        assert_eq!(next, Some(t0 + QUIET));
    }

    #[test]
    fn a_burst_of_paths_gives_way_to_their_directories() {
        let t0 = Instant::now();
        let mut d = Debouncer::default();
        d.mark("f", crate::core::path::IGNORE_FILE.into(), t0, Seen::Change);
        let dirs = 40;
        for i in 0..MAX_PENDING_PATHS {
            d.mark("f", format!("d{}/f{i}", i % dirs), t0 + Duration::from_millis(i as u64 % 7), Seen::Change);
        }
        let (ready, _) = d.take_due(t0 + MAX_DELAY, QUIET);
        let mut want: Vec<String> = (0..dirs).map(|i| format!("d{i}")).collect();
        want.push(crate::core::path::IGNORE_FILE.into());
        want.sort();
        assert_eq!(ready, vec![("f".to_string(), want)], "each directory once, the ignore file kept");
        // Top-level paths give way to the whole folder.
        for i in 0..=MAX_PENDING_PATHS {
            d.mark("g", format!("f{i}"), t0, Seen::Change);
        }
        let (ready, _) = d.take_due(t0, QUIET);
        assert_eq!(ready, vec![("g".to_string(), vec![String::new()])]);
    }

    #[test]
    fn a_file_settles_a_second_after_its_last_write_and_a_future_time_never_waits() {
        let s = SETTLE.as_nanos() as i64;
        let now = 1_700_000_000 * 1_000_000_000i64;
        assert!(settling(now, now));
        assert!(settling(now - s + 1, now));
        assert!(!settling(now - s, now));
        assert!(!settling(now - 3600 * 1_000_000_000, now));
        // Written "just after" the clock read (another core's clock, a coarse timestamp): settling.
        assert!(settling(now + s / 2, now));
        // Far in the future: waiting would never help.
        assert!(!settling(now + s, now));
        assert!(!settling(i64::MAX, now));
        assert!(!settling(i64::MIN, now));
    }

    proptest::proptest! {
        /// Settling is a window of `SETTLE` on either side of now, and nothing outside it waits.
        #[test]
        fn settling_is_exactly_the_window_around_now(mtime in proptest::num::i64::ANY, now in proptest::num::i64::ANY) {
            let s = SETTLE.as_nanos() as i128;
            let age = now as i128 - mtime as i128;
            proptest::prop_assert_eq!(settling(mtime, now), -s < age && age < s);
        }
    }
}
