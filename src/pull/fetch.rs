//! Fetching the chunks of one file nobody here has, from the peers that announced its version:
//! about `BYTES_IN_FLIGHT` requested at a time, spread over every source, each answer verified and
//! written as soon as it arrives; with our old data of a chunk's region, the peer may answer with
//! an rsync delta against it.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{blocking, find_local, PullContext, PullError};
use crate::actors::messages::Fetched;
use crate::actors::status::FolderGauges;
use crate::core::pull::Sources;
use crate::core::{Chunk, DeviceId, FileRecord};
use crate::fs::apply::TempFile;
use crate::fs::chunker::{hash, read_range};
use crate::fs::safe_path::open_inside;
use crate::fs::INLINE_IO;
use crate::net::wire::FetchError;

const CHUNKS_IN_FLIGHT: usize = 16;
/// Bytes of one file requested and not yet received: enough to keep a fast link busy while each
/// chunk pays its round trip, and bounded so memory stays flat (8 files × 4 MiB at most).
const BYTES_IN_FLIGHT: u64 = 4 << 20;
/// Chunks smaller than this are fetched whole: a signature would cost more than it saves.
const DELTA_MIN_CHUNK: u32 = 4096;

/// rsync block size for an old chunk: about 64 blocks per chunk, at least 256 bytes. The signature
/// then costs 12 bytes per block (a 4-byte rolling checksum and 8 bytes of MD4), about 1.2% of the
/// chunk, and a one-byte change costs one block of literal data in the delta.
fn delta_block(size: u32) -> u32 {
    (size / 64).clamp(256, 16 * 1024)
}

/// Bytes of one file by where they came from.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) received: u64,
    /// Bytes on the wire for the `received` ones.
    pub(super) wire: u64,
    pub(super) reused: u64,
    pub(super) by_peer: HashMap<DeviceId, u64>,
}

/// Fetches chunks `indices` of `record` and writes them into `temp`, with about
/// `BYTES_IN_FLIGHT` requested at a time (at least `CHUNKS_IN_FLIGHT` chunks). Each chunk is written
/// as soon as it arrives, while the others are still on their way.
#[allow(clippy::too_many_arguments)]
pub(super) async fn fetch_all(
    ctx: &PullContext,
    record: &FileRecord,
    indices: Vec<usize>,
    sources: &Sources,
    previous: Option<&FileRecord>,
    temp: &Arc<TempFile>,
    progress: &DownloadProgress,
    tally: &mut Tally,
    try_local: bool,
) -> Result<(), PullError> {
    let average = (record.size / record.chunks.len().max(1) as u64).max(1);
    let in_flight = ((BYTES_IN_FLIGHT / average) as usize).clamp(CHUNKS_IN_FLIGHT, 8 * CHUNKS_IN_FLIGHT);
    let mut results = futures::stream::iter(indices)
        .map(|i| async move {
            let (chunk, data, from) =
                fetch_chunk(ctx, record, record.chunks[i], sources, i, previous, try_local).await?;
            let len = data.len() as u64;
            if len <= INLINE_IO {
                temp.write_at(chunk.offset, &data)?;
            } else {
                let temp = temp.clone();
                blocking(move || temp.write_at(chunk.offset, &data)).await??;
            }
            progress.advance(len);
            Ok::<_, PullError>((len, from))
        })
        .buffer_unordered(in_flight);
    while let Some(result) = results.next().await {
        match result? {
            (len, Some((d, wire))) => {
                tally.received += len;
                tally.wire += wire;
                *tally.by_peer.entry(d).or_default() += len;
            }
            (len, None) => tally.reused += len,
        }
    }
    Ok(())
}

