//! Evaluation of Choice rules: every comparison operator, its `...Path`
//! twin, the type tests, `And`/`Or`/`Not`, and `StringMatches` patterns.
//!
//! Semantics follow AWS Step Functions (JSONPath mode):
//! - a `Variable` that selects nothing makes every operator but `IsPresent`
//!   fail with `States.Runtime` ("Invalid path '$.x': The choice state's
//!   condition path references an invalid value."), as AWS does; the same
//!   goes for a `...Path` operand that selects nothing;
//! - a type mismatch (a number given to `StringEquals`, a string that is not
//!   a timestamp given to `TimestampLessThan`, ...) makes the comparison
//!   false, not an error;
//! - strings compare by UTF-16 code units, as AWS (Java's `String.compareTo`)
//!   does, numbers by value (`1` equals `1.0`), timestamps by instant
//!   (`2016-03-14T01:59:00Z` equals `2016-03-14T02:59:00+01:00`).

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Number, Value};

use crate::model::{Comparison, Condition, Operand, Operator};
use crate::path::{Env, ReadPath};

/// A condition that could not be evaluated (`States.Runtime` in AWS): the
/// `Variable` or a `...Path` operand selects nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ChoiceError {
    /// AWS-like message, e.g. "Invalid path '$.x': The choice state's condition path references an invalid value."
    pub message: String,
}

impl ChoiceError {
    /// The error AWS raises when a condition path selects nothing.
    fn invalid_path(path: &ReadPath) -> ChoiceError {
        ChoiceError {
            message: format!(
                "Invalid path '{}': The choice state's condition path references an invalid value.",
                path.as_str()
            ),
        }
    }
}

/// Evaluates a condition against the effective input of a Choice state.
///
/// `And` and `Or` evaluate their conditions in order and stop at the first
/// one that decides the result, so a later condition on a missing field is
/// never evaluated (the usual `IsPresent` guard pattern works).
pub fn evaluate(condition: &Condition, input: &Value, env: &dyn Env) -> Result<bool, ChoiceError> {
    match condition {
        Condition::And(conditions) => {
            for condition in conditions {
                if !evaluate(condition, input, env)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Condition::Or(conditions) => {
            for condition in conditions {
                if evaluate(condition, input, env)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Condition::Not(condition) => Ok(!evaluate(condition, input, env)?),
        Condition::Compare(comparison) => compare(comparison, input, env),
    }
}

/// Evaluates one `Variable` comparison.
fn compare(comparison: &Comparison, input: &Value, env: &dyn Env) -> Result<bool, ChoiceError> {
    let variable = comparison.variable.resolve(input, env).ok();
    let operand = match &comparison.operand {
        Operand::Literal(value) => Cow::Borrowed(value),
        Operand::Path(path) => {
            // Resolved only once the Variable is known to exist (or for
            // IsPresent), so the error names the Variable first, as AWS does.
            if variable.is_none() && comparison.operator != Operator::IsPresent {
                return Err(ChoiceError::invalid_path(&comparison.variable));
            }
            path.resolve(input, env)
                .map_err(|_| ChoiceError::invalid_path(path))?
        }
    };
    if comparison.operator == Operator::IsPresent {
        // The only operator that accepts a Variable selecting nothing.
        let expected = boolean_operand(comparison.operator, &operand)?;
        return Ok(variable.is_some() == expected);
    }
    let Some(value) = variable else {
        return Err(ChoiceError::invalid_path(&comparison.variable));
    };
    apply(comparison.operator, &value, &operand)
}

/// The boolean operand of a type test (`"IsNumeric": false`).
fn boolean_operand(operator: Operator, operand: &Value) -> Result<bool, ChoiceError> {
    operand.as_bool().ok_or_else(|| ChoiceError {
        message: format!(
            "The choice state's {} operand must be a boolean, got {operand}.",
            operator.name()
        ),
    })
}

/// The relation a comparison operator tests.
#[derive(Clone, Copy)]
enum Relation {
    Eq,
    Lt,
    Gt,
    Le,
    Ge,
}

impl Relation {
    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Relation::Eq => ordering == Ordering::Equal,
            Relation::Lt => ordering == Ordering::Less,
            Relation::Gt => ordering == Ordering::Greater,
            Relation::Le => ordering != Ordering::Greater,
            Relation::Ge => ordering != Ordering::Less,
        }
    }
}

/// Applies an operator to the value selected by `Variable` and the operand
/// (a literal or the value selected by the `...Path` operand).
fn apply(operator: Operator, value: &Value, operand: &Value) -> Result<bool, ChoiceError> {
    use Operator as Op;
    let result = match operator {
        Op::StringEquals => strings(value, operand, Relation::Eq),
        Op::StringLessThan => strings(value, operand, Relation::Lt),
        Op::StringGreaterThan => strings(value, operand, Relation::Gt),
        Op::StringLessThanEquals => strings(value, operand, Relation::Le),
        Op::StringGreaterThanEquals => strings(value, operand, Relation::Ge),
        Op::StringMatches => match (value, operand) {
            (Value::String(text), Value::String(pattern)) => string_matches(pattern, text),
            _ => false,
        },
        Op::NumericEquals => numbers(value, operand, Relation::Eq),
        Op::NumericLessThan => numbers(value, operand, Relation::Lt),
        Op::NumericGreaterThan => numbers(value, operand, Relation::Gt),
        Op::NumericLessThanEquals => numbers(value, operand, Relation::Le),
        Op::NumericGreaterThanEquals => numbers(value, operand, Relation::Ge),
        Op::BooleanEquals => match (value, operand) {
            (Value::Bool(a), Value::Bool(b)) => a == b,
            _ => false,
        },
        Op::TimestampEquals => timestamps(value, operand, Relation::Eq),
        Op::TimestampLessThan => timestamps(value, operand, Relation::Lt),
        Op::TimestampGreaterThan => timestamps(value, operand, Relation::Gt),
        Op::TimestampLessThanEquals => timestamps(value, operand, Relation::Le),
        Op::TimestampGreaterThanEquals => timestamps(value, operand, Relation::Ge),
        Op::IsNull
        | Op::IsPresent
        | Op::IsNumeric
        | Op::IsString
        | Op::IsBoolean
        | Op::IsTimestamp => {
            let expected = boolean_operand(operator, operand)?;
            let actual = match operator {
                Op::IsNull => value.is_null(),
                Op::IsNumeric => value.is_number(),
                Op::IsString => value.is_string(),
                Op::IsBoolean => value.is_boolean(),
                Op::IsTimestamp => value.as_str().and_then(parse_timestamp).is_some(),
                // A Variable that resolved is present (`compare` handles
                // the absent case before getting here).
                _ => true,
            };
            actual == expected
        }
    };
    Ok(result)
}

/// String comparison; false unless both sides are strings.
///
/// AWS (Java) orders strings by UTF-16 code units, Rust's `str` by code
/// points. The two orders differ only between a supplementary-plane
/// character (U+10000 and up, two UTF-16 surrogates 0xD800..0xDFFF) and a
/// character in U+E000..U+FFFF: Java puts the supplementary character first.
/// We compare UTF-16 code units, like AWS.
fn strings(value: &Value, operand: &Value, relation: Relation) -> bool {
    match (value, operand) {
        (Value::String(a), Value::String(b)) => relation.holds(compare_utf16(a, b)),
        _ => false,
    }
}

/// Orders two strings by their UTF-16 code units, as Java does.
fn compare_utf16(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// Numeric comparison; false unless both sides are numbers.
fn numbers(value: &Value, operand: &Value, relation: Relation) -> bool {
    match (value, operand) {
        (Value::Number(a), Value::Number(b)) => {
            compare_numbers(a, b).is_some_and(|ordering| relation.holds(ordering))
        }
        _ => false,
    }
}

/// Compares two JSON numbers: exactly when both are integers (i64 or u64),
/// as `f64` otherwise (so `1` equals `1.0`).
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    fn integer(n: &Number) -> Option<i128> {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    }
    if let (Some(a), Some(b)) = (integer(a), integer(b)) {
        return Some(a.cmp(&b));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

/// Timestamp comparison; false unless both sides are strings that parse as
/// timestamps (AWS: "if either is not a timestamp, the comparison is false").
fn timestamps(value: &Value, operand: &Value, relation: Relation) -> bool {
    let (Some(a), Some(b)) = (
        value.as_str().and_then(parse_timestamp),
        operand.as_str().and_then(parse_timestamp),
    ) else {
        return false;
    };
    relation.holds(a.cmp(&b))
}

/// One element of a compiled `StringMatches` pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Glob {
    /// `*`: any run of characters, possibly empty.
    Star,
    /// A character matched literally.
    Char(char),
}

/// Compiles a `StringMatches` pattern. `\*` is a literal star, `\\` a
/// literal backslash; a backslash before any other character, or at the
/// end, stands for itself. Runs of stars collapse into one.
fn compile_pattern(pattern: &str) -> Vec<Glob> {
    let mut globs = Vec::with_capacity(pattern.len());
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                if globs.last() != Some(&Glob::Star) {
                    globs.push(Glob::Star);
                }
            }
            '\\' => match chars.peek() {
                Some(&next @ ('*' | '\\')) => {
                    chars.next();
                    globs.push(Glob::Char(next));
                }
                _ => globs.push(Glob::Char('\\')),
            },
            other => globs.push(Glob::Char(other)),
        }
    }
    globs
}

