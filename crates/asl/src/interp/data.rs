//! Input and output processing helpers: templates, payload sizes, the error
//! object, timestamps.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::errors;
use crate::model::{Expr, Template, TemplateField};
use crate::path::{Env, ReadPath};
use crate::rand::RandomSource;

/// An error raised while executing a state: the `Error` and `Cause` that
/// Retry and Catch match and that end up in the error object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    pub error: String,
    pub cause: String,
}

impl Failure {
    pub fn new(error: impl Into<String>, cause: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            cause: cause.into(),
        }
    }

    /// `States.Runtime` for a state: never retried, never caught.
    pub fn runtime(state: &str, message: impl std::fmt::Display) -> Failure {
        Failure::new(
            errors::RUNTIME,
            format!("An error occurred while executing the state '{state}'. {message}"),
        )
    }

    /// The error object that a Catch passes on: `{"Error": ..., "Cause": ...}`.
    pub fn error_output(&self) -> Value {
        let mut map = Map::with_capacity(2);
        map.insert("Error".to_string(), Value::String(self.error.clone()));
        map.insert("Cause".to_string(), Value::String(self.cause.clone()));
        Value::Object(map)
    }
}

/// Evaluates a payload template (`Parameters`, `ItemSelector`,
/// `ResultSelector`, `Assign`, `BatchInput`) against `input`.
///
/// A `.$` path that selects nothing is `States.Runtime`, as AWS reports it
/// (with AWS's wording), and a failed intrinsic is `States.IntrinsicFailure`.
pub(crate) fn eval_template(
    template: &Template,
    input: &Value,
    env: &dyn Env,
    rng: &mut dyn RandomSource,
    state: &str,
) -> Result<Value, Failure> {
    match template {
        Template::Literal(v) => Ok(v.clone()),
        Template::Array(items) => items
            .iter()
            .map(|t| eval_template(t, input, env, rng, state))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Template::Object(fields) => {
            let mut map = Map::with_capacity(fields.len());
            for (key, field) in fields {
                let value = match field {
                    TemplateField::Template(t) => eval_template(t, input, env, rng, state)?,
                    TemplateField::Expr(expr) => eval_field(expr, key, input, env, rng, state)?,
                };
                map.insert(key.clone(), value);
            }
            Ok(Value::Object(map))
        }
    }
}

/// Evaluates one `key.$` expression.
pub(crate) fn eval_field(
    expr: &Expr,
    key: &str,
    input: &Value,
    env: &dyn Env,
    rng: &mut dyn RandomSource,
    state: &str,
) -> Result<Value, Failure> {
    match expr {
        Expr::Path(path) => match path.resolve(input, env) {
            Ok(v) => Ok(v.into_owned()),
            Err(_) => Err(Failure::runtime(
                state,
                format!(
                    "The JSONPath '{}' specified for the field '{}.$' could not be found in the input '{}'",
                    path.as_str(),
                    key,
                    truncate_json(input)
                ),
            )),
        },
        Expr::Intrinsic(call) => eval_intrinsic(call, input, env, rng),
    }
}

/// Evaluates an intrinsic call; a failure is `States.IntrinsicFailure`.
fn eval_intrinsic(
    call: &crate::intrinsics::IntrinsicCall,
    input: &Value,
    env: &dyn Env,
    rng: &mut dyn RandomSource,
) -> Result<Value, Failure> {
    call.eval(input, env, rng)
        .map_err(|e| Failure::new(errors::INTRINSIC_FAILURE, e.message))
}

/// Evaluates an expression that is not a template field (Fail's
/// `ErrorPath`/`CausePath`).
pub(crate) fn eval_expr(
    expr: &Expr,
    field: &str,
    input: &Value,
    env: &dyn Env,
    rng: &mut dyn RandomSource,
    state: &str,
) -> Result<Value, Failure> {
    match expr {
        Expr::Path(path) => select(path, field, input, env, state),
        Expr::Intrinsic(call) => eval_intrinsic(call, input, env, rng),
    }
}

/// Resolves a path field such as `InputPath`, `ItemsPath` or `SecondsPath`;
/// a miss is `States.Runtime`.
pub(crate) fn select(
    path: &ReadPath,
    field: &str,
    input: &Value,
    env: &dyn Env,
    state: &str,
) -> Result<Value, Failure> {
    match path.resolve(input, env) {
        Ok(v) => Ok(v.into_owned()),
        Err(miss) => Err(Failure::runtime(
            state,
            format!(
                "Invalid path '{}' for the field '{}': {}",
                path.as_str(),
                field,
                miss
            ),
        )),
    }
}

