//! The 18 intrinsic functions of ASL (`States.Format`, `States.Array`, ...).
//!
//! [`IntrinsicCall::parse`] checks syntax, function names and arity when a
//! definition is validated; [`IntrinsicCall::eval`] runs a call against the
//! input, the context object and variables. Randomness (`States.UUID`,
//! `States.MathRandom` without a seed) comes from a [`RandomSource`] so that
//! evaluation is deterministic.
//!
//! The behaviour follows AWS Step Functions (JSONPath mode), including a few
//! places where AWS differs from the letter of states-language.net; each such
//! place is commented where it is implemented (see `eval.rs`).

use serde_json::Value;

use crate::path::{Env, ReadPath};
use crate::rand::RandomSource;

mod eval;
mod parser;
#[cfg(test)]
mod tests;

/// A parsed intrinsic function call.
#[derive(Debug, Clone)]
pub struct IntrinsicCall {
    /// The function.
    pub function: Function,
    /// The arguments, in order.
    pub args: Vec<Arg>,
    /// For `States.Format` with a literal template: the template split into
    /// text and `{}` placeholders, keeping escaped braces (`\{`, `\}`) as
    /// text. `None` for every other call.
    format_template: Option<Vec<TemplatePiece>>,
}

/// A piece of a literal `States.Format` template.
#[derive(Debug, Clone, PartialEq)]
enum TemplatePiece {
    /// Literal text (escapes already applied).
    Text(String),
    /// An unescaped `{}`.
    Placeholder,
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

impl Function {
    /// Every intrinsic function, in the order of the AWS documentation.
    pub const ALL: [Function; 18] = [
        Function::Format,
        Function::StringToJson,
        Function::JsonToString,
        Function::Array,
        Function::ArrayPartition,
        Function::ArrayContains,
        Function::ArrayRange,
        Function::ArrayGetItem,
        Function::ArrayLength,
        Function::ArrayUnique,
        Function::Base64Encode,
        Function::Base64Decode,
        Function::Hash,
        Function::JsonMerge,
        Function::MathRandom,
        Function::MathAdd,
        Function::StringSplit,
        Function::Uuid,
    ];

    /// The name as written in ASL: `"States.Format"`, `"States.UUID"`, ...
    pub fn name(&self) -> &'static str {
        match self {
            Function::Format => "States.Format",
            Function::StringToJson => "States.StringToJson",
            Function::JsonToString => "States.JsonToString",
            Function::Array => "States.Array",
            Function::ArrayPartition => "States.ArrayPartition",
            Function::ArrayContains => "States.ArrayContains",
            Function::ArrayRange => "States.ArrayRange",
            Function::ArrayGetItem => "States.ArrayGetItem",
            Function::ArrayLength => "States.ArrayLength",
            Function::ArrayUnique => "States.ArrayUnique",
            Function::Base64Encode => "States.Base64Encode",
            Function::Base64Decode => "States.Base64Decode",
            Function::Hash => "States.Hash",
            Function::JsonMerge => "States.JsonMerge",
            Function::MathRandom => "States.MathRandom",
            Function::MathAdd => "States.MathAdd",
            Function::StringSplit => "States.StringSplit",
            Function::Uuid => "States.UUID",
        }
    }

    /// The function with this exact (case-sensitive) name, as AWS matches
    /// names: `"States.Format"` gives [`Function::Format`].
    pub fn from_name(name: &str) -> Option<Function> {
        Function::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The number of arguments accepted: `(minimum, maximum)`, where a
    /// maximum of `None` means "any number".
    pub fn arity(&self) -> (usize, Option<usize>) {
        match self {
            Function::Format => (1, None),
            Function::Array => (0, None),
            Function::MathRandom => (2, Some(3)),
            Function::Uuid => (0, Some(0)),
            Function::JsonMerge | Function::ArrayRange => (3, Some(3)),
            Function::Hash
            | Function::ArrayPartition
            | Function::ArrayContains
            | Function::ArrayGetItem
            | Function::MathAdd
            | Function::StringSplit => (2, Some(2)),
            Function::StringToJson
            | Function::JsonToString
            | Function::ArrayLength
            | Function::ArrayUnique
            | Function::Base64Encode
            | Function::Base64Decode => (1, Some(1)),
        }
    }
}

impl std::fmt::Display for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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
    ///
    /// Checks the syntax (string literals and their escapes, numbers,
    /// `true`/`false`/`null`, paths, nested calls up to 10 deep), the
    /// function names, the number of arguments, and the literal arguments
    /// whose value is known to be wrong before the call runs (a
    /// `States.Format` template whose `{}` count differs from the number of
    /// values, an unknown `States.Hash` algorithm, a `States.JsonMerge` deep
    /// merge flag other than `false`).
    pub fn parse(text: &str) -> Result<IntrinsicCall, IntrinsicSyntaxError> {
        parser::parse(text)
    }

    /// Evaluates the call.
    ///
    /// Paths are resolved against `input` (`$`) and `env` (`$$` and
    /// variables); a path that selects nothing, an argument of the wrong type
    /// or out of range gives an [`IntrinsicFailure`].
    pub fn eval(
        &self,
        input: &Value,
        env: &dyn Env,
        rng: &mut dyn RandomSource,
    ) -> Result<Value, IntrinsicFailure> {
        eval::eval(self, input, env, rng)
    }
}
