//! Parser and validator: ASL JSON text to a [`StateMachine`], reporting
//! *every* problem at once with the JSON pointer of the offending field.

use serde_json::Value;

use crate::model::StateMachine;

/// One problem found in a definition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ValidationError {
    /// JSON pointer (RFC 6901) of the offending field, e.g.
    /// `/States/BookFlight/Retry/0/MaxAttempts`; `""` for the whole document.
    pub pointer: String,
    /// A stable, machine-readable kind, e.g. `MISSING_FIELD`,
    /// `UNKNOWN_STATE`, `UNREACHABLE_STATE`, `INVALID_PATH`.
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
#[error("invalid state machine definition: {} error(s), first: {}", .errors.len(), .errors[0])]
pub struct InvalidDefinition {
    /// The problems, in document order.
    pub errors: Vec<ValidationError>,
}

/// Parses and validates definition text (JSON).
pub fn parse_definition(text: &str) -> Result<StateMachine, InvalidDefinition> {
    todo!("{text}")
}

/// Parses and validates a definition already decoded from JSON.
pub fn parse_value(value: &Value) -> Result<StateMachine, InvalidDefinition> {
    todo!("{value}")
}
