//! Shared helpers of the workspace-level tests.
//!
//! The ASL conformance suite lives in `tests/conformance/<topic>/<name>.json`
//! (format: `tests/conformance/README.md`). This library loads and checks the
//! case files and compares a run report with a case's expectations; the
//! `conformance` test target (`tests/tests/conformance.rs`) runs every case
//! through the local runner and reports one test per case.
//!
//! Everything here is independent of the runner, so that the case files can
//! be validated (and the comparison logic tested) on their own.

#![warn(missing_docs)]

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The suite must never shrink below this many cases.
pub const MIN_CASES: usize = 130;

/// Keys allowed at the top level of a case file.
pub const CASE_KEYS: [&str; 6] = [
    "description",
    "definition",
    "input",
    "stubs",
    "executionName",
    "expect",
];

/// Keys allowed in a case's `expect` object.
pub const EXPECT_KEYS: [&str; 9] = [
    "status",
    "output",
    "error",
    "cause",
    "causeContains",
    "calls",
    "callOrder",
    "retryDelaysSeconds",
    "errors",
];

/// Statuses a case may expect.
pub const STATUSES: [&str; 4] = ["SUCCEEDED", "FAILED", "TIMED_OUT", "INVALID_DEFINITION"];

/// A problem with a case file itself (not with the engine).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CaseError {
    /// The case file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

/// One conformance case, as read from its file.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// The file the case was read from.
    pub path: PathBuf,
    /// The test name: `<topic>/<name>` (path below the suite root, no `.json`).
    pub name: String,
    /// What AWS behaviour this checks, and where it is documented.
    pub description: String,
    /// The ASL definition (a JSON object, or anything for invalid cases).
    pub definition: Value,
    /// The execution input (`{}` when absent).
    pub input: Value,
    /// The stub behaviours, keyed by resource (`{}` when absent).
    pub stubs: Value,
    /// `$$.Execution.Name`, when the case fixes it.
    pub execution_name: Option<String>,
    /// The expectations: only the keys present are checked.
    pub expect: Map<String, Value>,
}

impl Case {
    /// The definition as JSON text, as handed to the runner.
    pub fn definition_text(&self) -> String {
        self.definition.to_string()
    }
}

/// The directory holding the case files (`tests/conformance`).
pub fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

