//! Debounce of file events: a changed path is handed on once it has been quiet for `quiet`, or
//! once it has waited `max_delay` since its first event if it never goes quiet (a long copy, a
//! log). A change of "" (the whole folder) is handed on at once and covers every other path.
//! Time comes in as an argument.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::path::{one_level_up, MAX_PENDING_PATHS};

/// A path that keeps changing is still handed on this often.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct Debouncer {
    /// Per folder, each changed path's first and latest event.
    pending: HashMap<String, HashMap<String, (Instant, Instant)>>,
}

impl Debouncer {
    /// An event for `path` of `folder` at `now`.
    pub fn mark(&mut self, folder: &str, path: String, now: Instant) {
        let paths = self.pending.entry(folder.to_string()).or_default();
        paths.entry(path).and_modify(|(_, last)| *last = now).or_insert((now, now));
        if paths.len() > MAX_PENDING_PATHS {
            collapse(paths);
        }
    }

    /// The paths due at `now`, per folder, and when the next of the others is due.
    pub fn take_due(&mut self, now: Instant, quiet: Duration) -> (Vec<(String, Vec<String>)>, Option<Instant>) {
        let due = |&(first, last): &(Instant, Instant)| (last + quiet).min(first + MAX_DELAY);
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
/// event and the latest event of the paths it stands for.
fn collapse(paths: &mut HashMap<String, (Instant, Instant)>) {
    while paths.len() > MAX_PENDING_PATHS / 2 {
        let before = paths.len();
        let mut up: HashMap<String, (Instant, Instant)> = HashMap::with_capacity(before / 2);
        for (path, (first, last)) in paths.drain() {
            up.entry(one_level_up(&path).to_string())
                .and_modify(|(f, l)| {
                    *f = (*f).min(first);
                    *l = (*l).max(last);
                })
                .or_insert((first, last));
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
        d.mark("f", "a".into(), t0);
        d.mark("f", "busy".into(), t0);
        // Not quiet yet.
        let (ready, next) = d.take_due(ms(10), QUIET);
        assert!(ready.is_empty());
        assert_eq!(next, Some(ms(20)));
        // `busy` keeps changing every 10 ms; `a` went quiet.
        d.mark("f", "busy".into(), ms(15));
        let (ready, _) = d.take_due(ms(20), QUIET);
        assert_eq!(ready, vec![("f".to_string(), vec!["a".to_string()])]);
        let mut t = 15;
        while t + 10 < 1000 {
            t += 10;
            d.mark("f", "busy".into(), ms(t));
            let (ready, _) = d.take_due(ms(t), QUIET);
            assert!(ready.is_empty(), "handed on at {t} ms although it never went quiet");
        }
        let (ready, _) = d.take_due(ms(1000), QUIET);
        assert_eq!(ready, vec![("f".to_string(), vec!["busy".to_string()])]);
        assert!(d.is_empty());
    }

    #[test]
    fn the_whole_folder_goes_at_once_and_covers_every_path() {
        let t0 = Instant::now();
        let mut d = Debouncer::default();
        d.mark("f", "a".into(), t0);
        d.mark("f", String::new(), t0);
        d.mark("g", "b".into(), t0);
        let (ready, next) = d.take_due(t0, QUIET);
        assert_eq!(ready, vec![("f".to_string(), vec![String::new()])]);
        assert_eq!(next, Some(t0 + QUIET));
    }

    #[test]
    fn a_burst_of_paths_gives_way_to_their_directories() {
        let t0 = Instant::now();
        let mut d = Debouncer::default();
        d.mark("f", crate::core::path::IGNORE_FILE.into(), t0);
        let dirs = 40;
        for i in 0..MAX_PENDING_PATHS {
            d.mark("f", format!("d{}/f{i}", i % dirs), t0 + Duration::from_millis(i as u64 % 7));
        }
        let (ready, _) = d.take_due(t0 + MAX_DELAY, QUIET);
        let mut want: Vec<String> = (0..dirs).map(|i| format!("d{i}")).collect();
        want.push(crate::core::path::IGNORE_FILE.into());
        want.sort();
        assert_eq!(ready, vec![("f".to_string(), want)], "each directory once, the ignore file kept");
        // Top-level paths give way to the whole folder.
        for i in 0..=MAX_PENDING_PATHS {
            d.mark("g", format!("f{i}"), t0);
        }
        let (ready, _) = d.take_due(t0, QUIET);
        assert_eq!(ready, vec![("g".to_string(), vec![String::new()])]);
    }
}
