//! The rules of the version store: which kept versions of a path survive at a given moment, and
//! where a size cap cuts. Deterministic and clock-free (`now` is an argument, times are
//! milliseconds since the epoch), so the thinning can be replayed over a simulated clock in tests;
//! `fs::versions` does the disk work.
//!
//! - `trash`: every version younger than `max_age`.
//! - `simple`: the newest `keep` versions of each path (and none older than `max_age`).
//! - `staggered`: fewer versions the older they get (Syncthing's scheme): the newest always, then
//!   one per 30 s for the first hour, one per hour for the first day, one per day for the first 30
//!   days, one per week up to `max_age`.
//! - every type: past `max_size` bytes in all, the oldest versions (of any path) go first.

/// Milliseconds, the unit of every time here.
pub const SECOND: u64 = 1000;
pub const MINUTE: u64 = 60 * SECOND;
pub const HOUR: u64 = 60 * MINUTE;
pub const DAY: u64 = 24 * HOUR;
pub const WEEK: u64 = 7 * DAY;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Nothing is kept: a peer's delete or overwrite removes the old file.
    None,
    Trash,
    Simple,
    Staggered,
}

/// A folder's versioning settings, as the rules need them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub kind: Kind,
    /// Versions older than this go (milliseconds); `None`: no age limit.
    pub max_age: Option<u64>,
    /// For `simple`: how many versions of each path are kept.
    pub keep: usize,
    /// Bytes the whole store may hold; past it the oldest versions go first. `None`: no cap.
    pub max_size: Option<u64>,
}

impl Policy {
    /// The default: keep what peers deleted or replaced for 30 days (losing data by default is
    /// the worse surprise).
    pub const DEFAULT: Policy = Policy { kind: Kind::Trash, max_age: Some(30 * DAY), keep: 5, max_size: None };

    pub fn keeps_versions(&self) -> bool {
        self.kind != Kind::None
    }
}

impl Kind {
    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "none" => Some(Kind::None),
            "trash" => Some(Kind::Trash),
            "simple" => Some(Kind::Simple),
            "staggered" => Some(Kind::Staggered),
            _ => None,
        }
    }

    /// The age limit when the config names none: a year for staggered (its point is a long,
    /// thin history), 30 days otherwise.
    pub fn default_max_age(self) -> Option<u64> {
        match self {
            Kind::Staggered => Some(365 * DAY),
            _ => Some(30 * DAY),
        }
    }
}

/// The spacing staggered versioning keeps between versions of this age.
pub fn staggered_step(age: u64) -> u64 {
    match age {
        a if a < HOUR => 30 * SECOND,
        a if a < DAY => HOUR,
        a if a < 30 * DAY => DAY,
        _ => WEEK,
    }
}

/// Which of one path's versions (their times, in any order) to remove at `now`: `true` at the
/// index of each one that goes. Applying the rule again to what it kept removes nothing more.
///
/// Staggered keeps the newest version in each span of its step, spans aligned to the epoch (the
/// hours of the clock, the days of the calendar in UTC, ...). Because the steps divide each other,
/// a coarser span is a union of finer ones, so thinning never drifts: every version ever kept
/// still has a kept version within the step of its age, in the same span, however often cleanup
/// runs. (Thinning relative to the last version kept, as a chain, empties whole bands when
/// versions keep arriving: each one crossing into a coarser band finds a younger one next to it.)
pub fn to_remove(policy: &Policy, times: &[u64], now: u64) -> Vec<bool> {
    let mut remove = vec![false; times.len()];
    let too_old = |t: u64| policy.max_age.is_some_and(|max| now.saturating_sub(t) > max);
    // Newest first; equal times in input order, so the result does not depend on how a directory
    // listing happened to be sorted beyond that.
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|&a, &b| times[b].cmp(&times[a]).then(a.cmp(&b)));
    let mut kept = 0usize;
    let mut spans = std::collections::HashSet::new();
    for i in order {
        let t = times[i];
        let gone = too_old(t)
            || match policy.kind {
                Kind::None | Kind::Trash => false,
                Kind::Simple => kept >= policy.keep,
                // The newest of its span is the first seen of it.
                Kind::Staggered => {
                    let step = staggered_step(now.saturating_sub(t));
                    !spans.insert((step, t / step))
                }
            };
        if gone {
            remove[i] = true;
        } else {
            kept += 1;
        }
    }
    remove
}

