//! The rules of one folder's index, without the index: what a local scan result becomes, what
//! every announced version means for us (`needs`), what of it settles without disk work
//! (`dispatch`), what a finished pull is recorded as (`took`, `reissued`, and for a batch of
//! outcomes `applied`), the version clock and the age of tombstones. The Index actor calls these with the RocksDB store behind [`Records`];
//! the simulator (tests/sim.rs) calls the same functions with an in-memory store, so what it
//! checks is the code that runs. Nothing here reads a clock: `now` comes in as an argument.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::decide::{decide, Action};
use super::device::{DeviceId, ShortId};
use super::record::{Chunk, FileKind, FileRecord};
use super::version::VersionVector;

mod applied;
pub use applied::{applied, Applied, AppliedPlan, Current};

/// What the rules read of a folder's index: our records, and the ones peers announced.
pub trait Records {
    /// A failed read (`Infallible` for a store in memory). A read that fails is an error, never
    /// "no record": taking it for one would make a peer's version look new to us.
    type Error;
    /// Our record of `path`.
    fn local(&self, path: &str) -> Result<Option<FileRecord>, Self::Error>;
    /// The record of `path` that `device` announced.
    fn remote(&self, device: &DeviceId, path: &str) -> Result<Option<FileRecord>, Self::Error>;
    /// Up to `limit` records `device` announced, in path order (byte order), from the first path
    /// after `after` (from the start with `None`). A folder is read a page at a time: it may not
    /// fit in memory.
    fn remote_page(&self, device: &DeviceId, after: Option<&str>, limit: usize)
        -> Result<Vec<FileRecord>, Self::Error>;
}

/// How many records of each peer's index one step of a whole-folder recompute reads.
pub const NEEDS_PAGE: usize = 1024;

/// This device's version clock: milliseconds since the epoch, bumped past the last value issued.
/// Every new version gets a larger counter: two different versions of a path made by this device
/// must never carry the same one, or one would wrongly look like it had seen the other.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    last: u64,
}

impl Clock {
    /// A fresh counter value: `now_ms`, or one more than the last one issued.
    pub fn tick(&mut self, now_ms: u64) -> u64 {
        self.last = now_ms.max(self.last + 1);
        self.last
    }
}

/// One thing a folder needs from its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Need {
    pub action: Action,
    pub remote: FileRecord,
    pub local: Option<FileRecord>,
    /// Devices that announced exactly this version (and so hold its chunks).
    pub sources: Vec<DeviceId>,
}

/// What a scan saw of a file or directory that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub kind: FileKind,
    pub size: u64,
    pub mtime_ns: i64,
    pub permissions: u32,
    pub chunks: Vec<Chunk>,
    /// What a symlink points to (empty for anything else).
    pub link_target: String,
}

/// The record a scan makes of `path` as `seen` on disk, or `None` when nothing we sync changed
/// (only a directory's mtime, say). The version descends from our previous record's; until it is
/// committed, `sequence` is that record's, which lets the commit refuse a stale result.
pub fn scanned(path: &str, seen: Seen, previous: Option<&FileRecord>, me: ShortId, now: u64) -> Option<FileRecord> {
    let base = previous.map(|p| p.version.clone()).unwrap_or_default();
    let record = FileRecord {
        path: path.to_string(),
        kind: seen.kind,
        size: seen.size,
        mtime_ns: seen.mtime_ns,
        permissions: seen.permissions,
        version: base.updated(me, now),
        deleted: false,
        sequence: previous.map_or(0, |p| p.sequence),
        modified_by: me,
        chunks: seen.chunks,
        link_target: seen.link_target,
    };
    // Only metadata we do not sync changed (a directory's mtime, a link's mtime or mode): keep the
    // record as it is. Same bytes with a new file mtime is a touch, and a new version: mtime is
    // synced.
    let unchanged = previous.is_some_and(|prev| {
        !prev.deleted
            && prev.same_content(&record)
            && (record.kind == FileKind::Symlink
                || (prev.permissions == record.permissions
                    && (prev.mtime_ns == record.mtime_ns || record.kind == FileKind::Directory)))
    });
    (!unchanged).then_some(record)
}

