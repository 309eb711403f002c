//! Durable state in JetStream: execution histories, state machine versions
//! and the execution index.
//!
//! - **History**: one subject per execution (`sagaflow.history.P.KEY`) in
//!   the history stream. Each message is a [`HistoryBatch`]: the events one
//!   coordinator step applied, each with the commands it produced. Appends
//!   carry `Nats-Expected-Last-Subject-Sequence`, so two coordinators can
//!   never both advance an execution: the second append fails with
//!   [`StoreError::Conflict`].
//! - **State machines**: in the machines bucket, `v.NAME.N` holds version N
//!   and `m.NAME` the latest version number (NAME base64url-encoded, as KV
//!   keys allow few characters).
//! - **Execution index**: in the executions bucket, `e.P.KEY` holds an
//!   [`ExecutionDescription`] without input and output, written when an
//!   execution starts and when it ends.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use base64::Engine as _;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use sagaflow_nats::Infra;
use sagaflow_protocol::api::{
    ExecutionDescription, ExecutionStatus, StateMachineSummary, StateMachineVersion,
};
use sagaflow_protocol::{ExecutionRef, ParentTask, headers, state_machine_arn};

use crate::driver::HistoryEntry;

/// Who an execution is beyond its events: written in its first history
/// batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionMeta {
    /// The state machine's name.
    pub state_machine: String,
    /// The version it runs.
    pub version: u64,
    /// The caller's W3C trace context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The `traceparent` of the execution's own span (when traced): the
    /// spans of every later step, in any process, hang under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_span: Option<String>,
    /// The parent task waiting for this execution (`.sync`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentTask>,
}

/// What [`Store::forget_execution`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forget {
    /// Deleted: history, index entry, idempotency records.
    Forgotten,
    /// Nothing: its index entry says it runs.
    Running,
    /// Nothing: its index entry says it ended but its history runs (a
    /// redrive after the entry was written late); it needs reloading.
    RunningByItsHistory,
}

/// Whether a history ends with its execution's end: a completion not
/// followed by a redrive. An empty history (a start never recorded) has
/// nothing running.
fn history_ended(history: &StoredHistory) -> bool {
    use crate::driver::HistoryItem;
    use sagaflow_asl::interp::{Command, Event};
    let mut ended = true;
    for entry in history.batches.iter().flat_map(|b| &b.entries) {
        match &entry.item {
            HistoryItem::Event(Event::ExecutionStarted { .. } | Event::RedriveRequested) => {
                ended = false;
            }
            HistoryItem::Command(Command::Complete(_)) => ended = true,
            _ => {}
        }
    }
    ended
}

/// How long a history read waits for its next message before it gives up.
const HISTORY_READ_IDLE: Duration = Duration::from_secs(10);

/// The first step of a history, as [`Store::first_history_step`] finds it.
#[derive(Debug, Clone, PartialEq)]
pub enum FirstStep {
    /// No history.
    None,
    /// Stored in one message.
    Whole(HistoryBatch),
    /// Stored in parts (or its first message is the part of a step that
    /// was never stored whole): read the whole history
    /// ([`Store::read_history`] puts the parts together).
    InParts,
}

/// What one coordinator step did to one execution: one history message, or
/// several (its parts) when it does not fit in one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryBatch {
    /// Present in the first batch of an execution only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<ExecutionMeta>,
    /// The events applied, each followed by the commands it produced.
    pub entries: Vec<HistoryEntry>,
    /// Which part of its step this message holds, when the step was stored
    /// in parts ([`Store::send_history_in_parts`]); `None` for a whole step,
    /// and always in the batches [`Store::read_history`] returns (it puts
    /// the parts back together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<BatchPart>,
}

/// One part of a step stored over several history messages: the parts of
/// a step are consecutive on its execution's subject, numbered from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchPart {
    /// This part's number, from 0.
    pub index: u32,
    /// How many parts the step has.
    pub count: u32,
}

/// A history read back: its batches and the stream sequence of the last one
/// (0 when there is none), which the next append must expect.
#[derive(Debug, Clone, Default)]
pub struct StoredHistory {
    /// The batches, oldest first.
    pub batches: Vec<HistoryBatch>,
    /// Stream sequence of the last batch (0: no history).
    pub last_sequence: u64,
}

/// One change to the execution index (see
/// [`Store::partition_index_changes`]).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexChange {
    /// The execution's key ([`ExecutionRef::key`]).
    pub key: String,
    /// Its entry now; `None` when it was deleted.
    pub entry: Option<ExecutionDescription>,
}

/// A storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer advanced the execution first (optimistic concurrency).
    #[error("the history of {execution} was advanced by another coordinator")]
    Conflict {
        /// The execution's ARN.
        execution: String,
    },
    /// A message or value was too large for the stream or bucket.
    #[error("a {what} of {bytes} bytes exceeds the server's limit")]
    TooLarge {
        /// What was written.
        what: &'static str,
        /// Its size.
        bytes: usize,
    },
    /// A stored value did not decode (written by something else).
    #[error("corrupt {what} at {key}: {message}")]
    Corrupt {
        /// What was read.
        what: &'static str,
        /// Where.
        key: String,
        /// The decoder's message.
        message: String,
    },
    /// NATS failed.
    #[error("{operation}: {message}")]
    Nats {
        /// What was being done.
        operation: &'static str,
        /// The client's error.
        message: String,
    },
}

