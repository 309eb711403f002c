//! A typed client of the API service ([`super::api`]): one method per
//! operation.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use sagaflow_coordinator::cluster::client::ApiClient;
//! use sagaflow_protocol::{Namespace, api::StartExecutionRequest};
//!
//! let nats = sagaflow_nats::connect("nats://127.0.0.1:4222").await?;
//! let api = ApiClient::new(nats, Namespace::default());
//! let started = api
//!     .start_execution(StartExecutionRequest {
//!         state_machine: "travel".into(),
//!         version: None,
//!         name: Some("trip-42".into()),
//!         input: Some(serde_json::json!({"trip": 42})),
//!         traceparent: None,
//!     })
//!     .await?;
//! let done = api
//!     .wait_for_completion(&started.execution_arn, std::time::Duration::from_secs(60))
//!     .await?;
//! println!("{:?}", done.status);
//! # Ok(()) }
//! ```

use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use sagaflow_protocol::api::{
    ApiError, CreateStateMachine, DescribeStateMachine, ExecutionDescription, ExecutionHistory,
    ExecutionList, ExecutionRequest, ExecutionStatus, HistoryRequest, ListExecutions, Operation,
    Reply, SendTaskFailure, SendTaskHeartbeat, SendTaskSuccess, StartExecutionReply,
    StartExecutionRequest, StateMachineSummary, StateMachineVersion, StopExecutionRequest,
};
use sagaflow_protocol::{ExecutionRef, Namespace};

/// A call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// The service answered with an error.
    #[error("{0}")]
    Api(ApiError),
    /// Nobody serves the API.
    #[error(
        "no coordinator is serving the API on {subject}; start one with `sagaflow coordinator`"
    )]
    NoResponders {
        /// The subject asked.
        subject: String,
    },
    /// No answer in time.
    #[error("no answer from the API on {subject} within {timeout:?}")]
    Timeout {
        /// The subject asked.
        subject: String,
        /// The time waited.
        timeout: Duration,
    },
    /// [`ApiClient::wait_for_completion`]: the execution had not ended
    /// when the time was up.
    #[error(
        "execution {execution_arn} {} after {waited:?}",
        if *.seen { "is still running" } else { "has not started (its start is still queued, or it does not exist)" }
    )]
    StillRunning {
        /// The execution.
        execution_arn: String,
        /// The time waited.
        waited: Duration,
        /// Whether it was seen running (else the API never knew it).
        seen: bool,
    },
    /// NATS failed.
    #[error("NATS: {0}")]
    Transport(String),
    /// The answer did not decode.
    #[error("cannot decode the API's answer: {0}")]
    Decode(String),
}

