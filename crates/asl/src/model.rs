//! The parsed form of a state machine: a plain graph that is easy to walk.
//!
//! Every state of a [`Graph`] lives in a `Vec` and transitions are indexes
//! into it ([`StateId`]), so tools such as a saga verifier can walk the graph
//! without string lookups. Nested graphs (Parallel branches, Map item
//! processors) are [`Graph`]s of their own.
//!
//! The model is produced by [`crate::parse`]; it is only ever built from a
//! definition that validated, so the interpreter can rely on its invariants
//! (every `StateId` is in range, every non-terminal state has a transition).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::intrinsics::IntrinsicCall;
use crate::path::{ReadPath, ReferencePath};

/// A whole state machine definition.
#[derive(Debug, Clone)]
pub struct StateMachine {
    /// Top-level `Comment`.
    pub comment: Option<String>,
    /// Top-level `Version` (the ASL version, "1.0" by default).
    pub version: Option<String>,
    /// Top-level `TimeoutSeconds`: the execution times out after this long.
    pub timeout_seconds: Option<u64>,
    /// The states reachable from `StartAt`.
    pub graph: Graph,
}

/// A set of states with a start state: the top level of a machine, a
/// Parallel branch or a Map item processor.
#[derive(Debug, Clone)]
pub struct Graph {
    /// The state execution starts at.
    pub start_at: StateId,
    /// All states, in definition order.
    pub states: Vec<State>,
    /// State name to index.
    pub index: HashMap<String, StateId>,
}

impl Graph {
    /// The state with this id.
    pub fn state(&self, id: StateId) -> &State {
        &self.states[id.0]
    }

    /// The id of the state named `name`, if there is one.
    pub fn lookup(&self, name: &str) -> Option<StateId> {
        self.index.get(name).copied()
    }
}

/// Index of a state inside its [`Graph`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateId(pub usize);

/// One state.
#[derive(Debug, Clone)]
pub struct State {
    /// The state's name (its key in `States`), shared so that history
    /// records and task requests can carry it without copying.
    pub name: Arc<str>,
    /// `Comment`.
    pub comment: Option<String>,
    /// `InputPath`: `Some` selects part of the input (default `$`); `None`
    /// means `"InputPath": null`, which makes the effective input `{}`.
    pub input_path: Option<ReadPath>,
    /// `OutputPath`: `Some` selects part of the output (default `$`); `None`
    /// means `"OutputPath": null`, which makes the output `{}`.
    pub output_path: Option<ReadPath>,
    /// `Assign` (workflow variables), evaluated when the state completes.
    pub assign: Option<Template>,
    /// What happens after this state (unused for Choice, Succeed and Fail).
    pub transition: Transition,
    /// The type-specific part.
    pub kind: StateKind,
}

/// Where a state goes when it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// `Next`.
    Next(StateId),
    /// `"End": true`.
    End,
    /// The state type decides (Choice) or ends the graph (Succeed, Fail).
    None,
}

/// The type-specific part of a state.
#[derive(Debug, Clone)]
pub enum StateKind {
    /// `"Type": "Pass"`.
    Pass(Pass),
    /// `"Type": "Task"`.
    Task(Task),
    /// `"Type": "Choice"`.
    Choice(Choice),
    /// `"Type": "Wait"`.
    Wait(Wait),
    /// `"Type": "Succeed"`.
    Succeed,
    /// `"Type": "Fail"`.
    Fail(Fail),
    /// `"Type": "Parallel"`.
    Parallel(Parallel),
    /// `"Type": "Map"`.
    Map(Map),
}

impl StateKind {
    /// The state's type.
    pub fn state_type(&self) -> StateType {
        match self {
            StateKind::Pass(_) => StateType::Pass,
            StateKind::Task(_) => StateType::Task,
            StateKind::Choice(_) => StateType::Choice,
            StateKind::Wait(_) => StateType::Wait,
            StateKind::Succeed => StateType::Succeed,
            StateKind::Fail(_) => StateType::Fail,
            StateKind::Parallel(_) => StateType::Parallel,
            StateKind::Map(_) => StateType::Map,
        }
    }

    /// The ASL `Type` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            StateKind::Pass(_) => "Pass",
            StateKind::Task(_) => "Task",
            StateKind::Choice(_) => "Choice",
            StateKind::Wait(_) => "Wait",
            StateKind::Succeed => "Succeed",
            StateKind::Fail(_) => "Fail",
            StateKind::Parallel(_) => "Parallel",
            StateKind::Map(_) => "Map",
        }
    }
}

/// The `Type` of a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[allow(missing_docs)]
pub enum StateType {
    Pass,
    Task,
    Choice,
    Wait,
    Succeed,
    Fail,
    Parallel,
    Map,
}

