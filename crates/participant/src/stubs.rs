//! Stub participants driven by a JSON file: each key names a handler, each
//! value says how it behaves.
//!
//! ```json
//! {
//!   "reserve": {"returns": {"reservationId": "R-1"}},
//!   "charge":  {"throws": {"error": "PaymentDeclined", "cause": "card expired"}},
//!   "notify":  {"echo": true, "delaySeconds": 2},
//!   "flaky":   {"sequence": [{"throws": {"error": "Busy"}}, {"returns": "ok"}]},
//!   "price":   {"switch": [{"if": {"pointer": "/id", "equals": 2}, "then": {"returns": 20}}],
//!               "else": {"returns": 10}},
//!   "slow":    {"returns": 1, "delaySeconds": 30, "heartbeatSeconds": 5}
//! }
//! ```
//!
//! Behaviours:
//! - `{"returns": V}`: the task succeeds with `V`;
//! - `{"echo": true}`: the task succeeds with its own input;
//! - `{"throws": {"error": E, "cause": C}}`: the task fails (`cause` is
//!   optional, empty by default);
//! - `{"sequence": [B1, B2, ...]}`: the n-th call that reaches this sequence
//!   behaves as `Bn`, the last one repeats;
//! - `{"switch": [{"if": {"pointer": P, "equals": V}, "then": B}, ...], "else": B}`:
//!   the first case whose JSON pointer `P` (RFC 6901) into the task input
//!   selects a value equal to `V`; with no match and no `else`, the task fails
//!   with [`NO_MATCH`].
//!
//! Any behaviour may add `"delaySeconds": N` (wait `N` seconds before acting;
//! the wait is a tokio sleep, so a paused tokio clock makes it virtual) and,
//! with it, `"heartbeatSeconds": N` (a Sagaflow extension: send a heartbeat
//! every `N` seconds while waiting, to exercise `HeartbeatSeconds`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::{Handler, TaskContext, TaskError};

/// Error name of a `switch` stub that matched no case and has no `else`.
pub const NO_MATCH: &str = "Sagaflow.StubNoMatch";