/// One chunk's bytes, verified: from a local file if any has it, else from a peer (which one, and
/// the bytes the exchange cost on the wire).
async fn fetch_chunk(
    ctx: &PullContext,
    record: &FileRecord,
    chunk: Chunk,
    sources: &Sources,
    index: usize,
    previous: Option<&FileRecord>,
    try_local: bool,
) -> Result<(Chunk, Vec<u8>, Option<(DeviceId, u64)>), PullError> {
    let (store, roots) = (ctx.store.clone(), ctx.roots.clone());
    if try_local {
        if let Some(data) = blocking(move || find_local(&store, &roots, &chunk)).await? {
            return Ok((chunk, data, None));
        }
    }
    // Our old data for this region, to receive a delta against instead of the whole chunk.
    let old = previous.filter(|p| !p.deleted && chunk.size >= DELTA_MIN_CHUNK).and_then(|p| {
        p.chunks.iter().find(|o| o.offset == chunk.offset).or(p.chunks.get(index)).map(|o| (p.path.clone(), *o))
    });
    let (base, signature) = match old {
        Some((path, old)) => {
            let root = ctx.root.clone();
            blocking(move || {
                let file = open_inside(&root, &path).ok()?;
                let data = read_range(&file, old.offset, old.size).ok()??;
                (hash(&data) == old.hash).then(|| {
                    let options =
                        fast_rsync::SignatureOptions { block_size: delta_block(old.size), crypto_hash_size: 8 };
                    let signature = fast_rsync::Signature::calculate(&data, options).into_serialized();
                    (Some(Arc::new(data)), signature)
                })
            })
            .await?
            .unwrap_or((None, Vec::new()))
        }
        None => (None, Vec::new()),
    };
    // Spread the chunks of a file over every peer that has this version.
    let sources = sources.read().expect("sources lock").clone();
    let n = sources.len().max(1);
    for k in 0..sources.len() {
        let device = sources[(index + k) % n];
        let Some(peer) = ctx.directory.connected(&device) else { continue };
        let asked = peer.fetch.fetch(ctx.folder.clone(), record.path.clone(), &chunk, signature.clone(), base.clone());
        match asked.await {
            Ok(Fetched { data, wire }) if data.len() == chunk.size as usize && hash(&data) == chunk.hash => {
                return Ok((chunk, data, Some((device, wire))))
            }
            Ok(_) => {
                tracing::warn!(peer = %device.prefix(), path = %record.path, "chunk failed verification; trying another source")
            }
            Err(e) => fetch_failed(ctx, &device, &record.path, &e),
        }
    }
    Err(PullError::NoSource { offset: chunk.offset, size: chunk.size })
}

/// Counts a chunk request to `device` that failed, and logs it once per peer and kind of failure
/// (a peer that announces many files it never serves costs one line, not one per file).
fn fetch_failed(ctx: &PullContext, device: &DeviceId, path: &str, error: &FetchError) {
    let counters = ctx.directory.counters(device);
    counters.failed_fetch();
    let kind = match error {
        FetchError::TimedOut => "fetch timed out",
        FetchError::Closed => "fetch cut off",
        FetchError::BadAnswer(_) => "fetch answered badly",
        FetchError::Refused { .. } => "fetch refused",
    };
    if counters.first(kind) {
        // The peer wrote the detail text: a line of it is enough.
        let error: String = error.to_string().chars().take(200).collect();
        tracing::warn!(peer = %device.prefix(), kind, error, "chunk requests to this peer fail (further failures only counted)");
    } else {
        tracing::debug!(peer = %device.prefix(), path, error = %error, "chunk request failed");
    }
}

/// Progress of one large download: in the status gauges, and a log line every few seconds
/// (percent and rate), never one per chunk. Shared with the threads that copy local chunks.
pub(super) struct DownloadProgress {
    gauges: Arc<FolderGauges>,
    folder: String,
    path: String,
    total: u64,
    done: AtomicU64,
    started: Instant,
    last_log: Mutex<Instant>,
}

impl DownloadProgress {
    const LOG_EVERY: Duration = Duration::from_secs(3);

    pub(super) fn new(ctx: &PullContext, path: &str, total: u64) -> Self {
        ctx.gauges.current_total.store(total, Relaxed);
        ctx.gauges.current_done.store(0, Relaxed);
        let now = Instant::now();
        let (gauges, folder) = (ctx.gauges.clone(), ctx.folder.clone());
        DownloadProgress {
            gauges,
            folder,
            path: path.to_string(),
            total,
            done: AtomicU64::new(0),
            started: now,
            last_log: Mutex::new(now),
        }
    }

    pub(super) fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Relaxed) + n;
        self.gauges.current_done.store(done, Relaxed);
        let Ok(mut last_log) = self.last_log.try_lock() else { return };
        if last_log.elapsed() >= Self::LOG_EVERY {
            *last_log = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            let percent = 100.0 * done as f64 / self.total.max(1) as f64;
            let mib_per_s = done as f64 / secs / (1 << 20) as f64;
            tracing::info!(folder = %self.folder, path = %self.path, percent = format!("{percent:.0}"), rate = format!("{mib_per_s:.1} MiB/s"), "pulling");
        }
    }
}

impl Drop for DownloadProgress {
    fn drop(&mut self) {
        self.gauges.current_total.store(0, Relaxed);
        self.gauges.current_done.store(0, Relaxed);
    }
}