/// Bytes of versions by time, in a fixed number of buckets over `[lo, hi)` (times outside fall
/// into `below` and `above`): what a size cap needs to know, in constant memory however many
/// versions the store holds.
#[derive(Debug, Clone)]
pub struct SizeByTime {
    lo: u64,
    hi: u64,
    buckets: Vec<u64>,
    below: u64,
    above: u64,
    oldest: u64,
    newest: u64,
}

/// What a size cap asks of the next cleanup pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeCut {
    /// Remove every version kept before this time.
    pub remove_before: u64,
    /// The cut falls inside this span, whose versions may partly have to go too: the next pass
    /// counts them in finer buckets. `None`: the cut is exact.
    pub refine: Option<(u64, u64)>,
}

impl SizeByTime {
    pub const BUCKETS: u64 = 4096;

    pub fn new(lo: u64, hi: u64) -> Self {
        let hi = hi.max(lo + 1);
        SizeByTime { lo, hi, buckets: vec![0; Self::BUCKETS as usize], below: 0, above: 0, oldest: u64::MAX, newest: 0 }
    }

    fn width(&self) -> u64 {
        (self.hi - self.lo).div_ceil(Self::BUCKETS)
    }

    pub fn add(&mut self, time: u64, bytes: u64) {
        self.oldest = self.oldest.min(time);
        self.newest = self.newest.max(time);
        if time < self.lo {
            self.below += bytes;
        } else if time >= self.hi {
            self.above += bytes;
        } else {
            let i = ((time - self.lo) / self.width()) as usize;
            self.buckets[i] += bytes;
        }
    }

    pub fn total(&self) -> u64 {
        self.below + self.above + self.buckets.iter().sum::<u64>()
    }

    /// Where to cut so that at most `max_size` bytes stay, taking the oldest first; `None` when
    /// everything fits.
    pub fn cut(&self, max_size: u64) -> Option<SizeCut> {
        let total = self.total();
        if total <= max_size {
            return None;
        }
        let excess = total - max_size;
        // Versions kept within one millisecond go together: no finer split exists.
        let span = |lo: u64, hi: u64, covered: bool| {
            if covered || hi - lo <= 1 {
                SizeCut { remove_before: hi, refine: None }
            } else {
                SizeCut { remove_before: lo, refine: Some((lo, hi)) }
            }
        };
        if self.below >= excess {
            return Some(span(self.oldest, self.lo, self.below == excess));
        }
        let mut sum = self.below;
        let width = self.width();
        for (i, &bytes) in self.buckets.iter().enumerate() {
            if bytes == 0 {
                continue;
            }
            let start = self.lo + i as u64 * width;
            if sum + bytes >= excess {
                return Some(span(start, (start + width).min(self.hi), sum + bytes == excess));
            }
            sum += bytes;
        }
        Some(span(self.hi, self.newest + 1, false))
    }
}

/// Why a version was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// A peer deleted the path.
    Deleted,
    /// A peer's version replaced it.
    Replaced,
    /// A local change in a receive-only folder, given back to the cluster (`syncnode revert`).
    Reverted,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Deleted => "deleted",
            Reason::Replaced => "replaced",
            Reason::Reverted => "reverted",
        }
    }

    fn parse(text: &str) -> Option<Reason> {
        match text {
            "deleted" => Some(Reason::Deleted),
            "replaced" => Some(Reason::Replaced),
            "reverted" => Some(Reason::Reverted),
            _ => None,
        }
    }
}

