//! The rules of one peer session: what the peer's Hello must be and what it opens (which offered
//! folders we share, in which mode, and from where our index goes to the peer), what the peer may
//! send when, when the link is due a ping or dead, which chunk requests may wait to be served, and
//! how our index is cut into messages the receiver accepts. Deterministic: time, the protocol
//! version and the wire's limits come in as arguments, and what to do comes back; the Peer actor
//! performs it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// A ping goes out this often; a peer silent for `PEER_TIMEOUT` is disconnected.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
pub const PEER_TIMEOUT: Duration = Duration::from_secs(15);
/// How often liveness is looked at: silence is noticed within this of `PEER_TIMEOUT`.
pub const LIVENESS_CHECK: Duration = Duration::from_secs(1);
/// One of our chunk requests gives up after this long without an answer.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests of one peer waiting for its send budget or a reader; past either bound, refused.
pub const MAX_WAITING_REQUESTS: usize = 4096;
pub const MAX_WAITING_BYTES: usize = 8 << 20;
/// Chunk reads running at once for one peer.
pub const READERS_PER_PEER: usize = 4;
/// A device name is for people: the first this many characters are plenty.
pub const MAX_NAME_CHARS: usize = 256;
/// Unshared folders whose refusal is logged at warn per connection; later ones at debug.
const MAX_REFUSED_FOLDERS_LOGGED: usize = 64;

/// Why the session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Closed with this reason (not the peer's fault).
    Close(String),
    /// The peer broke the protocol: counted, cut off, redialed only with backoff.
    Violation(String),
}

/// A folder shared with the peer, as the session sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    pub folder: String,
    /// We take the peer's changes but send none of ours.
    pub receive_only: bool,
}

/// One folder the peer offers in its Hello: how far it has read our index of it, and which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer<'a> {
    pub folder: &'a str,
    pub your_index_id: u64,
    pub your_max_sequence: u64,
}

/// A shared folder the peer offered: its needs are recomputed, and unless it is receive-only for
/// us, our index of it goes to the peer from `send` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub folder: String,
    pub send: Option<Resume>,
}

/// How far the peer says it has read our index of a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub index_id: u64,
    pub max_sequence: u64,
}

impl Resume {
    /// Where our index sender starts: where the peer left off if it read this very index (same
    /// id), else from the beginning.
    pub fn start(&self, our_index_id: u64) -> u64 {
        if self.index_id == our_index_id {
            self.max_sequence
        } else {
            0
        }
    }
}

/// A Hello accepted: the peer's name (cut to `MAX_NAME_CHARS`) and the folders it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub name: String,
    pub opened: Vec<Opened>,
}

/// What becomes of something the peer sent for a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<T> {
    /// Go on with it (with what the check returned).
    Take(T),
    /// The folder is not shared with this peer: refused without cutting the peer; `warn` the
    /// first time for this folder in this session (later ones are logged at debug).
    Unshared { warn: bool },
    /// The peer broke the protocol.
    Violation(String),
}

/// Due on a liveness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Fine,
    Ping,
    /// Silent too long: close with this reason.
    TimedOut(String),
}

/// One connection's session with a peer.
#[derive(Debug)]
pub struct Session {
    protocol_version: u32,
    folders: Vec<Shared>,
    hello: bool,
    last_seen: Instant,
    last_ping: Instant,
    refused_folders: HashSet<String>,
}

impl Session {
    /// A session speaking `protocol_version` over `folders` (only those shared with the peer),
    /// starting at `now`.
    pub fn new(protocol_version: u32, folders: Vec<Shared>, now: Instant) -> Session {
        Session {
            protocol_version,
            folders,
            hello: false,
            last_seen: now,
            last_ping: now,
            refused_folders: HashSet::new(),
        }
    }

    /// The folders shared with the peer, in the order our Hello offers them.
    pub fn folders(&self) -> &[Shared] {
        &self.folders
    }

    pub fn shares(&self, folder: &str) -> bool {
        self.folders.iter().any(|f| f.folder == folder)
    }

