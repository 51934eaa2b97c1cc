//! The Puller state's bookkeeping: admission against each peer's need budget, the held needs, the
//! in-memory window over the stored queue, parking and retries, and the pump that starts what may
//! start. `PullState`'s public steps (in `core::pull`) are made of these.

use super::*;

impl PullState {
    /// Whether `item` may join the queue now: a path already charged (a newer need of it, or a
    /// retry) keeps its charge; a need nobody announced is free; any other is charged to the
    /// announcing peer with the most room, if one has room.
    pub(super) fn admit(&mut self, item: &Need, now: u64) -> bool {
        let path = &item.remote.path;
        if self.charged.contains_key(path) || item.sources.is_empty() {
            return true;
        }
        match self.budget.admit_any(&item.sources, now) {
            Some(device) => {
                self.charge(path, Some(device));
                true
            }
            None => false,
        }
    }

    /// A need is over: its peer's budget has room for one more.
    pub(super) fn release(&mut self, path: &str) {
        if let Some(device) = self.charge(path, None) {
            self.budget.release(device);
        }
    }

    /// Charges `path` to `to` (or to nobody), keeping the window's counts; returns the old charge.
    pub(super) fn charge(&mut self, path: &str, to: Option<DeviceId>) -> Option<DeviceId> {
        let windowed = self.queue.contains(path);
        if windowed {
            self.count_window(path, false);
        }
        let old = match to {
            Some(device) => self.charged.insert(path.to_string(), device),
            None => self.charged.remove(path),
        };
        if windowed {
            self.count_window(path, true);
        }
        old
    }

    /// Counts `path` (in the window) in or out of its peer's part of the window.
    pub(super) fn count_window(&mut self, path: &str, add: bool) {
        let n = match self.charged.get(path) {
            Some(device) => self.window_charged.entry(*device).or_default(),
            None => &mut self.window_free,
        };
        if add {
            *n += 1;
        } else {
            *n -= 1;
        }
        if let Some(device) = self.charged.get(path) {
            if self.window_charged.get(device) == Some(&0) {
                self.window_charged.remove(device);
            }
        }
    }

    /// Holds needs over their peers' budgets in the store, each under its first announcer. An
    /// older need of the same path still queued (one charged to nobody) is dropped: the path
    /// waits in one place, and what it would pull is out of date. Left queued, it was pulled and
    /// its newer need stayed held, counted as needed, until a tick took it (the property test).
    pub(super) fn hold(&mut self, items: Vec<Need>, store: &mut impl NeedStore, fx: &mut Vec<Effect>) {
        if items.is_empty() {
            return;
        }
        let mut by_peer: BTreeMap<DeviceId, Vec<(NeedKey, u64)>> = BTreeMap::new();
        for i in &items {
            self.window_remove(&i.remote.path);
            by_peer.entry(i.sources[0]).or_default().push((key_of(i), bytes_of(i)));
        }
        store.unqueue(&items.iter().map(|i| i.remote.path.as_str()).collect::<Vec<_>>());
        for (device, rows) in by_peer {
            if store.hold(device, &rows) && self.held.insert(device) {
                fx.push(Effect::Holding { peer: device });
            }
        }
    }

    /// Takes held needs of peers whose budget has room again, in batches: they are charged now
    /// and handed to the Index to be decided again (the disk and the peers may have changed).
    pub(super) fn take_held(&mut self, now: u64, store: &mut impl NeedStore, fx: &mut Vec<Effect>) {
        for device in self.held.clone() {
            let waiting = store.held(device).records;
            if waiting == 0 {
                self.held.remove(&device);
                continue;
            }
            let room = self.budget.room(device, now);
            if room == 0 || u64::from(room) < waiting.min(self.limits.held_batch_min) {
                continue;
            }
            let Some(paths) = store.held_first(device, room.min(self.limits.held_batch_max) as usize) else {
                continue;
            };
            let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
            if !store.unhold(device, &refs) {
                continue;
            }
            let took = refs.len() as u64;
            let mut taken = Vec::new();
            for path in paths {
                // The held need is newer than what runs or waits for this path: a running pull is
                // decided again once it is done, a waiting one now (its new need replaces the
                // queued one). Dropped, it was lost until the next recompute (the property test).
                if let Some(running) = self.in_flight.get_mut(&path) {
                    running.superseded = true;
                    continue;
                }
                if self.charged.contains_key(&path) {
                    taken.push(path);
                    continue;
                }
                if self.budget.admit(device, now) {
                    self.charge(&path, Some(device));
                    taken.push(path);
                }
            }
            if !taken.is_empty() {
                fx.push(Effect::Recompute { paths: taken, why: Why::Held { peer: device, left: waiting - took } });
            }
        }
    }