/// What a version's file name in the store says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// The file name the version had (without its directory).
    pub name: String,
    pub time: u64,
    pub reason: Reason,
    /// The device prefix of the peer whose change made us keep it.
    pub by: String,
}

/// Longest file name most filesystems take, in bytes.
const NAME_MAX: usize = 255;

/// The store's name for a version of a file called `name`: the tag goes before the extension, so
/// the kept file still opens with the right program:
/// `report.txt` -> `report~20261129-190102-123~deleted~ABCDEFG.txt` (time in UTC). A name too long
/// for the tag loses the end of its stem.
pub fn version_name(name: &str, time: u64, reason: Reason, by: &str) -> String {
    let (stem, ext) = split_ext(name);
    let when = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(time as i64)
        .unwrap_or_default()
        .format("%Y%m%d-%H%M%S-%3f");
    let tag = format!("~{when}~{}~{by}", reason.as_str());
    let mut room = NAME_MAX.saturating_sub(tag.len() + ext.len()).min(stem.len());
    while !stem.is_char_boundary(room) {
        room -= 1;
    }
    format!("{}{tag}{ext}", &stem[..room])
}

/// `(stem, ".ext")`; a leading dot belongs to the stem (`.bashrc` has no extension), and an
/// "extension" with a `~` is none (the tag could not be told from it).
fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 && !name[i..].contains('~') => (&name[..i], &name[i..]),
        _ => (name, ""),
    }
}

