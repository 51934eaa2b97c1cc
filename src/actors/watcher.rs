//! The Watcher actor: one recursive notify watcher per folder. A path is handed to the Index once it
//! has been quiet for `sync.debounce` (tens of milliseconds), so a file being written is hashed once,
//! when its writer is done, not again and again as it grows. A file written to and not closed yet
//! waits for its close (or a second without an event: `core::debounce`), so a copy that stalls is not
//! hashed half-written; a file that never goes quiet is looked at every `core::debounce::MAX_DELAY`
//! (`MAX_DELAY_OPEN` while open for writing). An overflowed event queue, a watch that could not be set up, and the
//! periodic `sync.rescan_interval` all turn into a full rescan, so nothing the kernel dropped is
//! missed for long. Links inside the folder are never followed (a change to a link is an event on
//! its directory; what it points to is not watched).
//!
//! A watch dies with its directory: an unmounted disk, a root renamed away or replaced. Every
//! `ROOT_CHECK_EVERY` the Watcher looks at each root's device and inode; when they are not what it
//! watches, it drops the dead watch (logged once), and sets up a new one as soon as a directory is
//! there again, followed by a full rescan (the Index decides whether that root is the folder's).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use notify::{RecursiveMode, Watcher as _};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::messages::{LocalChanged, Rescan};
use crate::config::FolderConfig;
use crate::core::debounce::{Debouncer, Seen};
use crate::core::path::{is_internal, is_temp_of, TEMP_PREFIX};
use std::collections::HashMap;

pub struct Watcher {
    folders: Vec<FolderConfig>,
    index: Recipient<LocalChanged>,
    rescan: Recipient<Rescan>,
    debounce: Duration,
    rescan_interval: Duration,
    /// Per folder, the live watch and the (device, inode) of the root it was set up on.
    watches: Vec<Option<(notify::RecommendedWatcher, (u64, u64))>>,
    /// Per folder, the root on which setting up a watch failed (warned once; tried again when the
    /// root changes, the periodic rescan covering it meanwhile).
    watch_failed: Vec<Option<(u64, u64)>>,
    events: Option<mpsc::Sender<FsEvent>>,
    /// Per folder, whether events were dropped because `EVENT_QUEUE` was full (set on notify's
    /// thread, turned into a full rescan here).
    overflowed: Arc<Vec<AtomicBool>>,
    /// Whether a dropped event was logged at info (once per run; later ones at debug).
    overflow_said: bool,
    /// Per folder, whether the inotify watch limit was reported (once per run).
    limit_warned: Vec<bool>,
    /// Per folder, whether a watch was ever attempted (the first needs no rescan: the Index scans
    /// at start anyway).
    attempted: Vec<bool>,
    /// Changed paths waiting to go quiet (`core::debounce`).
    pending: Debouncer,
    flush_scheduled: bool,
}

/// Unmatched halves of our own renames kept at most (a dropped event leaves one behind).
const TEMP_RENAMES_KEPT: usize = 4096;

/// What an event says of its path, for the debounce.
fn seen(kind: &notify::EventKind) -> Seen {
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
    match kind {
        EventKind::Create(CreateKind::File) | EventKind::Modify(ModifyKind::Data(_)) => Seen::Write,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Seen::Closed,
        _ => Seen::Change,
    }
}

/// An access that changes nothing (anything but a writer's close).
fn is_read(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    matches!(kind, EventKind::Access(_)) && !matches!(kind, EventKind::Access(AccessKind::Close(AccessMode::Write)))
}

/// What of a folder's file events goes to the Watcher actor, decided on notify's thread: no reads
/// (a writer's close goes on: it ends the wait of a file open for writing),
/// nothing that only touches our own files (a download's temp file: its create, writes, mode and
/// mtime; the version store), and not a download's rename into place (`own_commit`). A pulled file
/// then costs the actor thread no event at all (it was about six).
struct EventFilter {
    root: PathBuf,
    /// Renames away from one of our temp files not yet matched with their other half, by inotify
    /// cookie.
    temp_renames: HashMap<usize, String>,
}

impl EventFilter {
    fn new(root: PathBuf) -> Self {
        EventFilter { root, temp_renames: HashMap::new() }
    }

