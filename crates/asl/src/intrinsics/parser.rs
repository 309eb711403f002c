//! The parser of intrinsic calls: a small recursive descent over the text.
//!
//! Grammar (AWS's, as far as it is documented):
//!
//! ```text
//! call  := name ws* '(' ws* [ arg ( ws* ',' ws* arg )* ] ws* ')'
//! name  := 'States.' [A-Za-z0-9_]+
//! arg   := string | number | 'true' | 'false' | 'null' | path | call
//! string:= '\'' ( char | '\\\'' | '\\{' | '\\}' | '\\\\' )* '\''
//! path  := '$' ... up to the next ',' or ')' outside brackets and quotes
//! ```

use super::{Arg, Function, IntrinsicCall, IntrinsicSyntaxError, TemplatePiece};
use crate::path::ReadPath;

/// How deep calls may be nested. AWS documents "up to 10 intrinsic functions
/// within a field"; we bound the nesting depth (the outer call counts as 1),
/// which also keeps the recursion of this parser bounded.
pub(super) const MAX_DEPTH: usize = 10;

/// The algorithms of `States.Hash`, spelled as AWS documents them.
pub(super) const HASH_ALGORITHMS: [&str; 5] = ["MD5", "SHA-1", "SHA-256", "SHA-384", "SHA-512"];

pub(super) fn parse(text: &str) -> Result<IntrinsicCall, IntrinsicSyntaxError> {
    let mut p = Parser { text, pos: 0 };
    p.skip_ws();
    if p.peek().is_none() {
        return Err(p.error("the text is empty: expected a call such as States.Array()"));
    }
    let call = p.call(1)?;
    p.skip_ws();
    if p.pos < text.len() {
        let rest = excerpt(&text[p.pos..]);
        return Err(p.error(format!(
            "unexpected text '{rest}' after the end of the call"
        )));
    }
    Ok(call)
}

/// Up to 30 characters of `s`, for messages.
fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(30).collect();
    if s.chars().nth(30).is_some() {
        out.push_str("...");
    }
    out
}

