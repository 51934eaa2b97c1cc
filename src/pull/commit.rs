//! Committing finished downloads in batches.

use std::sync::Arc;
use std::time::Instant;

use super::PullError;
use crate::core::FileRecord;
use crate::fs::apply::{self, ApplyError, TempFile};
use crate::fs::scan::DiskState;
use crate::fs::versions::VersionStore;

/// Finished downloads wait here to be committed together: whatever arrives while one batch is being
/// made durable forms the next batch, so many small files share a flush instead of paying one each.
#[derive(Clone)]
pub struct CommitQueue(tokio::sync::mpsc::UnboundedSender<CommitJob>);

type CommitJob =
    (TempFile, FileRecord, Option<FileRecord>, tokio::sync::oneshot::Sender<Result<DiskState, ApplyError>>);

/// Most downloads committed with one flush.
const COMMIT_BATCH: usize = 256;

impl CommitQueue {
    /// Starts the committer task (on the current runtime); replaced files are kept in `versions`.
    pub fn start(versions: Arc<VersionStore>) -> CommitQueue {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<CommitJob>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut jobs = vec![first];
                while jobs.len() < COMMIT_BATCH {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                let (batch, replies): (Vec<_>, Vec<_>) =
                    jobs.into_iter().map(|(t, r, l, reply)| ((t, r, l), reply)).unzip();
                let (versions, files, started) = (versions.clone(), batch.len(), Instant::now());
                let Ok(results) = tokio::task::spawn_blocking(move || {
                    apply::commit_all_keeping(batch, Some(&*versions as &dyn apply::Keeper))
                })
                .await
                else {
                    continue;
                };
                tracing::debug!(files, ms = started.elapsed().as_millis() as u64, "downloads committed");
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
        });
        CommitQueue(tx)
    }

    pub(super) async fn commit(
        &self,
        temp: TempFile,
        record: FileRecord,
        local: Option<FileRecord>,
    ) -> Result<DiskState, PullError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.0.send((temp, record, local, reply)).map_err(|_| PullError::Stopped)?;
        Ok(answer.await.map_err(|_| PullError::Stopped)??)
    }
}