/// `StringMatches`: `*` matches any run of characters (possibly empty);
/// `\*` is a literal star and `\\` a literal backslash.
///
/// Every other character, including `?`, matches itself (AWS: "No
/// characters other than `*` have any special meaning during matching").
/// Matching works on characters (Unicode scalar values) and takes at most
/// O(pattern × text) steps: a greedy two-pointer algorithm that only ever
/// backtracks to the most recent star.
pub fn string_matches(pattern: &str, text: &str) -> bool {
    let globs = compile_pattern(pattern);
    let text: Vec<char> = text.chars().collect();
    let (mut g, mut t) = (0, 0);
    // The last star seen, and the text position its match currently ends at.
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match (globs.get(g), text.get(t)) {
            (Some(Glob::Char(p)), Some(c)) if p == c => {
                g += 1;
                t += 1;
            }
            (Some(Glob::Star), _) => {
                backtrack = Some((g, t));
                g += 1;
            }
            _ => match backtrack {
                // Let the last star swallow one more character and retry.
                Some((star, end)) => {
                    backtrack = Some((star, end + 1));
                    g = star + 1;
                    t = end + 1;
                }
                None => return false,
            },
        }
    }
    globs
        .get(g..)
        .is_some_and(|rest| rest.iter().all(|glob| *glob == Glob::Star))
}

