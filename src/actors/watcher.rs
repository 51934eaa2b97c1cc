//! The Watcher actor: one recursive notify watcher per folder. Events are coalesced for
//! `sync.debounce` (tens of milliseconds) and handed to the Index as paths to look at; an overflowed
//! event queue, a watch that could not be set up, and the periodic `sync.rescan_interval` all turn
//! into a full rescan, so nothing the kernel dropped is missed for long.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

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
    pending: HashMap<String, BTreeSet<String>>,
    flush_scheduled: bool,
}

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
        self.pending.entry(folder.to_string()).or_default().insert(rel);
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.run_later(self.debounce, |this, _| this.flush());
        }
    }

    fn flush(&mut self) {
        self.flush_scheduled = false;
        for (folder, paths) in self.pending.drain() {
            // A full rescan covers every path.
            let paths: Vec<String> = if paths.contains("") { vec![String::new()] } else { paths.into_iter().collect() };
            self.index.do_send(LocalChanged { folder, paths });
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
