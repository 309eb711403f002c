//! Parser and validator: ASL JSON text to a [`StateMachine`], reporting
//! *every* problem at once with the JSON pointer of the offending field.
//!
//! The checks follow what AWS Step Functions accepts in JSONPath mode (the
//! Amazon States Language specification plus AWS's own rules such as the
//! 80-character limit on state names and the rejection of unknown fields and
//! unreachable states). Errors come sorted in document order.
//!
//! Layout: [`locate`] maps JSON pointers to line/column in the source text,
//! `ctx` holds the error collector and field readers, `states` parses each
//! state type and `graph` parses `StartAt`/`States` and checks transitions.

use serde_json::Value;

use crate::model::StateMachine;

mod ctx;
mod graph;
pub mod locate;
mod states;
#[cfg(test)]
mod tests;

/// The stable error codes of [`ValidationError::code`].
pub mod codes {
    /// The text is not JSON (or is nested deeper than the JSON parser allows).
    pub const INVALID_JSON: &str = "INVALID_JSON";
    /// A required field is absent (the pointer is the object that lacks it).
    pub const MISSING_FIELD: &str = "MISSING_FIELD";
    /// A field that Step Functions does not know at this place.
    pub const UNKNOWN_FIELD: &str = "UNKNOWN_FIELD";
    /// A field AWS knows but Sagaflow does not run (`ItemReader`, `ResultWriter`).
    pub const UNSUPPORTED_FIELD: &str = "UNSUPPORTED_FIELD";
    /// `QueryLanguage` is `JSONata`, which Sagaflow does not run yet.
    pub const UNSUPPORTED_QUERY_LANGUAGE: &str = "UNSUPPORTED_QUERY_LANGUAGE";
    /// A field holds the wrong JSON type.
    pub const INVALID_TYPE: &str = "INVALID_TYPE";
    /// A field holds a value of the right type that is not allowed (range, enum, format).
    pub const INVALID_VALUE: &str = "INVALID_VALUE";
    /// Two fields that exclude each other are both present.
    pub const CONFLICTING_FIELDS: &str = "CONFLICTING_FIELDS";
    /// A state needs `Next` or `End` (or a Choice rule needs `Next`) and has neither.
    pub const MISSING_TRANSITION: &str = "MISSING_TRANSITION";
    /// `StartAt`, `Next`, `Default` or a Catch/Choice `Next` names no state of its graph.
    pub const MISSING_TRANSITION_TARGET: &str = "MISSING_TRANSITION_TARGET";
    /// A state cannot be reached from `StartAt`.
    pub const UNREACHABLE_STATE: &str = "UNREACHABLE_STATE";
    /// A graph (the machine, a branch, an item processor) has no state that
    /// ends it (`"End": true`, Succeed or Fail): it could only loop.
    pub const MISSING_END_STATE: &str = "MISSING_END_STATE";
    /// Two states of the machine (including branches and item processors) share a name.
    pub const DUPLICATE_STATE_NAME: &str = "DUPLICATE_STATE_NAME";
    /// A state name is empty, longer than 80 characters, or holds a control
    /// character.
    pub const INVALID_STATE_NAME: &str = "INVALID_STATE_NAME";
    /// A path does not parse or is not allowed here (e.g. not a reference path).
    pub const INVALID_PATH: &str = "INVALID_PATH";
    /// An intrinsic function call does not parse (syntax, unknown function, arity).
    pub const INVALID_INTRINSIC: &str = "INVALID_INTRINSIC";
    /// `States.ALL` appears with other error names in one `ErrorEquals`.
    pub const STATES_ALL_NOT_ALONE: &str = "STATES_ALL_NOT_ALONE";
    /// A retrier or catcher with `States.ALL` is not the last one.
    pub const STATES_ALL_NOT_LAST: &str = "STATES_ALL_NOT_LAST";
    /// A Choice rule is malformed (no operator, `Next` in a nested rule, ...).
    pub const INVALID_CHOICE_RULE: &str = "INVALID_CHOICE_RULE";
    /// An `Assign` variable name is not `[A-Za-z_][A-Za-z0-9_]*` of at most 80 characters.
    pub const INVALID_VARIABLE_NAME: &str = "INVALID_VARIABLE_NAME";
}

/// The deepest nesting of arrays and objects accepted, the same as
/// serde_json's recursion limit, so that a value decoded by serde_json is
/// always deep enough and nothing here can overflow the stack.
pub const MAX_DEPTH: usize = 128;

/// One problem found in a definition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ValidationError {
    /// JSON pointer (RFC 6901) of the offending field, e.g.
    /// `/States/BookFlight/Retry/0/MaxAttempts`; `""` for the whole document.
    pub pointer: String,
    /// A stable, machine-readable kind, e.g. `MISSING_FIELD`,
    /// `UNKNOWN_STATE`, `UNREACHABLE_STATE`, `INVALID_PATH` (see [`codes`]).
    pub code: &'static str,
    /// What is wrong, for a person.
    pub message: String,
    /// 1-based line of the field in the source text, when parsed from text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based column, when parsed from text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(
                f,
                "{}:{}: {} [{}] {}",
                l, c, self.pointer, self.code, self.message
            ),
            _ => write!(f, "{} [{}] {}", self.pointer, self.code, self.message),
        }
    }
}

