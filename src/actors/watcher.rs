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
//! `ROOT_CHECK_EVERY` the Watcher looks at each root's device and inode, drops a dead watch and sets
//! up a new one, then a full rescan (`core::watch::RootWatch`; the Index decides whether that root
//! is the folder's). What an event means and which events are dropped on notify's thread are the
//! rules of `core::watch` too: this actor maps notify's events to them and carries them out.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::messages::{LocalChanged, Rescan, Settling};
use crate::config::FolderConfig;
use crate::core::debounce::{Debouncer, Seen};
use crate::core::watch::{past_limit, DirId, Event, EventFilter, Kind, Rename, RootWatch};

pub struct Watcher {
    folders: Vec<FolderConfig>,
    index: Recipient<LocalChanged>,
    rescan: Recipient<Rescan>,
    debounce: Duration,
    rescan_interval: Duration,
    /// Per folder, the live watch, and what it watches (`core::watch::RootWatch`).
    watches: Vec<Option<notify::RecommendedWatcher>>,
    roots: Vec<RootWatch>,
    events: Option<mpsc::Sender<FsEvent>>,
    /// Per folder, whether events were dropped because `EVENT_QUEUE` was full (set on notify's
    /// thread, turned into a full rescan here).
    overflowed: Arc<Vec<AtomicBool>>,
    /// Whether a dropped event was logged at info (once per run; later ones at debug).
    overflow_said: bool,
    /// Changed paths waiting to go quiet (`core::debounce`).
    pending: Debouncer,
    flush_scheduled: bool,
}

/// A notify event as the rules of `core::watch` take it (on notify's thread): its kind narrowed to
/// what they tell apart, its paths relative to `root`.
fn plain(root: &Path, event: &notify::Event) -> Event {
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind as K, ModifyKind, RenameMode};
    let kind = match event.kind {
        K::Create(CreateKind::File) | K::Modify(ModifyKind::Data(_)) => Kind::Written,
        K::Access(AccessKind::Close(AccessMode::Write)) => Kind::WriterClosed,
        K::Access(_) => Kind::Read,
        K::Modify(ModifyKind::Name(RenameMode::From)) => Kind::Renamed(Rename::From),
        K::Modify(ModifyKind::Name(RenameMode::To)) => Kind::Renamed(Rename::To),
        K::Modify(ModifyKind::Name(RenameMode::Both)) => Kind::Renamed(Rename::Both),
        _ => Kind::Changed,
    };
    // A read is dropped whatever its paths (`EventFilter`), and a scan's reads are many: its paths
    // are not worked out.
    let paths = if kind == Kind::Read { Vec::new() } else { event.paths.iter().map(|p| rel(root, p)).collect() };
    Event { kind, paths, cookie: event.attrs.tracker(), rescan: event.need_rescan() }
}

fn rel(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?.to_str()?;
    Some(rel.to_string())
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
    event: notify::Result<Event>,
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
            roots: (0..n).map(|_| RootWatch::default()).collect(),
            events: None,
            overflowed: Arc::new((0..n).map(|_| AtomicBool::new(false)).collect()),
            overflow_said: false,
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
        let (id, path) = (self.folders[i].id.clone(), self.folders[i].path.clone());
        let now = std::fs::symlink_metadata(&path).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()));
        let look = self.roots[i].look(now);
        if look.lost {
            tracing::warn!(folder = %id, path = %path.display(), "lost the watch on the folder root (unmounted, moved or replaced)");
            self.watches[i] = None;
        }
        let (Some(root), Some(tx)) = (look.set_up, self.events.clone()) else { return };
        let (overflowed, mut filter, root_path) = (self.overflowed.clone(), EventFilter::default(), path.clone());
        let handler = move |event: notify::Result<notify::Event>| {
            let event = event.map(|e| plain(&root_path, &e));
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
        match watcher.watch(&path, RecursiveMode::Recursive) {
            Ok(()) => {}
            // The directories watched so far stay watched; the rest wait for the periodic rescan.
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => self.watch_limit(i),
            Err(e) => return self.watch_failed(i, root, &e),
        }
        self.watches[i] = Some(watcher);
        if self.roots[i].watching(root) {
            tracing::info!(folder = %id, path = %path.display(), "watching the folder again; rescanning it");
            // Whatever changed while nothing was watching.
            self.mark(&id, String::new(), ctx);
        }
    }

    fn watch_failed(&mut self, i: usize, root: DirId, e: &notify::Error) {
        if self.roots[i].failed(root) {
            tracing::warn!(
                folder = %self.folders[i].id,
                error = %e,
                rescan_every = ?self.rescan_interval,
                "cannot watch the folder; relying on periodic rescans"
            );
        }
    }

    /// The kernel's inotify watch limit was reached for folder `i`: said once, naming the sysctl.
    fn watch_limit(&mut self, i: usize) {
        if !self.roots[i].limit_met() {
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
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                self.watch_limit(msg.folder);
                for rel in past_limit(e.paths.iter().map(|p| rel(&folder.path, p))) {
                    self.mark(&folder.id, rel, ctx);
                }
            }
            Err(e) => {
                tracing::warn!(folder = %folder.id, error = %e, "watcher error; rescanning the folder");
                self.mark(&folder.id, String::new(), ctx);
            }
            Ok(event) => {
                if event.rescan {
                    tracing::warn!(folder = %folder.id, "file event queue overflowed; rescanning the folder");
                }
                for (rel, seen) in event.changes() {
                    self.mark_seen(&folder.id, rel.to_string(), seen, ctx);
                }
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<Settling> for Watcher {
    type Result = ();
    /// Taken as written to (`Seen::Write`): each is handed back once its writer closes it or it has
    /// been quiet for `OPEN_QUIET`, as a file seen being written would be.
    fn handle(&mut self, msg: Settling, ctx: &mut Context<Self>) {
        for rel in msg.paths {
            self.mark_seen(&msg.folder, rel, Seen::Write, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RenameMode};

    #[test]
    fn notify_events_map_to_what_core_tells_apart() {
        let root = Path::new("/root");
        let name = |mode| EventKind::Modify(ModifyKind::Name(mode));
        for (kind, want) in [
            (EventKind::Create(CreateKind::File), Kind::Written),
            (EventKind::Modify(ModifyKind::Data(DataChange::Any)), Kind::Written),
            (EventKind::Access(AccessKind::Close(AccessMode::Write)), Kind::WriterClosed),
            (EventKind::Access(AccessKind::Close(AccessMode::Read)), Kind::Read),
            (name(RenameMode::Both), Kind::Renamed(Rename::Both)),
            (name(RenameMode::Any), Kind::Changed),
            (EventKind::Create(CreateKind::Folder), Kind::Changed),
        ] {
            assert_eq!(plain(root, &notify::Event::new(kind)).kind, want, "{kind:?}");
        }
        let e = notify::Event::new(name(RenameMode::From)).add_path("/root/d/a".into()).add_path("/b".into());
        let e = plain(root, &e.set_tracker(7));
        assert_eq!((e.paths, e.cookie, e.rescan), (vec![Some("d/a".to_string()), None], Some(7), false));
    }
}
