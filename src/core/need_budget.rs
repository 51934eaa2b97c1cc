//! How much of the pull queue one peer may fill. Every need the Puller takes on is charged to a
//! peer that announced it; a peer has at most `cap` needs outstanding (queued, running, or parked
//! after a failure) and gains new ones at no more than `per_second` (a token bucket, full at
//! `cap`). A need over its peer's budget is not dropped: it is held (in the store) and taken as
//! soon as the budget frees, so an honest peer's large folder still arrives whole, only never more
//! than `cap` of it at once; a peer that floods the node with records nobody can serve fills its
//! own budget and nothing else: another peer's needs are admitted, queued and started beside it.
//!
//! A need several peers announced is charged to the one with the most room, so a peer cannot hold
//! back another's files by announcing them too. Deterministic: times are milliseconds, passed in.

use std::collections::BTreeMap;

/// Most needs one peer may have outstanding in one folder's Puller.
pub const MAX_OUTSTANDING: u32 = 1024;
/// New needs one peer may have admitted per second, beyond the first `MAX_OUTSTANDING`: well above
/// what a node pulls in a second (rsync's ~15,000 small files), so that it bounds a flood without
/// ever being what an honest peer's big folder waits for (at 4,096, a million files took 244 s).
pub const ADMIT_PER_SECOND: u32 = 65_536;
/// The share of the Puller's running pulls one peer may take (in quarters): the rest stays free
/// for the others, so pulls that hang on one peer's silence never hold every slot.
pub const RUNNING_SHARE_QUARTERS: usize = 3;

/// The most pulls charged to one peer that may run while the Puller has room for `slots`.
pub fn running_share(slots: usize) -> usize {
    (slots * RUNNING_SHARE_QUARTERS / 4).max(1)
}

/// One peer's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Account {
    outstanding: u32,
    /// Tokens, in thousandths (a refill of a fraction of a token per millisecond is not lost).
    tokens_milli: u64,
    refilled_ms: u64,
}

/// The per-peer budgets of one Puller.
#[derive(Debug, Clone)]
pub struct NeedBudget<P> {
    cap: u32,
    per_second: u32,
    accounts: BTreeMap<P, Account>,
}

impl<P: Ord + Copy> Default for NeedBudget<P> {
    fn default() -> Self {
        NeedBudget::new(MAX_OUTSTANDING, ADMIT_PER_SECOND)
    }
}

impl<P: Ord + Copy> NeedBudget<P> {
    pub fn new(cap: u32, per_second: u32) -> Self {
        NeedBudget { cap: cap.max(1), per_second, accounts: BTreeMap::new() }
    }

    pub fn cap(&self) -> u32 {
        self.cap
    }

    fn account(&mut self, peer: P, now_ms: u64) -> &mut Account {
        let full = u64::from(self.cap) * 1000;
        let per_second = u64::from(self.per_second);
        let a =
            self.accounts.entry(peer).or_insert(Account { outstanding: 0, tokens_milli: full, refilled_ms: now_ms });
        let elapsed = now_ms.saturating_sub(a.refilled_ms);
        a.tokens_milli = a.tokens_milli.saturating_add(elapsed.saturating_mul(per_second)).min(full);
        a.refilled_ms = a.refilled_ms.max(now_ms);
        a
    }

    /// How many more needs `peer` may have admitted at `now_ms`.
    pub fn room(&mut self, peer: P, now_ms: u64) -> u32 {
        let cap = self.cap;
        let a = self.account(peer, now_ms);
        let tokens = (a.tokens_milli / 1000).min(u64::from(u32::MAX)) as u32;
        cap.saturating_sub(a.outstanding).min(tokens)
    }

    /// Admits one need of `peer` if its budget allows (and charges it).
    pub fn admit(&mut self, peer: P, now_ms: u64) -> bool {
        self.admit_many(peer, 1, now_ms) == 1
    }

    /// Admits up to `n` needs of `peer`; returns how many were admitted (and charged).
    pub fn admit_many(&mut self, peer: P, n: u32, now_ms: u64) -> u32 {
        let granted = self.room(peer, now_ms).min(n);
        let a = self.account(peer, now_ms);
        a.outstanding += granted;
        a.tokens_milli -= u64::from(granted) * 1000;
        granted
    }

    /// Admits a need any of `sources` announced, charged to the one with the most room (the first
    /// of them on a tie); None when none of them has room.
    pub fn admit_any(&mut self, sources: &[P], now_ms: u64) -> Option<P> {
        let mut best: Option<(u32, P)> = None;
        for &p in sources {
            let room = self.room(p, now_ms);
            if room > 0 && best.is_none_or(|(r, _)| room > r) {
                best = Some((room, p));
            }
        }
        let (_, peer) = best?;
        self.admit(peer, now_ms).then_some(peer)
    }