impl ApiClientError {
    /// The API error code, when the service answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiClientError::Api(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// A client of the API service.
#[derive(Clone, Debug)]
pub struct ApiClient {
    client: async_nats::Client,
    ns: Namespace,
    timeout: Duration,
}

/// The default time to wait for an answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl ApiClient {
    /// A client of the API of the deployment named by `ns`.
    pub fn new(client: async_nats::Client, ns: Namespace) -> ApiClient {
        ApiClient {
            client,
            ns,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client waiting at most `timeout` for each answer.
    pub fn with_timeout(mut self, timeout: Duration) -> ApiClient {
        self.timeout = timeout;
        self
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// Sends a request body as is and decodes the reply: for tests and
    /// tools that build requests themselves. A request the coordinator
    /// refused unhandled for having too many (`ThrottlingException`) is
    /// sent again after a pause (random, growing from 10–20 ms to
    /// 0.5–1 s), for as long as the client's time-out.
    pub async fn call_raw<T: DeserializeOwned>(
        &self,
        op: Operation,
        body: Vec<u8>,
    ) -> Result<T, ApiClientError> {
        let body = bytes::Bytes::from(body);
        // A time-out past what an instant holds: no deadline to speak of.
        let now = tokio::time::Instant::now();
        let give_up = now
            .checked_add(self.timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        let mut pause = Duration::from_millis(20);
        loop {
            // Each try within what is left of the time-out.
            let left = give_up.saturating_duration_since(tokio::time::Instant::now());
            match self.call_once(op, body.clone(), left).await {
                Err(ApiClientError::Api(e))
                    if e.code == super::api::codes::THROTTLED
                        && tokio::time::Instant::now() + pause < give_up =>
                {
                    // Between half the pause and all of it, so that clients
                    // refused together do not all come back together.
                    let half = pause / 2;
                    let jitter = super::api::random_u64() % (half.as_millis() as u64 + 1);
                    tokio::time::sleep(half + Duration::from_millis(jitter)).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    async fn call_once<T: DeserializeOwned>(
        &self,
        op: Operation,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<T, ApiClientError> {
        let subject = self.ns.api_subject(op);
        let request = async_nats::Request::new()
            .payload(body)
            .timeout(Some(timeout));
        let message = match self.client.send_request(subject.clone(), request).await {
            Ok(m) => m,
            Err(e) => {
                return Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => {
                        ApiClientError::NoResponders { subject }
                    }
                    async_nats::RequestErrorKind::TimedOut => ApiClientError::Timeout {
                        subject,
                        timeout: self.timeout,
                    },
                    async_nats::RequestErrorKind::MaxPayloadExceeded => {
                        ApiClientError::Api(ApiError::new(
                            "PayloadTooLarge",
                            format!("the request is larger than the server accepts: {e}"),
                        ))
                    }
                    _ => ApiClientError::Transport(e.to_string()),
                });
            }
        };
        match serde_json::from_slice::<Reply<T>>(&message.payload) {
            Ok(Reply::Ok(v)) => Ok(v),
            Ok(Reply::Error(e)) => Err(ApiClientError::Api(e)),
            Err(e) => {
                // A service error without our body (another implementation).
                let header = |name: &str| {
                    message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .map(|v| v.as_str().to_string())
                };
                match header(async_nats::service::NATS_SERVICE_ERROR) {
                    Some(description) => Err(ApiClientError::Api(ApiError::new(
                        "Internal",
                        format!(
                            "{description} (code {})",
                            header(async_nats::service::NATS_SERVICE_ERROR_CODE)
                                .unwrap_or_default()
                        ),
                    ))),
                    None => Err(ApiClientError::Decode(e.to_string())),
                }
            }
        }
    }

    async fn call<Q: Serialize, T: DeserializeOwned>(
        &self,
        op: Operation,
        request: &Q,
    ) -> Result<T, ApiClientError> {
        let body =
            serde_json::to_vec(request).map_err(|e| ApiClientError::Decode(e.to_string()))?;
        self.call_raw(op, body).await
    }

    /// `CreateStateMachine`: stores a new version (the same definition as
    /// the latest version returns that version).
    pub async fn create_state_machine(
        &self,
        name: &str,
        definition: &str,
    ) -> Result<StateMachineVersion, ApiClientError> {
        self.call(
            Operation::CreateStateMachine,
            &CreateStateMachine {
                name: name.to_string(),
                definition: definition.to_string(),
            },
        )
        .await
    }

    /// `DescribeStateMachine` (the latest version when `version` is None).
    pub async fn describe_state_machine(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<StateMachineVersion, ApiClientError> {
        self.call(
            Operation::DescribeStateMachine,
            &DescribeStateMachine {
                name: name.to_string(),
                version,
            },
        )
        .await
    }

    /// `ListStateMachines`.
    pub async fn list_state_machines(&self) -> Result<Vec<StateMachineSummary>, ApiClientError> {
        self.call(Operation::ListStateMachines, &json!({})).await
    }

    /// `StartExecution`.
    ///
    /// Without a `traceparent` in the request, the caller's current trace
    /// context (its current `tracing` span under the OpenTelemetry layer, or
    /// OpenTelemetry's current context) is sent: the execution's trace hangs
    /// under the caller's span.
    pub async fn start_execution(
        &self,
        mut request: StartExecutionRequest,
    ) -> Result<StartExecutionReply, ApiClientError> {
        if request.traceparent.is_none() {
            request.traceparent = sagaflow_telemetry::propagation::current_traceparent();
        }
        self.call(Operation::StartExecution, &request).await
    }

    /// `DescribeExecution`.
    pub async fn describe_execution(
        &self,
        execution_arn: &str,
    ) -> Result<ExecutionDescription, ApiClientError> {
        self.call(
            Operation::DescribeExecution,
            &ExecutionRequest {
                execution_arn: execution_arn.to_string(),
            },
        )
        .await
    }

    /// `GetExecutionHistory`.
    pub async fn execution_history(
        &self,
        execution_arn: &str,
    ) -> Result<ExecutionHistory, ApiClientError> {
        let mut events = Vec::new();
        let mut next_token = None;
        loop {
            let page = self
                .execution_history_page(&HistoryRequest {
                    execution_arn: execution_arn.to_string(),
                    max_results: None,
                    next_token: next_token.take(),
                    reverse_order: false,
                })
                .await?;
            events.extend(page.events);
            match page.next_token {
                Some(token) => next_token = Some(token),
                None => break,
            }
        }
        Ok(ExecutionHistory {
            events,
            next_token: None,
        })
    }

    /// One page of `GetExecutionHistory` (see [`HistoryRequest`]).
    pub async fn execution_history_page(
        &self,
        request: &HistoryRequest,
    ) -> Result<ExecutionHistory, ApiClientError> {
        self.call(Operation::GetExecutionHistory, request).await
    }

    /// `ListExecutions`, every page: newest first (ties by ARN).
    pub async fn list_executions(
        &self,
        state_machine: Option<&str>,
        status: Option<ExecutionStatus>,
    ) -> Result<Vec<ExecutionDescription>, ApiClientError> {
        let mut all = Vec::new();
        let mut next_token = None;
        loop {
            let page = self
                .list_executions_page(&ListExecutions {
                    state_machine: state_machine.map(str::to_string),
                    status,
                    max_results: None,
                    next_token: next_token.take(),
                })
                .await?;
            all.extend(page.executions);
            match page.next_token {
                Some(token) => next_token = Some(token),
                None => break,
            }
        }
        // Newest first, as AWS lists them (and the embedded mode).
        all.sort_by(|a, b| {
            b.start_date
                .cmp(&a.start_date)
                .then(a.execution_arn.cmp(&b.execution_arn))
        });
        Ok(all)
    }

    /// One page of `ListExecutions` (see [`ListExecutions`]).
    pub async fn list_executions_page(
        &self,
        request: &ListExecutions,
    ) -> Result<ExecutionList, ApiClientError> {
        self.call(Operation::ListExecutions, request).await
    }

    /// `StopExecution`.
    pub async fn stop_execution(
        &self,
        execution_arn: &str,
        error: Option<String>,
        cause: Option<String>,
    ) -> Result<(), ApiClientError> {
        let _: Value = self
            .call(
                Operation::StopExecution,
                &StopExecutionRequest {
                    execution_arn: execution_arn.to_string(),
                    error,
                    cause,
                },
            )
            .await?;
        Ok(())
    }

    /// `RedriveExecution`.
    pub async fn redrive_execution(&self, execution_arn: &str) -> Result<(), ApiClientError> {
        let _: Value = self
            .call(
                Operation::RedriveExecution,
                &ExecutionRequest {
                    execution_arn: execution_arn.to_string(),
                },
            )
            .await?;
        Ok(())
    }

    /// `SendTaskSuccess`.
    pub async fn send_task_success(
        &self,
        task_token: &str,
        output: Value,
    ) -> Result<(), ApiClientError> {
        let _: Value = self
            .call(
                Operation::SendTaskSuccess,
                &SendTaskSuccess {
                    task_token: task_token.to_string(),
                    output,
                },
            )
            .await?;
        Ok(())
    }

    /// `SendTaskFailure`.
    pub async fn send_task_failure(
        &self,
        task_token: &str,
        error: Option<String>,
        cause: Option<String>,
    ) -> Result<(), ApiClientError> {
        let _: Value = self
            .call(
                Operation::SendTaskFailure,
                &SendTaskFailure {
                    task_token: task_token.to_string(),
                    error,
                    cause,
                },
            )
            .await?;
        Ok(())
    }

    /// `SendTaskHeartbeat`.
    pub async fn send_task_heartbeat(&self, task_token: &str) -> Result<(), ApiClientError> {
        let _: Value = self
            .call(
                Operation::SendTaskHeartbeat,
                &SendTaskHeartbeat {
                    task_token: task_token.to_string(),
                },
            )
            .await?;
        Ok(())
    }

    /// Waits until an execution is no longer running and returns its
    /// description; [`ApiClientError::Timeout`] after `timeout`. Errors that
    /// may pass (no coordinator answering, an API call timing out, NATS
    /// reconnecting, an internal error) do not end the wait; if the last
    /// ask failed that way when the time is up, its error is returned
    /// instead of `Timeout`.
    ///
    /// Listens for the engine's completion notice first, then asks once
    /// (so a completion between the two is not missed), then waits for the
    /// notice, asking again every 500 ms in case a notice was lost (core
    /// NATS does not keep messages). An execution not indexed yet (its start
    /// still queued) counts as running; one gone after it was seen running
    /// (deleted by its retention) is the API's `ExecutionDoesNotExist`.
    /// When the time is up first: [`ApiClientError::StillRunning`] (or the
    /// last error of an API that did not answer).
    pub async fn wait_for_completion(
        &self,
        execution_arn: &str,
        timeout: Duration,
    ) -> Result<ExecutionDescription, ApiClientError> {
        let exec = ExecutionRef::from_arn(execution_arn)
            .map_err(|e| ApiClientError::Api(ApiError::new("InvalidName", e.to_string())))?;
        let subject = self.ns.done_subject(&exec);
        let mut notices = self
            .client
            .subscribe(subject)
            .await
            .map_err(|e| ApiClientError::Transport(e.to_string()))?;
        // A timeout past what the clock can count waits for ever (about).
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        // The last ask's error, if it failed in a way that may pass (no
        // coordinator at the moment, one failing over, NATS reconnecting):
        // the wait goes on, and it is returned if the deadline comes first.
        let mut passing: Option<ApiClientError> = None;
        // Seen running once: it exists (gone after that means deleted, by
        // its retention, and is final).
        let mut seen = false;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let asked = tokio::time::timeout(left, self.describe_execution(execution_arn)).await;
            match asked {
                Ok(Ok(d)) if d.status != ExecutionStatus::Running => {
                    let _ = notices.unsubscribe().await;
                    return Ok(d);
                }
                Ok(Ok(_)) => {
                    passing = None;
                    seen = true;
                }
                Ok(Err(ApiClientError::Api(e))) if e.code == "ExecutionDoesNotExist" && !seen => {
                    passing = None;
                }
                Ok(Err(
                    e @ (ApiClientError::NoResponders { .. }
                    | ApiClientError::Timeout { .. }
                    | ApiClientError::Transport(_)),
                )) => passing = Some(e),
                Ok(Err(ApiClientError::Api(e))) if e.code == super::api::codes::INTERNAL => {
                    passing = Some(ApiClientError::Api(e));
                }
                Ok(Err(e)) => return Err(e),
                // The deadline came during the ask.
                Err(_) => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                let _ = notices.unsubscribe().await;
                return Err(passing.unwrap_or(ApiClientError::StillRunning {
                    execution_arn: execution_arn.to_string(),
                    waited: timeout,
                    seen,
                }));
            }
            let wait = (deadline - now).min(Duration::from_millis(500));
            // A notice or the poll interval, whichever comes first (the
            // interval in full when the subscription has ended: the
            // connection closed).
            let asked_at = tokio::time::Instant::now();
            if let Ok(None) = tokio::time::timeout(wait, notices.next()).await {
                tokio::time::sleep_until(asked_at + wait).await;
            }
        }
    }
}
