use proptest::prelude::*;
use serde_json::{Value, json};

use super::codes::*;
use super::locate::{Positions, child, split_last};
use super::{InvalidDefinition, MAX_DEPTH, parse_definition, parse_value};
use crate::model::{
    Condition, Count, Expr, FailField, Jitter, Operand, Operator, Percentage, ResultPath, Seconds,
    StateId, StateKind, Template, TemplateField, Transition, Wait,
};

fn ok(def: Value) -> crate::model::StateMachine {
    match parse_value(&def) {
        Ok(machine) => machine,
        Err(e) => panic!("expected a valid definition, got {:#?}\n{def:#}", e.errors),
    }
}

fn errs(def: &Value) -> Vec<(&'static str, String)> {
    match parse_value(def) {
        Ok(_) => panic!("expected errors for {def:#}"),
        Err(InvalidDefinition { errors }) => {
            errors.into_iter().map(|e| (e.code, e.pointer)).collect()
        }
    }
}

/// A machine whose only state is `state` (named `S`).
fn single(state: Value) -> Value {
    json!({"StartAt": "S", "States": {"S": state}})
}

// ---------------------------------------------------------------- valid

#[test]
fn hello_world_pass() {
    let m = ok(json!({
        "Comment": "A Hello World example of the Amazon States Language using a Pass state",
        "StartAt": "HelloWorld",
        "States": {"HelloWorld": {"Type": "Pass", "Result": "Hello World!", "End": true}}
    }));
    assert_eq!(
        m.comment.as_deref(),
        Some("A Hello World example of the Amazon States Language using a Pass state")
    );
    assert_eq!(m.graph.start_at, StateId(0));
    let s = m.graph.state(StateId(0));
    assert_eq!(&*s.name, "HelloWorld");
    assert_eq!(s.transition, Transition::End);
    assert!(s.input_path.as_ref().is_some_and(|p| p.is_identity()));
    assert!(s.output_path.as_ref().is_some_and(|p| p.is_identity()));
    let StateKind::Pass(pass) = &s.kind else {
        panic!("not a Pass")
    };
    assert_eq!(pass.result, Some(json!("Hello World!")));
    assert!(matches!(&pass.result_path, ResultPath::Path(p) if p.is_identity()));
}

#[test]
fn task_with_retry_and_catch() {
    let m = ok(json!({
        "StartAt": "BookFlight",
        "Version": "1.0",
        "TimeoutSeconds": 300,
        "States": {
            "BookFlight": {
                "Type": "Task",
                "Resource": "sagaflow:flights/book",
                "Parameters": {"id.$": "$.tripId", "fixed": {"a": [1, 2]}, "when.$": "$$.Execution.StartTime"},
                "ResultSelector": {"ref.$": "$.booking.ref"},
                "ResultPath": "$.flight",
                "TimeoutSeconds": 30,
                "HeartbeatSecondsPath": "$.hb",
                "Retry": [
                    {"ErrorEquals": ["Flights.Busy"], "IntervalSeconds": 2, "MaxAttempts": 5,
                     "BackoffRate": 1.5, "MaxDelaySeconds": 60, "JitterStrategy": "FULL"},
                    {"ErrorEquals": ["States.ALL"]}
                ],
                "Catch": [
                    {"ErrorEquals": ["States.ALL"], "Next": "CancelFlight", "ResultPath": "$.error",
                     "Assign": {"failed": true}}
                ],
                "Next": "Done"
            },
            "CancelFlight": {"Type": "Task", "Resource": "sagaflow:flights/cancel",
                             "ResultPath": null, "Next": "Failed"},
            "Failed": {"Type": "Fail", "Error": "BookingFailed", "Cause": "flight"},
            "Done": {"Type": "Succeed"}
        }
    }));
    assert_eq!(m.version.as_deref(), Some("1.0"));
    assert_eq!(m.timeout_seconds, Some(300));
    let names: Vec<&str> = m.graph.states.iter().map(|s| &*s.name).collect();
    assert_eq!(names, ["BookFlight", "CancelFlight", "Failed", "Done"]);
    let book = m.graph.state(StateId(0));
    assert_eq!(book.transition, Transition::Next(StateId(3)));
    let StateKind::Task(task) = &book.kind else {
        panic!("not a Task")
    };
    assert_eq!(&*task.resource, "sagaflow:flights/book");
    assert!(matches!(task.timeout, Some(Seconds::Fixed(30))));
    assert!(matches!(&task.heartbeat, Some(Seconds::Path(p)) if p.as_str() == "$.hb"));
    assert_eq!(task.retry.len(), 2);
    let r0 = &task.retry[0];
    assert_eq!(r0.error_equals, ["Flights.Busy"]);
    assert_eq!(
        (r0.interval_seconds, r0.max_attempts, r0.max_delay_seconds),
        (2, 5, Some(60))
    );
    assert_eq!(r0.backoff_rate, 1.5);
    assert_eq!(r0.jitter, Jitter::Full);
    // Defaults.
    let r1 = &task.retry[1];
    assert_eq!(
        (r1.interval_seconds, r1.max_attempts, r1.max_delay_seconds),
        (1, 3, None)
    );
    assert_eq!(r1.backoff_rate, 2.0);
    assert_eq!(r1.jitter, Jitter::None);
    let c = &task.catch[0];
    assert_eq!(c.next, StateId(1));
    assert!(matches!(&c.result_path, ResultPath::Path(p) if p.as_str() == "$.error"));
    assert!(matches!(&c.assign, Some(Template::Literal(v)) if *v == json!({"failed": true})));
    // Parameters: `.$` keys become expressions with the suffix stripped,
    // a sub-object without `.$` stays a literal.
    let Some(Template::Object(fields)) = &task.parameters else {
        panic!("not an object template")
    };
    let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["id", "fixed", "when"]);
    assert!(matches!(&fields[0].1, TemplateField::Expr(Expr::Path(p)) if p.as_str() == "$.tripId"));
    assert!(
        matches!(&fields[1].1, TemplateField::Template(Template::Literal(v)) if *v == json!({"a": [1, 2]}))
    );
    let cancel = m.graph.state(StateId(1));
    let StateKind::Task(cancel_task) = &cancel.kind else {
        panic!("not a Task")
    };
    assert!(matches!(cancel_task.result_path, ResultPath::Discard));
    let StateKind::Fail(fail) = &m.graph.state(StateId(2)).kind else {
        panic!("not a Fail")
    };
    assert!(matches!(&fail.error, Some(FailField::Literal(e)) if e == "BookingFailed"));
}

