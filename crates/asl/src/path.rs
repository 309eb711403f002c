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
//!
//! Compatibility notes (AWS evaluates paths with Jayway JsonPath):
//! - dot-notation names are lenient like Jayway's (`$.order-id`,
//!   `$.ns:key`, `$.détail`, `$.@type`: a name ends only at `.`, `[`, `(`
//!   or white space); such names also work inside indefinite paths
//!   (they are rewritten to bracket notation before `serde_json_path`),
//!   but not inside filter expressions, which follow RFC 9535;
//! - filters accept both the classic `[?(@.price > 10)]` and the RFC 9535
//!   `[?@.price > 10]` forms; Jayway-only operators (`=~`, `in`, ...) and
//!   path functions (`.length()`) are rejected when parsed, as AWS does not
//!   support functions either;
//! - a definite path that selects nothing is a [`PathMiss`]; an indefinite
//!   one that selects nothing gives `[]`.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::sync::Arc;

use serde_json::{Map, Value};
use serde_json_path::JsonPath;

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
    /// One field of the context object (`$$.Execution`, `$$.Map`, ...).
    /// Implementations may build each field on its own, so that a path
    /// into one (`$$.Map.Item.Value`, once per Map item) does not build
    /// the others (`$$.Execution.Input`, which can be large).
    fn context_field(&self, name: &str) -> Option<&Value> {
        self.context().get(name)
    }
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

impl PathSyntaxError {
    fn new(path: &str, message: impl Into<String>) -> PathSyntaxError {
        PathSyntaxError {
            path: path.to_owned(),
            message: message.into(),
        }
    }
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

/// One step of a definite path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// `.name` or `['name']`.
    Field(Box<str>),
    /// `[n]`; a negative index counts from the end of the array.
    Index(i64),
}

/// How a [`ReadPath`] is evaluated.
#[derive(Debug, Clone)]
enum Compiled {
    /// Fields and indexes only: walked directly, without allocating.
    Definite(Box<[Seg]>),
    /// Anything else, compiled once by `serde_json_path` (root mapped to `$`).
    Indefinite(Box<JsonPath>),
}

/// A JSONPath that reads a value.
///
/// Parsed once (see [`ReadPath::parse`]); cloning is cheap (a shared
/// pointer) and evaluation of a definite path does not allocate.
#[derive(Debug, Clone)]
pub struct ReadPath {
    inner: Arc<ReadInner>,
}

#[derive(Debug)]
struct ReadInner {
    text: Box<str>,
    root: PathRoot,
    compiled: Compiled,
}

impl PartialEq for ReadPath {
    fn eq(&self, other: &ReadPath) -> bool {
        self.inner.text == other.inner.text
    }
}

impl Eq for ReadPath {}

impl fmt::Display for ReadPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.text)
    }
}

/// The deepest nesting of brackets and parentheses a path may have.
pub const MAX_NESTING: usize = 32;

/// Tells, character by character, which characters of a path belong to a
/// quoted string (`'...'`, `"..."`, with `\\` escapes; quotes included).
#[derive(Default)]
struct Quotes {
    open: Option<char>,
    escaped: bool,
}

impl Quotes {
    /// Feeds the next character; true when it is part of a quoted string.
    fn quoted(&mut self, c: char) -> bool {
        if let Some(q) = self.open {
            if self.escaped {
                self.escaped = false;
            } else if c == '\\' {
                self.escaped = true;
            } else if c == q {
                self.open = None;
            }
            return true;
        }
        if c == '\'' || c == '"' {
            self.open = Some(c);
            return true;
        }
        false
    }
}

/// The node `segs` lead to from `start`, if there is one.
fn walk<'a>(start: &'a Value, segs: &[Seg]) -> Option<&'a Value> {
    segs.iter().try_fold(start, |cur, seg| match (seg, cur) {
        (Seg::Field(name), Value::Object(map)) => map.get(&**name),
        (Seg::Index(i), Value::Array(items)) => index(items, *i),
        _ => None,
    })
}