/// JSON text of a value, cut to a readable length for error messages.
pub(crate) fn truncate_json(value: &Value) -> String {
    const MAX: usize = 256;
    let text = value.to_string();
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// A state's input or output: a shared value and an upper bound of the
/// length of its JSON text, so that the payload limit is checked by walking
/// a value only when the bound comes near the limit.
#[derive(Debug, Clone)]
pub(crate) struct Payload {
    pub value: Arc<Value>,
    /// Upper bound of the JSON length of `value`, in bytes.
    pub size: usize,
}

impl Payload {
    /// A payload whose size is measured now (the walk stops past `limit`,
    /// leaving the size above it).
    pub fn measure(value: Value, limit: usize) -> Payload {
        Payload::measure_shared(Arc::new(value), limit)
    }

    /// [`Payload::measure`] for a value that is already shared.
    pub fn measure_shared(value: Arc<Value>, limit: usize) -> Payload {
        let size = json_len_within(&value, limit).unwrap_or(limit.saturating_add(1));
        Payload { value, size }
    }

    /// The empty object `{}`.
    pub fn empty_object() -> Payload {
        Payload {
            value: Arc::new(Value::Object(Map::new())),
            size: 2,
        }
    }

    /// `Ok` with an exact size when the payload fits in `limit` bytes; walks
    /// the value only when the bound is above the limit.
    pub fn fits(self, limit: usize) -> Result<Payload, Payload> {
        if self.size <= limit {
            return Ok(self);
        }
        match json_len_within(&self.value, limit) {
            Some(size) => Ok(Payload { size, ..self }),
            None => Err(self),
        }
    }
}

/// The deepest nesting of arrays and objects a value may have at run time
/// (an execution input, a task's input or result, a state's output). Values
/// are kept in histories, which are read back with serde_json's nesting
/// limit of 128 (envelope included); without a limit of its own, a loop
/// that nests its input one level deeper each time (`"ResultPath":
/// "$.previous"`) would grow it until its history could no longer be read.
pub const MAX_DEPTH: usize = 100;

/// True when `value` nests arrays and objects more than `max` levels deep.
/// Iterative (no recursion whatever the depth), and free for values too
/// small to be that deep (`size` is an upper bound of their JSON length:
/// each level takes at least two bytes).
pub(crate) fn deeper_than(value: &Value, size: usize, max: usize) -> bool {
    if size <= 2 * max {
        return false;
    }
    // Containers only, with their depth (1 for the top one).
    let container = |v: &Value| matches!(v, Value::Array(_) | Value::Object(_));
    let mut stack: Vec<(&Value, usize)> = Vec::new();
    if container(value) {
        stack.push((value, 1));
    }
    while let Some((v, depth)) = stack.pop() {
        if depth > max {
            return true;
        }
        match v {
            Value::Array(items) => {
                for item in items.iter().filter(|c| container(c)) {
                    stack.push((item, depth + 1));
                }
            }
            Value::Object(map) => {
                for item in map.values().filter(|c| container(c)) {
                    stack.push((item, depth + 1));
                }
            }
            _ => {}
        }
    }
    false
}

/// The length of the JSON text of `value` when it is at most `limit` bytes.
/// Walks the value without serializing it and stops as soon as the limit is
/// passed.
pub(crate) fn json_len_within(value: &Value, limit: usize) -> Option<usize> {
    let budget = limit.min(isize::MAX as usize) as isize;
    let mut left = budget;
    json_len(value, &mut left);
    (left >= 0).then(|| (budget - left) as usize)
}

/// True when the JSON text of `value` is longer than `limit` bytes.
#[cfg(test)]
pub(crate) fn exceeds_size(value: &Value, limit: usize) -> bool {
    json_len_within(value, limit).is_none()
}

fn json_len(value: &Value, budget: &mut isize) {
    if *budget < 0 {
        return;
    }
    match value {
        Value::Null => *budget -= 4,
        Value::Bool(b) => *budget -= if *b { 4 } else { 5 },
        Value::Number(n) => *budget -= number_len(n) as isize,
        Value::String(s) => *budget -= string_len(s) as isize,
        Value::Array(items) => {
            *budget -= 2 + items.len().saturating_sub(1) as isize;
            for item in items {
                json_len(item, budget);
            }
        }
        Value::Object(map) => {
            *budget -= 2 + map.len().saturating_sub(1) as isize;
            for (k, v) in map {
                *budget -= string_len(k) as isize + 1;
                json_len(v, budget);
            }
        }
    }
}

fn number_len(n: &serde_json::Number) -> usize {
    if let Some(u) = n.as_u64() {
        digits(u)
    } else if let Some(i) = n.as_i64() {
        1 + digits(i.unsigned_abs())
    } else {
        n.to_string().len()
    }
}

fn digits(mut u: u64) -> usize {
    let mut d = 1;
    while u >= 10 {
        u /= 10;
        d += 1;
    }
    d
}

fn string_len(s: &str) -> usize {
    let escapes = s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            0..=0x1f => 5,
            _ => 0,
        })
        .sum::<usize>();
    s.len() + 2 + escapes
}

/// A timestamp as Step Functions writes them: `2024-01-01T00:00:00.000Z`.
pub fn format_timestamp(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn size_matches_serialized_length() {
        let values = [
            json!(null),
            json!(true),
            json!(false),
            json!(12345),
            json!(-12),
            json!(1.5),
            json!("a\"b\\c\nd\u{1}é"),
            json!([1, 2, [3, {"a": "b"}]]),
            json!({"k": [], "l": {}, "m": {"n": null}}),
        ];
        for v in values {
            let n = serde_json::to_string(&v).unwrap().len();
            assert!(!exceeds_size(&v, n), "{v} fits in {n}");
            assert!(exceeds_size(&v, n - 1), "{v} does not fit in {}", n - 1);
            assert_eq!(json_len_within(&v, n), Some(n));
            assert_eq!(Payload::measure(v.clone(), 1 << 20).size, n);
        }
    }

    #[test]
    fn timestamps_have_milliseconds_and_z() {
        let ts: jiff::Timestamp = "2024-01-02T03:04:05.6+01:00".parse().unwrap();
        assert_eq!(format_timestamp(ts), "2024-01-02T02:04:05.600Z");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let v = Value::String("é".repeat(400));
        let t = truncate_json(&v);
        assert!(t.ends_with("..."));
        assert!(t.len() < 300);
    }
}
