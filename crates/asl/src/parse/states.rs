//! One parser per state type, with the fields AWS allows for it in JSONPath
//! mode (Amazon States Language specification and AWS's state pages).

use serde_json::Value;

use super::codes;
use super::ctx::{Ctx, MAX_SECONDS, Obj};
use super::graph::{self, Targets};
use super::locate::{child, element};
use crate::choice::parse_timestamp;
use crate::errors;
use crate::model::{
    Catcher, Choice, ChoiceRule, Comparison, Condition, Count, Expr, Fail, FailField, ItemBatcher,
    Jitter, Map, Operand, Operator, Parallel, Pass, Percentage, Retrier, Seconds, State, StateKind,
    Task, Transition, Wait,
};

/// The outcome of parsing one state.
pub(super) enum Parsed {
    /// A state of a known type: `None` when some field was invalid (reported).
    State(Option<Box<State>>),
    /// A state whose fields could not be checked (unknown `Type`, JSONata):
    /// its transitions are unknown.
    Opaque,
}

/// Fields every state type allows.
const COMMON: &[&str] = &["Type", "Comment", "QueryLanguage"];
/// The largest `MaxDelaySeconds` (366 days; AWS: "greater than 0 and less
/// than 31622401").
const MAX_DELAY_LIMIT: u64 = 31_622_400;
/// `MaxInputBytesPerBatch` upper bound (256 KiB, AWS's payload limit).
const MAX_BATCH_BYTES: u64 = 262_144;

fn allowed<'a>(specific: &[&'a str]) -> Vec<&'a str> {
    let mut all: Vec<&str> = COMMON.to_vec();
    all.extend_from_slice(specific);
    all
}

/// Parses the state `name` at pointer `p`.
pub(super) fn parse_state(
    ctx: &mut Ctx,
    name: &str,
    o: &Obj,
    p: &str,
    targets: &mut Targets<'_>,
) -> Parsed {
    let place = format!("state '{name}'");
    let type_name = match o.get("Type") {
        None => {
            ctx.missing(p, "Type", &place);
            return Parsed::Opaque;
        }
        Some(Value::String(t)) => t.as_str(),
        Some(other) => {
            ctx.wrong_type(child(p, "Type"), "Type", "a string", other);
            return Parsed::Opaque;
        }
    };
    if !graph::query_language(ctx, o, p, &place) {
        return Parsed::Opaque;
    }
    let place = format!("{type_name} state '{name}'");
    let mut s = StateParser {
        ctx,
        o,
        p,
        place,
        targets,
        ok: true,
    };
    let kind = match type_name {
        "Pass" => s.pass(),
        "Task" => s.task(),
        "Choice" => s.choice(),
        "Wait" => s.wait(),
        "Succeed" => s.succeed(),
        "Fail" => s.fail(),
        "Parallel" => s.parallel(),
        "Map" => s.map(),
        other => {
            s.ctx.err(
                child(p, "Type"),
                codes::INVALID_VALUE,
                format!(
                    "Unknown state type '{other}': expected Pass, Task, Choice, Wait, Succeed, \
                     Fail, Parallel or Map"
                ),
            );
            return Parsed::Opaque;
        }
    };
    // Checked whatever else failed: every problem is reported.
    let comment = s.ctx.opt_str(o, p, "Comment").map(str::to_string);
    let comment_bad = o.contains_key("Comment") && comment.is_none();
    Parsed::State(
        kind.and_then(|(kind, transition, assign, input_path, output_path)| {
            if !s.ok || comment_bad {
                return None;
            }
            Some(Box::new(State {
                name: name.into(),
                comment,
                input_path,
                output_path,
                assign,
                transition,
                kind,
            }))
        }),
    )
}

/// The parts of a [`State`] around its kind.
type Parts = (
    StateKind,
    Transition,
    Option<crate::model::Template>,
    Option<crate::path::ReadPath>,
    Option<crate::path::ReadPath>,
);

struct StateParser<'c, 'o, 't, 'g> {
    ctx: &'c mut Ctx,
    o: &'o Obj,
    p: &'o str,
    place: String,
    targets: &'t mut Targets<'g>,
    /// False once a field could not be turned into the model (reported).
    ok: bool,
}

