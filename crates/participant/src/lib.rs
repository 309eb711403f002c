//! # sagaflow-participant
//!
//! What a microservice embeds to serve Sagaflow Task states: a [`Handler`]
//! receives a task's input and a [`TaskContext`] and returns the task's
//! result or a [`TaskError`] (whose `error` name is what `Retry` and `Catch`
//! match). The [`stubs`] module is a ready-made participant driven by a JSON
//! file, used by the local runner to mock services.
//!
//! The same `Handler` serves tasks in-process (embedded mode) and over NATS
//! JetStream: the [`worker`] module's [`Worker`] pulls a deployment's tasks
//! and publishes their results; the handler itself does not know how tasks
//! arrive.

#![warn(missing_docs)]

pub mod stubs;
pub mod worker;

pub use worker::{ShutdownHandle, Worker, WorkerBuilder, WorkerError};

use std::future::Future;
use std::marker::PhantomData;

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;

/// Error name of a typed handler ([`handler_fn`]) whose input does not
/// deserialize into the handler's input type. It is a participant error like
/// any other: `States.ALL` and `States.TaskFailed` match it. (The `States.`
/// prefix is reserved by ASL for the runtime's own errors, so a participant
/// does not use it.)
pub const INVALID_INPUT: &str = "Sagaflow.InvalidInput";

/// Error name of a typed handler whose result does not serialize to JSON.
pub const INVALID_OUTPUT: &str = "Sagaflow.InvalidOutput";

/// A task failure reported by a participant: `error` is the ASL error name
/// matched by `Retry`/`Catch` `ErrorEquals`, `cause` is free text (often
/// JSON) that ends up in the error object's `Cause`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, serde::Deserialize)]
#[error("{error}: {cause}")]
pub struct TaskError {
    /// The error name (`"PaymentDeclined"`, `"Lambda.ServiceException"`, ...).
    pub error: String,
    /// The cause.
    pub cause: String,
}

impl TaskError {
    /// A task error with this name and cause.
    pub fn new(error: impl Into<String>, cause: impl Into<String>) -> TaskError {
        TaskError {
            error: error.into(),
            cause: cause.into(),
        }
    }
}

/// The sending half of a task's heartbeat channel. The runtime keeps the
/// receiving half and treats every message as a heartbeat.
pub type HeartbeatSender = mpsc::UnboundedSender<()>;

/// The receiving half of a task's heartbeat channel.
pub type HeartbeatReceiver = mpsc::UnboundedReceiver<()>;

/// A new heartbeat channel for one task.
pub fn heartbeat_channel() -> (HeartbeatSender, HeartbeatReceiver) {
    mpsc::unbounded_channel()
}

/// What a handler knows about the task it serves.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The task's invocation id within its execution: the same on every
    /// replay and distinct for each state visit, Map/Parallel index and
    /// retry attempt. Ids repeat across executions (`BookFlight@0#0`): the
    /// idempotency key is [`TaskContext::idempotency_key`].
    pub task_id: String,
    /// `$$.Execution.Id`.
    pub execution_id: String,
    /// `$$.Execution.Name`.
    pub execution_name: String,
    /// The Task state's name.
    pub state_name: String,
    /// The Task state's `Resource`, verbatim.
    pub resource: String,
    /// The name of the handler serving the task: for a Lambda resource
    /// (`arn:aws:lambda:...:function:NAME`, or `arn:aws:states:::lambda:invoke`
    /// with a `FunctionName`), the function's name. Empty when the runtime
    /// did not say.
    pub handler: String,
    /// Retry attempt, 0 for the first try (`$$.State.RetryCount`).
    pub attempt: u32,
    /// `$$.Task.Token` for `.waitForTaskToken` resources.
    pub task_token: Option<String>,
    /// The state's `TimeoutSeconds`, when set: the runtime gives up on the
    /// task this long after it scheduled it (a redelivered or long-queued
    /// task has less left), so work past it is wasted; a `Worker` stops the
    /// handler that long after it started it (not for `.waitForTaskToken`
    /// tasks, answered through the API).
    pub timeout_seconds: Option<u64>,
    /// The state's `HeartbeatSeconds`, when set: call
    /// [`TaskContext::heartbeat`] more often than this, or the runtime
    /// fails the task with `States.HeartbeatTimeout` (and a `Worker` stops
    /// the handler, but for `.waitForTaskToken` tasks).
    pub heartbeat_seconds: Option<u64>,
    /// The W3C `traceparent` of the span this task runs under, when tracing
    /// is on: forward it to the services the handler calls.
    pub trace_parent: Option<String>,
    heartbeat: HeartbeatSender,
}