#[test]
fn choice_with_and_not_and_default() {
    let m = ok(json!({
        "StartAt": "Check",
        "States": {
            "Check": {
                "Type": "Choice",
                "Choices": [
                    {"And": [
                        {"Variable": "$.value", "IsPresent": true},
                        {"Variable": "$.value", "NumericGreaterThanEquals": 20},
                        {"Not": {"Variable": "$.kind", "StringMatches": "test*"}}
                     ], "Next": "Big", "Assign": {"seen.$": "$.value"}},
                    {"Variable": "$.when", "TimestampLessThan": "2016-03-14T01:59:00Z", "Next": "Old"},
                    {"Variable": "$.a", "StringEqualsPath": "$.b", "Next": "Old", "Comment": "c"},
                    {"Or": [{"Variable": "$.flag", "BooleanEquals": true}], "Next": "Big"}
                ],
                "Default": "Other",
                "InputPath": "$.data",
                "OutputPath": null
            },
            "Big": {"Type": "Succeed"},
            "Old": {"Type": "Succeed"},
            "Other": {"Type": "Fail"}
        }
    }));
    let s = m.graph.state(StateId(0));
    assert!(s.output_path.is_none());
    assert_eq!(s.input_path.as_ref().map(|p| p.as_str()), Some("$.data"));
    assert_eq!(s.transition, Transition::None);
    let StateKind::Choice(choice) = &s.kind else {
        panic!("not a Choice")
    };
    assert_eq!(choice.default, Some(StateId(3)));
    assert_eq!(choice.choices.len(), 4);
    assert_eq!(choice.choices[0].next, StateId(1));
    assert!(choice.choices[0].assign.is_some());
    let Condition::And(parts) = &choice.choices[0].condition else {
        panic!("not And")
    };
    assert_eq!(parts.len(), 3);
    assert!(
        matches!(&parts[2], Condition::Not(inner) if matches!(&**inner,
        Condition::Compare(c) if c.operator == Operator::StringMatches))
    );
    let Condition::Compare(cmp) = &choice.choices[2].condition else {
        panic!("not a comparison")
    };
    assert_eq!(cmp.operator, Operator::StringEquals);
    assert!(matches!(&cmp.operand, Operand::Path(p) if p.as_str() == "$.b"));
    assert_eq!(cmp.variable.as_str(), "$.a");
}

#[test]
fn wait_in_each_form() {
    let m = ok(json!({
        "StartAt": "A",
        "States": {
            "A": {"Type": "Wait", "Seconds": 10, "Next": "B"},
            "B": {"Type": "Wait", "Timestamp": "2016-03-14T01:59:00+02:00", "Next": "C"},
            "C": {"Type": "Wait", "SecondsPath": "$.delay", "Next": "D"},
            "D": {"Type": "Wait", "TimestampPath": "$$.Execution.Input.at", "End": true}
        }
    }));
    let kinds: Vec<&StateKind> = m.graph.states.iter().map(|s| &s.kind).collect();
    assert!(matches!(kinds[0], StateKind::Wait(Wait::Seconds(10))));
    assert!(
        matches!(kinds[1], StateKind::Wait(Wait::Timestamp(t)) if t.as_second() == 1_457_913_540)
    );
    assert!(matches!(kinds[2], StateKind::Wait(Wait::SecondsPath(p)) if p.as_str() == "$.delay"));
    assert!(matches!(kinds[3], StateKind::Wait(Wait::TimestampPath(_))));
}

#[test]
fn parallel_branches_are_graphs_of_their_own() {
    let m = ok(json!({
        "StartAt": "P",
        "States": {
            "P": {
                "Type": "Parallel",
                "Branches": [
                    {"StartAt": "L1", "States": {"L1": {"Type": "Pass", "Next": "L2"},
                                                  "L2": {"Type": "Pass", "End": true}}},
                    {"Comment": "right", "StartAt": "R1", "States": {"R1": {"Type": "Succeed"}}}
                ],
                "ResultSelector": {"left.$": "$[0]"},
                "Retry": [{"ErrorEquals": ["States.TaskFailed"]}],
                "Next": "Done"
            },
            "Done": {"Type": "Pass", "End": true}
        }
    }));
    let StateKind::Parallel(par) = &m.graph.state(StateId(0)).kind else {
        panic!("not Parallel")
    };
    assert_eq!(par.branches.len(), 2);
    assert_eq!(par.branches[0].states.len(), 2);
    assert_eq!(
        par.branches[0].state(StateId(0)).transition,
        Transition::Next(StateId(1))
    );
    assert_eq!(par.branches[1].lookup("R1"), Some(StateId(0)));
    assert_eq!(par.retry.len(), 1);
}

#[test]
fn map_item_processor_and_legacy_iterator() {
    let m = ok(json!({
        "StartAt": "New",
        "States": {
            "New": {
                "Type": "Map",
                "ItemsPath": "$.items",
                "ItemProcessor": {
                    "ProcessorConfig": {"Mode": "INLINE"},
                    "StartAt": "Each",
                    "States": {"Each": {"Type": "Task", "Resource": "r", "End": true}}
                },
                "ItemSelector": {"item.$": "$$.Map.Item.Value", "index.$": "$$.Map.Item.Index"},
                "MaxConcurrency": 2,
                "ToleratedFailurePercentage": 12.5,
                "ToleratedFailureCountPath": "$.tolerated",
                "ItemBatcher": {"MaxItemsPerBatch": 10, "BatchInput": {"x.$": "$.x"}},
                "Label": "each",
                "Next": "Old"
            },
            "Old": {
                "Type": "Map",
                "Iterator": {"StartAt": "It", "States": {"It": {"Type": "Pass", "End": true}}},
                "Parameters": {"v.$": "$$.Map.Item.Value"},
                "MaxConcurrencyPath": "$.n",
                "ResultPath": null,
                "End": true
            }
        }
    }));
    let StateKind::Map(new) = &m.graph.state(StateId(0)).kind else {
        panic!("not Map")
    };
    assert_eq!(new.items_path.as_str(), "$.items");
    assert_eq!(&*new.processor.states[0].name, "Each");
    assert!(matches!(new.max_concurrency, Some(Count::Fixed(2))));
    assert!(matches!(new.tolerated_failure_percentage, Some(Percentage::Fixed(p)) if p == 12.5));
    assert!(matches!(&new.tolerated_failure_count, Some(Count::Path(_))));
    assert!(matches!(&new.item_selector, Some(Template::Object(f)) if f.len() == 2));
    let batcher = new.item_batcher.as_ref().expect("ItemBatcher");
    assert!(matches!(
        batcher.max_items_per_batch,
        Some(Count::Fixed(10))
    ));
    assert!(batcher.batch_input.is_some());
    assert_eq!(new.label.as_deref(), Some("each"));
    let StateKind::Map(old) = &m.graph.state(StateId(1)).kind else {
        panic!("not Map")
    };
    assert!(old.items_path.is_identity());
    assert_eq!(&*old.processor.states[0].name, "It");
    assert!(
        old.item_selector.is_some(),
        "legacy Parameters become the item selector"
    );
    assert!(matches!(&old.max_concurrency, Some(Count::Path(_))));
    assert!(matches!(old.result_path, ResultPath::Discard));
}

