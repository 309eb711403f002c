//! Which handler serves a Task's `Resource`, what it receives, and how its
//! result is shaped. Pure functions: no registry, no I/O.
//!
//! Rules (local runner and embedded mode):
//! 1. The integration-pattern suffixes `.sync`, `.sync:2` and
//!    `.waitForTaskToken` are not part of the handler's name.
//! 2. A handler key matches the `Resource` verbatim, else the stripped
//!    resource, else the Lambda function name of an ARN
//!    (`arn:aws:lambda:us-east-1:123456789012:function:reserve[:alias]` ->
//!    `reserve`), else the last `:`-separated segment.
//! 3. For the Lambda service integration `arn:aws:states:::lambda:invoke`
//!    (and its `.waitForTaskToken` form) the handler is named by the task
//!    input's `FunctionName` (a name, partial ARN or ARN, with or without a
//!    version/alias qualifier) and receives the input's `Payload`. As AWS
//!    does, the plain `lambda:invoke` result is wrapped in the Invoke API
//!    response (`{"ExecutedVersion", "Payload", "SdkHttpMetadata",
//!    "SdkResponseMetadata", "StatusCode"}`), while with
//!    `.waitForTaskToken` the result is what the participant sends back
//!    (SendTaskSuccess output), unwrapped.
//! 4. The HTTP Task `arn:aws:states:::http:invoke` goes to the reserved
//!    handler [`HTTP_INVOKE_HANDLER`] (served by `sagaflow-http`'s
//!    `HttpHandler`: in-process by `sagaflow run`, over NATS by the worker
//!    inside `sagaflow coordinator`), with the Task's Parameters as input. A
//!    handler keyed by the full resource (a stub) is tried first.

use serde_json::{Map, Value, json};

use sagaflow_asl::model::{StateKind, StateMachine, Task, Template, TemplateField};

/// The AWS Lambda service integration (request-response).
pub const LAMBDA_INVOKE: &str = "arn:aws:states:::lambda:invoke";

/// The child-execution integration (with `.sync` and `.sync:2`): the
/// runtime starts an execution of another state machine itself.
pub const START_EXECUTION: &str = "arn:aws:states:::states:startExecution";

/// The HTTP Task (`arn:aws:states:::http:invoke`).
pub const HTTP_INVOKE: &str = "arn:aws:states:::http:invoke";

/// The reserved handler name HTTP Tasks are sent to (a valid NATS subject
/// token): `sagaflow.task.sagaflow_http_invoke` over NATS.
pub const HTTP_INVOKE_HANDLER: &str = "sagaflow_http_invoke";

/// The integration pattern of a resource, from its suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// No suffix: request-response.
    RequestResponse,
    /// `.sync` or `.sync:2`: run a job and wait for it.
    Sync,
    /// `.waitForTaskToken`: wait for a callback with the task token.
    WaitForTaskToken,
}

/// How a handler's result becomes the task's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultShape {
    /// The handler's result is the task's result.
    Raw,
    /// Wrapped as the Lambda Invoke API response ([`wrap_lambda_invoke`]).
    LambdaInvoke,
}

/// Where a task goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// Handler keys to try, best first.
    pub candidates: Vec<String>,
    /// The short name suggested for a stubs file (the function name or last
    /// segment); always one of `candidates`.
    pub name: String,
    /// What the handler receives.
    pub input: Value,
    /// How its result is shaped.
    pub shape: ResultShape,
    /// The integration pattern.
    pub pattern: Pattern,
}

impl Resolution {
    /// The first candidate for which `has` holds.
    pub fn pick(&self, has: impl Fn(&str) -> bool) -> Option<&str> {
        self.candidates.iter().map(String::as_str).find(|k| has(k))
    }
}

/// A task whose handler cannot be determined from its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// `lambda:invoke` without a string `FunctionName` parameter.
    #[error("resource '{resource}' needs a string 'FunctionName' parameter in the task input")]
    MissingFunctionName {
        /// The resource.
        resource: String,
    },
}

/// Splits the integration-pattern suffix off a resource.
pub fn strip_pattern(resource: &str) -> (&str, Pattern) {
    if let Some(base) = resource.strip_suffix(".waitForTaskToken") {
        (base, Pattern::WaitForTaskToken)
    } else if let Some(base) = resource.strip_suffix(".sync:2") {
        (base, Pattern::Sync)
    } else if let Some(base) = resource.strip_suffix(".sync") {
        (base, Pattern::Sync)
    } else {
        (resource, Pattern::RequestResponse)
    }
}