/// `ResultPath`: where a state's result goes in its raw input.
#[derive(Debug, Clone)]
pub enum ResultPath {
    /// `"ResultPath": null`: the result is discarded, the output is the input.
    Discard,
    /// A reference path (`$` by default: the result replaces the input).
    Path(ReferencePath),
}

/// A payload template: `Parameters`, `ItemSelector`, `ResultSelector`,
/// `Assign`, `BatchInput`. Keys ending in `.$` are evaluated.
#[derive(Debug, Clone)]
pub enum Template {
    /// A JSON value with nothing to evaluate inside.
    Literal(Value),
    /// An object with at least one evaluated field somewhere below it.
    Object(Vec<(String, TemplateField)>),
    /// An array with at least one evaluated field somewhere below it.
    Array(Vec<Template>),
}

/// One field of a [`Template::Object`].
#[derive(Debug, Clone)]
pub enum TemplateField {
    /// A plain field (its value may itself contain evaluated fields).
    Template(Template),
    /// A `key.$` field (the key is stored without `.$`).
    Expr(Expr),
}

/// Something evaluated against the input, the context object or variables.
#[derive(Debug, Clone)]
pub enum Expr {
    /// A path: `$.x`, `$$.Execution.Id`, `$var.x`.
    Path(ReadPath),
    /// An intrinsic function call: `States.Format('{}', $.x)`.
    Intrinsic(IntrinsicCall),
}

/// `"Type": "Pass"`.
#[derive(Debug, Clone)]
pub struct Pass {
    /// `Result`: a fixed result.
    pub result: Option<Value>,
    /// `Parameters`.
    pub parameters: Option<Template>,
    /// `ResultPath`.
    pub result_path: ResultPath,
}

/// A number of seconds, fixed or read from the input.
#[derive(Debug, Clone)]
pub enum Seconds {
    /// A literal number of seconds.
    Fixed(u64),
    /// A path to a positive integer in the effective input.
    Path(ReadPath),
}

/// `"Type": "Task"`.
#[derive(Debug, Clone)]
pub struct Task {
    /// `Resource`, verbatim.
    pub resource: Arc<str>,
    /// `Parameters`.
    pub parameters: Option<Template>,
    /// `ResultSelector`.
    pub result_selector: Option<Template>,
    /// `ResultPath`.
    pub result_path: ResultPath,
    /// `TimeoutSeconds` / `TimeoutSecondsPath` (AWS's default is 99999999).
    pub timeout: Option<Seconds>,
    /// `HeartbeatSeconds` / `HeartbeatSecondsPath`.
    pub heartbeat: Option<Seconds>,
    /// `Credentials`, kept verbatim (passed to the runtime).
    pub credentials: Option<Value>,
    /// `Retry`.
    pub retry: Vec<Retrier>,
    /// `Catch`.
    pub catch: Vec<Catcher>,
}

/// `JitterStrategy` of a retrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// No jitter (the default).
    None,
    /// A random delay between 0 and the computed delay.
    Full,
}

/// One element of `Retry`.
#[derive(Debug, Clone)]
pub struct Retrier {
    /// `ErrorEquals`.
    pub error_equals: Vec<String>,
    /// `IntervalSeconds` (default 1).
    pub interval_seconds: u64,
    /// `MaxAttempts` (default 3; 0 means never retry).
    pub max_attempts: u32,
    /// `BackoffRate` (default 2.0).
    pub backoff_rate: f64,
    /// `MaxDelaySeconds`.
    pub max_delay_seconds: Option<u64>,
    /// `JitterStrategy`.
    pub jitter: Jitter,
}

/// One element of `Catch`.
#[derive(Debug, Clone)]
pub struct Catcher {
    /// `ErrorEquals`.
    pub error_equals: Vec<String>,
    /// `Next`.
    pub next: StateId,
    /// `ResultPath` for the error object (`$` by default).
    pub result_path: ResultPath,
    /// `Assign`, evaluated with `$` bound to the error object.
    pub assign: Option<Template>,
}

/// `"Type": "Choice"`.
#[derive(Debug, Clone)]
pub struct Choice {
    /// `Choices`, in order.
    pub choices: Vec<ChoiceRule>,
    /// `Default`.
    pub default: Option<StateId>,
}

/// A top-level choice rule: a condition and where to go when it holds.
#[derive(Debug, Clone)]
pub struct ChoiceRule {
    /// The condition.
    pub condition: Condition,
    /// `Next`.
    pub next: StateId,
    /// `Assign` of this rule.
    pub assign: Option<Template>,
}