fn nats(operation: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StoreError {
    move |e| StoreError::Nats {
        operation,
        message: e.to_string(),
    }
}

/// A JSON value from a bucket; `None` when the key is absent.
async fn get_json<T: serde::de::DeserializeOwned>(
    bucket: &kv::Store,
    key: String,
    what: &'static str,
) -> Result<Option<T>, StoreError> {
    let Some(bytes) = bucket.get(&key).await.map_err(|e| StoreError::Nats {
        operation: "read",
        message: format!("{what} {key}: {e}"),
    })?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            what,
            key,
            message: e.to_string(),
        })
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// Where a page of [`Store::list_executions_page`] ended: the start date
/// and ARN of its last execution. Its text form is the API's `nextToken`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPosition {
    start_date: String,
    arn: String,
}

impl ListPosition {
    /// The `nextToken` text.
    pub fn token(&self) -> String {
        format!("{} {}", self.start_date, self.arn)
    }

    /// Reads a `nextToken`; `None` when it is not one.
    pub fn parse(token: &str) -> Option<ListPosition> {
        let (start_date, arn) = token.split_once(' ')?;
        if start_date.is_empty() || arn.is_empty() {
            return None;
        }
        Some(ListPosition {
            start_date: start_date.to_string(),
            arn: arn.to_string(),
        })
    }
}

/// Listing order: newest first, then by ARN. `a < b` when `a` is listed
/// before `b`.
impl Ord for ListPosition {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .start_date
            .cmp(&self.start_date)
            .then_with(|| self.arn.cmp(&other.arn))
    }
}

impl PartialOrd for ListPosition {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// An index entry in listing order ([`ListPosition`]'s).
struct Listed(ExecutionDescription);

impl Listed {
    fn position(&self) -> ListPosition {
        ListPosition {
            start_date: self.0.start_date.clone(),
            arn: self.0.execution_arn.clone(),
        }
    }
}

impl PartialEq for Listed {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Listed {}

impl Ord for Listed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .start_date
            .cmp(&other.0.start_date)
            .reverse()
            .then_with(|| self.0.execution_arn.cmp(&other.0.execution_arn))
    }
}

impl PartialOrd for Listed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Bytes kept free in a history message for its headers.
const HEADER_ROOM: usize = 1024;

fn encode_batch(exec: &ExecutionRef, batch: &HistoryBatch) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(batch).map_err(|e| StoreError::Corrupt {
        what: "history batch",
        key: exec.arn(),
        message: e.to_string(),
    })
}

/// A batch as parts of at most `limit` bytes each, encoded, in order: as
/// many entries in each as fit, the execution's meta in the first.
/// [`StoreError::TooLarge`] when one entry alone does not fit.
fn split_batch(
    exec: &ExecutionRef,
    batch: &HistoryBatch,
    limit: usize,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let too_large = |bytes| StoreError::TooLarge {
        what: "history batch entry",
        bytes,
    };
    // What a part costs besides its entries (with the largest numbers).
    let frame = |meta: Option<ExecutionMeta>| {
        encode_batch(
            exec,
            &HistoryBatch {
                meta,
                entries: Vec::new(),
                part: Some(BatchPart {
                    index: u32::MAX,
                    count: u32::MAX,
                }),
            },
        )
        .map(|b| b.len())
    };
    let first_frame = frame(batch.meta.clone())?;
    let later_frame = frame(None)?;
    // Entry ranges: each entry costs its encoding and a comma.
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    let (mut start, mut size) = (0, first_frame);
    for (i, entry) in batch.entries.iter().enumerate() {
        let cost = serde_json::to_vec(entry)
            .map_err(|e| StoreError::Corrupt {
                what: "history entry",
                key: exec.arn(),
                message: e.to_string(),
            })?
            .len()
            + 1;
        if size + cost > limit && i > start {
            ranges.push(start..i);
            (start, size) = (i, later_frame);
        }
        if size + cost > limit {
            return Err(too_large(size + cost));
        }
        size += cost;
    }
    ranges.push(start..batch.entries.len());
    let count = u32::try_from(ranges.len()).map_err(|_| too_large(usize::MAX))?;
    ranges
        .into_iter()
        .zip(0..)
        .map(|(range, index)| {
            let body = encode_batch(
                exec,
                &HistoryBatch {
                    meta: if index == 0 { batch.meta.clone() } else { None },
                    entries: batch.entries[range].to_vec(),
                    part: Some(BatchPart { index, count }),
                },
            )?;
            if body.len() > limit {
                return Err(too_large(body.len()));
            }
            Ok(body)
        })
        .collect()
}

/// Puts the batches of a history back together as they are read: the
/// parts of a step become one batch again, and the parts of a step whose
/// append did not finish (the writer died or lost NATS between its parts)
/// are left out, as that step was not recorded.
#[derive(Default)]
struct Assembler {
    batches: Vec<HistoryBatch>,
    /// The step being put together, and how many of its parts came.
    open: Option<(HistoryBatch, u32)>,
    /// Parts left out.
    left_out: usize,
}