/// How deeply brackets and parentheses nest in a path, outside quoted
/// strings.
fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut quotes = Quotes::default();
    for c in text.chars() {
        if quotes.quoted(c) {
            continue;
        }
        match c {
            '(' | '[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

impl ReadPath {
    /// Parses a path (`$`, `$.a`, `$$.Execution.Id`, `$var.x[0]`, `$.a[?(@.b > 1)]`, ...).
    pub fn parse(written: &str) -> Result<ReadPath, PathSyntaxError> {
        // White space around the path is not part of it (Jayway trims);
        // the path keeps its text as written.
        let text = written.trim();
        // The JSONPath parser recurses once per bracket or parenthesis: a
        // deeper path would overflow the stack instead of being refused.
        if nesting_depth(text) > MAX_NESTING {
            return Err(PathSyntaxError::new(
                text,
                format!("brackets and parentheses are nested more than {MAX_NESTING} levels deep"),
            ));
        }
        let (root, rest) = parse_root(text)?;
        let pieces = tokenize(text, rest)?;
        let compiled = if pieces.iter().all(|p| matches!(p, Piece::Seg(_))) {
            let segs: Vec<Seg> = pieces
                .into_iter()
                .filter_map(|p| match p {
                    Piece::Seg(s) => Some(s),
                    Piece::Raw(_) => None,
                })
                .collect();
            Compiled::Definite(segs.into_boxed_slice())
        } else {
            let rendered = render(&pieces);
            let jp = JsonPath::parse(&rendered).map_err(|e| match dot_function(text) {
                Some(name) => PathSyntaxError::new(text, functions_unsupported(name)),
                None => PathSyntaxError::new(text, format!("not a valid JSONPath expression: {e}")),
            })?;
            Compiled::Indefinite(Box::new(jp))
        };
        Ok(ReadPath {
            inner: Arc::new(ReadInner {
                text: written.into(),
                root,
                compiled,
            }),
        })
    }

    /// The path `$`.
    pub fn identity() -> ReadPath {
        ReadPath {
            inner: Arc::new(ReadInner {
                text: "$".into(),
                root: PathRoot::Input,
                compiled: Compiled::Definite(Box::new([])),
            }),
        }
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.inner.text
    }

    /// Where the path starts.
    pub fn root(&self) -> &PathRoot {
        &self.inner.root
    }

    /// The variable name when the path starts at `$name`.
    pub fn variable_name(&self) -> Option<&str> {
        match &self.inner.root {
            PathRoot::Variable(name) => Some(name),
            _ => None,
        }
    }

    /// True when the path is exactly `$`.
    pub fn is_identity(&self) -> bool {
        matches!(self.inner.root, PathRoot::Input)
            && matches!(&self.inner.compiled, Compiled::Definite(segs) if segs.is_empty())
    }

    /// True when what the path selects is a part of its `$` input (a
    /// definite path from `$`), and so never larger than that input. A path
    /// from `$$` or a variable selects from elsewhere, and an indefinite one
    /// can select a node many times (`$[0,0]`, `$..*`).
    pub fn selects_part_of_input(&self) -> bool {
        matches!(self.inner.root, PathRoot::Input) && self.is_definite()
    }

    /// True when the path can select at most one node (no wildcard, filter,
    /// recursive descent, slice or union): a "reference path".
    pub fn is_definite(&self) -> bool {
        matches!(self.inner.compiled, Compiled::Definite(_))
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
        // `$$.Field...`: start at that field of the context, built alone.
        if let (PathRoot::Context, Compiled::Definite(segs)) =
            (&self.inner.root, &self.inner.compiled)
            && let Some((Seg::Field(first), rest)) = segs.split_first()
        {
            return match env.context_field(first).and_then(|v| walk(v, rest)) {
                Some(v) => Ok(Cow::Borrowed(v)),
                None => Err(self.miss(env.context())),
            };
        }
        let start: &'a Value = match &self.inner.root {
            PathRoot::Input => input,
            PathRoot::Context => env.context(),
            PathRoot::Variable(name) => env.variable(name).ok_or_else(|| PathMiss {
                path: self.inner.text.to_string(),
                message: format!("The variable '{name}' is not defined"),
            })?,
        };
        match &self.inner.compiled {
            Compiled::Definite(segs) => match walk(start, segs) {
                Some(v) => Ok(Cow::Borrowed(v)),
                None => Err(self.miss(start)),
            },
            Compiled::Indefinite(jp) => {
                let matches: Vec<Value> = jp.query(start).all().into_iter().cloned().collect();
                Ok(Cow::Owned(Value::Array(matches)))
            }
        }
    }

    fn miss(&self, start: &Value) -> PathMiss {
        PathMiss {
            path: self.inner.text.to_string(),
            message: format!(
                "The JSONPath '{}' could not be found in the input '{}'",
                self.inner.text,
                truncated_json(start)
            ),
        }
    }
}

/// An array element by index; a negative index counts from the end.
fn index(items: &[Value], i: i64) -> Option<&Value> {
    if i >= 0 {
        items.get(usize::try_from(i).ok()?)
    } else {
        let back = usize::try_from(i.checked_neg()?).ok()?;
        let pos = items.len().checked_sub(back)?;
        items.get(pos)
    }
}

/// A reference path that writes a value: `ResultPath`. Only `$` rooted,
/// definite paths of fields and indexes (`$`, `$.a.b`, `$['a b'][0]`).
#[derive(Debug, Clone)]
pub struct ReferencePath {
    inner: Arc<RefInner>,
}

#[derive(Debug)]
struct RefInner {
    text: Box<str>,
    segs: Box<[RefSeg]>,
}

/// One step of a [`ReferencePath`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum RefSeg {
    Field(Box<str>),
    Index(usize),
}

impl PartialEq for ReferencePath {
    fn eq(&self, other: &ReferencePath) -> bool {
        self.inner.text == other.inner.text
    }
}

impl Eq for ReferencePath {}

impl fmt::Display for ReferencePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.text)
    }
}

impl ReferencePath {
    /// Parses a reference path.
    pub fn parse(written: &str) -> Result<ReferencePath, PathSyntaxError> {
        const MUST: &str = "ResultPath must be a reference path: '$' followed only by \
                            fields and non-negative array indexes (e.g. '$.a.b', \"$['a b'][0]\")";
        let text = written.trim();
        let (root, rest) = parse_root(text)?;
        if root != PathRoot::Input {
            return Err(PathSyntaxError::new(
                text,
                format!("{MUST}; the context object '$$' and variables cannot be written"),
            ));
        }
        let pieces = tokenize(text, rest)?;
        let mut segs = Vec::with_capacity(pieces.len());
        for piece in pieces {
            match piece {
                Piece::Seg(Seg::Field(name)) => segs.push(RefSeg::Field(name)),
                Piece::Seg(Seg::Index(i)) => match usize::try_from(i) {
                    Ok(i) => segs.push(RefSeg::Index(i)),
                    Err(_) => {
                        return Err(PathSyntaxError::new(
                            text,
                            format!("{MUST}; negative index {i} is not allowed"),
                        ));
                    }
                },
                Piece::Raw(raw) => {
                    return Err(PathSyntaxError::new(
                        text,
                        format!("{MUST}; '{raw}' can select several nodes"),
                    ));
                }
            }
        }
        Ok(ReferencePath {
            inner: Arc::new(RefInner {
                text: written.into(),
                segs: segs.into_boxed_slice(),
            }),
        })
    }

    /// The path `$`.
    pub fn identity() -> ReferencePath {
        ReferencePath {
            inner: Arc::new(RefInner {
                text: "$".into(),
                segs: Box::new([]),
            }),
        }
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.inner.text
    }

    /// True when the path is exactly `$`.
    pub fn is_identity(&self) -> bool {
        self.inner.segs.is_empty()
    }

    /// Writes `value` into `target` at this path and returns the result.
    /// `$` replaces the whole target. Missing objects on the way are
    /// created; a field written through a non-object (a string, number, ...)
    /// or an index out of range is a [`PathWriteError`] (which the
    /// interpreter reports as `States.ResultPathMatchFailure`).
    ///
    /// The target is modified in place; on error it is left unchanged (the
    /// error message shows it as it was).
    pub fn write(&self, mut target: Value, value: Value) -> Result<Value, PathWriteError> {
        if self.inner.segs.is_empty() {
            return Ok(value);
        }
        self.write_in_place(&mut target, value)?;
        Ok(target)
    }

    /// Like [`ReferencePath::write`], in place: on error `target` is left
    /// exactly as it was. `$` replaces the whole target.
    pub fn write_in_place(&self, target: &mut Value, value: Value) -> Result<(), PathWriteError> {
        self.write_in_place_undoable(target, value).map(|_| ())
    }
}

/// What [`ReferencePath::write_in_place_undoable`] changed, to put it back
/// with [`ReferencePath::undo`].
#[derive(Debug)]
pub struct WriteUndo {
    /// The segment at which the write changed the target (`None`: the
    /// whole target, for `$`).
    at: Option<usize>,
    /// What was there (`None`: nothing, the field was added).
    old: Option<Value>,
}

