//! Serving one task message: decode, replay or run the handler, record,
//! publish the result, ack.

use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use base64::Engine as _;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use sagaflow_protocol::{InboxMessage, ResultReply, TaskMessage, headers};
use serde_json::Value;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::TASK_FAILED;
pub(super) use super::claims::Claims;
use super::claims::{Claimed, Held, RefreshError, Unclaimed};
use crate::{Handler, TaskContext, TaskError, heartbeat_channel};

/// Delay before a task whose result could not be stored (or whose
/// idempotency record could not be read) is delivered again.
pub(super) const RETRY_DELAY: Duration = Duration::from_secs(1);

/// How long past a task's `TimeoutSeconds` or `HeartbeatSeconds` its
/// handler still runs before it is stopped.
const GRACE: Duration = Duration::from_secs(1);

/// `from + d`, for durations up to about 30 years (longer ones: that).
fn after(from: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    // Instants count from boot: 30 years more cannot overflow.
    from.checked_add(d.min(FAR)).unwrap_or(from)
}

/// The error names a stopped handler reports (those the coordinator
/// records for the same reason).
const TIMEOUT: &str = "States.Timeout";
const HEARTBEAT_TIMEOUT: &str = "States.HeartbeatTimeout";

/// Longest time between two heartbeats sent on (see `run_handler`).
const MAX_BEAT_WINDOW: Duration = Duration::from_secs(1);

/// Longest wait for the coordinator's answer to a result sent directly
/// (shorter with a short ack wait); then the result goes to the inbox.
const RESULT_ANSWER_WAIT: Duration = Duration::from_secs(5);

/// Runs the tasks of one handler.
pub(super) struct TaskRunner {
    pub(super) js: jetstream::Context,
    /// The idempotency store, when it is on.
    pub(super) claims: Option<Claims>,
    pub(super) handler_name: String,
    pub(super) handler: Arc<dyn Handler>,
    pub(super) ack_wait: Duration,
    pub(super) max_payload_bytes: usize,
    /// What every `reply_to` starts with: this namespace's inbox subjects
    /// (`sagaflow.inbox.`); a task naming another subject is terminated.
    pub(super) inbox_prefix: String,
    /// What every `result_to` starts with (`sagaflow.result.`); another
    /// subject is not used.
    pub(super) result_prefix: String,
    /// Turns true at the end of the shutdown grace period: running handlers
    /// are dropped and their tasks handed back.
    pub(super) abandon: watch::Receiver<bool>,
}

/// How running a handler ended.
enum Outcome {
    /// It returned (or panicked: then a `States.TaskFailed` error).
    Done(Result<Value, TaskError>),
    /// The grace period ended first.
    Abandoned,
}

/// Hands a task back for immediate redelivery (best effort: if the NAK is
/// lost the broker redelivers after `ack_wait` anyway).
pub(super) async fn nak_now(message: &jetstream::Message) {
    if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
        tracing::warn!(error = %e, "cannot hand a task back; it is redelivered after the ack wait");
    }
}

async fn nak_later(message: &jetstream::Message) {
    if let Err(e) = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await {
        tracing::warn!(error = %e, "cannot hand a task back; it is redelivered after the ack wait");
    }
}

/// The idempotency store key of a task: base64url (no padding) of
/// `EXECUTION_ARN/TASK_ID`, which uses only characters KV keys allow.
pub fn idempotency_key(execution_arn: &str, task_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{execution_arn}/{task_id}"))
}

/// The `Nats-Msg-Id` of a task's result: `REPLY_TO/TASK_ID/result`.
pub fn result_msg_id(reply_to: &str, task_id: &str) -> String {
    format!("{reply_to}/{task_id}/result")
}

/// Why a `reply_to` cannot be published to, if it cannot.
pub(super) fn check_reply_to(subject: &str) -> Result<(), &'static str> {
    if subject.is_empty() {
        return Err("it is empty");
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace or control characters");
    }
    if subject
        .split('.')
        .any(|t| t.is_empty() || t == "*" || t == ">")
    {
        return Err("it has an empty or wildcard token");
    }
    Ok(())
}

/// Why a task id cannot be used, if it cannot: it goes into message
/// headers, where a line break is not allowed.
pub(super) fn check_task_id(task_id: &str) -> Result<(), &'static str> {
    if task_id.is_empty() {
        return Err("it is empty");
    }
    if task_id.chars().any(char::is_control) {
        return Err("it contains control characters");
    }
    Ok(())
}

