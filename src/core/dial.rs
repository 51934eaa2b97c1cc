//! The dial policy: how long to wait before trying a peer again (with jitter), which peers and
//! addresses are due to dial now, when a peer that broke the protocol is let back in, and which of
//! two connections between the same pair of devices both sides keep. Time and randomness come in
//! as arguments, so the Supervisor only measures and dials.

use std::time::{Duration, Instant};

use super::DeviceId;

/// The first wait after a failure, and the longest.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A connection that lived this long was stable: its end starts the backoff over.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long one stream of an inbound connection waits for its other stream.
pub const HALF_OPEN_FOR: Duration = Duration::from_secs(30);
/// Up to this much is added to each wait, so that peers that failed together do not retry in step.
pub const JITTER_MAX: Duration = Duration::from_millis(250);

/// The growing wait between attempts to reach one peer (or address).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    delay: Duration,
}

impl Backoff {
    /// A dial failed, or the peer was refused: the wait doubles, from `BACKOFF_MIN` up to
    /// `BACKOFF_MAX`. Returns how long to wait, with `random` (any number) spread into jitter.
    pub fn failed(&mut self, random: u64) -> Duration {
        self.delay = (self.delay * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
        self.delay + jitter(random)
    }

    /// A connection ended after living `lived`. A stable one starts the backoff over, unless the
    /// peer broke the protocol: then the wait keeps growing however long the connection lived.
    pub fn ended(&mut self, lived: Duration, violation: bool, random: u64) -> Duration {
        if lived > STABLE_AFTER && !violation {
            self.delay = Duration::ZERO;
        }
        self.failed(random)
    }

    /// The wait without jitter (for logs).
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

fn jitter(random: u64) -> Duration {
    Duration::from_millis(random % JITTER_MAX.as_millis() as u64)
}

/// The dial schedule of one peer (or one address known without a device ID): its backoff, when
/// it may be dialed next, whether a dial is under way, and until when its own connections are
/// refused because it broke the protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schedule {
    backoff: Backoff,
    next_attempt: Option<Instant>,
    dialing: bool,
    cut_off_until: Option<Instant>,
}

impl Schedule {
    /// Whether its own schedule lets it be dialed at `now`: no dial under way, and its wait over.
    pub fn due(&self, now: Instant) -> bool {
        !self.dialing && self.next_attempt.is_none_or(|t| t <= now)
    }

    /// Somewhere new to dial it became known: no need to wait.
    pub fn dial_now(&mut self) {
        self.next_attempt = None;
    }

    /// A dial ended (whatever its result).
    pub fn dialed(&mut self) {
        self.dialing = false;
    }

    /// A dial failed at `now`: the next waits for the backoff (returned, for logs).
    pub fn failed(&mut self, now: Instant, random: u64) -> Duration {
        self.dialing = false;
        let wait = self.backoff.failed(random);
        self.next_attempt = Some(now + wait);
        wait
    }

    /// A connection that lived `lived` ended at `now`. One the peer ended by breaking the protocol
    /// cuts it off until the next attempt.
    pub fn ended(&mut self, now: Instant, lived: Duration, violation: bool, random: u64) {
        self.next_attempt = Some(now + self.backoff.ended(lived, violation, random));
        if violation {
            self.cut_off_until = self.next_attempt;
        }
    }

    /// The peer's own connection was refused at `now` (it broke the protocol before a session
    /// began): it is cut off for a backoff, and not dialed before that ends either.
    pub fn refused(&mut self, now: Instant, random: u64) {
        let until = now + self.backoff.failed(random);
        self.cut_off_until = Some(until);
        self.next_attempt = Some(self.next_attempt.map_or(until, |t| t.max(until)));
    }

    /// Whether the peer's own connections are refused at `now`.
    pub fn cut_off(&self, now: Instant) -> bool {
        self.cut_off_until.is_some_and(|t| t > now)
    }

    /// Takes the backoff and the next attempt of `other` (an address redialed on the schedule of
    /// the device found there).
    pub fn follow(&mut self, other: &Schedule) {
        (self.backoff, self.next_attempt) = (other.backoff, other.next_attempt);
    }
}

/// Of `slots` (each with whether anything besides its schedule keeps it from being dialed), the
/// ones due at `now`; each is marked as being dialed, so the next call leaves it out until
/// `dialed` or `failed`.
pub fn start_due<'a, K>(slots: impl IntoIterator<Item = (K, &'a mut Schedule, bool)>, now: Instant) -> Vec<K> {
    slots
        .into_iter()
        .filter(|(_, s, blocked)| !blocked && s.due(now))
        .map(|(k, s, _)| {
            s.dialing = true;
            k
        })
        .collect()
}