#[test]
fn fail_with_error_path_intrinsic() {
    let m = ok(single(json!({
        "Type": "Fail",
        "Comment": "dynamic",
        "ErrorPath": "States.Format('{}Error', $.kind)",
        "CausePath": "$.cause"
    })));
    let StateKind::Fail(fail) = &m.graph.state(StateId(0)).kind else {
        panic!("not Fail")
    };
    assert!(matches!(
        &fail.error,
        Some(FailField::Expr(Expr::Intrinsic(_)))
    ));
    assert!(matches!(&fail.cause, Some(FailField::Expr(Expr::Path(p))) if p.as_str() == "$.cause"));
}

#[test]
fn other_accepted_forms() {
    // Result and Parameters together (AWS accepts both on Pass), an array
    // template with an expression inside, Assign with `.$`, a string
    // Parameters on a Task, Comment and QueryLanguage JSONPath everywhere.
    let m = ok(json!({
        "QueryLanguage": "JSONPath",
        "StartAt": "A",
        "States": {
            "A": {"Type": "Pass", "QueryLanguage": "JSONPath", "Comment": "x",
                  "Result": {"r": 1}, "Parameters": [{"a.$": "$.a"}, 2],
                  "Assign": {"total.$": "States.MathAdd($.a, 1)", "_name": "n", "x1": {"k": [1]}},
                  "Next": "B"},
            "B": {"Type": "Task", "Resource": "any:thing", "Parameters": "plain",
                  "Credentials": {"RoleArn": "arn"}, "End": true}
        }
    }));
    let a = m.graph.state(StateId(0));
    let StateKind::Pass(pass) = &a.kind else {
        panic!("not Pass")
    };
    assert_eq!(pass.result, Some(json!({"r": 1})));
    let Some(Template::Array(items)) = &pass.parameters else {
        panic!("not an array template")
    };
    assert!(matches!(&items[1], Template::Literal(v) if *v == json!(2)));
    let Some(Template::Object(vars)) = &a.assign else {
        panic!("Assign not compiled")
    };
    assert_eq!(vars[0].0, "total");
    assert!(matches!(
        &vars[0].1,
        TemplateField::Expr(Expr::Intrinsic(_))
    ));
    let StateKind::Task(task) = &m.graph.state(StateId(1)).kind else {
        panic!("not Task")
    };
    assert!(matches!(&task.parameters, Some(Template::Literal(v)) if *v == json!("plain")));
    assert_eq!(task.credentials, Some(json!({"RoleArn": "arn"})));
}

// -------------------------------------------------------------- invalid

fn check(def: Value, expected: &[(&str, &str)]) {
    let got = errs(&def);
    let got: Vec<(&str, &str)> = got.iter().map(|(c, p)| (*c, p.as_str())).collect();
    assert_eq!(got, expected, "for {def:#}");
}

#[test]
fn top_level_errors() {
    check(json!([]), &[(INVALID_TYPE, "")]);
    check(
        json!({"States": {"A": {"Type": "Succeed"}}}),
        &[(MISSING_FIELD, "")],
    );
    check(json!({"StartAt": "A"}), &[(MISSING_FIELD, "")]);
    check(
        json!({"StartAt": "A", "States": {}}),
        &[(INVALID_VALUE, "/States")],
    );
    check(
        json!({"StartAt": "A", "States": []}),
        &[(INVALID_TYPE, "/States")],
    );
    check(
        json!({"StartAt": "B", "States": {"A": {"Type": "Succeed"}}}),
        // Reachability is not judged from a StartAt that names no state.
        &[(MISSING_TRANSITION_TARGET, "/StartAt")],
    );
    check(
        json!({"StartAt": "A", "Foo": 1, "TimeoutSeconds": "10", "Version": 1,
               "States": {"A": {"Type": "Succeed"}}}),
        &[
            (UNKNOWN_FIELD, "/Foo"),
            (INVALID_TYPE, "/TimeoutSeconds"),
            (INVALID_TYPE, "/Version"),
        ],
    );
    check(
        json!({"StartAt": "A", "TimeoutSeconds": 0, "States": {"A": {"Type": "Succeed"}}}),
        &[(INVALID_VALUE, "/TimeoutSeconds")],
    );
    check(
        json!({"StartAt": "A", "QueryLanguage": "SQL", "States": {"A": {"Type": "Succeed"}}}),
        &[(INVALID_VALUE, "/QueryLanguage")],
    );
}

#[test]
fn jsonata_is_reported_as_unsupported() {
    let def = json!({"QueryLanguage": "JSONata", "StartAt": "A",
                     "States": {"A": {"Type": "Pass", "Output": "{% 1 %}", "End": true}}});
    let e = parse_value(&def).expect_err("JSONata").errors;
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].code, e[0].pointer.as_str()),
        (UNSUPPORTED_QUERY_LANGUAGE, "/QueryLanguage")
    );
    assert_eq!(
        e[0].message,
        "QueryLanguage JSONata is not supported yet (state machine)"
    );

    let def = json!({"StartAt": "A", "States": {
        "A": {"Type": "Pass", "QueryLanguage": "JSONata", "Output": "{% 1 %}", "Next": "B"},
        "B": {"Type": "Succeed"}}});
    let e = parse_value(&def).expect_err("JSONata state").errors;
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].pointer, "/States/A/QueryLanguage");
    assert!(
        e[0].message
            .contains("QueryLanguage JSONata is not supported yet")
    );
    assert!(e[0].message.contains("'A'"), "{}", e[0].message);
}

#[test]
fn transition_errors() {
    check(
        json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "Nope"}}}),
        &[(MISSING_TRANSITION_TARGET, "/States/A/Next")],
    );
    let e =
        parse_value(&json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "Nope"}}}))
            .expect_err("missing target")
            .errors;
    assert!(e[0].message.contains("'Nope'"));
    check(
        json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": true},
                                          "B": {"Type": "Pass", "End": true}}}),
        &[(UNREACHABLE_STATE, "/States/B")],
    );
    check(
        single(json!({"Type": "Pass"})),
        &[(MISSING_TRANSITION, "/States/S")],
    );
    // A graph that can only loop: AWS's MISSING_END_STATE.
    check(
        json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "B"},
                                          "B": {"Type": "Task", "Resource": "r", "Next": "A"}}}),
        &[(MISSING_END_STATE, "/States")],
    );
    check(
        json!({"StartAt": "P", "States": {"P": {"Type": "Parallel", "End": true, "Branches": [
            {"StartAt": "L", "States": {"L": {"Type": "Wait", "Seconds": 1, "Next": "L"}}}]}}}),
        &[(MISSING_END_STATE, "/States/P/Branches/0/States")],
    );
    // A loop with a way out is fine.
    assert!(
        parse_value(&json!({"StartAt": "A", "States": {
            "A": {"Type": "Choice", "Choices": [{"Variable": "$.done", "BooleanEquals": true, "Next": "Z"}], "Default": "B"},
            "B": {"Type": "Pass", "Next": "A"},
            "Z": {"Type": "Succeed"}}}))
        .is_ok()
    );
    check(
        json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "B", "End": true},
                                          "B": {"Type": "Succeed"}}}),
        &[(CONFLICTING_FIELDS, "/States/A/End")],
    );
    check(
        single(json!({"Type": "Pass", "End": false})),
        &[(INVALID_VALUE, "/States/S/End")],
    );
    check(
        single(json!({"Type": "Pass", "End": "yes"})),
        &[(INVALID_TYPE, "/States/S/End")],
    );
    check(
        single(json!({"Type": "Pass", "Next": 3})),
        &[(INVALID_TYPE, "/States/S/Next")],
    );
    check(
        single(json!({"Type": "Succeed", "Next": "S"})),
        &[(UNKNOWN_FIELD, "/States/S/Next")],
    );
    check(
        single(json!({"Type": "Fail", "End": true, "InputPath": "$"})),
        &[
            (UNKNOWN_FIELD, "/States/S/End"),
            (UNKNOWN_FIELD, "/States/S/InputPath"),
        ],
    );
    check(
        single(json!({"Type": "Nope", "End": true})),
        &[(INVALID_VALUE, "/States/S/Type")],
    );
    check(
        single(json!({"End": true})),
        &[(MISSING_FIELD, "/States/S")],
    );
    check(single(json!("Pass")), &[(INVALID_TYPE, "/States/S")]);
}