/// The inbox message reporting a handler's result, with the payload limit
/// applied: a success larger than `max_bytes` becomes a
/// `States.DataLimitExceeded` failure; a failure's cause is truncated to
/// `max_bytes`.
pub fn result_message(
    execution_arn: &str,
    task_id: &str,
    state_name: &str,
    result: Result<Value, TaskError>,
    max_bytes: usize,
) -> InboxMessage {
    // AWS's limits on a failure's error (256 characters) and cause (32,768)
    // bound the message too: JSON escaping can make a string up to six
    // times longer (a control character is `\u001b`), and a message over
    // the broker's limit could never be delivered.
    let failed = |error: String, cause: String| {
        let TaskError { error, cause } =
            crate::failure_within_limits(TaskError { error, cause }, max_bytes);
        InboxMessage::TaskFailed {
            execution_arn: execution_arn.to_string(),
            task_id: task_id.to_string(),
            error,
            cause,
            callback: false,
        }
    };
    match crate::within_limit(result, state_name, max_bytes) {
        Ok(output) => InboxMessage::TaskSucceeded {
            execution_arn: execution_arn.to_string(),
            task_id: task_id.to_string(),
            output,
            callback: false,
        },
        Err(TaskError { error, cause }) => failed(error, cause),
    }
}

/// Encodes an inbox message (serializing this enum cannot fail: its values
/// are JSON values and strings; the fallback keeps the result a failure
/// rather than a panic).
fn encode(message: &InboxMessage) -> Bytes {
    match serde_json::to_vec(message) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            let fallback = InboxMessage::TaskFailed {
                execution_arn: message.execution_arn().to_string(),
                task_id: String::new(),
                error: crate::INVALID_OUTPUT.to_string(),
                cause: format!("the task's result does not serialize: {e}"),
                callback: false,
            };
            Bytes::from(serde_json::to_vec(&fallback).unwrap_or_default())
        }
    }
}