impl Assembler {
    fn push(&mut self, batch: HistoryBatch) {
        let Some(part) = batch.part else {
            self.leave_open_out();
            self.batches.push(batch);
            return;
        };
        match &mut self.open {
            Some((open, received))
                if part.index == *received
                    && part.index > 0
                    && open.part.is_some_and(|p| p.count == part.count) =>
            {
                open.entries.extend(batch.entries);
                *received += 1;
            }
            _ => {
                self.leave_open_out();
                if part.index != 0 {
                    self.left_out += 1;
                    return;
                }
                self.open = Some((batch, 1));
            }
        }
        if let Some((open, received)) = &self.open
            && open.part.is_some_and(|p| p.count <= *received)
            && let Some((mut whole, _)) = self.open.take()
        {
            whole.part = None;
            self.batches.push(whole);
        }
    }

    fn leave_open_out(&mut self) {
        if let Some((_, received)) = self.open.take() {
            self.left_out += received as usize;
        }
    }

    /// The whole batches, and how many parts were left out.
    fn finish(mut self) -> (Vec<HistoryBatch>, usize) {
        self.leave_open_out();
        (self.batches, self.left_out)
    }
}

/// Durable state of one deployment. Cheap to clone (the streams and
/// buckets are shared).
#[derive(Clone)]
pub struct Store {
    infra: std::sync::Arc<Infra>,
    partitions: u32,
}

impl Store {
    /// A store over the streams and buckets of `infra`, with executions
    /// spread over `partitions` partitions.
    pub fn new(infra: Infra, partitions: u32) -> Store {
        Store {
            infra: std::sync::Arc::new(infra),
            partitions: partitions.max(1),
        }
    }

    /// The streams and buckets.
    pub fn infra(&self) -> &Infra {
        &self.infra
    }

    /// The number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition of an execution.
    pub fn partition_of(&self, exec: &ExecutionRef) -> u32 {
        exec.partition(self.partitions)
    }

    // ------------------------------------------------------------- history

    /// Appends a batch to an execution's history, expecting its last batch
    /// to be at `expected_last_sequence` (0: no history yet). Returns the
    /// new batch's sequence.
    pub async fn append_history(
        &self,
        exec: &ExecutionRef,
        expected_last_sequence: u64,
        batch: &HistoryBatch,
    ) -> Result<u64, StoreError> {
        let ack = self
            .send_history(exec, expected_last_sequence, batch)
            .await?;
        self.await_history(exec, ack).await
    }

    /// The first half of [`Store::append_history`]: sends the append and
    /// returns the pending acknowledgement, so that appends to different
    /// executions can be pipelined. A batch larger than a message is
    /// refused ([`StoreError::TooLarge`]); see
    /// [`Store::send_history_in_parts`].
    pub async fn send_history(
        &self,
        exec: &ExecutionRef,
        expected_last_sequence: u64,
        batch: &HistoryBatch,
    ) -> Result<jetstream::context::PublishAckFuture, StoreError> {
        let body = encode_batch(exec, batch)?;
        if body.len() > self.history_message_limit() {
            return Err(StoreError::TooLarge {
                what: "history batch",
                bytes: body.len(),
            });
        }
        self.publish_history(exec, expected_last_sequence, body)
            .await
    }

    /// [`Store::send_history`] for a batch too large for one message: it is
    /// stored as consecutive parts, each appended expecting the one before
    /// (so no other writer can come between them), the first expecting
    /// `expected_last_sequence`. The parts before the last are awaited
    /// here; the last one's acknowledgement is returned, for
    /// [`Store::await_history`]. Parts of a step whose append did not
    /// finish are left out when the history is read: the step was not
    /// recorded, and the next append (expecting the last part's sequence)
    /// comes after them. [`StoreError::TooLarge`] when a single entry does
    /// not fit in a message.
    pub async fn send_history_in_parts(
        &self,
        exec: &ExecutionRef,
        expected_last_sequence: u64,
        batch: &HistoryBatch,
    ) -> Result<jetstream::context::PublishAckFuture, StoreError> {
        let mut parts = split_batch(exec, batch, self.history_message_limit())?.into_iter();
        let mut expected = expected_last_sequence;
        loop {
            let Some(body) = parts.next() else {
                // split_batch gives one part at least.
                return Err(StoreError::TooLarge {
                    what: "history batch",
                    bytes: 0,
                });
            };
            let ack = self.publish_history(exec, expected, body).await?;
            if parts.len() == 0 {
                return Ok(ack);
            }
            expected = self.await_history(exec, ack).await?;
        }
    }

    /// The largest history message: [`Infra::message_limit`] less room for
    /// the headers.
    fn history_message_limit(&self) -> usize {
        self.infra.message_limit().saturating_sub(HEADER_ROOM)
    }

