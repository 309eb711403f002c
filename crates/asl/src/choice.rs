//! Evaluation of Choice rules: every comparison operator, its `...Path`
//! twin, the type tests, `And`/`Or`/`Not`, and `StringMatches` patterns.

use serde_json::Value;

use crate::model::Condition;
use crate::path::Env;

/// A condition that could not be evaluated (`States.Runtime` in AWS): the
/// `Variable` or a `...Path` operand selects nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ChoiceError {
    /// AWS-like message, e.g. "Invalid path '$.x': The choice state's condition path references an invalid value."
    pub message: String,
}

/// Evaluates a condition against the effective input of a Choice state.
pub fn evaluate(condition: &Condition, input: &Value, env: &dyn Env) -> Result<bool, ChoiceError> {
    todo!("{condition:?}{input}{}", env.context())
}

/// `StringMatches`: `*` matches any run of characters (possibly empty);
/// `\*` is a literal star and `\\` a literal backslash.
pub fn string_matches(pattern: &str, text: &str) -> bool {
    todo!("{pattern}{text}")
}

/// Parses a timestamp as ASL does for `Timestamp*` comparisons, `IsTimestamp`
/// and Wait's `Timestamp`: RFC 3339 with an uppercase `T`, a `Z` or a numeric
/// offset, optional fractional seconds.
pub fn parse_timestamp(text: &str) -> Option<jiff::Timestamp> {
    todo!("{text}")
}
