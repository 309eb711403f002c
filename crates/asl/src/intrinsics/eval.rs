//! Evaluation of intrinsic calls, with AWS Step Functions' behaviour.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::Digest as _;

use super::parser::HASH_ALGORITHMS;
use super::{Arg, Function, IntrinsicCall, IntrinsicFailure, TemplatePiece};
use crate::path::Env;
use crate::rand::{RandomSource, SplitMix64};

/// AWS: Base64Encode, Base64Decode and Hash take "up to 10,000 characters".
const MAX_INPUT_CHARS: usize = 10_000;
/// AWS: "The newly generated array can't contain more than 1000 items."
const MAX_RANGE_ITEMS: i128 = 1000;

pub(super) fn eval(
    call: &IntrinsicCall,
    input: &Value,
    env: &dyn Env,
    rng: &mut dyn RandomSource,
) -> Result<Value, IntrinsicFailure> {
    let f = call.function;
    // Arguments are evaluated left to right, so random draws of nested
    // calls happen in the order they are written.
    let mut args = Vec::with_capacity(call.args.len());
    for (i, arg) in call.args.iter().enumerate() {
        args.push(eval_arg(f, i + 1, arg, input, env, rng)?);
    }
    let args = Args { f, values: args };
    match f {
        Function::Format => format(call, &args),
        Function::StringToJson => string_to_json(&args),
        Function::JsonToString => {
            let v = args.get(1)?;
            serde_json::to_string(v)
                .map(Value::String)
                .map_err(|e| fail(f, format!("cannot serialize the value: {e}")))
        }
        Function::Array => Ok(Value::Array(args.values)),
        Function::ArrayPartition => array_partition(&args),
        Function::ArrayContains => {
            let array = args.array(1)?;
            let wanted = args.get(2)?;
            Ok(Value::Bool(array.contains(wanted)))
        }
        Function::ArrayRange => array_range(&args),
        Function::ArrayGetItem => array_get_item(&args),
        Function::ArrayLength => Ok(Value::from(args.array(1)?.len())),
        Function::ArrayUnique => array_unique(&args),
        Function::Base64Encode => {
            let s = args.string(1)?;
            check_length(f, s)?;
            Ok(Value::String(
                base64::engine::general_purpose::STANDARD.encode(s.as_bytes()),
            ))
        }
        Function::Base64Decode => base64_decode(&args),
        Function::Hash => hash(&args),
        Function::JsonMerge => json_merge(&args),
        Function::MathRandom => math_random(&args, rng),
        Function::MathAdd => math_add(&args),
        Function::StringSplit => string_split(&args),
        Function::Uuid => Ok(Value::String(uuid_v4(rng))),
    }
}

fn fail(f: Function, message: impl std::fmt::Display) -> IntrinsicFailure {
    IntrinsicFailure {
        message: format!("{f}: {message}"),
    }
}

fn eval_arg(
    f: Function,
    n: usize,
    arg: &Arg,
    input: &Value,
    env: &dyn Env,
    rng: &mut dyn RandomSource,
) -> Result<Value, IntrinsicFailure> {
    Ok(match arg {
        Arg::String(s) => Value::String(s.clone()),
        Arg::Number(x) => Value::Number(x.clone()),
        Arg::Bool(b) => Value::Bool(*b),
        Arg::Null => Value::Null,
        Arg::Path(path) => path
            .resolve(input, env)
            .map(Cow::into_owned)
            .map_err(|miss| {
                fail(
                    f,
                    format!("argument {n} ({}): {}", path.as_str(), miss.message),
                )
            })?,
        Arg::Call(call) => call.eval(input, env, rng)?,
    })
}