/// Addresses a discovery heard for a known peer: the new ones join its list (in the order heard,
/// none twice) and, if there was any, the peer is due at once whatever its backoff (somewhere new
/// may answer where the old addresses did not). Returns whether anything was new.
pub fn learn_addresses(
    known: &mut Vec<String>,
    schedule: &mut Schedule,
    heard: impl IntoIterator<Item = String>,
) -> bool {
    let before = known.len();
    for address in heard {
        if !known.contains(&address) {
            known.push(address);
        }
    }
    let new = known.len() > before;
    if new {
        schedule.dial_now();
    }
    new
}

/// A peer known by its device ID is not dialed while connected, nor without an address to dial.
pub fn peer_blocked(connected: bool, addresses: usize) -> bool {
    connected || addresses == 0
}

/// An address known without a device ID is not dialed while the device last found there is
/// connected (by this or any other way), nor ever again once it turned out to be this node's own.
pub fn address_blocked(found: Option<DeviceId>, me: DeviceId, connected: impl Fn(&DeviceId) -> bool) -> bool {
    found.is_some_and(|d| d == me || connected(&d))
}

/// When two devices dial each other at once, both keep the connection dialed by the smaller
/// device ID: a rule each side applies alone, with the same result.
pub fn preferred_dialer(me: DeviceId, peer: DeviceId) -> DeviceId {
    me.min(peer)
}