    /// The peer's Hello. Another protocol version closes the session; a second Hello, or one
    /// offering a folder twice (each offer would start a sender of our whole index), is a
    /// violation. Offers of folders we do not share with the peer are ignored.
    pub fn hello(&mut self, version: u32, name: &str, offers: &[Offer<'_>]) -> Result<Accepted, End> {
        if version != self.protocol_version {
            return Err(End::Close(format!("protocol version {version} is not {}", self.protocol_version)));
        }
        if self.hello {
            return Err(End::Violation("second Hello".into()));
        }
        let mut offered = HashSet::new();
        if let Some(twice) = offers.iter().find(|o| !offered.insert(o.folder)) {
            return Err(End::Violation(format!("folder `{}` offered twice in Hello", twice.folder)));
        }
        self.hello = true;
        let opened = offers
            .iter()
            .filter_map(|o| {
                let shared = self.folders.iter().find(|f| f.folder == o.folder)?;
                let resume = Resume { index_id: o.your_index_id, max_sequence: o.your_max_sequence };
                Some(Opened { folder: shared.folder.clone(), send: (!shared.receive_only).then_some(resume) })
            })
            .collect();
        Ok(Accepted { name: name.chars().take(MAX_NAME_CHARS).collect(), opened })
    }

    /// An index message for `folder`: only after Hello; then `check` (the receiver's limits,
    /// judged before anything is decoded; its error is a violation); then only for a shared folder.
    pub fn index(&mut self, folder: &str, check: impl FnOnce() -> Result<(), String>) -> Verdict<()> {
        if !self.hello {
            return Verdict::Violation("index before Hello".into());
        }
        if let Err(reason) = check() {
            return Verdict::Violation(reason);
        }
        self.shared(folder, ())
    }

    /// A chunk request for `path` of `folder`: only after Hello; then only for a shared folder;
    /// then `check` (its error is a violation, its value what the request is served with).
    pub fn request<T>(&mut self, folder: &str, path: &str, check: impl FnOnce() -> Result<T, String>) -> Verdict<T> {
        if !self.hello {
            return Verdict::Violation(format!("chunk request for `{path}` before Hello"));
        }
        match self.shared(folder, ()) {
            Verdict::Take(()) => match check() {
                Ok(t) => Verdict::Take(t),
                Err(reason) => Verdict::Violation(reason),
            },
            Verdict::Unshared { warn } => Verdict::Unshared { warn },
            Verdict::Violation(reason) => Verdict::Violation(reason),
        }
    }

    fn shared<T>(&mut self, folder: &str, t: T) -> Verdict<T> {
        if self.shares(folder) {
            return Verdict::Take(t);
        }
        let warn =
            self.refused_folders.len() < MAX_REFUSED_FOLDERS_LOGGED && self.refused_folders.insert(folder.to_string());
        Verdict::Unshared { warn }
    }

    /// Any message from the peer arrived at `now`.
    pub fn seen(&mut self, now: Instant) {
        self.last_seen = self.last_seen.max(now);
    }

    /// Looked at every `LIVENESS_CHECK`: a peer silent for over `PEER_TIMEOUT` is closed, and a
    /// ping goes out every `PING_INTERVAL` (whatever the peer sends: our pings keep its side alive).
    pub fn liveness(&mut self, now: Instant) -> Liveness {
        if now.saturating_duration_since(self.last_seen) > PEER_TIMEOUT {
            return Liveness::TimedOut(format!("no message for {}s", PEER_TIMEOUT.as_secs()));
        }
        if now.saturating_duration_since(self.last_ping) >= PING_INTERVAL {
            self.last_ping = now;
            return Liveness::Ping;
        }
        Liveness::Fine
    }
}

/// The chunk requests of one peer waiting for its send budget and a reader.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    requests: usize,
    bytes: usize,
}

impl Waiting {
    /// Whether a request of `cost` bytes may wait to be served (it then counts as waiting until
    /// `started`); past `MAX_WAITING_REQUESTS` or `MAX_WAITING_BYTES` it is refused as busy.
    pub fn admit(&mut self, cost: usize) -> bool {
        if self.requests >= MAX_WAITING_REQUESTS || self.bytes.saturating_add(cost) > MAX_WAITING_BYTES {
            return false;
        }
        self.requests += 1;
        self.bytes += cost;
        true
    }

    /// An admitted request of `cost` bytes got its budget and reader: it no longer waits.
    pub fn started(&mut self, cost: usize) {
        self.requests = self.requests.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(cost);
    }