/// What to do with one record a scan produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanVerdict {
    /// Commit it.
    Commit,
    /// A local delete: hold it with the others found meanwhile, then judge them together.
    HoldDelete,
    /// Our record changed while the scan ran (a pull landed): look at the path again.
    Stale,
}

/// `current`: our record of the path now.
pub fn judge_scanned(record: &FileRecord, current: Option<&FileRecord>) -> ScanVerdict {
    if current.map_or(0, |r| r.sequence) != record.sequence {
        ScanVerdict::Stale
    } else if record.deleted {
        ScanVerdict::HoldDelete
    } else {
        ScanVerdict::Commit
    }
}

/// Whether a held local delete may still be committed: our record is the one it replaces, and the
/// path is still absent (`absent`). A delete that no longer holds must be scanned again: our
/// record may have moved on without the disk (a merge committed meanwhile), and nothing else
/// would look at the path (tests/sim.rs found a node announcing, for a minute, a file it had
/// deleted).
pub fn delete_still_holds(delete: &FileRecord, current: Option<&FileRecord>, absent: bool) -> bool {
    absent && current.map_or(0, |r| r.sequence) == delete.sequence
}

/// What every announced version means for us: for each path, the newest version announced by the
/// `devices` the folder is shared with, decided against ours. `announced`: just the paths of these
/// records (a peer's update), or `None` for everything every device announced. Path order.
///
/// For an announced path, every device's record of it is considered, not only the new one: an
/// older or concurrent version arriving from one peer must not hide the newer one another peer
/// announced before. It did: the new record settled the path, which dropped the Puller's parked
/// pull of the newer version, and nothing brought it back (tests/sim.rs).
pub fn needs<R: Records + ?Sized>(
    records: &R,
    devices: &[DeviceId],
    announced: Option<&[FileRecord]>,
) -> Result<Vec<Need>, R::Error> {
    let Some(list) = announced else {
        let (mut items, mut after) = (Vec::new(), None);
        loop {
            let (page, next) = needs_page(records, devices, after.as_deref(), NEEDS_PAGE)?;
            items.extend(page);
            match next {
                Some(next) => after = Some(next),
                None => return Ok(items),
            }
        }
    };
    needs_of(records, devices, list)
}

/// `needs` for the paths of `list`.
fn needs_of<R: Records + ?Sized>(
    records: &R,
    devices: &[DeviceId],
    list: &[FileRecord],
) -> Result<Vec<Need>, R::Error> {
    let mut by_path: BTreeMap<&str, Vec<&FileRecord>> = BTreeMap::new();
    for r in list {
        by_path.entry(r.path.as_str()).or_default().push(r);
    }
    let mut items = Vec::new();
    for (path, listed) in by_path {
        items.extend(need_at(records, devices, path, &listed)?);
    }
    Ok(items)
}

/// What the folder needs at each of `paths`, from every device's record of it, in path order:
/// `needs` for paths whose records are all in the store (held needs taken back, retries due).
pub fn needs_at<R: Records + ?Sized>(
    records: &R,
    devices: &[DeviceId],
    paths: &[String],
) -> Result<Vec<Need>, R::Error> {
    let paths: std::collections::BTreeSet<&str> = paths.iter().map(String::as_str).collect();
    let mut items = Vec::new();
    for path in paths {
        items.extend(need_at(records, devices, path, &[])?);
    }
    Ok(items)
}