impl StateParser<'_, '_, '_, '_> {
    /// Keeps the value of a field reader, remembering a failure.
    fn keep<T>(&mut self, result: Result<T, ()>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(()) => {
                self.ok = false;
                None
            }
        }
    }

    fn fields(&mut self, specific: &[&str]) {
        let all = allowed(specific);
        self.ctx.unknown_fields(self.o, self.p, &all, &self.place);
    }

    fn io_paths(&mut self) -> (Option<crate::path::ReadPath>, Option<crate::path::ReadPath>) {
        let input = self.ctx.io_path(self.o, self.p, "InputPath");
        let input = self.keep(input).flatten();
        let output = self.ctx.io_path(self.o, self.p, "OutputPath");
        let output = self.keep(output).flatten();
        (input, output)
    }

    fn assign(&mut self) -> Option<crate::model::Template> {
        let assign = self.ctx.opt_assign(self.o, self.p);
        self.keep(assign).flatten()
    }

    fn result_path(&mut self) -> crate::model::ResultPath {
        let rp = self.ctx.result_path(self.o, self.p);
        self.keep(rp).unwrap_or(crate::model::ResultPath::Discard)
    }

    fn template(&mut self, key: &str) -> Option<crate::model::Template> {
        let t = self.ctx.opt_template(self.o, self.p, key);
        self.keep(t).flatten()
    }

    /// `Next` or `"End": true`, exactly one of them.
    fn next_or_end(&mut self) -> Transition {
        let (o, p) = (self.o, self.p);
        let next = match o.get("Next") {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => {
                self.ctx
                    .wrong_type(child(p, "Next"), "Next", "a string", other);
                self.ok = false;
                self.targets.lost = true;
                return Transition::End;
            }
        };
        let end = match o.get("End") {
            None => None,
            Some(Value::Bool(true)) => Some(true),
            Some(Value::Bool(false)) => {
                self.ctx.err(
                    child(p, "End"),
                    codes::INVALID_VALUE,
                    "'End' must be true (omit it and use 'Next' instead)",
                );
                self.ok = false;
                Some(false)
            }
            Some(other) => {
                self.ctx
                    .wrong_type(child(p, "End"), "End", "the boolean true", other);
                self.ok = false;
                Some(false)
            }
        };
        match (next, end) {
            (Some(next), end) => {
                if end == Some(true) {
                    self.ctx.err(
                        child(p, "End"),
                        codes::CONFLICTING_FIELDS,
                        format!("{} has both 'Next' and 'End'", self.place),
                    );
                    self.ok = false;
                }
                match self.targets.resolve(self.ctx, next, child(p, "Next")) {
                    Some(id) => Transition::Next(id),
                    None => {
                        self.ok = false;
                        Transition::End
                    }
                }
            }
            (None, Some(true)) => Transition::End,
            (None, Some(false)) => Transition::End,
            (None, None) => {
                self.ctx.err(
                    p.to_string(),
                    codes::MISSING_TRANSITION,
                    format!("{} must have 'Next' or '\"End\": true'", self.place),
                );
                self.ok = false;
                Transition::End
            }
        }
    }

    fn pass(&mut self) -> Option<Parts> {
        self.fields(&[
            "InputPath",
            "OutputPath",
            "Next",
            "End",
            "Result",
            "ResultPath",
            "Parameters",
            "Assign",
        ]);
        let (input, output) = self.io_paths();
        // AWS accepts both `Result` and `Parameters` on a Pass state: the
        // Parameters shape the effective input and `Result` is the result.
        let parameters = self.template("Parameters");
        let result_path = self.result_path();
        let assign = self.assign();
        let transition = self.next_or_end();
        let kind = StateKind::Pass(Pass {
            result: self.o.get("Result").cloned(),
            parameters,
            result_path,
        });
        Some((kind, transition, assign, input, output))
    }

    /// A `...Seconds` / `...SecondsPath` pair of a Task.
    fn seconds_pair(&mut self, fixed: &str, path: &str) -> Option<Seconds> {
        let (o, p) = (self.o, self.p);
        if self.ctx.exclusive(o, p, fixed, path) {
            self.ok = false;
        }
        let n = self.ctx.opt_int(o, p, fixed, 1, MAX_SECONDS);
        let n = self.keep(n).flatten();
        let path_value = self.ctx.opt_read_path(o, p, path, true);
        let path_value = self.keep(path_value).flatten();
        n.map(Seconds::Fixed).or(path_value.map(Seconds::Path))
    }

    fn task(&mut self) -> Option<Parts> {
        self.fields(&[
            "InputPath",
            "OutputPath",
            "Next",
            "End",
            "Resource",
            "Parameters",
            "ResultSelector",
            "ResultPath",
            "Retry",
            "Catch",
            "TimeoutSeconds",
            "TimeoutSecondsPath",
            "HeartbeatSeconds",
            "HeartbeatSecondsPath",
            "Credentials",
            "Assign",
        ]);
        let (o, p) = (self.o, self.p);
        let (input, output) = self.io_paths();
        let resource = match self.ctx.req_str(o, p, "Resource", &self.place) {
            Ok("") => {
                self.ctx.err(
                    child(p, "Resource"),
                    codes::INVALID_VALUE,
                    "'Resource' must not be empty",
                );
                self.ok = false;
                String::new()
            }
            Ok(r) => r.to_string(),
            Err(()) => {
                self.ok = false;
                String::new()
            }
        };
        let parameters = self.template("Parameters");
        let result_selector = self.template("ResultSelector");
        let result_path = self.result_path();
        let retry = self.retry();
        let catch = self.catch();
        let timeout = self.seconds_pair("TimeoutSeconds", "TimeoutSecondsPath");
        let heartbeat = self.seconds_pair("HeartbeatSeconds", "HeartbeatSecondsPath");
        // AWS: the heartbeat interval must be smaller than the timeout.
        if let (Some(Seconds::Fixed(t)), Some(Seconds::Fixed(h))) = (&timeout, &heartbeat)
            && h >= t
        {
            self.ctx.err(
                child(p, "HeartbeatSeconds"),
                codes::INVALID_VALUE,
                format!("'HeartbeatSeconds' ({h}) must be smaller than 'TimeoutSeconds' ({t})"),
            );
            self.ok = false;
        }
        let credentials = match o.get("Credentials") {
            None => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                self.ctx
                    .wrong_type(child(p, "Credentials"), "Credentials", "an object", other);
                self.ok = false;
                None
            }
        };
        let assign = self.assign();
        let transition = self.next_or_end();
        let kind = StateKind::Task(Task {
            resource: resource.into(),
            parameters,
            result_selector,
            result_path,
            timeout,
            heartbeat,
            credentials,
            retry,
            catch,
        });
        Some((kind, transition, assign, input, output))
    }

    fn retry(&mut self) -> Vec<Retrier> {
        let (o, p) = (self.o, self.p);
        let Some(elements) = array_of_objects(self.ctx, o, p, "Retry") else {
            self.ok = false;
            return Vec::new();
        };
        let count = elements.len();
        let mut retriers = Vec::with_capacity(count);
        for (i, (ep, element)) in elements.into_iter().enumerate() {
            let Some(element) = element else {
                self.ok = false;
                continue;
            };
            self.ctx.unknown_fields(
                element,
                &ep,
                &[
                    "ErrorEquals",
                    "IntervalSeconds",
                    "MaxAttempts",
                    "BackoffRate",
                    "MaxDelaySeconds",
                    "JitterStrategy",
                    "Comment",
                ],
                "retrier",
            );
            let errors = error_equals(self.ctx, element, &ep, "retrier", i + 1 == count);
            let interval = self
                .ctx
                .opt_int(element, &ep, "IntervalSeconds", 1, MAX_SECONDS);
            let attempts = self
                .ctx
                .opt_int(element, &ep, "MaxAttempts", 0, MAX_SECONDS);
            let max_delay = self
                .ctx
                .opt_int(element, &ep, "MaxDelaySeconds", 1, MAX_DELAY_LIMIT);
            let backoff = match element.get("BackoffRate") {
                None => Some(2.0),
                Some(v) => match v.as_f64() {
                    Some(rate) if rate >= 1.0 => Some(rate),
                    Some(rate) => {
                        self.ctx.err(
                            child(&ep, "BackoffRate"),
                            codes::INVALID_VALUE,
                            format!("'BackoffRate' must be at least 1.0, not {rate}"),
                        );
                        None
                    }
                    None => {
                        self.ctx.wrong_type(
                            child(&ep, "BackoffRate"),
                            "BackoffRate",
                            "a number",
                            v,
                        );
                        None
                    }
                },
            };
            let jitter = match self.ctx.opt_str(element, &ep, "JitterStrategy") {
                None if element.contains_key("JitterStrategy") => None,
                None | Some("NONE") => Some(Jitter::None),
                Some("FULL") => Some(Jitter::Full),
                Some(other) => {
                    self.ctx.err(
                        child(&ep, "JitterStrategy"),
                        codes::INVALID_VALUE,
                        format!("'JitterStrategy' must be 'FULL' or 'NONE', not '{other}'"),
                    );
                    None
                }
            };
            let comment_ok = comment_ok(self.ctx, element, &ep);
            match (errors, interval, attempts, max_delay, backoff, jitter) {
                (
                    Some(error_equals),
                    Ok(interval),
                    Ok(attempts),
                    Ok(max_delay_seconds),
                    Some(backoff_rate),
                    Some(jitter),
                ) if comment_ok => retriers.push(Retrier {
                    error_equals,
                    interval_seconds: interval.unwrap_or(1),
                    max_attempts: attempts.map_or(3, |a| u32::try_from(a).unwrap_or(u32::MAX)),
                    backoff_rate,
                    max_delay_seconds,
                    jitter,
                }),
                _ => self.ok = false,
            }
        }
        retriers
    }

    fn catch(&mut self) -> Vec<Catcher> {
        let (o, p) = (self.o, self.p);
        let Some(elements) = array_of_objects(self.ctx, o, p, "Catch") else {
            self.ok = false;
            self.targets.lost = true;
            return Vec::new();
        };
        let count = elements.len();
        let mut catchers = Vec::with_capacity(count);
        for (i, (ep, element)) in elements.into_iter().enumerate() {
            let Some(element) = element else {
                self.ok = false;
                self.targets.lost = true;
                continue;
            };
            self.ctx.unknown_fields(
                element,
                &ep,
                &["ErrorEquals", "Next", "ResultPath", "Assign", "Comment"],
                "catcher",
            );
            let errors = error_equals(self.ctx, element, &ep, "catcher", i + 1 == count);
            let next = self
                .ctx
                .req_str(element, &ep, "Next", "catcher")
                .ok()
                .and_then(|next| self.targets.resolve(self.ctx, next, child(&ep, "Next")));
            let result_path = self.ctx.result_path(element, &ep);
            let assign = self.ctx.opt_assign(element, &ep);
            let comment_ok = comment_ok(self.ctx, element, &ep);
            match (errors, next, result_path, assign) {
                (Some(error_equals), Some(next), Ok(result_path), Ok(assign)) if comment_ok => {
                    catchers.push(Catcher {
                        error_equals,
                        next,
                        result_path,
                        assign,
                    })
                }
                _ => self.ok = false,
            }
        }
        catchers
    }

    fn choice(&mut self) -> Option<Parts> {
        self.fields(&["InputPath", "OutputPath", "Choices", "Default", "Assign"]);
        let (o, p) = (self.o, self.p);
        let (input, output) = self.io_paths();
        let choices_pointer = child(p, "Choices");
        let mut choices = Vec::new();
        match o.get("Choices") {
            None => {
                self.ctx.missing(p, "Choices", &self.place);
                self.ok = false;
            }
            Some(Value::Array(rules)) if rules.is_empty() => {
                self.ctx.err(
                    choices_pointer.clone(),
                    codes::INVALID_VALUE,
                    "'Choices' must have at least one rule",
                );
                self.ok = false;
            }
            Some(Value::Array(rules)) => {
                for (i, rule) in rules.iter().enumerate() {
                    let rp = element(&choices_pointer, i);
                    match self.top_rule(rule, &rp) {
                        Some(rule) => choices.push(rule),
                        None => self.ok = false,
                    }
                }
            }
            Some(other) => {
                self.ctx
                    .wrong_type(choices_pointer.clone(), "Choices", "an array", other);
                self.ok = false;
                self.targets.lost = true;
            }
        }
        let default = match self.ctx.opt_str(o, p, "Default") {
            Some(name) => {
                let id = self.targets.resolve(self.ctx, name, child(p, "Default"));
                if id.is_none() {
                    self.ok = false;
                }
                id
            }
            None => {
                if o.contains_key("Default") {
                    self.ok = false;
                }
                None
            }
        };
        let assign = self.assign();
        let kind = StateKind::Choice(Choice { choices, default });
        Some((kind, Transition::None, assign, input, output))
    }

    fn top_rule(&mut self, rule: &Value, rp: &str) -> Option<ChoiceRule> {
        let Value::Object(r) = rule else {
            self.ctx
                .wrong_type(rp.to_string(), "a choice rule", "an object", rule);
            return None;
        };
        let condition = condition(self.ctx, r, rp, false);
        let next = match r.get("Next") {
            None => {
                self.ctx.err(
                    rp.to_string(),
                    codes::MISSING_TRANSITION,
                    "A top-level choice rule must have 'Next'",
                );
                None
            }
            Some(Value::String(name)) => self.targets.resolve(self.ctx, name, child(rp, "Next")),
            Some(other) => {
                self.ctx
                    .wrong_type(child(rp, "Next"), "Next", "a string", other);
                None
            }
        };
        let assign = self.ctx.opt_assign(r, rp);
        let comment_ok = comment_ok(self.ctx, r, rp);
        Some(ChoiceRule {
            condition: condition?,
            next: next?,
            assign: assign.ok()?,
        })
        .filter(|_| comment_ok)
    }

    fn wait(&mut self) -> Option<Parts> {
        self.fields(&[
            "InputPath",
            "OutputPath",
            "Next",
            "End",
            "Seconds",
            "Timestamp",
            "SecondsPath",
            "TimestampPath",
            "Assign",
        ]);
        let (o, p) = (self.o, self.p);
        let (input, output) = self.io_paths();
        let forms = ["Seconds", "Timestamp", "SecondsPath", "TimestampPath"];
        let present: Vec<&str> = forms.into_iter().filter(|f| o.contains_key(*f)).collect();
        if present.is_empty() {
            self.ctx.err(
                p.to_string(),
                codes::MISSING_FIELD,
                format!(
                    "{} needs exactly one of 'Seconds', 'Timestamp', 'SecondsPath' or \
                     'TimestampPath'",
                    self.place
                ),
            );
            self.ok = false;
        }
        if let Some((first, extras)) = present.split_first() {
            for extra in extras {
                self.ctx.err(
                    child(p, extra),
                    codes::CONFLICTING_FIELDS,
                    format!("'{extra}' cannot be used together with '{first}'"),
                );
                self.ok = false;
            }
        }
        let seconds = self.ctx.opt_int(o, p, "Seconds", 0, MAX_SECONDS);
        let seconds = self.keep(seconds).flatten().map(Wait::Seconds);
        let timestamp = match self.ctx.opt_str(o, p, "Timestamp") {
            Some(text) => match parse_timestamp(text) {
                Some(ts) => Some(Wait::Timestamp(ts)),
                None => {
                    self.ctx.err(
                        child(p, "Timestamp"),
                        codes::INVALID_VALUE,
                        format!(
                            "'{text}' is not an RFC 3339 timestamp with an uppercase 'T' and \
                             a 'Z' or numeric offset (e.g. 2016-03-14T01:59:00Z)"
                        ),
                    );
                    self.ok = false;
                    None
                }
            },
            None => {
                if o.contains_key("Timestamp") {
                    self.ok = false;
                }
                None
            }
        };
        let seconds_path = self.ctx.opt_read_path(o, p, "SecondsPath", true);
        let seconds_path = self.keep(seconds_path).flatten().map(Wait::SecondsPath);
        let timestamp_path = self.ctx.opt_read_path(o, p, "TimestampPath", true);
        let timestamp_path = self.keep(timestamp_path).flatten().map(Wait::TimestampPath);
        let assign = self.assign();
        let transition = self.next_or_end();
        let wait = seconds.or(timestamp).or(seconds_path).or(timestamp_path)?;
        Some((StateKind::Wait(wait), transition, assign, input, output))
    }

    fn succeed(&mut self) -> Option<Parts> {
        self.fields(&["InputPath", "OutputPath"]);
        let (input, output) = self.io_paths();
        Some((StateKind::Succeed, Transition::None, None, input, output))
    }

    /// `Error`/`ErrorPath` or `Cause`/`CausePath` of a Fail state.
    fn fail_field(&mut self, literal: &str, path: &str) -> Option<FailField> {
        let (o, p) = (self.o, self.p);
        if self.ctx.exclusive(o, p, literal, path) {
            self.ok = false;
        }
        if let Some(text) = self.ctx.opt_str(o, p, literal) {
            return Some(FailField::Literal(text.to_string()));
        }
        if o.contains_key(literal) {
            self.ok = false;
        }
        match self.ctx.opt_str(o, p, path) {
            Some(text) => {
                // ASL: a reference path or an intrinsic function.
                let expr = self.ctx.expr(text, child(p, path));
                if let Some(Expr::Path(read)) = &expr
                    && !read.is_definite()
                {
                    self.ctx.err(
                        child(p, path),
                        codes::INVALID_PATH,
                        format!("'{text}' must be a reference path or an intrinsic function"),
                    );
                    self.ok = false;
                    return None;
                }
                if expr.is_none() {
                    self.ok = false;
                }
                expr.map(FailField::Expr)
            }
            None => {
                if o.contains_key(path) {
                    self.ok = false;
                }
                None
            }
        }
    }

    fn fail(&mut self) -> Option<Parts> {
        self.fields(&["Error", "ErrorPath", "Cause", "CausePath"]);
        let error = self.fail_field("Error", "ErrorPath");
        let cause = self.fail_field("Cause", "CausePath");
        let identity = Some(crate::path::ReadPath::identity());
        let kind = StateKind::Fail(Fail { error, cause });
        Some((kind, Transition::None, None, identity.clone(), identity))
    }

    fn parallel(&mut self) -> Option<Parts> {
        self.fields(&[
            "InputPath",
            "OutputPath",
            "Next",
            "End",
            "Branches",
            "Parameters",
            "ResultSelector",
            "ResultPath",
            "Retry",
            "Catch",
            "Assign",
        ]);
        let (o, p) = (self.o, self.p);
        let (input, output) = self.io_paths();
        let branches_pointer = child(p, "Branches");
        let mut branches = Vec::new();
        match o.get("Branches") {
            None => {
                self.ctx.missing(p, "Branches", &self.place);
                self.ok = false;
            }
            Some(Value::Array(items)) if items.is_empty() => {
                self.ctx.err(
                    branches_pointer.clone(),
                    codes::INVALID_VALUE,
                    "'Branches' must have at least one branch",
                );
                self.ok = false;
            }
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let bp = element(&branches_pointer, i);
                    let place = format!("branch {i} of {}", self.place);
                    let Value::Object(b) = item else {
                        self.ctx.wrong_type(bp, "a branch", "an object", item);
                        self.ok = false;
                        continue;
                    };
                    self.ctx
                        .unknown_fields(b, &bp, &["StartAt", "States", "Comment"], &place);
                    let comment_ok = comment_ok(self.ctx, b, &bp);
                    match graph::graph(self.ctx, b, &bp, &place) {
                        Some(g) if comment_ok => branches.push(g),
                        _ => self.ok = false,
                    }
                }
            }
            Some(other) => {
                self.ctx
                    .wrong_type(branches_pointer.clone(), "Branches", "an array", other);
                self.ok = false;
            }
        }
        let parameters = self.template("Parameters");
        let result_selector = self.template("ResultSelector");
        let result_path = self.result_path();
        let retry = self.retry();
        let catch = self.catch();
        let assign = self.assign();
        let transition = self.next_or_end();
        let kind = StateKind::Parallel(Parallel {
            branches,
            parameters,
            result_selector,
            result_path,
            retry,
            catch,
        });
        Some((kind, transition, assign, input, output))
    }

    /// A `X` / `XPath` pair of non-negative counts (Map).
    fn count_pair(&mut self, o: &Obj, p: &str, fixed: &str, min: u64, max: u64) -> Option<Count> {
        let path = format!("{fixed}Path");
        if self.ctx.exclusive(o, p, fixed, &path) {
            self.ok = false;
        }
        let n = self.ctx.opt_int(o, p, fixed, min, max);
        let n = self.keep(n).flatten();
        let path_value = self.ctx.opt_read_path(o, p, &path, true);
        let path_value = self.keep(path_value).flatten();
        n.map(Count::Fixed).or(path_value.map(Count::Path))
    }

    fn map(&mut self) -> Option<Parts> {
        self.fields(&[
            "InputPath",
            "OutputPath",
            "Next",
            "End",
            "ItemProcessor",
            "Iterator",
            "ItemsPath",
            "ItemSelector",
            "Parameters",
            "ItemBatcher",
            "MaxConcurrency",
            "MaxConcurrencyPath",
            "ToleratedFailureCount",
            "ToleratedFailureCountPath",
            "ToleratedFailurePercentage",
            "ToleratedFailurePercentagePath",
            "ResultSelector",
            "ResultPath",
            "Retry",
            "Catch",
            "Label",
            "Assign",
            "ItemReader",
            "ResultWriter",
        ]);
        let (o, p) = (self.o, self.p);
        let (input, output) = self.io_paths();
        for field in ["ItemReader", "ResultWriter"] {
            if o.contains_key(field) {
                self.ctx.err(
                    child(p, field),
                    codes::UNSUPPORTED_FIELD,
                    format!(
                        "'{field}' is not supported: Sagaflow has no S3; the items of a Map \
                         state must come from its input (ItemsPath) and its results go to \
                         its output"
                    ),
                );
                self.ok = false;
            }
        }
        let (processor, distributed) = self.processor();
        let items_path = self.ctx.opt_read_path(o, p, "ItemsPath", true);
        let items_path = self
            .keep(items_path)
            .flatten()
            .unwrap_or_else(crate::path::ReadPath::identity);
        if self.ctx.exclusive(o, p, "ItemSelector", "Parameters") {
            self.ok = false;
        }
        let item_selector = self.template("ItemSelector");
        let legacy_parameters = self.template("Parameters");
        let item_batcher = self.item_batcher();
        let max_concurrency = self.count_pair(o, p, "MaxConcurrency", 0, u64::MAX);
        let tolerated_failure_count = self.count_pair(o, p, "ToleratedFailureCount", 0, u64::MAX);
        let tolerated_failure_percentage = self.percentage();
        let result_selector = self.template("ResultSelector");
        let result_path = self.result_path();
        let retry = self.retry();
        let catch = self.catch();
        let label = self.ctx.opt_str(o, p, "Label").map(str::to_string);
        if o.contains_key("Label") && label.is_none() {
            self.ok = false;
        }
        let assign = self.assign();
        let transition = self.next_or_end();
        let kind = StateKind::Map(Map {
            processor: processor?,
            items_path,
            item_selector: item_selector.or(legacy_parameters),
            item_batcher,
            max_concurrency,
            tolerated_failure_count,
            tolerated_failure_percentage,
            result_selector,
            result_path,
            retry,
            catch,
            label,
            distributed,
        });
        Some((kind, transition, assign, input, output))
    }

    /// `ItemProcessor` or the legacy `Iterator`, and whether its mode is
    /// `DISTRIBUTED`.
    fn processor(&mut self) -> (Option<crate::model::Graph>, bool) {
        let mut distributed = false;
        let graph = self.processor_graph(&mut distributed);
        (graph, distributed)
    }

    fn processor_graph(&mut self, distributed: &mut bool) -> Option<crate::model::Graph> {
        let (o, p) = (self.o, self.p);
        if self.ctx.exclusive(o, p, "ItemProcessor", "Iterator") {
            self.ok = false;
            return None;
        }
        let (key, legacy) = if o.contains_key("ItemProcessor") {
            ("ItemProcessor", false)
        } else if o.contains_key("Iterator") {
            ("Iterator", true)
        } else {
            self.ctx.missing(p, "ItemProcessor", &self.place);
            self.ok = false;
            return None;
        };
        let pp = child(p, key);
        let value = o.get(key)?;
        let Value::Object(proc_obj) = value else {
            self.ctx.wrong_type(pp, key, "an object", value);
            self.ok = false;
            return None;
        };
        let place = format!("{key} of {}", self.place);
        let allowed: &[&str] = if legacy {
            &["StartAt", "States", "Comment"]
        } else {
            &["StartAt", "States", "Comment", "ProcessorConfig"]
        };
        self.ctx.unknown_fields(proc_obj, &pp, allowed, &place);
        if !comment_ok(self.ctx, proc_obj, &pp) {
            self.ok = false;
        }
        if !legacy {
            *distributed = self.processor_config(proc_obj, &pp);
        }
        let graph = graph::graph(self.ctx, proc_obj, &pp, &place);
        if graph.is_none() {
            self.ok = false;
        }
        graph
    }

    /// Checks `ProcessorConfig`; true when its `Mode` is `DISTRIBUTED`.
    fn processor_config(&mut self, proc_obj: &Obj, pp: &str) -> bool {
        let key = "ProcessorConfig";
        let Some(value) = proc_obj.get(key) else {
            return false;
        };
        let cp = child(pp, key);
        let Value::Object(config) = value else {
            self.ctx.wrong_type(cp, key, "an object", value);
            self.ok = false;
            return false;
        };
        self.ctx
            .unknown_fields(config, &cp, &["Mode", "ExecutionType"], "ProcessorConfig");
        let checks: [(&str, &[&str]); 2] = [
            ("Mode", &["INLINE", "DISTRIBUTED"]),
            ("ExecutionType", &["STANDARD", "EXPRESS"]),
        ];
        for (field, values) in checks {
            match self.ctx.opt_str(config, &cp, field) {
                Some(v) if values.contains(&v) => {}
                Some(v) => {
                    self.ctx.err(
                        child(&cp, field),
                        codes::INVALID_VALUE,
                        format!("'{field}' must be one of {}, not '{v}'", values.join(", ")),
                    );
                    self.ok = false;
                }
                None => {
                    if config.contains_key(field) {
                        self.ok = false;
                    }
                }
            }
        }
        config.get("Mode").and_then(Value::as_str) == Some("DISTRIBUTED")
    }

    fn item_batcher(&mut self) -> Option<ItemBatcher> {
        let key = "ItemBatcher";
        let value = self.o.get(key)?;
        let bp = child(self.p, key);
        let Value::Object(b) = value else {
            self.ctx.wrong_type(bp, key, "an object", value);
            self.ok = false;
            return None;
        };
        self.ctx.unknown_fields(
            b,
            &bp,
            &[
                "MaxItemsPerBatch",
                "MaxItemsPerBatchPath",
                "MaxInputBytesPerBatch",
                "MaxInputBytesPerBatchPath",
                "BatchInput",
            ],
            "ItemBatcher",
        );
        let max_items_per_batch = self.count_pair(b, &bp, "MaxItemsPerBatch", 1, u64::MAX);
        let max_input_bytes_per_batch =
            self.count_pair(b, &bp, "MaxInputBytesPerBatch", 1, MAX_BATCH_BYTES);
        let batch_input = self.ctx.opt_template(b, &bp, "BatchInput");
        let batch_input = self.keep(batch_input).flatten();
        Some(ItemBatcher {
            max_items_per_batch,
            max_input_bytes_per_batch,
            batch_input,
        })
    }

    fn percentage(&mut self) -> Option<Percentage> {
        let (o, p) = (self.o, self.p);
        let fixed = "ToleratedFailurePercentage";
        let path = "ToleratedFailurePercentagePath";
        if self.ctx.exclusive(o, p, fixed, path) {
            self.ok = false;
        }
        let n = match o.get(fixed) {
            None => None,
            Some(v) => match v.as_f64() {
                Some(n) if (0.0..=100.0).contains(&n) => Some(n),
                Some(n) => {
                    self.ctx.err(
                        child(p, fixed),
                        codes::INVALID_VALUE,
                        format!("'{fixed}' must be between 0 and 100, not {n}"),
                    );
                    self.ok = false;
                    None
                }
                None => {
                    self.ctx.wrong_type(child(p, fixed), fixed, "a number", v);
                    self.ok = false;
                    None
                }
            },
        };
        let path_value = self.ctx.opt_read_path(o, p, path, true);
        let path_value = self.keep(path_value).flatten();
        n.map(Percentage::Fixed)
            .or(path_value.map(Percentage::Path))
    }
}

