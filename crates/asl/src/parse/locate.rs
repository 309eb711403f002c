//! JSON pointers (RFC 6901) and where they are in the source text.
//!
//! [`Positions::index`] scans a JSON text once and records, for every
//! object member, the line and column of its key, and for every array
//! element the position of the element. [`Positions::find`] falls back to
//! the nearest ancestor, so a pointer to an absent field lands on the object
//! that lacks it.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::MAX_DEPTH;

/// The pointer of `key` inside the value at `parent`.
pub fn child(parent: &str, key: &str) -> String {
    let mut out = String::with_capacity(parent.len() + key.len() + 1);
    out.push_str(parent);
    out.push('/');
    for c in key.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
    out
}

/// The pointer of element `index` of the array at `parent`.
pub fn element(parent: &str, index: usize) -> String {
    format!("{parent}/{index}")
}

/// Splits a pointer into its parent pointer and its last reference token
/// (unescaped). The root `""` splits into `("", "")`.
pub fn split_last(pointer: &str) -> (&str, String) {
    match pointer.rfind('/') {
        Some(at) => {
            let token = &pointer[at + 1..];
            (&pointer[..at], token.replace("~1", "/").replace("~0", "~"))
        }
        None => ("", String::new()),
    }
}

/// The value of `pointer` in `map`, or of its nearest ancestor that has one.
pub fn lookup<'a, T>(map: &'a HashMap<String, T>, pointer: &str) -> Option<&'a T> {
    let mut current = pointer;
    loop {
        if let Some(found) = map.get(current) {
            return Some(found);
        }
        match current.rfind('/') {
            Some(at) => current = &current[..at],
            None => return None,
        }
    }
}

/// Every pointer of `value` (down to [`MAX_DEPTH`]) with its rank in
/// document order (pre-order; object members in their stored order, which
/// is the text's order with serde_json's `preserve_order`).
pub fn document_order(value: &Value) -> HashMap<String, usize> {
    let mut order = HashMap::new();
    let mut stack: Vec<(String, &Value, usize)> = vec![(String::new(), value, 0)];
    while let Some((pointer, value, depth)) = stack.pop() {
        let rank = order.len();
        if depth < MAX_DEPTH {
            match value {
                Value::Object(map) => {
                    for (key, child_value) in map.iter().rev() {
                        stack.push((child(&pointer, key), child_value, depth + 1));
                    }
                }
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate().rev() {
                        stack.push((element(&pointer, i), item, depth + 1));
                    }
                }
                _ => {}
            }
        }
        order.insert(pointer, rank);
    }
    order
}

/// Line and column (1-based, columns counted in characters) of every
/// pointer of a JSON text.
#[derive(Debug, Clone, Default)]
pub struct Positions {
    map: HashMap<String, (usize, usize)>,
    duplicates: Vec<String>,
}

impl Positions {
    /// Scans `text` once. Text that is not valid JSON is indexed as far as
    /// it goes; nothing here panics or recurses deeper than [`MAX_DEPTH`].
    pub fn index(text: &str) -> Positions {
        let mut scanner = Scanner {
            bytes: text.as_bytes(),
            at: 0,
            line: 1,
            column: 1,
            out: Positions::default(),
        };
        scanner.skip_ws();
        let start = scanner.position();
        scanner.out.map.insert(String::new(), start);
        // A malformed text simply stops the scan early.
        let _ = scanner.value("", 0);
        scanner.out
    }

    /// The position of `pointer`, or of its nearest ancestor in the text.
    pub fn find(&self, pointer: &str) -> Option<(usize, usize)> {
        lookup(&self.map, pointer).copied()
    }

    /// The position of exactly `pointer`, if the text has it.
    pub fn get(&self, pointer: &str) -> Option<(usize, usize)> {
        self.map.get(pointer).copied()
    }

    /// Pointers of object members whose key already appeared in the same
    /// object (the later occurrences), in text order.
    pub fn duplicates(&self) -> &[String] {
        &self.duplicates
    }
}

/// The scan stopped: the text is not valid JSON at this point.
struct Malformed;

struct Scanner<'t> {
    bytes: &'t [u8],
    at: usize,
    line: usize,
    column: usize,
    out: Positions,
}

