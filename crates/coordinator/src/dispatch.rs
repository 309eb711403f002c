//! The coordinator's transport to participants: [`Dispatcher`]. The embedded
//! mode ([`EmbeddedDispatcher`]) runs handlers in-process as tokio tasks; a
//! message-bus dispatcher implements the same trait.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument as _;

use sagaflow_asl::errors;
use sagaflow_asl::interp::{ExecutionInfo, TaskRequest};
use sagaflow_participant::{
    Handler, HeartbeatReceiver, HeartbeatSender, TaskContext, TaskError, heartbeat_channel,
};

use crate::resource::{self, Pattern, ResultShape};

/// The answer to a dispatched task.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The task's invocation id ([`TaskRequest::task_id`]).
    pub task_id: String,
    /// The result, or the error the task failed with (`States.HeartbeatTimeout`
    /// included).
    pub result: Result<Value, TaskError>,
}

/// Where a dispatcher sends a task's [`Completion`].
pub type CompletionSender = mpsc::UnboundedSender<Completion>;

/// A dispatcher could not hand a task over (transport failure).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not dispatch task '{task_id}': {message}")]
pub struct DispatchError {
    /// The task.
    pub task_id: String,
    /// What went wrong.
    pub message: String,
}

/// Hands tasks to participants and reports their completions.
pub trait Dispatcher: Send + Sync {
    /// Starts `request` for `execution`; its completion (exactly one, unless
    /// cancelled) goes to `reply`. Handler problems (no handler, a panic, a
    /// heartbeat timeout) are completions, not errors.
    fn dispatch<'a>(
        &'a self,
        execution: &'a ExecutionInfo,
        request: TaskRequest,
        reply: CompletionSender,
    ) -> BoxFuture<'a, Result<(), DispatchError>>;

    /// The execution no longer wants this task's result: stop it if possible.
    fn cancel<'a>(&'a self, execution_id: &'a str, task_id: &'a str) -> BoxFuture<'a, ()>;
}

/// Which handler served a task, in dispatch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The execution.
    pub execution_id: String,
    /// The task.
    pub task_id: String,
    /// The handler key that served it.
    pub key: String,
}

type Running = Arc<Mutex<HashMap<(String, String), AbortHandle>>>;

/// A `.waitForTaskToken` task waiting for its callback, by token.
struct Waiting {
    execution_id: String,
    task_id: String,
    /// Takes the `SendTaskSuccess`/`SendTaskFailure` answer.
    answer: oneshot::Sender<Result<Value, TaskError>>,
    /// `SendTaskHeartbeat`: the task's heartbeat channel.
    heartbeat: HeartbeatSender,
}

type Callbacks = Arc<Mutex<HashMap<String, Waiting>>>;

/// No task waits on this token (it was never issued, was already answered,
/// or its task timed out or was cancelled). AWS answers `TaskDoesNotExist`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no task waits on this task token (unknown, already answered, timed out or cancelled)")]
pub struct UnknownTaskToken;

/// Runs handlers in-process: a registry of handler key to handler, each task
/// a tokio task. Enforces `HeartbeatSeconds`; turns panics into
/// `States.TaskFailed`; aborts handlers on cancel.
///
/// By default the result of a `.waitForTaskToken` handler answers its task
/// (the local runner's behaviour). With [`EmbeddedDispatcher::with_callbacks`]
/// such a task waits, as over NATS, for [`EmbeddedDispatcher::complete_task`]
/// with its token; the handler only hands the token out (its error still
/// fails the task). Its `HeartbeatSeconds` counts until the answer, reset by
/// [`EmbeddedDispatcher::heartbeat_task`] as by the handler's own
/// heartbeats.
pub struct EmbeddedDispatcher {
    handlers: HashMap<String, Arc<dyn Handler>>,
    running: Running,
    calls: Mutex<Vec<CallRecord>>,
    record_calls: bool,
    max_result_bytes: Option<usize>,
    callbacks: Option<Callbacks>,
}

impl EmbeddedDispatcher {
    /// A dispatcher serving tasks with these handlers (keys are matched as
    /// described in [`crate::resource`]).
    pub fn new(
        handlers: impl IntoIterator<Item = (String, Arc<dyn Handler>)>,
    ) -> EmbeddedDispatcher {
        EmbeddedDispatcher {
            handlers: handlers.into_iter().collect(),
            running: Arc::default(),
            calls: Mutex::default(),
            record_calls: true,
            max_result_bytes: None,
            callbacks: None,
        }
    }