impl ReferencePath {
    /// [`ReferencePath::write_in_place`], keeping what it changed so that
    /// [`ReferencePath::undo`] can put the target back exactly as it was
    /// (field order included) without a copy of it.
    pub fn write_in_place_undoable(
        &self,
        target: &mut Value,
        value: Value,
    ) -> Result<WriteUndo, PathWriteError> {
        if self.inner.segs.is_empty() {
            let old = std::mem::replace(target, value);
            return Ok(WriteUndo {
                at: None,
                old: Some(old),
            });
        }
        match write_at(target, &self.inner.segs, value) {
            Ok((at, old)) => Ok(WriteUndo { at: Some(at), old }),
            // AWS: "Unable to apply ReferencePath $.a.b to input \"abc\"".
            Err(()) => Err(PathWriteError {
                path: self.inner.text.to_string(),
                message: format!(
                    "Unable to apply ReferencePath {} to input {}",
                    self.inner.text,
                    truncated_json(target)
                ),
            }),
        }
    }

    /// Puts back what [`ReferencePath::write_in_place_undoable`] changed in
    /// `target` (which must not have changed since).
    pub fn undo(&self, target: &mut Value, undo: WriteUndo) {
        let Some(at) = undo.at else {
            if let Some(old) = undo.old {
                *target = old;
            }
            return;
        };
        let mut cur = target;
        for seg in self.inner.segs.iter().take(at) {
            let next = match (seg, cur) {
                (RefSeg::Field(name), Value::Object(map)) => map.get_mut(&**name),
                (RefSeg::Index(idx), Value::Array(items)) => items.get_mut(*idx),
                _ => None,
            };
            match next {
                Some(v) => cur = v,
                None => return,
            }
        }
        match (self.inner.segs.get(at), cur) {
            (Some(RefSeg::Field(name)), Value::Object(map)) => match undo.old {
                // Same key: it keeps its place.
                Some(old) => {
                    map.insert(name.to_string(), old);
                }
                // Added last: removing it leaves the others in order.
                None => {
                    map.remove(&**name);
                }
            },
            (Some(RefSeg::Index(idx)), Value::Array(items)) => {
                if let (Some(slot), Some(old)) = (items.get_mut(*idx), undo.old) {
                    *slot = old;
                }
            }
            _ => {}
        }
    }
}

/// Writes `value` at `segs` (not empty) under `cur`. Fails, without
/// modifying anything, when the path goes through a non-object or a missing
/// array element.
/// On success, the segment where the target changed and what was there
/// (`None`: a field was added, possibly with a chain of new objects).
fn write_at(
    mut cur: &mut Value,
    segs: &[RefSeg],
    value: Value,
) -> Result<(usize, Option<Value>), ()> {
    let mut i = 0;
    while let Some(seg) = segs.get(i) {
        let last = i + 1 == segs.len();
        match seg {
            RefSeg::Field(name) => {
                let Value::Object(map) = cur else {
                    return Err(());
                };
                if last {
                    let old = map.insert(name.to_string(), value);
                    return Ok((i, old));
                }
                if !map.contains_key(&**name) {
                    // Create the rest of the chain, as AWS does, but only
                    // when it is made of fields: an index needs an existing
                    // array.
                    let rest = segs.get(i + 1..).unwrap_or(&[]);
                    let mut built = value;
                    for seg in rest.iter().rev() {
                        match seg {
                            RefSeg::Field(n) => {
                                let mut m = Map::new();
                                m.insert(n.to_string(), built);
                                built = Value::Object(m);
                            }
                            RefSeg::Index(_) => return Err(()),
                        }
                    }
                    map.insert(name.to_string(), built);
                    return Ok((i, None));
                }
                cur = match map.get_mut(&**name) {
                    Some(v) => v,
                    None => return Err(()),
                };
            }
            RefSeg::Index(idx) => {
                let Value::Array(items) = cur else {
                    return Err(());
                };
                let Some(slot) = items.get_mut(*idx) else {
                    return Err(());
                };
                if last {
                    let old = std::mem::replace(slot, value);
                    return Ok((i, Some(old)));
                }
                cur = slot;
            }
        }
        i += 1;
    }
    Err(())
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Longest variable name accepted after `$`.
const MAX_VARIABLE_LEN: usize = 80;

/// How much of a JSON document an error message shows.
const MESSAGE_JSON_LIMIT: usize = 200;

/// A parsed piece of a path after its root.
#[derive(Debug)]
enum Piece<'t> {
    /// A definite step.
    Seg(Seg),
    /// Text handed to `serde_json_path` unchanged (`..`, `[*]`, `[1:2]`,
    /// `[?(...)]`, `['a','b']`, ...).
    Raw(Cow<'t, str>),
}

/// Splits off the root: returns it and the index where segments start.
fn parse_root(text: &str) -> Result<(PathRoot, usize), PathSyntaxError> {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'$') {
        return Err(PathSyntaxError::new(text, "a path must start with '$'"));
    }
    // `$$` must be checked before `$name`.
    if bytes.get(1) == Some(&b'$') {
        return Ok((PathRoot::Context, 2));
    }
    match bytes.get(1) {
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
            let len = bytes
                .get(1..)
                .unwrap_or(&[])
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                .count();
            if len > MAX_VARIABLE_LEN {
                return Err(PathSyntaxError::new(
                    text,
                    format!("a variable name is at most {MAX_VARIABLE_LEN} characters"),
                ));
            }
            let name = text.get(1..1 + len).unwrap_or_default();
            Ok((PathRoot::Variable(name.to_owned()), 1 + len))
        }
        _ => Ok((PathRoot::Input, 1)),
    }
}

/// Characters that end a dot-notation field name: as in Jayway, only `.`,
/// `[`, `(` and white space (`$._source.@timestamp`, `$.@type` are names).
fn ends_name(c: char) -> bool {
    matches!(c, '.' | '[' | '(') || c.is_whitespace()
}