/// A boolean condition of a Choice rule.
#[derive(Debug, Clone)]
pub enum Condition {
    /// `And`: every condition holds (non-empty).
    And(Vec<Condition>),
    /// `Or`: some condition holds (non-empty).
    Or(Vec<Condition>),
    /// `Not`.
    Not(Box<Condition>),
    /// A comparison of `Variable` with an operand.
    Compare(Comparison),
}

/// `Variable` compared with an operand by an operator.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// `Variable`.
    pub variable: ReadPath,
    /// The operator.
    pub operator: Operator,
    /// The operand: a literal, or a path for the `...Path` forms.
    pub operand: Operand,
}

/// The right-hand side of a comparison.
#[derive(Debug, Clone)]
pub enum Operand {
    /// A literal (a string, number, boolean or, for `StringMatches`, a pattern).
    Literal(Value),
    /// The `...Path` form: a path into the input/context/variables.
    Path(ReadPath),
}

/// The comparison operators of Choice rules. The `...Path` twins share the
/// operator and use [`Operand::Path`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Operator {
    StringEquals,
    StringLessThan,
    StringGreaterThan,
    StringLessThanEquals,
    StringGreaterThanEquals,
    StringMatches,
    NumericEquals,
    NumericLessThan,
    NumericGreaterThan,
    NumericLessThanEquals,
    NumericGreaterThanEquals,
    BooleanEquals,
    TimestampEquals,
    TimestampLessThan,
    TimestampGreaterThan,
    TimestampLessThanEquals,
    TimestampGreaterThanEquals,
    IsNull,
    IsPresent,
    IsNumeric,
    IsString,
    IsBoolean,
    IsTimestamp,
}

impl Operator {
    /// Every operator, in the order above.
    pub const ALL: [Operator; 23] = [
        Operator::StringEquals,
        Operator::StringLessThan,
        Operator::StringGreaterThan,
        Operator::StringLessThanEquals,
        Operator::StringGreaterThanEquals,
        Operator::StringMatches,
        Operator::NumericEquals,
        Operator::NumericLessThan,
        Operator::NumericGreaterThan,
        Operator::NumericLessThanEquals,
        Operator::NumericGreaterThanEquals,
        Operator::BooleanEquals,
        Operator::TimestampEquals,
        Operator::TimestampLessThan,
        Operator::TimestampGreaterThan,
        Operator::TimestampLessThanEquals,
        Operator::TimestampGreaterThanEquals,
        Operator::IsNull,
        Operator::IsPresent,
        Operator::IsNumeric,
        Operator::IsString,
        Operator::IsBoolean,
        Operator::IsTimestamp,
    ];

    /// The field name of the operator (`"StringEquals"`).
    pub fn name(self) -> &'static str {
        match self {
            Operator::StringEquals => "StringEquals",
            Operator::StringLessThan => "StringLessThan",
            Operator::StringGreaterThan => "StringGreaterThan",
            Operator::StringLessThanEquals => "StringLessThanEquals",
            Operator::StringGreaterThanEquals => "StringGreaterThanEquals",
            Operator::StringMatches => "StringMatches",
            Operator::NumericEquals => "NumericEquals",
            Operator::NumericLessThan => "NumericLessThan",
            Operator::NumericGreaterThan => "NumericGreaterThan",
            Operator::NumericLessThanEquals => "NumericLessThanEquals",
            Operator::NumericGreaterThanEquals => "NumericGreaterThanEquals",
            Operator::BooleanEquals => "BooleanEquals",
            Operator::TimestampEquals => "TimestampEquals",
            Operator::TimestampLessThan => "TimestampLessThan",
            Operator::TimestampGreaterThan => "TimestampGreaterThan",
            Operator::TimestampLessThanEquals => "TimestampLessThanEquals",
            Operator::TimestampGreaterThanEquals => "TimestampGreaterThanEquals",
            Operator::IsNull => "IsNull",
            Operator::IsPresent => "IsPresent",
            Operator::IsNumeric => "IsNumeric",
            Operator::IsString => "IsString",
            Operator::IsBoolean => "IsBoolean",
            Operator::IsTimestamp => "IsTimestamp",
        }
    }

    /// True for the type tests (`IsNull` ... `IsTimestamp`), whose operand
    /// is a boolean and which have no `...Path` twin.
    pub fn is_type_test(self) -> bool {
        matches!(
            self,
            Operator::IsNull
                | Operator::IsPresent
                | Operator::IsNumeric
                | Operator::IsString
                | Operator::IsBoolean
                | Operator::IsTimestamp
        )
    }

    /// Parses a field name: `"NumericEquals"` is `(NumericEquals, false)`,
    /// `"NumericEqualsPath"` is `(NumericEquals, true)`. `StringMatches` and
    /// the type tests have no `...Path` twin.
    pub fn from_field(field: &str) -> Option<(Operator, bool)> {
        if let Some(op) = Operator::ALL.iter().find(|op| op.name() == field) {
            return Some((*op, false));
        }
        let base = field.strip_suffix("Path")?;
        Operator::ALL
            .iter()
            .find(|op| op.name() == base && !op.is_type_test() && **op != Operator::StringMatches)
            .map(|op| (*op, true))
    }
}