/// The segment after a `function` segment (`...:function:NAME[:QUALIFIER]`).
fn after_function_segment(text: &str) -> Option<&str> {
    let mut segments = text.split(':');
    while let Some(s) = segments.next() {
        if s == "function" {
            return segments.next().filter(|n| !n.is_empty());
        }
    }
    None
}

/// The function name in a Lambda `FunctionName` parameter: `reserve`,
/// `reserve:prod`, `123456789012:function:reserve`,
/// `arn:aws:lambda:us-east-1:123456789012:function:reserve:prod` all give
/// `reserve`.
pub fn lambda_function_name(function_name: &str) -> &str {
    if let Some(name) = after_function_segment(function_name) {
        return name;
    }
    if function_name.starts_with("arn:") {
        return function_name.rsplit(':').next().unwrap_or(function_name);
    }
    // `NAME` or `NAME:QUALIFIER`.
    function_name.split(':').next().unwrap_or(function_name)
}

/// The short handler name of a (stripped) resource: the Lambda function name
/// of a Lambda ARN, else the last `:`-separated segment.
pub fn resource_name(resource: &str) -> &str {
    after_function_segment(resource)
        .unwrap_or_else(|| resource.rsplit(':').next().unwrap_or(resource))
}

fn push_unique(out: &mut Vec<String>, key: &str) {
    if !key.is_empty() && !out.iter().any(|k| k == key) {
        out.push(key.to_string());
    }
}

fn is_lambda_invoke(base: &str) -> bool {
    same_integration(base, LAMBDA_INVOKE)
}

/// The service integration a resource (without its pattern suffix) names,
/// in any AWS partition: `lambda:invoke` for `arn:aws:states:::lambda:invoke`
/// as for `arn:aws-us-gov:states:::lambda:invoke` or
/// `arn:aws-cn:states:::lambda:invoke`; `None` for other resources.
pub fn integration(base: &str) -> Option<&str> {
    let (partition, rest) = base.strip_prefix("arn:")?.split_once(':')?;
    let partition_ok = partition.starts_with("aws")
        && partition
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !partition_ok {
        return None;
    }
    rest.strip_prefix("states:::").filter(|i| !i.is_empty())
}

/// Whether `base` names the same service integration as `known` (one of
/// [`LAMBDA_INVOKE`], [`START_EXECUTION`], [`HTTP_INVOKE`]), in whichever
/// partition.
pub fn same_integration(base: &str, known: &str) -> bool {
    integration(base).is_some_and(|i| Some(i) == integration(known))
}

/// Where a task with this resource and effective input goes.
pub fn resolve(resource: &str, input: &Value) -> Result<Resolution, ResolveError> {
    let (base, pattern) = strip_pattern(resource);
    if is_lambda_invoke(base) {
        let function = input
            .get("FunctionName")
            .and_then(Value::as_str)
            .ok_or_else(|| ResolveError::MissingFunctionName {
                resource: resource.to_string(),
            })?;
        let (candidates, name) = function_candidates(function);
        // AWS invokes the function with an empty event when Payload is absent.
        let payload = input
            .get("Payload")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        let shape = if pattern == Pattern::WaitForTaskToken {
            ResultShape::Raw
        } else {
            ResultShape::LambdaInvoke
        };
        return Ok(Resolution {
            candidates,
            name,
            input: payload,
            shape,
            pattern,
        });
    }
    if same_integration(base, HTTP_INVOKE) {
        let (candidates, name) = http_candidates(resource);
        return Ok(Resolution {
            candidates,
            name,
            input: input.clone(),
            shape: ResultShape::Raw,
            pattern,
        });
    }
    let (candidates, name) = resource_candidates(resource);
    Ok(Resolution {
        candidates,
        name,
        input: input.clone(),
        shape: ResultShape::Raw,
        pattern,
    })
}

fn function_candidates(function: &str) -> (Vec<String>, String) {
    let mut candidates = Vec::new();
    push_unique(&mut candidates, function);
    let name = lambda_function_name(function);
    push_unique(&mut candidates, name);
    (candidates, name.to_string())
}

fn http_candidates(resource: &str) -> (Vec<String>, String) {
    let mut candidates = Vec::new();
    push_unique(&mut candidates, resource);
    push_unique(&mut candidates, strip_pattern(resource).0);
    push_unique(&mut candidates, HTTP_INVOKE_HANDLER);
    (candidates, HTTP_INVOKE_HANDLER.to_string())
}