    pub fn requests(&self) -> usize {
        self.requests
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Whether a record goes to the peer as the difference from the record at sequence `base`, the
/// peer holding every record we sent up to `sent`: the base must be one it has.
pub fn difference_sendable(base: u64, sent: u64) -> bool {
    base > 0 && base <= sent
}

/// For a difference against a record at another path: whether the peer still holds that base when
/// the record at `sequence` arrives (records go out in sequence order, so the base path, now at
/// `base_path_now`, must not have changed between `base` and `sequence`).
pub fn base_still_held(base: u64, base_path_now: u64, sequence: u64) -> bool {
    base_path_now == base || base_path_now >= sequence
}

/// What one record costs in an index message, as the receiver counts it: chunk entries (edits
/// expanded), version counters, and bytes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub chunks: u64,
    pub counters: u64,
    pub bytes: usize,
}

/// The receiver's limits on one index message, and on one record's chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub records: usize,
    pub chunks: u64,
    pub counters: u64,
    pub bytes: usize,
    pub record_chunks: u64,
}

impl Limits {
    /// A record no message could carry (over a limit alone).
    pub fn too_big(&self, c: &Cost) -> bool {
        c.chunks > self.record_chunks.min(self.chunks) || c.counters > self.counters || c.bytes > self.bytes
    }
}

/// Where the next index message is cut: records `..end`, except those in `skip` (never sendable:
/// the caller logs and drops them), make one message; the records from `end` on wait for the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub end: usize,
    pub skip: Vec<usize>,
}