#[test]
fn state_names() {
    let long = "x".repeat(81);
    check(
        json!({"StartAt": long, "States": {long.clone(): {"Type": "Succeed"}}}),
        &[(INVALID_STATE_NAME, &*format!("/States/{long}"))],
    );
    let ok80 = "y".repeat(80);
    ok(json!({"StartAt": ok80, "States": {ok80.clone(): {"Type": "Succeed"}}}));
    // Control characters would break the task ids they go into.
    for bad in ["two\nlines", "cr\r", "tab\there", "nul\u{0}", "c1\u{85}"] {
        check(
            json!({"StartAt": bad, "States": {bad: {"Type": "Succeed"}}}),
            &[(INVALID_STATE_NAME, &*format!("/States/{bad}"))],
        );
    }
    // Any other character is fine.
    ok(
        json!({"StartAt": "Réserver le vol ✈ (1/2)", "States": {"Réserver le vol ✈ (1/2)": {"Type": "Succeed"}}}),
    );
    // Names are unique in the whole machine, branches included.
    check(
        json!({"StartAt": "P", "States": {"P": {"Type": "Parallel", "End": true, "Branches": [
            {"StartAt": "X", "States": {"X": {"Type": "Succeed"}}},
            {"StartAt": "X", "States": {"X": {"Type": "Succeed"}}}]}}}),
        &[(DUPLICATE_STATE_NAME, "/States/P/Branches/1/States/X")],
    );
    // A `/` in a name is escaped in pointers.
    check(
        json!({"StartAt": "a/b", "States": {"a/b": {"Type": "Pass", "Next": "c~d"}}}),
        &[(MISSING_TRANSITION_TARGET, "/States/a~1b/Next")],
    );
}

#[test]
fn task_errors() {
    check(
        single(json!({"Type": "Task", "End": true})),
        &[(MISSING_FIELD, "/States/S")],
    );
    check(
        single(json!({"Type": "Task", "Resource": "", "End": true})),
        &[(INVALID_VALUE, "/States/S/Resource")],
    );
    check(
        single(json!({"Type": "Task", "Resource": 1, "End": true})),
        &[(INVALID_TYPE, "/States/S/Resource")],
    );
    check(
        single(
            json!({"Type": "Task", "Resource": "r", "TimeoutSeconds": 10,
                      "HeartbeatSeconds": 10, "End": true}),
        ),
        &[(INVALID_VALUE, "/States/S/HeartbeatSeconds")],
    );
    check(
        single(
            json!({"Type": "Task", "Resource": "r", "TimeoutSeconds": 10,
                      "TimeoutSecondsPath": "$.t", "End": true}),
        ),
        &[(CONFLICTING_FIELDS, "/States/S/TimeoutSecondsPath")],
    );
    check(
        single(json!({"Type": "Task", "Resource": "r", "TimeoutSeconds": 0, "End": true})),
        &[(INVALID_VALUE, "/States/S/TimeoutSeconds")],
    );
    check(
        single(json!({"Type": "Task", "Resource": "r", "HeartbeatSeconds": 1.5, "End": true})),
        &[(INVALID_TYPE, "/States/S/HeartbeatSeconds")],
    );
    check(
        single(
            json!({"Type": "Task", "Resource": "r", "TimeoutSecondsPath": "$.a[*]",
                      "End": true}),
        ),
        &[(INVALID_PATH, "/States/S/TimeoutSecondsPath")],
    );
    check(
        single(json!({"Type": "Task", "Resource": "r", "Credentials": "role", "End": true})),
        &[(INVALID_TYPE, "/States/S/Credentials")],
    );
    check(
        single(json!({"Type": "Task", "Resource": "r", "Result": 1, "End": true})),
        &[(UNKNOWN_FIELD, "/States/S/Result")],
    );
}

#[test]
fn retry_and_catch_errors() {
    let task = |retry: Value, catch: Value| {
        json!({"StartAt": "S", "States": {
            "S": {"Type": "Task", "Resource": "r", "Retry": retry, "Catch": catch, "End": true},
            "H": {"Type": "Succeed"}}})
    };
    check(
        task(
            json!([{"ErrorEquals": ["A"], "MaxAttempts": -1, "BackoffRate": 0.5,
                    "IntervalSeconds": 0, "JitterStrategy": "SOME", "MaxDelaySeconds": 31622401,
                    "Foo": 1}]),
            json!([{"ErrorEquals": ["States.ALL"], "Next": "H"}]),
        ),
        &[
            (INVALID_VALUE, "/States/S/Retry/0/MaxAttempts"),
            (INVALID_VALUE, "/States/S/Retry/0/BackoffRate"),
            (INVALID_VALUE, "/States/S/Retry/0/IntervalSeconds"),
            (INVALID_VALUE, "/States/S/Retry/0/JitterStrategy"),
            (INVALID_VALUE, "/States/S/Retry/0/MaxDelaySeconds"),
            (UNKNOWN_FIELD, "/States/S/Retry/0/Foo"),
        ],
    );
    check(
        task(
            json!([{"ErrorEquals": ["States.ALL", "X"]}, {"ErrorEquals": ["States.ALL"]},
                   {"ErrorEquals": []}, {}, {"ErrorEquals": "X"}, 3]),
            json!([{"ErrorEquals": ["States.ALL"], "Next": "H"}, {"ErrorEquals": ["X"]},
                   {"ErrorEquals": ["Y"], "Next": "Z", "ResultPath": "$[*]"}]),
        ),
        &[
            (STATES_ALL_NOT_LAST, "/States/S/Retry/0"),
            (STATES_ALL_NOT_ALONE, "/States/S/Retry/0/ErrorEquals"),
            (STATES_ALL_NOT_LAST, "/States/S/Retry/1"),
            (INVALID_VALUE, "/States/S/Retry/2/ErrorEquals"),
            (MISSING_FIELD, "/States/S/Retry/3"),
            (INVALID_TYPE, "/States/S/Retry/4/ErrorEquals"),
            (INVALID_TYPE, "/States/S/Retry/5"),
            (STATES_ALL_NOT_LAST, "/States/S/Catch/0"),
            (MISSING_FIELD, "/States/S/Catch/1"),
            (MISSING_TRANSITION_TARGET, "/States/S/Catch/2/Next"),
            (INVALID_PATH, "/States/S/Catch/2/ResultPath"),
        ],
    );
    check(
        task(json!({}), json!("H")),
        // H is named by the Catch that could not be read: not reported
        // unreachable on top of it.
        &[
            (INVALID_TYPE, "/States/S/Retry"),
            (INVALID_TYPE, "/States/S/Catch"),
        ],
    );
    // A bad Comment is reported beside another error of the state.
    check(
        single(json!({"Type": "Wait", "Seconds": "5", "Comment": 7, "End": true})),
        &[
            (INVALID_TYPE, "/States/S/Seconds"),
            (INVALID_TYPE, "/States/S/Comment"),
        ],
    );
    check(
        json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": ["B"]},
                                          "B": {"Type": "Pass", "End": true}}}),
        &[(INVALID_TYPE, "/States/A/Next")],
    );
}