fn resource_candidates(resource: &str) -> (Vec<String>, String) {
    let (base, _) = strip_pattern(resource);
    let mut candidates = Vec::new();
    push_unique(&mut candidates, resource);
    push_unique(&mut candidates, base);
    // An integration of another partition goes where the `aws` one does
    // (child executions, in the embedded runtime).
    if let Some(integration) = integration(base) {
        push_unique(&mut candidates, &format!("arn:aws:states:::{integration}"));
    }
    let name = resource_name(base);
    push_unique(&mut candidates, name);
    if let Some(last) = base.rsplit(':').next() {
        push_unique(&mut candidates, last);
    }
    let name = if name.is_empty() { resource } else { name };
    (candidates, name.to_string())
}

/// The handler keys of a Task when they do not depend on the execution's
/// data: `None` for `lambda:invoke` whose `FunctionName` is computed
/// (`"FunctionName.$"`). Returns `(candidates, suggested name)`.
pub fn static_candidates(task: &Task) -> Option<(Vec<String>, String)> {
    let (base, _) = strip_pattern(&task.resource);
    if same_integration(base, HTTP_INVOKE) {
        return Some(http_candidates(&task.resource));
    }
    if !is_lambda_invoke(base) {
        return Some(resource_candidates(&task.resource));
    }
    let function = match task.parameters.as_ref()? {
        Template::Literal(v) => v.get("FunctionName")?.as_str()?.to_string(),
        Template::Object(fields) => fields.iter().find_map(|(k, f)| match (k.as_str(), f) {
            ("FunctionName", TemplateField::Template(Template::Literal(Value::String(s)))) => {
                Some(s.clone())
            }
            _ => None,
        })?,
        Template::Array(_) => return None,
    };
    Some(function_candidates(&function))
}

/// A Task state whose handler is known before running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticTask {
    /// The state's name.
    pub state_name: String,
    /// Its `Resource`.
    pub resource: String,
    /// Handler keys that would serve it, best first.
    pub candidates: Vec<String>,
    /// The suggested key.
    pub name: String,
}

/// Every Task state of the machine (nested Parallel branches and Map
/// processors included) whose handler keys are known statically, in
/// definition order.
pub fn static_tasks(machine: &StateMachine) -> Vec<StaticTask> {
    let mut out = Vec::new();
    let mut graphs = vec![&machine.graph];
    while let Some(graph) = graphs.pop() {
        for state in &graph.states {
            match &state.kind {
                StateKind::Task(task) => {
                    if let Some((candidates, name)) = static_candidates(task) {
                        out.push(StaticTask {
                            state_name: state.name.to_string(),
                            resource: task.resource.to_string(),
                            candidates,
                            name,
                        });
                    }
                }
                StateKind::Parallel(p) => graphs.extend(p.branches.iter()),
                StateKind::Map(m) => graphs.push(&m.processor),
                _ => {}
            }
        }
    }
    out
}

/// The Lambda Invoke API response that `arn:aws:states:::lambda:invoke`
/// returns as the task result (as shown in AWS's Step Functions docs),
/// with deterministic metadata: the request id given (the task's
/// idempotency key, `EXECUTION_ARN/TASK_ID`).
pub fn wrap_lambda_invoke(payload: Value, request_id: &str) -> Value {
    json!({
        "ExecutedVersion": "$LATEST",
        "Payload": payload,
        "SdkHttpMetadata": {
            "HttpHeaders": {
                "Content-Type": "application/json",
                "X-Amz-Executed-Version": "$LATEST",
                "x-amzn-RequestId": request_id
            },
            "HttpStatusCode": 200
        },
        "SdkResponseMetadata": {
            "RequestId": request_id
        },
        "StatusCode": 200
    })
}