    fn passes(&mut self, event: &notify::Event) -> bool {
        if is_read(&event.kind) || self.own_commit(event) {
            return false;
        }
        // An event with no path (a queue overflow) or a path outside the root goes on.
        let ours = |p: &PathBuf| {
            Watcher::rel(&self.root, p).is_some_and(|rel| is_internal(&rel) && rel != crate::core::path::IGNORE_FILE)
        };
        event.paths.is_empty() || !event.paths.iter().all(ours)
    }

    /// Whether `event` is a download of ours put in place: the rename of one of our temp files onto
    /// the path it was made for (`core::path::is_temp_of`). Its commit told the Index what is at
    /// the path now, so looking at it again would find nothing (it was a look per pulled file: ~10%
    /// of a receiver's CPU in a million-file sync). Anything done to the path afterwards has events
    /// of its own. inotify reports such a rename as a "from" (the temp file), then a "to" and a
    /// "both" sharing its cookie.
    fn own_commit(&mut self, event: &notify::Event) -> bool {
        use notify::event::{EventKind, ModifyKind, RenameMode};
        let EventKind::Modify(ModifyKind::Name(mode)) = event.kind else { return false };
        let rels: Vec<String> = event.paths.iter().filter_map(|p| Watcher::rel(&self.root, p)).collect();
        match (mode, &rels[..], event.attrs.tracker()) {
            (RenameMode::From, [from], Some(cookie))
                if from.rsplit('/').next().is_some_and(|n| n.starts_with(TEMP_PREFIX)) =>
            {
                if self.temp_renames.len() >= TEMP_RENAMES_KEPT {
                    self.temp_renames.clear();
                }
                self.temp_renames.insert(cookie, from.clone());
                true
            }
            (RenameMode::To, [to], Some(cookie)) => {
                self.temp_renames.get(&cookie).is_some_and(|from| is_temp_of(from, to))
            }
            (RenameMode::Both, [from, to], cookie) => {
                if let Some(cookie) = cookie {
                    self.temp_renames.remove(&cookie);
                }
                is_temp_of(from, to)
            }
            _ => false,
        }
    }
}

/// How often each root's identity is compared with the one being watched.
const ROOT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// File events waiting for the Watcher (a few MiB at most). A burst beyond it (a million files
/// written faster than the actor thread takes their events) is not queued: it becomes a rescan of
/// the folder, as a kernel queue overflow does. Unbounded, the queue grows with the burst: W8's
/// write can queue up to a million events of a few hundred bytes while the actor thread is busy.
const EVENT_QUEUE: usize = 16_384;

struct FsEvent {
    folder: usize,
    event: notify::Result<notify::Event>,
}

impl Message for FsEvent {
    type Result = ();
}

impl Watcher {
    pub fn new(
        folders: Vec<FolderConfig>,
        index: Recipient<LocalChanged>,
        rescan: Recipient<Rescan>,
        debounce: Duration,
        rescan_interval: Duration,
    ) -> Self {
        let n = folders.len();
        Watcher {
            folders,
            index,
            rescan,
            debounce,
            rescan_interval,
            watches: (0..n).map(|_| None).collect(),
            watch_failed: vec![None; n],
            events: None,
            overflowed: Arc::new((0..n).map(|_| AtomicBool::new(false)).collect()),
            overflow_said: false,
            attempted: vec![false; n],
            limit_warned: vec![false; n],
            pending: Debouncer::default(),
            flush_scheduled: false,
        }
    }

    fn mark(&mut self, folder: &str, rel: String, ctx: &mut Context<Self>) {
        self.mark_seen(folder, rel, Seen::Change, ctx);
    }