/// Parses a timestamp as ASL does for `Timestamp*` comparisons, `IsTimestamp`
/// and Wait's `Timestamp`: RFC 3339 with an uppercase `T`, a `Z` or a numeric
/// offset, optional fractional seconds.
///
/// Accepted: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)` with 1 to 9
/// fraction digits (nanosecond precision), a valid calendar date, hours
/// 00..23, minutes and seconds 00..59 (no leap second) and an offset of at
/// most 23:59. Rejected, as AWS rejects them: a lowercase `t` or `z`, a
/// space instead of `T`, a missing offset, a date or time alone, and
/// impossible dates such as `2016-02-30`. The shape is checked here and the
/// instant built with jiff, whose own parser is more lenient (it accepts
/// lowercase designators, a space separator, bracketed time zones, ...).
///
/// jiff's range is -9999-01-02T01:59:59Z ..= 9999-12-30T22:00:00Z (so that
/// any offset fits); an instant outside it gives `None`, although AWS (Java)
/// would accept, say, `9999-12-31T23:59:59Z`.
pub fn parse_timestamp(text: &str) -> Option<jiff::Timestamp> {
    let bytes = text.as_bytes();
    let year = digits(bytes, 0, 4)?;
    literal(bytes, 4, b'-')?;
    let month = digits(bytes, 5, 2)?;
    literal(bytes, 7, b'-')?;
    let day = digits(bytes, 8, 2)?;
    literal(bytes, 10, b'T')?;
    let hour = digits(bytes, 11, 2)?;
    literal(bytes, 13, b':')?;
    let minute = digits(bytes, 14, 2)?;
    literal(bytes, 16, b':')?;
    let second = digits(bytes, 17, 2)?;
    let mut at = 19;
    let mut nanosecond = 0;
    if bytes.get(at) == Some(&b'.') {
        let start = at + 1;
        let count = bytes
            .get(start..)?
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if count == 0 || count > 9 {
            return None;
        }
        let fraction = digits(bytes, start, count)?;
        nanosecond = fraction * 10u32.pow(u32::try_from(9 - count).ok()?);
        at = start + count;
    }
    let offset_seconds: i32 = match bytes.get(at)? {
        b'Z' => {
            at += 1;
            0
        }
        sign @ (b'+' | b'-') => {
            let offset_hour = digits(bytes, at + 1, 2)?;
            literal(bytes, at + 3, b':')?;
            let offset_minute = digits(bytes, at + 4, 2)?;
            if offset_hour > 23 || offset_minute > 59 {
                return None;
            }
            at += 6;
            let seconds = i32::try_from(offset_hour * 3600 + offset_minute * 60).ok()?;
            if *sign == b'-' { -seconds } else { seconds }
        }
        _ => return None,
    };
    if at != bytes.len() {
        return None;
    }
    let datetime = jiff::civil::DateTime::new(
        i16::try_from(year).ok()?,
        i8::try_from(month).ok()?,
        i8::try_from(day).ok()?,
        i8::try_from(hour).ok()?,
        i8::try_from(minute).ok()?,
        i8::try_from(second).ok()?,
        i32::try_from(nanosecond).ok()?,
    )
    .ok()?;
    jiff::tz::Offset::from_seconds(offset_seconds)
        .ok()?
        .to_timestamp(datetime)
        .ok()
}

/// The decimal number written with exactly `count` ASCII digits at `start`.
fn digits(bytes: &[u8], start: usize, count: usize) -> Option<u32> {
    let slice = bytes.get(start..start.checked_add(count)?)?;
    slice.iter().try_fold(0u32, |acc, b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u32::from(b - b'0'))
        } else {
            None
        }
    })
}

