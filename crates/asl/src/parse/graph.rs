//! The top level, graphs (`StartAt` + `States`) and the checks on
//! transitions: targets exist in the same graph, every state is reachable,
//! state names are unique in the whole machine and at most 80 characters.

use std::collections::HashMap;

use serde_json::Value;

use super::ctx::{Ctx, Obj};
use super::locate::child;
use super::states::{self, Parsed};
use super::{MAX_DEPTH, ValidationError, codes};
use crate::model::{Graph, StateId, StateKind, StateMachine, Transition};

/// AWS's limit on the length of a state name (the spec says 128; AWS 80).
const MAX_STATE_NAME: usize = 80;

/// What [`parse_machine`] found.
pub(super) struct Outcome {
    /// The model, when nothing had to be dropped.
    pub machine: Option<StateMachine>,
    /// Every problem (unsorted).
    pub errors: Vec<ValidationError>,
    /// Pointers of every `States` object.
    pub states_objects: Vec<String>,
}

/// Parses and checks a whole definition.
pub(super) fn parse_machine(value: &Value) -> Outcome {
    let mut ctx = Ctx::default();
    let machine = if exceeds_depth(value) {
        ctx.err(
            String::new(),
            codes::INVALID_JSON,
            format!("the definition is nested deeper than {MAX_DEPTH} levels"),
        );
        None
    } else {
        machine(&mut ctx, value)
    };
    Outcome {
        machine,
        errors: ctx.errors,
        states_objects: ctx.states_objects,
    }
}

/// True when arrays/objects nest deeper than [`MAX_DEPTH`] (checked
/// without recursion).
fn exceeds_depth(value: &Value) -> bool {
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth + 1 > MAX_DEPTH {
            return true;
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    false
}

fn machine(ctx: &mut Ctx, value: &Value) -> Option<StateMachine> {
    let Value::Object(o) = value else {
        ctx.wrong_type(String::new(), "the definition", "an object", value);
        return None;
    };
    let place = "state machine";
    ctx.unknown_fields(
        o,
        "",
        &[
            "StartAt",
            "States",
            "Comment",
            "Version",
            "TimeoutSeconds",
            "QueryLanguage",
        ],
        place,
    );
    if !query_language(ctx, o, "", place) {
        return None;
    }
    let comment = ctx.opt_str(o, "", "Comment").map(str::to_string);
    let version = ctx.opt_str(o, "", "Version").map(str::to_string);
    let timeout_seconds = ctx.opt_int(o, "", "TimeoutSeconds", 1, u64::MAX);
    let graph = graph(ctx, o, "", place);
    Some(StateMachine {
        comment,
        version,
        timeout_seconds: timeout_seconds.ok()?,
        graph: graph?,
    })
}

/// Checks `QueryLanguage`. False when it is JSONata (reported), in which
/// case the object is not checked further.
pub(super) fn query_language(ctx: &mut Ctx, o: &Obj, p: &str, place: &str) -> bool {
    let key = "QueryLanguage";
    match ctx.opt_str(o, p, key) {
        Some("JSONata") => {
            ctx.err(
                child(p, key),
                codes::UNSUPPORTED_QUERY_LANGUAGE,
                format!("QueryLanguage JSONata is not supported yet ({place})"),
            );
            false
        }
        Some("JSONPath") | None => true,
        Some(other) => {
            ctx.err(
                child(p, key),
                codes::INVALID_VALUE,
                format!("QueryLanguage must be 'JSONPath' or 'JSONata', not '{other}'"),
            );
            true
        }
    }
}

/// Resolves transition targets inside one graph and records the edges.
pub(super) struct Targets<'g> {
    index: &'g HashMap<String, StateId>,
    /// Ids of the states this state can go to.
    pub edges: Vec<usize>,
    /// A transition field was there but could not be read (`Next`,
    /// `Catch`, `Choices` or `Default` of the wrong type): the edges are
    /// incomplete.
    pub lost: bool,
}

impl Targets<'_> {
    /// The id of state `name`; `MISSING_TRANSITION_TARGET` at `pointer` if
    /// the graph has no such state.
    pub fn resolve(&mut self, ctx: &mut Ctx, name: &str, pointer: String) -> Option<StateId> {
        match self.index.get(name) {
            Some(id) => {
                self.edges.push(id.0);
                Some(*id)
            }
            None => {
                ctx.err(
                    pointer,
                    codes::MISSING_TRANSITION_TARGET,
                    format!(
                        "Missing transition target: there is no state named '{name}' in this \
                         graph (a Parallel branch or Map processor cannot leave itself)"
                    ),
                );
                None
            }
        }
    }
}

