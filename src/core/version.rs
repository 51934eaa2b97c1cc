//! Version vectors: one counter per device that ever changed a file. Comparing two vectors tells
//! whether one version descends from the other or whether they were written concurrently (a conflict).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::device::ShortId;

/// How two versions relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    Equal,
    /// The left side has seen everything the right side has, and more.
    Greater,
    /// The right side has seen everything the left side has, and more.
    Lesser,
    /// Each side has changes the other has not seen.
    Concurrent,
}

/// The largest counter a peer may send (checked at the wire). Counters are milliseconds since the
/// epoch, about 2^41 today, so no honest device comes near it; and it leaves 2^62 increments before
/// a counter could wrap. A counter at `u64::MAX` would otherwise saturate: the next honest edit would
/// carry an equal version, be taken for one already seen, and the path would be frozen for good.
pub const MAX_COUNTER: u64 = 1 << 62;
/// The most devices one version vector from a peer may name (checked at the wire).
pub const MAX_COUNTERS: usize = 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector {
    counters: BTreeMap<ShortId, u64>,
}

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_counters(counters: impl IntoIterator<Item = (ShortId, u64)>) -> Self {
        Self { counters: counters.into_iter().filter(|(_, v)| *v > 0).collect() }
    }

    pub fn counters(&self) -> impl Iterator<Item = (ShortId, u64)> + '_ {
        self.counters.iter().map(|(k, v)| (*k, *v))
    }

    pub fn get(&self, id: ShortId) -> u64 {
        self.counters.get(&id).copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// Whether every counter leaves room to grow: what the wire accepts from a peer.
    pub fn within_bounds(&self) -> bool {
        self.counters.len() <= MAX_COUNTERS && self.counters.values().all(|v| *v <= MAX_COUNTER)
    }

    /// The version after `id` changed the file at `now` (a value from the device's own clock that
    /// it never issues twice: milliseconds since the epoch, bumped past the last one issued). The
    /// counter jumps to at least `now`, so a device whose index was lost still produces versions
    /// newer than the ones it made before; and since `now` is unique per device, two different
    /// versions made by one device never share a counter (which would make one wrongly dominate).
    pub fn updated(&self, id: ShortId, now: u64) -> Self {
        let mut next = self.clone();
        let value = self.get(id).saturating_add(1).max(now);
        next.counters.insert(id, value);
        next
    }

    /// The least version that has seen both.
    pub fn merged(&self, other: &Self) -> Self {
        let mut next = self.clone();
        for (id, value) in other.counters() {
            let slot = next.counters.entry(id).or_insert(0);
            *slot = (*slot).max(value);
        }
        next
    }

    pub fn compare(&self, other: &Self) -> Ordering {
        let mut greater = false;
        let mut lesser = false;
        for id in self.counters.keys().chain(other.counters.keys()) {
            let (a, b) = (self.get(*id), other.get(*id));
            greater |= a > b;
            lesser |= a < b;
        }
        match (greater, lesser) {
            (false, false) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Lesser,
            (true, true) => Ordering::Concurrent,
        }
    }

    /// True when this version has seen everything `other` has (equal or greater).
    pub fn dominates(&self, other: &Self) -> bool {
        matches!(self.compare(other), Ordering::Equal | Ordering::Greater)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        VersionVector::from_counters(pairs.iter().map(|(k, v)| (ShortId(*k), *v)))
    }

    #[test]
    fn an_update_descends_from_its_base() {
        let base = vv(&[(1, 3), (2, 5)]);
        let next = base.updated(ShortId(2), 0);
        assert_eq!(next.compare(&base), Ordering::Greater);
        assert_eq!(base.compare(&next), Ordering::Lesser);
        assert_eq!(next.get(ShortId(2)), 6);
    }

    #[test]
    fn updates_on_two_devices_from_one_base_are_concurrent() {
        let base = vv(&[(1, 1)]);
        let a = base.updated(ShortId(1), 0);
        let b = base.updated(ShortId(2), 0);
        assert_eq!(a.compare(&b), Ordering::Concurrent);
        let m = a.merged(&b);
        assert_eq!(m.compare(&a), Ordering::Greater);
        assert_eq!(m.compare(&b), Ordering::Greater);
    }

    #[test]
    fn the_counter_jumps_to_the_clock() {
        let next = vv(&[(1, 3)]).updated(ShortId(1), 1_700_000_000);
        assert_eq!(next.get(ShortId(1)), 1_700_000_000);
    }

    #[test]
    fn counters_near_overflow_are_out_of_bounds_and_bounded_ones_keep_growing() {
        assert!(!vv(&[(1, u64::MAX)]).within_bounds());
        assert!(!vv(&[(1, MAX_COUNTER + 1)]).within_bounds());
        let top = vv(&[(1, MAX_COUNTER), (2, 5)]);
        assert!(top.within_bounds());
        // Any vector the wire lets in still gets strictly newer versions from every device.
        for id in [1, 2, 3] {
            assert_eq!(top.updated(ShortId(id), 0).compare(&top), Ordering::Greater);
        }
        let wide = VersionVector::from_counters((0..=MAX_COUNTERS as u64).map(|i| (ShortId(i), 1)));
        assert!(!wide.within_bounds());
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0u64..4, 0u64..4), 0..5).prop_map(|p| vv(&p))
    }

    proptest! {
        #[test]
        fn compare_is_antisymmetric(a in arb_vv(), b in arb_vv()) {
            let expected = match a.compare(&b) {
                Ordering::Equal => Ordering::Equal,
                Ordering::Greater => Ordering::Lesser,
                Ordering::Lesser => Ordering::Greater,
                Ordering::Concurrent => Ordering::Concurrent,
            };
            prop_assert_eq!(b.compare(&a), expected);
            prop_assert_eq!(a.compare(&b) == Ordering::Equal, a == b);
        }

        #[test]
        fn merge_is_the_least_upper_bound(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            let m = a.merged(&b);
            prop_assert!(m.dominates(&a) && m.dominates(&b));
            prop_assert_eq!(m.clone(), b.merged(&a));
            if c.dominates(&a) && c.dominates(&b) {
                prop_assert!(c.dominates(&m));
            }
        }

        #[test]
        fn dominance_is_transitive(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            if a.dominates(&b) && b.dominates(&c) {
                prop_assert!(a.dominates(&c));
            }
        }
    }
}