impl Scanner<'_> {
    fn position(&self) -> (usize, usize) {
        (self.line, self.column)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        if b == b'\n' {
            self.line += 1;
            self.column = 1;
        } else if b & 0xC0 != 0x80 {
            // Count characters, not UTF-8 continuation bytes.
            self.column += 1;
        }
        Some(b)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.bump();
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), Malformed> {
        if self.bump() == Some(byte) {
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    fn value(&mut self, pointer: &str, depth: usize) -> Result<(), Malformed> {
        self.skip_ws();
        match self.peek().ok_or(Malformed)? {
            b'{' => {
                if depth >= MAX_DEPTH {
                    return Err(Malformed);
                }
                self.object(pointer, depth + 1)
            }
            b'[' => {
                if depth >= MAX_DEPTH {
                    return Err(Malformed);
                }
                self.array(pointer, depth + 1)
            }
            b'"' => self.string().map(|_| ()),
            _ => {
                // A number or a literal: skip to the next delimiter.
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.bump();
                }
                Ok(())
            }
        }
    }

    fn object(&mut self, pointer: &str, depth: usize) -> Result<(), Malformed> {
        self.expect(b'{')?;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.bump();
            return Ok(());
        }
        let mut seen: HashSet<String> = HashSet::new();
        loop {
            self.skip_ws();
            let position = self.position();
            let key = self.string()?;
            let member = child(pointer, &key);
            if !seen.insert(key) {
                self.out.duplicates.push(member.clone());
            }
            self.out.map.insert(member.clone(), position);
            self.skip_ws();
            self.expect(b':')?;
            self.value(&member, depth)?;
            self.skip_ws();
            match self.bump() {
                Some(b',') => continue,
                Some(b'}') => return Ok(()),
                _ => return Err(Malformed),
            }
        }
    }

    fn array(&mut self, pointer: &str, depth: usize) -> Result<(), Malformed> {
        self.expect(b'[')?;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.bump();
            return Ok(());
        }
        let mut index = 0;
        loop {
            self.skip_ws();
            let item = element(pointer, index);
            self.out.map.insert(item.clone(), self.position());
            self.value(&item, depth)?;
            index += 1;
            self.skip_ws();
            match self.bump() {
                Some(b',') => continue,
                Some(b']') => return Ok(()),
                _ => return Err(Malformed),
            }
        }
    }

    /// Reads a string literal and returns it decoded.
    fn string(&mut self) -> Result<String, Malformed> {
        self.expect(b'"')?;
        let mut raw: Vec<u8> = Vec::new();
        loop {
            match self.bump().ok_or(Malformed)? {
                b'"' => break,
                b'\\' => match self.bump().ok_or(Malformed)? {
                    b'"' => raw.push(b'"'),
                    b'\\' => raw.push(b'\\'),
                    b'/' => raw.push(b'/'),
                    b'b' => raw.push(0x08),
                    b'f' => raw.push(0x0C),
                    b'n' => raw.push(b'\n'),
                    b'r' => raw.push(b'\r'),
                    b't' => raw.push(b'\t'),
                    b'u' => {
                        let c = self.unicode_escape()?;
                        let mut buf = [0u8; 4];
                        raw.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    _ => return Err(Malformed),
                },
                b => raw.push(b),
            }
        }
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }

    fn hex4(&mut self) -> Result<u32, Malformed> {
        let mut n = 0u32;
        for _ in 0..4 {
            let digit = char::from(self.bump().ok_or(Malformed)?)
                .to_digit(16)
                .ok_or(Malformed)?;
            n = n * 16 + digit;
        }
        Ok(n)
    }

    /// After `\u`: one code point, joining a surrogate pair.
    fn unicode_escape(&mut self) -> Result<char, Malformed> {
        let first = self.hex4()?;
        if (0xD800..0xDC00).contains(&first) {
            if self.peek() == Some(b'\\') && self.bytes.get(self.at + 1) == Some(&b'u') {
                self.bump();
                self.bump();
                let second = self.hex4()?;
                if (0xDC00..0xE000).contains(&second) {
                    let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                    return Ok(char::from_u32(code).unwrap_or('\u{FFFD}'));
                }
            }
            return Ok('\u{FFFD}');
        }
        Ok(char::from_u32(first).unwrap_or('\u{FFFD}'))
    }
}