/// Checks an optional `Comment` (a string). False when it is not one.
fn comment_ok(ctx: &mut Ctx, o: &Obj, p: &str) -> bool {
    ctx.opt_str(o, p, "Comment").is_some() || !o.contains_key("Comment")
}

/// An optional array of objects: `None` when the field is not an array
/// (reported); elements that are not objects are `None` (reported).
fn array_of_objects<'a>(
    ctx: &mut Ctx,
    o: &'a Obj,
    p: &str,
    key: &str,
) -> Option<Vec<(String, Option<&'a Obj>)>> {
    let pointer = child(p, key);
    match o.get(key) {
        None => Some(Vec::new()),
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let ep = element(&pointer, i);
                    match item {
                        Value::Object(obj) => (ep, Some(obj)),
                        other => {
                            ctx.wrong_type(ep.clone(), &format!("{key}[{i}]"), "an object", other);
                            (ep, None)
                        }
                    }
                })
                .collect(),
        ),
        Some(other) => {
            ctx.wrong_type(pointer, key, "an array", other);
            None
        }
    }
}

/// `ErrorEquals` of a retrier or catcher at `ep`: a non-empty array of
/// strings; `States.ALL` alone and only in the last retrier/catcher.
fn error_equals(ctx: &mut Ctx, o: &Obj, ep: &str, place: &str, last: bool) -> Option<Vec<String>> {
    let key = "ErrorEquals";
    let pointer = child(ep, key);
    let items = match o.get(key) {
        None => {
            ctx.missing(ep, key, place);
            return None;
        }
        Some(Value::Array(items)) if items.is_empty() => {
            ctx.err(
                pointer,
                codes::INVALID_VALUE,
                "'ErrorEquals' must not be empty",
            );
            return None;
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            ctx.wrong_type(pointer, key, "an array of strings", other);
            return None;
        }
    };
    let mut names = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(s) => names.push(s.clone()),
            other => {
                ctx.wrong_type(element(&pointer, i), "an error name", "a string", other);
                ok = false;
            }
        }
    }
    if names.iter().any(|n| n == errors::ALL) {
        if items.len() > 1 {
            ctx.err(
                pointer,
                codes::STATES_ALL_NOT_ALONE,
                format!(
                    "'{}' must be the only error name in its 'ErrorEquals'",
                    errors::ALL
                ),
            );
            ok = false;
        }
        if !last {
            ctx.err(
                ep.to_string(),
                codes::STATES_ALL_NOT_LAST,
                format!("A {place} with '{}' must be the last one", errors::ALL),
            );
            ok = false;
        }
    }
    ok.then_some(names)
}