impl TaskRunner {
    /// Serves one task message to the end: it is acked, handed back or
    /// terminated when this returns (unless the future is dropped).
    pub(super) async fn process(&self, message: jetstream::Message) {
        let task: TaskMessage = match serde_json::from_slice(&message.payload) {
            Ok(task) => task,
            Err(e) => {
                tracing::warn!(
                    handler = %self.handler_name,
                    subject = %message.subject,
                    error = %e,
                    "malformed task message: terminated"
                );
                if let Err(e) = message.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %e, "cannot terminate a malformed task message");
                }
                return;
            }
        };
        let reply_to_checked = check_reply_to(&task.reply_to).and_then(|()| {
            if task.reply_to.starts_with(&self.inbox_prefix) {
                Ok(())
            } else {
                Err("it is not an inbox subject of this namespace")
            }
        });
        if let Err(reason) = reply_to_checked {
            tracing::warn!(
                handler = %self.handler_name,
                task_id = %task.task_id,
                reply_to = %task.reply_to,
                reason,
                "task message with an unusable reply_to subject: terminated"
            );
            if let Err(e) = message.ack_with(AckKind::Term).await {
                tracing::warn!(error = %e, "cannot terminate a task message");
            }
            return;
        }
        if let Err(reason) = check_task_id(&task.task_id) {
            tracing::warn!(
                handler = %self.handler_name,
                task_id = ?task.task_id,
                reason,
                "task message with an unusable task id: terminated"
            );
            if let Err(e) = message.ack_with(AckKind::Term).await {
                tracing::warn!(error = %e, "cannot terminate a task message");
            }
            return;
        }
        // The handler span: in the coordinator's trace, a child of the task
        // attempt's span (W3C trace context in the message's headers).
        let span = tracing::info_span!(
            "handler",
            otel.name = %format_args!("handler {}", self.handler_name),
            otel.kind = "consumer",
            sagaflow.task.handler = %self.handler_name,
            sagaflow.task.id = %task.task_id,
            sagaflow.execution.id = %task.execution_arn,
            sagaflow.state.name = %task.state_name,
            // i64: exported as an integer, as on the task span.
            sagaflow.task.attempt = i64::from(task.attempt),
        );
        sagaflow_telemetry::propagation::set_parent_from_headers(&span, message.headers.as_ref());
        self.serve(message, task).instrument(span).await;
    }

    async fn serve(&self, message: jetstream::Message, mut task: TaskMessage) {
        let key = idempotency_key(&task.execution_arn, &task.task_id);
        // This delivery's claim in the idempotency store.
        let mut claim = None;
        if let Some(claims) = &self.claims {
            match claims.claim(&key, &task, &message, &self.abandon).await {
                Ok(Claimed::Ours(held)) => claim = Some(held),
                Ok(Claimed::Recorded(recorded)) => {
                    tracing::info!("result already recorded: publishing it again");
                    self.publish_and_ack(&message, &task, recorded).await;
                    return;
                }
                Err(Unclaimed::Store(e)) => {
                    tracing::warn!(error = %e, "cannot use the idempotency store: task handed back");
                    nak_later(&message).await;
                    return;
                }
                Err(Unclaimed::Abandoned) => {
                    tracing::info!("shutdown grace period over: task handed back");
                    nak_now(&message).await;
                    return;
                }
            }
        }

        let input = std::mem::take(&mut task.input);
        let result = match self
            .run_handler(&message, &task, input, &key, &mut claim)
            .await
        {
            Outcome::Done(result) => result,
            Outcome::Abandoned => {
                tracing::info!("shutdown grace period over: task handed back");
                if let (Some(claims), Some(held)) = (&self.claims, &claim) {
                    claims.release(&key, held).await;
                }
                nak_now(&message).await;
                return;
            }
        };
        if let Err(e) = &result {
            tracing::info!(error = %e.error, "handler failed");
        }
        let reply = result_message(
            &task.execution_arn,
            &task.task_id,
            &task.state_name,
            result,
            self.max_payload_bytes,
        );
        let mut payload = encode(&reply);
        if let Some(claims) = &self.claims {
            payload = claims.record(&key, &task, claim.as_ref(), payload).await;
        }
        self.publish_and_ack(&message, &task, payload).await;
    }

    /// Runs the handler, keeping the task alive (and its claim fresh) and
    /// forwarding heartbeats, until it returns, panics or is abandoned.
    /// `claim` is `None` on return if the claim was lost meanwhile.
    async fn run_handler(
        &self,
        message: &jetstream::Message,
        task: &TaskMessage,
        input: Value,
        key: &str,
        claim: &mut Option<Held>,
    ) -> Outcome {
        let (beat_tx, mut beat_rx) = heartbeat_channel();
        let mut ctx = TaskContext::new(task.task_id.clone(), beat_tx);
        ctx.execution_id = task.execution_arn.clone();
        ctx.execution_name = task.execution_name.clone();
        ctx.state_name = task.state_name.clone();
        ctx.resource = task.resource.clone();
        ctx.handler = task.handler.clone();
        ctx.attempt = task.attempt;
        ctx.task_token = task.task_token.clone();
        ctx.timeout_seconds = task.timeout_seconds;
        ctx.heartbeat_seconds = task.heartbeat_seconds;
        // The handler span's context when it is traced, else the task
        // span's as received.
        ctx.trace_parent = sagaflow_telemetry::propagation::current_traceparent().or_else(|| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::TRACEPARENT))
                .map(|v| v.as_str().to_string())
        });

        let handler = self.handler.clone();
        // The handler is called inside the guarded future so that a panic in
        // `call` itself (before any await) is caught too.
        let mut work =
            pin!(AssertUnwindSafe(async move { handler.call(input, ctx).await }).catch_unwind());

        // The handler is stopped once the coordinator has given up on the
        // task: `TimeoutSeconds` after it started (the coordinator counts
        // from when it scheduled the task, earlier), or `HeartbeatSeconds`
        // without a heartbeat; a second more for the messages in flight. Its
        // slot is free again, and the failure it reports is the one the
        // coordinator records, had it not done so yet.
        // Not a `.waitForTaskToken` task's handler: its task may be answered
        // through the API (and heartbeats come that way), which this worker
        // does not see; the handler may go on working after that, as in the
        // embedded runtime.
        let started = tokio::time::Instant::now();
        let watched = task.task_token.is_none();
        let timeout_at = task
            .timeout_seconds
            .filter(|_| watched)
            .map(|s| after(started, Duration::from_secs(s).saturating_add(GRACE)));
        let mut overdue = pin!(async move {
            match timeout_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => futures::future::pending::<()>().await,
            }
        });
        let beat_limit = task
            .heartbeat_seconds
            .filter(|_| watched)
            .map(|s| Duration::from_secs(s).saturating_add(GRACE));
        let mut silent = pin!(tokio::time::sleep_until(
            beat_limit.map_or(started, |limit| after(started, limit))
        ));

        let period = (self.ack_wait / 3).max(Duration::from_millis(10));
        let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let mut abandon = self.abandon.clone();
        let mut abandoned = pin!(async move {
            if abandon.wait_for(|a| *a).await.is_err() {
                // The worker is gone without asking: keep going.
                futures::future::pending::<()>().await;
            }
        });

        let heartbeat = encode(&InboxMessage::TaskHeartbeat {
            execution_arn: task.execution_arn.clone(),
            task_id: task.task_id.clone(),
        });
        let mut beats_open = true;
        // Heartbeats are coalesced: at most one progress ack and inbox
        // message per window (a quarter of HeartbeatSeconds, at most a
        // second); one that comes inside the window is sent at its end. A
        // handler calling `heartbeat()` in a tight loop would otherwise
        // flood its partition's inbox.
        let beat_window = task
            .heartbeat_seconds
            .map_or(MAX_BEAT_WINDOW, |s| {
                (Duration::from_secs(s) / 4).min(MAX_BEAT_WINDOW)
            })
            .max(Duration::from_millis(10));
        let mut next_beat_at = tokio::time::Instant::now();
        let mut beat_due = false;
        let mut beat_flush = pin!(tokio::time::sleep_until(next_beat_at));
        let mut beat_acks = FuturesUnordered::new();
        // A claim refresh runs beside the handler and the other duties (a
        // slow store must not hold up progress acknowledgements); while it
        // runs it owns the claim. At most one at a time.
        let mut refreshing = FuturesUnordered::new();

        let outcome = loop {
            // Biased: heartbeats the handler sent before returning are
            // published before its result.
            tokio::select! {
                biased;
                () = &mut abandoned => break Outcome::Abandoned,
                () = &mut overdue => {
                    tracing::warn!(timeout_seconds = ?task.timeout_seconds, "handler stopped: past the task's TimeoutSeconds");
                    break Outcome::Done(Err(TaskError::new(
                        TIMEOUT,
                        format!(
                            "the handler ran past the task's TimeoutSeconds ({} s) and was stopped",
                            task.timeout_seconds.unwrap_or_default()
                        ),
                    )));
                }
                // Before `silent`: a heartbeat that came while the loop was
                // busy counts, even when the deadline has passed meanwhile.
                beat = beat_rx.recv(), if beats_open => match beat {
                    Some(()) => {
                        while let Ok(()) = beat_rx.try_recv() {}
                        if let Some(limit) = beat_limit {
                            silent
                                .as_mut()
                                .reset(after(tokio::time::Instant::now(), limit));
                        }
                        if tokio::time::Instant::now() >= next_beat_at {
                            self.send_beat(message, task, &heartbeat, &mut beat_acks).await;
                            next_beat_at = tokio::time::Instant::now() + beat_window;
                        } else if !beat_due {
                            beat_due = true;
                            beat_flush.as_mut().reset(next_beat_at);
                        }
                    }
                    // The handler dropped its context: no more heartbeats.
                    None => beats_open = false,
                },
                () = &mut beat_flush, if beat_due => {
                    beat_due = false;
                    self.send_beat(message, task, &heartbeat, &mut beat_acks).await;
                    next_beat_at = tokio::time::Instant::now() + beat_window;
                }
                () = &mut silent, if beat_limit.is_some() => {
                    tracing::warn!(heartbeat_seconds = ?task.heartbeat_seconds, "handler stopped: no heartbeat within HeartbeatSeconds");
                    break Outcome::Done(Err(TaskError::new(
                        HEARTBEAT_TIMEOUT,
                        format!(
                            "the handler sent no heartbeat for the task's HeartbeatSeconds ({} s) and was stopped",
                            task.heartbeat_seconds.unwrap_or_default()
                        ),
                    )));
                }
                Some(acked) = beat_acks.next(), if !beat_acks.is_empty() => {
                    if let Err(e) = acked {
                        tracing::warn!(error = %e, "a heartbeat was not stored");
                    }
                }
                _ = keep_alive.tick() => {
                    progress(message).await;
                    if let (Some(claims), Some(mut held)) = (&self.claims, claim.take()) {
                        refreshing.push(async move {
                            let refreshed = claims.refresh(key, &mut held).await;
                            (held, refreshed)
                        });
                    }
                }
                Some((held, refreshed)) = refreshing.next(), if !refreshing.is_empty() => {
                    *claim = kept(held, refreshed);
                }
                joined = &mut work => {
                    // A heartbeat waiting for its window, or sent in the
                    // handler's last poll: published too (once), so that
                    // every heartbeat precedes the result.
                    let mut last_beats = beat_due;
                    while let Ok(()) = beat_rx.try_recv() {
                        last_beats = true;
                    }
                    if last_beats {
                        let _ = self.publish_heartbeat(task, &heartbeat).await;
                    }
                    break Outcome::Done(match joined {
                        Ok(result) => result,
                        Err(panic) => {
                            let cause = crate::panic_message(panic.as_ref());
                            tracing::warn!(cause = %cause, "handler panicked");
                            Err(TaskError::new(TASK_FAILED, cause))
                        }
                    });
                }
            }
        };
        // The claim back from a refresh still running.
        if let Some((held, refreshed)) = refreshing.next().await {
            *claim = kept(held, refreshed);
        }
        outcome
    }

    /// A heartbeat's progress acknowledgement and inbox message.
    async fn send_beat(
        &self,
        message: &jetstream::Message,
        task: &TaskMessage,
        heartbeat: &Bytes,
        acks: &mut FuturesUnordered<
            <jetstream::context::PublishAckFuture as std::future::IntoFuture>::IntoFuture,
        >,
    ) {
        progress(message).await;
        if let Some(ack) = self.publish_heartbeat(task, heartbeat).await {
            acks.push(ack);
        }
    }

    /// Publishes a heartbeat to the task's inbox; returns the future of the
    /// broker's ack.
    async fn publish_heartbeat(
        &self,
        task: &TaskMessage,
        heartbeat: &Bytes,
    ) -> Option<<jetstream::context::PublishAckFuture as std::future::IntoFuture>::IntoFuture> {
        // The handler span's context goes along, as with the result.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(headers::TASK_ID, task.task_id.as_str());
        sagaflow_telemetry::propagation::inject_current(&mut headers);
        match self
            .js
            .publish_with_headers(task.reply_to.clone(), headers, heartbeat.clone())
            .await
        {
            Ok(ack) => Some(ack.into_future()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot publish a heartbeat");
                None
            }
        }
    }

    /// Hands the result over and acks the task once it is safe: first
    /// straight to the partition's owner (`result_to`), which answers once
    /// the result is in the execution's history; failing that (no owner at
    /// the moment, no answer in time, not recorded), stored in the
    /// execution's inbox. If it could not be stored either, the task is
    /// handed back for a later retry.
    async fn publish_and_ack(
        &self,
        message: &jetstream::Message,
        task: &TaskMessage,
        payload: Bytes,
    ) {
        if let Some(result_to) = &task.result_to {
            match self.send_result(result_to, &payload).await {
                Ok(()) => {
                    // A plain ack, not a double ack: waiting for the broker's
                    // answer would cost a round trip per task and change
                    // nothing, since a lost ack is not sent again either way.
                    // If it is lost, the broker redelivers the task after
                    // `ack_wait`: it runs again (or, with the idempotency
                    // store, publishes its recorded result), and the
                    // coordinator ignores the repeated result.
                    if let Err(e) = message.ack().await {
                        tracing::warn!(error = %e, "result recorded but the task ack failed");
                    } else {
                        tracing::debug!("task done");
                    }
                    return;
                }
                Err(reason) => {
                    tracing::debug!(reason = %reason, "result not handed over directly: storing it in the inbox");
                }
            }
        }
        self.store_and_ack(message, task, payload).await;
    }

    /// Sends the result as a core NATS request to `result_to`; `Ok` once
    /// the coordinator answered that it is recorded.
    async fn send_result(&self, result_to: &str, payload: &Bytes) -> Result<(), String> {
        check_reply_to(result_to).map_err(|e| format!("result_to is unusable: {e}"))?;
        if !result_to.starts_with(&self.result_prefix) {
            return Err("result_to is not a result subject of this namespace".into());
        }
        let mut headers = async_nats::HeaderMap::new();
        sagaflow_telemetry::propagation::inject_current(&mut headers);
        let timeout = (self.ack_wait / 3).clamp(Duration::from_millis(50), RESULT_ANSWER_WAIT);
        let request = async_nats::Request::new()
            .payload(payload.clone())
            .headers(headers)
            .timeout(Some(timeout));
        let answer = self
            .js
            .client()
            .send_request(result_to.to_string(), request)
            .await
            .map_err(|e| e.to_string())?;
        match serde_json::from_slice::<ResultReply>(&answer.payload) {
            Ok(ResultReply { recorded: true, .. }) => Ok(()),
            Ok(ResultReply { error, .. }) => Err(error.unwrap_or_else(|| "not recorded".into())),
            Err(e) => Err(format!("unreadable answer: {e}")),
        }
    }

    /// Publishes the result to the execution's inbox and acks the task once
    /// the broker stored it; if it was not stored, hands the task back for a
    /// later retry.
    async fn store_and_ack(
        &self,
        message: &jetstream::Message,
        task: &TaskMessage,
        payload: Bytes,
    ) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            headers::MSG_ID,
            result_msg_id(&task.reply_to, &task.task_id).as_str(),
        );
        headers.insert(headers::TASK_ID, task.task_id.as_str());
        sagaflow_telemetry::propagation::inject_current(&mut headers);
        let stored = match self
            .js
            .publish_with_headers(task.reply_to.clone(), headers, payload)
            .await
        {
            Ok(ack) => ack.await.map(|_| ()),
            Err(e) => Err(e),
        };
        match stored {
            Ok(()) => {
                // A plain ack, as above.
                if let Err(e) = message.ack().await {
                    // The result is stored; a redelivery publishes one
                    // again, which the coordinator ignores.
                    tracing::warn!(error = %e, "result stored but the task ack failed");
                } else {
                    tracing::debug!("task done");
                }
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    reply_to = %task.reply_to,
                    "cannot store the task's result: task handed back"
                );
                nak_later(message).await;
            }
        }
    }
}

