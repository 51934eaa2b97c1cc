//! Carrying out one need of a folder, for the Puller actor: a directory, link or delete applied,
//! a file built in a temp file from the cheapest places (chunks this node already has, copied in
//! runs; the others fetched from the peers that announced this exact version, many in flight),
//! each chunk verified against its BLAKE3 hash, then committed under its real name only when
//! complete. Which needs run, and when, is decided in `core::pull`; this is the I/O of one.
//!
//! It sits beside `actors` (it sends their messages: chunk requests to Peers, `Applied` and
//! `LocalChanged` to the Index); only the Puller uses it.

mod commit;
mod fetch;
mod local;
pub mod queue;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use crate::actors::directory::PeerDirectory;
use crate::actors::messages::{Applied, IndexForPuller, LocalChanged, Outcome};
use crate::actors::status::FolderGauges;
use crate::core::pull::Sources;
use crate::core::replica::Need;
use crate::core::retry::FailureKind;
use crate::core::root::RootProblem;
use crate::core::{Action, FileKind, FileRecord};
use crate::fs::apply::{self, ApplyError, TempFile};
use crate::fs::reuse::Plan;
use crate::fs::root::{free_bytes, RootGuard};
use crate::fs::scan::DiskState;
use crate::fs::versions::VersionStore;
use crate::fs::INLINE_IO;
use crate::store::Store;
pub use commit::CommitQueue;
use fetch::{fetch_all, DownloadProgress, Tally};
pub use local::find_local;
use local::{holds, locate};

/// Space left free on the disk beyond a download's own size (for the index, logs, other writers).
const FREE_SPACE_MARGIN: u64 = 1 << 20;

/// What a pull needs besides the item: shared, cheap to clone, `Send`.
#[derive(Clone)]
pub struct PullContext {
    pub folder: String,
    pub commits: CommitQueue,
    pub root: PathBuf,
    /// Every folder's root, for chunks found in other folders.
    pub roots: Arc<HashMap<String, PathBuf>>,
    pub store: Arc<Store>,
    pub directory: PeerDirectory,
    pub index: IndexForPuller,
    pub gauges: Arc<FolderGauges>,
    /// The folder's root must still be the one indexed before anything is written under it.
    pub guard: Arc<RootGuard>,
    /// Where files that pulls replace or delete are kept first.
    pub versions: Arc<VersionStore>,
    /// The multi-threaded runtime the pulls run on (the Puller's own thread only decides).
    pub runtime: tokio::runtime::Handle,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("no connected peer has chunk {offset}+{size}")]
    NoSource { offset: u64, size: u32 },
    #[error("worker failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("the node is stopping")]
    Stopped,
    #[error("a chunk was still being written after the download ended")]
    StillWriting,
    #[error("not enough space: the file needs {need} bytes, {free} are free")]
    NoSpace { need: u64, free: u64 },
    #[error("{0}")]
    Root(RootProblem),
}

impl PullError {
    /// What would make the pull succeed (the retry policy acts on this, never on the message).
    pub fn kind(&self) -> FailureKind {
        match self {
            PullError::NoSpace { .. } => FailureKind::NeedsSpace,
            PullError::Apply(e) if e.is_permanent() => FailureKind::Refused,
            PullError::Apply(ApplyError::Io { source, .. }) => io_failure_kind(source),
            _ => FailureKind::Transient,
        }
    }
}