/// A choice rule's condition (`nested`: inside `And`/`Or`/`Not`, where
/// `Next` and `Assign` are not allowed).
fn condition(ctx: &mut Ctx, r: &Obj, rp: &str, nested: bool) -> Option<Condition> {
    let mut operators: Vec<&str> = Vec::new();
    let mut ok = true;
    for key in r.keys() {
        match key.as_str() {
            "And" | "Or" | "Not" => operators.push(key),
            "Variable" | "Comment" => {}
            "Next" | "Assign" if !nested => {}
            "Next" | "Assign" => {
                ctx.err(
                    child(rp, key),
                    codes::INVALID_CHOICE_RULE,
                    format!("'{key}' is only allowed in a top-level choice rule"),
                );
                ok = false;
            }
            other if Operator::from_field(other).is_some() => operators.push(key),
            other => {
                ctx.err(
                    child(rp, other),
                    codes::UNKNOWN_FIELD,
                    format!("The field '{other}' is not supported by Step Functions (choice rule)"),
                );
                ok = false;
            }
        }
    }
    if !comment_ok(ctx, r, rp) {
        ok = false;
    }
    let Some(&operator) = operators.first() else {
        ctx.err(
            rp.to_string(),
            codes::INVALID_CHOICE_RULE,
            "A choice rule needs exactly one comparison operator (e.g. 'StringEquals'), or \
             'And', 'Or' or 'Not'",
        );
        return None;
    };
    for extra in operators.iter().skip(1) {
        ctx.err(
            child(rp, extra),
            codes::CONFLICTING_FIELDS,
            format!("A choice rule has exactly one operator: '{extra}' comes with '{operator}'"),
        );
        ok = false;
    }
    let op_pointer = child(rp, operator);
    let value = r.get(operator)?;
    let condition = match operator {
        "And" | "Or" | "Not" => {
            if r.contains_key("Variable") {
                ctx.err(
                    child(rp, "Variable"),
                    codes::INVALID_CHOICE_RULE,
                    format!("'Variable' cannot be used with '{operator}'"),
                );
                ok = false;
            }
            if operator == "Not" {
                match value {
                    Value::Object(inner) => condition(ctx, inner, &op_pointer, true)
                        .map(|c| Condition::Not(Box::new(c))),
                    other => {
                        ctx.wrong_type(op_pointer, "Not", "an object (a choice rule)", other);
                        None
                    }
                }
            } else {
                boolean_list(ctx, value, &op_pointer, operator).map(|list| {
                    if operator == "And" {
                        Condition::And(list)
                    } else {
                        Condition::Or(list)
                    }
                })
            }
        }
        field => comparison(ctx, r, rp, field, value).map(Condition::Compare),
    };
    condition.filter(|_| ok)
}

