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

impl ReadPath {
    /// Parses a path (`$`, `$.a`, `$$.Execution.Id`, `$var.x[0]`, `$.a[?(@.b > 1)]`, ...).
    pub fn parse(text: &str) -> Result<ReadPath, PathSyntaxError> {
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
            let jp = JsonPath::parse(&rendered).map_err(|e| {
                PathSyntaxError::new(text, format!("not a valid JSONPath expression: {e}"))
            })?;
            Compiled::Indefinite(Box::new(jp))
        };
        Ok(ReadPath {
            inner: Arc::new(ReadInner {
                text: text.into(),
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
        let start: &'a Value = match &self.inner.root {
            PathRoot::Input => input,
            PathRoot::Context => env.context(),
            PathRoot::Variable(name) => env.variable(name).ok_or_else(|| PathMiss {
                path: self.inner.text.to_string(),
                message: format!("The variable '{name}' is not defined"),
            })?,
        };
        match &self.inner.compiled {
            Compiled::Definite(segs) => {
                let mut cur = start;
                for seg in segs.iter() {
                    let next = match (seg, cur) {
                        (Seg::Field(name), Value::Object(map)) => map.get(&**name),
                        (Seg::Index(i), Value::Array(items)) => index(items, *i),
                        _ => None,
                    };
                    cur = match next {
                        Some(v) => v,
                        None => return Err(self.miss(start)),
                    };
                }
                Ok(Cow::Borrowed(cur))
            }
            Compiled::Indefinite(jp) => {
                let matches: Vec<Value> = jp.query(start).iter().map(|v| (*v).clone()).collect();
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
    pub fn parse(text: &str) -> Result<ReferencePath, PathSyntaxError> {
        const MUST: &str = "ResultPath must be a reference path: '$' followed only by \
                            fields and non-negative array indexes (e.g. '$.a.b', \"$['a b'][0]\")";
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
                text: text.into(),
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
        match write_at(&mut target, &self.inner.segs, value) {
            Ok(()) => Ok(target),
            // AWS: "Unable to apply ReferencePath $.a.b to input \"abc\"".
            Err(()) => Err(PathWriteError {
                path: self.inner.text.to_string(),
                message: format!(
                    "Unable to apply ReferencePath {} to input {}",
                    self.inner.text,
                    truncated_json(&target)
                ),
            }),
        }
    }
}

/// Writes `value` at `segs` (not empty) under `cur`. Fails, without
/// modifying anything, when the path goes through a non-object or a missing
/// array element.
fn write_at(mut cur: &mut Value, segs: &[RefSeg], value: Value) -> Result<(), ()> {
    let mut i = 0;
    while let Some(seg) = segs.get(i) {
        let last = i + 1 == segs.len();
        match seg {
            RefSeg::Field(name) => {
                let Value::Object(map) = cur else {
                    return Err(());
                };
                if last {
                    map.insert(name.to_string(), value);
                    return Ok(());
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
                    return Ok(());
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
                    *slot = value;
                    return Ok(());
                }
                cur = slot;
            }
        }
        i += 1;
    }
    Ok(())
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

/// Characters that end a dot-notation field name (or are not allowed in it).
fn ends_name(c: char) -> bool {
    matches!(
        c,
        '.' | '[' | ']' | '\'' | '"' | '*' | '(' | ')' | '@' | '?' | ','
    ) || c.is_whitespace()
}

/// Parses the segments of `text` starting at byte `pos`.
fn tokenize(text: &str, mut pos: usize) -> Result<Vec<Piece<'_>>, PathSyntaxError> {
    let mut pieces = Vec::new();
    while let Some(rest) = text.get(pos..) {
        let mut chars = rest.chars();
        let Some(c) = chars.next() else { break };
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
        Some('(') => Err(PathSyntaxError::new(
            text,
            format!(
                "JSONPath functions such as '{name}()' are not supported; \
                 use an intrinsic function (e.g. States.ArrayLength) instead"
            ),
        )),
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
        let vars = match json!({"orderId": "o-1", "order": {"total": 42, "lines": [1, 2, 3]}}) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        TestEnv {
            context: json!({"Execution": {"Id": "exec-1", "Input": {"x": 7}},
                            "Map": {"Item": {"Index": 2, "Value": "v"}}}),
            vars,
        }
    }

    fn read(path: &str, input: &Value) -> Result<Value, PathMiss> {
        let p = ReadPath::parse(path).map_err(|e| PathMiss {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let e = env();
        p.resolve(input, &e).map(Cow::into_owned)
    }

    #[test]
    fn definite_basics() {
        let input = json!({"a": {"b": [10, 20, {"c": true}]}, "x y": 1, "a.b": 2});
        assert_eq!(read("$", &input), Ok(input.clone()));
        assert_eq!(read("$.a.b[0]", &input), Ok(json!(10)));
        assert_eq!(read("$.a.b[-1].c", &input), Ok(json!(true)));
        assert_eq!(read("$['x y']", &input), Ok(json!(1)));
        assert_eq!(read("$[\"a.b\"]", &input), Ok(json!(2)));
        assert_eq!(read("$$.Execution.Id", &input), Ok(json!("exec-1")));
        assert_eq!(read("$order.total", &input), Ok(json!(42)));
        assert_eq!(read("$orderId", &input), Ok(json!("o-1")));
        let miss = read("$.nope", &input).unwrap_err();
        assert!(
            miss.message
                .starts_with("The JSONPath '$.nope' could not be found in the input '{")
        );
        let unset = read("$missing.a", &input).unwrap_err();
        assert_eq!(unset.message, "The variable 'missing' is not defined");
    }

    #[test]
    fn indefinite_basics() {
        let input = json!({"items": [{"price": 5}, {"price": 15}, {"price": 25}]});
        assert_eq!(
            read("$.items[?(@.price > 10)]", &input),
            Ok(json!([{"price": 15}, {"price": 25}]))
        );
        assert_eq!(
            read("$.items[?@.price > 10].price", &input),
            Ok(json!([15, 25]))
        );
        assert_eq!(read("$.items[*].price", &input), Ok(json!([5, 15, 25])));
        assert_eq!(read("$..price", &input), Ok(json!([5, 15, 25])));
        assert_eq!(read("$.items[0:2].price", &input), Ok(json!([5, 15])));
        assert_eq!(read("$.items[0,2].price", &input), Ok(json!([5, 25])));
        assert_eq!(read("$.nothing[*]", &input), Ok(json!([])));
    }

    #[test]
    fn write_basics() {
        let w = |p: &str, t: Value, v: Value| ReferencePath::parse(p).unwrap().write(t, v);
        assert_eq!(w("$", json!({"a": 1}), json!(2)), Ok(json!(2)));
        assert_eq!(w("$.a.b", json!({}), json!(2)), Ok(json!({"a": {"b": 2}})));
        assert_eq!(
            w("$.a[1]", json!({"a": [0, 0]}), json!(2)),
            Ok(json!({"a": [0, 2]}))
        );
        let err = w("$.a.b", json!("abc"), json!(1)).unwrap_err();
        assert_eq!(
            err.message,
            "Unable to apply ReferencePath $.a.b to input \"abc\""
        );
    }
}