impl TaskContext {
    /// A context for task `task_id` whose heartbeats go to `heartbeat`. The
    /// other fields start empty (attempt 0, no token); set them directly.
    pub fn new(task_id: impl Into<String>, heartbeat: HeartbeatSender) -> TaskContext {
        TaskContext {
            task_id: task_id.into(),
            execution_id: String::new(),
            execution_name: String::new(),
            state_name: String::new(),
            resource: String::new(),
            handler: String::new(),
            attempt: 0,
            task_token: None,
            timeout_seconds: None,
            heartbeat_seconds: None,
            trace_parent: None,
            heartbeat,
        }
    }

    /// The task's idempotency key, unique across executions:
    /// `EXECUTION_ID/TASK_ID`. A task delivered twice has the same key; key
    /// your own writes by it to make their effect happen once. (An
    /// execution's name, and so its keys, can come back once the execution
    /// was deleted after its retention; see `docs/guarantees.md` §2.)
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.execution_id, self.task_id)
    }

    /// Tells the runtime the task is still alive (AWS's
    /// `SendTaskHeartbeat`): it restarts the `HeartbeatSeconds` countdown.
    /// When the runtime no longer waits for this task (it was cancelled or
    /// timed out) the heartbeat is dropped. Calling it often is cheap: over
    /// NATS the Worker sends at most one heartbeat per quarter of
    /// `HeartbeatSeconds` (per second at most), the last one of a burst at
    /// the end of its window.
    pub async fn heartbeat(&self) {
        // A closed channel means nobody waits for this task any more: there
        // is nobody to tell, which is not the handler's problem.
        let _ = self.heartbeat.send(());
    }
}

/// Serves tasks: takes a task's effective input and returns its result.
///
/// Object safe: runtimes store handlers as `Arc<dyn Handler>`.
pub trait Handler: Send + Sync {
    /// Runs the task.
    fn call(&self, input: Value, ctx: TaskContext) -> BoxFuture<'_, Result<Value, TaskError>>;
}

/// A [`Handler`] made from a typed async function (see [`handler_fn`]).
pub struct FnHandler<F, T, U> {
    f: F,
    _types: PhantomData<fn(T) -> U>,
}

/// Makes a handler from a typed async function. The task input is
/// deserialized into `T` (failure: a [`TaskError`] named
/// [`INVALID_INPUT`] with serde's message as cause) and the result is
/// serialized from `U` (failure: [`INVALID_OUTPUT`]).
///
/// ```
/// use sagaflow_participant::{handler_fn, TaskContext, TaskError};
/// #[derive(serde::Deserialize)]
/// struct Order { id: u32 }
/// let h = handler_fn(|order: Order, _ctx: TaskContext| async move {
///     Ok::<_, TaskError>(serde_json::json!({ "reserved": order.id }))
/// });
/// # let _ = h;
/// ```
pub fn handler_fn<F, Fut, T, U>(f: F) -> FnHandler<F, T, U>
where
    F: Fn(T, TaskContext) -> Fut + Send + Sync,
    Fut: Future<Output = Result<U, TaskError>> + Send + 'static,
    T: DeserializeOwned,
    U: Serialize,
{
    FnHandler {
        f,
        _types: PhantomData,
    }
}