/// The rules of `And` / `Or`: a non-empty array of nested rules.
fn boolean_list(ctx: &mut Ctx, value: &Value, pointer: &str, op: &str) -> Option<Vec<Condition>> {
    let Value::Array(items) = value else {
        ctx.wrong_type(pointer.to_string(), op, "an array of choice rules", value);
        return None;
    };
    if items.is_empty() {
        ctx.err(
            pointer.to_string(),
            codes::INVALID_VALUE,
            format!("'{op}' must have at least one rule"),
        );
        return None;
    }
    let mut list = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let ip = element(pointer, i);
        match item {
            Value::Object(inner) => match condition(ctx, inner, &ip, true) {
                Some(c) => list.push(c),
                None => ok = false,
            },
            other => {
                ctx.wrong_type(ip, "a choice rule", "an object", other);
                ok = false;
            }
        }
    }
    ok.then_some(list)
}

/// A comparison rule: `Variable` and one operator with its operand.
fn comparison(ctx: &mut Ctx, r: &Obj, rp: &str, field: &str, value: &Value) -> Option<Comparison> {
    let (operator, is_path) = Operator::from_field(field)?;
    let op_pointer = child(rp, field);
    let variable = match r.get("Variable") {
        None => {
            ctx.missing(rp, "Variable", "choice rule");
            None
        }
        Some(Value::String(text)) => ctx.read_path(text, child(rp, "Variable"), false),
        Some(other) => {
            ctx.wrong_type(
                child(rp, "Variable"),
                "Variable",
                "a string (a path)",
                other,
            );
            None
        }
    };
    let operand = if is_path {
        match value {
            Value::String(text) => ctx.read_path(text, op_pointer, false).map(Operand::Path),
            other => {
                ctx.wrong_type(op_pointer, field, "a string (a path)", other);
                None
            }
        }
    } else {
        literal_operand(ctx, operator, field, value, op_pointer).map(Operand::Literal)
    };
    Some(Comparison {
        variable: variable?,
        operator,
        operand: operand?,
    })
}