#[test]
fn choice_errors() {
    let choice = |choices: Value| {
        json!({"StartAt": "C", "States": {
            "C": {"Type": "Choice", "Choices": choices, "Default": "T"},
            "T": {"Type": "Succeed"}}})
    };
    check(choice(json!([])), &[(INVALID_VALUE, "/States/C/Choices")]);
    check(choice(json!({})), &[(INVALID_TYPE, "/States/C/Choices")]);
    check(
        choice(json!([{"Variable": "$.x", "StringEquals": "a"}])),
        &[(MISSING_TRANSITION, "/States/C/Choices/0")],
    );
    check(
        choice(json!([{"And": [{"Variable": "$.x", "IsNull": true, "Next": "T"}], "Next": "T"}])),
        &[(INVALID_CHOICE_RULE, "/States/C/Choices/0/And/0/Next")],
    );
    check(
        choice(json!([{"Variable": "$.x", "StringEquals": "a", "NumericEquals": 1, "Next": "T"}])),
        &[(CONFLICTING_FIELDS, "/States/C/Choices/0/NumericEquals")],
    );
    check(
        choice(json!([{"Variable": "$.x", "Next": "T"}])),
        &[(INVALID_CHOICE_RULE, "/States/C/Choices/0")],
    );
    check(
        choice(json!([
            {"Variable": "$.x", "NumericEquals": "1", "Next": "T"},
            {"Variable": "$.x", "TimestampEquals": "2016-03-14t01:59:00Z", "Next": "T"},
            {"Variable": "$.x", "BooleanEquals": 1, "Next": "T"},
            {"Variable": "$.x", "IsString": "yes", "Next": "T"},
            {"Variable": "$.x", "StringLessThan": 2, "Next": "T"},
            {"Variable": "$.x", "StringEqualsPath": "nope", "Next": "T"},
            {"StringEquals": "a", "Next": "T"},
            {"Variable": 5, "StringEquals": "a", "Next": "T"},
            {"Variable": "$.x", "Or": [{"Variable": "$.y", "IsNull": false}], "Next": "T"},
            {"Not": [], "Next": "T"},
            {"And": [], "Next": "T"},
            {"Variable": "$.x", "StringEquals": "a", "Next": "Missing", "Foo": 1}
        ])),
        &[
            (INVALID_TYPE, "/States/C/Choices/0/NumericEquals"),
            (INVALID_VALUE, "/States/C/Choices/1/TimestampEquals"),
            (INVALID_TYPE, "/States/C/Choices/2/BooleanEquals"),
            (INVALID_TYPE, "/States/C/Choices/3/IsString"),
            (INVALID_TYPE, "/States/C/Choices/4/StringLessThan"),
            (INVALID_PATH, "/States/C/Choices/5/StringEqualsPath"),
            (MISSING_FIELD, "/States/C/Choices/6"),
            (INVALID_TYPE, "/States/C/Choices/7/Variable"),
            (INVALID_CHOICE_RULE, "/States/C/Choices/8/Variable"),
            (INVALID_TYPE, "/States/C/Choices/9/Not"),
            (INVALID_VALUE, "/States/C/Choices/10/And"),
            (MISSING_TRANSITION_TARGET, "/States/C/Choices/11/Next"),
            (UNKNOWN_FIELD, "/States/C/Choices/11/Foo"),
        ],
    );
    check(
        json!({"StartAt": "C", "States": {
            "C": {"Type": "Choice", "Next": "T", "Default": "Gone",
                  "Choices": [{"Variable": "$.x", "IsPresent": true, "Next": "T"}]},
            "T": {"Type": "Succeed"}}}),
        &[
            (UNKNOWN_FIELD, "/States/C/Next"),
            (MISSING_TRANSITION_TARGET, "/States/C/Default"),
        ],
    );
}

#[test]
fn wait_errors() {
    check(
        single(json!({"Type": "Wait", "End": true})),
        &[(MISSING_FIELD, "/States/S")],
    );
    check(
        single(json!({"Type": "Wait", "Seconds": 5, "SecondsPath": "$.s", "End": true})),
        &[(CONFLICTING_FIELDS, "/States/S/SecondsPath")],
    );
    check(
        single(json!({"Type": "Wait", "Timestamp": "2016-03-14t01:59:00Z", "End": true})),
        &[(INVALID_VALUE, "/States/S/Timestamp")],
    );
    check(
        single(json!({"Type": "Wait", "Timestamp": "2016-03-14T01:59:00", "End": true})),
        &[(INVALID_VALUE, "/States/S/Timestamp")],
    );
    check(
        single(json!({"Type": "Wait", "Seconds": -1, "End": true})),
        &[(INVALID_VALUE, "/States/S/Seconds")],
    );
    check(
        single(json!({"Type": "Wait", "TimestampPath": "$..t", "End": true})),
        &[(INVALID_PATH, "/States/S/TimestampPath")],
    );
}

#[test]
fn fail_errors() {
    check(
        single(json!({"Type": "Fail", "Error": "E", "ErrorPath": "$.e"})),
        &[(CONFLICTING_FIELDS, "/States/S/ErrorPath")],
    );
    check(
        single(json!({"Type": "Fail", "CausePath": "States.Nope($.x)"})),
        &[(INVALID_INTRINSIC, "/States/S/CausePath")],
    );
    check(
        single(json!({"Type": "Fail", "CausePath": "States.Format()"})),
        &[(INVALID_INTRINSIC, "/States/S/CausePath")],
    );
    check(
        single(json!({"Type": "Fail", "ErrorPath": "$.errors[*]"})),
        &[(INVALID_PATH, "/States/S/ErrorPath")],
    );
    check(
        single(json!({"Type": "Fail", "Cause": 5})),
        &[(INVALID_TYPE, "/States/S/Cause")],
    );
}