impl<F, Fut, T, U> Handler for FnHandler<F, T, U>
where
    F: Fn(T, TaskContext) -> Fut + Send + Sync,
    Fut: Future<Output = Result<U, TaskError>> + Send + 'static,
    T: DeserializeOwned,
    U: Serialize,
{
    fn call(&self, input: Value, ctx: TaskContext) -> BoxFuture<'_, Result<Value, TaskError>> {
        let typed: Result<T, TaskError> = serde_json::from_value(input)
            .map_err(|e| TaskError::new(INVALID_INPUT, format!("invalid task input: {e}")));
        let fut = typed.map(|t| (self.f)(t, ctx));
        Box::pin(async move {
            let output = fut?.await?;
            serde_json::to_value(output)
                .map_err(|e| TaskError::new(INVALID_OUTPUT, format!("invalid task result: {e}")))
        })
    }
}

/// Cuts `text` to at most `max` bytes, on a character boundary, marking the
/// cut with `... (truncated)`: how a task failure's cause is held to a
/// limit (AWS's 32,768, or the payload limit when lower).
pub fn cut_text(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    const MARK: &str = "... (truncated)";
    let mark = if max > MARK.len() { MARK } else { "" };
    let mut end = max - mark.len();
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = text.get(..end).unwrap_or_default().to_string();
    out.push_str(mark);
    out
}

/// The context of a Lambda-style handler ([`lambda_fn`]), shaped after the
/// Lambda runtime's context object.
#[derive(Debug, Clone)]
pub struct LambdaContext {
    /// Lambda's `aws_request_id`: here the task's idempotency key
    /// ([`TaskContext::idempotency_key`]: unique across executions, the
    /// same when a task is delivered again), also the `RequestId` of a
    /// `lambda:invoke` result.
    pub request_id: String,
    /// The function name: the handler's name ([`TaskContext::handler`]; for
    /// `lambda:invoke`, the name in `FunctionName`), or else the last
    /// `:`-separated segment of the resource.
    pub function_name: String,
    /// Lambda's `invoked_function_arn`: here the Task's `Resource`.
    pub invoked_function_arn: String,
    /// The full task context (heartbeats, task token, execution).
    pub task: TaskContext,
}

impl LambdaContext {
    fn from_task(task: TaskContext) -> LambdaContext {
        let function_name = if task.handler.is_empty() {
            task.resource
                .rsplit(':')
                .next()
                .unwrap_or_default()
                .to_string()
        } else {
            task.handler.clone()
        };
        LambdaContext {
            request_id: task.idempotency_key(),
            function_name,
            invoked_function_arn: task.resource.clone(),
            task,
        }
    }
}

/// A [`Handler`] made from a Lambda-style function (see [`lambda_fn`]).
pub struct LambdaHandler<F> {
    f: F,
}

/// Makes a handler from a Lambda-style async function taking the raw JSON
/// event and a [`LambdaContext`], so code written for AWS Lambda ports with
/// little change.
pub fn lambda_fn<F, Fut>(f: F) -> LambdaHandler<F>
where
    F: Fn(Value, LambdaContext) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
{
    LambdaHandler { f }
}

impl<F, Fut> Handler for LambdaHandler<F>
where
    F: Fn(Value, LambdaContext) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
{
    fn call(&self, input: Value, ctx: TaskContext) -> BoxFuture<'_, Result<Value, TaskError>> {
        Box::pin((self.f)(input, LambdaContext::from_task(ctx)))
    }
}

/// How deeply a task result may nest arrays and objects: the interpreter's
/// limit (`sagaflow_asl::interp::MAX_DEPTH`). Deeper results could not be
/// recorded (histories are read back with serde_json's nesting limit of
/// 128, envelope included), nor even decoded by the coordinator.
pub const MAX_RESULT_DEPTH: usize = 100;