/// Reads a store name back; `None` for anything `version_name` did not make.
pub fn parse_version_name(file: &str) -> Option<Tag> {
    // The tag ends the name, or is followed by the extension (which has no further dot).
    let (body, ext) = match file.rfind('.') {
        Some(i) if i > 0 && !file[i..].contains('~') => (&file[..i], &file[i..]),
        _ => (file, ""),
    };
    let mut parts = body.rsplitn(4, '~');
    let by = parts.next()?;
    let reason = Reason::parse(parts.next()?)?;
    let when = parts.next()?;
    let stem = parts.next()?;
    let valid_by =
        by == "local" || (by.len() == 7 && by.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
    if !valid_by || when.len() != 19 || stem.is_empty() {
        return None;
    }
    let time = chrono::NaiveDateTime::parse_from_str(when, "%Y%m%d-%H%M%S-%3f").ok()?.and_utc().timestamp_millis();
    Some(Tag { name: format!("{stem}{ext}"), time: u64::try_from(time).ok()?, reason, by: by.to_string() })
}

/// A moment given by a user (`versions restore --at`), in milliseconds: the end of what the text
/// names, so that a time printed by `versions list` (or one cut to the second, or a date) picks
/// the versions kept up to and including it. Accepts RFC 3339 (`2026-11-29T19:01:02.123Z`, any
/// offset), the same without offset (UTC), the store's own `20261129-190102[-123]`, a date
/// `2026-11-29`, or milliseconds since the epoch.
pub fn parse_at(text: &str) -> Option<u64> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && text.len() > 8 {
        return text.parse().ok();
    }
    let iso = text.replacen(' ', "T", 1);
    let has_fraction = |t: &str| t.contains('.') || t.len() == 19 && t.as_bytes()[15] == b'-';
    let end = |ms: i64, exact: bool| u64::try_from(ms).ok().map(|ms| if exact { ms } else { ms + 999 });
    if let Ok(t) = DateTime::parse_from_rfc3339(&iso) {
        return end(t.timestamp_millis(), has_fraction(&iso));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y%m%d-%H%M%S-%3f", "%Y%m%d-%H%M%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(&iso, format) {
            return end(t.and_utc().timestamp_millis(), has_fraction(&iso));
        }
    }
    let day = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    u64::try_from(day.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis()).ok().map(|ms| ms + DAY - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000_000;

    fn kept(policy: &Policy, times: &[u64], now: u64) -> Vec<u64> {
        let remove = to_remove(policy, times, now);
        let mut out: Vec<u64> = times.iter().zip(remove).filter(|(_, r)| !r).map(|(t, _)| *t).collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out
    }

    fn staggered(max_age: u64) -> Policy {
        Policy { kind: Kind::Staggered, max_age: Some(max_age), keep: 0, max_size: None }
    }

    #[test]
    fn trash_keeps_everything_younger_than_max_age() {
        let policy = Policy::DEFAULT;
        let times = [NOW - DAY, NOW - 29 * DAY, NOW - 31 * DAY, NOW];
        assert_eq!(kept(&policy, &times, NOW), vec![NOW, NOW - DAY, NOW - 29 * DAY]);
    }

    #[test]
    fn simple_keeps_the_newest_n() {
        let policy = Policy { kind: Kind::Simple, max_age: None, keep: 2, max_size: None };
        let times = [NOW - 3 * HOUR, NOW - HOUR, NOW - 2 * HOUR, NOW - 400 * DAY];
        assert_eq!(kept(&policy, &times, NOW), vec![NOW - HOUR, NOW - 2 * HOUR]);
    }

    #[test]
    fn staggered_thins_by_age() {
        // Every 10 s in the last two minutes: the newest, then one per 30 s.
        let times: Vec<u64> = (0..12).map(|i| NOW - i * 10 * SECOND).collect();
        let k = kept(&staggered(365 * DAY), &times, NOW);
        // (NOW is a whole multiple of 30 s: the spans start at NOW - 30 s, NOW - 60 s, ...)
        assert_eq!(k, vec![NOW, NOW - 10 * SECOND, NOW - 40 * SECOND, NOW - 70 * SECOND, NOW - 100 * SECOND]);
        // Two versions an hour apart on one day a week ago: the later one of that day stays.
        let day = (NOW - 7 * DAY) / DAY * DAY;
        let k = kept(&staggered(365 * DAY), &[day + 2 * HOUR, day + 3 * HOUR, day - HOUR], NOW);
        assert_eq!(k, vec![day + 3 * HOUR, day - HOUR]);
    }

    /// Staggered over a simulated clock: a version every 5 minutes for 60 days, cleanup every
    /// 10 minutes. At the end, each age band holds about one version per step.
    #[test]
    fn staggered_over_a_simulated_clock() {
        let policy = staggered(45 * DAY);
        let start = NOW;
        let mut store: Vec<u64> = Vec::new();
        let mut now = start;
        while now < start + 60 * DAY {
            store.push(now);
            if (now - start).is_multiple_of(10 * MINUTE) {
                store = kept(&policy, &store, now);
            }
            now += 5 * MINUTE;
        }
        let now = now - 5 * MINUTE;
        store = kept(&policy, &store, now);
        let band = |lo: u64, hi: u64| store.iter().filter(|&&t| now - t >= lo && now - t < hi).count();
        assert!(store.iter().all(|&t| now - t <= 45 * DAY));
        assert!((11..=13).contains(&band(0, HOUR)), "first hour: {}", band(0, HOUR));
        assert!((22..=24).contains(&band(HOUR, DAY)), "first day: {}", band(HOUR, DAY));
        assert!((28..=30).contains(&band(DAY, 30 * DAY)), "first month: {}", band(DAY, 30 * DAY));
        assert!((2..=4).contains(&band(30 * DAY, 46 * DAY)), "after: {}", band(30 * DAY, 46 * DAY));
        assert!(store.len() < 70, "{} kept", store.len());
    }

    /// Runs size-cap passes the way the store does (cut, remove, refine) until nothing changes.
    fn cap(items: &[(u64, u64)], max_size: u64, now: u64) -> (Vec<(u64, u64)>, usize) {
        let mut items = items.to_vec();
        let mut range = (now.saturating_sub(400 * DAY), now + 1);
        let mut remove_before = 0;
        for pass in 1..=20 {
            items.retain(|(t, _)| *t >= remove_before);
            let mut hist = SizeByTime::new(range.0, range.1);
            items.iter().for_each(|&(t, s)| hist.add(t, s));
            match hist.cut(max_size) {
                None => return (items, pass),
                Some(cut) => {
                    remove_before = cut.remove_before;
                    if let Some(r) = cut.refine {
                        range = r;
                    }
                }
            }
        }
        panic!("the size cap did not settle in 20 passes");
    }

    #[test]
    fn a_size_cap_takes_the_oldest_first() {
        let items = [(NOW - 3 * DAY, 100), (NOW - 2 * DAY, 100), (NOW - DAY, 100), (NOW - DAY + 1, 100)];
        let (left, _) = cap(&items, 250, NOW);
        assert_eq!(left, vec![(NOW - DAY, 100), (NOW - DAY + 1, 100)]);
    }

    #[test]
    fn version_names_keep_the_extension_and_read_back() {
        let name = version_name("report.txt", 1_764_442_862_123, Reason::Deleted, "ABCDEFG");
        assert_eq!(name, "report~20251129-190102-123~deleted~ABCDEFG.txt");
        let tag = parse_version_name(&name).unwrap();
        assert_eq!(
            tag,
            Tag { name: "report.txt".into(), time: 1_764_442_862_123, reason: Reason::Deleted, by: "ABCDEFG".into() }
        );
        assert_eq!(parse_version_name(".bashrc~20251129-190102-123~replaced~local").unwrap().name, ".bashrc");
        assert_eq!(parse_version_name("report.txt"), None);
        assert_eq!(parse_version_name("a~b~c~d.txt"), None);
        let long = "x".repeat(250) + ".txt";
        let name = version_name(&long, 0, Reason::Replaced, "ABCDEFG");
        assert_eq!(name.len(), NAME_MAX);
        assert!(parse_version_name(&name).unwrap().name.ends_with("x.txt"));
    }

    #[test]
    fn restore_times_name_the_end_of_what_they_say() {
        let t = 1_764_442_862_123; // 2025-11-29T19:01:02.123Z
        assert_eq!(parse_at("2025-11-29T19:01:02.123Z"), Some(t));
        assert_eq!(parse_at("2025-11-29T20:01:02.123+01:00"), Some(t));
        assert_eq!(parse_at("2025-11-29T19:01:02Z"), Some(t - 123 + 999));
        assert_eq!(parse_at("2025-11-29 19:01:02"), Some(t - 123 + 999));
        assert_eq!(parse_at("20251129-190102-123"), Some(t));
        assert_eq!(parse_at("20251129-190102"), Some(t - 123 + 999));
        assert_eq!(parse_at("2025-11-29"), Some(1_764_460_799_999));
        assert_eq!(parse_at("1764442862123"), Some(t));
        assert_eq!(parse_at("yesterday"), None);
    }

    proptest! {
        #[test]
        fn a_version_name_reads_back(name in "[a-z~. -]{0,6}[a-z]{1,8}(\\.[a-z~]{0,4})?", time in 0u64..4_000_000_000_000, by in "(local|[A-Z2-7]{7})") {
            let reason = [Reason::Deleted, Reason::Replaced, Reason::Reverted][(time % 3) as usize];
            let stored = version_name(&name, time, reason, &by);
            prop_assert!(crate::core::path::validate(&stored).is_ok());
            let tag = parse_version_name(&stored);
            prop_assert_eq!(tag, Some(Tag { name: name.clone(), time, reason, by: by.clone() }));
        }

        #[test]
        fn staggered_is_bounded_idempotent_and_keeps_the_newest(
            ages in proptest::collection::vec(0u64..400 * DAY, 1..300),
            max_days in 31u64..400,
        ) {
            let policy = staggered(max_days * DAY);
            let times: Vec<u64> = ages.iter().map(|a| NOW - a).collect();
            let k = kept(&policy, &times, NOW);
            // Nothing past max_age, and the newest that is not too old survives.
            prop_assert!(k.iter().all(|&t| NOW - t <= max_days * DAY));
            let newest = times.iter().copied().filter(|&t| NOW - t <= max_days * DAY).max();
            prop_assert_eq!(k.first().copied(), newest);
            // One per span of its step, so each band holds at most its width over its step, plus
            // two (the spans at its edges).
            let spans: std::collections::HashSet<(u64, u64)> = k.iter().map(|&t| (staggered_step(NOW - t), t / staggered_step(NOW - t))).collect();
            prop_assert_eq!(spans.len(), k.len());
            let bound = 122 + 26 + 32 + (max_days.saturating_sub(30)) as usize / 7 + 2;
            prop_assert!(k.len() <= bound, "{} kept, bound {}", k.len(), bound);
            // Applying the rule again to what it kept keeps all of it.
            prop_assert_eq!(kept(&policy, &k, NOW), k);
        }

        #[test]
        fn staggered_thinning_over_time_never_drifts(
            steps in proptest::collection::vec((1u64..2 * DAY, any::<bool>()), 1..300),
        ) {
            // Versions arrive at random moments (bursts of seconds to days apart); cleanup runs at
            // some of them.
            let policy = staggered(60 * DAY);
            let mut now = NOW;
            let mut store = Vec::new();
            let mut all = Vec::new();
            for (gap, clean) in steps {
                // A third each: within a second, within minutes, up to two days.
                now += match gap % 3 {
                    0 => 1 + gap % SECOND,
                    1 => 1 + gap % (20 * MINUTE),
                    _ => gap,
                };
                store.push(now);
                all.push(now);
                if clean {
                    store = kept(&policy, &store, now);
                }
            }
            store = kept(&policy, &store, now);
            prop_assert_eq!(store.first().copied(), Some(now));
            prop_assert!(store.len() <= 122 + 26 + 32 + 5 + 2);
            // Every version that ever was, and is not past max_age, has a kept one in the span of
            // its step: what was there at any moment can still be looked at, at that resolution.
            for v in all.into_iter().filter(|&v| now - v <= 60 * DAY) {
                let step = staggered_step(now - v);
                prop_assert!(store.iter().any(|&k| k / step == v / step && k >= v), "{} ms old, step {}", now - v, step);
            }
        }

        #[test]
        fn simple_keeps_exactly_min_of_n_and_count(times in proptest::collection::vec(0u64..10 * DAY, 0..50), keep in 0usize..10) {
            let policy = Policy { kind: Kind::Simple, max_age: None, keep, max_size: None };
            let times: Vec<u64> = times.iter().map(|a| NOW - a).collect();
            let k = kept(&policy, &times, NOW);
            prop_assert_eq!(k.len(), keep.min(times.len()));
            let mut sorted = times.clone();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            prop_assert_eq!(k, sorted[..keep.min(times.len())].to_vec());
        }

        #[test]
        fn a_size_cap_removes_exactly_the_oldest_that_must_go(
            items in proptest::collection::vec((0u64..500 * DAY, 1u64..1_000_000), 1..200),
            max_size in 0u64..50_000_000,
        ) {
            let items: Vec<(u64, u64)> = items.iter().map(|&(a, s)| (NOW - a, s)).collect();
            let (left, passes) = cap(&items, max_size, NOW);
            prop_assert!(passes <= 8, "{} passes", passes);
            let total: u64 = left.iter().map(|(_, s)| s).sum();
            prop_assert!(total <= max_size);
            // What went is older than what stayed, and the newest millisecond that went would not
            // have fit.
            let oldest_left = left.iter().map(|(t, _)| *t).min().unwrap_or(u64::MAX);
            let gone: Vec<_> = items.iter().filter(|i| !left.contains(i)).collect();
            prop_assert!(gone.iter().all(|(t, _)| *t < oldest_left));
            if let Some(newest_gone) = gone.iter().map(|(t, _)| *t).max() {
                let back: u64 = gone.iter().filter(|(t, _)| *t == newest_gone).map(|(_, s)| s).sum();
                prop_assert!(total + back > max_size);
            }
        }
    }
}