/// The child execution a `states:startExecution` task starts: the state
/// machine named by the `StateMachineArn` parameter (an ARN or a name), under
/// the `Name` parameter or else a name derived from the parent execution and
/// the task id (the parent's name cut to 63 characters, a dash and 16 hex
/// digits): unique per parent execution and task, the same on every retry of
/// the dispatch, within the 80 characters of a name.
pub fn child_execution(
    parent: &sagaflow_protocol::ExecutionRef,
    task_id: &str,
    parameters: &Value,
) -> Result<sagaflow_protocol::ExecutionRef, ChildError> {
    let Some(machine_arn) = parameters.get("StateMachineArn").and_then(Value::as_str) else {
        return Err(ChildError::task_failed(
            "startExecution needs a string StateMachineArn parameter",
        ));
    };
    let machine = machine_arn
        .split(":stateMachine:")
        .nth(1)
        .map(|rest| rest.split(':').next().unwrap_or(rest))
        .unwrap_or(machine_arn);
    let name = match parameters.get("Name") {
        Some(Value::String(n)) => n.to_string(),
        None | Some(Value::Null) => format!(
            "{}-{:016x}",
            parent.name().chars().take(63).collect::<String>(),
            fnv(&format!("{}\n{task_id}", parent.arn()))
        ),
        Some(other) => {
            return Err(ChildError {
                error: INVALID_NAME,
                cause: format!("the Name parameter must be a string, not {other}"),
            });
        }
    };
    let machine_name = sagaflow_protocol::check_name("state machine name", machine);
    if let Err(e) = machine_name {
        return Err(ChildError::task_failed(e.to_string()));
    }
    sagaflow_protocol::ExecutionRef::new(machine, &name).map_err(|e| ChildError {
        error: INVALID_NAME,
        cause: e.to_string(),
    })
}

/// AWS's error for a child execution name that is not valid.
pub const INVALID_NAME: &str = "StepFunctions.InvalidNameException";
/// AWS's error for a child execution input that is not JSON.
pub const INVALID_EXECUTION_INPUT: &str = "StepFunctions.InvalidExecutionInputException";

/// Why a child execution cannot be started: the error name the task fails
/// with (AWS's, for `Catch` and `Retry`) and a cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildError {
    /// The error name.
    pub error: &'static str,
    /// What is wrong.
    pub cause: String,
}

impl ChildError {
    fn task_failed(cause: impl Into<String>) -> ChildError {
        ChildError {
            error: "States.TaskFailed",
            cause: cause.into(),
        }
    }
}

impl std::fmt::Display for ChildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.cause)
    }
}

/// The child's input: the `Input` parameter, `{}` without one. A string is
/// the input's JSON text, as for StartExecution (AWS): it is parsed, and
/// one that is not JSON is refused. See [`check_new_child_input`] for a
/// child about to be started.
pub fn child_input(parameters: &Value) -> Result<Value, ChildError> {
    match parameters.get("Input") {
        Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| ChildError {
            error: INVALID_EXECUTION_INPUT,
            cause: format!("the Input parameter is a string that is not JSON: {e}"),
        }),
        Some(v) => Ok(v.clone()),
        None => Ok(json!({})),
    }
}

/// Refuses the input of a child about to be started when it nests arrays
/// and objects deeper than an execution's input may
/// ([`sagaflow_asl::interp::MAX_DEPTH`]; JSON text given as the `Input`
/// string can). A child already started (found again after a restart) is
/// not checked: it runs.
pub fn check_new_child_input(input: &Value) -> Result<(), ChildError> {
    if sagaflow_asl::interp::too_deeply_nested(input) {
        return Err(ChildError {
            error: INVALID_EXECUTION_INPUT,
            cause: format!(
                "the Input parameter nests arrays and objects more than {} levels deep",
                sagaflow_asl::interp::MAX_DEPTH
            ),
        });
    }
    Ok(())
}

/// The cause a `.sync` task fails with when its child failed: the child's
/// report as JSON text, held to AWS's limit on a cause (32,768), as every
/// other task failure is: the child's input and
/// cause, escaped once more, could otherwise make a message the broker never
/// takes. A cut report ends with `... (truncated)`.
pub fn child_failure_cause(report: &Value) -> String {
    cut_cause(report.to_string())
}

/// A cause held to AWS's limit (32,768), as a Worker holds a handler's
/// ([`sagaflow_participant::cut_text`]); a cut one ends with
/// `... (truncated)`.
pub fn cut_cause(cause: String) -> String {
    sagaflow_participant::cut_text(cause, sagaflow_protocol::api::MAX_CAUSE_CHARS)
}

/// What a `.sync` task returns (or, with `Error` and `Cause`, fails with)
/// once its child ended: the DescribeExecution fields AWS returns. `output`
/// is the child's output when it succeeded. With `.sync` (not `.sync:2`)
/// `Input` and `Output` are JSON strings, as DescribeExecution gives them
/// (see [`sync_v1`]); `.sync:2` gives them as JSON.
#[allow(clippy::too_many_arguments)]
pub fn child_report(
    execution_arn: &str,
    input: &Value,
    name: &str,
    start_date: &str,
    state_machine: &str,
    status: &str,
    stop_date: Option<&str>,
    outcome: Result<&Value, (Option<&str>, Option<&str>)>,
    v2: bool,
) -> Value {
    let mut report = json!({
        "ExecutionArn": execution_arn,
        "Input": input,
        "Name": name,
        "StartDate": start_date,
        "StateMachineArn": sagaflow_protocol::state_machine_arn(state_machine),
        "Status": status,
        "StopDate": stop_date,
    });
    match outcome {
        Ok(output) => report["Output"] = output.clone(),
        Err((error, cause)) => {
            report["Error"] = json!(error);
            report["Cause"] = json!(cause);
        }
    }
    if !v2 {
        sync_v1(&mut report);
    }
    report
}