/// `Some(())` when the byte at `at` is `expected`.
fn literal(bytes: &[u8], at: usize, expected: u8) -> Option<()> {
    (bytes.get(at) == Some(&expected)).then_some(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// `$$` and variables for tests.
    struct TestEnv {
        context: Value,
        variables: HashMap<String, Value>,
    }

    impl Env for TestEnv {
        fn context(&self) -> &Value {
            &self.context
        }

        fn variable(&self, name: &str) -> Option<&Value> {
            self.variables.get(name)
        }
    }

    fn env() -> TestEnv {
        TestEnv {
            context: json!({
                "Execution": {"Id": "arn:aws:states:us-east-1:123:execution:m:e1"},
                "State": {"EnteredTime": "2024-01-01T00:00:00Z"}
            }),
            variables: HashMap::from([
                ("limit".to_owned(), json!(5)),
                ("order".to_owned(), json!({"status": "PAID", "total": 12.5})),
            ]),
        }
    }

    fn input() -> Value {
        json!({
            "str": "b",
            "strA": "a",
            "strB": "b",
            "strC": "c",
            "num": 5,
            "numF": 5.0,
            "num4": 4,
            "num6": 6.5,
            "big": 9_007_199_254_740_993_u64,
            "bigNext": 9_007_199_254_740_992_u64,
            "bool": true,
            "boolT": true,
            "boolF": false,
            "nul": null,
            "ts": "2016-03-14T01:59:00Z",
            "tsSame": "2016-03-14T02:59:00+01:00",
            "tsEarly": "2016-03-14T01:58:59.999Z",
            "tsLate": "2016-03-14T01:59:00.5Z",
            "notTs": "2016-03-14",
            "file": "app-2024.log",
            "pattern": "*.log",
            "arr": [1, 2],
            "obj": {"a": 1}
        })
    }

    fn path(text: &str) -> ReadPath {
        match ReadPath::parse(text) {
            Ok(path) => path,
            Err(e) => panic!("test path {text} does not parse: {e}"),
        }
    }

    /// `{"Variable": var, "<op>": literal}`.
    fn lit(operator: Operator, variable: &str, literal: Value) -> Condition {
        Condition::Compare(Comparison {
            variable: path(variable),
            operator,
            operand: Operand::Literal(literal),
        })
    }

    /// `{"Variable": var, "<op>Path": operand}`.
    fn via(operator: Operator, variable: &str, operand: &str) -> Condition {
        Condition::Compare(Comparison {
            variable: path(variable),
            operator,
            operand: Operand::Path(path(operand)),
        })
    }

    fn eval(condition: &Condition) -> Result<bool, ChoiceError> {
        evaluate(condition, &input(), &env())
    }

    fn check(condition: &Condition, expected: bool) {
        assert_eq!(eval(condition), Ok(expected), "{condition:?}");
    }

    fn invalid(path: &str) -> ChoiceError {
        ChoiceError {
            message: format!(
                "Invalid path '{path}': The choice state's condition path references an invalid value."
            ),
        }
    }

    use Operator as Op;

    #[test]
    fn every_operator_with_a_literal() {
        let cases: Vec<(Operator, &str, Value, bool)> = vec![
            (Op::StringEquals, "$.str", json!("b"), true),
            (Op::StringEquals, "$.str", json!("B"), false),
            (Op::StringLessThan, "$.str", json!("c"), true),
            (Op::StringLessThan, "$.str", json!("b"), false),
            (Op::StringLessThan, "$.str", json!("a"), false),
            (Op::StringGreaterThan, "$.str", json!("a"), true),
            (Op::StringGreaterThan, "$.str", json!("b"), false),
            (Op::StringGreaterThan, "$.str", json!("ba"), false),
            (Op::StringLessThanEquals, "$.str", json!("b"), true),
            (Op::StringLessThanEquals, "$.str", json!("ba"), true),
            (Op::StringLessThanEquals, "$.str", json!("a"), false),
            (Op::StringGreaterThanEquals, "$.str", json!("b"), true),
            (Op::StringGreaterThanEquals, "$.str", json!(""), true),
            (Op::StringGreaterThanEquals, "$.str", json!("c"), false),
            (Op::StringMatches, "$.file", json!("*.log"), true),
            (Op::StringMatches, "$.file", json!("app-*.txt"), false),
            (Op::NumericEquals, "$.num", json!(5), true),
            (Op::NumericEquals, "$.num", json!(5.0), true),
            (Op::NumericEquals, "$.numF", json!(5), true),
            (Op::NumericEquals, "$.num", json!(5.000001), false),
            (
                Op::NumericEquals,
                "$.big",
                json!(9_007_199_254_740_993_u64),
                true,
            ),
            (
                Op::NumericEquals,
                "$.big",
                json!(9_007_199_254_740_992_u64),
                false,
            ),
            (Op::NumericLessThan, "$.num", json!(5.5), true),
            (Op::NumericLessThan, "$.num", json!(5), false),
            (Op::NumericLessThan, "$.num", json!(-1), false),
            (Op::NumericGreaterThan, "$.num", json!(4.99), true),
            (Op::NumericGreaterThan, "$.num", json!(5.0), false),
            (Op::NumericLessThanEquals, "$.num", json!(5.0), true),
            (Op::NumericLessThanEquals, "$.num", json!(4), false),
            (Op::NumericGreaterThanEquals, "$.num", json!(5), true),
            (
                Op::NumericGreaterThanEquals,
                "$.num",
                json!(u64::MAX),
                false,
            ),
            (Op::BooleanEquals, "$.bool", json!(true), true),
            (Op::BooleanEquals, "$.bool", json!(false), false),
            (Op::BooleanEquals, "$.boolF", json!(false), true),
            (
                Op::TimestampEquals,
                "$.ts",
                json!("2016-03-14T01:59:00Z"),
                true,
            ),
            (
                Op::TimestampEquals,
                "$.ts",
                json!("2016-03-14T02:59:00+01:00"),
                true,
            ),
            (
                Op::TimestampEquals,
                "$.ts",
                json!("2016-03-14T01:59:00.000000000Z"),
                true,
            ),
            (
                Op::TimestampEquals,
                "$.ts",
                json!("2016-03-14T01:59:00.001Z"),
                false,
            ),
            (
                Op::TimestampLessThan,
                "$.ts",
                json!("2016-03-14T01:59:00.5Z"),
                true,
            ),
            (
                Op::TimestampLessThan,
                "$.ts",
                json!("2016-03-13T20:59:00-05:00"),
                false,
            ),
            (
                Op::TimestampGreaterThan,
                "$.ts",
                json!("2016-03-14T01:58:59.999Z"),
                true,
            ),
            (
                Op::TimestampGreaterThan,
                "$.ts",
                json!("2016-03-14T02:58:00+01:00"),
                true,
            ),
            (
                Op::TimestampGreaterThan,
                "$.ts",
                json!("2016-03-14T01:59:00Z"),
                false,
            ),
            (
                Op::TimestampLessThanEquals,
                "$.ts",
                json!("2016-03-14T02:59:00+01:00"),
                true,
            ),
            (
                Op::TimestampLessThanEquals,
                "$.ts",
                json!("2016-03-14T01:58:00Z"),
                false,
            ),
            (
                Op::TimestampGreaterThanEquals,
                "$.ts",
                json!("2016-03-14T01:59:00Z"),
                true,
            ),
            (
                Op::TimestampGreaterThanEquals,
                "$.ts",
                json!("2016-03-14T03:00:00+01:00"),
                false,
            ),
            (Op::IsNull, "$.nul", json!(true), true),
            (Op::IsNull, "$.nul", json!(false), false),
            (Op::IsNull, "$.num", json!(true), false),
            (Op::IsNull, "$.num", json!(false), true),
            (Op::IsPresent, "$.nul", json!(true), true),
            (Op::IsPresent, "$.nul", json!(false), false),
            (Op::IsPresent, "$.missing", json!(true), false),
            (Op::IsPresent, "$.missing", json!(false), true),
            (Op::IsNumeric, "$.num", json!(true), true),
            (Op::IsNumeric, "$.numF", json!(true), true),
            (Op::IsNumeric, "$.str", json!(true), false),
            (Op::IsNumeric, "$.str", json!(false), true),
            (Op::IsString, "$.str", json!(true), true),
            (Op::IsString, "$.num", json!(true), false),
            (Op::IsString, "$.nul", json!(false), true),
            (Op::IsBoolean, "$.boolF", json!(true), true),
            (Op::IsBoolean, "$.str", json!(true), false),
            (Op::IsBoolean, "$.arr", json!(false), true),
            (Op::IsTimestamp, "$.ts", json!(true), true),
            (Op::IsTimestamp, "$.tsSame", json!(true), true),
            (Op::IsTimestamp, "$.notTs", json!(true), false),
            (Op::IsTimestamp, "$.num", json!(false), true),
        ];
        for (operator, variable, literal, expected) in cases {
            check(&lit(operator, variable, literal), expected);
        }
    }

    #[test]
    fn every_path_operator() {
        let cases: Vec<(Operator, &str, &str, bool)> = vec![
            (Op::StringEquals, "$.str", "$.strB", true),
            (Op::StringEquals, "$.str", "$.strA", false),
            (Op::StringLessThan, "$.str", "$.strC", true),
            (Op::StringLessThan, "$.str", "$.strB", false),
            (Op::StringGreaterThan, "$.str", "$.strA", true),
            (Op::StringGreaterThan, "$.str", "$.strC", false),
            (Op::StringLessThanEquals, "$.str", "$.strB", true),
            (Op::StringLessThanEquals, "$.str", "$.strA", false),
            (Op::StringGreaterThanEquals, "$.str", "$.strB", true),
            (Op::StringGreaterThanEquals, "$.str", "$.strC", false),
            (Op::NumericEquals, "$.num", "$.numF", true),
            (Op::NumericEquals, "$.num", "$.num4", false),
            (Op::NumericEquals, "$.big", "$.bigNext", false),
            (Op::NumericLessThan, "$.num", "$.num6", true),
            (Op::NumericLessThan, "$.num", "$.num4", false),
            (Op::NumericGreaterThan, "$.num", "$.num4", true),
            (Op::NumericGreaterThan, "$.num", "$.numF", false),
            (Op::NumericLessThanEquals, "$.num", "$.numF", true),
            (Op::NumericLessThanEquals, "$.num6", "$.num", false),
            (Op::NumericGreaterThanEquals, "$.num", "$.numF", true),
            (Op::NumericGreaterThanEquals, "$.num", "$.num6", false),
            (Op::BooleanEquals, "$.bool", "$.boolT", true),
            (Op::BooleanEquals, "$.bool", "$.boolF", false),
            (Op::TimestampEquals, "$.ts", "$.tsSame", true),
            (Op::TimestampEquals, "$.ts", "$.tsLate", false),
            (Op::TimestampLessThan, "$.ts", "$.tsLate", true),
            (Op::TimestampLessThan, "$.ts", "$.tsSame", false),
            (Op::TimestampGreaterThan, "$.ts", "$.tsEarly", true),
            (Op::TimestampGreaterThan, "$.ts", "$.tsSame", false),
            (Op::TimestampLessThanEquals, "$.ts", "$.tsSame", true),
            (Op::TimestampLessThanEquals, "$.ts", "$.tsEarly", false),
            (Op::TimestampGreaterThanEquals, "$.ts", "$.tsSame", true),
            (Op::TimestampGreaterThanEquals, "$.ts", "$.tsLate", false),
        ];
        for (operator, variable, operand, expected) in cases {
            check(&via(operator, variable, operand), expected);
        }
    }

    #[test]
    fn context_object_and_variables() {
        let id = "arn:aws:states:us-east-1:123:execution:m:e1";
        check(&lit(Op::StringEquals, "$$.Execution.Id", json!(id)), true);
        check(
            &lit(Op::StringMatches, "$$.Execution.Id", json!("*:execution:*")),
            true,
        );
        check(
            &lit(Op::IsTimestamp, "$$.State.EnteredTime", json!(true)),
            true,
        );
        check(&lit(Op::NumericEquals, "$limit", json!(5)), true);
        check(&via(Op::NumericEquals, "$.num", "$limit"), true);
        check(&lit(Op::StringEquals, "$order.status", json!("PAID")), true);
        check(
            &lit(Op::NumericGreaterThan, "$order.total", json!(12)),
            true,
        );
        check(&lit(Op::IsPresent, "$unset", json!(false)), true);
        assert_eq!(
            eval(&lit(Op::NumericEquals, "$unset", json!(1))),
            Err(invalid("$unset"))
        );
        assert_eq!(
            eval(&lit(Op::StringEquals, "$$.Execution.Nope", json!("x"))),
            Err(invalid("$$.Execution.Nope"))
        );
    }

    #[test]
    fn type_mismatches_are_false() {
        let cases: Vec<(Operator, &str, Value)> = vec![
            (Op::StringEquals, "$.num", json!("5")),
            (Op::StringEquals, "$.nul", json!("null")),
            (Op::StringLessThan, "$.num", json!("9")),
            (Op::StringGreaterThanEquals, "$.bool", json!("")),
            (Op::StringMatches, "$.num", json!("*")),
            (Op::StringMatches, "$.arr", json!("*")),
            (Op::NumericEquals, "$.str", json!(5)),
            (Op::NumericEquals, "$.bool", json!(1)),
            (Op::NumericLessThanEquals, "$.nul", json!(0)),
            (Op::NumericGreaterThan, "$.arr", json!(0)),
            (Op::BooleanEquals, "$.str", json!(true)),
            (Op::BooleanEquals, "$.num", json!(true)),
            (Op::BooleanEquals, "$.nul", json!(false)),
            (Op::TimestampEquals, "$.num", json!("2016-03-14T01:59:00Z")),
            (
                Op::TimestampEquals,
                "$.notTs",
                json!("2016-03-14T00:00:00Z"),
            ),
            (
                Op::TimestampLessThanEquals,
                "$.str",
                json!("2016-03-14T01:59:00Z"),
            ),
            // Invalid operand: both sides must be timestamps.
            (Op::TimestampEquals, "$.ts", json!("2016-03-14t01:59:00z")),
            (Op::TimestampGreaterThanEquals, "$.ts", json!(0)),
        ];
        for (operator, variable, literal) in cases {
            check(&lit(operator, variable, literal), false);
        }
        // Path operands of the wrong type.
        check(&via(Op::StringEquals, "$.str", "$.num"), false);
        check(&via(Op::NumericEquals, "$.num", "$.str"), false);
        check(&via(Op::BooleanEquals, "$.bool", "$.str"), false);
        check(&via(Op::TimestampEquals, "$.ts", "$.notTs"), false);
        check(&via(Op::NumericEquals, "$.num", "$.nul"), false);
    }

    #[test]
    fn missing_variable_is_an_error_except_for_is_present() {
        for operator in Operator::ALL {
            let operand = if operator.is_type_test() {
                json!(true)
            } else {
                match operator.name() {
                    name if name.starts_with("Numeric") => json!(1),
                    name if name.starts_with("Boolean") => json!(true),
                    name if name.starts_with("Timestamp") => json!("2016-03-14T01:59:00Z"),
                    _ => json!("x"),
                }
            };
            let result = eval(&lit(operator, "$.missing", operand));
            if operator == Op::IsPresent {
                assert_eq!(result, Ok(false));
            } else {
                // AWS: every other operator, type tests included, fails the
                // execution with States.Runtime.
                assert_eq!(result, Err(invalid("$.missing")), "{}", operator.name());
            }
        }
        assert_eq!(
            eval(&lit(Op::IsNull, "$.obj.b", json!(false))),
            Err(invalid("$.obj.b"))
        );
        assert_eq!(
            eval(&lit(Op::IsNull, "$.arr[5]", json!(true))),
            Err(invalid("$.arr[5]"))
        );
    }

    #[test]
    fn missing_path_operand_is_an_error_naming_it() {
        assert_eq!(
            eval(&via(Op::NumericEquals, "$.num", "$.nope")),
            Err(invalid("$.nope"))
        );
        assert_eq!(
            eval(&via(Op::StringEquals, "$.str", "$$.Nope")),
            Err(invalid("$$.Nope"))
        );
        assert_eq!(
            eval(&via(Op::BooleanEquals, "$.bool", "$unset")),
            Err(invalid("$unset"))
        );
        // Both missing: the Variable is reported.
        assert_eq!(
            eval(&via(Op::NumericEquals, "$.a", "$.b")),
            Err(invalid("$.a"))
        );
        let message = invalid("$.nope").to_string();
        assert_eq!(
            message,
            "Invalid path '$.nope': The choice state's condition path references an invalid value."
        );
    }

    #[test]
    fn type_test_with_a_non_boolean_operand_is_an_error() {
        let error = eval(&lit(Op::IsNull, "$.nul", json!("yes")));
        assert!(
            matches!(&error, Err(e) if e.message.contains("IsNull")),
            "{error:?}"
        );
        let error = eval(&lit(Op::IsPresent, "$.missing", json!(1)));
        assert!(
            matches!(&error, Err(e) if e.message.contains("IsPresent")),
            "{error:?}"
        );
    }

    #[test]
    fn and_or_not_nest_and_short_circuit() {
        let yes = || lit(Op::NumericEquals, "$.num", json!(5));
        let no = || lit(Op::NumericEquals, "$.num", json!(6));
        let boom = || lit(Op::NumericEquals, "$.missing", json!(1));
        check(&Condition::And(vec![yes(), yes()]), true);
        check(&Condition::And(vec![yes(), no()]), false);
        check(&Condition::Or(vec![no(), yes()]), true);
        check(&Condition::Or(vec![no(), no()]), false);
        check(&Condition::Not(Box::new(no())), true);
        check(&Condition::Not(Box::new(yes())), false);
        // Short circuit: later conditions on missing fields are not evaluated.
        check(&Condition::And(vec![no(), boom()]), false);
        check(&Condition::Or(vec![yes(), boom()]), true);
        assert_eq!(
            eval(&Condition::And(vec![yes(), boom()])),
            Err(invalid("$.missing"))
        );
        assert_eq!(
            eval(&Condition::Or(vec![no(), boom()])),
            Err(invalid("$.missing"))
        );
        assert_eq!(
            eval(&Condition::Not(Box::new(boom()))),
            Err(invalid("$.missing"))
        );
        // The AWS guard pattern.
        let guarded = |field: &str| {
            Condition::And(vec![
                lit(Op::IsPresent, field, json!(true)),
                lit(Op::StringEquals, field, json!("b")),
            ])
        };
        check(&guarded("$.str"), true);
        check(&guarded("$.missing"), false);
        // Deeper nesting: not (a or (b and not c)).
        let nested = Condition::Not(Box::new(Condition::Or(vec![
            no(),
            Condition::And(vec![
                lit(Op::IsString, "$.str", json!(true)),
                Condition::Not(Box::new(lit(Op::BooleanEquals, "$.bool", json!(false)))),
            ]),
        ])));
        check(&nested, false);
    }

    #[test]
    fn string_order_is_utf16_like_aws() {
        // U+FF21 (fullwidth A) is one UTF-16 unit 0xFF21; U+1F600 is the
        // surrogate pair 0xD83D 0xDE00. Java: "\u{1F600}" < "\u{FF21}";
        // code-point order would say the opposite.
        assert_eq!(compare_utf16("\u{1F600}", "\u{FF21}"), Ordering::Less);
        assert_eq!("\u{1F600}".cmp("\u{FF21}"), Ordering::Greater);
        assert_eq!(compare_utf16("abc", "abd"), Ordering::Less);
        assert_eq!(compare_utf16("ab", "abc"), Ordering::Less);
        assert_eq!(compare_utf16("é", "é"), Ordering::Equal);
        let input = json!({"emoji": "\u{1F600}", "wide": "\u{FF21}"});
        let condition = via(Op::StringLessThan, "$.emoji", "$.wide");
        assert_eq!(evaluate(&condition, &input, &env()), Ok(true));
    }

    #[test]
    fn number_comparisons() {
        let n = |v: Value| match v {
            Value::Number(n) => n,
            other => panic!("not a number: {other}"),
        };
        assert_eq!(
            compare_numbers(&n(json!(1)), &n(json!(1.0))),
            Some(Ordering::Equal)
        );
        assert_eq!(
            compare_numbers(&n(json!(-1)), &n(json!(u64::MAX))),
            Some(Ordering::Less)
        );
        assert_eq!(
            compare_numbers(&n(json!(i64::MIN)), &n(json!(i64::MIN + 1))),
            Some(Ordering::Less)
        );
        assert_eq!(
            compare_numbers(&n(json!(u64::MAX)), &n(json!(u64::MAX))),
            Some(Ordering::Equal)
        );
        assert_eq!(
            compare_numbers(&n(json!(0.1)), &n(json!(0.2))),
            Some(Ordering::Less)
        );
        assert_eq!(
            compare_numbers(&n(json!(-0.0)), &n(json!(0))),
            Some(Ordering::Equal)
        );
        assert_eq!(
            compare_numbers(&n(json!(1e300)), &n(json!(u64::MAX))),
            Some(Ordering::Greater)
        );
    }

    #[test]
    fn string_matches_table() {
        let cases: &[(&str, &str, bool)] = &[
            // AWS documentation examples.
            ("log-*.txt", "log-2024-01.txt", true),
            ("log-*.txt", "log-.txt", true),
            ("log-*.txt", "log-1.txt.gz", false),
            ("*.log", "zebra.log", true),
            ("*.log", ".log", true),
            ("*.log", "zebra.logs", false),
            ("foo*.log", "foo23.log", true),
            ("foo*.*", "foobar.zebra", true),
            ("foo*.*", "foobar", false),
            // Literal patterns.
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("abc", "ab", false),
            ("abc", "ABC", false),
            ("a?c", "abc", false),
            ("a?c", "a?c", true),
            ("a.c", "abc", false),
            ("[ab]", "a", false),
            ("[ab]", "[ab]", true),
            // Empty pattern and text.
            ("", "", true),
            ("", "a", false),
            ("*", "", true),
            ("a", "", false),
            // Stars.
            ("*", "anything at all", true),
            ("**", "", true),
            ("***a***", "bab", true),
            ("a**b", "ab", true),
            ("a**b", "axxb", true),
            ("a**b", "axxc", false),
            ("*a*b*c*", "xxaxxbxxcxx", true),
            ("*a*b*c*", "xxcxxbxxaxx", false),
            ("a*", "a", true),
            ("*a", "ba", true),
            ("*a", "ab", false),
            ("*aab", "aaaab", true),
            ("*ab*ab", "abxabab", true),
            ("*ab*ab", "abxab_", false),
            // Escapes.
            (r"\*", "*", true),
            (r"\*", "x", false),
            (r"\*", "", false),
            (r"a\*b", "a*b", true),
            (r"a\*b", "axb", false),
            (r"\**", "*anything", true),
            (r"\**", "anything", false),
            (r"*\*", "ends with *", true),
            (r"*\*", "ends without", false),
            (r"\\", r"\", true),
            (r"\\", r"\\", false),
            (r"\\*", r"\abc", true),
            (r"\\\*", r"\*", true),
            (r"\\\\", r"\\", true),
            // A backslash before another character, or at the end, is itself.
            (r"\a", r"\a", true),
            (r"\a", "a", false),
            (r"a\", r"a\", true),
            // Unicode: characters, not bytes.
            ("é*", "ecole", false),
            ("e*", "école", false),
            ("é*", "école", true),
            ("é*", "été", true),
            ("*€", "10€", true),
            ("?", "é", false),
            ("日*語", "日本語", true),
            ("日*語", "日本", false),
            ("*😀*", "a😀b", true),
            ("a*c", "a😀c", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                string_matches(pattern, text),
                *expected,
                "{pattern:?} vs {text:?}"
            );
        }
    }

    #[test]
    fn string_matches_is_not_exponential() {
        let text = "a".repeat(5_000);
        let pattern = format!("{}b", "*a".repeat(200));
        assert!(!string_matches(&pattern, &text));
        let pattern = format!("{}a", "*a".repeat(200));
        assert!(string_matches(&pattern, &text));
    }

    #[test]
    fn parse_timestamp_accepts_rfc3339() {
        let utc = |text: &str| parse_timestamp(text).map(|t| t.to_string());
        assert_eq!(
            utc("2016-03-14T01:59:00Z").as_deref(),
            Some("2016-03-14T01:59:00Z")
        );
        assert_eq!(
            utc("2016-03-14T02:59:00+01:00").as_deref(),
            Some("2016-03-14T01:59:00Z")
        );
        assert_eq!(
            utc("2016-03-13T20:29:00-05:30").as_deref(),
            Some("2016-03-14T01:59:00Z")
        );
        assert_eq!(
            utc("2016-03-14T01:59:00-00:00").as_deref(),
            Some("2016-03-14T01:59:00Z")
        );
        assert_eq!(
            utc("2016-03-14T07:29:00.123+05:30").as_deref(),
            Some("2016-03-14T01:59:00.123Z")
        );
        assert_eq!(
            utc("2016-03-14T01:59:00.5Z").as_deref(),
            Some("2016-03-14T01:59:00.5Z")
        );
        assert_eq!(
            utc("2016-03-14T01:59:00.123456789Z").as_deref(),
            Some("2016-03-14T01:59:00.123456789Z")
        );
        assert_eq!(
            utc("2024-02-29T23:59:59Z").as_deref(),
            Some("2024-02-29T23:59:59Z")
        );
        assert_eq!(
            utc("0001-01-01T00:00:00Z").as_deref(),
            Some("0001-01-01T00:00:00Z")
        );
        assert_eq!(
            utc("9999-12-30T21:59:59Z").as_deref(),
            Some("9999-12-30T21:59:59Z")
        );
        // jiff's range ends at 9999-12-30T22:00Z (so that every offset fits);
        // later instants are not timestamps for us.
        assert_eq!(utc("9999-12-31T23:59:59Z"), None);
        // Crossing a date line through the offset.
        assert_eq!(
            utc("2016-01-01T00:30:00+01:00").as_deref(),
            Some("2015-12-31T23:30:00Z")
        );
        assert_eq!(
            parse_timestamp("2016-03-14T01:59:00.000Z"),
            parse_timestamp("2016-03-14T02:59:00+01:00")
        );
    }

    #[test]
    fn parse_timestamp_rejects_what_aws_rejects() {
        let rejected = [
            "",
            "2016-03-14",
            "01:59:00Z",
            "2016-03-14T01:59:00",
            "2016-03-14t01:59:00Z",
            "2016-03-14T01:59:00z",
            "2016-03-14 01:59:00Z",
            "2016-03-14T01:59Z",
            "2016-03-14T1:59:00Z",
            "16-03-14T01:59:00Z",
            "20160314T015900Z",
            "2016-02-30T00:00:00Z",
            "2015-02-29T00:00:00Z",
            "2016-13-01T00:00:00Z",
            "2016-00-01T00:00:00Z",
            "2016-03-00T00:00:00Z",
            "2016-03-14T24:00:00Z",
            "2016-03-14T01:60:00Z",
            "2016-03-14T23:59:60Z",
            "2016-03-14T01:59:00.Z",
            "2016-03-14T01:59:00.1234567891Z",
            "2016-03-14T01:59:00,5Z",
            "2016-03-14T01:59:00+0100",
            "2016-03-14T01:59:00+01",
            "2016-03-14T01:59:00+01:00:00",
            "2016-03-14T01:59:00+24:00",
            "2016-03-14T01:59:00+01:60",
            "2016-03-14T01:59:00Z ",
            " 2016-03-14T01:59:00Z",
            "2016-03-14T01:59:00ZZ",
            "2016-03-14T01:59:00Z[UTC]",
            "2016-03-14T01:59:00+01:00[Europe/Paris]",
            "+2016-03-14T01:59:00Z",
            "-002016-03-14T01:59:00Z",
            "2016-03-14T01:59:00\u{0}Z",
            "２０１６-03-14T01:59:00Z",
        ];
        for text in rejected {
            assert_eq!(parse_timestamp(text), None, "{text:?}");
        }
    }

    /// A reference matcher: plain recursion, exponential but fine on tiny inputs.
    fn reference_matches(globs: &[Glob], text: &[char]) -> bool {
        match globs.split_first() {
            None => text.is_empty(),
            Some((Glob::Star, rest)) => (0..=text.len())
                .any(|skip| reference_matches(rest, text.get(skip..).unwrap_or(&[]))),
            Some((Glob::Char(c), rest)) => match text.split_first() {
                Some((t, tail)) => t == c && reference_matches(rest, tail),
                None => false,
            },
        }
    }

    fn escape(literal: &str) -> String {
        literal.replace('\\', r"\\").replace('*', r"\*")
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".*".prop_map(Value::String),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,10})?(Z|[+-][0-9]{2}:[0-9]{2})"
                .prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-c]", inner), 0..4)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn string_matches_never_panics(pattern in ".*", text in ".*") {
            let _ = string_matches(&pattern, &text);
        }

        #[test]
        fn string_matches_agrees_with_reference(pattern in r"[ab*\\]{0,8}", text in "[ab*\\\\]{0,8}") {
            let text_chars: Vec<char> = text.chars().collect();
            prop_assert_eq!(
                string_matches(&pattern, &text),
                reference_matches(&compile_pattern(&pattern), &text_chars)
            );
        }

        #[test]
        fn escaped_literal_matches_exactly_itself(literal in ".*", other in ".*") {
            let pattern = escape(&literal);
            prop_assert!(string_matches(&pattern, &literal));
            prop_assert_eq!(string_matches(&pattern, &other), other == literal);
        }

        #[test]
        fn escaped_literal_with_stars_matches_exactly_itself(
            literal in r"[a\\*]{0,10}",
            other in r"[a\\*]{0,10}",
        ) {
            let pattern = escape(&literal);
            prop_assert_eq!(string_matches(&pattern, &other), other == literal);
        }

        #[test]
        fn parse_timestamp_never_panics(text in ".*") {
            let _ = parse_timestamp(&text);
        }

        #[test]
        fn parse_timestamp_never_panics_on_near_timestamps(
            text in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?(Z|[+-][0-9]{2}:[0-9]{2}|.)?"
        ) {
            let _ = parse_timestamp(&text);
        }

        #[test]
        fn parse_timestamp_round_trips(
            seconds in -62_135_596_800_i64..253_402_300_799_i64,
            nanos in 0..1_000_000_000_i32,
            offset_minutes in -(23 * 60 + 59)..=(23 * 60 + 59_i32),
        ) {
            let Ok(instant) = jiff::Timestamp::new(seconds, nanos) else {
                return Ok(());
            };
            let Ok(offset) = jiff::tz::Offset::from_seconds(offset_minutes * 60) else {
                return Ok(());
            };
            let local = offset.to_datetime(instant);
            prop_assume!(local.year() >= 0 && local.year() <= 9999);
            let sign = if offset_minutes < 0 { '-' } else { '+' };
            let text = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}{}{:02}:{:02}",
                local.year(), local.month(), local.day(), local.hour(), local.minute(),
                local.second(), local.subsec_nanosecond(), sign,
                offset_minutes.abs() / 60, offset_minutes.abs() % 60,
            );
            prop_assert_eq!(parse_timestamp(&text), Some(instant), "{}", text);
        }

        #[test]
        fn evaluate_never_panics(
            input in json_value(),
            operator in prop::sample::select(Operator::ALL.to_vec()),
            variable in prop::sample::select(vec!["$", "$.a", "$.b.c", "$.a[0]", "$.a[*]", "$$.Execution.Id", "$limit", "$unset"]),
            literal in json_value(),
            operand_path in prop::option::of(prop::sample::select(vec!["$.a", "$.b", "$.c[1]", "$order.total", "$$.State"])),
            negate in any::<bool>(),
        ) {
            let operand = match operand_path {
                Some(p) => Operand::Path(path(p)),
                None => Operand::Literal(literal),
            };
            let compare = Condition::Compare(Comparison { variable: path(variable), operator, operand });
            let condition = if negate {
                Condition::Not(Box::new(Condition::Or(vec![compare.clone(), compare])))
            } else {
                compare
            };
            let first = evaluate(&condition, &input, &env());
            // Deterministic.
            prop_assert_eq!(first, evaluate(&condition, &input, &env()));
        }
    }
}
