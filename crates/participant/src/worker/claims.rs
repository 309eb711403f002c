//! The idempotency store's records: a task's record is either a *claim*
//! (a worker is running its handler) or its *result*.
//!
//! Every write is conditional on the record's last revision, so exactly one
//! delivery of a task holds its claim at a time:
//!
//! - a delivery that finds no record creates a claim and runs the handler;
//! - one that finds a result publishes it without running the handler;
//! - one that finds a claim waits (keeping its message alive) until the
//!   claim turns into a result, or until it stayed unchanged for longer than
//!   its holder promised to refresh it (the holder died): then it takes the
//!   claim over. Staleness is measured on the waiting worker's own monotonic
//!   clock, so clocks that disagree between machines do not matter;
//! - the holder refreshes its claim every `ack_wait / 3` while the handler
//!   runs, and replaces it with the result when the handler returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use sagaflow_protocol::{InboxMessage, TaskMessage};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

/// A claim as stored:
/// `{"claim": {"worker": "...", "delivery": N, "staleAfterMs": N}}`.
#[derive(Debug, Serialize, Deserialize)]
struct ClaimRecord {
    claim: ClaimBody,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimBody {
    /// Who holds it (for the logs).
    worker: String,
    /// Which of the worker's deliveries holds it: with `worker`, tells a
    /// delivery its own claim from any other (a write whose answer was lost
    /// may have landed).
    #[serde(default)]
    delivery: u64,
    /// How long the claim may stay unchanged while its holder is alive.
    stale_after_ms: u64,
}

/// What a record holds, for a given task.
#[derive(Debug)]
enum Record {
    /// The task's result, as published.
    Result(Bytes),
    /// A worker's claim.
    Claim {
        worker: String,
        stale_after: Duration,
    },
    /// Anything else (another task's result, garbage): overwritten.
    Unreadable,
}

fn read(bytes: &Bytes, task: &TaskMessage) -> Record {
    if let Ok(ClaimRecord { claim }) = serde_json::from_slice::<ClaimRecord>(bytes) {
        return Record::Claim {
            worker: claim.worker,
            stale_after: Duration::from_millis(claim.stale_after_ms),
        };
    }
    match serde_json::from_slice::<InboxMessage>(bytes) {
        Ok(InboxMessage::TaskSucceeded {
            execution_arn,
            task_id,
            ..
        })
        | Ok(InboxMessage::TaskFailed {
            execution_arn,
            task_id,
            ..
        }) if execution_arn == task.execution_arn && task_id == task.task_id => {
            Record::Result(bytes.clone())
        }
        _ => Record::Unreadable,
    }
}

/// Whether `bytes` are a recorded result of `task`.
#[cfg(test)]
pub(super) fn is_result_of(bytes: &[u8], task: &TaskMessage) -> bool {
    matches!(
        read(&Bytes::copy_from_slice(bytes), task),
        Record::Result(_)
    )
}

/// A claim this delivery holds.
#[derive(Debug)]
pub(super) struct Held {
    /// The record's revision as this delivery last wrote it.
    revision: u64,
    /// The claim's bytes, unique to this delivery.
    bytes: Bytes,
}

/// How [`Claims::claim`] ended well.
#[derive(Debug)]
pub(super) enum Claimed {
    /// This delivery holds the claim: run the handler.
    Ours(Held),
    /// The task's result is recorded: publish it, do not run the handler.
    Recorded(Bytes),
}

/// Why [`Claims::claim`] gave up.
#[derive(Debug)]
pub(super) enum Unclaimed {
    /// The store could not be read or written.
    Store(String),
    /// The worker's shutdown grace period ended while waiting.
    Abandoned,
}

/// Why [`Claims::refresh`] failed.
#[derive(Debug)]
pub(super) enum RefreshError {
    /// Another delivery took the claim over.
    Lost,
    /// The store could not be read or written (tried again later).
    Store(String),
}

/// The record of a key as last written: `None` when there is none (never
/// written, deleted, purged or expired), else its value and revision; and
/// the revision a create must expect (0 when nothing was ever written).
async fn current(
    store: &kv::Store,
    key: &str,
) -> Result<(Option<(Bytes, u64)>, u64), kv::EntryError> {
    Ok(match store.entry(key).await? {
        None => (None, 0),
        Some(e) if matches!(e.operation, Operation::Delete | Operation::Purge) => {
            (None, e.revision)
        }
        Some(e) => (Some((e.value, e.revision)), e.revision),
    })
}

/// Pause after losing a write race, so that a store answering reads from a
/// lagging replica is not asked again and again at once.
const CONFLICT_PAUSE: Duration = Duration::from_millis(20);

/// The idempotency store of one worker.
#[derive(Clone)]
pub(super) struct Claims {
    store: kv::Store,
    /// This worker's name in its claims.
    worker: String,
    /// The staleness period its claims promise.
    stale_after: Duration,
    /// Numbers this worker's deliveries.
    deliveries: Arc<AtomicU64>,
    /// How often the wait for another worker's claim looks again.
    poll: Duration,
}

impl Claims {
    /// The store, with claims that promise a refresh within `ack_wait`
    /// (they are refreshed every `ack_wait / 3`).
    pub(super) fn new(store: kv::Store, worker: String, ack_wait: Duration) -> Self {
        Self {
            store,
            worker,
            stale_after: ack_wait,
            deliveries: Arc::new(AtomicU64::new(0)),
            poll: (ack_wait / 3).clamp(Duration::from_millis(10), Duration::from_secs(1)),
        }
    }