impl Batch {
    /// How many records the message carries.
    pub fn len(&self) -> usize {
        self.end - self.skip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The longest prefix of `costs` (records in sequence order) that makes one message within
/// `limits`. It carries at least one record unless every record read can never be sent.
pub fn fit_batch(costs: impl IntoIterator<Item = Cost>, limits: &Limits) -> Batch {
    let (mut chunks, mut counters, mut bytes, mut taken) = (0u64, 0u64, 0usize, 0usize);
    let mut batch = Batch { end: 0, skip: Vec::new() };
    for (i, c) in costs.into_iter().enumerate() {
        if limits.too_big(&c) {
            batch.skip.push(i);
            batch.end = i + 1;
            continue;
        }
        if taken > 0
            && (taken >= limits.records
                || chunks + c.chunks > limits.chunks
                || counters + c.counters > limits.counters
                || bytes + c.bytes > limits.bytes)
        {
            break;
        }
        chunks += c.chunks;
        counters += c.counters;
        bytes += c.bytes;
        taken += 1;
        batch.end = i + 1;
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VERSION: u32 = 1;

    fn session(now: Instant) -> Session {
        let folders = vec![
            Shared { folder: "docs".into(), receive_only: false },
            Shared { folder: "inbox".into(), receive_only: true },
        ];
        Session::new(VERSION, folders, now)
    }

    fn offer(folder: &str, your_index_id: u64, your_max_sequence: u64) -> Offer<'_> {
        Offer { folder, your_index_id, your_max_sequence }
    }

    #[test]
    fn a_hello_opens_the_shared_folders_it_offers_and_says_where_our_index_starts() {
        let mut s = session(Instant::now());
        let offers = [offer("docs", 7, 40), offer("other", 1, 1), offer("inbox", 3, 9)];
        let accepted = s.hello(VERSION, &"n".repeat(300), &offers).unwrap();
        assert_eq!(accepted.name.chars().count(), MAX_NAME_CHARS);
        let resume = Resume { index_id: 7, max_sequence: 40 };
        assert_eq!(
            accepted.opened,
            [
                Opened { folder: "docs".into(), send: Some(resume) },
                // Receive-only: its needs are recomputed, but nothing of ours is sent.
                Opened { folder: "inbox".into(), send: None },
            ]
        );
        // Where the peer left off, if it read this very index; from the start otherwise.
        assert_eq!(resume.start(7), 40);
        assert_eq!(resume.start(8), 0);
    }

    #[test]
    fn a_hello_is_refused_for_another_version_a_second_time_or_a_folder_offered_twice() {
        let now = Instant::now();
        let mut s = session(now);
        assert_eq!(s.hello(2, "b", &[]), Err(End::Close("protocol version 2 is not 1".into())));
        let twice = [offer("docs", 0, 0), offer("inbox", 0, 0), offer("docs", 1, 1)];
        assert_eq!(s.hello(VERSION, "b", &twice), Err(End::Violation("folder `docs` offered twice in Hello".into())));
        // Neither counted as the Hello: the first good one is.
        assert!(matches!(s.index("docs", || Ok(())), Verdict::Violation(_)));
        assert!(s.hello(VERSION, "b", &[offer("docs", 0, 0)]).is_ok());
        assert_eq!(s.hello(VERSION, "b", &[]), Err(End::Violation("second Hello".into())));
        // The version is checked first, even on a second Hello.
        assert!(matches!(s.hello(3, "b", &[]), Err(End::Close(_))));
    }

    #[test]
    fn nothing_for_a_folder_comes_before_hello_and_unshared_folders_are_refused_and_logged_once() {
        let mut s = session(Instant::now());
        assert_eq!(s.index("docs", || Ok(())), Verdict::Violation("index before Hello".into()));
        assert_eq!(
            s.request("docs", "a/b", || Ok(1)),
            Verdict::Violation("chunk request for `a/b` before Hello".into())
        );
        s.hello(VERSION, "b", &[]).unwrap();
        assert_eq!(s.index("docs", || Ok(())), Verdict::Take(()));
        assert_eq!(s.request("inbox", "a", || Ok(5)), Verdict::Take(5));
        // An index over the limits is a violation even for a folder not shared: judged first.
        assert_eq!(s.index("secret", || Err("too big".into())), Verdict::Violation("too big".into()));
        assert_eq!(s.index("secret", || Ok(())), Verdict::Unshared { warn: true });
        assert_eq!(s.request("secret", "a", || Ok(())), Verdict::Unshared { warn: false });
        // A request for an unshared folder is refused before its check runs.
        assert_eq!(s.request("other", "..", || Err::<(), _>("bad path".into())), Verdict::Unshared { warn: true });
        assert_eq!(s.request("docs", "..", || Err::<(), _>("bad path".into())), Verdict::Violation("bad path".into()));
        for i in 0..100 {
            let v = s.index(&format!("f{i}"), || Ok(()));
            assert_eq!(v, Verdict::Unshared { warn: i < MAX_REFUSED_FOLDERS_LOGGED - 2 }, "{i}");
        }
    }

    #[test]
    fn a_ping_goes_out_every_interval_and_silence_closes() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let checks: Vec<Liveness> = (1..=5).map(|i| s.liveness(at(i))).collect();
        assert_eq!(checks, [Liveness::Fine, Liveness::Fine, Liveness::Fine, Liveness::Fine, Liveness::Ping]);
        assert_eq!(s.liveness(at(6)), Liveness::Fine);
        s.seen(at(9));
        assert_eq!(s.liveness(at(10)), Liveness::Ping);
        assert_eq!(s.liveness(at(24)), Liveness::Ping);
        assert_eq!(s.liveness(at(25)), Liveness::TimedOut("no message for 15s".into()));
    }

    #[test]
    fn chunk_requests_wait_within_both_bounds_then_are_refused_as_busy() {
        let mut w = Waiting::default();
        assert!(!w.admit(MAX_WAITING_BYTES + 1));
        for _ in 0..MAX_WAITING_REQUESTS {
            assert!(w.admit(1));
        }
        assert!(!w.admit(1));
        w.started(1);
        assert!(w.admit(1));
        let mut w = Waiting::default();
        assert!(w.admit(MAX_WAITING_BYTES - 10));
        assert!(!w.admit(11));
        assert!(w.admit(10));
    }

    #[test]
    fn a_difference_is_sent_only_against_a_base_the_peer_holds() {
        assert!(difference_sendable(5, 5) && difference_sendable(1, 9));
        assert!(!difference_sendable(0, 9) && !difference_sendable(6, 5));
        // The base path unchanged since the base, or changed only after this record.
        assert!(base_still_held(5, 5, 8) && base_still_held(5, 9, 8));
        assert!(!base_still_held(5, 6, 8) && !base_still_held(5, 0, 8));
    }

    const LIMITS: Limits = Limits { records: 4, chunks: 100, counters: 20, bytes: 1000, record_chunks: 80 };

    fn cost(chunks: u64, counters: u64, bytes: usize) -> Cost {
        Cost { chunks, counters, bytes }
    }

    #[test]
    fn a_batch_is_the_longest_prefix_within_the_limits_skipping_what_never_fits() {
        let costs = [cost(60, 1, 10), cost(30, 1, 10), cost(20, 1, 10)];
        assert_eq!(fit_batch(costs, &LIMITS), Batch { end: 2, skip: vec![] });
        let costs = [cost(81, 1, 10), cost(5, 1, 2000), cost(5, 1, 10), cost(5, 1, 995)];
        assert_eq!(fit_batch(costs, &LIMITS), Batch { end: 3, skip: vec![0, 1] });
        assert_eq!(fit_batch([cost(81, 1, 10)], &LIMITS), Batch { end: 1, skip: vec![0] });
        assert_eq!(fit_batch([cost(1, 1, 1); 9], &LIMITS).len(), 4);
        assert!(fit_batch([], &LIMITS).is_empty());
    }

    fn any_cost() -> impl Strategy<Value = Cost> {
        (0u64..120, 0u64..25, 0usize..1200).prop_map(|(chunks, counters, bytes)| Cost { chunks, counters, bytes })
    }

    proptest! {
        #[test]
        fn every_batch_fits_and_takes_something_sendable(costs in proptest::collection::vec(any_cost(), 0..12)) {
            let batch = fit_batch(costs.iter().copied(), &LIMITS);
            prop_assert!(batch.end <= costs.len());
            let sent: Vec<&Cost> = (0..batch.end).filter(|i| !batch.skip.contains(i)).map(|i| &costs[i]).collect();
            prop_assert!(sent.len() <= LIMITS.records);
            prop_assert!(sent.iter().map(|c| c.chunks).sum::<u64>() <= LIMITS.chunks);
            prop_assert!(sent.iter().map(|c| c.counters).sum::<u64>() <= LIMITS.counters);
            prop_assert!(sent.iter().map(|c| c.bytes).sum::<usize>() <= LIMITS.bytes);
            // Skipped exactly the records that never fit, and only before the cut.
            for (i, c) in costs.iter().enumerate().take(batch.end) {
                prop_assert_eq!(batch.skip.contains(&i), LIMITS.too_big(c));
            }
            // Empty only if nothing read could ever be sent; otherwise the cut is where the next
            // record would not have fit.
            if batch.is_empty() {
                prop_assert!(costs.iter().all(|c| LIMITS.too_big(c)));
            }
            if let Some(next) = costs.get(batch.end) {
                prop_assert!(!LIMITS.too_big(next) && !sent.is_empty());
            }
        }

        #[test]
        fn waiting_requests_never_exceed_their_bounds(ops in proptest::collection::vec((any::<bool>(), 0usize..(3 << 20)), 0..200)) {
            let mut w = Waiting::default();
            let mut admitted = Vec::new();
            for (start, cost) in ops {
                if start && !admitted.is_empty() {
                    w.started(admitted.pop().unwrap());
                } else if w.admit(cost) {
                    admitted.push(cost);
                }
                prop_assert!(w.requests() <= MAX_WAITING_REQUESTS && w.bytes() <= MAX_WAITING_BYTES);
                prop_assert_eq!((w.requests(), w.bytes()), (admitted.len(), admitted.iter().sum::<usize>()));
            }
        }

        #[test]
        fn silence_closes_within_a_check_of_the_timeout(gaps in proptest::collection::vec(0u64..20_000, 1..40)) {
            // Messages arrive after `gaps` (ms); the actor looks every LIVENESS_CHECK.
            let t0 = Instant::now();
            let mut s = session(t0);
            let (mut now, mut last_ping, mut seen) = (t0, t0, t0);
            let mut next_message = gaps.iter().scan(t0, |t, g| { *t += Duration::from_millis(*g); Some(*t) }).peekable();
            for _ in 0..120 {
                now += LIVENESS_CHECK;
                while next_message.peek().is_some_and(|t| *t <= now) {
                    seen = next_message.next().unwrap();
                    s.seen(seen);
                }
                match s.liveness(now) {
                    Liveness::TimedOut(_) => {
                        prop_assert!(now - seen > PEER_TIMEOUT && now - seen <= PEER_TIMEOUT + LIVENESS_CHECK);
                        return Ok(());
                    }
                    Liveness::Ping => {
                        prop_assert!(now - last_ping >= PING_INTERVAL && now - last_ping < PING_INTERVAL + LIVENESS_CHECK);
                        last_ping = now;
                    }
                    Liveness::Fine => prop_assert!(now - last_ping < PING_INTERVAL),
                }
                prop_assert!(now - seen <= PEER_TIMEOUT);
            }
        }
    }
}