/// Parses `StartAt` and `States` of the object at `p` (the top level, a
/// Parallel branch or a Map item processor). Other fields are the caller's.
pub(super) fn graph(ctx: &mut Ctx, o: &Obj, p: &str, place: &str) -> Option<Graph> {
    let start_at = ctx.req_str(o, p, "StartAt", place);
    let states_pointer = child(p, "States");
    let states = match o.get("States") {
        None => {
            ctx.missing(p, "States", place);
            None
        }
        Some(Value::Object(map)) if map.is_empty() => {
            ctx.err(
                states_pointer.clone(),
                codes::INVALID_VALUE,
                "'States' must have at least one state",
            );
            None
        }
        Some(Value::Object(map)) => Some(map),
        Some(other) => {
            ctx.wrong_type(states_pointer.clone(), "States", "an object", other);
            None
        }
    };
    let states = states?;
    ctx.states_objects.push(states_pointer.clone());

    let mut index = HashMap::with_capacity(states.len());
    for (i, name) in states.keys().enumerate() {
        let pointer = child(&states_pointer, name);
        let length = name.chars().count();
        if length == 0 || length > MAX_STATE_NAME {
            ctx.err(
                pointer.clone(),
                codes::INVALID_STATE_NAME,
                format!(
                    "State names must have 1 to {MAX_STATE_NAME} characters; this one has {length}"
                ),
            );
        } else if name.chars().any(char::is_control) {
            // As AWS refuses in names; a state name goes into task ids,
            // which travel in message headers.
            ctx.err(
                pointer.clone(),
                codes::INVALID_STATE_NAME,
                format!(
                    "State names must not contain control characters (line breaks, tabs, \
                     U+0000-U+001F, U+007F-U+009F); {name:?} does"
                ),
            );
        }
        if let Some(first) = ctx.state_names.get(name) {
            let message = format!(
                "Duplicate state name '{name}' (also at {first}): state names must be unique \
                 in the whole state machine"
            );
            ctx.err(pointer, codes::DUPLICATE_STATE_NAME, message);
        } else {
            ctx.state_names.insert(name.clone(), pointer);
        }
        index.insert(name.clone(), StateId(i));
    }

    let start = start_at.ok().and_then(|name| match index.get(name) {
        Some(id) => Some(*id),
        None => {
            ctx.err(
                child(p, "StartAt"),
                codes::MISSING_TRANSITION_TARGET,
                format!("StartAt names '{name}', which is not a state of this graph"),
            );
            None
        }
    });

    let mut parsed = Vec::with_capacity(states.len());
    let mut edges = Vec::with_capacity(states.len());
    let mut opaque = false;
    for (name, value) in states {
        let pointer = child(&states_pointer, name);
        let mut targets = Targets {
            index: &index,
            edges: Vec::new(),
            lost: false,
        };
        let state = match value {
            Value::Object(so) => states::parse_state(ctx, name, so, &pointer, &mut targets),
            other => {
                ctx.wrong_type(pointer, name, "an object (a state)", other);
                Parsed::Opaque
            }
        };
        match state {
            Parsed::State(state) => parsed.push(state.map(|s| *s)),
            Parsed::Opaque => {
                opaque = true;
                parsed.push(None);
            }
        }
        opaque |= targets.lost;
        edges.push(targets.edges);
    }

    // Reachability is only meaningful when every state's transitions are
    // known (a state of unknown type or in JSONata mode hides its own; a
    // transition field of the wrong type loses its target, which would
    // otherwise be reported unreachable on top of the real error).
    if let (Some(start), false) = (start, opaque) {
        let mut reached = vec![false; edges.len()];
        let mut stack = vec![start.0];
        while let Some(i) = stack.pop() {
            if let Some(seen) = reached.get_mut(i)
                && !*seen
            {
                *seen = true;
                if let Some(next) = edges.get(i) {
                    stack.extend(next.iter().copied());
                }
            }
        }
        for ((name, _), reached) in states.iter().zip(&reached) {
            if !reached {
                ctx.err(
                    child(&states_pointer, name),
                    codes::UNREACHABLE_STATE,
                    format!("State '{name}' is not reachable from StartAt"),
                );
            }
        }
    }

    let states: Option<Vec<_>> = parsed.into_iter().collect();
    // AWS's MISSING_END_STATE: with no state that ends the graph, an
    // execution could only loop until a limit stops it.
    if let Some(states) = &states
        && !opaque
        && !states.is_empty()
        && !states.iter().any(|s| {
            matches!(s.transition, Transition::End)
                || matches!(s.kind, StateKind::Succeed | StateKind::Fail(_))
        })
    {
        ctx.err(
            states_pointer.clone(),
            codes::MISSING_END_STATE,
            "Workflow has no terminal state (a state with \"End\": true, or of type Succeed or Fail)"
                .to_string(),
        );
    }
    Some(Graph {
        start_at: start?,
        states: states?,
        index,
    })
}
