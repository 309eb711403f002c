//! The error collector and the readers of typed fields, paths and
//! templates shared by every state parser.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::ValidationError;
use super::codes;
use super::locate::{child, element};
use crate::intrinsics::IntrinsicCall;
use crate::model::{Expr, ResultPath, Template, TemplateField};
use crate::path::{ReadPath, ReferencePath};

/// A JSON object with the pointer it sits at.
pub(super) type Obj = Map<String, Value>;

/// AWS's upper bound for `IntervalSeconds`, `MaxAttempts`, `TimeoutSeconds`...
pub(super) const MAX_SECONDS: u64 = 99_999_999;

/// Builds an error without position.
pub(super) fn error(pointer: String, code: &'static str, message: String) -> ValidationError {
    ValidationError {
        pointer,
        code,
        message,
        line: None,
        column: None,
    }
}

/// The JSON type name of a value, for messages.
pub(super) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON number that is an integer (`3`, `3.0`), if it is one.
pub(super) fn as_integer(value: &Value) -> Option<i128> {
    let number = value.as_number()?;
    if let Some(i) = number.as_i64() {
        return Some(i128::from(i));
    }
    if let Some(u) = number.as_u64() {
        return Some(i128::from(u));
    }
    let f = number.as_f64()?;
    // Integral floats within a range where the conversion is exact enough.
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e30 {
        #[allow(clippy::cast_possible_truncation)]
        return Some(f as i128);
    }
    None
}

/// Collects errors while a definition is walked.
#[derive(Debug, Default)]
pub(super) struct Ctx {
    /// Everything found so far.
    pub errors: Vec<ValidationError>,
    /// Every state name of the machine (all graphs) with its pointer.
    pub state_names: HashMap<String, String>,
    /// Pointers of every `States` object (for duplicate-key checks).
    pub states_objects: Vec<String>,
}

impl Ctx {
    /// Records an error.
    pub fn err(&mut self, pointer: String, code: &'static str, message: impl Into<String>) {
        self.errors.push(error(pointer, code, message.into()));
    }

    /// `UNKNOWN_FIELD` for every key of `o` not in `allowed`.
    pub fn unknown_fields(&mut self, o: &Obj, p: &str, allowed: &[&str], place: &str) {
        for key in o.keys() {
            if !allowed.contains(&key.as_str()) {
                self.err(
                    child(p, key),
                    codes::UNKNOWN_FIELD,
                    format!("The field '{key}' is not supported by Step Functions ({place})"),
                );
            }
        }
    }

    /// `INVALID_TYPE` naming the expected type.
    pub fn wrong_type(&mut self, pointer: String, field: &str, expected: &str, found: &Value) {
        self.err(
            pointer,
            codes::INVALID_TYPE,
            format!("'{field}' must be {expected}, not {}", type_name(found)),
        );
    }

    /// `MISSING_FIELD` on the object at `p`.
    pub fn missing(&mut self, p: &str, field: &str, place: &str) {
        self.err(
            p.to_string(),
            codes::MISSING_FIELD,
            format!("The field '{field}' is required ({place})"),
        );
    }

    /// `CONFLICTING_FIELDS` when both `a` and `b` are present (reported at `b`).
    /// Returns true when they conflict.
    pub fn exclusive(&mut self, o: &Obj, p: &str, a: &str, b: &str) -> bool {
        if o.contains_key(a) && o.contains_key(b) {
            self.err(
                child(p, b),
                codes::CONFLICTING_FIELDS,
                format!("The fields '{a}' and '{b}' cannot be used together"),
            );
            true
        } else {
            false
        }
    }

