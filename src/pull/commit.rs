//! Committing finished downloads in batches.

use std::sync::Arc;
use std::time::Instant;

use actix::Recipient;

use super::PullError;
use crate::actors::messages::{Applied, Outcome};
use crate::core::FileRecord;
use crate::fs::apply::{self, ApplyError, TempFile};
use crate::fs::scan::DiskState;
use crate::fs::versions::VersionStore;

/// Finished downloads wait here to be committed together: whatever arrives while one batch is being
/// made durable forms the next batch, so many small files share a flush instead of paying one each.
#[derive(Clone)]
pub struct CommitQueue(tokio::sync::mpsc::UnboundedSender<CommitJob>);

/// A finished download: the temp file, the record it becomes, our record it replaces, whether the
/// batch reports it to the Index, and where its result goes.
type CommitJob =
    (TempFile, FileRecord, Option<FileRecord>, bool, tokio::sync::oneshot::Sender<Result<DiskState, ApplyError>>);

/// Most downloads committed with one flush: every small file in flight (`SMALL_FILES_IN_FLIGHT`).
const COMMIT_BATCH: usize = crate::core::pull::SMALL_FILES_IN_FLIGHT;

impl CommitQueue {
    /// Starts the committer task (on the current runtime); replaced files are kept in `versions`.
    /// What a batch put in place is told to the Index as one `Applied` (one write of the index for
    /// the batch, not one per file), before any of its pulls goes on.
    pub fn start(versions: Arc<VersionStore>, folder: String, applied: Recipient<Applied>) -> CommitQueue {
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
                let mut batch = Vec::with_capacity(jobs.len());
                let mut waiting = Vec::with_capacity(jobs.len());
                for (temp, record, local, report, reply) in jobs {
                    waiting.push((report.then(|| record.clone()), reply));
                    batch.push((temp, record, local));
                }
                let (versions, files, started) = (versions.clone(), batch.len(), Instant::now());
                let Ok(results) = tokio::task::spawn_blocking(move || {
                    apply::commit_all_keeping(batch, Some(&*versions as &dyn apply::Keeper))
                })
                .await
                else {
                    continue;
                };
                tracing::debug!(files, ms = started.elapsed().as_millis() as u64, "downloads committed");
                let outcomes: Vec<Outcome> = waiting
                    .iter()
                    .zip(&results)
                    .filter_map(|((record, _), result)| match (record, result) {
                        (Some(record), Ok(disk)) => Some(Outcome::Took { record: record.clone(), disk: Some(*disk) }),
                        _ => None,
                    })
                    .collect();
                if !outcomes.is_empty() {
                    applied.do_send(Applied { folder: folder.clone(), outcomes });
                }
                for ((_, reply), result) in waiting.into_iter().zip(results) {
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
        report: bool,
    ) -> Result<DiskState, PullError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.0.send((temp, record, local, report, reply)).map_err(|_| PullError::Stopped)?;
        Ok(answer.await.map_err(|_| PullError::Stopped)??)
    }
}