/// Every problem found in a definition (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid state machine definition: {} error(s), first: {}", .errors.len(), first_error(.errors))]
pub struct InvalidDefinition {
    /// The problems, in document order.
    pub errors: Vec<ValidationError>,
}

fn first_error(errors: &[ValidationError]) -> String {
    errors
        .first()
        .map_or_else(|| "(none)".to_string(), ToString::to_string)
}

/// Parses and validates a definition read as bytes (a file): a UTF-8 byte
/// order mark at the start (which some Windows editors write) is skipped;
/// text that is not UTF-8 is an `INVALID_JSON` error located at the first
/// bad byte; otherwise as [`parse_definition`].
pub fn parse_definition_bytes(bytes: &[u8]) -> Result<StateMachine, InvalidDefinition> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_definition(text),
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
            let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            // Columns count characters, as serde_json's do.
            let column = String::from_utf8_lossy(&valid[line_start..])
                .chars()
                .count()
                + 1;
            Err(InvalidDefinition {
                errors: vec![ValidationError {
                    pointer: String::new(),
                    code: codes::INVALID_JSON,
                    message: format!(
                        "the definition is not valid UTF-8 (invalid byte sequence at byte offset {})",
                        e.valid_up_to()
                    ),
                    line: Some(line),
                    column: Some(column),
                }],
            })
        }
    }
}

/// Parses and validates definition text (JSON).
///
/// Malformed JSON gives a single `INVALID_JSON` error with serde_json's
/// message and position. Otherwise every error carries the line and column
/// of its pointer's key in `text` (or of its nearest ancestor when the
/// pointer names a field that is absent).
pub fn parse_definition(text: &str) -> Result<StateMachine, InvalidDefinition> {
    parse_text(text, &[])
}

/// Checks added to the validator after definitions could be deployed
/// without them. A definition accepted then must still load (its running
/// executions must go on), so [`parse_accepted_definition`] skips them.
const LATER_CHECKS: &[&str] = &[codes::MISSING_END_STATE];

/// Parses a definition that was validated and stored before (a deployed
/// state machine version), leaving out the checks added since
/// (`MISSING_END_STATE`): tightening the validator refuses new definitions,
/// never the ones already running.
pub fn parse_accepted_definition(text: &str) -> Result<StateMachine, InvalidDefinition> {
    parse_text(text, LATER_CHECKS)
}

fn parse_text(text: &str, skipped: &[&str]) -> Result<StateMachine, InvalidDefinition> {
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => {
            return Err(InvalidDefinition {
                errors: vec![ValidationError {
                    pointer: String::new(),
                    code: codes::INVALID_JSON,
                    message: e.to_string(),
                    line: Some(e.line()),
                    column: Some(e.column()),
                }],
            });
        }
    };
    let positions = locate::Positions::index(text);
    let graph::Outcome {
        machine,
        mut errors,
        states_objects,
    } = graph::parse_machine(&value);
    errors.retain(|e| !skipped.contains(&e.code));
    // serde_json keeps the last of two equal keys; AWS rejects a definition
    // that names two states alike, so duplicate keys of a `States` object
    // are errors. Other duplicate keys keep serde_json's last-wins reading.
    for dup in positions.duplicates() {
        let (parent, name) = locate::split_last(dup);
        if states_objects.iter().any(|p| p == parent) {
            errors.push(ctx::error(
                dup.clone(),
                codes::DUPLICATE_STATE_NAME,
                format!("Duplicate state name '{name}'"),
            ));
        }
    }
    let mut errors = match finish(machine, errors, &value) {
        Ok(machine) => return Ok(machine),
        Err(errors) => errors,
    };
    for error in &mut errors {
        if let Some((line, column)) = positions.find(&error.pointer) {
            error.line = Some(line);
            error.column = Some(column);
        }
    }
    Err(InvalidDefinition { errors })
}

/// Parses and validates a definition already decoded from JSON.
///
/// A value nested deeper than [`MAX_DEPTH`] is rejected with `INVALID_JSON`.
pub fn parse_value(value: &Value) -> Result<StateMachine, InvalidDefinition> {
    let outcome = graph::parse_machine(value);
    finish(outcome.machine, outcome.errors, value).map_err(|errors| InvalidDefinition { errors })
}

/// The machine when there is nothing to report, otherwise the errors
/// sorted in document order.
fn finish(
    machine: Option<StateMachine>,
    mut errors: Vec<ValidationError>,
    value: &Value,
) -> Result<StateMachine, Vec<ValidationError>> {
    if errors.is_empty() {
        match machine {
            Some(machine) => return Ok(machine),
            // Every path that drops a part of the model reports why; this
            // keeps the promise that an error list is never empty anyway.
            None => errors.push(ctx::error(
                String::new(),
                codes::INVALID_VALUE,
                "the definition could not be parsed".to_string(),
            )),
        }
    }
    sort_errors(value, &mut errors);
    Err(errors)
}

/// Sorts errors in document order (stable: errors on one pointer keep the
/// order they were found in). A pointer that names an absent field sorts at
/// its nearest present ancestor.
fn sort_errors(value: &Value, errors: &mut [ValidationError]) {
    let order = locate::document_order(value);
    errors.sort_by_cached_key(|e| locate::lookup(&order, &e.pointer).copied().unwrap_or(0));
}