/// The need at `path`, if any: the newest of `listed` (records just announced, in the order they
/// came) and every device's stored record, decided against ours. Each device's record is read
/// once (a path is a read of each device's index and one of ours).
fn need_at<R: Records + ?Sized>(
    records: &R,
    devices: &[DeviceId],
    path: &str,
    listed: &[&FileRecord],
) -> Result<Option<Need>, R::Error> {
    // The newest records: none seen by another; records concurrent with each other are all kept,
    // in the order considered.
    let mut newest: Vec<FileRecord> = Vec::new();
    let mut consider = |remote: &FileRecord| {
        if newest.iter().any(|n| n.version.dominates(&remote.version)) {
            return;
        }
        newest.retain(|n| !remote.version.dominates(&n.version));
        newest.push(remote.clone());
    };
    // The first record announced, then every device's, then the rest announced.
    if let Some(first) = listed.first() {
        consider(first);
    }
    let mut stored = Vec::with_capacity(devices.len());
    for d in devices {
        if let Some(r) = records.remote(d, path)? {
            consider(&r);
            stored.push((*d, r.version));
        }
    }
    listed.iter().skip(1).for_each(|r| consider(r));
    if newest.is_empty() {
        return Ok(None);
    }
    let local = records.local(path)?;
    // Peers that disagree concurrently are decided against ours one at a time: the outcome of
    // the first changes ours, and the next round takes the other. One that changes nothing here
    // (ours already, or seen by ours) is passed over: taken first, it hid the other for good (a
    // peer holding our delete kept a concurrent edit from us while it stayed so: `SIM_SEED`
    // 9629236930949261617).
    let decided = newest.into_iter().find_map(|remote| {
        let action = decide(local.as_ref(), &remote);
        (action != Action::Skip).then_some((remote, action))
    });
    let Some((remote, action)) = decided else { return Ok(None) };
    let sources = stored.into_iter().filter(|(_, v)| *v == remote.version).map(|(d, _)| d).collect();
    Ok(Some(Need { action, remote, local, sources }))
}

/// One step of deciding everything a folder needs, in bounded memory: reads a page of `limit`
/// records from each device's index after `after`, and decides the paths up to the last one that
/// every full page reached (below it, each device's page holds all of its records). Returns those
/// needs, and where the next step starts (`None`: this was the last step). Looping from `None`
/// until it returns `None` gives `needs(records, devices, None)`, a page at a time.
pub fn needs_page<R: Records + ?Sized>(
    records: &R,
    devices: &[DeviceId],
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Need>, Option<String>), R::Error> {
    let limit = limit.max(1);
    let mut pages = Vec::with_capacity(devices.len());
    let mut end: Option<String> = None;
    for d in devices {
        let page = records.remote_page(d, after, limit)?;
        if page.len() >= limit {
            let last = &page[page.len() - 1].path;
            if end.as_ref().is_none_or(|e| last < e) {
                end = Some(last.clone());
            }
        }
        pages.push(page);
    }
    let within = |r: &FileRecord| end.as_ref().is_none_or(|e| r.path <= *e);
    let announced: Vec<FileRecord> = pages.iter().flatten().filter(|r| within(r)).cloned().collect();
    let paged = Paged { records, devices, pages };
    Ok((needs_of(&paged, devices, &announced)?, end))
}

/// A store's records with each device's page held in memory: the lookups of one `needs_page` step
/// read no record twice.
struct Paged<'a, R: ?Sized> {
    records: &'a R,
    devices: &'a [DeviceId],
    pages: Vec<Vec<FileRecord>>,
}

impl<R: Records + ?Sized> Records for Paged<'_, R> {
    type Error = R::Error;
    fn local(&self, path: &str) -> Result<Option<FileRecord>, Self::Error> {
        self.records.local(path)
    }
    fn remote(&self, device: &DeviceId, path: &str) -> Result<Option<FileRecord>, Self::Error> {
        let Some(page) = self.devices.iter().position(|d| d == device).map(|i| &self.pages[i]) else {
            return Ok(None);
        };
        Ok(page.binary_search_by(|r| r.path.as_str().cmp(path)).ok().map(|i| page[i].clone()))
    }
    fn remote_page(
        &self,
        device: &DeviceId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FileRecord>, Self::Error> {
        self.records.remote_page(device, after, limit)
    }
}

/// A page of an index held in a map by path (`Records::remote_page` of a store in memory).
pub fn page_of(index: Option<&BTreeMap<String, FileRecord>>, after: Option<&str>, limit: usize) -> Vec<FileRecord> {
    use std::ops::Bound::{Excluded, Unbounded};
    let Some(index) = index else { return Vec::new() };
    let from = after.map_or(Unbounded, Excluded);
    index.range::<str, _>((from, Unbounded)).take(limit).map(|(_, r)| r.clone()).collect()
}

/// Needs sorted by who settles them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dispatched {
    /// Records to commit now: no disk work (merged versions, tombstones of paths we do not have).
    pub commit: Vec<FileRecord>,
    /// Needs for the Puller.
    pub work: Vec<Need>,
    /// Paths whose earlier need (a parked failure, a path the Puller asked about) is over.
    pub settled: Vec<String>,
}