/// Checks the literal operand of a comparison against its operator.
fn literal_operand(
    ctx: &mut Ctx,
    operator: Operator,
    field: &str,
    value: &Value,
    pointer: String,
) -> Option<Value> {
    use Operator as O;
    let expected = match operator {
        O::StringEquals
        | O::StringLessThan
        | O::StringGreaterThan
        | O::StringLessThanEquals
        | O::StringGreaterThanEquals
        | O::StringMatches => value.is_string().then_some(()).ok_or("a string"),
        O::NumericEquals
        | O::NumericLessThan
        | O::NumericGreaterThan
        | O::NumericLessThanEquals
        | O::NumericGreaterThanEquals => value.is_number().then_some(()).ok_or("a number"),
        O::BooleanEquals
        | O::IsNull
        | O::IsPresent
        | O::IsNumeric
        | O::IsString
        | O::IsBoolean
        | O::IsTimestamp => value.is_boolean().then_some(()).ok_or("a boolean"),
        O::TimestampEquals
        | O::TimestampLessThan
        | O::TimestampGreaterThan
        | O::TimestampLessThanEquals
        | O::TimestampGreaterThanEquals => match value {
            Value::String(text) => {
                if parse_timestamp(text).is_none() {
                    ctx.err(
                        pointer,
                        codes::INVALID_VALUE,
                        format!(
                            "'{text}' is not an RFC 3339 timestamp with an uppercase 'T' and a \
                             'Z' or numeric offset (e.g. 2016-03-14T01:59:00Z)"
                        ),
                    );
                    return None;
                }
                Ok(())
            }
            _ => Err("a timestamp string"),
        },
    };
    match expected {
        Ok(()) => Some(value.clone()),
        Err(expected) => {
            ctx.wrong_type(pointer, field, expected, value);
            None
        }
    }
}