#[test]
fn paths_templates_and_assign() {
    check(
        single(
            json!({"Type": "Pass", "InputPath": "foo", "OutputPath": 3, "ResultPath": "$.a[*]",
                      "End": true}),
        ),
        &[
            (INVALID_PATH, "/States/S/InputPath"),
            (INVALID_TYPE, "/States/S/OutputPath"),
            (INVALID_PATH, "/States/S/ResultPath"),
        ],
    );
    check(
        single(
            json!({"Type": "Pass", "Parameters": {"a.$": "nope", "b": {"c.$": 5},
                      "d": [{"e.$": "States.Bogus()"}]}, "End": true}),
        ),
        &[
            (INVALID_PATH, "/States/S/Parameters/a.$"),
            (INVALID_TYPE, "/States/S/Parameters/b/c.$"),
            (INVALID_INTRINSIC, "/States/S/Parameters/d/0/e.$"),
        ],
    );
    check(
        single(
            json!({"Type": "Pass", "Assign": {"1abc": 1, "ok": 2, "bad-name.$": "$.x",
                      &"v".repeat(81): 3}, "End": true}),
        ),
        &[
            (INVALID_VARIABLE_NAME, "/States/S/Assign/1abc"),
            (INVALID_VARIABLE_NAME, "/States/S/Assign/bad-name.$"),
            (
                INVALID_VARIABLE_NAME,
                &*format!("/States/S/Assign/{}", "v".repeat(81)),
            ),
        ],
    );
    check(
        single(json!({"Type": "Pass", "Assign": [1], "End": true})),
        &[(INVALID_TYPE, "/States/S/Assign")],
    );
    check(
        single(json!({"Type": "Succeed", "Assign": {"a": 1}})),
        &[(UNKNOWN_FIELD, "/States/S/Assign")],
    );
}

#[test]
fn errors_inside_parallel_branches_and_map_processors() {
    check(
        json!({"StartAt": "P", "States": {
            "P": {"Type": "Parallel", "Next": "After", "Branches": [
                {"StartAt": "A", "States": {"A": {"Type": "Pass", "End": true}}},
                {"StartAt": "X", "Bogus": 1, "States": {
                    "X": {"Type": "Pass", "Next": "After"},
                    "Y": {"Type": "Pass", "End": true}}}
            ]},
            "After": {"Type": "Succeed"}}}),
        &[
            (UNKNOWN_FIELD, "/States/P/Branches/1/Bogus"),
            (
                MISSING_TRANSITION_TARGET,
                "/States/P/Branches/1/States/X/Next",
            ),
            (UNREACHABLE_STATE, "/States/P/Branches/1/States/Y"),
        ],
    );
    check(
        json!({"StartAt": "P", "States": {"P": {"Type": "Parallel", "Branches": [], "End": true}}}),
        &[(INVALID_VALUE, "/States/P/Branches")],
    );
    check(
        json!({"StartAt": "M", "States": {
            "M": {"Type": "Map", "End": true,
                  "ItemReader": {"Resource": "arn:aws:states:::s3:getObject"},
                  "ItemProcessor": {
                      "ProcessorConfig": {"Mode": "SIDEWAYS"},
                      "StartAt": "Y",
                      "States": {"Y": {"Type": "Task", "Resource": "r", "End": true,
                                       "Retry": [{"ErrorEquals": ["E"], "MaxAttempts": "3"}]}}},
                  "ItemSelector": {}, "Parameters": {},
                  "MaxConcurrency": -1, "ToleratedFailurePercentage": 101,
                  "ItemsPath": "$.items[*]",
                  "ResultWriter": {}}}}),
        &[
            (UNSUPPORTED_FIELD, "/States/M/ItemReader"),
            (
                INVALID_VALUE,
                "/States/M/ItemProcessor/ProcessorConfig/Mode",
            ),
            (
                INVALID_TYPE,
                "/States/M/ItemProcessor/States/Y/Retry/0/MaxAttempts",
            ),
            (CONFLICTING_FIELDS, "/States/M/Parameters"),
            (INVALID_VALUE, "/States/M/MaxConcurrency"),
            (INVALID_VALUE, "/States/M/ToleratedFailurePercentage"),
            (INVALID_PATH, "/States/M/ItemsPath"),
            (UNSUPPORTED_FIELD, "/States/M/ResultWriter"),
        ],
    );
    check(
        json!({"StartAt": "M", "States": {"M": {"Type": "Map", "End": true}}}),
        &[(MISSING_FIELD, "/States/M")],
    );
    check(
        json!({"StartAt": "M", "States": {"M": {"Type": "Map", "End": true,
            "Iterator": {"StartAt": "I", "States": {"I": {"Type": "Succeed"}}},
            "ItemProcessor": {"StartAt": "J", "States": {"J": {"Type": "Succeed"}}}}}}),
        &[(CONFLICTING_FIELDS, "/States/M/Iterator")],
    );
    check(
        json!({"StartAt": "M", "States": {"M": {"Type": "Map", "End": true,
            "MaxConcurrency": 1, "MaxConcurrencyPath": "$.n",
            "ItemBatcher": {"MaxItemsPerBatch": 0, "MaxInputBytesPerBatch": 300000},
            "Iterator": {"StartAt": "I", "ProcessorConfig": {}, "States": {"I": {"Type": "Succeed"}}}}}}),
        &[
            (CONFLICTING_FIELDS, "/States/M/MaxConcurrencyPath"),
            (INVALID_VALUE, "/States/M/ItemBatcher/MaxItemsPerBatch"),
            (INVALID_VALUE, "/States/M/ItemBatcher/MaxInputBytesPerBatch"),
            (UNKNOWN_FIELD, "/States/M/Iterator/ProcessorConfig"),
        ],
    );
    let e = parse_value(
        &json!({"StartAt": "M", "States": {"M": {"Type": "Map", "End": true,
        "ItemReader": {}, "Iterator": {"StartAt": "I", "States": {"I": {"Type": "Succeed"}}}}}}),
    )
    .expect_err("ItemReader")
    .errors;
    assert!(
        e[0].message.contains("S3") && e[0].message.contains("input"),
        "{}",
        e[0].message
    );
}

#[test]
fn many_errors_are_all_reported_in_document_order() {
    let def = json!({
        "StartAt": "A",
        "States": {
            "A": {"Type": "Task", "Next": "B", "TimeoutSeconds": -5},
            "B": {"Type": "Pass", "Next": "Nowhere", "Bogus": true},
            "C": {"Type": "Wait", "End": true},
            "D": {"Type": "Succeed", "InputPath": "not a path"}
        }
    });
    check(
        def,
        &[
            (MISSING_FIELD, "/States/A"),
            (INVALID_VALUE, "/States/A/TimeoutSeconds"),
            (MISSING_TRANSITION_TARGET, "/States/B/Next"),
            (UNKNOWN_FIELD, "/States/B/Bogus"),
            (MISSING_FIELD, "/States/C"),
            (UNREACHABLE_STATE, "/States/C"),
            (UNREACHABLE_STATE, "/States/D"),
            (INVALID_PATH, "/States/D/InputPath"),
        ],
    );
}

// ------------------------------------------------------- text positions