/// A short description of a value for messages: `a string ("abc")`.
fn describe(v: &Value) -> String {
    let kind = match v {
        Value::Null => return "null".to_string(),
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    let text = v.to_string();
    let short: String = text.chars().take(60).collect();
    if short.len() < text.len() {
        format!("{kind} ({short}...)")
    } else {
        format!("{kind} ({short})")
    }
}

/// The evaluated arguments of one call, with typed accessors (1-based).
struct Args {
    f: Function,
    values: Vec<Value>,
}

impl Args {
    fn get(&self, n: usize) -> Result<&Value, IntrinsicFailure> {
        n.checked_sub(1)
            .and_then(|i| self.values.get(i))
            .ok_or_else(|| fail(self.f, format!("argument {n} is missing")))
    }

    fn wrong_type(&self, n: usize, expected: &str, v: &Value) -> IntrinsicFailure {
        fail(
            self.f,
            format!("argument {n} must be {expected}, got {}", describe(v)),
        )
    }

    fn string(&self, n: usize) -> Result<&str, IntrinsicFailure> {
        match self.get(n)? {
            Value::String(s) => Ok(s),
            v => Err(self.wrong_type(n, "a string", v)),
        }
    }

    fn array(&self, n: usize) -> Result<&Vec<Value>, IntrinsicFailure> {
        match self.get(n)? {
            Value::Array(a) => Ok(a),
            v => Err(self.wrong_type(n, "an array", v)),
        }
    }

    fn object(&self, n: usize) -> Result<&Map<String, Value>, IntrinsicFailure> {
        match self.get(n)? {
            Value::Object(o) => Ok(o),
            v => Err(self.wrong_type(n, "a JSON object", v)),
        }
    }

    /// An integer argument; a number with a fractional part is refused, a
    /// float without one (`2.0`) is accepted.
    fn integer(&self, n: usize) -> Result<i64, IntrinsicFailure> {
        let v = self.get(n)?;
        let Value::Number(x) = v else {
            return Err(self.wrong_type(n, "an integer", v));
        };
        if let Some(i) = x.as_i64() {
            return Ok(i);
        }
        match x.as_f64() {
            Some(fl) if fl.fract() == 0.0 && in_i64_range(fl) => Ok(fl as i64),
            Some(fl) if fl.fract() == 0.0 || !fl.is_finite() => Err(fail(
                self.f,
                format!("argument {n} ({x}) is out of the integer range"),
            )),
            _ => Err(self.wrong_type(n, "an integer", v)),
        }
    }

    /// An integer argument where AWS rounds non-integers "to the nearest
    /// integer" (MathAdd, MathRandom). AWS is written in Java and rounds as
    /// `Math.round` does (halves towards positive infinity): AWS returns 3
    /// for `MathAdd(1.49, 1.5)` and -2 for `MathAdd(-1.49, -1.5)`.
    fn rounded_integer(&self, n: usize) -> Result<i64, IntrinsicFailure> {
        let v = self.get(n)?;
        let Value::Number(x) = v else {
            return Err(self.wrong_type(n, "an integer", v));
        };
        if let Some(i) = x.as_i64() {
            return Ok(i);
        }
        x.as_f64().and_then(java_round).ok_or_else(|| {
            fail(
                self.f,
                format!("argument {n} ({x}) is out of the integer range"),
            )
        })
    }
}

fn in_i64_range(x: f64) -> bool {
    // 2^63 is exactly representable; i64::MAX is not.
    x.is_finite() && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&x)
}

/// Java's `Math.round(double)`: the closest integer, halves rounded up.
fn java_round(x: f64) -> Option<i64> {
    if !x.is_finite() {
        return None;
    }
    let mut r = x.round(); // halves away from zero
    if x < 0.0 && x - x.trunc() == -0.5 {
        r += 1.0;
    }
    in_i64_range(r).then_some(r as i64)
}