/// Parses the segments of `text` starting at byte `pos`.
fn tokenize(text: &str, mut pos: usize) -> Result<Vec<Piece<'_>>, PathSyntaxError> {
    let mut pieces = Vec::new();
    loop {
        // `pos` only ever advances past whole characters.
        let Some(rest) = text.get(pos..) else {
            return Err(PathSyntaxError::new(
                text,
                format!("position {pos} is inside a character"),
            ));
        };
        let Some(c) = rest.chars().next() else { break };
        match c {
            '.' => {
                if rest.starts_with("..") {
                    // Recursive descent: `..name`, `..*`, `..[...]`.
                    pieces.push(Piece::Raw(Cow::Borrowed("..")));
                    pos += 2;
                    let after = text.get(pos..).unwrap_or_default();
                    match after.chars().next() {
                        Some('*') => {
                            pieces.push(Piece::Raw(Cow::Borrowed("*")));
                            pos += 1;
                        }
                        Some('[') => {} // handled by the next iteration
                        Some(c) if !ends_name(c) => {
                            let (name, len) = dot_name(text, pos)?;
                            pieces.push(Piece::Seg(Seg::Field(name.into())));
                            pos += len;
                        }
                        _ => {
                            return Err(PathSyntaxError::new(
                                text,
                                format!(
                                    "'..' at position {} must be followed by a name, '*' or '['",
                                    pos - 2
                                ),
                            ));
                        }
                    }
                } else if rest.starts_with(".*") {
                    pieces.push(Piece::Raw(Cow::Borrowed("[*]")));
                    pos += 2;
                } else if rest.starts_with(".[") {
                    // `$.a.[0]`, `$.['a b']`: the dot is dropped, as Jayway
                    // does.
                    pos += 1;
                } else {
                    let (name, len) = dot_name(text, pos + 1)?;
                    pieces.push(Piece::Seg(Seg::Field(name.into())));
                    pos += 1 + len;
                }
            }
            '[' => {
                let (piece, len) = bracket(text, pos)?;
                pieces.push(piece);
                pos += len;
            }
            other => {
                return Err(PathSyntaxError::new(
                    text,
                    format!(
                        "unexpected character '{}' at position {pos}; expected '.' or '['",
                        other.escape_debug()
                    ),
                ));
            }
        }
    }
    Ok(pieces)
}

/// A dot-notation name starting at byte `start`: returns it and its length.
/// Lenient like Jayway: anything except the characters of [`ends_name`].
fn dot_name(text: &str, start: usize) -> Result<(&str, usize), PathSyntaxError> {
    let rest = text.get(start..).unwrap_or_default();
    let len = rest.find(ends_name).unwrap_or(rest.len());
    let name = rest.get(..len).unwrap_or_default();
    if name.is_empty() {
        let found = rest.chars().next().map_or_else(
            || "the end".to_owned(),
            |c| format!("'{}'", c.escape_debug()),
        );
        return Err(PathSyntaxError::new(
            text,
            format!("expected a field name at position {start}, found {found}"),
        ));
    }
    match rest.get(len..).and_then(|r| r.chars().next()) {
        None | Some('.') | Some('[') => Ok((name, len)),
        Some('(') => Err(PathSyntaxError::new(text, functions_unsupported(name))),
        Some(c) => Err(PathSyntaxError::new(
            text,
            format!(
                "unexpected character '{}' at position {} after field name '{name}'",
                c.escape_debug(),
                start + len
            ),
        )),
    }
}

/// The message for Jayway-style path functions (`$.a.length()`).
fn functions_unsupported(name: &str) -> String {
    format!(
        "JSONPath functions such as '{name}()' are not supported; \
         use an intrinsic function (e.g. States.ArrayLength) instead"
    )
}

/// The name of the first Jayway-style function call (`.name(`) outside
/// quoted strings, if any.
fn dot_function(text: &str) -> Option<&str> {
    let mut quotes = Quotes::default();
    for (i, c) in text.char_indices() {
        if quotes.quoted(c) || c != '.' {
            continue;
        }
        let rest = text.get(i + 1..)?;
        let len = rest
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        if len > 0 && rest.as_bytes().get(len) == Some(&b'(') {
            return rest.get(..len);
        }
    }
    None
}

/// A bracketed segment starting at byte `start` (on `[`): returns the piece
/// and the length including both brackets.
fn bracket(text: &str, start: usize) -> Result<(Piece<'_>, usize), PathSyntaxError> {
    let rest = text.get(start..).unwrap_or_default();
    let close = matching_bracket(rest).ok_or_else(|| {
        PathSyntaxError::new(text, format!("'[' at position {start} is not closed"))
    })?;
    let inner = rest.get(1..close).unwrap_or_default();
    let whole = rest.get(..=close).unwrap_or_default();
    let trimmed = inner.trim();
    if let Some(i) = parse_index(trimmed) {
        return Ok((Piece::Seg(Seg::Index(i)), close + 1));
    }
    if let Some(first) = trimmed.chars().next()
        && (first == '\'' || first == '"')
    {
        if let Some((name, used)) = parse_quoted(trimmed) {
            if used == trimmed.len() {
                return Ok((Piece::Seg(Seg::Field(name.into())), close + 1));
            }
        } else {
            return Err(PathSyntaxError::new(
                text,
                format!("invalid quoted name in '{whole}' at position {start}"),
            ));
        }
    }
    if trimmed.is_empty() {
        return Err(PathSyntaxError::new(
            text,
            format!("empty brackets at position {start}"),
        ));
    }
    Ok((Piece::Raw(Cow::Borrowed(whole)), close + 1))
}