/// True when serialized JSON nests arrays and objects more than `max`
/// levels deep (brackets inside strings do not count).
fn json_deeper_than(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A handler's failure as its task's answer, in-process and over NATS
/// alike: its error name held to AWS's 256 characters, its cause to
/// 32,768 bytes (or `max_bytes`, when lower). A Worker also needs this to
/// fit the failure in a message; the embedded runtime does the same so
/// that the same answers make the same run.
///
/// The cause is also cut so that its JSON text (escaped: a control
/// character takes six bytes, a quote two) fits in `max_bytes`: a message
/// over the broker's limit could never be delivered.
pub fn failure_within_limits(failure: TaskError, max_bytes: usize) -> TaskError {
    use sagaflow_protocol::api::{MAX_CAUSE_CHARS, MAX_ERROR_CHARS};
    let cause = cut_text(failure.cause, max_bytes.min(MAX_CAUSE_CHARS));
    let cause = if json_escaped_len(&cause) <= max_bytes {
        cause
    } else {
        cut_escaped(&cause, max_bytes)
    };
    TaskError {
        error: failure.error.chars().take(MAX_ERROR_CHARS).collect(),
        cause,
    }
}

/// The length of a character inside a JSON string, escaped as serde_json
/// escapes it.
fn json_escaped_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The length of `text` inside a JSON string (without the quotes).
fn json_escaped_len(text: &str) -> usize {
    text.chars().map(json_escaped_char_len).sum()
}

/// The longest start of `text` whose escaped length, with the
/// `... (truncated)` mark, is at most `max` bytes.
fn cut_escaped(text: &str, max: usize) -> String {
    const MARK: &str = "... (truncated)";
    let mark = if max > MARK.len() { MARK } else { "" };
    let budget = max - mark.len();
    let mut used = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        used += json_escaped_char_len(c);
        if used > budget {
            break;
        }
        end = i + c.len_utf8();
    }
    let mut out = text.get(..end).unwrap_or_default().to_string();
    out.push_str(mark);
    out
}

/// A handler's result as its task's answer, in-process and over NATS
/// alike: a success whose JSON is over `max_bytes`, or nested more than
/// [`MAX_RESULT_DEPTH`] levels deep, becomes a `States.DataLimitExceeded`
/// failure of state `state_name`, with AWS's cause for the size.
pub fn within_limit(
    result: Result<serde_json::Value, TaskError>,
    state_name: &str,
    max_bytes: usize,
) -> Result<serde_json::Value, TaskError> {
    let output = result?;
    match serde_json::to_vec(&output) {
        Ok(bytes) if bytes.len() <= max_bytes && json_deeper_than(&bytes, MAX_RESULT_DEPTH) => {
            Err(TaskError::new(
                worker::DATA_LIMIT_EXCEEDED,
                format!(
                    "The state/task '{state_name}' returned a result nested more than \
                     {MAX_RESULT_DEPTH} levels deep."
                ),
            ))
        }
        Ok(bytes) if bytes.len() <= max_bytes => Ok(output),
        Ok(_) => Err(TaskError::new(
            worker::DATA_LIMIT_EXCEEDED,
            format!(
                "The state/task '{state_name}' returned a result with a size exceeding the \
                 maximum number of bytes service limit."
            ),
        )),
        Err(e) => Err(TaskError::new(
            INVALID_OUTPUT,
            format!("the task's result does not serialize: {e}"),
        )),
    }
}

/// The text of a handler's panic, as its task's failure cause
/// (`States.TaskFailed`): the panic message, in embedded mode and over NATS
/// alike.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "the handler panicked".to_string()
    }
}

/// Waits until the process is asked to stop: Ctrl-C (SIGINT) or, on Unix,
/// SIGTERM (what `docker stop`, Kubernetes and systemd send), and names the
/// signal. Stop the worker after it (`Worker::shutdown_handle`), so that tasks
/// in flight finish or are handed back.
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// let signal = sagaflow_participant::stop_signal().await?;
/// eprintln!("{signal}: stopping");
/// # Ok(())
/// # }
/// ```
pub async fn stop_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|()| "Ctrl-C"),
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
    }
}