fn check_length(f: Function, s: &str) -> Result<(), IntrinsicFailure> {
    // Characters as AWS (Java) counts them: UTF-16 code units, so a
    // character outside the Basic Multilingual Plane (an emoji) counts
    // twice. Cheap bound first: a string of at most N bytes has at most N
    // code units.
    if s.len() > MAX_INPUT_CHARS {
        let units = s.encode_utf16().count();
        if units > MAX_INPUT_CHARS {
            return Err(fail(
                f,
                format!("the input has {units} characters; the maximum is {MAX_INPUT_CHARS}"),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- Format

fn format(call: &IntrinsicCall, args: &Args) -> Result<Value, IntrinsicFailure> {
    let f = Function::Format;
    let pieces: Cow<'_, [TemplatePiece]> = match &call.format_template {
        Some(pieces) => Cow::Borrowed(pieces),
        // A template read from a path is used as it is: each `{}` is a
        // placeholder (escapes only exist in literals of the call text).
        None => Cow::Owned(split_placeholders(args.string(1)?)),
    };
    let values = args.values.get(1..).unwrap_or_default();
    let placeholders = pieces
        .iter()
        .filter(|p| **p == TemplatePiece::Placeholder)
        .count();
    if placeholders != values.len() {
        return Err(fail(
            f,
            format!(
                "the template has {placeholders} '{{}}' placeholders but {} values were given",
                values.len()
            ),
        ));
    }
    let mut out = String::new();
    let mut values = values.iter();
    for piece in pieces.iter() {
        match piece {
            TemplatePiece::Text(t) => out.push_str(t),
            TemplatePiece::Placeholder => {
                if let Some(v) = values.next() {
                    format_value(v, &mut out);
                }
            }
        }
    }
    Ok(Value::String(out))
}

fn split_placeholders(template: &str) -> Vec<TemplatePiece> {
    let mut pieces = Vec::new();
    let mut parts = template.split("{}").peekable();
    while let Some(part) = parts.next() {
        if !part.is_empty() {
            pieces.push(TemplatePiece::Text(part.to_string()));
        }
        if parts.peek().is_some() {
            pieces.push(TemplatePiece::Placeholder);
        }
    }
    pieces
}

/// How AWS writes a value into a `States.Format` template: strings without
/// quotes, numbers, booleans and `null` as JSON text. The specification says
/// arrays and objects must not be used, but AWS accepts them and writes them
/// as Java's `toString` does: `{Arg1=1, Arg2=[]}` for `{"Arg1": 1, "Arg2": []}`
/// (recorded against AWS by LocalStack's test suite); we do the same.
fn format_value(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Null => out.push_str("null"),
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                format_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(k);
                out.push('=');
                format_value(item, out);
            }
            out.push('}');
        }
    }
}

// ------------------------------------------------------------------ JSON

fn string_to_json(args: &Args) -> Result<Value, IntrinsicFailure> {
    let s = args.string(1)?;
    // AWS returns null for an empty or blank string (recorded by LocalStack).
    if s.trim().is_empty() {
        return Ok(Value::Null);
    }
    let mut v = serde_json::from_str(s).map_err(|e| {
        fail(
            Function::StringToJson,
            format!("the string is not valid JSON ({e})"),
        )
    })?;
    negative_zero_to_integer(&mut v);
    Ok(v)
}

/// serde_json reads `-0` as the float `-0.0`; AWS (Jackson) reads it as the
/// integer 0 (recorded by LocalStack: `StringToJson('-0')` is `0`). We turn
/// every `-0.0` into `0`, which also covers the rare `-0.0` text.
fn negative_zero_to_integer(v: &mut Value) {
    match v {
        Value::Number(n) if n.as_f64().is_some_and(|f| f == 0.0 && f.is_sign_negative()) => {
            *v = Value::from(0);
        }
        Value::Array(items) => items.iter_mut().for_each(negative_zero_to_integer),
        Value::Object(map) => map.values_mut().for_each(negative_zero_to_integer),
        _ => {}
    }
}

fn json_merge(args: &Args) -> Result<Value, IntrinsicFailure> {
    let f = Function::JsonMerge;
    let left = args.object(1)?;
    let right = args.object(2)?;
    match args.get(3)? {
        Value::Bool(false) => {}
        // AWS: "Currently, Step Functions only supports the shallow merging
        // mode; therefore, you must specify the boolean value as false."
        Value::Bool(true) => {
            return Err(fail(
                f,
                "only shallow merging is supported: the third argument must be false",
            ));
        }
        v => return Err(args.wrong_type(3, "the boolean false", v)),
    }
    // Shallow: a key of the second object replaces the same key of the
    // first (keeping the first one's position); nested objects are not
    // merged.
    let mut merged = left.clone();
    for (k, v) in right {
        merged.insert(k.clone(), v.clone());
    }
    Ok(Value::Object(merged))
}

// ---------------------------------------------------------------- Arrays

fn array_partition(args: &Args) -> Result<Value, IntrinsicFailure> {
    let array = args.array(1)?;
    let size = args.integer(2)?;
    let size = usize::try_from(size)
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| {
            fail(
                Function::ArrayPartition,
                format!("the chunk size must be a positive integer, got {size}"),
            )
        })?;
    Ok(Value::Array(
        array
            .chunks(size)
            .map(|c| Value::Array(c.to_vec()))
            .collect(),
    ))
}

