//! The distributed backend: handlers served over NATS by a participant
//! worker, everything else through the coordinators' API; optionally a
//! coordinator in this process.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

use sagaflow_coordinator::cluster::client::{ApiClient, ApiClientError};
use sagaflow_coordinator::cluster::{Cluster, ClusterHandle};
use sagaflow_participant::{Handler, ShutdownHandle, Worker};
use sagaflow_protocol::api::{
    ExecutionDescription, StartExecutionRequest, StateMachineSummary, StateMachineVersion,
};

use crate::{Error, ExecutionResult, ExecutionSummary, Options};

type Running = (ShutdownHandle, JoinHandle<()>);

pub(crate) struct Distributed {
    api: ApiClient,
    api_timeout: Duration,
    worker: Mutex<Option<Running>>,
    cluster: Mutex<Option<ClusterHandle>>,
}

impl Distributed {
    pub(crate) async fn connect(
        url: &str,
        options: &Options,
        handlers: Vec<(String, Arc<dyn Handler>)>,
    ) -> Result<Distributed, Error> {
        let client = sagaflow_nats::connect(url).await?;
        let settings = options.cluster.settings.clone();
        let cluster = if options.run_coordinator {
            // Boxed: the coordinator's start-up future is large.
            Some(Box::pin(Cluster::start(client.clone(), options.cluster.clone())).await?)
        } else {
            None
        };
        let worker = if options.serve_handlers && !handlers.is_empty() {
            let mut builder = Worker::builder(client.clone())
                .settings(settings.clone())
                .concurrency(options.worker_concurrency)
                .grace_period(options.worker_grace_period);
            for (name, handler) in handlers {
                builder = builder.handler_arc(name, handler);
            }
            match Box::pin(builder.build()).await {
                Ok(worker) => {
                    let stop = worker.shutdown_handle();
                    Some((stop, tokio::spawn(worker.run())))
                }
                Err(e) => {
                    if let Some(c) = cluster {
                        c.shutdown().await;
                    }
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        let api = ApiClient::new(client, settings.namespace).with_timeout(options.api_timeout);
        Ok(Distributed {
            api,
            api_timeout: options.api_timeout,
            worker: Mutex::new(worker),
            cluster: Mutex::new(cluster),
        })
    }

    pub(crate) fn api(&self) -> &ApiClient {
        &self.api
    }

    pub(crate) async fn deploy(&self, name: &str, definition: &str) -> Result<u64, Error> {
        // Checked here too, so that a bad name is the same error as
        // embedded (the API would refuse it as well).
        sagaflow_protocol::check_name("state machine name", name)?;
        // Validated here as well, for the same error as embedded (the
        // API's carries the errors as JSON details).
        sagaflow_asl::parse::parse_definition(definition).map_err(|e| {
            Error::InvalidDefinition {
                name: name.to_string(),
                message: e.to_string(),
            }
        })?;
        match self.api.create_state_machine(name, definition).await {
            Ok(v) => Ok(v.version),
            Err(e) => Err(match Error::from(e) {
                Error::InvalidDefinition { message, .. } => Error::InvalidDefinition {
                    name: name.to_string(),
                    message,
                },
                other => other,
            }),
        }
    }

    pub(crate) async fn start(
        &self,
        state_machine: &str,
        input: Value,
        name: Option<&str>,
    ) -> Result<String, Error> {
        sagaflow_protocol::check_name("state machine name", state_machine)?;
        if let Some(name) = name {
            sagaflow_protocol::ExecutionRef::new(state_machine, name)?;
        }
        // As embedded; deeper than JSON decoding takes, the API would only
        // say the request is malformed.
        crate::check_depth("input", &input)?;
        let reply = self
            .api
            .start_execution(StartExecutionRequest {
                state_machine: state_machine.to_string(),
                version: None,
                name: name.map(str::to_string),
                input: Some(input),
                traceparent: None,
            })
            .await?;
        Ok(reply.execution_arn)
    }

    pub(crate) async fn describe(
        &self,
        arn: &str,
        started_here: bool,
    ) -> Result<ExecutionResult, Error> {
        match self.api.describe_execution(arn).await {
            Ok(d) => Ok(result_of(d)),
            // Started, but its start is still queued for a coordinator.
            Err(ApiClientError::Api(e)) if started_here && e.code == "ExecutionDoesNotExist" => {
                Ok(ExecutionResult {
                    arn: arn.to_string(),
                    name: arn.rsplit(':').next().unwrap_or(arn).to_string(),
                    status: crate::Status::Running,
                    output: None,
                    error: None,
                    cause: None,
                    trace_id: None,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn wait(
        &self,
        arn: &str,
        timeout: Duration,
        started_here: bool,
    ) -> Result<ExecutionResult, Error> {
        // An execution not started here must exist already (one started
        // here may still be queued for a coordinator, and is waited for).
        if !started_here {
            self.describe(arn, false).await?;
        }
        match self.api.wait_for_completion(arn, timeout).await {
            Ok(d) => Ok(result_of(d)),
            Err(ApiClientError::StillRunning { .. } | ApiClientError::Timeout { .. }) => {
                Err(Error::Timeout {
                    execution: arn.to_string(),
                    waited: timeout,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn history(&self, arn: &str, started_here: bool) -> Result<Vec<Value>, Error> {
        match self.api.execution_history(arn).await {
            Ok(h) => Ok(h.events),
            Err(ApiClientError::Api(e)) if started_here && e.code == "ExecutionDoesNotExist" => {
                Ok(Vec::new())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `StopExecution`. An execution started here whose start a
    /// coordinator has not taken yet is asked again until it is known (at
    /// most the API timeout).
    pub(crate) async fn stop(
        &self,
        arn: &str,
        error: Option<&str>,
        cause: Option<&str>,
        started_here: bool,
    ) -> Result<(), Error> {
        let mut backoff = Backoff::new(self.api_timeout);
        loop {
            match self
                .api
                .stop_execution(arn, error.map(str::to_string), cause.map(str::to_string))
                .await
            {
                Err(ApiClientError::Api(e))
                    if started_here
                        && e.code == "ExecutionDoesNotExist"
                        && backoff.wait().await => {}
                other => return Ok(other?),
            }
        }
    }

    pub(crate) async fn describe_machine(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<StateMachineVersion, Error> {
        match self.api.describe_state_machine(name, version).await {
            Ok(v) => Ok(v),
            Err(ApiClientError::Api(e)) if e.code == "StateMachineDoesNotExist" => {
                Err(Error::StateMachineDoesNotExist(match version {
                    Some(n) => format!("{name} version {n}"),
                    None => name.to_string(),
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn list_machines(&self) -> Result<Vec<StateMachineSummary>, Error> {
        let mut list = self.api.list_state_machines().await?;
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    /// `RedriveExecution`, then waits (at most the API timeout) until a
    /// coordinator has taken it: the index shows a higher redrive count,
    /// so that a [`crate::Execution::wait`] that follows waits for the new
    /// end, not the old one.
    pub(crate) async fn redrive(&self, arn: &str) -> Result<(), Error> {
        let before = self.api.describe_execution(arn).await?.redrive_count;
        self.api.redrive_execution(arn).await?;
        let mut backoff = Backoff::new(self.api_timeout);
        while self.api.describe_execution(arn).await?.redrive_count <= before {
            if !backoff.wait().await {
                return Err(Error::Timeout {
                    execution: arn.to_string(),
                    waited: self.api_timeout,
                });
            }
        }
        Ok(())
    }

    pub(crate) async fn list(
        &self,
        state_machine: Option<&str>,
        status: Option<crate::Status>,
    ) -> Result<Vec<ExecutionSummary>, Error> {
        let list = self.api.list_executions(state_machine, status).await?;
        Ok(list
            .into_iter()
            .map(|d| ExecutionSummary {
                arn: d.execution_arn,
                name: d.name,
                state_machine: d.state_machine,
                status: d.status,
                start_date: d.start_date,
                stop_date: d.stop_date,
            })
            .collect())
    }

    pub(crate) async fn shutdown(&self) {
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((stop, running)) = worker {
            stop.shutdown();
            let _ = running.await;
        }
        let cluster = self
            .cluster
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(c) = cluster {
            c.shutdown().await;
        }
    }
}

/// Pauses between polls of the API: 5 ms, doubling up to 100 ms, until a
/// deadline.
struct Backoff {
    deadline: tokio::time::Instant,
    pause: Duration,
}

impl Backoff {
    fn new(patience: Duration) -> Backoff {
        Backoff {
            deadline: crate::deadline_after(patience),
            pause: Duration::from_millis(5),
        }
    }

    /// Sleeps the next pause; false (without sleeping) when it would end
    /// past the deadline.
    async fn wait(&mut self) -> bool {
        if tokio::time::Instant::now() + self.pause >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(100));
        true
    }
}

fn result_of(d: ExecutionDescription) -> ExecutionResult {
    ExecutionResult {
        arn: d.execution_arn,
        name: d.name,
        status: d.status,
        output: d.output,
        error: d.error,
        cause: d.cause,
        trace_id: d.trace_id,
    }
}