    /// A handler result over `bytes` of JSON fails its task with
    /// `States.DataLimitExceeded`, as a Worker reports it over NATS (by
    /// default the interpreter fails the state when it takes the result).
    pub fn with_max_result_bytes(mut self, bytes: usize) -> EmbeddedDispatcher {
        self.max_result_bytes = Some(bytes);
        self
    }

    /// Keeps no [`CallRecord`]s ([`EmbeddedDispatcher::calls`] stays
    /// empty): for a long-running process, whose record of every call ever
    /// made would only grow.
    pub fn without_call_records(mut self) -> EmbeddedDispatcher {
        self.record_calls = false;
        self
    }

    /// `.waitForTaskToken` tasks wait for [`EmbeddedDispatcher::complete_task`]
    /// (AWS's `SendTaskSuccess`/`SendTaskFailure`) instead of taking the
    /// handler's result.
    pub fn with_callbacks(mut self) -> EmbeddedDispatcher {
        self.callbacks = Some(Arc::default());
        self
    }

    /// Answers the `.waitForTaskToken` task waiting on `token` (only with
    /// [`EmbeddedDispatcher::with_callbacks`]): `Ok` as `SendTaskSuccess`,
    /// `Err` as `SendTaskFailure`. A token answers once.
    pub fn complete_task(
        &self,
        token: &str,
        result: Result<Value, TaskError>,
    ) -> Result<(), UnknownTaskToken> {
        let waiting = self
            .callbacks
            .as_ref()
            .and_then(|c| {
                c.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(token)
            })
            .ok_or(UnknownTaskToken)?;
        waiting
            .answer
            .send(result)
            // The task is over (timed out, cancelled): nobody waits any more.
            .map_err(|_| UnknownTaskToken)
    }

    /// `SendTaskHeartbeat` for the `.waitForTaskToken` task waiting on
    /// `token` (only with [`EmbeddedDispatcher::with_callbacks`]): its
    /// `HeartbeatSeconds` counts again from now.
    pub fn heartbeat_task(&self, token: &str) -> Result<(), UnknownTaskToken> {
        let callbacks = self.callbacks.as_ref().ok_or(UnknownTaskToken)?;
        let waiting = callbacks.lock().unwrap_or_else(PoisonError::into_inner);
        waiting
            .get(token)
            .ok_or(UnknownTaskToken)?
            .heartbeat
            .send(())
            .map_err(|_| UnknownTaskToken)
    }