struct Parser<'a> {
    text: &'a str,
    /// Byte offset of the next character (always on a char boundary).
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<char> {
        self.text.get(self.pos..).and_then(|s| s.chars().next())
    }

    fn rest(&self) -> &'a str {
        self.text.get(self.pos..).unwrap_or("")
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    /// 1-based character column of byte offset `at`.
    fn column(&self, at: usize) -> usize {
        self.text.get(..at).map_or(0, |s| s.chars().count()) + 1
    }

    fn error(&self, message: impl Into<String>) -> IntrinsicSyntaxError {
        self.error_at(self.pos, message)
    }

    fn error_at(&self, at: usize, message: impl Into<String>) -> IntrinsicSyntaxError {
        IntrinsicSyntaxError {
            text: self.text.to_string(),
            message: format!("at character {}: {}", self.column(at), message.into()),
        }
    }

    /// A call; the parser is at its name.
    fn call(&mut self, depth: usize) -> Result<IntrinsicCall, IntrinsicSyntaxError> {
        let start = self.pos;
        if depth > MAX_DEPTH {
            return Err(self.error(format!(
                "intrinsic functions are nested more than {MAX_DEPTH} deep"
            )));
        }
        if !self.rest().starts_with("States.") {
            return Err(self.error(format!(
                "expected an intrinsic function name starting with 'States.', found '{}'",
                excerpt(self.rest())
            )));
        }
        self.pos += "States.".len();
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.bump();
        }
        let name = &self.text[start..self.pos];
        let function = Function::from_name(name).ok_or_else(|| {
            let valid: Vec<&str> = Function::ALL.iter().map(Function::name).collect();
            self.error_at(
                start,
                format!(
                    "unknown intrinsic function '{name}'; the functions are {}",
                    valid.join(", ")
                ),
            )
        })?;
        self.skip_ws();
        if self.peek() != Some('(') {
            return Err(self.error(format!("expected '(' after {name}")));
        }
        self.bump();
        let mut args = Vec::new();
        let mut format_template = None;
        self.skip_ws();
        if self.peek() == Some(')') {
            self.bump();
        } else {
            loop {
                self.skip_ws();
                let (arg, pieces) = self.arg(depth, args.len() + 1)?;
                if function == Function::Format && args.is_empty() {
                    format_template = pieces;
                }
                args.push(arg);
                self.skip_ws();
                match self.bump() {
                    Some(',') => {
                        self.skip_ws();
                        if self.peek() == Some(')') {
                            return Err(self.error("expected an argument after ','"));
                        }
                    }
                    Some(')') => break,
                    None => {
                        return Err(self.error(format!("missing ')' to close {name}(")));
                    }
                    Some(c) => {
                        let at = self.pos - c.len_utf8();
                        return Err(self.error_at(
                            at,
                            format!(
                                "expected ',' or ')' after argument {} of {name}, found '{c}'",
                                args.len()
                            ),
                        ));
                    }
                }
            }
        }
        let call = IntrinsicCall {
            function,
            args,
            format_template,
        };
        check_call(&call).map_err(|m| self.error_at(start, m))?;
        Ok(call)
    }

    /// One argument; `n` is its 1-based position (for messages). For a
    /// string literal, also returns its template pieces.
    fn arg(
        &mut self,
        depth: usize,
        n: usize,
    ) -> Result<(Arg, Option<Vec<TemplatePiece>>), IntrinsicSyntaxError> {
        match self.peek() {
            None => Err(self.error(format!(
                "unexpected end of text: expected argument {n} or ')'"
            ))),
            Some('\'') => {
                let (s, pieces) = self.string()?;
                Ok((Arg::String(s), Some(pieces)))
            }
            Some('$') => Ok((Arg::Path(self.path()?), None)),
            Some(c) if c == '-' || c.is_ascii_digit() => Ok((Arg::Number(self.number()?), None)),
            Some(_) if self.rest().starts_with("States.") => {
                Ok((Arg::Call(self.call(depth + 1)?), None))
            }
            Some(c) if c.is_alphabetic() || c == '_' => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
                {
                    self.bump();
                }
                match &self.text[start..self.pos] {
                    "true" => Ok((Arg::Bool(true), None)),
                    "false" => Ok((Arg::Bool(false), None)),
                    "null" => Ok((Arg::Null, None)),
                    word => Err(self.error_at(
                        start,
                        format!(
                            "unexpected argument '{}': expected a string in single quotes, \
                             a number, true, false, null, a path starting with '$' or a \
                             States. call",
                            excerpt(word)
                        ),
                    )),
                }
            }
            Some('"') => Err(self.error(
                "string literals use single quotes in intrinsic functions: 'text', not \"text\"",
            )),
            Some(c) => {
                Err(self.error(format!("unexpected character '{c}': expected argument {n}")))
            }
        }
    }

    /// A single-quoted string literal. Returns the unescaped value and its
    /// pieces as a `States.Format` template.
    fn string(&mut self) -> Result<(String, Vec<TemplatePiece>), IntrinsicSyntaxError> {
        let start = self.pos;
        self.bump(); // the opening quote
        let mut value = String::new();
        let mut text = String::new();
        let mut pieces = Vec::new();
        loop {
            let Some(c) = self.bump() else {
                return Err(self.error_at(start, "unterminated string literal: missing closing '"));
            };
            match c {
                '\'' => break,
                '\\' => {
                    let esc_at = self.pos - 1;
                    match self.bump() {
                        Some(e @ ('\'' | '{' | '}' | '\\')) => {
                            value.push(e);
                            text.push(e);
                        }
                        Some(e) => {
                            return Err(self.error_at(
                                esc_at,
                                format!(
                                    "invalid escape sequence '\\{e}' in a string literal; the \
                                     escapes are \\' \\{{ \\}} and \\\\"
                                ),
                            ));
                        }
                        None => {
                            return Err(self.error_at(
                                start,
                                "unterminated string literal: missing closing '",
                            ));
                        }
                    }
                }
                '{' if self.peek() == Some('}') => {
                    self.bump();
                    value.push_str("{}");
                    if !text.is_empty() {
                        pieces.push(TemplatePiece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(TemplatePiece::Placeholder);
                }
                c => {
                    value.push(c);
                    text.push(c);
                }
            }
        }
        if !text.is_empty() {
            pieces.push(TemplatePiece::Text(text));
        }
        Ok((value, pieces))
    }

    /// A number: `-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Result<serde_json::Number, IntrinsicSyntaxError> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.'))
        {
            self.bump();
        }
        let token = &self.text[start..self.pos];
        if !is_number(token) {
            return Err(self.error_at(start, format!("invalid number '{}'", excerpt(token))));
        }
        // serde_json gives integers when they fit in 64 bits, floats
        // otherwise; it rejects leading zeros ("01") as JSON does.
        match serde_json::from_str::<serde_json::Number>(token) {
            Ok(n) => Ok(n),
            Err(e) => Err(self.error_at(start, format!("invalid number '{token}': {e}"))),
        }
    }

    /// A path: everything up to the next `,` or `)` that is not inside
    /// brackets, parentheses or quotes (filters such as
    /// `$.a[?(@.b == 'x,y')]` contain all three).
    fn path(&mut self) -> Result<ReadPath, IntrinsicSyntaxError> {
        let start = self.pos;
        let mut depth = 0usize;
        let mut quote: Option<(char, usize)> = None;
        while let Some(c) = self.peek() {
            if let Some((q, _)) = quote {
                self.bump();
                if c == '\\' {
                    self.bump();
                } else if c == q {
                    quote = None;
                }
                continue;
            }
            match c {
                '\'' | '"' => quote = Some((c, self.pos)),
                '(' | '[' => depth += 1,
                ')' | ']' if depth > 0 => depth -= 1,
                ',' | ')' if depth == 0 => break,
                _ => {}
            }
            self.bump();
        }
        if let Some((q, at)) = quote {
            return Err(self.error_at(at, format!("unterminated quote {q} in a path argument")));
        }
        let path_text = self.text[start..self.pos].trim_end();
        ReadPath::parse(path_text).map_err(|e| self.error_at(start, e.to_string()))
    }
}