    /// An optional string field.
    pub fn opt_str<'a>(&mut self, o: &'a Obj, p: &str, key: &str) -> Option<&'a str> {
        match o.get(key)? {
            Value::String(s) => Some(s),
            other => {
                self.wrong_type(child(p, key), key, "a string", other);
                None
            }
        }
    }

    /// A required string field. `Err(())` when absent or not a string (reported).
    pub fn req_str<'a>(
        &mut self,
        o: &'a Obj,
        p: &str,
        key: &str,
        place: &str,
    ) -> Result<&'a str, ()> {
        if !o.contains_key(key) {
            self.missing(p, key, place);
            return Err(());
        }
        self.opt_str(o, p, key).ok_or(())
    }

    /// An optional integer field within `min..=max`. `Err(())` when present
    /// but invalid (reported).
    pub fn opt_int(
        &mut self,
        o: &Obj,
        p: &str,
        key: &str,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, ()> {
        let Some(value) = o.get(key) else {
            return Ok(None);
        };
        let pointer = child(p, key);
        let Some(n) = as_integer(value) else {
            let found = match value.as_f64() {
                Some(f) if f.is_finite() && f.fract() == 0.0 => {
                    // Integral, but past what is taken (1e30).
                    self.err(
                        pointer,
                        codes::INVALID_VALUE,
                        format!("'{key}' must be an integer of at most {max}, not {value}"),
                    );
                    return Err(());
                }
                Some(_) => "a fractional number",
                None => type_name(value),
            };
            self.err(
                pointer,
                codes::INVALID_TYPE,
                format!("'{key}' must be an integer, not {found}"),
            );
            return Err(());
        };
        if n < i128::from(min) || n > i128::from(max) {
            let range = if max == u64::MAX && n > i128::from(max) {
                format!("of at most {max}")
            } else if max == u64::MAX {
                format!("of at least {min}")
            } else {
                format!("between {min} and {max}")
            };
            self.err(
                pointer,
                codes::INVALID_VALUE,
                format!("'{key}' must be an integer {range}, not {n}"),
            );
            return Err(());
        }
        u64::try_from(n).map(Some).map_err(|_| ())
    }

    /// A path that reads (`InputPath`, `...Path` fields, `Variable`).
    /// With `definite`, the path must be a reference path (select one node).
    pub fn read_path(&mut self, text: &str, pointer: String, definite: bool) -> Option<ReadPath> {
        match ReadPath::parse(text) {
            Ok(path) => {
                if definite && !path.is_definite() {
                    self.err(
                        pointer,
                        codes::INVALID_PATH,
                        format!(
                            "'{text}' must be a reference path (selecting a single node, \
                             without wildcards, filters, slices or '..')"
                        ),
                    );
                    None
                } else {
                    Some(path)
                }
            }
            Err(e) => {
                self.err(pointer, codes::INVALID_PATH, e.to_string());
                None
            }
        }
    }

    /// An optional string field holding a read path.
    pub fn opt_read_path(
        &mut self,
        o: &Obj,
        p: &str,
        key: &str,
        definite: bool,
    ) -> Result<Option<ReadPath>, ()> {
        match o.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => self
                .read_path(s, child(p, key), definite)
                .map(Some)
                .ok_or(()),
            Some(other) => {
                self.wrong_type(child(p, key), key, "a string (a path)", other);
                Err(())
            }
        }
    }

    /// `InputPath` / `OutputPath`: `$` when absent, `None` for `null`.
    pub fn io_path(&mut self, o: &Obj, p: &str, key: &str) -> Result<Option<ReadPath>, ()> {
        match o.get(key) {
            None => Ok(Some(ReadPath::identity())),
            Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => self.read_path(s, child(p, key), false).map(Some).ok_or(()),
            Some(other) => {
                self.wrong_type(child(p, key), key, "a string (a path) or null", other);
                Err(())
            }
        }
    }

    /// `ResultPath` of a state or a catcher: `$` when absent, discard for `null`.
    pub fn result_path(&mut self, o: &Obj, p: &str) -> Result<ResultPath, ()> {
        let key = "ResultPath";
        match o.get(key) {
            None => Ok(ResultPath::Path(ReferencePath::identity())),
            Some(Value::Null) => Ok(ResultPath::Discard),
            Some(Value::String(s)) => match ReferencePath::parse(s) {
                Ok(path) => Ok(ResultPath::Path(path)),
                Err(e) => {
                    self.err(child(p, key), codes::INVALID_PATH, e.to_string());
                    Err(())
                }
            },
            Some(other) => {
                self.wrong_type(
                    child(p, key),
                    key,
                    "a string (a reference path) or null",
                    other,
                );
                Err(())
            }
        }
    }

    /// The value of a `key.$` field or of `ErrorPath`/`CausePath`: a path,
    /// or an intrinsic function call.
    pub fn expr(&mut self, text: &str, pointer: String) -> Option<Expr> {
        if IntrinsicCall::looks_like_call(text) {
            match IntrinsicCall::parse(text) {
                Ok(call) => Some(Expr::Intrinsic(call)),
                Err(e) => {
                    self.err(pointer, codes::INVALID_INTRINSIC, e.to_string());
                    None
                }
            }
        } else {
            self.read_path(text, pointer, false).map(Expr::Path)
        }
    }

    /// An optional payload template (`Parameters`, `ResultSelector`, ...).
    /// AWS accepts any JSON value there; only objects (and arrays of them)
    /// hold evaluated `key.$` fields.
    pub fn opt_template(&mut self, o: &Obj, p: &str, key: &str) -> Result<Option<Template>, ()> {
        match o.get(key) {
            None => Ok(None),
            Some(value) => self.template(value, &child(p, key)).map(Some).ok_or(()),
        }
    }

    /// Compiles a payload template. `None` when something inside is invalid
    /// (every problem reported).
    pub fn template(&mut self, value: &Value, pointer: &str) -> Option<Template> {
        match value {
            Value::Object(map) => {
                let mut fields = Vec::with_capacity(map.len());
                let mut ok = true;
                let mut literal = true;
                for (key, field_value) in map {
                    let field_pointer = child(pointer, key);
                    if let Some(name) = key.strip_suffix(".$") {
                        literal = false;
                        let expr = match field_value {
                            Value::String(text) => self.expr(text, field_pointer),
                            other => {
                                self.wrong_type(
                                    field_pointer,
                                    key,
                                    "a string (a path or an intrinsic function)",
                                    other,
                                );
                                None
                            }
                        };
                        match expr {
                            Some(expr) => {
                                fields.push((name.to_string(), TemplateField::Expr(expr)))
                            }
                            None => ok = false,
                        }
                    } else {
                        match self.template(field_value, &field_pointer) {
                            Some(template) => {
                                literal &= matches!(template, Template::Literal(_));
                                fields.push((key.clone(), TemplateField::Template(template)));
                            }
                            None => ok = false,
                        }
                    }
                }
                if !ok {
                    None
                } else if literal {
                    Some(Template::Literal(value.clone()))
                } else {
                    Some(Template::Object(fields))
                }
            }
            Value::Array(items) => {
                let mut templates = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match self.template(item, &element(pointer, i)) {
                        Some(t) => templates.push(t),
                        None => ok = false,
                    }
                }
                if !ok {
                    None
                } else if templates.iter().all(|t| matches!(t, Template::Literal(_))) {
                    Some(Template::Literal(value.clone()))
                } else {
                    Some(Template::Array(templates))
                }
            }
            other => Some(Template::Literal(other.clone())),
        }
    }

    /// `Assign`: an object whose keys are variable names (`name` or
    /// `name.$`), compiled as a template.
    pub fn opt_assign(&mut self, o: &Obj, p: &str) -> Result<Option<Template>, ()> {
        let key = "Assign";
        let Some(value) = o.get(key) else {
            return Ok(None);
        };
        let pointer = child(p, key);
        let Value::Object(map) = value else {
            self.wrong_type(pointer, key, "an object", value);
            return Err(());
        };
        let mut ok = true;
        for name in map.keys() {
            let variable = name.strip_suffix(".$").unwrap_or(name);
            if !valid_variable_name(variable) {
                self.err(
                    child(&pointer, name),
                    codes::INVALID_VARIABLE_NAME,
                    format!(
                        "'{variable}' is not a valid variable name: it must match \
                         [A-Za-z_][A-Za-z0-9_]* and have at most 80 characters"
                    ),
                );
                ok = false;
            }
        }
        let template = self.template(value, &pointer);
        match template {
            Some(t) if ok => Ok(Some(t)),
            _ => Err(()),
        }
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 80 characters.
pub(super) fn valid_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= 80
        && (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