/// The byte offset of the `]` closing the `[` at offset 0, skipping quoted
/// strings and nested brackets.
fn matching_bracket(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '[' => depth += 1,
            ']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// An integer index (`0`, `-1`); `None` for anything else.
fn parse_index(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A quoted string at the start of `s` (single or double quotes, JSON-like
/// escapes): returns the unescaped text and the bytes used.
fn parse_quoted(s: &str) -> Option<(String, usize)> {
    let mut chars = s.char_indices();
    let (_, q) = chars.next()?;
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        if c == q {
            return Some((out, i + c.len_utf8()));
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let (_, e) = chars.next()?;
        match e {
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            '/' | '\\' | '\'' | '"' => out.push(e),
            'u' => {
                let hi = hex4(&mut chars)?;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    // A surrogate pair: `\uD83D\uDE00`.
                    let (_, b) = chars.next()?;
                    let (_, u) = chars.next()?;
                    if b != '\\' || u != 'u' {
                        return None;
                    }
                    let lo = hex4(&mut chars)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                out.push(char::from_u32(code)?);
            }
            _ => return None,
        }
    }
    None
}

fn hex4(chars: &mut std::str::CharIndices<'_>) -> Option<u32> {
    let mut v = 0u32;
    for _ in 0..4 {
        let (_, c) = chars.next()?;
        v = v * 16 + c.to_digit(16)?;
    }
    Some(v)
}

/// The RFC 9535 text for `serde_json_path`: root `$`, fields in brackets
/// (so lenient names survive), raw pieces unchanged.
fn render(pieces: &[Piece<'_>]) -> String {
    let mut out = String::from("$");
    for piece in pieces {
        match piece {
            Piece::Seg(Seg::Field(name)) => {
                out.push_str("['");
                for c in name.chars() {
                    match c {
                        '\'' => out.push_str("\\'"),
                        '\\' => out.push_str("\\\\"),
                        c if (c as u32) < 0x20 => {
                            out.push_str(&format!("\\u{:04x}", c as u32));
                        }
                        c => out.push(c),
                    }
                }
                out.push_str("']");
            }
            Piece::Seg(Seg::Index(i)) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
            Piece::Raw(raw) => out.push_str(raw),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

/// A writer that keeps the first `limit` bytes and then fails, so that a
/// huge document is not serialized in full for an error message.
struct Limited {
    buf: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl io::Write for Limited {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.limit.saturating_sub(self.buf.len());
        if data.len() > room {
            self.buf
                .extend_from_slice(data.get(..room).unwrap_or_default());
            self.truncated = true;
            return Err(io::Error::other("message limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `value` as compact JSON, cut to about [`MESSAGE_JSON_LIMIT`] characters
/// (with `...` when cut).
fn truncated_json(value: &Value) -> String {
    let mut w = Limited {
        buf: Vec::with_capacity(64),
        limit: MESSAGE_JSON_LIMIT,
        truncated: false,
    };
    // An error only means the limit was reached.
    let _ = serde_json::to_writer(&mut w, value);
    let text = match std::str::from_utf8(&w.buf) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(w.buf.get(..e.valid_up_to()).unwrap_or_default())
            .unwrap_or_default(),
    };
    let mut out = text.to_owned();
    if w.truncated {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    struct TestEnv {
        context: Value,
        vars: Map<String, Value>,
    }

    impl Env for TestEnv {
        fn context(&self) -> &Value {
            &self.context
        }
        fn variable(&self, name: &str) -> Option<&Value> {
            self.vars.get(name)
        }
    }

    fn env() -> TestEnv {
        let Value::Object(vars) = json!({
            "orderId": "o-1",
            "order": {"total": 42, "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 3}]},
            "_x9": null
        }) else {
            unreachable!()
        };
        TestEnv {
            context: json!({
                "Execution": {"Id": "exec-1", "Input": {"x": 7, "list": [1, 2]}},
                "State": {"Name": "Charge", "RetryCount": 0},
                "Map": {"Item": {"Index": 2, "Value": {"id": "v"}}}
            }),
            vars,
        }
    }

    fn rp(path: &str) -> ReadPath {
        match ReadPath::parse(path) {
            Ok(p) => p,
            Err(e) => panic!("{path} should parse: {e}"),
        }
    }

    fn read(path: &str, input: &Value) -> Result<Value, PathMiss> {
        rp(path).resolve(input, &env()).map(Cow::into_owned)
    }

    fn sample() -> Value {
        json!({
            "store": {
                "book": [
                    {"title": "A", "price": 8, "tags": ["x"]},
                    {"title": "B", "price": 12},
                    {"title": "C", "price": 30, "isbn": "123"}
                ],
                "bicycle": {"color": "red", "price": 20}
            },
            "x y": 1,
            "a.b": 2,
            "it's": 3,
            "order-id": "o-9",
            "ns:key": "k",
            "détail": "é",
            "@timestamp": "t",
            "it's?": 4,
            "empty": {},
            "n": null
        })
    }

    #[test]
    fn identity_is_borrowed_and_identity() {
        let input = sample();
        let p = ReadPath::identity();
        assert!(p.is_identity());
        assert!(p.is_definite());
        assert_eq!(p.as_str(), "$");
        assert_eq!(p.root(), &PathRoot::Input);
        let e = env();
        let got = p.resolve(&input, &e).unwrap();
        assert!(matches!(got, Cow::Borrowed(v) if std::ptr::eq(v, &input)));
        assert_eq!(rp("$"), p);
        assert!(rp("$").is_identity());
        assert!(!rp("$$").is_identity());
        assert!(!rp("$['a']").is_identity());
        assert!(!rp("$x").is_identity());
    }

    #[test]
    fn definite_selection_is_borrowed() {
        let input = sample();
        let e = env();
        let got = rp("$.store.book[1].title").resolve(&input, &e).unwrap();
        match got {
            Cow::Borrowed(v) => assert!(std::ptr::eq(v, &input["store"]["book"][1]["title"])),
            Cow::Owned(_) => panic!("definite path must borrow"),
        }
    }

    #[test]
    fn definite_paths() {
        let input = sample();
        let cases: &[(&str, Value)] = &[
            ("$.store.bicycle.color", json!("red")),
            ("$.store.book[0].title", json!("A")),
            ("$.store.book[2].isbn", json!("123")),
            ("$.store.book[-1].title", json!("C")),
            ("$.store.book[-3].title", json!("A")),
            ("$.store.book[0].tags[0]", json!("x")),
            ("$['x y']", json!(1)),
            ("$[\"x y\"]", json!(1)),
            ("$['a.b']", json!(2)),
            ("$[ 'a.b' ]", json!(2)),
            ("$['it\\'s']", json!(3)),
            ("$[\"it's\"]", json!(3)),
            ("$['store']['book'][1]['price']", json!(12)),
            ("$.store['bicycle'].price", json!(20)),
            ("$.order-id", json!("o-9")),
            ("$.ns:key", json!("k")),
            ("$.détail", json!("é")),
            ("$['d\\u00e9tail']", json!("é")),
            // Jayway's dot names end only at '.', '[', '(' or white space.
            ("$.@timestamp", json!("t")),
            ("$.it's?", json!(4)),
            // A dot before a bracket is dropped; white space around the
            // path is not part of it.
            ("$.store.[\'bicycle\'].price", json!(20)),
            ("$.store.book.[0].title", json!("A")),
            ("  $.store.bicycle.color ", json!("red")),
            ("$.empty", json!({})),
            ("$.n", Value::Null),
        ];
        for (path, want) in cases {
            let p = rp(path);
            assert!(p.is_definite(), "{path} should be definite");
            assert_eq!(read(path, &input).as_ref(), Ok(want), "{path}");
        }
    }

    #[test]
    fn every_root() {
        let input = json!({"x": 1});
        assert_eq!(rp("$.x").root(), &PathRoot::Input);
        assert_eq!(rp("$$").root(), &PathRoot::Context);
        assert_eq!(rp("$$.Execution.Id").root(), &PathRoot::Context);
        assert_eq!(
            rp("$order.total").root(),
            &PathRoot::Variable("order".into())
        );
        assert_eq!(rp("$order").variable_name(), Some("order"));
        assert_eq!(rp("$$.x").variable_name(), None);
        assert_eq!(rp("$.x").variable_name(), None);

        assert_eq!(read("$$", &input), Ok(env().context));
        assert_eq!(read("$$.Execution.Id", &input), Ok(json!("exec-1")));
        assert_eq!(read("$$.Execution.Input.x", &input), Ok(json!(7)));
        assert_eq!(read("$$.Execution.Input.list[1]", &input), Ok(json!(2)));
        assert_eq!(read("$$.Map.Item.Value.id", &input), Ok(json!("v")));
        assert_eq!(read("$$['State']['Name']", &input), Ok(json!("Charge")));

        assert_eq!(read("$orderId", &input), Ok(json!("o-1")));
        assert_eq!(read("$order.total", &input), Ok(json!(42)));
        assert_eq!(read("$order.lines[1].sku", &input), Ok(json!("b")));
        assert_eq!(read("$order['lines'][-1].qty", &input), Ok(json!(3)));
        assert_eq!(read("$_x9", &input), Ok(Value::Null));
        assert_eq!(read("$order.lines[*].sku", &input), Ok(json!(["a", "b"])));
        assert_eq!(read("$$..Id", &input), Ok(json!(["exec-1"])));
    }

    #[test]
    fn unset_variable_is_a_miss() {
        let input = json!({});
        for path in ["$missing", "$missing.a", "$missing[*]", "$Order"] {
            let miss = read(path, &input).unwrap_err();
            let name = rp(path).variable_name().unwrap().to_owned();
            assert_eq!(
                miss.message,
                format!("The variable '{name}' is not defined")
            );
            assert_eq!(miss.path, path);
        }
    }

    #[test]
    fn variable_names() {
        let ok80 = format!("$a{}", "b".repeat(79));
        assert!(ReadPath::parse(&ok80).is_ok());
        let long = format!("$a{}", "b".repeat(80));
        let err = ReadPath::parse(&long).unwrap_err();
        assert!(err.message.contains("at most 80"), "{}", err.message);
        for bad in ["$1", "$-a", "$a-b", "$ a", "$é", "$a b"] {
            assert!(ReadPath::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn misses() {
        let input = sample();
        let cases = [
            "$.nope",
            "$.store.nope.deeper",
            "$.store.book[3]",
            "$.store.book[-4]",
            "$.store.bicycle[0]",
            "$.store.book.title",
            "$.store.bicycle.color.x",
            "$.n.x",
            "$[0]",
        ];
        for path in cases {
            let miss = read(path, &input).unwrap_err();
            assert_eq!(miss.path, path);
            let prefix = format!("The JSONPath '{path}' could not be found in the input '{{");
            assert!(miss.message.starts_with(&prefix), "{}", miss.message);
            assert!(
                miss.message.ends_with("...'"),
                "long input is cut: {}",
                miss.message
            );
        }
        let small = json!({"a": 1});
        assert_eq!(
            read("$.b", &small).unwrap_err().message,
            "The JSONPath '$.b' could not be found in the input '{\"a\":1}'"
        );
        assert_eq!(
            read("$.a", &json!("abc")).unwrap_err().message,
            "The JSONPath '$.a' could not be found in the input '\"abc\"'"
        );
        assert_eq!(
            read("$$.Nope", &small).unwrap_err().path,
            "$$.Nope",
            "context misses are misses too"
        );
        assert!(read("$order.nope", &small).is_err());
    }

    #[test]
    fn truncation_respects_characters() {
        let long = Value::String("é".repeat(500));
        let text = truncated_json(&long);
        assert!(text.ends_with("..."));
        assert!(text.len() <= MESSAGE_JSON_LIMIT + 3);
        assert!(text.starts_with("\"éé"));
        assert_eq!(truncated_json(&json!([1, 2])), "[1,2]");
    }

    #[test]
    fn filters_both_syntaxes() {
        let input = sample();
        let want = json!([{"title": "B", "price": 12}, {"title": "C", "price": 30, "isbn": "123"}]);
        assert_eq!(
            read("$.store.book[?(@.price > 10)]", &input),
            Ok(want.clone())
        );
        assert_eq!(read("$.store.book[?@.price > 10]", &input), Ok(want));
        assert_eq!(
            read("$.store.book[?(@.price > 10)].title", &input),
            Ok(json!(["B", "C"]))
        );
        assert_eq!(
            read("$.store.book[?(@.title == 'A')].price", &input),
            Ok(json!([8]))
        );
        assert_eq!(
            read("$.store.book[?(@.isbn)].title", &input),
            Ok(json!(["C"]))
        );
        assert_eq!(
            read(
                "$.store.book[?(@.price > 10 && @.price < 20)].title",
                &input
            ),
            Ok(json!(["B"]))
        );
        assert_eq!(
            read("$.store.book[?(@.price > 100)]", &input),
            Ok(json!([]))
        );
        assert!(!rp("$.store.book[?(@.price > 10)]").is_definite());
        // A filter on a variable.
        assert_eq!(
            read("$order.lines[?(@.qty > 1)].sku", &input),
            Ok(json!(["b"]))
        );
    }

    #[test]
    fn wildcards_slices_descent_unions() {
        let input = sample();
        let cases: &[(&str, Value)] = &[
            ("$.store.book[*].title", json!(["A", "B", "C"])),
            ("$.store.book.*.price", json!([8, 12, 30])),
            ("$.store.bicycle.*", json!(["red", 20])),
            ("$.store.book[0:2].title", json!(["A", "B"])),
            ("$.store.book[1:].title", json!(["B", "C"])),
            ("$.store.book[-2:].title", json!(["B", "C"])),
            ("$.store.book[::2].title", json!(["A", "C"])),
            ("$.store.book[0,2].title", json!(["A", "C"])),
            ("$.store.bicycle['color','price']", json!(["red", 20])),
            ("$..isbn", json!(["123"])),
            ("$.store..price", json!([8, 12, 30, 20])),
            ("$..['x y']", json!([1])),
            ("$..order-id", json!(["o-9"])),
            ("$..['it\\'s']", json!([3])),
            ("$..[\"a.b\"]", json!([2])),
            ("$.store..['tags'][0]", json!(["x"])),
            ("$.store.book[*].nope", json!([])),
            ("$.nope[*]", json!([])),
        ];
        for (path, want) in cases {
            let p = rp(path);
            assert!(!p.is_definite(), "{path} should be indefinite");
            let e = env();
            let got = p.resolve(&input, &e).unwrap();
            assert!(matches!(got, Cow::Owned(_)));
            assert_eq!(&got.into_owned(), want, "{path}");
        }
    }

    #[test]
    fn rejected_read_paths() {
        let cases: &[(&str, &str)] = &[
            ("", "must start with '$'"),
            ("a.b", "must start with '$'"),
            ("$.", "expected a field name"),
            ("$..", "'..'"),
            ("$...a", "'..'"),
            ("$.a.", "expected a field name"),
            ("$.a b", "unexpected character"),
            ("$a.b c", "unexpected character"),
            ("$[", "not closed"),
            ("$['a'", "not closed"),
            ("$['a]", "not closed"),
            ("$[]", "empty brackets"),
            ("$['a\\q']", "invalid quoted name"),
            ("$x", ""), // valid: a variable
            (
                "$.a.length()",
                "functions such as 'length()' are not supported",
            ),
            ("$.a[?(@.b.length() > 1)]", "functions such as 'length()'"),
            ("$.a[?(@.b >)]", "not a valid JSONPath expression"),
            ("$.a[1:2:3:4]", "not a valid JSONPath expression"),
            ("$.a[foo]", "not a valid JSONPath expression"),
            (
                "$.a[99999999999999999999]",
                "not a valid JSONPath expression",
            ),
            ("$$$", "unexpected character"),
            ("$.a(", "functions"),
        ];
        for (path, fragment) in cases {
            let result = ReadPath::parse(path);
            if fragment.is_empty() {
                assert!(result.is_ok(), "{path}");
                continue;
            }
            let err = result.expect_err(path);
            assert_eq!(err.path, *path);
            assert!(err.message.contains(fragment), "{path}: {}", err.message);
        }
    }

    #[test]
    fn rendering_escapes_names_for_serde_json_path() {
        let input = json!({"a\nb": {"q'\\": [1, 2]}, "c": 0});
        assert_eq!(read("$['a\\nb']['q\\'\\\\'][*]", &input), Ok(json!([1, 2])));
        assert_eq!(read("$..['q\\'\\\\'][-1]", &input), Ok(json!([2])));
        assert_eq!(read("$['a\\nb']['q\\'\\\\'][-1]", &input), Ok(json!(2)));
        let pieces = tokenize("$.x-y['it\\'s'][-2].*", 1).unwrap();
        assert_eq!(render(&pieces), "$['x-y']['it\\'s'][-2][*]");
    }

    #[test]
    fn equality_is_textual() {
        assert_eq!(rp("$.a"), rp("$.a"));
        assert_ne!(rp("$.a"), rp("$['a']"));
        assert_eq!(rp("$.a").clone(), rp("$.a"));
        assert_eq!(rp("$.a[*]").to_string(), "$.a[*]");
    }

    fn refp(path: &str) -> ReferencePath {
        match ReferencePath::parse(path) {
            Ok(p) => p,
            Err(e) => panic!("{path} should parse: {e}"),
        }
    }

    #[test]
    fn reference_path_accepts() {
        for path in [
            "$",
            "$.a",
            "$.a.b",
            "$['a b']",
            "$['a b'][0]",
            "$.a[2].b",
            "$.order-id",
            "$[\"x\"].y",
            "$[0]",
        ] {
            let p = refp(path);
            assert_eq!(p.as_str(), path);
            assert_eq!(p.is_identity(), path == "$");
        }
        assert!(ReferencePath::identity().is_identity());
        assert_eq!(ReferencePath::identity(), refp("$"));
    }

    #[test]
    fn reference_path_rejects() {
        for path in [
            "$$",
            "$$.Execution.Id",
            "$var",
            "$var.a",
            "$.a[*]",
            "$.a.*",
            "$..a",
            "$.a[-1]",
            "$.a[0:1]",
            "$.a[0,1]",
            "$['a','b']",
            "$.a[?(@.b)]",
        ] {
            let err = ReferencePath::parse(path).expect_err(path);
            assert!(
                err.message.contains("ResultPath must be a reference path"),
                "{path}: {}",
                err.message
            );
        }
        for path in ["", "a", "$.", "$.a b", "$["] {
            assert!(ReferencePath::parse(path).is_err(), "{path}");
        }
    }

    fn write(path: &str, target: Value, value: Value) -> Result<Value, PathWriteError> {
        refp(path).write(target, value)
    }

    #[test]
    fn write_root_and_fields() {
        assert_eq!(write("$", json!({"a": 1}), json!("x")), Ok(json!("x")));
        assert_eq!(write("$", json!("abc"), json!(null)), Ok(Value::Null));
        assert_eq!(
            write("$.r", json!({"a": 1}), json!(2)),
            Ok(json!({"a": 1, "r": 2}))
        );
        assert_eq!(
            write("$.a", json!({"a": 1}), json!([5])),
            Ok(json!({"a": [5]}))
        );
        assert_eq!(
            write("$.a.b.c", json!({"z": 0}), json!(1)),
            Ok(json!({"z": 0, "a": {"b": {"c": 1}}}))
        );
        assert_eq!(
            write("$.a.b", json!({"a": {"k": true}}), json!(1)),
            Ok(json!({"a": {"k": true, "b": 1}}))
        );
        assert_eq!(
            write("$['x y']['p.q']", json!({}), json!(1)),
            Ok(json!({"x y": {"p.q": 1}}))
        );
        // Key order is preserved: replaced keys stay in place.
        let out = write("$.a", json!({"a": 1, "b": 2}), json!(3)).unwrap();
        assert_eq!(out.to_string(), r#"{"a":3,"b":2}"#);
    }

    #[test]
    fn write_arrays() {
        assert_eq!(
            write("$.a[1]", json!({"a": [0, 0, 0]}), json!(9)),
            Ok(json!({"a": [0, 9, 0]}))
        );
        assert_eq!(
            write("$.a[0].b", json!({"a": [{"c": 1}]}), json!(2)),
            Ok(json!({"a": [{"c": 1, "b": 2}]}))
        );
        assert_eq!(
            write("$.a[0].b.c", json!({"a": [{}]}), json!(2)),
            Ok(json!({"a": [{"b": {"c": 2}}]}))
        );
        assert_eq!(write("$[1]", json!([1, 2]), json!(0)), Ok(json!([1, 0])));
        for (path, target) in [
            ("$.a[3]", json!({"a": [0, 0, 0]})),
            ("$.a[0]", json!({"a": {"0": 1}})),
            ("$.a[0]", json!({})),
            ("$.a.b[0]", json!({})),
            ("$.a[0].b", json!({"a": []})),
            ("$[0]", json!({"a": 1})),
        ] {
            let err = write(path, target.clone(), json!(1)).expect_err(path);
            assert_eq!(err.path, path);
            assert_eq!(
                err.message,
                format!("Unable to apply ReferencePath {path} to input {target}"),
                "the target is reported unchanged"
            );
        }
    }

    #[test]
    fn deeply_nested_paths_are_refused_not_a_stack_overflow() {
        let deep = format!("$[?({}@.a{})]", "(".repeat(50_000), ")".repeat(50_000));
        let e = ReadPath::parse(&deep).unwrap_err();
        assert!(e.to_string().contains("nested more than 32 levels"), "{e}");
        // Brackets inside quoted names do not count.
        let quoted = format!("$['{}']", "[(".repeat(100));
        assert!(ReadPath::parse(&quoted).is_ok());
        let fine = "$.a[?(@.b[0] > 1 && (@.c == 2 || (@.d == 3)))]";
        assert!(ReadPath::parse(fine).is_ok(), "{fine}");
    }

    #[test]
    fn an_undoable_write_is_undone_exactly() {
        let input = json!({"a": {"b": 1, "c": [1, 2]}, "d": 4});
        for (path, value) in [
            ("$.a.b", json!("x")),
            ("$.a.new", json!("x")),
            ("$.n.m.o", json!("x")),
            ("$.a.c[1]", json!("x")),
            ("$.d", json!({"deep": [1]})),
            ("$", json!(7)),
        ] {
            let p = ReferencePath::parse(path).unwrap();
            let mut target = input.clone();
            let undo = p
                .write_in_place_undoable(&mut target, value.clone())
                .unwrap();
            assert_eq!(target, p.write(input.clone(), value).unwrap(), "{path}");
            p.undo(&mut target, undo);
            assert_eq!(target, input, "{path}");
            // Field order too.
            assert_eq!(target.to_string(), input.to_string(), "{path}");
        }
        // A write that cannot be made changes nothing.
        let p = ReferencePath::parse("$.d.e").unwrap();
        let mut target = input.clone();
        assert!(p.write_in_place_undoable(&mut target, json!(1)).is_err());
        assert_eq!(target, input);
    }

    #[test]
    fn write_into_non_objects() {
        for target in [
            json!("abc"),
            json!(1),
            json!(true),
            json!(null),
            json!([1, 2]),
        ] {
            let err = write("$.a.b", target.clone(), json!(1)).unwrap_err();
            assert_eq!(
                err.message,
                format!("Unable to apply ReferencePath $.a.b to input {target}")
            );
        }
        assert_eq!(
            write("$.a.b", json!("abc"), json!(1)).unwrap_err().message,
            "Unable to apply ReferencePath $.a.b to input \"abc\""
        );
        for inner in [json!("s"), json!(3), json!(false), json!(null), json!([])] {
            let target = json!({"a": inner});
            assert!(write("$.a.b", target, json!(1)).is_err());
        }
        let big = json!({"a": "x".repeat(1000)});
        let msg = write("$.a.b", big, json!(1)).unwrap_err().message;
        assert!(msg.len() < 300 && msg.ends_with("..."), "{msg}");
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            "[a-z '.\\-é]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-c x.'-]{0,3}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Paths built from pieces that are likely to be (almost) valid.
    fn arb_path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just(".a".to_owned()),
            Just(".b".to_owned()),
            Just("['a']".to_owned()),
            Just("[\"x y\"]".to_owned()),
            Just("[0]".to_owned()),
            Just("[-1]".to_owned()),
            Just("[1]".to_owned()),
            Just("[*]".to_owned()),
            Just(".*".to_owned()),
            Just("..a".to_owned()),
            Just("[0:2]".to_owned()),
            Just("[0,1]".to_owned()),
            Just("[?(@.a > 1)]".to_owned()),
            Just("[?@ == 'x']".to_owned()),
            "[\\[\\]().'\"*?@,:a-c0-9 \\-]{0,3}",
        ];
        let root = prop_oneof![Just("$"), Just("$$"), Just("$v"), Just("$u")];
        (root, prop::collection::vec(piece, 0..5))
            .prop_map(|(r, pieces)| format!("{r}{}", pieces.concat()))
    }

    fn prop_env(v: Value) -> TestEnv {
        let mut vars = Map::new();
        vars.insert("v".to_owned(), v.clone());
        TestEnv { context: v, vars }
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,40}") {
            let _ = ReadPath::parse(&text);
            let _ = ReferencePath::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_path_like_text(text in "[$\\[\\]().'\"*?@,:a-c0-9 \\-\\\\é]{0,24}") {
            if let Ok(p) = ReadPath::parse(&text) {
                prop_assert_eq!(p.as_str(), text.as_str());
            }
            if let Ok(p) = ReferencePath::parse(&text) {
                prop_assert_eq!(p.as_str(), text.as_str());
                // Every reference path is a definite read path.
                let read = ReadPath::parse(&text);
                prop_assert!(read.is_ok_and(|r| r.is_definite()));
            }
        }

        #[test]
        fn resolve_and_write_never_panic(path in arb_path(), input in arb_json(), ctx in arb_json()) {
            if let Ok(p) = ReadPath::parse(&path) {
                let e = prop_env(ctx);
                match p.resolve(&input, &e) {
                    Ok(v) => if !p.is_definite() { prop_assert!(v.is_array()) },
                    Err(miss) => prop_assert_eq!(miss.path, path.clone()),
                }
            }
            if let Ok(r) = ReferencePath::parse(&path)
                && let Ok(out) = r.write(input.clone(), json!("W"))
            {
                // What was written can be read back.
                let back = ReadPath::parse(&path);
                prop_assert!(back.is_ok());
                if let Ok(back) = back {
                    let e = prop_env(Value::Null);
                    let got = back.resolve(&out, &e).map(Cow::into_owned);
                    prop_assert_eq!(got, Ok(json!("W")));
                }
            }
        }
    }
}