/// `"Type": "Wait"`.
#[derive(Debug, Clone)]
pub enum Wait {
    /// `Seconds`.
    Seconds(u64),
    /// `Timestamp` (RFC 3339).
    Timestamp(jiff::Timestamp),
    /// `SecondsPath`.
    SecondsPath(ReadPath),
    /// `TimestampPath`.
    TimestampPath(ReadPath),
}

/// A Fail state's `Error` or `Cause`.
#[derive(Debug, Clone)]
pub enum FailField {
    /// `Error` / `Cause`: a literal string.
    Literal(String),
    /// `ErrorPath` / `CausePath`: a path or an intrinsic function.
    Expr(Expr),
}

/// `"Type": "Fail"`.
#[derive(Debug, Clone)]
pub struct Fail {
    /// `Error` or `ErrorPath`.
    pub error: Option<FailField>,
    /// `Cause` or `CausePath`.
    pub cause: Option<FailField>,
}

/// `"Type": "Parallel"`.
#[derive(Debug, Clone)]
pub struct Parallel {
    /// `Branches`, each a graph of its own.
    pub branches: Vec<Graph>,
    /// `Parameters`.
    pub parameters: Option<Template>,
    /// `ResultSelector`.
    pub result_selector: Option<Template>,
    /// `ResultPath`.
    pub result_path: ResultPath,
    /// `Retry`.
    pub retry: Vec<Retrier>,
    /// `Catch`.
    pub catch: Vec<Catcher>,
}

/// A count that is fixed or read from the input.
#[derive(Debug, Clone)]
pub enum Count {
    /// A literal.
    Fixed(u64),
    /// A path (`...Path` form).
    Path(ReadPath),
}

/// A percentage that is fixed or read from the input.
#[derive(Debug, Clone)]
pub enum Percentage {
    /// A literal between 0 and 100.
    Fixed(f64),
    /// A path (`...Path` form).
    Path(ReadPath),
}

/// `ItemBatcher` of a Map state.
#[derive(Debug, Clone)]
pub struct ItemBatcher {
    /// `MaxItemsPerBatch` / `MaxItemsPerBatchPath`.
    pub max_items_per_batch: Option<Count>,
    /// `MaxInputBytesPerBatch` / `MaxInputBytesPerBatchPath`.
    pub max_input_bytes_per_batch: Option<Count>,
    /// `BatchInput`.
    pub batch_input: Option<Template>,
}

/// `"Type": "Map"`.
#[derive(Debug, Clone)]
pub struct Map {
    /// `ItemProcessor` (or legacy `Iterator`).
    pub processor: Graph,
    /// `ItemsPath` (default `$`).
    pub items_path: ReadPath,
    /// `ItemSelector` (or legacy `Parameters`).
    pub item_selector: Option<Template>,
    /// `ItemBatcher`.
    pub item_batcher: Option<ItemBatcher>,
    /// `MaxConcurrency` / `MaxConcurrencyPath` (0 or absent: no limit).
    pub max_concurrency: Option<Count>,
    /// `ToleratedFailureCount` / `ToleratedFailureCountPath`.
    pub tolerated_failure_count: Option<Count>,
    /// `ToleratedFailurePercentage` / `ToleratedFailurePercentagePath`.
    pub tolerated_failure_percentage: Option<Percentage>,
    /// `ResultSelector`.
    pub result_selector: Option<Template>,
    /// `ResultPath`.
    pub result_path: ResultPath,
    /// `Retry`.
    pub retry: Vec<Retrier>,
    /// `Catch`.
    pub catch: Vec<Catcher>,
    /// `Label` (Distributed mode), kept for display.
    pub label: Option<String>,
    /// `ItemProcessor.ProcessorConfig.Mode` is `DISTRIBUTED`. Both modes run
    /// inline here; an inline Map runs at most [`INLINE_MAP_CONCURRENCY`]
    /// iterations at a time, as on AWS.
    pub distributed: bool,
}

/// The most iterations an inline Map runs at once (AWS: "up to 40
/// concurrent iterations"), whatever its `MaxConcurrency`.
pub const INLINE_MAP_CONCURRENCY: u64 = 40;