    async fn publish_history(
        &self,
        exec: &ExecutionRef,
        expected_last_sequence: u64,
        body: Vec<u8>,
    ) -> Result<jetstream::context::PublishAckFuture, StoreError> {
        let subject = self
            .infra
            .ns()
            .history_subject(self.partition_of(exec), exec);
        let mut hdrs = async_nats::HeaderMap::new();
        hdrs.insert(
            headers::EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected_last_sequence.to_string().as_str(),
        );
        self.infra
            .js
            .publish_with_headers(subject, hdrs, body.into())
            .await
            .map_err(|e| nats("append history")(&e))
    }

    /// The second half of [`Store::append_history`].
    pub async fn await_history(
        &self,
        exec: &ExecutionRef,
        ack: jetstream::context::PublishAckFuture,
    ) -> Result<u64, StoreError> {
        match ack.await {
            Ok(ack) => Ok(ack.sequence),
            Err(e) => match e.kind() {
                jetstream::context::PublishErrorKind::WrongLastSequence => {
                    Err(StoreError::Conflict {
                        execution: exec.arn(),
                    })
                }
                _ => Err(nats("append history")(&e)),
            },
        }
    }

    /// The stream sequence of an execution's last history batch (0: none).
    pub async fn history_last_sequence(&self, exec: &ExecutionRef) -> Result<u64, StoreError> {
        let subject = self
            .infra
            .ns()
            .history_subject(self.partition_of(exec), exec);
        match self
            .infra
            .history
            .get_last_raw_message_by_subject(subject.as_str())
            .await
        {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(nats("read history")(&e)),
        }
    }