    /// A claim for a new delivery.
    fn new_claim(&self) -> Bytes {
        let claim = ClaimRecord {
            claim: ClaimBody {
                worker: self.worker.clone(),
                delivery: self.deliveries.fetch_add(1, Ordering::Relaxed),
                stale_after_ms: u64::try_from(self.stale_after.as_millis()).unwrap_or(u64::MAX),
            },
        };
        // Serializing strings and numbers cannot fail.
        Bytes::from(serde_json::to_vec(&claim).unwrap_or_default())
    }

    /// Claims `key` for this delivery of `task`, or finds its result;
    /// waits (sending progress on `message`) while another worker holds a
    /// live claim.
    pub(super) async fn claim(
        &self,
        key: &str,
        task: &TaskMessage,
        message: &async_nats::jetstream::Message,
        abandon: &watch::Receiver<bool>,
    ) -> Result<Claimed, Unclaimed> {
        let bytes = self.new_claim();
        // Another worker's claim being watched: its revision and when it was
        // first seen at that revision.
        let mut watching: Option<(u64, Instant)> = None;
        // A write that failed without saying whether it landed.
        let mut unsure: Option<String> = None;
        loop {
            let (record, revision) = current(&self.store, key)
                .await
                .map_err(|e| Unclaimed::Store(e.to_string()))?;
            let expected = match record {
                Some((value, revision)) if value == bytes => {
                    // Our own write, whose answer was lost.
                    return Ok(Claimed::Ours(Held { revision, bytes }));
                }
                _ if unsure.is_some() => {
                    return Err(Unclaimed::Store(unsure.unwrap_or_default()));
                }
                None => revision,
                Some((value, revision)) => match read(&value, task) {
                    Record::Result(bytes) => return Ok(Claimed::Recorded(bytes)),
                    Record::Unreadable => {
                        tracing::warn!("unreadable idempotency record: running the handler again");
                        revision
                    }
                    Record::Claim {
                        worker,
                        stale_after,
                    } => {
                        let now = Instant::now();
                        match watching {
                            Some((seen, since)) if seen == revision => {
                                if now.duration_since(since) <= stale_after {
                                    self.wait(message, abandon).await?;
                                    continue;
                                }
                                tracing::warn!(
                                    %worker,
                                    unchanged_for = ?now.duration_since(since),
                                    "the worker running this task stopped refreshing its claim: taking it over"
                                );
                                revision
                            }
                            _ => {
                                if watching.is_none() {
                                    tracing::info!(%worker, "task running on another worker: waiting for its result");
                                }
                                watching = Some((revision, now));
                                self.wait(message, abandon).await?;
                                continue;
                            }
                        }
                    }
                },
            };
            match self.store.update(key, bytes.clone(), expected).await {
                Ok(revision) => return Ok(Claimed::Ours(Held { revision, bytes })),
                // Someone wrote first: look again.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tokio::time::sleep(CONFLICT_PAUSE).await;
                }
                // It may have landed all the same: look once more.
                Err(e) => unsure = Some(e.to_string()),
            }
        }
    }

    /// One pause of the wait for another worker's claim.
    async fn wait(
        &self,
        message: &async_nats::jetstream::Message,
        abandon: &watch::Receiver<bool>,
    ) -> Result<(), Unclaimed> {
        super::task::progress(message).await;
        let mut abandon = abandon.clone();
        tokio::select! {
            () = tokio::time::sleep(self.poll) => Ok(()),
            Ok(_) = abandon.wait_for(|a| *a) => Err(Unclaimed::Abandoned),
        }
    }

