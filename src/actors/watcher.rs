//! The Watcher actor: one recursive notify watcher per folder. A path is handed to the Index once it
//! has been quiet for `sync.debounce` (tens of milliseconds), so a file being written is hashed once,
//! when its writer is done, not again and again as it grows (a file that never goes quiet is looked
//! at every `MAX_DELAY`). An overflowed event queue, a watch that could not be set up, and the
//! periodic `sync.rescan_interval` all turn into a full rescan, so nothing the kernel dropped is
//! missed for long.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::index::IndexActor;
use super::messages::LocalChanged;
use crate::config::FolderConfig;
use crate::core::path::is_internal;

pub struct Watcher {
    folders: Vec<FolderConfig>,
    index: Addr<IndexActor>,
    debounce: Duration,
    rescan_interval: Duration,
    watchers: Vec<notify::RecommendedWatcher>,
    /// Per folder, each changed path's first and latest event.
    pending: HashMap<String, HashMap<String, (Instant, Instant)>>,
    flush_scheduled: bool,
}

/// A path that keeps changing (a long copy, a log) is still looked at this often.
const MAX_DELAY: Duration = Duration::from_secs(1);

struct FsEvent {
    folder: usize,
    event: notify::Result<notify::Event>,
}

impl Message for FsEvent {
    type Result = ();
}

impl Watcher {
    pub fn new(folders: Vec<FolderConfig>, index: Addr<IndexActor>, debounce: Duration, rescan_interval: Duration) -> Self {
        Watcher { folders, index, debounce, rescan_interval, watchers: Vec::new(), pending: HashMap::new(), flush_scheduled: false }
    }

    fn mark(&mut self, folder: &str, rel: String, ctx: &mut Context<Self>) {
        let now = Instant::now();
        self.pending.entry(folder.to_string()).or_default().entry(rel).and_modify(|(_, last)| *last = now).or_insert((now, now));
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
        let due = |&(first, last): &(Instant, Instant)| (last + self.debounce).min(first + MAX_DELAY);
        let mut next: Option<Instant> = None;
        for (folder, paths) in self.pending.iter_mut() {
            // A full rescan covers every path, and waits for nothing.
            let ready: Vec<String> = if paths.contains_key("") {
                paths.clear();
                vec![String::new()]
            } else {
                let ready: Vec<String> = paths.iter().filter(|(_, t)| due(t) <= now).map(|(p, _)| p.clone()).collect();
                paths.retain(|_, t| due(t) > now);
                ready
            };
            next = paths.values().map(due).chain(next).min();
            if !ready.is_empty() {
                self.index.do_send(LocalChanged { folder: folder.clone(), paths: ready });
            }
        }
        self.pending.retain(|_, paths| !paths.is_empty());
        if let Some(at) = next {
            self.flush_scheduled = true;
            ctx.run_later(at.saturating_duration_since(now), |this, ctx| this.flush(ctx));
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
        let (tx, rx) = mpsc::unbounded_channel();
        for (i, folder) in self.folders.iter().enumerate() {
            let tx = tx.clone();
            let handler = move |event: notify::Result<notify::Event>| {
                let _ = tx.send(FsEvent { folder: i, event });
            };
            match notify::recommended_watcher(handler).and_then(|mut w| w.watch(&folder.path, RecursiveMode::Recursive).map(|_| w)) {
                Ok(w) => self.watchers.push(w),
                Err(e) => tracing::warn!(
                    folder = %folder.id,
                    error = %e,
                    rescan_every = ?self.rescan_interval,
                    "cannot watch the folder (inotify watch limit? raise fs.inotify.max_user_watches); relying on periodic rescans"
                ),
            }
        }
        ctx.add_stream(UnboundedReceiverStream::new(rx));
        ctx.run_interval(self.rescan_interval, |this, _| {
            for f in &this.folders {
                this.index.do_send(LocalChanged { folder: f.id.clone(), paths: vec![String::new()] });
            }
        });
    }
}

impl StreamHandler<FsEvent> for Watcher {
    fn handle(&mut self, msg: FsEvent, ctx: &mut Context<Self>) {
        let Some(folder) = self.folders.get(msg.folder).cloned() else { return };
        match msg.event {
            Err(e) => {
                tracing::warn!(folder = %folder.id, error = %e, "watcher error; rescanning the folder");
                self.mark(&folder.id, String::new(), ctx);
            }
            Ok(event) => {
                if event.need_rescan() {
                    tracing::warn!(folder = %folder.id, "file event queue overflowed; rescanning the folder");
                    self.mark(&folder.id, String::new(), ctx);
                }
                if matches!(event.kind, notify::EventKind::Access(_)) {
                    return;
                }
                for path in &event.paths {
                    let Some(rel) = Self::rel(&folder.path, path) else { continue };
                    if rel.is_empty() || (is_internal(&rel) && rel != crate::core::path::IGNORE_FILE) {
                        continue;
                    }
                    self.mark(&folder.id, rel, ctx);
                }
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}