    fn mark_seen(&mut self, folder: &str, rel: String, seen: Seen, ctx: &mut Context<Self>) {
        self.pending.mark(folder, rel, Instant::now(), seen);
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.run_later(self.debounce, |this, ctx| this.flush(ctx));
        }
    }

    /// Hands the Index every path that has gone quiet (or waited `MAX_DELAY`), and comes back for
    /// the others when the first of them is due.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        let now = Instant::now();
        let (ready, next) = self.pending.take_due(now, self.debounce);
        for (folder, paths) in ready {
            self.index.do_send(LocalChanged { folder, paths });
        }
        if let Some(at) = next {
            self.flush_scheduled = true;
            ctx.run_later(at.saturating_duration_since(now), |this, ctx| this.flush(ctx));
        }
    }

    /// Keeps folder `i`'s watch on the directory now at its root: drops a watch whose root went
    /// away or was replaced, and sets up a new one (then rescans) when a directory is there.
    fn check_watch(&mut self, i: usize, ctx: &mut Context<Self>) {
        let folder = self.folders[i].clone();
        let now = std::fs::symlink_metadata(&folder.path).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()));
        let watched = self.watches[i].as_ref().map(|(_, id)| *id);
        if now == watched || (now.is_some() && now == self.watch_failed[i]) {
            return;
        }
        if watched.is_some() {
            tracing::warn!(folder = %folder.id, path = %folder.path.display(), "lost the watch on the folder root (unmounted, moved or replaced)");
            self.watches[i] = None;
        }
        let Some(root) = now else { return };
        let Some(tx) = self.events.clone() else { return };
        let overflowed = self.overflowed.clone();
        let mut filter = EventFilter::new(folder.path.clone());
        let handler = move |event: notify::Result<notify::Event>| {
            if event.as_ref().is_ok_and(|e| !filter.passes(e)) {
                return;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(FsEvent { folder: i, event }) {
                overflowed[i].store(true, Relaxed);
            }
        };
        // Never through a symlink: a link in the folder is data, not a directory to watch.
        let config = notify::Config::default().with_follow_symlinks(false);
        let mut watcher = match notify::RecommendedWatcher::new(handler, config) {
            Ok(w) => w,
            Err(e) => return self.watch_failed(i, root, &e),
        };
        match watcher.watch(&folder.path, RecursiveMode::Recursive) {
            Ok(()) => {}
            // The directories watched so far stay watched; the rest wait for the periodic rescan.
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => self.watch_limit(i),
            Err(e) => return self.watch_failed(i, root, &e),
        }
        if std::mem::replace(&mut self.attempted[i], true) {
            tracing::info!(folder = %folder.id, path = %folder.path.display(), "watching the folder again; rescanning it");
            // Whatever changed while nothing was watching.
            self.mark(&folder.id, String::new(), ctx);
        }
        self.watches[i] = Some((watcher, root));
        self.watch_failed[i] = None;
    }

    fn watch_failed(&mut self, i: usize, root: (u64, u64), e: &notify::Error) {
        self.attempted[i] = true;
        if self.watch_failed[i].is_none() {
            tracing::warn!(
                folder = %self.folders[i].id,
                error = %e,
                rescan_every = ?self.rescan_interval,
                "cannot watch the folder; relying on periodic rescans"
            );
        }
        self.watch_failed[i] = Some(root);
    }

    /// The kernel's inotify watch limit was reached for folder `i`: said once, naming the sysctl.
    fn watch_limit(&mut self, i: usize) {
        if std::mem::replace(&mut self.limit_warned[i], true) {
            return;
        }
        tracing::warn!(
            folder = %self.folders[i].id,
            rescan_every = ?self.rescan_interval,
            "the folder has more directories than the inotify watch limit allows: changes in the directories \
             beyond it are found by the periodic rescan only; raise the limit with \
             `sysctl fs.inotify.max_user_watches=1048576` (and in /etc/sysctl.d/ to keep it)"
        );
    }

    /// Folders whose events were dropped since the last look get a full rescan.
    fn check_overflow(&mut self, ctx: &mut Context<Self>) {
        for i in 0..self.folders.len() {
            if self.overflowed[i].swap(false, Relaxed) {
                let folder = self.folders[i].id.clone();
                if std::mem::replace(&mut self.overflow_said, true) {
                    tracing::debug!(folder = %folder, "file events came faster than they were handled; rescanning the folder");
                } else {
                    tracing::info!(folder = %folder, "file events came faster than they were handled; rescanning the folder (said once)");
                }
                self.mark(&folder, String::new(), ctx);
            }
        }
    }

    fn rel(root: &PathBuf, path: &std::path::Path) -> Option<String> {
        let rel = path.strip_prefix(root).ok()?.to_str()?;
        Some(rel.to_string())
    }
}

impl Actor for Watcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        self.events = Some(tx);
        for i in 0..self.folders.len() {
            self.check_watch(i, ctx);
        }
        ctx.run_interval(ROOT_CHECK_EVERY, |this, ctx| {
            for i in 0..this.folders.len() {
                this.check_watch(i, ctx);
            }
            this.check_overflow(ctx);
        });
        ctx.add_stream(ReceiverStream::new(rx));
        ctx.run_interval(self.rescan_interval, |this, _| {
            for f in &this.folders {
                this.rescan.do_send(Rescan { folder: f.id.clone() });
            }
        });
    }
}