/// Turns a `.sync:2` report ([`child_report`]) into `.sync`'s: `Input` and
/// `Output` become the JSON text of their values.
pub fn sync_v1(report: &mut Value) {
    for field in ["Input", "Output"] {
        if let Some(v) = report.get_mut(field) {
            *v = Value::String(v.to_string());
        }
    }
}

/// FNV-1a, 64 bits: stable across processes and versions (names derived
/// from it must not change).
pub fn fnv(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn suffixes() {
        assert_eq!(strip_pattern("a.sync"), ("a", Pattern::Sync));
        assert_eq!(strip_pattern("a.sync:2"), ("a", Pattern::Sync));
        assert_eq!(
            strip_pattern("a.waitForTaskToken"),
            ("a", Pattern::WaitForTaskToken)
        );
        assert_eq!(strip_pattern("a"), ("a", Pattern::RequestResponse));
    }

    #[test]
    fn integrations_of_every_partition_are_recognised() {
        for partition in ["aws", "aws-cn", "aws-us-gov", "aws-iso-b"] {
            let invoke = format!("arn:{partition}:states:::lambda:invoke");
            assert_eq!(integration(&invoke), Some("lambda:invoke"));
            assert!(same_integration(&invoke, LAMBDA_INVOKE));
            let r = resolve(
                &invoke,
                &json!({"FunctionName": "reserve", "Payload": {"a": 1}}),
            )
            .unwrap();
            assert_eq!(r.name, "reserve", "{partition}");
            assert_eq!(r.shape, ResultShape::LambdaInvoke);
            assert_eq!(r.input, json!({"a": 1}));
            let child = format!("arn:{partition}:states:::states:startExecution.sync:2");
            let r = resolve(&child, &json!({})).unwrap();
            assert!(
                r.candidates.iter().any(|c| c == START_EXECUTION),
                "{partition}: {:?}",
                r.candidates
            );
            let http = format!("arn:{partition}:states:::http:invoke");
            assert_eq!(
                resolve(&http, &json!({})).unwrap().name,
                HTTP_INVOKE_HANDLER
            );
        }
        assert_eq!(integration("arn:aws:lambda:us-east-1:1:function:f"), None);
        assert_eq!(integration("arn:other:states:::lambda:invoke"), None);
        assert_eq!(integration("reserve"), None);
    }

    #[test]
    fn lambda_arn_resource() {
        let arn = "arn:aws:lambda:us-east-1:123456789012:function:reserve";
        let r = resolve(arn, &json!({"x": 1})).unwrap();
        assert_eq!(r.candidates, vec![arn.to_string(), "reserve".to_string()]);
        assert_eq!(r.name, "reserve");
        assert_eq!(r.input, json!({"x": 1}));
        assert_eq!(r.shape, ResultShape::Raw);
        let q = resolve(&format!("{arn}:prod"), &json!(null)).unwrap();
        assert_eq!(q.name, "reserve");
        assert!(q.candidates.contains(&"prod".to_string()));
        assert_eq!(q.candidates[1], "reserve");
    }

    #[test]
    fn plain_and_activity_resources() {
        let r = resolve("reserve", &json!(1)).unwrap();
        assert_eq!(r.candidates, vec!["reserve".to_string()]);
        let r = resolve(
            "arn:aws:states:us-east-1:123456789012:activity:approve",
            &json!(1),
        )
        .unwrap();
        assert_eq!(r.name, "approve");
        let r = resolve(
            "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
            &json!(1),
        )
        .unwrap();
        assert_eq!(
            r.candidates,
            vec![
                "arn:aws:states:::sqs:sendMessage.waitForTaskToken".to_string(),
                "arn:aws:states:::sqs:sendMessage".to_string(),
                "sendMessage".to_string()
            ]
        );
        assert_eq!(r.pattern, Pattern::WaitForTaskToken);
        let r = resolve("arn:aws:states:::ecs:runTask.sync", &json!(1)).unwrap();
        assert_eq!(r.name, "runTask");
        assert_eq!(r.pattern, Pattern::Sync);
    }

    #[test]
    fn lambda_invoke_uses_function_name_and_payload() {
        let input = json!({
            "FunctionName": "arn:aws:lambda:us-east-1:123456789012:function:reserve:prod",
            "Payload": {"id": 1}
        });
        let r = resolve(LAMBDA_INVOKE, &input).unwrap();
        assert_eq!(r.name, "reserve");
        assert_eq!(
            r.candidates,
            vec![
                "arn:aws:lambda:us-east-1:123456789012:function:reserve:prod".to_string(),
                "reserve".to_string()
            ]
        );
        assert_eq!(r.input, json!({"id": 1}));
        assert_eq!(r.shape, ResultShape::LambdaInvoke);
        let w = resolve(
            "arn:aws:states:::lambda:invoke.waitForTaskToken",
            &json!({"FunctionName": "notify:v2"}),
        )
        .unwrap();
        assert_eq!(w.name, "notify");
        assert_eq!(w.input, json!({}));
        assert_eq!(w.shape, ResultShape::Raw);
        assert_eq!(w.pattern, Pattern::WaitForTaskToken);
        assert_eq!(
            resolve(LAMBDA_INVOKE, &json!({"Payload": 1})),
            Err(ResolveError::MissingFunctionName {
                resource: LAMBDA_INVOKE.to_string()
            })
        );
        assert!(resolve(LAMBDA_INVOKE, &json!({"FunctionName": 3})).is_err());
    }

    #[test]
    fn http_invoke_goes_to_the_reserved_handler() {
        let params = json!({"ApiEndpoint": "https://h/", "Method": "GET"});
        let r = resolve(HTTP_INVOKE, &params).unwrap();
        assert_eq!(r.name, HTTP_INVOKE_HANDLER);
        assert_eq!(
            r.candidates,
            vec![HTTP_INVOKE.to_string(), HTTP_INVOKE_HANDLER.to_string()]
        );
        assert_eq!(r.input, params);
        assert_eq!(r.shape, ResultShape::Raw);
        assert_eq!(r.pattern, Pattern::RequestResponse);
        assert!(sagaflow_protocol::check_handler(HTTP_INVOKE_HANDLER).is_ok());
    }

    #[test]
    fn function_names() {
        assert_eq!(lambda_function_name("reserve"), "reserve");
        assert_eq!(lambda_function_name("reserve:1"), "reserve");
        assert_eq!(
            lambda_function_name("123456789012:function:reserve"),
            "reserve"
        );
        assert_eq!(
            lambda_function_name("arn:aws:lambda:us-east-1:123456789012:function:reserve:$LATEST"),
            "reserve"
        );
        assert_eq!(lambda_function_name(""), "");
        assert_eq!(resource_name("a:b:c"), "c");
        assert_eq!(resource_name("x:function:"), "");
    }

    #[test]
    fn pick_takes_first_present() {
        let r = resolve("arn:aws:lambda:r:1:function:reserve", &json!(1)).unwrap();
        assert_eq!(r.pick(|k| k == "reserve"), Some("reserve"));
        assert_eq!(
            r.pick(|_| true),
            Some("arn:aws:lambda:r:1:function:reserve")
        );
        assert_eq!(r.pick(|_| false), None);
    }

    #[test]
    fn invoke_wrapper_shape() {
        let w = wrap_lambda_invoke(json!({"ok": true}), "t-1");
        assert_eq!(w["Payload"], json!({"ok": true}));
        assert_eq!(w["StatusCode"], json!(200));
        assert_eq!(w["ExecutedVersion"], json!("$LATEST"));
        assert_eq!(w["SdkResponseMetadata"]["RequestId"], json!("t-1"));
        assert_eq!(w["SdkHttpMetadata"]["HttpStatusCode"], json!(200));
    }

    proptest! {
        #[test]
        fn resolution_never_panics(resource in ".{0,40}", f in ".{0,40}") {
            let _ = resolve(&resource, &json!({"FunctionName": f, "Payload": 1}));
            let _ = resolve(&format!("{LAMBDA_INVOKE}{resource}"), &json!({"FunctionName": f}));
            let _ = lambda_function_name(&f);
            if let Ok(r) = resolve(&resource, &json!(null)) {
                prop_assert!(r.candidates.contains(&r.name) || r.candidates.is_empty());
            }
        }
    }
}