    /// Puts a need into the window (the store already holds it).
    pub(super) fn window_insert(&mut self, item: Need) {
        let (phase, bytes) = (phase_of(&item), bytes_of(&item));
        let also_writes = targets(&item).nth(1).map(str::to_string);
        let path = item.remote.path.clone();
        self.window_remove(&path);
        self.queue.insert(path.clone(), Entry { phase, bytes, also_writes, item });
        self.count_window(&path, true);
    }

    /// Takes a need out of the window.
    pub(super) fn window_remove(&mut self, path: &str) -> Option<Need> {
        let entry = self.queue.remove(path)?;
        self.count_window(path, false);
        Some(entry.item)
    }

    pub(super) fn window_clear(&mut self) {
        self.queue.clear();
        self.window_charged.clear();
        self.window_free = 0;
    }

    /// Whether any need in the window belongs to no peer or to a peer under its `share` of the
    /// running pulls. O(peers).
    pub(super) fn window_may_start(&self, share: usize) -> bool {
        self.window_free > 0 || self.window_charged.keys().any(|d| self.running.get(d).copied().unwrap_or(0) < share)
    }

    pub(super) fn note_window(&mut self) {
        self.window_peak = self.window_peak.max(self.queue.len());
    }

    /// Queues needs: all go to the store, and those that sort into the window (the first
    /// `limits.window` needs in pull order) into memory as well.
    pub(super) fn queue_needs(&mut self, items: Vec<Need>, store: &mut impl NeedStore) {
        if items.is_empty() {
            return;
        }
        let was_whole = store.queued().records as usize == self.queue.len();
        let keyed: Vec<(NeedKey, Need)> = items.into_iter().map(|i| (key_of(&i), i)).collect();
        let rows: Vec<(NeedKey, u64, &Need)> = keyed.iter().map(|(k, i)| (k.clone(), bytes_of(i), i)).collect();
        if !store.queue(&rows) {
            return;
        }
        let mut whole = was_whole;
        for (key, item) in keyed {
            self.window_remove(&key.path);
            // Into the window only if it sorts before a need the window holds: the stored needs
            // past the window all sort after its last one. A window emptied by moves (a queued
            // file that became a delete) says nothing of where the stored ones are, so an empty
            // window that is not the whole queue takes nothing here: `refill` loads its head.
            let before_last = self.queue.last().is_some_and(|(o, p)| (key.order, key.path.as_str()) < (o, p));
            if whole || before_last {
                self.window_insert(item);
                if self.queue.len() > self.limits.window {
                    // The last one stays in the store only.
                    let (_, last) = self.queue.last().expect("not empty");
                    let last = last.to_string();
                    self.window_remove(&last);
                    whole = false;
                }
            }
        }
        self.note_window();
    }

    /// Tops the window up from the store when it runs low.
    pub(super) fn refill(&mut self, store: &mut impl NeedStore) {
        let queued = store.queued().records as usize;
        if self.queue.len() >= self.limits.window / 2 || queued <= self.queue.len() {
            return;
        }
        let after = self.queue.last().map(|(order, path)| NeedKey { order, path: path.to_string() });
        for item in store.queued_after(after.as_ref(), self.limits.window - self.queue.len()) {
            self.window_insert(item);
        }
        self.note_window();
    }

    pub(super) fn park(&mut self, path: String, item: Need) {
        self.parked_bytes += item.remote.size;
        if let Some(old) = self.parked.insert(path, item) {
            self.parked_bytes -= old.remote.size;
        }
    }

    pub(super) fn unpark(&mut self, path: &str) -> Option<Need> {
        let item = self.parked.remove(path)?;
        self.parked_bytes -= item.remote.size;
        Some(item)
    }

    /// The window's counts as they should be, and whether the pump left a need it could start.
    #[cfg(test)]
    pub(super) fn window_audit(&self) -> (BTreeMap<DeviceId, usize>, usize, bool) {
        let (mut charged, mut free) = (BTreeMap::new(), 0);
        for p in self.queue.paths() {
            match self.charged.get(p) {
                Some(d) => *charged.entry(*d).or_default() += 1,
                None => free += 1,
            }
        }
        let slots =
            if self.in_flight_bytes < self.limits.small_bytes { self.limits.small_files } else { self.limits.files };
        let share = running_share(slots);
        let allowed = |p: &str| self.charged.get(p).is_none_or(|d| self.running.get(d).copied().unwrap_or(0) < share);
        let left = self.room() && self.queue.next_where(&self.targets, self.creating > 0, allowed).is_some();
        (charged, free, left)
    }