    /// Aborts every running handler and forgets every waiting callback
    /// task (their executions are being abandoned: a shutdown).
    pub fn cancel_all(&self) {
        let running: Vec<AbortHandle> = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, h)| h)
            .collect();
        for handle in running {
            handle.abort();
        }
        if let Some(c) = &self.callbacks {
            c.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }

    /// True when a handler is registered under `key`.
    pub fn has(&self, key: &str) -> bool {
        self.handlers.contains_key(key)
    }

    /// Every call made so far, in dispatch order (none with
    /// [`EmbeddedDispatcher::without_call_records`]).
    pub fn calls(&self) -> Vec<CallRecord> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Number of tasks still running: handlers, and `.waitForTaskToken`
    /// tasks waiting for their answer.
    pub fn running(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Dispatcher for EmbeddedDispatcher {
    fn dispatch<'a>(
        &'a self,
        execution: &'a ExecutionInfo,
        request: TaskRequest,
        reply: CompletionSender,
    ) -> BoxFuture<'a, Result<(), DispatchError>> {
        Box::pin(async move {
            let task_id = request.task_id.to_string();
            let fail = |error: &str, cause: String| Completion {
                task_id: task_id.clone(),
                result: Err(TaskError::new(error, cause)),
            };
            let resolution = match resource::resolve(&request.resource, &request.input) {
                Ok(r) => r,
                Err(e) => {
                    // Not the participant's fault and not retryable: the
                    // definition asks for something that cannot be served.
                    let _ = reply.send(fail(errors::RUNTIME, e.to_string()));
                    return Ok(());
                }
            };
            let Some(key) = resolution.pick(|k| self.has(k)) else {
                let cause = format!(
                    "state '{}': no handler for resource '{}' (tried: {})",
                    request.state_name,
                    request.resource,
                    resolution.candidates.join(", ")
                );
                let _ = reply.send(fail(errors::RUNTIME, cause));
                return Ok(());
            };
            let Some(handler) = self.handlers.get(key).cloned() else {
                let _ = reply.send(fail(errors::RUNTIME, format!("handler '{key}' vanished")));
                return Ok(());
            };
            if self.record_calls {
                self.calls
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(CallRecord {
                        execution_id: execution.execution_id.clone(),
                        task_id: task_id.clone(),
                        key: key.to_string(),
                    });
            }

            let (heartbeat, heartbeats) = heartbeat_channel();
            let mut ctx = TaskContext::new(task_id.clone(), heartbeat.clone());
            ctx.execution_id = execution.execution_id.clone();
            ctx.execution_name = execution.execution_name.clone();
            ctx.state_name = request.state_name.to_string();
            ctx.resource = request.resource.to_string();
            ctx.handler = resolution.name.clone();
            ctx.attempt = request.attempt;
            // `.waitForTaskToken`: the handler gets the token as AWS's
            // participants do; without callbacks its return value plays the
            // role of SendTaskSuccess and its error of SendTaskFailure.
            ctx.task_token = request.task_token.clone();
            ctx.timeout_seconds = request.timeout_seconds;
            ctx.heartbeat_seconds = request.heartbeat_seconds;
            // The handler span: a child of the task's span (the current
            // OpenTelemetry context, set by the driver) when traced.
            let parent = sagaflow_telemetry::opentelemetry::Context::current();
            let span = tracing::info_span!(
                "handler",
                otel.name = %format_args!("handler {key}"),
                otel.kind = "consumer",
                sagaflow.task.handler = %key,
                sagaflow.task.id = %task_id,
                sagaflow.execution.id = %execution.execution_id,
                sagaflow.state.name = %request.state_name,
                // i64: exported as an integer, as on the task span.
                sagaflow.task.attempt = i64::from(request.attempt),
            );
            sagaflow_telemetry::propagation::set_parent_context(&span, &parent);
            ctx.trace_parent =
                sagaflow_telemetry::propagation::span_traceparent(&span).or_else(|| {
                    use sagaflow_telemetry::opentelemetry::trace::TraceContextExt as _;
                    sagaflow_telemetry::propagation::format_traceparent(
                        parent.span().span_context(),
                    )
                });

            let slot = (execution.execution_id.clone(), task_id.clone());
            let running = Arc::clone(&self.running);
            // Hold the registry lock across spawn so the task cannot remove
            // its entry before it is inserted.
            let mut guard = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            let heartbeat_seconds = request.heartbeat_seconds;
            let callbacks = match (&self.callbacks, &request.task_token) {
                (Some(c), Some(token)) if resolution.pattern == Pattern::WaitForTaskToken => {
                    let (answer, answered) = oneshot::channel();
                    c.lock().unwrap_or_else(PoisonError::into_inner).insert(
                        token.clone(),
                        Waiting {
                            execution_id: execution.execution_id.clone(),
                            task_id: task_id.clone(),
                            answer,
                            heartbeat,
                        },
                    );
                    Some((Arc::clone(c), token.clone(), answered))
                }
                _ => None,
            };
            let shape = resolution.shape;
            let input = resolution.input;
            let spawned_slot = slot.clone();
            let max_result_bytes = self.max_result_bytes;
            let state_name = request.state_name.to_string();
            let join = tokio::spawn(
                async move {
                    // Called inside the future that `supervise` guards, so
                    // that a panic in `call` itself (before its first
                    // await) fails the task too, as over NATS.
                    let call: BoxFuture<'static, Result<Value, TaskError>> =
                        Box::pin(async move { handler.call(input, ctx).await });
                    let (call, token) = match callbacks {
                        // The handler takes the token out; the answer comes
                        // through `complete_task`, as it is, and the
                        // heartbeat clock runs until it does. An answer
                        // that comes while the handler still runs ends the
                        // task (as over NATS, where the answer goes to the
                        // coordinator, not to the handler), and the handler
                        // finishes its work in the background, its result
                        // unused (as a Worker's would be); a handler error
                        // before any answer fails it.
                        Some((callbacks, token, mut answered)) => {
                            let withdrawn = |_| {
                                Err(TaskError::new(
                                    errors::TASK_FAILED,
                                    "the task's callback was withdrawn",
                                ))
                            };
                            let call: BoxFuture<'_, Result<Value, TaskError>> =
                                Box::pin(async move {
                                    let mut call = call;
                                    tokio::select! {
                                        handed_out = &mut call => handed_out?,
                                        answer = &mut answered => {
                                            tokio::spawn(async move {
                                                let _ = call.await;
                                            });
                                            return answer.unwrap_or_else(withdrawn);
                                        }
                                    };
                                    answered.await.unwrap_or_else(withdrawn)
                                });
                            (call, Some((callbacks, token)))
                        }
                        None => (call, None),
                    };
                    let mut result = supervise(call, heartbeats, heartbeat_seconds)
                        .await
                        // As a Worker sends it.
                        .map_err(|failure| {
                            sagaflow_participant::failure_within_limits(
                                failure,
                                max_result_bytes.unwrap_or(usize::MAX),
                            )
                        });
                    if let Some(max) = max_result_bytes
                        && token.is_none()
                    {
                        result = sagaflow_participant::within_limit(result, &state_name, max);
                    }
                    if shape == ResultShape::LambdaInvoke && token.is_none() {
                        result = result.map(|payload| {
                            // The request id: the task's idempotency
                            // key, as the handler's LambdaContext has it.
                            let request_id = format!("{}/{}", spawned_slot.0, spawned_slot.1);
                            resource::wrap_lambda_invoke(payload, &request_id)
                        });
                    }
                    running
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&spawned_slot);
                    if let Some((callbacks, token)) = token {
                        callbacks
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&token);
                    }
                    let _ = reply.send(Completion {
                        task_id: spawned_slot.1.clone(),
                        result,
                    });
                }
                .instrument(span),
            );
            guard.insert(slot, join.abort_handle());
            Ok(())
        })
    }

    fn cancel<'a>(&'a self, execution_id: &'a str, task_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let handle = self
                .running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&(execution_id.to_string(), task_id.to_string()));
            if let Some(h) = handle {
                h.abort();
            }
            if let Some(c) = &self.callbacks {
                c.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .retain(|_, w| !(w.execution_id == execution_id && w.task_id == task_id));
            }
        })
    }
}

