//! The 18 intrinsic functions of ASL (`States.Format`, `States.Array`, ...).
//!
//! [`IntrinsicCall::parse`] checks syntax, function names and arity when a
//! definition is validated; [`IntrinsicCall::eval`] runs a call against the
//! input, the context object and variables. Randomness (`States.UUID`,
//! `States.MathRandom` without a seed) comes from a [`RandomSource`] so that
//! evaluation is deterministic.

use serde_json::Value;

use crate::path::{Env, ReadPath};
use crate::rand::RandomSource;

/// A parsed intrinsic function call.
#[derive(Debug, Clone)]
pub struct IntrinsicCall {
    /// The function.
    pub function: Function,
    /// The arguments, in order.
    pub args: Vec<Arg>,
}

/// The intrinsic functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Function {
    Format,
    StringToJson,
    JsonToString,
    Array,
    ArrayPartition,
    ArrayContains,
    ArrayRange,
    ArrayGetItem,
    ArrayLength,
    ArrayUnique,
    Base64Encode,
    Base64Decode,
    Hash,
    JsonMerge,
    MathRandom,
    MathAdd,
    StringSplit,
    Uuid,
}

/// An argument of an intrinsic call.
#[derive(Debug, Clone)]
pub enum Arg {
    /// A string literal in single quotes (escapes already applied).
    String(String),
    /// A number literal.
    Number(serde_json::Number),
    /// `true` / `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// A path (`$.x`, `$$.Execution.Id`, `$var`).
    Path(ReadPath),
    /// A nested call.
    Call(IntrinsicCall),
}

/// A call that does not parse: bad syntax, unknown function or wrong arity.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid intrinsic function call '{text}': {message}")]
pub struct IntrinsicSyntaxError {
    /// The call as written.
    pub text: String,
    /// What is wrong, for a person.
    pub message: String,
}

/// A call that failed at run time: reported as `States.IntrinsicFailure`
/// with this message as the cause.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct IntrinsicFailure {
    /// The cause, for a person.
    pub message: String,
}

impl IntrinsicCall {
    /// True when `text` is meant as an intrinsic call (starts with `States.`).
    pub fn looks_like_call(text: &str) -> bool {
        text.trim_start().starts_with("States.")
    }

    /// Parses a call such as `States.Format('Hello, {}', $.name)`.
    pub fn parse(text: &str) -> Result<IntrinsicCall, IntrinsicSyntaxError> {
        todo!("{text}")
    }

    /// Evaluates the call.
    pub fn eval(
        &self,
        input: &Value,
        env: &dyn Env,
        rng: &mut dyn RandomSource,
    ) -> Result<Value, IntrinsicFailure> {
        todo!("{input}{}{}", env.context(), rng.next_u64())
    }
}
