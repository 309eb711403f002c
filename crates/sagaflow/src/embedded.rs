//! The embedded backend: the coordinator's driver and the handlers in this
//! process, executions and histories in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use sagaflow_asl::interp::{ExecutionInfo, Outcome};
use sagaflow_asl::model::StateMachine;
use sagaflow_coordinator::cluster::history_view;
use sagaflow_coordinator::{
    Coordinator, EmbeddedDispatcher, ExecutionRun, RuntimeOptions, SystemClock,
};
use sagaflow_participant::{Handler, TaskError};
use sagaflow_protocol::{ExecutionRef, state_machine_arn};

use crate::{Error, ExecutionResult, Status};

/// How an execution ended: its run, or why the driver gave up.
type Ended = Result<Arc<ExecutionRun>, String>;

struct Entry {
    name: String,
    input: Value,
    done: watch::Receiver<Option<Ended>>,
    task: AbortHandle,
}

pub(crate) struct Embedded {
    coordinator: Arc<Coordinator>,
    dispatcher: Arc<EmbeddedDispatcher>,
    machines: Mutex<HashMap<String, Vec<Arc<StateMachine>>>>,
    executions: Mutex<HashMap<String, Entry>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Embedded {
    pub(crate) fn new(
        handlers: Vec<(String, Arc<dyn Handler>)>,
        runtime: RuntimeOptions,
    ) -> Embedded {
        let dispatcher = Arc::new(EmbeddedDispatcher::new(handlers).with_callbacks());
        let coordinator = Arc::new(Coordinator::new(
            Arc::new(SystemClock),
            Arc::clone(&dispatcher) as Arc<dyn sagaflow_coordinator::Dispatcher>,
            runtime,
        ));
        Embedded {
            coordinator,
            dispatcher,
            machines: Mutex::default(),
            executions: Mutex::default(),
        }
    }

    pub(crate) fn deploy(&self, name: &str, definition: &str) -> Result<u64, Error> {
        sagaflow_protocol::check_name("state machine name", name)?;
        let machine = sagaflow_asl::parse::parse_definition(definition).map_err(|e| {
            Error::InvalidDefinition {
                name: name.to_string(),
                message: e.to_string(),
            }
        })?;
        let mut machines = lock(&self.machines);
        let versions = machines.entry(name.to_string()).or_default();
        versions.push(Arc::new(machine));
        Ok(versions.len() as u64)
    }

    pub(crate) fn start(
        &self,
        state_machine: &str,
        input: Value,
        name: Option<&str>,
    ) -> Result<String, Error> {
        let machine = lock(&self.machines)
            .get(state_machine)
            .and_then(|v| v.last().cloned())
            .ok_or_else(|| Error::StateMachineDoesNotExist(state_machine.to_string()))?;
        let name = name
            .map(str::to_string)
            .unwrap_or_else(sagaflow_coordinator::cluster::api::fresh_name);
        let exec = ExecutionRef::new(state_machine, &name)?;
        let arn = exec.arn();
        let mut executions = lock(&self.executions);
        if let Some(existing) = executions.get(&arn) {
            return if existing.input == input {
                Ok(arn)
            } else {
                Err(Error::ExecutionAlreadyExists(arn))
            };
        }
        let info = ExecutionInfo {
            execution_id: arn.clone(),
            execution_name: name.clone(),
            state_machine_id: state_machine_arn(state_machine),
            state_machine_name: state_machine.to_string(),
            role_arn: String::new(),
            seed: sagaflow_coordinator::cluster::api::random_u64(),
        };
        let (tx, rx) = watch::channel(None);
        let coordinator = Arc::clone(&self.coordinator);
        let run_input = input.clone();
        let task = tokio::spawn(async move {
            let ended = coordinator
                .run(machine, info, run_input)
                .await
                .map(Arc::new)
                .map_err(|e| e.to_string());
            tx.send_replace(Some(ended));
        });
        executions.insert(
            arn.clone(),
            Entry {
                name,
                input,
                done: rx,
                task: task.abort_handle(),
            },
        );
        Ok(arn)
    }

    fn entry(&self, arn: &str) -> Result<(String, watch::Receiver<Option<Ended>>), Error> {
        lock(&self.executions)
            .get(arn)
            .map(|e| (e.name.clone(), e.done.clone()))
            .ok_or_else(|| Error::ExecutionDoesNotExist(arn.to_string()))
    }

    pub(crate) fn describe(&self, arn: &str) -> Result<ExecutionResult, Error> {
        let (name, done) = self.entry(arn)?;
        let ended = done.borrow().clone();
        result_of(arn, name, ended)
    }

    pub(crate) async fn wait(
        &self,
        arn: &str,
        timeout: Duration,
    ) -> Result<ExecutionResult, Error> {
        let (name, mut done) = self.entry(arn)?;
        let ended = match tokio::time::timeout(timeout, done.wait_for(Option::is_some)).await {
            Ok(Ok(ended)) => ended.clone(),
            // The sender is gone without an outcome: the run was abandoned.
            Ok(Err(_)) => Some(Err("the execution was abandoned (shut down)".to_string())),
            Err(_) => {
                return Err(Error::Timeout {
                    execution: arn.to_string(),
                    waited: timeout,
                });
            }
        };
        result_of(arn, name, ended)
    }

    pub(crate) fn history(&self, arn: &str) -> Result<Vec<Value>, Error> {
        let (_, done) = self.entry(arn)?;
        let ended = done.borrow().clone();
        match ended {
            None => Err(Error::StillRunning(arn.to_string())),
            Some(Err(message)) => Err(Error::Runtime {
                execution: arn.to_string(),
                message,
            }),
            Some(Ok(run)) => Ok(history_view::render(&run.history)),
        }
    }

    pub(crate) fn complete(
        &self,
        token: &str,
        result: Result<Value, TaskError>,
    ) -> Result<(), Error> {
        self.dispatcher
            .complete_task(token, result)
            .map_err(|_| Error::TaskDoesNotExist)
    }

    pub(crate) fn shutdown(&self) {
        for entry in lock(&self.executions).values() {
            entry.task.abort();
        }
    }
}

fn result_of(arn: &str, name: String, ended: Option<Ended>) -> Result<ExecutionResult, Error> {
    let mut result = ExecutionResult {
        arn: arn.to_string(),
        name,
        status: Status::Running,
        output: None,
        error: None,
        cause: None,
        trace_id: None,
    };
    let run = match ended {
        None => return Ok(result),
        Some(Err(message)) => {
            return Err(Error::Runtime {
                execution: arn.to_string(),
                message,
            });
        }
        Some(Ok(run)) => run,
    };
    result.trace_id = run.trace_id.clone();
    match &run.outcome {
        Outcome::Succeeded { output } => {
            result.status = Status::Succeeded;
            result.output = Some(Value::clone(output));
        }
        Outcome::Failed { error, cause } => {
            result.status = Status::Failed;
            result.error = Some(error.clone());
            result.cause = Some(cause.clone());
        }
        Outcome::TimedOut { error, cause } => {
            result.status = Status::TimedOut;
            result.error = Some(error.clone());
            result.cause = Some(cause.clone());
        }
        Outcome::Aborted { error, cause } => {
            result.status = Status::Aborted;
            result.error = error.clone();
            result.cause = cause.clone();
        }
    }
    Ok(result)
}