/// Every `*.json` file below `dir`, sorted.
pub fn case_files(dir: &Path) -> Result<Vec<PathBuf>, CaseError> {
    let mut out = Vec::new();
    collect(dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CaseError> {
    let entries = std::fs::read_dir(dir).map_err(|e| CaseError {
        path: dir.to_path_buf(),
        message: format!("cannot read directory: {e}"),
    })?;
    for entry in entries {
        let entry = entry.map_err(|e| CaseError {
            path: dir.to_path_buf(),
            message: format!("cannot read directory entry: {e}"),
        })?;
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads and checks one case file. `root` is the suite directory, used to
/// name the case.
pub fn load_case(root: &Path, path: &Path) -> Result<Case, CaseError> {
    let err = |message: String| CaseError {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| err(format!("invalid JSON: {e}")))?;
    let name = path
        .strip_prefix(root)
        .unwrap_or(path)
        .with_extension("")
        .to_string_lossy()
        .replace('\\', "/");
    parse_case(path.to_path_buf(), name, value).map_err(err)
}

/// Checks a decoded case file: known keys only, the right types, and a
/// consistent `expect`.
pub fn parse_case(path: PathBuf, name: String, value: Value) -> Result<Case, String> {
    let Value::Object(mut obj) = value else {
        return Err("a case must be a JSON object".into());
    };
    if let Some(key) = obj.keys().find(|k| !CASE_KEYS.contains(&k.as_str())) {
        return Err(format!("unknown key `{key}` (allowed: {CASE_KEYS:?})"));
    }
    let description = match obj.remove("description") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        _ => return Err("`description` must be a non-empty string".into()),
    };
    let definition = obj
        .remove("definition")
        .ok_or_else(|| "`definition` is required".to_string())?;
    let input = obj
        .remove("input")
        .unwrap_or_else(|| Value::Object(Map::new()));
    let stubs = obj
        .remove("stubs")
        .unwrap_or_else(|| Value::Object(Map::new()));
    if !stubs.is_object() {
        return Err("`stubs` must be an object".into());
    }
    let execution_name = match obj.remove("executionName") {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err("`executionName` must be a string".into()),
    };
    let expect = match obj.remove("expect") {
        Some(Value::Object(m)) => m,
        _ => return Err("`expect` must be an object".into()),
    };
    check_expect(&expect)?;
    Ok(Case {
        path,
        name,
        description,
        definition,
        input,
        stubs,
        execution_name,
        expect,
    })
}

fn check_expect(expect: &Map<String, Value>) -> Result<(), String> {
    if let Some(key) = expect.keys().find(|k| !EXPECT_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key `expect.{key}` (allowed: {EXPECT_KEYS:?})"
        ));
    }
    match expect.get("status") {
        Some(Value::String(s)) if STATUSES.contains(&s.as_str()) => {}
        _ => return Err(format!("`expect.status` is required, one of {STATUSES:?}")),
    }
    for key in ["error", "cause", "causeContains"] {
        if expect.get(key).is_some_and(|v| !v.is_string()) {
            return Err(format!("`expect.{key}` must be a string"));
        }
    }
    if expect.contains_key("cause") && expect.contains_key("causeContains") {
        return Err("use either `expect.cause` or `expect.causeContains`".into());
    }
    if let Some(calls) = expect.get("calls") {
        let ok = calls
            .as_object()
            .is_some_and(|m| m.values().all(|v| v.as_u64().is_some()));
        if !ok {
            return Err("`expect.calls` must map stub keys to counts".into());
        }
    }
    if let Some(order) = expect.get("callOrder") {
        let ok = order
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string));
        if !ok {
            return Err("`expect.callOrder` must be an array of stub keys".into());
        }
    }
    if let Some(delays) = expect.get("retryDelaysSeconds") {
        let ok = delays.as_object().is_some_and(|m| {
            m.values()
                .all(|v| v.as_array().is_some_and(|a| a.iter().all(Value::is_number)))
        });
        if !ok {
            return Err("`expect.retryDelaysSeconds` must map states to arrays of numbers".into());
        }
    }
    if let Some(errors) = expect.get("errors") {
        let ok = errors.as_array().is_some_and(|a| {
            a.iter().all(|e| {
                e.as_object().is_some_and(|m| {
                    !m.is_empty()
                        && m.iter()
                            .all(|(k, v)| (k == "code" || k == "pointer") && v.is_string())
                })
            })
        });
        if !ok {
            return Err(
                "`expect.errors` must be an array of {\"code\", \"pointer\"} objects".into(),
            );
        }
    }
    Ok(())
}

/// One difference between what a case expects and what the run reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// The `expect` key.
    pub key: String,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

pub use sagaflow_participant::stubs::json_eq;

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-6,
        _ => false,
    }
}