/// Whether a new connection with `peer`, dialed by `new_dialer`, takes the place of the active
/// one dialed by `active_dialer` (`active_alive`: it has not ended yet). Only a live connection
/// in the preferred direction is kept against one in the other direction.
pub fn replaces(
    me: DeviceId,
    peer: DeviceId,
    active_dialer: DeviceId,
    active_alive: bool,
    new_dialer: DeviceId,
) -> bool {
    let preferred = preferred_dialer(me, peer);
    !(active_alive && active_dialer == preferred && new_dialer != preferred)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_wait_doubles_up_to_a_minute_and_a_stable_connection_starts_it_over() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..10).map(|_| b.failed(0).as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]);
        assert_eq!(b.ended(Duration::from_secs(31), false, 0), BACKOFF_MIN);
        // A short-lived connection, or one ended by a protocol violation, keeps it growing.
        assert_eq!(b.ended(Duration::from_secs(1), false, 0), Duration::from_secs(1));
        assert_eq!(b.ended(Duration::from_secs(3600), true, 0), Duration::from_secs(2));
    }

    #[test]
    fn a_new_address_is_added_once_and_dialed_at_once() {
        let t0 = Instant::now();
        let mut schedule = Schedule::default();
        schedule.failed(t0, 0);
        schedule.failed(t0, 0);
        let mut known = vec!["10.0.0.1:22000".to_string()];
        // Nothing new: the backoff stands.
        assert!(!learn_addresses(&mut known, &mut schedule, ["10.0.0.1:22000".to_string()]));
        assert!(!schedule.due(t0));
        let heard = ["10.0.0.2:22000", "10.0.0.1:22000", "10.0.0.2:22000"].map(String::from);
        assert!(learn_addresses(&mut known, &mut schedule, heard));
        assert_eq!(known, ["10.0.0.1:22000", "10.0.0.2:22000"]);
        assert!(schedule.due(t0));
    }

    #[test]
    fn due_slots_are_those_whose_wait_is_over_not_blocked_and_not_being_dialed() {
        let t0 = Instant::now();
        let mut failed = Schedule::default();
        assert_eq!(failed.failed(t0, 0), BACKOFF_MIN);
        let mut busy = Schedule::default();
        assert_eq!(start_due([("busy", &mut busy, false)], t0), ["busy"]);
        let due = |now| {
            let mut slots = [Schedule::default(), failed, busy, Schedule::default()];
            let [a, b, c, d] = &mut slots;
            start_due([("fresh", a, false), ("failed", b, false), ("busy", c, false), ("connected", d, true)], now)
        };
        assert_eq!(due(t0), ["fresh"]);
        assert_eq!(due(t0 + BACKOFF_MIN), ["fresh", "failed"]);
        // Being dialed: left out until the dial ends, then due again.
        busy.dialed();
        assert_eq!(start_due([("busy", &mut busy, false)], t0), ["busy"]);
        // Somewhere new to dial: at once, whatever the wait.
        failed.dial_now();
        assert!(failed.due(t0));
        assert!(peer_blocked(true, 2) && peer_blocked(false, 0) && !peer_blocked(false, 1));
        let (me, other) = (DeviceId([1; 32]), DeviceId([2; 32]));
        assert!(!address_blocked(None, me, |_| true));
        assert!(address_blocked(Some(me), me, |_| false));
        assert!(address_blocked(Some(other), me, |d| *d == other));
        assert!(!address_blocked(Some(other), me, |_| false));
    }

    #[test]
    fn a_violation_cuts_the_peer_off_until_its_next_attempt() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.ended(t0, Duration::from_secs(3600), true, 0);
        assert!(s.cut_off(t0) && !s.due(t0));
        assert!(!s.cut_off(t0 + BACKOFF_MIN) && s.due(t0 + BACKOFF_MIN));
        // A clean end of a stable connection cuts nothing off, and the wait starts over.
        let mut s = Schedule::default();
        s.failed(t0, 0);
        s.failed(t0, 0);
        s.ended(t0, Duration::from_secs(31), false, 0);
        assert!(!s.cut_off(t0) && s.due(t0 + BACKOFF_MIN));
        // A refused inbound connection: cut off, and not dialed before the cut-off ends.
        let mut s = Schedule::default();
        s.refused(t0, 0);
        assert!(s.cut_off(t0) && !s.due(t0));
        let mut address = Schedule::default();
        address.follow(&s);
        assert!(!address.due(t0) && address.due(t0 + BACKOFF_MIN) && !address.cut_off(t0));
    }

    proptest! {
        #[test]
        fn jitter_stays_below_its_bound(random in any::<u64>(), failures in 1usize..20) {
            let mut b = Backoff::default();
            let mut wait = Duration::ZERO;
            for _ in 0..failures {
                wait = b.failed(random);
            }
            prop_assert!(wait >= b.delay() && wait < b.delay() + JITTER_MAX);
            prop_assert!(b.delay() >= BACKOFF_MIN && b.delay() <= BACKOFF_MAX);
        }

        /// Ticks, dial results and blocks in any order: a slot is started exactly when it is not
        /// blocked, no dial of it is under way and its wait is over; never twice at once.
        #[test]
        fn a_slot_is_dialed_when_due_and_never_twice_at_once(
            steps in proptest::collection::vec((0u64..3000, 0usize..3, 0u8..4, any::<u64>()), 1..60)
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut slots = [Schedule::default(); 3];
            let mut in_flight = [false; 3];
            let mut blocked = [false; 3];
            for (ms, i, op, random) in steps {
                now += Duration::from_millis(ms);
                match op {
                    0 if in_flight[i] => { slots[i].dialed(); in_flight[i] = false; }
                    1 if in_flight[i] => { slots[i].failed(now, random); in_flight[i] = false; }
                    2 => blocked[i] = !blocked[i],
                    _ => {}
                }
                let expected: Vec<usize> = (0..3).filter(|&k| !blocked[k] && !in_flight[k] && slots[k].due(now)).collect();
                let [a, b, c] = &mut slots;
                let started = start_due([(0, a, blocked[0]), (1, b, blocked[1]), (2, c, blocked[2])], now);
                prop_assert_eq!(&started, &expected);
                for k in started {
                    prop_assert!(slots[k].next_attempt.is_none_or(|t| t <= now));
                    in_flight[k] = true;
                }
            }
        }

        #[test]
        fn both_sides_keep_the_same_connection(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            let (a, b) = (DeviceId(a), DeviceId(b));
            prop_assume!(a != b);
            // Each side holds the connection the other dialed, and then sees its own arrive
            // (or the reverse): both end with the one dialed by the smaller ID.
            for (first, second) in [(a, b), (b, a)] {
                let keep_on_a = if replaces(a, b, first, true, second) { second } else { first };
                let keep_on_b = if replaces(b, a, first, true, second) { second } else { first };
                prop_assert_eq!(keep_on_a, keep_on_b);
                prop_assert_eq!(keep_on_a, a.min(b));
            }
            // A connection that ended is always replaced.
            prop_assert!(replaces(a, b, a.min(b), false, a.max(b)));
        }
    }
}