impl StreamHandler<FsEvent> for Watcher {
    fn handle(&mut self, msg: FsEvent, ctx: &mut Context<Self>) {
        self.check_overflow(ctx);
        let Some(folder) = self.folders.get(msg.folder).cloned() else { return };
        match msg.event {
            // A new directory past the watch limit: scan it now; later changes in it wait for
            // the periodic rescan.
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                self.watch_limit(msg.folder);
                let rels: Vec<String> = e.paths.iter().filter_map(|p| Self::rel(&folder.path, p)).collect();
                if rels.is_empty() {
                    self.mark(&folder.id, String::new(), ctx);
                }
                for rel in rels {
                    self.mark(&folder.id, rel, ctx);
                }
            }
            Err(e) => {
                tracing::warn!(folder = %folder.id, error = %e, "watcher error; rescanning the folder");
                self.mark(&folder.id, String::new(), ctx);
            }
            Ok(event) => {
                if event.need_rescan() {
                    tracing::warn!(folder = %folder.id, "file event queue overflowed; rescanning the folder");
                    self.mark(&folder.id, String::new(), ctx);
                }
                for path in &event.paths {
                    let Some(rel) = Self::rel(&folder.path, path) else { continue };
                    if rel.is_empty() || (is_internal(&rel) && rel != crate::core::path::IGNORE_FILE) {
                        continue;
                    }
                    self.mark_seen(&folder.id, rel, seen(&event.kind), ctx);
                }
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::path::temp_name;
    use notify::event::{AccessKind, CreateKind, EventKind, ModifyKind, RenameMode};

    fn event(kind: EventKind, paths: &[&str], cookie: Option<usize>) -> notify::Event {
        let mut e = notify::Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from("/root").join(p));
        }
        match cookie {
            Some(c) => e.set_tracker(c),
            None => e,
        }
    }

    #[test]
    fn a_downloads_own_events_stop_on_notifys_thread_and_a_users_go_on() {
        let mut f = EventFilter::new(PathBuf::from("/root"));
        let temp = temp_name("d/file.txt", "1f.2");
        let rename = |mode| EventKind::Modify(ModifyKind::Name(mode));
        // A download: its temp file's events, then its rename into place.
        assert!(!f.passes(&event(EventKind::Create(CreateKind::File), &[&temp], None)));
        assert!(!f.passes(&event(EventKind::Modify(ModifyKind::Any), &[&temp], None)));
        assert!(!f.passes(&event(EventKind::Access(AccessKind::Any), &[&temp], None)));
        assert!(!f.passes(&event(rename(RenameMode::From), &[&temp], Some(7))));
        assert!(!f.passes(&event(rename(RenameMode::To), &["d/file.txt"], Some(7))));
        assert!(!f.passes(&event(rename(RenameMode::Both), &[&temp, "d/file.txt"], Some(7))));
        assert!(f.temp_renames.is_empty(), "the rename's halves are matched and forgotten");
        // The user's own changes, renames onto the same path included, go on.
        assert!(f.passes(&event(rename(RenameMode::From), &["d/other.txt"], Some(8))));
        assert!(f.passes(&event(rename(RenameMode::To), &["d/file.txt"], Some(8))));
        assert!(f.passes(&event(rename(RenameMode::Both), &["d/other.txt", "d/file.txt"], Some(8))));
        assert!(f.passes(&event(EventKind::Modify(ModifyKind::Any), &["d/file.txt"], None)));
        assert!(f.passes(&event(EventKind::Create(CreateKind::File), &[".syncignore"], None)));
        // Our temp file renamed onto another path is not a download put in place.
        assert!(!f.passes(&event(rename(RenameMode::From), &[&temp], Some(9))));
        assert!(f.passes(&event(rename(RenameMode::To), &["d/elsewhere.txt"], Some(9))));
        // An overflow (no path) always goes on; so does a writer's close of the user's file.
        assert!(f.passes(&event(EventKind::Other, &[], None)));
        let closed = EventKind::Access(AccessKind::Close(notify::event::AccessMode::Write));
        assert!(f.passes(&event(closed, &["d/file.txt"], None)));
        assert!(!f.passes(&event(closed, &[&temp], None)));
        assert_eq!(seen(&closed), Seen::Closed);
        assert_eq!(seen(&EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any))), Seen::Write);
        assert_eq!(seen(&rename(RenameMode::To)), Seen::Change);
    }
}