    /// The first step of an execution's history (its start), read alone:
    /// one message instead of the whole history.
    pub async fn first_history_step(&self, exec: &ExecutionRef) -> Result<FirstStep, StoreError> {
        let subject = self
            .infra
            .ns()
            .history_subject(self.partition_of(exec), exec);
        let message = match self
            .infra
            .history
            .get_first_raw_message_by_subject(subject.as_str(), 1)
            .await
        {
            Ok(m) => m,
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                return Ok(FirstStep::None);
            }
            Err(e) => return Err(nats("read history")(&e)),
        };
        let batch: HistoryBatch =
            serde_json::from_slice(&message.payload).map_err(|e| StoreError::Corrupt {
                what: "history batch",
                key: format!("{subject}#{}", message.sequence),
                message: e.to_string(),
            })?;
        Ok(match batch.part {
            Some(_) => FirstStep::InParts,
            None => FirstStep::Whole(batch),
        })
    }

    /// Reads an execution's whole history.
    pub async fn read_history(&self, exec: &ExecutionRef) -> Result<StoredHistory, StoreError> {
        let subject = self
            .infra
            .ns()
            .history_subject(self.partition_of(exec), exec);
        let last = match self
            .infra
            .history
            .get_last_raw_message_by_subject(subject.as_str())
            .await
        {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok(StoredHistory::default());
            }
            Err(e) => return Err(nats("read history")(&e)),
        };
        let consumer = self
            .infra
            .history
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| nats("read history")(&e))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| nats("read history")(&e))?;
        let mut batches = Assembler::default();
        let mut last_sequence = 0;
        // Given up after 10 s without a message (not 10 s in all: a long
        // history on a busy server may take longer, and is read whole).
        let mut give_up = tokio::time::Instant::now() + HISTORY_READ_IDLE;
        while last_sequence < last {
            let next = tokio::time::timeout(Duration::from_millis(500), messages.next()).await;
            let message = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(nats("read history")(&e)),
                Err(_) if tokio::time::Instant::now() < give_up => {
                    // Nothing came: the history may have been deleted
                    // (retention) since its last sequence was read.
                    match self
                        .infra
                        .history
                        .get_last_raw_message_by_subject(subject.as_str())
                        .await
                    {
                        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                            return Ok(StoredHistory::default());
                        }
                        _ => continue,
                    }
                }
                Ok(None) | Err(_) => {
                    return Err(StoreError::Nats {
                        operation: "read history",
                        message: format!("the history of {} ended early", exec.arn()),
                    });
                }
            };
            give_up = tokio::time::Instant::now() + HISTORY_READ_IDLE;
            let info = message.info().map_err(|e| nats("read history")(&e))?;
            last_sequence = info.stream_sequence;
            let batch: HistoryBatch =
                serde_json::from_slice(&message.payload).map_err(|e| StoreError::Corrupt {
                    what: "history batch",
                    key: format!("{subject}#{last_sequence}"),
                    message: e.to_string(),
                })?;
            batches.push(batch);
        }
        let (batches, left_out) = batches.finish();
        if left_out > 0 {
            tracing::debug!(execution = %exec.arn(), parts = left_out, "parts of a step whose append did not finish are left out");
        }
        Ok(StoredHistory {
            batches,
            last_sequence,
        })
    }

    // ------------------------------------------------------ state machines

    /// Stores a new version of a state machine (the definition must have
    /// been validated) and returns it; a definition identical to the latest
    /// version's returns that version instead (deploying again, or retrying
    /// a deploy whose answer was lost, adds nothing).
    pub async fn create_machine(
        &self,
        name: &str,
        definition: &str,
        created: &str,
    ) -> Result<StateMachineVersion, StoreError> {
        let latest_key = format!("m.{}", b64(name));
        for _ in 0..16 {
            let (latest, revision) = match self
                .infra
                .machines
                .entry(&latest_key)
                .await
                .map_err(|e| nats("read state machine")(&e))?
            {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    let n = std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| StoreError::Corrupt {
                            what: "latest version",
                            key: latest_key.clone(),
                            message: "not a number".into(),
                        })?;
                    (n, Some(entry.revision))
                }
                _ => (0, None),
            };
            if latest > 0
                && let Some(current) = self.machine(name, Some(latest)).await?
                && current.definition == definition
            {
                return Ok(current);
            }
            let version = StateMachineVersion {
                name: name.to_string(),
                arn: state_machine_arn(name),
                version: latest + 1,
                definition: definition.to_string(),
                created: created.to_string(),
            };
            let body = serde_json::to_vec(&version).map_err(|e| StoreError::Corrupt {
                what: "state machine",
                key: name.to_string(),
                message: e.to_string(),
            })?;
            let version_key = format!("v.{}.{}", b64(name), version.version);
            let bumped = version.version.to_string();
            let advance = || async {
                match revision {
                    Some(r) => self
                        .infra
                        .machines
                        .update(&latest_key, bumped.clone().into_bytes().into(), r)
                        .await
                        .is_ok(),
                    None => self
                        .infra
                        .machines
                        .create(&latest_key, bumped.clone().into_bytes().into())
                        .await
                        .is_ok(),
                }
            };
            match self.infra.machines.create(&version_key, body.into()).await {
                Ok(_) => {}
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    // Another writer took this number and has not advanced
                    // the latest version yet, or died before it could:
                    // advance it for them (a version stored is a version
                    // made), then look again.
                    advance().await;
                    continue;
                }
                Err(e) => return Err(nats("create state machine")(&e)),
            }
            if advance().await {
                return Ok(version);
            }
            // Someone may have advanced it for us meanwhile (see above).
            let latest_now = self
                .infra
                .machines
                .get(&latest_key)
                .await
                .map_err(|e| nats("read state machine")(&e))?
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok());
            if latest_now.is_some_and(|n| n >= version.version) {
                return Ok(version);
            }
            // Not recorded as the latest: the next create advances it.
            return Err(StoreError::Nats {
                operation: "create state machine",
                message: format!(
                    "version {} was stored but could not be made the latest",
                    version.version
                ),
            });
        }
        Err(StoreError::Nats {
            operation: "create state machine",
            message: "too much contention on the latest version".into(),
        })
    }

    /// A state machine version (the latest when `version` is `None`).
    pub async fn machine(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Option<StateMachineVersion>, StoreError> {
        let version = match version {
            Some(v) => v,
            None => {
                let key = format!("m.{}", b64(name));
                match self
                    .infra
                    .machines
                    .get(&key)
                    .await
                    .map_err(|e| nats("read state machine")(&e))?
                {
                    Some(v) => std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| StoreError::Corrupt {
                            what: "latest version",
                            key,
                            message: "not a number".into(),
                        })?,
                    None => return Ok(None),
                }
            }
        };
        let key = format!("v.{}.{version}", b64(name));
        get_json(&self.infra.machines, key, "state machine").await
    }

    /// Every state machine with its latest version.
    pub async fn list_machines(&self) -> Result<Vec<StateMachineSummary>, StoreError> {
        let mut keys = self
            .infra
            .machines
            .keys()
            .await
            .map_err(|e| nats("list state machines")(&e))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| nats("list state machines")(&e))?;
            let Some(encoded) = key.strip_prefix("m.") else {
                continue;
            };
            let Ok(name) = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded)
                .map_err(|_| ())
                .and_then(|b| String::from_utf8(b).map_err(|_| ()))
            else {
                continue;
            };
            if let Some(v) = self.machine(&name, None).await? {
                out.push(StateMachineSummary {
                    arn: v.arn,
                    name: v.name,
                    latest_version: v.version,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    // ------------------------------------------------------ execution index

    fn index_key(&self, exec: &ExecutionRef) -> String {
        format!("e.{}.{}", self.partition_of(exec), exec.key())
    }

    /// Writes an execution's index entry (input and output are not kept
    /// there; they are in the history).
    pub async fn put_execution(&self, desc: &ExecutionDescription) -> Result<(), StoreError> {
        let (key, body) = self.index_entry(desc)?;
        self.infra
            .executions
            .put(key, body.into())
            .await
            .map_err(|e| nats("write execution index")(&e))?;
        Ok(())
    }

    /// Writes an execution's index entry unless it has one: `Ok(false)` when
    /// an entry was already there (left as it was). A deleted entry (see
    /// [`Store::forget_execution`]) counts as none.
    pub async fn create_execution(&self, desc: &ExecutionDescription) -> Result<bool, StoreError> {
        let (key, body) = self.index_entry(desc)?;
        match self.infra.executions.create(key, body.into()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(nats("create execution index entry")(&e)),
        }
    }

    /// An index entry's key and body (without input and output).
    fn index_entry(&self, desc: &ExecutionDescription) -> Result<(String, Vec<u8>), StoreError> {
        let exec =
            ExecutionRef::from_arn(&desc.execution_arn).map_err(|e| StoreError::Corrupt {
                what: "execution ARN",
                key: desc.execution_arn.clone(),
                message: e.to_string(),
            })?;
        let mut slim = desc.clone();
        slim.input = None;
        slim.output = None;
        let body = serde_json::to_vec(&slim).map_err(|e| StoreError::Corrupt {
            what: "execution index entry",
            key: desc.execution_arn.clone(),
            message: e.to_string(),
        })?;
        Ok((self.index_key(&exec), body))
    }

    /// Deletes an ended execution for good (retention, see
    /// [`sagaflow_nats::Settings::retention`]): its participants'
    /// idempotency records, its history and its index entry. Deletes
    /// nothing when its index entry says it runs (again): a redrive, or a
    /// new start of its name, writes the index entry before the history,
    /// and the entry is looked at again (at the same revision) right before
    /// the history goes. Nor when its history says it runs though its
    /// entry says it ended (an entry written late, by a stale owner say):
    /// the caller then reloads it, which puts the entry right.
    pub async fn forget_execution(&self, exec: &ExecutionRef) -> Result<Forget, StoreError> {
        let key = self.index_key(exec);
        let entry = |what: &'static str| {
            let executions = self.infra.executions.clone();
            let key = key.clone();
            async move {
                let entry = executions
                    .entry(key.as_str())
                    .await
                    .map_err(|e| nats(what)(&e))?;
                Ok::<_, StoreError>(entry.and_then(|e| {
                    if e.operation != kv::Operation::Put {
                        return None;
                    }
                    let running = serde_json::from_slice::<ExecutionDescription>(&e.value)
                        .is_ok_and(|d| d.status == ExecutionStatus::Running);
                    Some((e.revision, running))
                }))
            }
        };
        let before = entry("read execution index entry").await?;
        if before.is_some_and(|(_, running)| running) {
            return Ok(Forget::Running);
        }
        let history = self.read_history(exec).await?;
        if !history_ended(&history) {
            return Ok(Forget::RunningByItsHistory);
        }
        // The participants' idempotency records of its tasks go first: a
        // new execution of the same name gives its tasks the same ids, and
        // must not find this one's results and have them replayed.
        self.forget_idempotency_records(exec, &history).await?;
        if entry("read execution index entry").await? != before {
            return Ok(Forget::Running);
        }
        let subject = self
            .infra
            .ns()
            .history_subject(self.partition_of(exec), exec);
        self.infra
            .history
            .purge()
            .filter(subject)
            .await
            .map_err(|e| nats("purge history")(&e))?;
        if let Some((revision, _)) = before {
            self.infra
                .executions
                .purge_expect_revision(key.as_str(), Some(revision))
                .await
                .map_err(|e| nats("delete execution index entry")(&e))?;
        }
        Ok(Forget::Forgotten)
    }

    /// Purges the idempotency records of an execution's tasks (those its
    /// history scheduled), where there are any.
    async fn forget_idempotency_records(
        &self,
        exec: &ExecutionRef,
        history: &StoredHistory,
    ) -> Result<(), StoreError> {
        use crate::driver::HistoryItem;
        use sagaflow_asl::interp::Command;
        let arn = exec.arn();
        let keys: std::collections::BTreeSet<String> = history
            .batches
            .iter()
            .flat_map(|b| &b.entries)
            .filter_map(|e| match &e.item {
                HistoryItem::Command(Command::ScheduleTask(request)) => Some(
                    sagaflow_participant::worker::idempotency_key(&arn, &request.task_id),
                ),
                _ => None,
            })
            .collect();
        let bucket = &self.infra.idempotency;
        let keys: Vec<String> = keys.into_iter().collect();
        for chunk in keys.chunks(64) {
            let results = futures::future::join_all(chunk.iter().map(|key| async move {
                // Read first: most workers keep no records, and a purge
                // of a missing key would still write a marker.
                if bucket.get(key).await?.is_some() {
                    bucket.purge(key).await?;
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }))
            .await;
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                return Err(nats("purge idempotency records")(&e));
            }
        }
        Ok(())
    }

    /// An execution's index entry.
    pub async fn execution(
        &self,
        exec: &ExecutionRef,
    ) -> Result<Option<ExecutionDescription>, StoreError> {
        get_json(
            &self.infra.executions,
            self.index_key(exec),
            "execution index entry",
        )
        .await
    }

    /// Every index entry of one partition, read with one ordered consumer
    /// over the partition's keys (last value per key) rather than one read
    /// per key: [`Store::partition_index_changes`] from the start, without
    /// the deleted entries.
    pub async fn partition_executions(
        &self,
        partition: u32,
    ) -> Result<Vec<ExecutionDescription>, StoreError> {
        let (changes, _) = self.partition_index_changes(partition, 0).await?;
        Ok(changes.into_iter().filter_map(|c| c.entry).collect())
    }

    /// The changes to a partition's index entries after stream sequence
    /// `after` (0: every entry as it stands), and the last sequence seen
    /// (`after` when nothing changed). A deleted entry comes as `None`.
    /// One ordered-consumer read: each round of a reconciliation reads only
    /// what changed since the previous one.
    pub async fn partition_index_changes(
        &self,
        partition: u32,
        after: u64,
    ) -> Result<(Vec<IndexChange>, u64), StoreError> {
        self.index_changes(format!("e.{partition}."), after).await
    }

    /// [`Store::partition_index_changes`] for the keys that start with
    /// `key_prefix` (`e.` for every partition's); the keys of the changes
    /// are given without the prefix.
    async fn index_changes(
        &self,
        key_prefix: String,
        after: u64,
    ) -> Result<(Vec<IndexChange>, u64), StoreError> {
        use async_nats::jetstream::consumer::{DeliverPolicy, push::OrderedConfig};
        let failed = nats("read the execution index");
        let kv = &self.infra.executions;
        let prefix = format!("{}{key_prefix}", kv.prefix);
        let consumer = kv
            .stream
            .create_consumer(OrderedConfig {
                deliver_subject: self.infra.client.new_inbox(),
                filter_subject: format!("{prefix}>"),
                deliver_policy: if after == 0 {
                    DeliverPolicy::LastPerSubject
                } else {
                    DeliverPolicy::ByStartSequence {
                        start_sequence: after + 1,
                    }
                },
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&e))?;
        let mut out = Vec::new();
        let mut last = after;
        if consumer.cached_info().num_pending == 0 {
            return Ok((out, last));
        }
        let mut messages = consumer.messages().await.map_err(|e| failed(&e))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| failed(&e))?;
            let info = message.info().map_err(|e| failed(&e))?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            last = last.max(sequence);
            let key = message
                .subject
                .as_str()
                .strip_prefix(prefix.as_str())
                .unwrap_or_default()
                .to_string();
            // Deleted or purged keys leave a marker with an operation header.
            let removed = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some();
            let entry = if removed {
                None
            } else {
                match serde_json::from_slice::<ExecutionDescription>(&message.payload) {
                    Ok(desc) => Some(desc),
                    Err(_) => {
                        tracing::warn!(
                            subject = %message.subject,
                            "skipping an execution index entry that does not decode"
                        );
                        if pending == 0 {
                            break;
                        }
                        continue;
                    }
                }
            };
            out.push(IndexChange { key, entry });
            if pending == 0 {
                break;
            }
        }
        Ok((out, last))
    }

    /// An index entry for a listing and its size in bytes; `None` when it
    /// is gone or does not decode (skipped, with a warning).
    async fn listed_entry(
        &self,
        key: &str,
    ) -> Result<Option<(ExecutionDescription, usize)>, StoreError> {
        let Some(bytes) = self
            .infra
            .executions
            .get(key)
            .await
            .map_err(|e| nats("list executions")(&e))?
        else {
            return Ok(None);
        };
        match serde_json::from_slice::<ExecutionDescription>(&bytes) {
            Ok(desc) => Ok(Some((desc, bytes.len()))),
            Err(_) => {
                tracing::warn!(
                    key,
                    "skipping an execution index entry that does not decode"
                );
                Ok(None)
            }
        }
    }

    /// One page of the execution index, newest first (by start date, then
    /// ARN, as AWS lists them): the entries after position `after` that
    /// match the filters, at most `limit` of them and at most `max_bytes` of
    /// their JSON, and the position to go on from when there may be more.
    /// The whole index is read in one pass (the last value of every key),
    /// keeping only the page's entries.
    pub async fn list_executions_page(
        &self,
        state_machine: Option<&str>,
        status: Option<ExecutionStatus>,
        after: Option<&ListPosition>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<ExecutionDescription>, Option<ListPosition>), StoreError> {
        let (changes, _) = self.index_changes("e.".to_string(), 0).await?;
        // An entry written while the index is read comes twice (its value
        // then, and its new one): the last one counts.
        let mut latest: HashMap<String, Option<ExecutionDescription>> = HashMap::new();
        for change in changes {
            latest.insert(change.key, change.entry);
        }
        // The first `limit` entries after `after`, in listing order: a heap
        // whose top is the last of those kept so far.
        let mut kept: std::collections::BinaryHeap<Listed> = std::collections::BinaryHeap::new();
        // Whether an entry after the kept ones was left for a later page.
        let mut more = false;
        for desc in latest.into_values().flatten() {
            if state_machine.is_some_and(|m| m != desc.state_machine)
                || status.is_some_and(|s| s != desc.status)
            {
                continue;
            }
            let listed = Listed(desc);
            if after.is_some_and(|a| listed.position() <= *a) {
                continue;
            }
            if kept.len() < limit {
                kept.push(listed);
            } else {
                more = true;
                if kept.peek().is_some_and(|last| listed < *last) {
                    kept.pop();
                    kept.push(listed);
                }
            }
        }
        let mut page: Vec<ExecutionDescription> = Vec::with_capacity(kept.len());
        let mut bytes_used = 2;
        for listed in kept.into_sorted_vec() {
            let size = serde_json::to_vec(&listed.0).map_or(0, |b| b.len()) + 1;
            if !page.is_empty() && bytes_used + size > max_bytes {
                // Full: this entry opens the next page.
                more = true;
                break;
            }
            bytes_used += size;
            page.push(listed.0);
        }
        let next = match page.last() {
            Some(last) if more => Some(Listed(last.clone()).position()),
            _ => None,
        };
        Ok((page, next))
    }

    /// Index entries, optionally of one partition, one state machine or one
    /// status, all at once, newest first.
    pub async fn list_executions(
        &self,
        partition: Option<u32>,
        state_machine: Option<&str>,
        status: Option<ExecutionStatus>,
    ) -> Result<Vec<ExecutionDescription>, StoreError> {
        let mut keys = self
            .infra
            .executions
            .keys()
            .await
            .map_err(|e| nats("list executions")(&e))?;
        let prefix = partition.map(|p| format!("e.{p}."));
        let mut wanted = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| nats("list executions")(&e))?;
            if prefix.as_ref().is_none_or(|p| key.starts_with(p.as_str())) {
                wanted.push(key);
            }
        }
        let mut out = Vec::new();
        for key in wanted {
            let Some((desc, _)) = self.listed_entry(&key).await? else {
                continue;
            };
            if state_machine.is_some_and(|m| m != desc.state_machine) {
                continue;
            }
            if status.is_some_and(|s| s != desc.status) {
                continue;
            }
            out.push(desc);
        }
        // Newest first, as AWS lists them.
        out.sort_by(|a, b| {
            b.start_date
                .cmp(&a.start_date)
                .then(a.execution_arn.cmp(&b.execution_arn))
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::HistoryItem;
    use sagaflow_asl::interp::Event;

    fn exec() -> ExecutionRef {
        ExecutionRef::new("m", "e").unwrap()
    }

    fn entry(i: usize, bytes: usize) -> HistoryEntry {
        HistoryEntry {
            at: "2024-01-01T00:00:00Z".parse().unwrap(),
            item: HistoryItem::Event(Event::TaskSucceeded {
                task_id: format!("T@{i}#0"),
                output: serde_json::Value::String("x".repeat(bytes)),
            }),
        }
    }

    fn meta() -> ExecutionMeta {
        ExecutionMeta {
            state_machine: "m".into(),
            version: 1,
            traceparent: None,
            execution_span: None,
            parent: None,
        }
    }

    fn batch(entries: Vec<HistoryEntry>) -> HistoryBatch {
        HistoryBatch {
            meta: Some(meta()),
            entries,
            part: None,
        }
    }

    fn decode(parts: &[Vec<u8>]) -> Vec<HistoryBatch> {
        parts
            .iter()
            .map(|p| serde_json::from_slice(p).unwrap())
            .collect()
    }

    fn assemble(batches: Vec<HistoryBatch>) -> (Vec<HistoryBatch>, usize) {
        let mut a = Assembler::default();
        for b in batches {
            a.push(b);
        }
        a.finish()
    }

    #[test]
    fn a_batch_split_in_parts_is_read_back_whole() {
        let whole = batch((0..10).map(|i| entry(i, 300)).collect());
        let parts = split_batch(&exec(), &whole, 1000).unwrap();
        assert!(parts.len() >= 4, "{} parts", parts.len());
        assert!(parts.iter().all(|p| p.len() <= 1000));
        let decoded = decode(&parts);
        for (i, p) in decoded.iter().enumerate() {
            assert_eq!(
                p.part,
                Some(BatchPart {
                    index: i as u32,
                    count: parts.len() as u32
                })
            );
            assert_eq!(p.meta.is_some(), i == 0, "the meta in the first part only");
        }
        assert_eq!(assemble(decoded), (vec![whole], 0));
    }

    #[test]
    fn an_entry_larger_than_a_message_is_refused() {
        let whole = batch(vec![entry(0, 10), entry(1, 2000)]);
        assert!(matches!(
            split_batch(&exec(), &whole, 1000),
            Err(StoreError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_parts_of_an_unfinished_step_are_left_out() {
        let before = HistoryBatch {
            meta: None,
            ..batch(vec![entry(0, 10)])
        };
        let big = HistoryBatch {
            meta: None,
            ..batch((1..6).map(|i| entry(i, 300)).collect())
        };
        let after = HistoryBatch {
            meta: None,
            ..batch(vec![entry(9, 10)])
        };
        let parts = decode(&split_batch(&exec(), &big, 1000).unwrap());
        assert!(parts.len() >= 3);
        // The writer died after two parts; the next step came after them.
        let stored = vec![
            before.clone(),
            parts[0].clone(),
            parts[1].clone(),
            after.clone(),
        ];
        assert_eq!(assemble(stored), (vec![before.clone(), after.clone()], 2));
        // ... or nothing came after them.
        assert_eq!(
            assemble(vec![before.clone(), parts[0].clone()]),
            (vec![before.clone()], 1)
        );
        // A retried step in parts after an unfinished one: the unfinished
        // parts are left out, the finished step read whole.
        let mut stored = vec![parts[0].clone(), parts[1].clone()];
        stored.extend(parts.iter().cloned());
        assert_eq!(assemble(stored), (vec![big.clone()], 2));
        // A part out of its place (not the next one) is left out with the
        // step it belongs to.
        let stored = vec![parts[0].clone(), parts[2].clone(), after.clone()];
        assert_eq!(assemble(stored), (vec![after], 2));
    }
}