/// Compares a run report (the runner's `RunReport` as JSON) with a case's
/// `expect`. Only the keys present in `expect` are checked:
///
/// - `status`, `error`, `cause`: exact; `causeContains`: substring of `cause`;
/// - `output`: [`json_eq`];
/// - `calls`: the reported counts, ignoring zero counts, equal the expected
///   ones (a stub called but not listed is a mismatch);
/// - `callOrder`: exact;
/// - `retryDelaysSeconds`: for each listed state, the reported delays (to
///   1e-6 s); states not listed are not checked;
/// - `errors`: each listed error (its `code` and/or `pointer`) is among the
///   reported ones; others may exist.
pub fn compare(expect: &Map<String, Value>, report: &Value) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut miss = |key: &str, message: String| {
        out.push(Mismatch {
            key: key.to_string(),
            message,
        })
    };
    let field = |k: &str| report.get(k).unwrap_or(&Value::Null);

    for key in ["status", "error", "cause"] {
        if let Some(want) = expect.get(key) {
            let got = field(key);
            if want != got {
                miss(key, format!("expected {want}, got {got}"));
            }
        }
    }
    if let Some(Value::String(want)) = expect.get("causeContains") {
        match field("cause") {
            Value::String(got) if got.contains(want.as_str()) => {}
            got => miss(
                "causeContains",
                format!("expected a cause containing {want:?}, got {got}"),
            ),
        }
    }
    if let Some(want) = expect.get("output") {
        let got = field("output");
        if !json_eq(want, got) {
            miss("output", format!("expected {want}, got {got}"));
        }
    }
    if let Some(Value::Object(want)) = expect.get("calls") {
        let nonzero = |m: Option<&Map<String, Value>>| -> Map<String, Value> {
            m.map(|m| {
                m.iter()
                    .filter(|(_, v)| v.as_u64() != Some(0))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
        };
        let want = nonzero(Some(want));
        let got = nonzero(field("calls").as_object());
        if !json_eq(&Value::Object(want.clone()), &Value::Object(got.clone())) {
            miss(
                "calls",
                format!(
                    "expected {}, got {}",
                    Value::Object(want),
                    Value::Object(got)
                ),
            );
        }
    }
    if let Some(want) = expect.get("callOrder") {
        let got = field("callOrder");
        if want != got {
            miss("callOrder", format!("expected {want}, got {got}"));
        }
    }
    if let Some(Value::Object(want)) = expect.get("retryDelaysSeconds") {
        let got_all = field("retryDelaysSeconds");
        for (state, want_delays) in want {
            let got = got_all
                .get(state)
                .cloned()
                .unwrap_or(Value::Array(Vec::new()));
            let same = match (want_delays.as_array(), got.as_array()) {
                (Some(w), Some(g)) => {
                    w.len() == g.len() && w.iter().zip(g).all(|(a, b)| close(a, b))
                }
                _ => false,
            };
            if !same {
                miss(
                    "retryDelaysSeconds",
                    format!("state {state:?}: expected {want_delays}, got {got}"),
                );
            }
        }
    }
    if let Some(Value::Array(want)) = expect.get("errors") {
        let got = field("errors").as_array().cloned().unwrap_or_default();
        for w in want {
            let found = got.iter().any(|g| {
                ["code", "pointer"]
                    .iter()
                    .all(|k| w.get(k).is_none_or(|wv| g.get(k) == Some(wv)))
            });
            if !found {
                miss(
                    "errors",
                    format!("expected an error {w} among {}", Value::Array(got.clone())),
                );
            }
        }
    }
    out
}

/// A failure message for a case: the file, the mismatches, the expected and
/// the actual report.
pub fn failure_message(case: &Case, mismatches: &[Mismatch], report: &Value) -> String {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    let mut msg = format!("case file: {}\n", case.path.display());
    msg.push_str(&format!("checks: {}\n", case.description));
    for m in mismatches {
        msg.push_str(&format!("  mismatch {m}\n"));
    }
    msg.push_str(&format!(
        "expected:\n{}\nactual report:\n{}\n",
        pretty(&Value::Object(case.expect.clone())),
        pretty(report)
    ));
    msg
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn case(v: Value) -> Result<Case, String> {
        parse_case(PathBuf::from("x.json"), "x".into(), v)
    }

    fn minimal() -> Value {
        json!({
            "description": "d",
            "definition": {"StartAt": "A", "States": {"A": {"Type": "Succeed"}}},
            "expect": {"status": "SUCCEEDED"}
        })
    }

    fn expect(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn minimal_case_parses_with_defaults() {
        let c = case(minimal()).unwrap();
        assert_eq!(c.input, json!({}));
        assert_eq!(c.stubs, json!({}));
        assert_eq!(c.execution_name, None);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let mut v = minimal();
        v["inputs"] = json!({});
        assert!(case(v).unwrap_err().contains("unknown key `inputs`"));
        let mut v = minimal();
        v["expect"]["outptu"] = json!(1);
        assert!(case(v).unwrap_err().contains("expect.outptu"));
    }

    #[test]
    fn bad_expectations_are_rejected() {
        for bad in [
            json!({"status": "DONE"}),
            json!({}),
            json!({"status": "FAILED", "cause": "a", "causeContains": "b"}),
            json!({"status": "FAILED", "calls": {"a": -1}}),
            json!({"status": "FAILED", "callOrder": [1]}),
            json!({"status": "FAILED", "retryDelaysSeconds": {"A": ["1"]}}),
            json!({"status": "INVALID_DEFINITION", "errors": [{"line": 1}]}),
            json!({"status": "INVALID_DEFINITION", "errors": [{}]}),
        ] {
            let mut v = minimal();
            v["expect"] = bad.clone();
            assert!(case(v).is_err(), "{bad} accepted");
        }
        let mut v = minimal();
        v["description"] = json!(" ");
        assert!(case(v).is_err());
    }

    #[test]
    fn json_eq_ignores_key_order_and_number_form() {
        assert!(json_eq(
            &json!({"a": 1, "b": [3.0]}),
            &json!({"b": [3], "a": 1.0})
        ));
        assert!(!json_eq(&json!({"a": 1}), &json!({"a": 1, "b": null})));
        assert!(!json_eq(&json!([1, 2]), &json!([2, 1])));
        assert!(!json_eq(&json!("1"), &json!(1)));
        assert!(!json_eq(&json!(1.5), &json!(1)));
    }

    #[test]
    fn only_present_keys_are_checked() {
        let report = json!({"status": "SUCCEEDED", "output": {"x": 1}});
        assert!(compare(&expect(json!({"status": "SUCCEEDED"})), &report).is_empty());
        let m = compare(
            &expect(json!({"status": "FAILED", "output": {"x": 2}})),
            &report,
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].key, "status");
        assert_eq!(m[1].key, "output");
    }

    #[test]
    fn output_null_is_checked() {
        let report = json!({"status": "SUCCEEDED", "output": {}});
        let m = compare(&expect(json!({"output": null})), &report);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn cause_checks() {
        let report = json!({"status": "FAILED", "error": "E", "cause": "it broke badly"});
        assert!(compare(&expect(json!({"causeContains": "broke"})), &report).is_empty());
        assert_eq!(
            compare(&expect(json!({"causeContains": "fixed"})), &report).len(),
            1
        );
        assert_eq!(
            compare(&expect(json!({"cause": "it broke"})), &report).len(),
            1
        );
        assert_eq!(compare(&expect(json!({"error": "F"})), &report).len(), 1);
    }

    #[test]
    fn calls_ignore_zero_but_catch_extra_stubs() {
        let report = json!({"calls": {"a": 2, "b": 0, "c": 1}});
        assert!(compare(&expect(json!({"calls": {"a": 2, "c": 1, "d": 0}})), &report).is_empty());
        assert_eq!(
            compare(&expect(json!({"calls": {"a": 2}})), &report).len(),
            1
        );
        assert_eq!(
            compare(&expect(json!({"calls": {"a": 1, "c": 1}})), &report).len(),
            1
        );
    }

    #[test]
    fn call_order_is_exact() {
        let report = json!({"callOrder": ["a", "b"]});
        assert!(compare(&expect(json!({"callOrder": ["a", "b"]})), &report).is_empty());
        assert_eq!(
            compare(&expect(json!({"callOrder": ["b", "a"]})), &report).len(),
            1
        );
    }

    #[test]
    fn retry_delays_compare_listed_states_numerically() {
        let report = json!({"retryDelaysSeconds": {"A": [1.0, 2.0, 4.5], "B": [1]}});
        assert!(
            compare(
                &expect(json!({"retryDelaysSeconds": {"A": [1, 2, 4.5]}})),
                &report
            )
            .is_empty()
        );
        assert_eq!(
            compare(
                &expect(json!({"retryDelaysSeconds": {"A": [1, 2]}})),
                &report
            )
            .len(),
            1
        );
        assert!(compare(&expect(json!({"retryDelaysSeconds": {"C": []}})), &report).is_empty());
        assert_eq!(
            compare(&expect(json!({"retryDelaysSeconds": {"C": [1]}})), &report).len(),
            1
        );
    }

    #[test]
    fn listed_errors_must_be_present() {
        let report = json!({"errors": [
            {"code": "UNKNOWN_STATE", "pointer": "/States/A/Next", "message": "m"},
            {"code": "UNREACHABLE_STATE", "pointer": "/States/B", "message": "m"}
        ]});
        let ok = json!({"errors": [{"code": "UNREACHABLE_STATE", "pointer": "/States/B"}]});
        assert!(compare(&expect(ok), &report).is_empty());
        let ok = json!({"errors": [{"pointer": "/States/A/Next"}]});
        assert!(compare(&expect(ok), &report).is_empty());
        let bad = json!({"errors": [{"code": "UNKNOWN_STATE", "pointer": "/States/B"}]});
        assert_eq!(compare(&expect(bad), &report).len(), 1);
        let bad = json!({"errors": [{"code": "MISSING_FIELD"}]});
        assert_eq!(compare(&expect(bad), &report).len(), 1);
    }

    #[test]
    fn failure_message_names_the_file_and_both_reports() {
        let c = case(minimal()).unwrap();
        let report = json!({"status": "FAILED"});
        let m = compare(&c.expect, &report);
        let msg = failure_message(&c, &m, &report);
        assert!(msg.contains("x.json"));
        assert!(msg.contains("\"SUCCEEDED\""));
        assert!(msg.contains("\"FAILED\""));
    }

    /// Every case file of the suite is well-formed, and there are enough.
    #[test]
    fn suite_files_are_valid_and_numerous() {
        let root = suite_dir();
        let files = case_files(&root).unwrap();
        let mut names = std::collections::BTreeSet::new();
        for f in &files {
            let c = load_case(&root, f).unwrap_or_else(|e| panic!("{e}"));
            assert!(names.insert(c.name.clone()), "duplicate case {}", c.name);
        }
        assert!(files.len() >= MIN_CASES, "only {} cases", files.len());
    }
}