#[cfg(test)]
mod tests {
    /// A cause full of characters that JSON escapes (six bytes for a
    /// control character, two for a quote) is cut so that its JSON text
    /// fits the limit, not only its raw bytes.
    #[test]
    fn a_failure_cause_fits_the_limit_once_escaped() {
        for (c, max) in [
            ('\u{1b}', 50_000),
            ('"', 40_000),
            ('\n', 1_000),
            ('é', 1_001),
        ] {
            let cause: String = std::iter::repeat_n(c, 32_768).collect();
            let cut = failure_within_limits(TaskError::new("E", cause), max);
            let json = serde_json::to_string(&cut.cause).unwrap();
            assert!(json.len() - 2 <= max, "{c:?}: {} > {max}", json.len() - 2);
            assert!(json.len() - 2 + 6 > max, "{c:?}: cut too short");
            assert!(cut.cause.ends_with("... (truncated)"));
        }
        // Plain text within the limits is left alone.
        let kept = failure_within_limits(TaskError::new("E", "no seats"), 100);
        assert_eq!(kept.cause, "no seats");
    }
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    #[test]
    fn results_nested_too_deep_are_refused_and_brackets_in_strings_do_not_count() {
        let nest = |levels: usize| {
            let mut v = json!("[[[{{{");
            for _ in 0..levels {
                v = json!({"a": [v]});
            }
            v
        };
        // 50 objects holding 50 arrays: 100 levels.
        assert!(within_limit(Ok(nest(50)), "S", usize::MAX).is_ok());
        let err = within_limit(Ok(nest(51)), "S", usize::MAX).unwrap_err();
        assert_eq!(err.error, worker::DATA_LIMIT_EXCEEDED);
        assert_eq!(
            err.cause,
            "The state/task 'S' returned a result nested more than 100 levels deep."
        );
        assert!(!json_deeper_than(br#"["\"[[[[", {"x": "]]]\\"}]"#, 2));
        assert!(json_deeper_than(br#"["\"", [[1]]]"#, 2));
    }

    fn ctx() -> (TaskContext, HeartbeatReceiver) {
        let (tx, rx) = heartbeat_channel();
        let mut c = TaskContext::new("t-1", tx);
        c.resource = "arn:aws:lambda:us-east-1:123456789012:function:reserve".into();
        (c, rx)
    }

    #[derive(serde::Deserialize)]
    struct Order {
        id: u32,
    }

    #[tokio::test]
    async fn typed_handler_round_trips() {
        let h: Arc<dyn Handler> = Arc::new(handler_fn(|o: Order, c: TaskContext| async move {
            Ok::<_, TaskError>(json!({"id": o.id, "task": c.task_id}))
        }));
        let (c, _rx) = ctx();
        let out = h.call(json!({"id": 7}), c).await;
        assert_eq!(out, Ok(json!({"id": 7, "task": "t-1"})));
    }

    #[tokio::test]
    async fn typed_handler_rejects_bad_input() {
        let h = handler_fn(|o: Order, _c: TaskContext| async move { Ok::<_, TaskError>(o.id) });
        let (c, _rx) = ctx();
        let err = h.call(json!({"id": "x"}), c).await.unwrap_err();
        assert_eq!(err.error, INVALID_INPUT);
        assert!(err.cause.contains("invalid type"), "{}", err.cause);
    }

    #[tokio::test]
    async fn typed_handler_passes_errors_through() {
        let h = handler_fn(|_: Value, _c: TaskContext| async move {
            Err::<Value, _>(TaskError::new("Declined", "no money"))
        });
        let (c, _rx) = ctx();
        assert_eq!(
            h.call(json!(null), c).await,
            Err(TaskError::new("Declined", "no money"))
        );
    }

    #[tokio::test]
    async fn lambda_handler_gets_lambda_context() {
        let h = lambda_fn(|event: Value, c: LambdaContext| async move {
            Ok(json!({"event": event, "fn": c.function_name, "req": c.request_id}))
        });
        let (mut c, _rx) = ctx();
        c.execution_id = "arn:aws:states:local:000000000000:execution:m:e1".into();
        assert_eq!(
            h.call(json!(1), c).await,
            Ok(json!({"event": 1, "fn": "reserve",
                      "req": "arn:aws:states:local:000000000000:execution:m:e1/t-1"}))
        );
    }

    #[tokio::test]
    async fn heartbeat_reaches_the_runtime() {
        let (c, mut rx) = ctx();
        c.heartbeat().await;
        c.heartbeat().await;
        assert_eq!(rx.recv().await, Some(()));
        assert_eq!(rx.recv().await, Some(()));
        drop(c);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn heartbeat_after_runtime_gave_up_is_harmless() {
        let (c, rx) = ctx();
        drop(rx);
        c.heartbeat().await;
    }
}