    /// A need charged to `peer` is over (done, dropped, or no longer needed).
    pub fn release(&mut self, peer: P) {
        if let Some(a) = self.accounts.get_mut(&peer) {
            a.outstanding = a.outstanding.saturating_sub(1);
        }
    }

    /// Needs charged to `peer` now.
    pub fn outstanding(&self, peer: P) -> u32 {
        self.accounts.get(&peer).map_or(0, |a| a.outstanding)
    }

    /// The peers with an account.
    pub fn peers(&self) -> impl Iterator<Item = P> + '_ {
        self.accounts.keys().copied()
    }

    /// Forgets every charge (the need queue was replaced whole); token buckets are kept, so a
    /// peer cannot refill its budget by making the node recompute its needs.
    pub fn reset_outstanding(&mut self) {
        for a in self.accounts.values_mut() {
            a.outstanding = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_peer_gets_at_most_its_cap_and_more_only_as_needs_finish() {
        let mut b: NeedBudget<u8> = NeedBudget::new(3, 1000);
        assert_eq!((0..5).filter(|_| b.admit(1, 0)).count(), 3);
        assert!(!b.admit(1, 10_000), "time alone does not raise the cap");
        b.release(1);
        assert!(b.admit(1, 10_000));
        assert!(!b.admit(1, 10_000));
        assert_eq!(b.outstanding(1), 3);
        // Another peer has its own budget.
        assert_eq!(b.admit_many(2, 10, 10_000), 3);
    }

    #[test]
    fn admissions_beyond_the_first_cap_come_at_the_rate() {
        let mut b: NeedBudget<u8> = NeedBudget::new(100, 10);
        assert_eq!(b.admit_many(1, 100, 0), 100);
        for _ in 0..100 {
            b.release(1);
        }
        assert_eq!(b.room(1, 0), 0, "the bucket is empty");
        assert_eq!(b.room(1, 500), 5);
        assert_eq!(b.admit_many(1, 100, 1_000), 10);
        assert_eq!(b.room(1, 60_000), 90, "refilled to the cap, less what is outstanding");
    }

    #[test]
    fn a_need_two_peers_announced_is_charged_to_the_one_with_room() {
        let mut b: NeedBudget<u8> = NeedBudget::new(2, 1000);
        assert_eq!(b.admit_many(9, 2, 0), 2);
        // The flooding peer 9 announced it too: it still goes, charged to peer 1.
        assert_eq!(b.admit_any(&[9, 1], 0), Some(1));
        assert_eq!(b.admit_any(&[9, 1], 0), Some(1));
        assert_eq!(b.admit_any(&[9, 1], 0), None);
        assert_eq!((b.outstanding(1), b.outstanding(9)), (2, 2));
    }

    #[test]
    fn a_recompute_clears_charges_but_not_the_rate() {
        let mut b: NeedBudget<u8> = NeedBudget::new(10, 1);
        assert_eq!(b.admit_many(1, 10, 0), 10);
        b.reset_outstanding();
        assert_eq!(b.outstanding(1), 0);
        assert_eq!(b.room(1, 1_000), 1, "one token per second came back, not the whole cap");
    }

    #[test]
    fn running_share_leaves_room_for_others() {
        assert_eq!(running_share(64), 48);
        assert_eq!(running_share(8), 6);
        assert_eq!(running_share(1), 1);
    }

    proptest! {
        /// Whatever the order of admissions, releases and times: a peer never has more than the
        /// cap outstanding, and never more admitted in total than the cap plus the rate times the
        /// time elapsed.
        #[test]
        fn outstanding_and_rate_stay_bounded(
            cap in 1u32..50,
            per_second in 0u32..200,
            steps in proptest::collection::vec((0u8..3, 0u8..4, 0u64..300, 1u32..20), 1..200),
        ) {
            let mut b: NeedBudget<u8> = NeedBudget::new(cap, per_second);
            let mut now = 0u64;
            let mut admitted = [0u64; 3];
            let mut outstanding = [0u32; 3];
            for (peer, op, dt, n) in steps {
                now += dt;
                let p = peer as usize;
                match op {
                    0 => {
                        let got = b.admit_many(peer, n, now);
                        prop_assert!(got <= n);
                        admitted[p] += u64::from(got);
                        outstanding[p] += got;
                    }
                    1 if outstanding[p] > 0 => {
                        b.release(peer);
                        outstanding[p] -= 1;
                    }
                    2 => {
                        if let Some(q) = b.admit_any(&[peer, (peer + 1) % 3], now) {
                            admitted[q as usize] += 1;
                            outstanding[q as usize] += 1;
                        }
                    }
                    _ => {}
                }
                for q in 0..3u8 {
                    prop_assert_eq!(b.outstanding(q), outstanding[q as usize]);
                    prop_assert!(outstanding[q as usize] <= cap);
                    let bound = u64::from(cap) + now * u64::from(per_second) / 1000;
                    prop_assert!(admitted[q as usize] <= bound, "{} admitted, bound {}", admitted[q as usize], bound);
                }
            }
        }
    }
}