/// A stubs file that could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StubsError {
    /// The text is not JSON.
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's message.
        message: String,
    },
    /// The JSON does not describe stubs.
    #[error("{}: {message}", if pointer.is_empty() { "(root)" } else { pointer.as_str() })]
    Invalid {
        /// JSON pointer (RFC 6901) of the offending value.
        pointer: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(pointer: &str, message: impl Into<String>) -> StubsError {
    StubsError::Invalid {
        pointer: pointer.to_string(),
        message: message.into(),
    }
}

/// Appends an escaped reference token to a JSON pointer.
fn child(pointer: &str, token: &str) -> String {
    format!("{pointer}/{}", token.replace('~', "~0").replace('/', "~1"))
}

/// What a stub does when called (a parsed behaviour).
#[derive(Debug)]
pub struct Behaviour {
    action: Action,
    delay: Option<Duration>,
    heartbeat: Option<Duration>,
}

#[derive(Debug)]
enum Action {
    Returns(Value),
    Echo,
    Throws(TaskError),
    Sequence {
        steps: Vec<Behaviour>,
        calls: AtomicUsize,
    },
    Switch {
        cases: Vec<Case>,
        otherwise: Option<Box<Behaviour>>,
    },
}

#[derive(Debug)]
struct Case {
    pointer: String,
    equals: Value,
    then: Behaviour,
}

const ACTIONS: [&str; 5] = ["returns", "echo", "throws", "sequence", "switch"];
const BEHAVIOUR_KEYS: [&str; 8] = [
    "returns",
    "echo",
    "throws",
    "sequence",
    "switch",
    "else",
    "delaySeconds",
    "heartbeatSeconds",
];

fn object<'a>(
    value: &'a Value,
    pointer: &str,
    what: &str,
) -> Result<&'a Map<String, Value>, StubsError> {
    value.as_object().ok_or_else(|| {
        invalid(
            pointer,
            format!("{what} must be a JSON object, got {}", kind(value)),
        )
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_keys(map: &Map<String, Value>, pointer: &str, allowed: &[&str]) -> Result<(), StubsError> {
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(invalid(
                &child(pointer, key),
                format!(
                    "unknown key '{key}' (expected one of: {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn seconds(value: &Value, pointer: &str, allow_zero: bool) -> Result<Duration, StubsError> {
    let n = value.as_f64().ok_or_else(|| {
        invalid(
            pointer,
            format!("must be a number of seconds, got {}", kind(value)),
        )
    })?;
    if n < 0.0 || (!allow_zero && n == 0.0) {
        let bound = if allow_zero {
            "zero or more"
        } else {
            "more than zero"
        };
        return Err(invalid(
            pointer,
            format!("must be {bound} seconds, got {n}"),
        ));
    }
    let d = Duration::try_from_secs_f64(n)
        .map_err(|e| invalid(pointer, format!("{n} seconds: {e}")))?;
    // A period so short that it rounds to nothing would make a heartbeat
    // loop that never ends.
    if !allow_zero && d < MIN_PERIOD {
        return Err(invalid(
            pointer,
            format!("must be at least 0.001 seconds, got {n}"),
        ));
    }
    Ok(d)
}

/// The shortest `heartbeatSeconds`.
const MIN_PERIOD: Duration = Duration::from_millis(1);

impl Behaviour {
    /// Parses one behaviour; `pointer` locates it in the document (for errors).
    pub fn parse(value: &Value, pointer: &str) -> Result<Behaviour, StubsError> {
        let map = object(value, pointer, "a stub behaviour")?;
        check_keys(map, pointer, &BEHAVIOUR_KEYS)?;
        let present: Vec<&str> = ACTIONS
            .iter()
            .copied()
            .filter(|k| map.contains_key(*k))
            .collect();
        let action_key = match present.as_slice() {
            [one] => *one,
            [] => {
                return Err(invalid(
                    pointer,
                    format!("a behaviour needs one of: {}", ACTIONS.join(", ")),
                ));
            }
            many => {
                return Err(invalid(
                    pointer,
                    format!(
                        "a behaviour has exactly one of {}, got {}",
                        ACTIONS.join(", "),
                        many.join(" and ")
                    ),
                ));
            }
        };
        if map.contains_key("else") && action_key != "switch" {
            return Err(invalid(
                &child(pointer, "else"),
                "'else' is only allowed with 'switch'",
            ));
        }
        let at = child(pointer, action_key);
        let raw = map.get(action_key).unwrap_or(&Value::Null);
        let action = match action_key {
            "returns" => Action::Returns(raw.clone()),
            "echo" => match raw {
                Value::Bool(true) => Action::Echo,
                other => return Err(invalid(&at, format!("'echo' must be true, got {other}"))),
            },
            "throws" => {
                let t = object(raw, &at, "'throws'")?;
                check_keys(t, &at, &["error", "cause"])?;
                let error = match t.get("error") {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    Some(other) => {
                        return Err(invalid(
                            &child(&at, "error"),
                            format!("must be a non-empty string, got {other}"),
                        ));
                    }
                    None => return Err(invalid(&at, "'throws' needs an 'error' name")),
                };
                let cause = match t.get("cause") {
                    None => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => {
                        return Err(invalid(
                            &child(&at, "cause"),
                            format!("must be a string, got {}", kind(other)),
                        ));
                    }
                };
                Action::Throws(TaskError { error, cause })
            }
            "sequence" => {
                let items = raw.as_array().ok_or_else(|| {
                    invalid(
                        &at,
                        format!("'sequence' must be an array, got {}", kind(raw)),
                    )
                })?;
                if items.is_empty() {
                    return Err(invalid(&at, "'sequence' needs at least one behaviour"));
                }
                let steps = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Behaviour::parse(v, &child(&at, &i.to_string())))
                    .collect::<Result<Vec<_>, _>>()?;
                Action::Sequence {
                    steps,
                    calls: AtomicUsize::new(0),
                }
            }
            _ => {
                let items = raw.as_array().ok_or_else(|| {
                    invalid(
                        &at,
                        format!("'switch' must be an array of cases, got {}", kind(raw)),
                    )
                })?;
                if items.is_empty() {
                    return Err(invalid(&at, "'switch' needs at least one case"));
                }
                let cases = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Case::parse(v, &child(&at, &i.to_string())))
                    .collect::<Result<Vec<_>, _>>()?;
                let otherwise = map
                    .get("else")
                    .map(|v| Behaviour::parse(v, &child(pointer, "else")).map(Box::new))
                    .transpose()?;
                Action::Switch { cases, otherwise }
            }
        };
        let delay = map
            .get("delaySeconds")
            .map(|v| seconds(v, &child(pointer, "delaySeconds"), true))
            .transpose()?;
        let heartbeat = map
            .get("heartbeatSeconds")
            .map(|v| seconds(v, &child(pointer, "heartbeatSeconds"), false))
            .transpose()?;
        if heartbeat.is_some() && delay.is_none() {
            return Err(invalid(
                &child(pointer, "heartbeatSeconds"),
                "'heartbeatSeconds' only makes sense with 'delaySeconds' (heartbeats are sent while delaying)",
            ));
        }
        Ok(Behaviour {
            action,
            delay,
            heartbeat,
        })
    }

    /// Runs the behaviour for one call.
    fn run<'a>(
        &'a self,
        input: Value,
        ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<Value, TaskError>> {
        Box::pin(async move {
            if let Some(delay) = self.delay {
                wait(delay, self.heartbeat, ctx).await;
            }
            match &self.action {
                Action::Returns(v) => Ok(v.clone()),
                Action::Echo => Ok(input),
                Action::Throws(e) => Err(e.clone()),
                Action::Sequence { steps, calls } => {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    match steps.get(n).or_else(|| steps.last()) {
                        Some(step) => step.run(input, ctx).await,
                        // Unreachable: parsing rejects empty sequences.
                        None => Err(TaskError::new(NO_MATCH, "empty sequence")),
                    }
                }
                Action::Switch { cases, otherwise } => {
                    let hit = cases
                        .iter()
                        .find(|c| {
                            input
                                .pointer(&c.pointer)
                                .is_some_and(|v| json_eq(v, &c.equals))
                        })
                        .map(|c| &c.then)
                        .or(otherwise.as_deref());
                    match hit {
                        Some(b) => b.run(input, ctx).await,
                        None => {
                            let tried: Vec<String> = cases
                                .iter()
                                .map(|c| format!("{} == {}", c.pointer, c.equals))
                                .collect();
                            Err(TaskError::new(
                                NO_MATCH,
                                format!(
                                    "stub for '{}': no case matched the task input {} (cases: {}) and there is no 'else'",
                                    // The stub's name (a Lambda function's),
                                    // else the resource.
                                    if ctx.handler.is_empty() {
                                        &ctx.resource
                                    } else {
                                        &ctx.handler
                                    },
                                    input,
                                    tried.join(", ")
                                ),
                            ))
                        }
                    }
                }
            }
        })
    }
}

/// JSON equality where numbers compare by value (`3` equals `3.0`, as in a
/// Choice rule's `NumericEquals`: JSON numbers carry no type), in arrays and
/// objects too; object key order does not count. How a stub's `switch`
/// compares, and how the conformance suite compares outputs.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                return x == y;
            }
            if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                return x == y;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

async fn wait(delay: Duration, heartbeat: Option<Duration>, ctx: &TaskContext) {
    let Some(every) = heartbeat else {
        tokio::time::sleep(delay).await;
        return;
    };
    let mut left = delay;
    while left > every {
        tokio::time::sleep(every).await;
        left -= every;
        ctx.heartbeat().await;
    }
    tokio::time::sleep(left).await;
}

impl Case {
    fn parse(value: &Value, pointer: &str) -> Result<Case, StubsError> {
        let map = object(value, pointer, "a switch case")?;
        check_keys(map, pointer, &["if", "then"])?;
        let cond_at = child(pointer, "if");
        let cond = map
            .get("if")
            .ok_or_else(|| invalid(pointer, "a switch case needs 'if'"))?;
        let cond = object(cond, &cond_at, "'if'")?;
        check_keys(cond, &cond_at, &["pointer", "equals"])?;
        let json_pointer = match cond.get("pointer") {
            Some(Value::String(p)) if p.is_empty() || p.starts_with('/') => p.clone(),
            Some(other) => {
                return Err(invalid(
                    &child(&cond_at, "pointer"),
                    format!("must be a JSON pointer (\"\" or starting with '/'), got {other}"),
                ));
            }
            None => return Err(invalid(&cond_at, "'if' needs a 'pointer'")),
        };
        let equals = cond
            .get("equals")
            .cloned()
            .ok_or_else(|| invalid(&cond_at, "'if' needs 'equals'"))?;
        let then = map
            .get("then")
            .ok_or_else(|| invalid(pointer, "a switch case needs 'then'"))?;
        let then = Behaviour::parse(then, &child(pointer, "then"))?;
        Ok(Case {
            pointer: json_pointer,
            equals,
            then,
        })
    }
}

/// One stub: a [`Handler`] that behaves as its [`Behaviour`] says.
#[derive(Debug)]
pub struct Stub {
    behaviour: Behaviour,
}

impl Stub {
    /// A stub with this behaviour.
    pub fn new(behaviour: Behaviour) -> Stub {
        Stub { behaviour }
    }
}

impl Handler for Stub {
    fn call(&self, input: Value, ctx: TaskContext) -> BoxFuture<'_, Result<Value, TaskError>> {
        Box::pin(async move { self.behaviour.run(input, &ctx).await })
    }
}

/// A parsed stubs file: key to stub. `sequence` counters belong to this
/// instance (a fresh parse starts them over).
#[derive(Debug, Default)]
pub struct Stubs {
    stubs: BTreeMap<String, Arc<Stub>>,
}

impl Stubs {
    /// Parses a stubs document already decoded from JSON.
    pub fn from_value(value: &Value) -> Result<Stubs, StubsError> {
        let map = object(value, "", "a stubs file")?;
        let mut stubs = BTreeMap::new();
        for (key, v) in map {
            let at = child("", key);
            if key.is_empty() {
                return Err(invalid(&at, "a stub key must not be empty"));
            }
            stubs.insert(key.clone(), Arc::new(Stub::new(Behaviour::parse(v, &at)?)));
        }
        Ok(Stubs { stubs })
    }

    /// Parses stubs JSON text.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str) -> Result<Stubs, StubsError> {
        let value: Value = serde_json::from_str(text).map_err(|e| StubsError::Syntax {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        Stubs::from_value(&value)
    }

    /// The stub for `key`, if there is one.
    pub fn get(&self, key: &str) -> Option<Arc<Stub>> {
        self.stubs.get(key).cloned()
    }

    /// True when there is a stub for `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.stubs.contains_key(key)
    }

    /// The keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.stubs.keys().map(String::as_str)
    }

    /// Every stub as a handler, by key (to register with a runtime).
    pub fn handlers(&self) -> impl Iterator<Item = (String, Arc<dyn Handler>)> + '_ {
        self.stubs
            .iter()
            .map(|(k, s)| (k.clone(), Arc::clone(s) as Arc<dyn Handler>))
    }

    /// Number of stubs.
    pub fn len(&self) -> usize {
        self.stubs.len()
    }

    /// True when there are no stubs.
    pub fn is_empty(&self) -> bool {
        self.stubs.is_empty()
    }
}