/// The claim after a refresh: kept, unless another delivery took it over.
fn kept(held: Held, refreshed: Result<(), RefreshError>) -> Option<Held> {
    match refreshed {
        Ok(()) => Some(held),
        Err(RefreshError::Lost) => {
            // This worker looked dead to another one (no refresh for the
            // claim's whole period), which now runs the task too.
            tracing::warn!("the task's claim was taken over by another worker");
            None
        }
        Err(RefreshError::Store(e)) => {
            // Tried again at the next tick.
            tracing::warn!(error = %e, "cannot refresh the task's claim");
            Some(held)
        }
    }
}

/// Tells the broker the task is still being worked on.
pub(super) async fn progress(message: &jetstream::Message) {
    if let Err(e) = message.ack_with(AckKind::Progress).await {
        tracing::debug!(error = %e, "cannot send a task progress ack");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::claims::is_result_of;
    use proptest::prelude::*;
    use sagaflow_protocol::api::{MAX_CAUSE_CHARS, MAX_ERROR_CHARS};
    use serde_json::json;

    #[test]
    fn keys_are_kv_safe_and_distinct() {
        let a = idempotency_key("arn:aws:states:local:0:execution:m:e", "T@0#0");
        let b = idempotency_key("arn:aws:states:local:0:execution:m:e", "T@0#1");
        assert_ne!(a, b);
        for k in [&a, &b] {
            assert!(
                k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{k}"
            );
        }
        assert_eq!(
            result_msg_id("s.inbox.1.K", "T@0#0"),
            "s.inbox.1.K/T@0#0/result"
        );
    }

    #[test]
    fn task_ids_are_checked() {
        assert!(check_task_id("Fanout@0#1[2]/Charge@0#0").is_ok());
        assert!(check_task_id("Réserver ✈@0#0").is_ok());
        for bad in ["", "a\nb", "a\r", "\u{0}", "a\u{85}"] {
            assert!(check_task_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reply_subjects_are_checked() {
        assert!(check_reply_to("sagaflow.inbox.3.abc").is_ok());
        for bad in ["", "a b", "a..b", "a.*", "a.>", ".a", "a.", "a\tb"] {
            assert!(check_reply_to(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_failure_always_fits_in_a_message() {
        // Control characters are escaped six times longer in JSON.
        let cause = "\u{1b}".repeat(300_000);
        let error = "E".repeat(1_000);
        let m = result_message("arn", "t", "S", Err(TaskError::new(error, cause)), 262_144);
        let encoded = encode(&m);
        assert!(encoded.len() < 1_048_576, "{} bytes", encoded.len());
        match m {
            InboxMessage::TaskFailed { error, cause, .. } => {
                assert_eq!(error.chars().count(), MAX_ERROR_CHARS);
                assert!(cause.len() <= MAX_CAUSE_CHARS, "{}", cause.len());
                assert!(cause.ends_with("(truncated)"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn results_within_the_limit_are_sent() {
        let m = result_message("arn", "t", "S", Ok(json!({"a": 1})), 100);
        assert_eq!(
            m,
            InboxMessage::TaskSucceeded {
                execution_arn: "arn".into(),
                task_id: "t".into(),
                output: json!({"a": 1}),
                callback: false,
            }
        );
    }

    #[test]
    fn oversized_results_become_data_limit_exceeded() {
        let big = json!("x".repeat(2000));
        match result_message("arn", "t", "S", Ok(big), 1000) {
            InboxMessage::TaskFailed { error, cause, .. } => {
                assert_eq!(error, super::super::DATA_LIMIT_EXCEEDED);
                // AWS's cause.
                assert_eq!(
                    cause,
                    "The state/task 'S' returned a result with a size exceeding the maximum number of bytes service limit."
                );
            }
            other => panic!("{other:?}"),
        }
        // Exactly at the limit is fine.
        let exact = json!("x".repeat(98));
        assert!(matches!(
            result_message("arn", "t", "S", Ok(exact), 100),
            InboxMessage::TaskSucceeded { .. }
        ));
    }

    #[test]
    fn failures_keep_their_name_and_long_causes_are_cut() {
        let m = result_message(
            "arn",
            "t",
            "S",
            Err(TaskError::new("States.Timeout", "é".repeat(100))),
            51,
        );
        match m {
            InboxMessage::TaskFailed { error, cause, .. } => {
                assert_eq!(error, "States.Timeout");
                assert!(cause.len() <= 51, "{}", cause.len());
                assert!(cause.ends_with("(truncated)"));
                assert!(cause.starts_with('é'));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn panic_messages_are_extracted() {
        let p: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(crate::panic_message(p.as_ref()), "boom");
        let p: Box<dyn std::any::Any + Send> = Box::new(String::from("bang 7"));
        assert_eq!(crate::panic_message(p.as_ref()), "bang 7");
        let p: Box<dyn std::any::Any + Send> = Box::new(7_u32);
        assert_eq!(crate::panic_message(p.as_ref()), "the handler panicked");
    }

    #[test]
    fn recorded_results_must_match_the_task() {
        let task: TaskMessage = serde_json::from_value(json!({
            "executionArn": "arn", "executionName": "e", "stateMachine": "m",
            "taskId": "t", "stateName": "S", "resource": "r", "handler": "h",
            "input": null, "attempt": 0, "replyTo": "x.y"
        }))
        .unwrap();
        let ok = encode(&result_message("arn", "t", "S", Ok(json!(1)), 10));
        assert!(is_result_of(&ok, &task));
        let other = encode(&result_message("arn", "u", "S", Ok(json!(1)), 10));
        assert!(!is_result_of(&other, &task));
        assert!(!is_result_of(b"not json", &task));
        let beat = encode(&InboxMessage::TaskHeartbeat {
            execution_arn: "arn".into(),
            task_id: "t".into(),
        });
        assert!(!is_result_of(&beat, &task));
    }

    proptest! {
        #[test]
        fn result_messages_never_panic_and_respect_the_limit(
            cause in ".{0,300}",
            name in "[A-Za-z.]{0,20}",
            max in 0usize..400,
        ) {
            match result_message("arn", "t", "S", Err(TaskError::new(name.clone(), cause)), max) {
                InboxMessage::TaskFailed { error, cause, .. } => {
                    prop_assert_eq!(error, name);
                    prop_assert!(cause.len() <= max);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn reply_checks_and_recorded_parsing_never_panic(s in ".{0,64}", b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = check_reply_to(&s);
            let _ = check_task_id(&s);
            let task: TaskMessage = serde_json::from_value(json!({
                "executionArn": "arn", "executionName": "e", "stateMachine": "m",
                "taskId": "t", "stateName": "S", "resource": "r", "handler": "h",
                "input": null, "attempt": 0, "replyTo": "x.y"
            })).unwrap();
            prop_assert!(!is_result_of(&b, &task) || serde_json::from_slice::<InboxMessage>(&b).is_ok());
        }
    }
}