#[test]
fn line_and_column_of_each_error() {
    let text = r#"{
  "StartAt": "A",
  "States": {
    "A": {
      "Type": "Task",
      "Resource": "r",
      "Retry": [
        {"ErrorEquals": ["E"], "MaxAttempts": -1}
      ],
      "Next": "Gone"
    },
    "é/x": {"Type": "Pass", "End": true}
  }
}"#;
    let e = parse_definition(text).expect_err("invalid").errors;
    let got: Vec<(&str, &str, Option<usize>, Option<usize>)> = e
        .iter()
        .map(|e| (e.code, e.pointer.as_str(), e.line, e.column))
        .collect();
    assert_eq!(
        got,
        [
            (
                INVALID_VALUE,
                "/States/A/Retry/0/MaxAttempts",
                Some(8),
                Some(32)
            ),
            (
                MISSING_TRANSITION_TARGET,
                "/States/A/Next",
                Some(10),
                Some(7)
            ),
            (UNREACHABLE_STATE, "/States/é~1x", Some(12), Some(5)),
        ]
    );
    // The same definition as a value gives the same errors without positions.
    let value: Value = serde_json::from_str(text).expect("json");
    let from_value = parse_value(&value).expect_err("invalid").errors;
    assert_eq!(from_value.len(), 3);
    assert!(
        from_value
            .iter()
            .all(|e| e.line.is_none() && e.column.is_none())
    );
    assert!(
        e[0].to_string()
            .starts_with("8:32: /States/A/Retry/0/MaxAttempts [INVALID_VALUE]")
    );
}

#[test]
fn absent_field_falls_back_to_its_object() {
    let text =
        "{\"StartAt\": \"A\",\n \"States\": {\n  \"A\": {\"Type\": \"Task\", \"End\": true}}}";
    let e = parse_definition(text).expect_err("no Resource").errors;
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].code, e[0].pointer.as_str()),
        (MISSING_FIELD, "/States/A")
    );
    assert_eq!((e[0].line, e[0].column), (Some(3), Some(3)));
}

#[test]
fn duplicate_state_keys_in_text() {
    let text = r#"{"StartAt": "A", "States": {
  "A": {"Type": "Pass", "End": true},
  "A": {"Type": "Succeed"}
}}"#;
    let e = parse_definition(text).expect_err("duplicate").errors;
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].code, e[0].pointer.as_str()),
        (DUPLICATE_STATE_NAME, "/States/A")
    );
    assert_eq!((e[0].line, e[0].column), (Some(3), Some(3)));
    // Duplicate keys elsewhere keep serde_json's last-wins reading.
    let m = parse_definition(
        r#"{"StartAt": "B", "StartAt": "A", "States": {"A": {"Type": "Succeed"}}}"#,
    )
    .expect("duplicate StartAt is read last-wins");
    assert_eq!(m.graph.states.len(), 1);
}

#[test]
fn malformed_json_is_one_error() {
    let e = parse_definition("{\n  \"StartAt\": \"A\",\n  \"States\": {,}\n}")
        .expect_err("bad")
        .errors;
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].code, e[0].pointer.as_str()), (INVALID_JSON, ""));
    assert_eq!((e[0].line, e[0].column), (Some(3), Some(14)));
    assert!(e[0].message.contains("line 3"), "{}", e[0].message);
    let e = parse_definition("").expect_err("empty").errors;
    assert_eq!(e[0].code, INVALID_JSON);
}

#[test]
fn deep_nesting_is_a_clear_error() {
    let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    let e = parse_definition(&deep).expect_err("deep").errors;
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].code, INVALID_JSON);
    assert!(e[0].message.contains("recursion limit"), "{}", e[0].message);

    let inside = format!(
        r#"{{"StartAt": "A", "States": {{"A": {{"Type": "Pass", "End": true, "Result": {}1{}}}}}}}"#,
        "[".repeat(1000),
        "]".repeat(1000)
    );
    assert_eq!(
        parse_definition(&inside).expect_err("deep").errors[0].code,
        INVALID_JSON
    );

    // A value built in memory, deeper than any serde_json text can be.
    let mut v = json!(1);
    for _ in 0..1000 {
        v = Value::Array(vec![v]);
    }
    let def = json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": true, "Result": v}}});
    let e = parse_value(&def).expect_err("deep value").errors;
    assert_eq!((e.len(), e[0].code), (1, INVALID_JSON));
    assert!(e[0].message.contains("deeper"), "{}", e[0].message);
}

#[test]
fn anything_serde_json_reads_is_within_the_depth_limit() {
    // The deepest Result that serde_json still parses is accepted.
    let mut depth = 0;
    for d in (100..=MAX_DEPTH + 2).rev() {
        let text = format!(
            r#"{{"StartAt": "A", "States": {{"A": {{"Type": "Pass", "End": true, "Result": {}1{}}}}}}}"#,
            "[".repeat(d),
            "]".repeat(d)
        );
        if serde_json::from_str::<Value>(&text).is_ok() {
            depth = d;
            assert!(parse_definition(&text).is_ok(), "depth {d} must parse");
            break;
        }
    }
    assert!(depth > 100, "serde_json parsed no Result deeper than 100");
}

#[test]
fn pointer_helpers() {
    assert_eq!(child("/States", "a/b~c"), "/States/a~1b~0c");
    assert_eq!(
        split_last("/States/a~1b~0c"),
        ("/States", "a/b~c".to_string())
    );
    assert_eq!(split_last(""), ("", String::new()));
    let p = Positions::index("{\"a\\u00e9\\ud83d\\ude00\": [1, {\"b\": 2}]}");
    assert_eq!(p.get("/a\u{e9}\u{1F600}"), Some((1, 2)));
    assert_eq!(p.get("/a\u{e9}\u{1F600}/1/b"), Some((1, 30)));
    assert_eq!(p.find("/a\u{e9}\u{1F600}/1/b/zzz"), Some((1, 30)));
    assert_eq!(p.find("/nope"), Some((1, 1)));
    // Malformed text is indexed as far as it goes, without panicking.
    let p = Positions::index("{\"a\": [1, \"x");
    assert_eq!(p.get("/a"), Some((1, 2)));
}

// ------------------------------------------------------------- proptests

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[ -~]{0,12}".prop_map(Value::String),
        prop::sample::select(VALUES.to_vec()).prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(KEYS.to_vec()).prop_map(str::to_string),
                    inner
                ),
                0..8
            )
            .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

const KEYS: &[&str] = &[
    "StartAt",
    "States",
    "Type",
    "Next",
    "End",
    "A",
    "B",
    "Resource",
    "Retry",
    "Catch",
    "ErrorEquals",
    "Choices",
    "Variable",
    "And",
    "Not",
    "StringEquals",
    "NumericEqualsPath",
    "Branches",
    "ItemProcessor",
    "Iterator",
    "Parameters",
    "x.$",
    "Assign",
    "ResultPath",
    "InputPath",
    "Seconds",
    "Timestamp",
    "ErrorPath",
    "ItemBatcher",
    "QueryLanguage",
    "Default",
];
const VALUES: &[&str] = &[
    "Pass",
    "Task",
    "Choice",
    "Wait",
    "Succeed",
    "Fail",
    "Parallel",
    "Map",
    "A",
    "B",
    "$",
    "$.x",
    "$$.Map.Item.Value",
    "$.a[*]",
    "States.ALL",
    "States.Format('{}', $.x)",
    "States.Nope()",
    "2016-03-14T01:59:00Z",
    "JSONata",
    "[",
    "$..x",
];