    /// Refreshes a claim this delivery holds.
    pub(super) async fn refresh(&self, key: &str, held: &mut Held) -> Result<(), RefreshError> {
        match self
            .store
            .update(key, held.bytes.clone(), held.revision)
            .await
        {
            Ok(revision) => {
                held.revision = revision;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // Lost to another delivery, unless an earlier refresh whose
                // answer was lost moved the revision on.
                match current(&self.store, key).await {
                    Ok((Some((value, revision)), _)) if value == held.bytes => {
                        held.revision = revision;
                        Ok(())
                    }
                    Ok(_) => Err(RefreshError::Lost),
                    Err(e) => Err(RefreshError::Store(e.to_string())),
                }
            }
            Err(e) => Err(RefreshError::Store(e.to_string())),
        }
    }

    /// Gives up a claim (the task is handed back), so that the task's next
    /// delivery need not wait for it to go stale.
    pub(super) async fn release(&self, key: &str, held: &Held) {
        let revision = match current(&self.store, key).await {
            Ok((Some((value, revision)), _)) if value == held.bytes => revision,
            // Not ours any more, or unknown: leave it.
            _ => return,
        };
        if let Err(e) = self.store.delete_expect_revision(key, Some(revision)).await {
            tracing::debug!(error = %e, "claim not released; it goes stale");
        }
    }

    /// Records `payload`, this delivery's result, in place of its claim
    /// (`None`: it was lost), and returns the result to publish: this one,
    /// or one recorded first by another delivery.
    pub(super) async fn record(
        &self,
        key: &str,
        task: &TaskMessage,
        held: Option<&Held>,
        payload: Bytes,
    ) -> Bytes {
        let mut expected = held.map(|h| h.revision);
        // Each round loses only to a write made meanwhile; a handful is
        // plenty (the result is published either way).
        for _ in 0..8 {
            let revision = match expected.take() {
                Some(revision) => revision,
                None => match current(&self.store, key).await {
                    Ok((None, revision)) => revision,
                    Ok((Some((value, revision)), _)) => match read(&value, task) {
                        // Another delivery finished first: every delivery
                        // publishes the same result.
                        Record::Result(recorded) => return recorded,
                        // Our claim (a refresh whose answer was lost), or
                        // another delivery's that took it over and still
                        // runs: the first result recorded wins.
                        Record::Claim { .. } | Record::Unreadable => revision,
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the idempotency store; publishing the result unrecorded");
                        return payload;
                    }
                },
            };
            match self.store.update(key, payload.clone(), revision).await {
                Ok(_) => return payload,
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tokio::time::sleep(CONFLICT_PAUSE).await;
                }
                Err(e) => {
                    // The result is still published: the handler ran, and
                    // handing the task back would only run it again.
                    tracing::warn!(error = %e, "cannot record the result in the idempotency store; publishing it anyway");
                    return payload;
                }
            }
        }
        tracing::warn!("the idempotency record kept changing; publishing this delivery's result");
        payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TaskMessage {
        serde_json::from_value(serde_json::json!({
            "executionArn": "arn:aws:states:local:0:execution:m:e",
            "executionName": "e",
            "stateMachine": "m",
            "taskId": "T@0#0",
            "stateName": "T",
            "resource": "t",
            "handler": "t",
            "input": {},
            "attempt": 0,
            "replyTo": "sagaflow.inbox.0.x"
        }))
        .expect("a task message")
    }

    #[test]
    fn a_claim_a_result_and_anything_else_are_told_apart() {
        let claim = ClaimRecord {
            claim: ClaimBody {
                worker: "w".into(),
                delivery: 3,
                stale_after_ms: 1500,
            },
        };
        let bytes = Bytes::from(serde_json::to_vec(&claim).expect("json"));
        assert!(matches!(
            read(&bytes, &task()),
            Record::Claim { worker, stale_after } if worker == "w" && stale_after == Duration::from_millis(1500)
        ));
        let result = |task_id: &str| {
            Bytes::from(
                serde_json::to_vec(&InboxMessage::TaskSucceeded {
                    execution_arn: "arn:aws:states:local:0:execution:m:e".into(),
                    task_id: task_id.into(),
                    output: serde_json::json!(1),
                    callback: false,
                })
                .expect("json"),
            )
        };
        assert!(matches!(read(&result("T@0#0"), &task()), Record::Result(_)));
        assert!(matches!(
            read(&result("T@0#1"), &task()),
            Record::Unreadable
        ));
        assert!(matches!(
            read(&Bytes::from_static(b"\xff"), &task()),
            Record::Unreadable
        ));
    }
}
