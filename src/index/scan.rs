//! One scan of a folder, on a blocking thread.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::StoreView;
use crate::core::root::RootProblem;
use crate::core::{FileRecord, ShortId};
use crate::fs::chunker::ChunkParams;
use crate::fs::ignore::FolderFilter;
use crate::fs::root::RootGuard;
use crate::fs::scan::Scanner;
use crate::store::Store;

/// A scan to run: `scope` of `folder` (`full` when it holds "", the whole folder).
pub struct ScanJob {
    pub store: Arc<Store>,
    pub folder: String,
    pub root: PathBuf,
    pub guard: Arc<RootGuard>,
    pub params: ChunkParams,
    pub me: ShortId,
    /// What the folder leaves alone: the scanner skips what `FolderFilter::ignores` refuses from
    /// peers (`.syncignore`, and links unless they are synced).
    pub filter: FolderFilter,
    /// Paths being pulled: left alone.
    pub busy: HashSet<String>,
    pub scope: Vec<String>,
    pub full: bool,
    /// Paths hashed again even if size and mtime match their record.
    pub suspect: HashSet<String>,
    /// The version counter new records get.
    pub now: u64,
}

/// What a scan found, besides the batches handed over as it went.
pub struct Scanned {
    pub folder: String,
    pub records: Vec<FileRecord>,
    /// The root, checked again after the scan: if it went away meanwhile, the records are void.
    pub root: Result<(), RootProblem>,
    pub full: bool,
    /// What it covered, and the files in it that could not be read.
    pub scope: Vec<String>,
    pub unreadable: Vec<(String, String)>,
    /// Files a full scan left because they were modified under `core::debounce::SETTLE` ago:
    /// to be looked at once they have settled.
    pub settling: Vec<String>,
}

impl ScanJob {
    /// Runs the scan on a blocking thread. Each batch of records found goes to `on_batch`, whose
    /// future (the Index taking the batch in) is awaited before the next batch is handed over;
    /// then `on_done` gets the result and how long the scan took, the last batch in first.
    pub fn spawn<Taken>(
        self,
        on_batch: impl Fn(Vec<FileRecord>) -> Taken + Send + Sync + 'static,
        on_done: impl FnOnce(Scanned, Duration) + Send + 'static,
    ) where
        Taken: Future + Send + 'static,
    {
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            // At most two batches on their way: a scan that finds records faster than the Index
            // commits them waits, instead of piling them up in its mailbox (300,000 new files:
            // 159 MiB of RSS, against 64 for 100,000).
            let pending: Arc<Mutex<Option<Taken>>> = Arc::new(Mutex::new(None));
            let last = pending.clone();
            let scanned = self.run(move |records| {
                let mut pending = pending.lock().expect("scan lock");
                if let Some(earlier) = pending.take() {
                    let _ = futures::executor::block_on(earlier);
                }
                *pending = Some(on_batch(records));
            });
            // The last batch is in before the scan's end is.
            if let Some(earlier) = last.lock().expect("scan lock").take() {
                let _ = futures::executor::block_on(earlier);
            }
            on_done(scanned, started.elapsed());
        });
    }

    /// Runs the scan (blocking). A walk's records go to `batch` as it goes, while the root still
    /// holds; the last part, and whether the root held to the end, are the result. Logs the
    /// "scan done" line with the count of records changed.
    pub fn run(self, batch: impl Fn(Vec<FileRecord>) + Send + Sync + 'static) -> Scanned {
        let ScanJob { store, folder, root, guard, params, me, filter, busy, scope, full, suspect, now } = self;
        let handed = Arc::new(AtomicUsize::new(0));
        let scanner = Scanner {
            root,
            params,
            me,
            ignore: filter.rules().clone(),
            busy,
            unreadable: Default::default(),
            links: filter.links(),
            progress: Some(Box::new({
                let (guard, handed) = (guard.clone(), handed.clone());
                move |records: Vec<FileRecord>| {
                    if guard.check().is_ok() {
                        handed.fetch_add(records.len(), Relaxed);
                        batch(records);
                    }
                }
            })),
            clock: full.then(|| Box::new(crate::fs::now_ns) as Box<dyn Fn() -> i64 + Send + Sync>),
            settling: Default::default(),
        };
        let started = std::time::Instant::now();
        let view = StoreView { store: &store, folder: &folder, suspect: &suspect };
        let records = match scanner.scan(&scope, &view, now) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(folder = %folder, error = %e, "scan failed");
                Vec::new()
            }
        };
        let ms = started.elapsed().as_millis() as u64;
        let changed = records.len() + handed.load(Relaxed);
        if full {
            tracing::debug!(folder = %folder, changed, ms, "full scan done");
        } else {
            tracing::debug!(folder = %folder, paths = scope.len(), changed, ms, "scan done");
        }
        let unreadable = std::mem::take(&mut *scanner.unreadable.lock().expect("scanner lock"));
        let settling = std::mem::take(&mut *scanner.settling.lock().expect("scanner lock"));
        if !settling.is_empty() {
            tracing::debug!(folder = %folder, files = settling.len(), "full scan: files modified under a second ago are looked at once they settle");
        }
        Scanned { folder, records, root: guard.check(), full, scope, unreadable, settling }
    }
}