/// The kind of an I/O error: by its OS error number, else by its kind (errors rebuilt from a
/// batch commit keep only that).
fn io_failure_kind(e: &std::io::Error) -> FailureKind {
    use std::io::ErrorKind as K;
    match (e.raw_os_error(), e.kind()) {
        (Some(errno), _) => FailureKind::of_errno(errno),
        (None, K::StorageFull | K::QuotaExceeded) => FailureKind::NeedsSpace,
        (None, K::ReadOnlyFilesystem | K::PermissionDenied) => FailureKind::Permanent,
        _ => FailureKind::Transient,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, PullError> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

/// Carries out one need; tells the Index what it did.
pub async fn execute(ctx: &Arc<PullContext>, item: Need, sources: &Sources) -> Result<(), PullError> {
    ctx.guard.check().map_err(PullError::Root)?;
    let remote = item.remote.clone();
    let path = remote.path.clone();
    // `None`: a file put in place, which its commit batch told the Index.
    let outcome = match &item.action {
        Action::Take if remote.deleted => {
            let (root, p, local, versions, by) =
                (ctx.root.clone(), path.clone(), item.local.clone(), ctx.versions.clone(), remote.modified_by);
            let removed = blocking(move || {
                apply::remove_keeping(&root, &p, local.as_ref(), Some((&*versions as &dyn apply::Keeper, by)))
            })
            .await??;
            if removed {
                tracing::info!(folder = %ctx.folder, path = %path, "deleted");
            }
            Some(Outcome::Took { record: remote, disk: None })
        }
        Action::Take => {
            let disk = materialize(ctx, &remote, &path, item.local.clone(), sources).await?;
            put_in_place(remote, disk)
        }
        Action::ConflictLocalLoses { copy } => {
            let (root, p, c, local) = (ctx.root.clone(), path.clone(), copy.clone(), item.local.clone());
            let copy = blocking(move || apply::move_aside_recorded(&root, &p, local.as_ref(), &c)).await??;
            ctx.gauges.conflicts.fetch_add(1, Relaxed);
            tracing::warn!(folder = %ctx.folder, path = %path, copy = %copy, "conflict: our version kept as a copy");
            ctx.index.changed.do_send(LocalChanged { folder: ctx.folder.clone(), paths: vec![copy] });
            let disk = materialize(ctx, &remote, &path, None, sources).await?;
            put_in_place(remote, disk)
        }
        Action::ConflictRemoteLoses { copy } => {
            // A losing link is kept as a link under the copy's name, like a losing file.
            if matches!(remote.kind, FileKind::File | FileKind::Symlink) {
                let (root, c, wanted) = (ctx.root.clone(), copy.clone(), remote.clone());
                let has_remote = move |p: &std::path::Path| holds(p, &wanted);
                // The winner's node may have made this copy already, and it may have synced here.
                if let Some(copy) = blocking(move || apply::free_name(&root, &c, has_remote)).await? {
                    materialize(ctx, &remote, &copy, None, sources).await?;
                    ctx.index.changed.do_send(LocalChanged { folder: ctx.folder.clone(), paths: vec![copy] });
                }
            }
            ctx.gauges.conflicts.fetch_add(1, Relaxed);
            tracing::warn!(folder = %ctx.folder, path = %path, copy = %copy, "conflict: the peer's version kept as a copy");
            Some(Outcome::Reissue { path, other: remote.version })
        }
        Action::KeepLocal => Some(Outcome::Reissue { path, other: remote.version }),
        Action::Skip | Action::Merge => return Ok(()),
    };
    ctx.gauges.pulls.fetch_add(1, Relaxed);
    if let Some(outcome) = outcome {
        ctx.index.applied.do_send(Applied { folder: ctx.folder.clone(), outcomes: vec![outcome] });
    }
    Ok(())
}

/// What putting `record` in place at its own path leaves to tell the Index: nothing for a file (its
/// commit batch told it), the record and disk state for a directory or link.
fn put_in_place(record: FileRecord, disk: DiskState) -> Option<Outcome> {
    (record.kind != FileKind::File).then_some(Outcome::Took { record, disk: Some(disk) })
}

/// Where the chunks of `r` can come from, and its temp file at `target`: nothing is created
/// before it is known that the data can come from somewhere and fit.
fn prepare(
    ctx: &PullContext,
    r: &FileRecord,
    local: Option<&FileRecord>,
    sources: &Sources,
    target: &str,
) -> Result<(Plan, TempFile), PullError> {
    let plan = locate(&ctx.store, &ctx.roots, &ctx.root, r, local);
    if let Some(&first) = plan.missing().first() {
        let connected = sources.read().expect("sources lock").iter().any(|d| ctx.directory.connected(d).is_some());
        if !connected {
            let chunk = r.chunks[first];
            return Err(PullError::NoSource { offset: chunk.offset, size: chunk.size });
        }
    }
    let free = free_bytes(&ctx.root).unwrap_or(u64::MAX);
    if free < r.size.saturating_add(FREE_SPACE_MARGIN) {
        return Err(PullError::NoSpace { need: r.size, free });
    }
    Ok((plan, TempFile::create_replacing(&ctx.root, target, r.size, local)?))
}

/// Puts `record`'s content (or directory, or link) at `target`. A file put at the record's own path
/// (not a conflict copy under another name) is told to the Index by its commit batch, as taken.
async fn materialize(
    ctx: &Arc<PullContext>,
    record: &FileRecord,
    target: &str,
    local: Option<FileRecord>,
    sources: &Sources,
) -> Result<DiskState, PullError> {
    if record.kind == FileKind::Symlink {
        let (root, r, versions) =
            (ctx.root.clone(), FileRecord { path: target.to_string(), ..record.clone() }, ctx.versions.clone());
        let disk = blocking(move || {
            apply::make_link_keeping(&root, &r, local.as_ref(), Some((&*versions as &dyn apply::Keeper, r.modified_by)))
        })
        .await??;
        tracing::info!(folder = %ctx.folder, path = %target, "made link");
        return Ok(disk);
    }
    if record.kind == FileKind::Directory {
        let (root, r, versions) =
            (ctx.root.clone(), FileRecord { path: target.to_string(), ..record.clone() }, ctx.versions.clone());
        return Ok(blocking(move || {
            apply::make_dir_keeping(&root, &r, local.as_ref(), Some((&*versions as &dyn apply::Keeper, r.modified_by)))
        })
        .await??);
    }
    let started = Instant::now();
    // Where the chunks can come from, whether they fit, and the temp file: one trip to a blocking
    // thread, or none for a small file (index lookups and a create: cheaper than the two thread
    // switches of the trip, which were most of a small file's pull). Nothing is created before it
    // is known that the data can come from somewhere and fit.
    let (plan, temp) = if record.size <= INLINE_IO {
        prepare(ctx, record, local.as_ref(), sources, target)?
    } else {
        let (c, r, l, s, t) = (ctx.clone(), record.clone(), local.clone(), sources.clone(), target.to_string());
        blocking(move || prepare(&c, &r, l.as_ref(), &s, &t)).await??
    };
    let (plan, temp) = (Arc::new(plan), Arc::new(temp));
    let progress = Arc::new(DownloadProgress::new(ctx, target, record.size));
    // Local copies run beside the network fetches of the chunks nobody here has.
    // (Nothing located, as for most new files: no trip to a blocking thread.)
    let copying = {
        let (plan, temp, progress, chunks) = (plan.clone(), temp.clone(), progress.clone(), record.chunks.clone());
        async move {
            if plan.located.iter().all(Option::is_none) {
                return Ok(vec![false; chunks.len()]);
            }
            let threads = crate::fs::cores();
            tokio::task::spawn_blocking(move || plan.copy(&chunks, &temp, threads, &|n| progress.advance(n))).await
        }
    };
    let mut tally = Tally::default();
    let network = fetch_all(ctx, record, plan.missing(), sources, local.as_ref(), &temp, &progress, &mut tally, false);
    let located_ms = started.elapsed().as_millis();
    let (filled, mut result) = tokio::join!(copying, network);
    let filled = filled?;
    let copied_ms = started.elapsed().as_millis();
    tally.reused += record.chunks.iter().zip(&filled).filter(|(_, f)| **f).map(|(c, _)| c.size as u64).sum::<u64>();
    if result.is_ok() {
        // Local copies that turned out stale: other local files, else the network.
        let stale: Vec<usize> = (0..filled.len()).filter(|&i| plan.located[i].is_some() && !filled[i]).collect();
        result = fetch_all(ctx, record, stale, sources, local.as_ref(), &temp, &progress, &mut tally, true).await;
    }
    // On failure, writes of chunks that were still arriving may hold the temp file a moment longer:
    // its name goes now, its space when they are done.
    if let Err(e) = result {
        temp.abandon();
        return Err(e);
    }
    let temp = Arc::try_unwrap(temp).map_err(|temp| {
        temp.abandon();
        PullError::StillWriting
    })?;
    if let Err(problem) = ctx.guard.check() {
        temp.abandon();
        return Err(PullError::Root(problem));
    }
    let disk = ctx.commits.commit(temp, record.clone(), local, target == record.path).await?;
    ctx.gauges.bytes_reused.fetch_add(tally.reused, Relaxed);
    ctx.gauges.bytes_saved_on_wire.fetch_add(tally.received.saturating_sub(tally.wire), Relaxed);
    let from: Vec<String> = tally.by_peer.iter().map(|(d, n)| format!("{}:{n}", d.prefix())).collect();
    let ms = started.elapsed().as_millis();
    tracing::debug!(folder = %ctx.folder, path = %target, located_ms, copied_ms, ms, "pull timing");
    // `received`: chunk bytes that came from peers; `wire`: what carried them (signatures sent and
    // deltas or compressed data received); `reused`: bytes taken from local files; `from`: chunk
    // bytes by peer.
    tracing::info!(folder = %ctx.folder, path = %target, size = record.size, received = tally.received, wire = tally.wire, reused = tally.reused, from = ?from, ms, "pulled");
    Ok(disk)
}