    /// Whether another pull may start: a few of any size, more while they are small.
    pub(super) fn room(&self) -> bool {
        let n = self.in_flight.len();
        n < self.limits.files || (n < self.limits.small_files && self.in_flight_bytes < self.limits.small_bytes)
    }

    /// Parks a need until its retry is due; or returns it, to be queued now.
    pub(super) fn park_or_pass(&mut self, item: Need, now: u64) -> Option<Need> {
        let path = item.remote.path.clone();
        let waiting = self.failures.get(&path).is_some_and(|f| now < f.next_retry_ms);
        // A different version than the one that failed is a new need: it goes at once.
        let same_version = self.parked.get(&path).is_some_and(|p| p.remote.version == item.remote.version);
        if waiting && (same_version || !self.parked.contains_key(&path)) {
            self.park(path, item);
            None
        } else {
            self.unpark(&path);
            Some(item)
        }
    }

    /// Hands the parked paths whose retry is due (all with `force`) to the Index, to be decided
    /// again (the disk or the peers may have changed since). A stopped folder retries nothing.
    pub(super) fn retry_due(
        &mut self,
        now: u64,
        force: bool,
        faulted: bool,
        free: Option<u64>,
        fx: &mut Vec<Effect>,
    ) -> usize {
        if self.parked.is_empty() || faulted {
            return 0;
        }
        let due: Vec<String> = self
            .parked
            .keys()
            .filter(|p| force || self.failures.get(*p).is_none_or(|f| f.due(now, free)))
            .cloned()
            .collect();
        for path in &due {
            self.unpark(path);
            // Due now: the fresh need that comes back is queued, not parked again.
            if let Some(f) = self.failures.get_mut(path) {
                f.next_retry_ms = now;
            }
        }
        let n = due.len();
        if n > 0 {
            fx.push(Effect::Recompute { paths: due, why: Why::Retry });
        }
        n
    }

    /// Starts what may start: in the pull order, no two on overlapping paths, within the files
    /// and bytes in flight, and no peer past its share of the slots. A stopped folder (root gone
    /// or replaced) gets nothing written under it.
    pub(super) fn pump(&mut self, faulted: bool, store: &mut impl NeedStore, fx: &mut Vec<Effect>) {
        if faulted {
            return;
        }
        self.refill(store);
        let mut started = Vec::new();
        while self.room() {
            // No peer takes more than its share of the slots: pulls that hang on one peer's
            // silence leave room for the others'.
            let slots = if self.in_flight_bytes < self.limits.small_bytes {
                self.limits.small_files
            } else {
                self.limits.files
            };
            let share = running_share(slots);
            if !self.window_may_start(share) {
                break;
            }
            let (charged, running) = (&self.charged, &self.running);
            let allowed = |p: &str| charged.get(p).is_none_or(|d| running.get(d).copied().unwrap_or(0) < share);
            let Some(path) = self.queue.next_where(&self.targets, self.creating > 0, allowed).map(str::to_string)
            else {
                break;
            };
            let item = self.window_remove(&path).expect("queued");
            if let Some(d) = self.charged.get(&path) {
                *self.running.entry(*d).or_default() += 1;
            }
            let delete = is_delete(&item);
            let sources: Sources = Arc::new(RwLock::new(item.sources.clone()));
            let bytes = bytes_of(&item);
            let targets: Vec<String> = targets(&item).map(str::to_string).collect();
            targets.iter().for_each(|t| self.targets.add(t));
            self.creating += usize::from(!delete);
            self.in_flight_bytes += bytes;
            let flight = InFlight {
                delete,
                bytes,
                targets,
                version: item.remote.version.clone(),
                sources: sources.clone(),
                superseded: false,
                item: item.clone(),
            };
            self.in_flight.insert(path.clone(), flight);
            started.push(path);
            fx.push(Effect::Start { item: Box::new(item), sources });
        }
        // Running needs leave the store: a failure parks them, a retry queues them anew.
        store.unqueue(&started.iter().map(String::as_str).collect::<Vec<_>>());
    }
}