fn array_range(args: &Args) -> Result<Value, IntrinsicFailure> {
    let f = Function::ArrayRange;
    let start = i128::from(args.integer(1)?);
    let end = i128::from(args.integer(2)?);
    let step = i128::from(args.integer(3)?);
    if step == 0 {
        return Err(fail(f, "the step (argument 3) must not be 0"));
    }
    // The end is included when the steps land on it: (0, 10, 3) gives
    // [0, 3, 6, 9]. A step that moves away from the end gives [].
    let count = if (step > 0 && start > end) || (step < 0 && start < end) {
        0
    } else {
        (end - start) / step + 1
    };
    if count > MAX_RANGE_ITEMS {
        return Err(fail(
            f,
            format!("the range would have {count} items; the maximum is {MAX_RANGE_ITEMS}"),
        ));
    }
    let items = (0..count)
        .map(|i| start + i * step)
        .filter_map(|x| i64::try_from(x).ok())
        .map(Value::from)
        .collect();
    Ok(Value::Array(items))
}

fn array_get_item(args: &Args) -> Result<Value, IntrinsicFailure> {
    let array = args.array(1)?;
    let index = args.integer(2)?;
    usize::try_from(index)
        .ok()
        .and_then(|i| array.get(i))
        .cloned()
        .ok_or_else(|| {
            fail(
                Function::ArrayGetItem,
                format!(
                    "index {index} is out of range for an array of {} items",
                    array.len()
                ),
            )
        })
}

fn array_unique(args: &Args) -> Result<Value, IntrinsicFailure> {
    let array = args.array(1)?;
    // Keep the first occurrence of each value, in order. Values are compared
    // as JSON values (object key order does not matter), through a
    // canonical text so that large arrays stay linear.
    let mut seen = HashSet::with_capacity(array.len());
    let mut out = Vec::new();
    for item in array {
        let mut key = String::new();
        canonical(item, &mut key);
        if seen.insert(key) {
            out.push(item.clone());
        }
    }
    Ok(Value::Array(out))
}