fn is_number(token: &str) -> bool {
    let b = token.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let s = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > s
    };
    if b.first() == Some(&b'-') {
        i += 1;
    }
    if !digits(&mut i) {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

/// Arity and the checks on literal arguments that are certain to fail.
fn check_call(call: &IntrinsicCall) -> Result<(), String> {
    let f = call.function;
    let got = call.args.len();
    let (min, max) = f.arity();
    let plural = |n: usize| if n == 1 { "argument" } else { "arguments" };
    match max {
        Some(max) if min == max && got != min => {
            return Err(format!("{f} takes {min} {}, got {got}", plural(min)));
        }
        Some(max) if got < min || got > max => {
            return Err(format!("{f} takes {min} or {max} arguments, got {got}"));
        }
        None if got < min => {
            return Err(format!(
                "{f} takes at least {min} {}, got {got}",
                plural(min)
            ));
        }
        _ => {}
    }
    match f {
        Function::Format => match call.args.first() {
            Some(Arg::Number(_) | Arg::Bool(_) | Arg::Null) => {
                return Err(
                    "the first argument of States.Format must be a string template".to_string(),
                );
            }
            Some(Arg::String(_)) => {
                let placeholders = call.format_template.as_ref().map_or(0, |pieces| {
                    pieces
                        .iter()
                        .filter(|p| **p == TemplatePiece::Placeholder)
                        .count()
                });
                let values = got - 1;
                if placeholders != values {
                    return Err(format!(
                        "the States.Format template has {placeholders} '{{}}' placeholder{} but \
                         {values} value{} follow{}",
                        if placeholders == 1 { "" } else { "s" },
                        if values == 1 { "" } else { "s" },
                        if values == 1 { "s" } else { "" },
                    ));
                }
            }
            _ => {}
        },
        Function::Hash => match call.args.get(1) {
            Some(Arg::String(alg)) if !HASH_ALGORITHMS.contains(&alg.as_str()) => {
                return Err(format!(
                    "unknown hash algorithm '{alg}' in States.Hash; the algorithms are {}",
                    HASH_ALGORITHMS.join(", ")
                ));
            }
            Some(Arg::Number(_) | Arg::Bool(_) | Arg::Null) => {
                return Err(format!(
                    "the second argument of States.Hash must be the name of an algorithm ({})",
                    HASH_ALGORITHMS.join(", ")
                ));
            }
            _ => {}
        },
        // AWS: "Currently, Step Functions only supports the shallow merging
        // mode; therefore, you must specify the boolean value as false."
        Function::JsonMerge => match call.args.get(2) {
            Some(Arg::Bool(true)) => {
                return Err("States.JsonMerge supports only shallow merging: its third \
                            argument must be false"
                    .to_string());
            }
            Some(Arg::String(_) | Arg::Number(_) | Arg::Null) => {
                return Err(
                    "the third argument of States.JsonMerge must be the boolean false \
                            (shallow merge)"
                        .to_string(),
                );
            }
            _ => {}
        },
        _ => {}
    }
    Ok(())
}
