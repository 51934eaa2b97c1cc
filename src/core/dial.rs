//! The dial policy: how long to wait before trying a peer again, and which of two connections
//! between the same pair of devices both sides keep. Time spans and randomness come in as
//! arguments, so the Supervisor only measures and dials.

use std::time::Duration;

use super::DeviceId;

/// The first wait after a failure, and the longest.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A connection that lived this long was stable: its end starts the backoff over.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
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