impl std::str::FromStr for Stubs {
    type Err = StubsError;
    fn from_str(text: &str) -> Result<Stubs, StubsError> {
        Stubs::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::{HeartbeatReceiver, heartbeat_channel};

    fn ctx() -> (TaskContext, HeartbeatReceiver) {
        let (tx, rx) = heartbeat_channel();
        let mut c = TaskContext::new("t", tx);
        c.resource = "r".into();
        (c, rx)
    }

    async fn call(stubs: &Stubs, key: &str, input: Value) -> Result<Value, TaskError> {
        let (c, _rx) = ctx();
        stubs.get(key).expect("stub").call(input, c).await
    }

    fn err(v: Value) -> (String, String) {
        match Stubs::from_value(&v) {
            Err(StubsError::Invalid { pointer, message }) => (pointer, message),
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn returns_echo_throws() {
        let s = Stubs::from_value(&json!({
            "a": {"returns": {"x": 1}},
            "b": {"echo": true},
            "c": {"throws": {"error": "E", "cause": "C"}},
            "d": {"throws": {"error": "E"}},
            "e": {"returns": null},
        }))
        .unwrap();
        assert_eq!(call(&s, "a", json!(0)).await, Ok(json!({"x": 1})));
        assert_eq!(call(&s, "b", json!([1, 2])).await, Ok(json!([1, 2])));
        assert_eq!(call(&s, "c", json!(0)).await, Err(TaskError::new("E", "C")));
        assert_eq!(call(&s, "d", json!(0)).await, Err(TaskError::new("E", "")));
        assert_eq!(call(&s, "e", json!(0)).await, Ok(Value::Null));
        assert_eq!(s.len(), 5);
        assert_eq!(s.keys().collect::<Vec<_>>(), vec!["a", "b", "c", "d", "e"]);
    }

    #[tokio::test]
    async fn sequence_advances_and_repeats_last() {
        let s = Stubs::from_value(&json!({
            "f": {"sequence": [{"throws": {"error": "Busy"}}, {"returns": 1}, {"returns": 2}]}
        }))
        .unwrap();
        assert_eq!(
            call(&s, "f", json!(0)).await,
            Err(TaskError::new("Busy", ""))
        );
        assert_eq!(call(&s, "f", json!(0)).await, Ok(json!(1)));
        assert_eq!(call(&s, "f", json!(0)).await, Ok(json!(2)));
        assert_eq!(call(&s, "f", json!(0)).await, Ok(json!(2)));
        // A fresh parse starts over.
        let s2 = Stubs::from_value(&json!({"f": {"sequence": [{"returns": 1}, {"returns": 2}]}}))
            .unwrap();
        assert_eq!(call(&s2, "f", json!(0)).await, Ok(json!(1)));
    }

    #[tokio::test]
    async fn switch_picks_first_match_then_else() {
        let s = Stubs::from_value(&json!({
            "p": {"switch": [
                {"if": {"pointer": "/id", "equals": 2}, "then": {"returns": "two"}},
                {"if": {"pointer": "/id", "equals": 2}, "then": {"returns": "second"}},
                {"if": {"pointer": "/a~1b", "equals": true}, "then": {"throws": {"error": "Slash"}}}
            ], "else": {"echo": true}},
            "q": {"switch": [{"if": {"pointer": "", "equals": 5}, "then": {"returns": "five"}}]}
        }))
        .unwrap();
        assert_eq!(call(&s, "p", json!({"id": 2})).await, Ok(json!("two")));
        assert_eq!(
            call(&s, "p", json!({"a/b": true})).await,
            Err(TaskError::new("Slash", ""))
        );
        assert_eq!(call(&s, "p", json!({"id": 3})).await, Ok(json!({"id": 3})));
        assert_eq!(call(&s, "q", json!(5)).await, Ok(json!("five")));
        let e = call(&s, "q", json!(6)).await.unwrap_err();
        assert_eq!(e.error, NO_MATCH);
        assert!(e.cause.contains("no case matched"), "{}", e.cause);
        // Numbers are equal by value, in arrays and objects too.
        assert_eq!(call(&s, "q", json!(5.0)).await, Ok(json!("five")));
        assert_eq!(call(&s, "p", json!({"id": 2.0})).await, Ok(json!("two")));
        let nested = Stubs::from_value(&json!({
            "n": {"switch": [{"if": {"pointer": "/v", "equals": {"a": [1, 2.5]}}, "then": {"returns": "hit"}}],
                  "else": {"returns": "miss"}}
        }))
        .unwrap();
        assert_eq!(
            call(&nested, "n", json!({"v": {"a": [1.0, 2.5]}})).await,
            Ok(json!("hit"))
        );
        assert_eq!(
            call(&nested, "n", json!({"v": {"a": [1, 2.5, 3]}})).await,
            Ok(json!("miss"))
        );
        assert_eq!(
            call(&nested, "n", json!({"v": {"a": ["1", 2.5]}})).await,
            Ok(json!("miss"))
        );
        // The cause names the stub (the function), not the resource.
        let (mut c, _rx) = ctx();
        c.handler = "price".into();
        let e = s.get("q").unwrap().call(json!(6), c).await.unwrap_err();
        assert!(e.cause.starts_with("stub for 'price':"), "{}", e.cause);
    }

    #[tokio::test]
    async fn switch_case_with_its_own_sequence() {
        let s = Stubs::from_value(&json!({
            "p": {"switch": [
                {"if": {"pointer": "/id", "equals": 2},
                 "then": {"sequence": [{"throws": {"error": "X"}}, {"returns": "ok"}]}}
            ], "else": {"returns": "other"}}
        }))
        .unwrap();
        assert_eq!(call(&s, "p", json!({"id": 1})).await, Ok(json!("other")));
        assert_eq!(
            call(&s, "p", json!({"id": 2})).await,
            Err(TaskError::new("X", ""))
        );
        assert_eq!(call(&s, "p", json!({"id": 1})).await, Ok(json!("other")));
        assert_eq!(call(&s, "p", json!({"id": 2})).await, Ok(json!("ok")));
    }

    #[tokio::test(start_paused = true)]
    async fn delay_is_a_tokio_sleep() {
        let s = Stubs::from_value(&json!({"slow": {"returns": 1, "delaySeconds": 3600}})).unwrap();
        let start = tokio::time::Instant::now();
        assert_eq!(call(&s, "slow", json!(0)).await, Ok(json!(1)));
        assert_eq!(start.elapsed(), Duration::from_secs(3600));
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_delay() {
        let s = Stubs::from_value(&json!({"x": {"echo": true, "delaySeconds": 0.25}})).unwrap();
        let start = tokio::time::Instant::now();
        assert_eq!(call(&s, "x", json!(1)).await, Ok(json!(1)));
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_while_delaying() {
        let s = Stubs::from_value(&json!({
            "slow": {"returns": 1, "delaySeconds": 10, "heartbeatSeconds": 3}
        }))
        .unwrap();
        let (c, mut rx) = ctx();
        let start = tokio::time::Instant::now();
        let stub = s.get("slow").unwrap();
        let out = stub.call(json!(0), c).await;
        assert_eq!(out, Ok(json!(1)));
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        let mut beats = 0;
        while rx.recv().await.is_some() {
            beats += 1;
        }
        assert_eq!(beats, 3); // at 3, 6 and 9 seconds
    }

    #[test]
    fn precise_errors() {
        assert_eq!(err(json!([])).0, "");
        assert_eq!(err(json!({"a": 1})).0, "/a");
        let (p, m) = err(json!({"a": {"returns": 1, "retuns": 2}}));
        assert_eq!(p, "/a/retuns");
        assert!(m.contains("unknown key 'retuns'"), "{m}");
        let (p, m) = err(json!({"a": {"returns": 1, "echo": true}}));
        assert_eq!(p, "/a");
        assert!(m.contains("exactly one"), "{m}");
        assert_eq!(err(json!({"a": {}})).0, "/a");
        assert_eq!(err(json!({"a": {"echo": false}})).0, "/a/echo");
        assert_eq!(err(json!({"a": {"throws": {}}})).0, "/a/throws");
        assert_eq!(
            err(json!({"a": {"throws": {"error": 1}}})).0,
            "/a/throws/error"
        );
        assert_eq!(
            err(json!({"a": {"throws": {"error": "E", "cause": 1}}})).0,
            "/a/throws/cause"
        );
        assert_eq!(err(json!({"a": {"sequence": []}})).0, "/a/sequence");
        assert_eq!(
            err(json!({"a": {"sequence": [{"returns": 1}, {"bad": 1}]}})).0,
            "/a/sequence/1/bad"
        );
        assert_eq!(err(json!({"a": {"switch": {}}})).0, "/a/switch");
        assert_eq!(
            err(json!({"a": {"switch": [{"if": {"pointer": "id", "equals": 1}, "then": {"echo": true}}]}})).0,
            "/a/switch/0/if/pointer"
        );
        assert_eq!(
            err(json!({"a": {"switch": [{"if": {"pointer": "/id"}, "then": {"echo": true}}]}})).0,
            "/a/switch/0/if"
        );
        assert_eq!(
            err(json!({"a": {"switch": [{"if": {"pointer": "/id", "equals": 1}}]}})).0,
            "/a/switch/0"
        );
        assert_eq!(
            err(json!({"a": {"switch": [{"if": {"pointer": "/i", "equals": 1}, "then": {"echo": true}}], "else": 3}})).0,
            "/a/else"
        );
        assert_eq!(
            err(json!({"a": {"returns": 1, "else": {"echo": true}}})).0,
            "/a/else"
        );
        assert_eq!(
            err(json!({"a": {"returns": 1, "delaySeconds": -1}})).0,
            "/a/delaySeconds"
        );
        assert_eq!(
            err(json!({"a": {"returns": 1, "delaySeconds": "1"}})).0,
            "/a/delaySeconds"
        );
        assert_eq!(
            err(json!({"a": {"returns": 1, "delaySeconds": 1e300}})).0,
            "/a/delaySeconds"
        );
        assert_eq!(
            err(json!({"a": {"returns": 1, "delaySeconds": 1, "heartbeatSeconds": 0}})).0,
            "/a/heartbeatSeconds"
        );
        // Positive, but rounding to no time at all.
        let (at, message) =
            err(json!({"a": {"returns": 1, "delaySeconds": 60, "heartbeatSeconds": 1e-10}}));
        assert_eq!(at, "/a/heartbeatSeconds");
        assert!(message.contains("at least 0.001 seconds"), "{message}");
        assert_eq!(
            err(json!({"a": {"returns": 1, "heartbeatSeconds": 1}})).0,
            "/a/heartbeatSeconds"
        );
        assert_eq!(err(json!({"a/b": {"nope": 1}})).0, "/a~1b/nope");
        assert_eq!(err(json!({"": {"echo": true}})).0, "/");
    }

    #[test]
    fn syntax_errors_have_positions() {
        match Stubs::from_str("{\n  \"a\": {\"returns\": 1},\n  oops\n}") {
            Err(StubsError::Syntax { line, column, .. }) => {
                assert_eq!(line, 3);
                assert_eq!(column, 3);
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
        let parsed: Stubs = "{\"a\": {\"echo\": true}}".parse().unwrap();
        assert!(parsed.contains("a"));
        assert!(!parsed.contains("b"));
        assert_eq!(parsed.handlers().count(), 1);
    }

    #[test]
    fn error_display_names_the_pointer() {
        let e = Stubs::from_value(&json!({"a": {"echo": 1}})).unwrap_err();
        assert_eq!(e.to_string(), "/a/echo: 'echo' must be true, got 1");
        let e = Stubs::from_value(&json!(1)).unwrap_err();
        assert!(e.to_string().starts_with("(root): "), "{e}");
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>().prop_map(|f| json!(f)),
            any::<i64>().prop_map(|i| json!(i)),
            prop::sample::select(vec![
                "returns",
                "echo",
                "throws",
                "sequence",
                "switch",
                "else",
                "delaySeconds",
                "heartbeatSeconds",
                "if",
                "then",
                "pointer",
                "equals",
                "error",
                "cause",
                "/id",
                ""
            ])
            .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop::sample::select(vec![
                            "returns",
                            "echo",
                            "throws",
                            "sequence",
                            "switch",
                            "else",
                            "delaySeconds",
                            "heartbeatSeconds",
                            "if",
                            "then",
                            "pointer",
                            "equals",
                            "error",
                            "cause",
                            "k"
                        ]),
                        inner
                    ),
                    0..4
                )
                .prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        #[test]
        fn parsing_never_panics(v in arb_json()) {
            let _ = Stubs::from_value(&json!({"k": v.clone()}));
            let _ = Stubs::from_value(&v);
        }

        #[test]
        fn text_parsing_never_panics(s in ".{0,64}") {
            let _ = Stubs::from_str(&s);
        }
    }
}
