//! JSONPath in ASL: paths that read ([`ReadPath`]) and reference paths that
//! write ([`ReferencePath`], for `ResultPath`).
//!
//! A read path starts at one of three roots:
//! - `$` — the state's input (or whatever value the caller evaluates against),
//! - `$$` — the context object (`$$.Execution.Id`, `$$.Map.Item.Value`, ...),
//! - `$name` — a workflow variable set by `Assign` (`$orderId.total`).
//!
//! Simple definite paths (`$.a.b[0]`, `$['x y']`) are walked directly for
//! speed; everything else (wildcards, filters, `..`, slices, unions) goes to
//! `serde_json_path` (RFC 9535). A definite path selects at most one node; an
//! indefinite one selects a list, returned as a JSON array.

use std::borrow::Cow;

use serde_json::Value;

/// Where a [`ReadPath`] starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRoot {
    /// `$`: the value being processed (usually the state input).
    Input,
    /// `$$`: the context object.
    Context,
    /// `$name`: a workflow variable.
    Variable(String),
}

/// What a path is evaluated against besides the input.
pub trait Env {
    /// The context object (`$$`). Implementations may build it lazily.
    fn context(&self) -> &Value;
    /// A workflow variable, if it is set.
    fn variable(&self, name: &str) -> Option<&Value>;
}

/// A path that did not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid path '{path}': {message}")]
pub struct PathSyntaxError {
    /// The path text.
    pub path: String,
    /// What is wrong, for a person.
    pub message: String,
}

/// A valid path that selected nothing, or whose variable is not set.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct PathMiss {
    /// The path text.
    pub path: String,
    /// What went wrong, for a person (AWS-like: "The JSONPath '$.x' could not be found in the input '{...}'").
    pub message: String,
}

/// A valid path that cannot be used to write a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct PathWriteError {
    /// The path text.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

/// A JSONPath that reads a value.
#[derive(Debug, Clone)]
pub struct ReadPath {
    text: String,
}

impl ReadPath {
    /// Parses a path (`$`, `$.a`, `$$.Execution.Id`, `$var.x[0]`, `$.a[?(@.b > 1)]`, ...).
    pub fn parse(text: &str) -> Result<ReadPath, PathSyntaxError> {
        todo!("{text}")
    }

    /// The path `$`.
    pub fn identity() -> ReadPath {
        todo!()
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Where the path starts.
    pub fn root(&self) -> &PathRoot {
        todo!()
    }

    /// True when the path is exactly `$`.
    pub fn is_identity(&self) -> bool {
        todo!()
    }

    /// True when the path can select at most one node (no wildcard, filter,
    /// recursive descent, slice or union): a "reference path".
    pub fn is_definite(&self) -> bool {
        todo!()
    }

    /// Evaluates the path. `input` is the `$` root; `env` gives `$$` and
    /// variables. A definite path returns the node (borrowed when possible)
    /// or [`PathMiss`] when absent; an indefinite path returns an array of
    /// every match (possibly empty).
    pub fn resolve<'a>(
        &self,
        input: &'a Value,
        env: &'a dyn Env,
    ) -> Result<Cow<'a, Value>, PathMiss> {
        todo!("{input}{}", env.context())
    }
}

/// A reference path that writes a value: `ResultPath`. Only `$` rooted,
/// definite paths of fields and indexes (`$`, `$.a.b`, `$['a b'][0]`).
#[derive(Debug, Clone)]
pub struct ReferencePath {
    text: String,
}

impl ReferencePath {
    /// Parses a reference path.
    pub fn parse(text: &str) -> Result<ReferencePath, PathSyntaxError> {
        todo!("{text}")
    }

    /// The path `$`.
    pub fn identity() -> ReferencePath {
        todo!()
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the path is exactly `$`.
    pub fn is_identity(&self) -> bool {
        todo!()
    }

    /// Writes `value` into `target` at this path and returns the result.
    /// `$` replaces the whole target. Missing objects on the way are
    /// created; a field written through a non-object (a string, number, ...)
    /// or an index out of range is a [`PathWriteError`] (which the
    /// interpreter reports as `States.ResultPathMatchFailure`).
    pub fn write(&self, target: Value, value: Value) -> Result<Value, PathWriteError> {
        todo!("{target}{value}")
    }
}