/// A definition that uses most fields, for the mutation proptest.
fn rich_definition() -> Value {
    json!({
        "Comment": "rich", "StartAt": "T", "TimeoutSeconds": 60,
        "States": {
            "T": {"Type": "Task", "Resource": "r", "Parameters": {"a.$": "$.a", "b": [1]},
                  "ResultSelector": {"x.$": "$.x"}, "ResultPath": "$.t", "TimeoutSeconds": 9,
                  "HeartbeatSeconds": 3, "Assign": {"v.$": "States.Array($.a)"},
                  "Retry": [{"ErrorEquals": ["E"], "IntervalSeconds": 2, "BackoffRate": 1.5,
                             "MaxDelaySeconds": 5, "JitterStrategy": "FULL"}],
                  "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "F", "ResultPath": "$.e"}],
                  "Next": "C"},
            "C": {"Type": "Choice", "Default": "W", "Choices": [
                {"And": [{"Variable": "$.a", "NumericLessThan": 3},
                         {"Not": {"Variable": "$.t", "TimestampEqualsPath": "$.u"}}],
                 "Next": "P"}]},
            "W": {"Type": "Wait", "Timestamp": "2020-01-01T00:00:00Z", "Next": "P"},
            "P": {"Type": "Parallel", "Next": "M", "Branches": [
                {"StartAt": "B1", "States": {"B1": {"Type": "Pass", "Result": 1, "End": true}}}]},
            "M": {"Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 1,
                  "ItemSelector": {"i.$": "$$.Map.Item.Value"},
                  "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}, "StartAt": "I",
                                    "States": {"I": {"Type": "Succeed"}}},
                  "End": true},
            "F": {"Type": "Fail", "ErrorPath": "$.e.Error", "Cause": "c"}
        }
    })
}

/// Every pointer of `value` except the root.
fn pointers(value: &Value, at: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = child(at, k);
                out.push(p.clone());
                pointers(v, &p, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(v, &p, out);
            }
        }
        _ => {}
    }
}

#[test]
fn rich_definition_is_valid() {
    ok(rich_definition());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mutating_one_field_never_panics(pick in any::<prop::sample::Index>(), new in arb_json()) {
        let mut def = rich_definition();
        let mut all = Vec::new();
        pointers(&def, "", &mut all);
        let target = pick.get(&all).clone();
        if let Some(slot) = def.pointer_mut(&target) {
            *slot = new;
        }
        if let Err(e) = parse_value(&def) {
            prop_assert!(!e.errors.is_empty());
        }
        let _ = parse_definition(&serde_json::to_string_pretty(&def).expect("serialize"));
    }

    #[test]
    fn parse_definition_never_panics(text in ".{0,200}") {
        let _ = parse_definition(&text);
    }

    #[test]
    fn parse_value_never_panics_and_agrees_with_text(value in arb_json()) {
        let from_value = parse_value(&value);
        let text = serde_json::to_string(&value).expect("serialize");
        let from_text = parse_definition(&text);
        match (from_value, from_text) {
            (Ok(_), Ok(_)) => {}
            (Err(a), Err(b)) => {
                prop_assert!(!a.errors.is_empty());
                let a: Vec<_> = a.errors.iter().map(|e| (e.code, e.pointer.clone())).collect();
                let b: Vec<_> = b.errors.iter().map(|e| (e.code, e.pointer.clone())).collect();
                prop_assert_eq!(a, b);
            }
            (a, b) => prop_assert!(false, "value: {:?} text: {:?}", a.is_ok(), b.is_ok()),
        }
    }

    #[test]
    fn machines_built_from_state_parts_never_panic(
        states in prop::collection::vec(arb_json(), 1..4),
        start in prop::sample::select(vec!["S0", "S1", "S9"]),
    ) {
        let mut map = serde_json::Map::new();
        for (i, s) in states.into_iter().enumerate() {
            map.insert(format!("S{i}"), s);
        }
        let def = json!({"StartAt": start, "States": map});
        if let Err(e) = parse_value(&def) {
            prop_assert!(!e.errors.is_empty());
            prop_assert!(e.errors.iter().all(|e| e.pointer.is_empty() || e.pointer.starts_with('/')));
        }
    }
}

#[test]
fn invalid_utf8_is_located_invalid_json() {
    let mut bytes = b"{\n  \"StartAt\": \"A\",\n  \"Comment\": \"caf".to_vec();
    bytes.push(0xff);
    bytes.extend_from_slice(b"\"}");
    let err = crate::parse::parse_definition_bytes(&bytes).unwrap_err();
    assert_eq!(err.errors.len(), 1);
    let e = &err.errors[0];
    assert_eq!(e.code, "INVALID_JSON");
    assert_eq!((e.line, e.column), (Some(3), Some(18)));
    assert!(e.message.contains("not valid UTF-8"), "{}", e.message);
    let ok = crate::parse::parse_definition_bytes(
        br#"{"StartAt": "A", "States": {"A": {"Type": "Succeed"}}}"#,
    );
    assert!(ok.is_ok());
}

#[test]
fn a_byte_order_mark_at_the_start_of_a_file_is_skipped() {
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(br#"{"StartAt": "A", "States": {"A": {"Type": "Succeed"}}}"#);
    assert!(crate::parse::parse_definition_bytes(&bytes).is_ok());
}

#[test]
fn a_definition_deployed_before_a_check_was_added_still_loads() {
    // Deployed when a graph without a terminal state was accepted.
    let text = r#"{"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "B"},
                                           "B": {"Type": "Wait", "Seconds": 60, "Next": "A"}}}"#;
    let e = crate::parse::parse_definition(text).unwrap_err();
    assert_eq!(e.errors[0].code, MISSING_END_STATE);
    assert!(crate::parse::parse_accepted_definition(text).is_ok());
    // Other errors are errors either way.
    let broken = r#"{"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "Nope"}}}"#;
    assert!(crate::parse::parse_accepted_definition(broken).is_err());
}

#[test]
fn numbers_too_large_get_a_message_that_says_so() {
    for (value, text) in [
        (json!(1e20), "at most 18446744073709551615"),
        (json!(1e30), "at most 18446744073709551615"),
    ] {
        let e = parse_value(&json!({"StartAt": "A", "TimeoutSeconds": value,
            "States": {"A": {"Type": "Succeed"}}}))
        .unwrap_err();
        assert_eq!(e.errors[0].code, INVALID_VALUE, "{value}");
        assert!(
            e.errors[0].message.contains(text),
            "{}",
            e.errors[0].message
        );
    }
}