/// Runs a handler's future under watch: a panic becomes `States.TaskFailed`
/// with the panic message; with `heartbeat_seconds`, a gap of that long
/// without a heartbeat (counted from the start, then from each heartbeat,
/// as AWS does) becomes `States.HeartbeatTimeout` and the handler is
/// dropped (aborted).
pub async fn supervise(
    call: BoxFuture<'_, Result<Value, TaskError>>,
    mut heartbeats: HeartbeatReceiver,
    heartbeat_seconds: Option<u64>,
) -> Result<Value, TaskError> {
    let mut call = AssertUnwindSafe(call).catch_unwind();
    let settle = |r: Result<Result<Value, TaskError>, Box<dyn std::any::Any + Send>>| match r {
        Ok(result) => result,
        Err(payload) => Err(TaskError::new(
            errors::TASK_FAILED,
            sagaflow_participant::panic_message(payload.as_ref()),
        )),
    };
    let Some(seconds) = heartbeat_seconds else {
        return settle(call.await);
    };
    let period = Duration::from_secs(seconds);
    let deadline_after = |from: Instant| from.checked_add(period);
    let mut deadline = deadline_after(Instant::now());
    let mut open = true;
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            r = &mut call => return settle(r),
            beat = heartbeats.recv(), if open => match beat {
                Some(()) => deadline = deadline_after(Instant::now()),
                None => open = false,
            },
            () = sleep => {
                return Err(TaskError::new(
                    errors::HEARTBEAT_TIMEOUT,
                    format!("no heartbeat received for {seconds} seconds"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use serde_json::json;

    use super::*;
    use sagaflow_participant::{handler_fn, lambda_fn};

    fn info() -> ExecutionInfo {
        ExecutionInfo {
            execution_id: "exec-1".into(),
            execution_name: "one".into(),
            state_machine_id: "sm".into(),
            state_machine_name: "sm".into(),
            role_arn: String::new(),
            seed: 1,
            rules: sagaflow_asl::interp::RULES,
        }
    }

    fn request(task_id: &str, resource: &str, input: Value, heartbeat: Option<u64>) -> TaskRequest {
        TaskRequest {
            task_id: task_id.into(),
            state_name: "S".into(),
            resource: resource.into(),
            input: input.into(),
            attempt: 0,
            timeout_seconds: None,
            heartbeat_seconds: heartbeat,
            task_token: Some("tok".into()),
            credentials: None,
        }
    }

    /// A hand-written participant: heartbeats `beats` times, `every` seconds
    /// apart, then hangs (or returns when `then_return`).
    struct Beater {
        beats: u32,
        every: u64,
        then_return: bool,
        dropped: Arc<AtomicBool>,
    }

    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl Handler for Beater {
        fn call(&self, _input: Value, ctx: TaskContext) -> BoxFuture<'_, Result<Value, TaskError>> {
            let guard = SetOnDrop(Arc::clone(&self.dropped));
            Box::pin(async move {
                let _guard = guard;
                for _ in 0..self.beats {
                    tokio::time::sleep(Duration::from_secs(self.every)).await;
                    ctx.heartbeat().await;
                }
                if self.then_return {
                    return Ok(json!("done"));
                }
                std::future::pending::<()>().await;
                Ok(Value::Null)
            })
        }
    }

    async fn one(
        handlers: Vec<(&str, Arc<dyn Handler>)>,
        req: TaskRequest,
    ) -> (Completion, EmbeddedDispatcher) {
        let d = EmbeddedDispatcher::new(handlers.into_iter().map(|(k, h)| (k.to_string(), h)));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let info = info();
        d.dispatch(&info, req, tx).await.unwrap();
        let c = rx.recv().await.unwrap();
        (c, d)
    }

    #[tokio::test]
    async fn calls_are_recorded_unless_asked_not_to() {
        let echo = || -> Arc<dyn Handler> {
            Arc::new(handler_fn(|v: Value, _c: TaskContext| async move {
                Ok::<_, TaskError>(v)
            }))
        };
        for record in [true, false] {
            let mut d = EmbeddedDispatcher::new([("echo".to_string(), echo())]);
            if !record {
                d = d.without_call_records();
            }
            let (tx, mut rx) = mpsc::unbounded_channel();
            d.dispatch(&info(), request("t1", "echo", json!(1), None), tx)
                .await
                .unwrap();
            assert_eq!(rx.recv().await.unwrap().result.unwrap(), json!(1));
            assert_eq!(d.calls().len(), usize::from(record));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_watchdog_times_out_and_aborts() {
        let dropped = Arc::new(AtomicBool::new(false));
        let h: Arc<dyn Handler> = Arc::new(Beater {
            beats: 3,
            every: 4,
            then_return: false,
            dropped: Arc::clone(&dropped),
        });
        let start = Instant::now();
        let (c, d) = one(vec![("beat", h)], request("t1", "beat", json!({}), Some(5))).await;
        let err = c.result.unwrap_err();
        assert_eq!(err.error, "States.HeartbeatTimeout");
        // Beats at 4, 8, 12 keep it alive; nothing after 12, so it dies at 17.
        assert_eq!(start.elapsed(), Duration::from_secs(17));
        assert!(
            dropped.load(Ordering::SeqCst),
            "the handler was not aborted"
        );
        assert_eq!(d.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_keep_a_long_task_alive() {
        let h: Arc<dyn Handler> = Arc::new(Beater {
            beats: 10,
            every: 4,
            then_return: true,
            dropped: Arc::default(),
        });
        let (c, _) = one(vec![("beat", h)], request("t1", "beat", json!({}), Some(5))).await;
        assert_eq!(c.result, Ok(json!("done")));
    }

    #[tokio::test(start_paused = true)]
    async fn no_heartbeat_limit_means_no_watchdog() {
        let h: Arc<dyn Handler> = Arc::new(Beater {
            beats: 2,
            every: 1000,
            then_return: true,
            dropped: Arc::default(),
        });
        let (c, _) = one(vec![("beat", h)], request("t1", "beat", json!({}), None)).await;
        assert_eq!(c.result, Ok(json!("done")));
    }

    /// A `.waitForTaskToken` handler answered before it returns: the task
    /// ends with the answer, and the handler still finishes what it does
    /// after handing out its token (it is not dropped midway).
    #[tokio::test]
    async fn a_callback_answered_early_lets_its_handler_finish() {
        let (tokens_tx, mut tokens) = mpsc::unbounded_channel::<String>();
        let (go_tx, go) = tokio::sync::oneshot::channel::<()>();
        let go = Arc::new(std::sync::Mutex::new(Some(go)));
        let finished = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&finished);
        let h: Arc<dyn Handler> = Arc::new(handler_fn(move |_: Value, c: TaskContext| {
            let tokens_tx = tokens_tx.clone();
            let go = go.lock().unwrap().take();
            let done = Arc::clone(&done);
            async move {
                let _ = tokens_tx.send(c.task_token.clone().unwrap_or_default());
                if let Some(go) = go {
                    let _ = go.await;
                }
                done.store(true, Ordering::SeqCst);
                Ok::<_, TaskError>(json!("handed out"))
            }
        }));
        let d = EmbeddedDispatcher::new([("ask".to_string(), h)]).with_callbacks();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut req = request("t1", "ask.waitForTaskToken", json!({}), None);
        req.task_token = Some("tok-1".into());
        d.dispatch(&info(), req, tx).await.unwrap();
        let token = tokens.recv().await.unwrap();
        d.complete_task(&token, Ok(json!({"answer": 1}))).unwrap();
        let c = rx.recv().await.unwrap();
        assert_eq!(c.result, Ok(json!({"answer": 1})));
        assert!(!finished.load(Ordering::SeqCst));
        go_tx.send(()).unwrap();
        for _ in 0..200 {
            if finished.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(finished.load(Ordering::SeqCst), "the handler was dropped");
    }

    #[tokio::test]
    async fn panics_become_task_failed() {
        let h: Arc<dyn Handler> = Arc::new(handler_fn(|_: Value, _c: TaskContext| async move {
            if true {
                panic!("boom at {}", 42);
            }
            Ok::<Value, TaskError>(Value::Null)
        }));
        let (c, _) = one(vec![("p", h)], request("t1", "p", json!({}), None)).await;
        let err = c.result.unwrap_err();
        assert_eq!(err.error, "States.TaskFailed");
        assert!(err.cause.contains("boom at 42"), "{}", err.cause);
    }

    #[tokio::test]
    async fn context_and_lambda_invoke_wrapping() {
        let h: Arc<dyn Handler> = Arc::new(handler_fn(|v: Value, c: TaskContext| async move {
            Ok::<_, TaskError>(
                json!({"in": v, "token": c.task_token, "exec": c.execution_name, "id": c.task_id}),
            )
        }));
        let req = request(
            "t9",
            "arn:aws:states:::lambda:invoke",
            json!({"FunctionName": "arn:aws:lambda:us-east-1:1:function:echo:prod", "Payload": {"a": 1}}),
            None,
        );
        let (c, d) = one(vec![("echo", h)], req).await;
        let out = c.result.unwrap();
        assert_eq!(
            out["Payload"],
            json!({"in": {"a": 1}, "token": "tok", "exec": "one", "id": "t9"})
        );
        assert_eq!(out["StatusCode"], json!(200));
        assert_eq!(d.calls()[0].key, "echo");
        assert_eq!(c.task_id, "t9");
    }

    #[tokio::test]
    async fn wait_for_task_token_result_is_not_wrapped() {
        let h: Arc<dyn Handler> = Arc::new(lambda_fn(
            |v: Value, c: sagaflow_participant::LambdaContext| async move {
                Ok(json!({"got": v, "token": c.task.task_token, "function": c.function_name}))
            },
        ));
        let req = request(
            "t1",
            "arn:aws:states:::lambda:invoke.waitForTaskToken",
            json!({"FunctionName": "approve", "Payload": {"x": 1}}),
            None,
        );
        let (c, _) = one(vec![("approve", h)], req).await;
        assert_eq!(
            c.result,
            Ok(json!({"got": {"x": 1}, "token": "tok", "function": "approve"}))
        );
    }

    #[tokio::test]
    async fn missing_handler_is_a_runtime_error() {
        let (c, d) = one(
            vec![],
            request("t1", "arn:aws:lambda:r:1:function:nope", json!({}), None),
        )
        .await;
        let err = c.result.unwrap_err();
        assert_eq!(err.error, "States.Runtime");
        assert!(err.cause.contains("nope"), "{}", err.cause);
        assert!(d.calls().is_empty());
        let (c, _) = one(
            vec![],
            request("t2", "arn:aws:states:::lambda:invoke", json!({}), None),
        )
        .await;
        assert!(c.result.unwrap_err().cause.contains("FunctionName"));
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_aborts_the_handler() {
        let dropped = Arc::new(AtomicBool::new(false));
        let h: Arc<dyn Handler> = Arc::new(Beater {
            beats: 0,
            every: 1,
            then_return: false,
            dropped: Arc::clone(&dropped),
        });
        let d = EmbeddedDispatcher::new([("h".to_string(), h)]);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let info = info();
        d.dispatch(&info, request("t1", "h", json!({}), None), tx)
            .await
            .unwrap();
        tokio::task::yield_now().await;
        assert_eq!(d.running(), 1);
        d.cancel("exec-1", "t1").await;
        // The aborted task drops its reply sender: the channel closes, no completion.
        assert_eq!(rx.recv().await, None);
        assert!(dropped.load(Ordering::SeqCst));
        assert_eq!(d.running(), 0);
        d.cancel("exec-1", "unknown").await;
    }

    fn token_request(task_id: &str, token: &str) -> TaskRequest {
        let mut r = request(
            task_id,
            "arn:aws:states:::lambda:invoke.waitForTaskToken",
            json!({"FunctionName": "review", "Payload": {}}),
            None,
        );
        r.task_token = Some(token.into());
        r
    }

    #[tokio::test]
    async fn callbacks_answer_wait_for_task_token_tasks() {
        let h: Arc<dyn Handler> = Arc::new(handler_fn(|_: Value, _c: TaskContext| async move {
            Ok::<_, TaskError>(json!("ignored: the callback answers"))
        }));
        let d = EmbeddedDispatcher::new([("review".to_string(), h)]).with_callbacks();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let info = info();
        d.dispatch(&info, token_request("t1", "tok-1"), tx.clone())
            .await
            .unwrap();
        d.dispatch(&info, token_request("t2", "tok-2"), tx)
            .await
            .unwrap();
        // The handlers return, yet nothing is answered until the callbacks:
        // both tasks wait.
        while d.calls().len() < 2 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err());
        assert_eq!(d.running(), 2);
        assert_eq!(d.complete_task("nope", Ok(json!(1))), Err(UnknownTaskToken));
        d.complete_task("tok-2", Err(TaskError::new("Rejected", "no")))
            .unwrap();
        d.complete_task("tok-1", Ok(json!({"approved": true})))
            .unwrap();
        let c = rx.recv().await.unwrap();
        assert_eq!(c.task_id, "t2");
        assert_eq!(c.result, Err(TaskError::new("Rejected", "no")));
        let c = rx.recv().await.unwrap();
        assert_eq!(c.task_id, "t1");
        assert_eq!(c.result, Ok(json!({"approved": true})));
        // A token answers once.
        assert_eq!(
            d.complete_task("tok-1", Ok(json!(2))),
            Err(UnknownTaskToken)
        );
        assert_eq!(d.heartbeat_task("tok-1"), Err(UnknownTaskToken));
        while d.running() > 0 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn callbacks_still_fail_on_handler_errors_and_forget_cancelled_tasks() {
        let h: Arc<dyn Handler> = Arc::new(handler_fn(|v: Value, _c: TaskContext| async move {
            if v.get("fail").is_some() {
                return Err(TaskError::new("Unreachable", "reviewer system down"));
            }
            Ok(json!(null))
        }));
        let d = EmbeddedDispatcher::new([("review".to_string(), h)]).with_callbacks();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let info = info();
        let mut failing = token_request("t1", "tok-1");
        failing.input = json!({"FunctionName": "review", "Payload": {"fail": true}}).into();
        d.dispatch(&info, failing, tx.clone()).await.unwrap();
        let c = rx.recv().await.unwrap();
        assert_eq!(c.result.unwrap_err().error, "Unreachable");
        assert_eq!(
            d.complete_task("tok-1", Ok(json!(1))),
            Err(UnknownTaskToken)
        );

        d.dispatch(&info, token_request("t2", "tok-2"), tx)
            .await
            .unwrap();
        d.cancel("exec-1", "t2").await;
        assert_eq!(
            d.complete_task("tok-2", Ok(json!(1))),
            Err(UnknownTaskToken)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn callback_heartbeats_reset_the_heartbeat_clock_until_the_answer() {
        let h: Arc<dyn Handler> = Arc::new(handler_fn(|_: Value, _c: TaskContext| async move {
            Ok::<_, TaskError>(json!(null))
        }));
        let d = EmbeddedDispatcher::new([("review".to_string(), h)]).with_callbacks();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let info = info();
        let mut beating = token_request("t1", "tok-1");
        beating.heartbeat_seconds = Some(2);
        let mut silent = token_request("t2", "tok-2");
        silent.heartbeat_seconds = Some(2);
        d.dispatch(&info, beating, tx.clone()).await.unwrap();
        d.dispatch(&info, silent, tx).await.unwrap();
        let start = Instant::now();
        // tok-1 beats every second for 5 s; tok-2 never does.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            d.heartbeat_task("tok-1").unwrap();
        }
        let c = rx.recv().await.unwrap();
        assert_eq!(c.task_id, "t2");
        assert_eq!(c.result.unwrap_err().error, errors::HEARTBEAT_TIMEOUT);
        assert!(start.elapsed() >= Duration::from_secs(2));
        assert_eq!(d.heartbeat_task("tok-2"), Err(UnknownTaskToken));
        assert!(rx.try_recv().is_err(), "tok-1 is still alive");
        d.complete_task("tok-1", Ok(json!("late but alive")))
            .unwrap();
        let c = rx.recv().await.unwrap();
        assert_eq!(c.task_id, "t1");
        assert_eq!(c.result, Ok(json!("late but alive")));
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_ends_a_callback_task_whose_handler_still_runs() {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = Arc::clone(&dropped);
        let h: Arc<dyn Handler> = Arc::new(handler_fn(move |_: Value, _c: TaskContext| {
            let flag = Flag(Arc::clone(&flag));
            async move {
                let _flag = flag;
                // Hands the token out, then keeps working, for ever.
                std::future::pending::<()>().await;
                Ok::<_, TaskError>(json!(null))
            }
        }));
        let d = EmbeddedDispatcher::new([("review".to_string(), h)]).with_callbacks();
        let (tx, mut rx) = mpsc::unbounded_channel();
        d.dispatch(&info(), token_request("t1", "tok-1"), tx)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        d.complete_task("tok-1", Ok(json!({"approved": true})))
            .unwrap();
        let c = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("the answer did not end the task")
            .unwrap();
        assert_eq!(c.result, Ok(json!({"approved": true})));
        // The task is over; its handler's work goes on in the background
        // (as a Worker's does when its task was answered by callback).
        tokio::task::yield_now().await;
        assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(d.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_callback_task_answers_nothing() {
        let h: Arc<dyn Handler> = Arc::new(handler_fn(|_: Value, _c: TaskContext| async move {
            Ok::<_, TaskError>(json!(null))
        }));
        let d = EmbeddedDispatcher::new([("review".to_string(), h)]).with_callbacks();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut request = token_request("t1", "tok-1");
        request.heartbeat_seconds = Some(1);
        d.dispatch(&info(), request, tx).await.unwrap();
        while d.calls().is_empty() {
            tokio::task::yield_now().await;
        }
        d.cancel("exec-1", "t1").await;
        assert_eq!(d.running(), 0);
        assert_eq!(d.heartbeat_task("tok-1"), Err(UnknownTaskToken));
        // Neither a heartbeat timeout nor a "withdrawn" failure comes.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn without_callbacks_the_handler_answers() {
        let h: Arc<dyn Handler> = Arc::new(handler_fn(|_: Value, _c: TaskContext| async move {
            Ok::<_, TaskError>(json!("from the handler"))
        }));
        let (c, d) = one(vec![("review", h)], token_request("t1", "tok-1")).await;
        assert_eq!(c.result, Ok(json!("from the handler")));
        assert_eq!(
            d.complete_task("tok-1", Ok(json!(1))),
            Err(UnknownTaskToken)
        );
    }
}