/// JSON text with object keys sorted: equal values give equal texts.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Array(items) => {
            out.push('[');
            for item in items {
                canonical(item, out);
                out.push(',');
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for k in keys {
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(item) = map.get(k) {
                    canonical(item, out);
                }
                out.push(',');
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

// ------------------------------------------------------ Encoding, hashing

fn base64_decode(args: &Args) -> Result<Value, IntrinsicFailure> {
    let f = Function::Base64Decode;
    let s = args.string(1)?;
    check_length(f, s)?;
    // Like Java's basic decoder (AWS runs on Java): the standard alphabet,
    // with the trailing '=' padding accepted but not required.
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine
        .decode(s.as_bytes())
        .map_err(|e| fail(f, format!("the input is not valid Base64 ({e})")))?;
    String::from_utf8(bytes)
        .map(Value::String)
        .map_err(|_| fail(f, "the decoded data is not valid UTF-8 text"))
}

fn hash(args: &Args) -> Result<Value, IntrinsicFailure> {
    let f = Function::Hash;
    let data = args.get(1)?;
    let algorithm = args.string(2)?;
    // AWS documents the data as a string; we hash a non-string value as its
    // compact JSON text (null is refused, as there is no data to hash).
    let text: Cow<'_, str> = match data {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => return Err(args.wrong_type(1, "a string", data)),
        other => Cow::Owned(other.to_string()),
    };
    check_length(f, &text)?;
    let bytes = text.as_bytes();
    let digest: Vec<u8> = match algorithm {
        "MD5" => md5::Md5::digest(bytes).to_vec(),
        "SHA-1" => sha1::Sha1::digest(bytes).to_vec(),
        "SHA-256" => sha2::Sha256::digest(bytes).to_vec(),
        "SHA-384" => sha2::Sha384::digest(bytes).to_vec(),
        "SHA-512" => sha2::Sha512::digest(bytes).to_vec(),
        other => {
            return Err(fail(
                f,
                format!(
                    "unknown hash algorithm '{other}'; the algorithms are {}",
                    HASH_ALGORITHMS.join(", ")
                ),
            ));
        }
    };
    let mut hex = String::with_capacity(digest.len() * 2);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    Ok(Value::String(hex))
}

// ------------------------------------------------------------------ Math

fn math_random(args: &Args, rng: &mut dyn RandomSource) -> Result<Value, IntrinsicFailure> {
    let f = Function::MathRandom;
    // AWS rounds non-integer bounds to the nearest integer.
    let start = args.rounded_integer(1)?;
    let end = args.rounded_integer(2)?;
    if start >= end {
        return Err(fail(
            f,
            format!("the start ({start}) must be less than the end ({end})"),
        ));
    }
    // AWS: "If you use this function with the same seed value, it returns
    // an identical number."
    let draw = if args.values.len() >= 3 {
        let seed = args.rounded_integer(3)?;
        SplitMix64::new(seed as u64).next_u64()
    } else {
        rng.next_u64()
    };
    // A number in [start, end): scale the 64-bit draw onto the span.
    let span = (i128::from(end) - i128::from(start)) as u128;
    let offset = (u128::from(draw) * span) >> 64;
    let value = i128::from(start) + offset as i128;
    i64::try_from(value)
        .map(Value::from)
        .map_err(|_| fail(f, "the result is out of the integer range"))
}

fn math_add(args: &Args) -> Result<Value, IntrinsicFailure> {
    let f = Function::MathAdd;
    let mut sum: i64 = 0;
    for n in 1..=2 {
        // AWS rounds non-integers to the nearest integer and documents the
        // values as integers from -2147483648 to 2147483647 (Java `int`).
        let x = args.rounded_integer(n)?;
        if i32::try_from(x).is_err() {
            return Err(fail(
                f,
                format!(
                    "argument {n} ({x}) is outside the range -2147483648..2147483647 that AWS \
                     accepts"
                ),
            ));
        }
        sum += x;
    }
    Ok(Value::from(sum))
}

// --------------------------------------------------------------- Strings

fn string_split(args: &Args) -> Result<Value, IntrinsicFailure> {
    let s = args.string(1)?;
    let delimiters = args.string(2)?;
    // Every character of the second argument is a separator, and empty
    // parts are dropped (AWS behaves like Java's StringTokenizer:
    // `StringSplit('This.is+a,test=string', '.+,=')` gives five words, and
    // `StringSplit('a,,b,', ',')` gives ["a", "b"]).
    // A set of the separators (looked up once per character of `s`, not
    // searched for: both strings may be long).
    let delimiters: std::collections::HashSet<char> = delimiters.chars().collect();
    let parts = s
        .split(|c| delimiters.contains(&c))
        .filter(|p| !p.is_empty())
        .map(|p| Value::String(p.to_string()))
        .collect();
    Ok(Value::Array(parts))
}

/// A version 4 UUID from two draws: lowercase `8-4-4-4-12` hex, the version
/// nibble set to 4 and the variant bits to `10`.
fn uuid_v4(rng: &mut dyn RandomSource) -> String {
    let hi = (rng.next_u64() & !0xF000) | 0x4000;
    let lo = (rng.next_u64() & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}