/// Settles what needs no disk work; the rest is work for the Puller. `complete`: `items` is every
/// need of the folder (the Puller's earlier list is replaced anyway). `settled`: paths the Puller
/// asked to have decided again; those left without work are reported back. A send-only folder
/// takes nothing from its peers; an ignored path is left alone.
pub fn dispatch(
    items: Vec<Need>,
    complete: bool,
    mut settled: Vec<String>,
    send_only: bool,
    ignored: &dyn Fn(&FileRecord) -> bool,
) -> Dispatched {
    let mut commit = Vec::new();
    let mut work = Vec::new();
    for item in items {
        // Whatever the Puller still holds for this path is over, unless the path goes to the
        // Puller again below.
        if !complete {
            settled.push(item.remote.path.clone());
        }
        match &item.action {
            _ if ignored(&item.remote) => {}
            Action::Merge => {
                let mut merged = item.local.clone().expect("merge has a local record");
                merged.version = merged.version.merged(&item.remote.version);
                commit.push(merged);
            }
            // A tombstone for a path we do not have: record it, so it travels on.
            Action::Take if item.remote.deleted && item.local.as_ref().is_none_or(|l| l.deleted) => {
                let mut r = item.remote.clone();
                r.sequence = item.local.as_ref().map_or(0, |l| l.sequence);
                commit.push(r);
            }
            _ if send_only => {}
            _ => work.push(item),
        }
    }
    let working: std::collections::HashSet<&str> = work.iter().map(|w| w.remote.path.as_str()).collect();
    settled.retain(|p| !working.contains(p.as_str()));
    Dispatched { commit, work, settled }
}

/// The record of a remote version the Puller put on disk (or deleted): the peer's record, with the
/// mtime and permissions the disk took (`disk`), replacing `current`, our record of the path now.
/// The record says what is on disk, even when our record moved on while the pull ran (see
/// [`overtaken`]).
pub fn took(mut record: FileRecord, current: Option<&FileRecord>, disk: Option<(i64, u32)>) -> FileRecord {
    record.sequence = current.map_or(0, |r| r.sequence);
    if let Some((mtime_ns, permissions)) = disk {
        record.mtime_ns = mtime_ns;
        record.permissions = permissions;
    }
    record
}

/// Whether our record moved on, while a pull ran, to a version the pulled one has not seen: the
/// Index settles a merge or a peer's tombstone without disk work, even for a path being pulled.
/// The pull's record replaces it (it is what the disk holds), and the path must then be decided
/// again, or the node would hold an older version than its peers and, since nothing new arrives,
/// never act on the newer one (tests/sim.rs found a delete never applied, and a merged version
/// lost, that way).
pub fn overtaken(record: &FileRecord, current: Option<&FileRecord>) -> bool {
    current.is_some_and(|c| !record.version.dominates(&c.version))
}

/// Our record re-issued above `other` (a losing edit kept as a copy, or a delete our edit beats),
/// so that it wins everywhere. `now` is a fresh value of our clock.
///
/// The content keeps its author (`modified_by`): a conflict copy is named after the losing
/// record's author and mtime, so that every node makes the same copy. A re-issue that named this
/// device instead gave one content two names: when it later lost a conflict on one node as the
/// original and on another as the re-issue, it was kept twice (tests/sim.rs).
pub fn reissued(mut local: FileRecord, other: &VersionVector, me: ShortId, now: u64) -> FileRecord {
    local.version = local.version.merged(other).updated(me, now);
    local
}

/// When a tombstone's delete happened: the deleting device's counter, milliseconds since the epoch
/// (counters from before they were milliseconds are seconds).
pub fn deleted_at(r: &FileRecord) -> u64 {
    let v = r.version.get(r.modified_by);
    if v < 100_000_000_000 {
        v * 1000
    } else {
        v
    }
}

/// Tombstones whose delete happened before this are forgotten (`ttl_ms`: `sync.tombstone_ttl`).
pub fn tombstone_cutoff(now_ms: u64, ttl_ms: u64) -> u64 {
    now_ms.saturating_sub(ttl_ms)
}

/// Whether a record is a tombstone older than `cutoff` (forgotten by the index).
pub fn expired(r: &FileRecord, cutoff: u64) -> bool {
    r.deleted && deleted_at(r) < cutoff
}

#[cfg(test)]
mod tests;
