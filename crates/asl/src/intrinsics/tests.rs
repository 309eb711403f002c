use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::rand::SplitMix64;

/// A context object and variables for the tests.
struct TestEnv {
    context: Value,
    vars: HashMap<String, Value>,
}

impl TestEnv {
    fn new() -> TestEnv {
        let mut vars = HashMap::new();
        vars.insert("orderId".to_string(), json!("o-42"));
        vars.insert("order".to_string(), json!({"total": 30, "items": [1, 2]}));
        TestEnv {
            context: json!({
                "Execution": {
                    "Id": "arn:aws:states:eu-west-1:123456789012:execution:sm:run-1",
                    "Name": "run-1"
                },
                "Map": {"Item": {"Index": 4, "Value": {"id": "x"}}}
            }),
            vars,
        }
    }
}

impl Env for TestEnv {
    fn context(&self) -> &Value {
        &self.context
    }
    fn variable(&self, name: &str) -> Option<&Value> {
        self.vars.get(name)
    }
}

fn run_with(text: &str, input: Value, seed: u64) -> Result<Value, IntrinsicFailure> {
    let call = IntrinsicCall::parse(text).unwrap_or_else(|e| panic!("{e}"));
    call.eval(&input, &TestEnv::new(), &mut SplitMix64::new(seed))
}

fn run(text: &str, input: Value) -> Value {
    run_with(text, input, 1).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn run_lit(text: &str) -> Value {
    run(text, json!({}))
}

fn failure(text: &str, input: Value) -> String {
    match run_with(text, input, 1) {
        Ok(v) => panic!("{text}: expected a failure, got {v}"),
        Err(e) => e.message,
    }
}

fn parse_error(text: &str) -> String {
    match IntrinsicCall::parse(text) {
        Ok(c) => panic!("{text}: expected a syntax error, got {c:?}"),
        Err(e) => {
            assert_eq!(e.text, text);
            e.message
        }
    }
}

// ------------------------------------------------------------- names

#[test]
fn names_round_trip() {
    for f in Function::ALL {
        assert_eq!(Function::from_name(f.name()), Some(f));
        assert!(f.name().starts_with("States."));
    }
    assert_eq!(Function::Uuid.name(), "States.UUID");
    assert_eq!(Function::from_name("States.Uuid"), None);
    assert_eq!(Function::from_name("States.format"), None);
    assert_eq!(Function::from_name("Format"), None);
    assert_eq!(Function::Format.to_string(), "States.Format");
}

#[test]
fn looks_like_call() {
    assert!(IntrinsicCall::looks_like_call("  States.UUID()"));
    assert!(!IntrinsicCall::looks_like_call("$.States"));
}

// ------------------------------------------------------------ parsing

#[test]
fn parses_arguments_of_every_kind() {
    let call = IntrinsicCall::parse(
        "States.Array( 'a\\'b' ,1, -2.5, 1e3, true,false , null, $.x, $$.Execution.Id, $orderId, States.UUID() )",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(call.function, Function::Array);
    assert_eq!(call.args.len(), 11);
    assert!(matches!(&call.args[0], Arg::String(s) if s == "a'b"));
    assert!(matches!(&call.args[1], Arg::Number(n) if n.as_i64() == Some(1)));
    assert!(matches!(&call.args[2], Arg::Number(n) if n.as_f64() == Some(-2.5)));
    assert!(matches!(&call.args[3], Arg::Number(n) if n.as_f64() == Some(1000.0)));
    assert!(matches!(call.args[4], Arg::Bool(true)));
    assert!(matches!(call.args[5], Arg::Bool(false)));
    assert!(matches!(call.args[6], Arg::Null));
    assert!(matches!(&call.args[7], Arg::Path(p) if p.as_str() == "$.x"));
    assert!(matches!(&call.args[8], Arg::Path(p) if p.as_str() == "$$.Execution.Id"));
    assert!(matches!(&call.args[9], Arg::Path(p) if p.as_str() == "$orderId"));
    assert!(matches!(&call.args[10], Arg::Call(c) if c.function == Function::Uuid));
}

#[test]
fn string_escapes() {
    let v = run_lit(r"States.Array('\'', '\{', '\}', '\\', 'a b')");
    assert_eq!(v, json!(["'", "{", "}", "\\", "a b"]));
    // A real newline inside the literal (JSON "\n") is a plain character.
    assert_eq!(
        run_lit("States.StringSplit('Hello\nWorld', '\n')"),
        json!(["Hello", "World"])
    );
}

#[test]
fn path_with_filter_containing_commas_parens_and_quotes() {
    let input = json!({"a": [{"b": "x,y", "n": 1}, {"b": "z", "n": 2}]});
    let v = run("States.Array($.a[?(@.b == 'x,y')], 7)", input.clone());
    assert_eq!(v, json!([[{"b": "x,y", "n": 1}], 7]));
    let v = run("States.ArrayLength($.a[?(@.n > 0)])", input.clone());
    assert_eq!(v, json!(2));
    let v = run("States.Array($['a'][1].b )", input);
    assert_eq!(v, json!(["z"]));
}

#[test]
fn error_unknown_function_lists_names() {
    let m = parse_error("States.Frobnicate(1)");
    assert!(
        m.contains("unknown intrinsic function 'States.Frobnicate'"),
        "{m}"
    );
    assert!(
        m.contains("States.Format") && m.contains("States.UUID"),
        "{m}"
    );
    let m = parse_error("States.format('x')");
    assert!(m.contains("'States.format'"), "{m}");
}

#[test]
fn error_arity() {
    let cases = [
        ("States.Hash('a')", "States.Hash takes 2 arguments, got 1"),
        ("States.UUID(1)", "States.UUID takes 0 arguments, got 1"),
        (
            "States.JsonMerge($.a, $.b)",
            "States.JsonMerge takes 3 arguments, got 2",
        ),
        (
            "States.ArrayRange(1, 2)",
            "States.ArrayRange takes 3 arguments, got 2",
        ),
        (
            "States.ArrayLength()",
            "States.ArrayLength takes 1 argument, got 0",
        ),
        (
            "States.MathRandom(1)",
            "States.MathRandom takes 2 or 3 arguments, got 1",
        ),
        (
            "States.MathRandom(1, 2, 3, 4)",
            "States.MathRandom takes 2 or 3 arguments, got 4",
        ),
        (
            "States.Format()",
            "States.Format takes at least 1 argument, got 0",
        ),
        (
            "States.MathAdd(1)",
            "States.MathAdd takes 2 arguments, got 1",
        ),
        (
            "States.StringSplit('a')",
            "States.StringSplit takes 2 arguments, got 1",
        ),
        (
            "States.ArrayGetItem($.a)",
            "States.ArrayGetItem takes 2 arguments, got 1",
        ),
        (
            "States.ArrayContains($.a)",
            "States.ArrayContains takes 2 arguments, got 1",
        ),
        (
            "States.ArrayPartition($.a)",
            "States.ArrayPartition takes 2 arguments, got 1",
        ),
    ];
    for (text, expected) in cases {
        let m = parse_error(text);
        assert!(m.contains(expected), "{text}: {m}");
    }
    // Zero or more.
    assert_eq!(run_lit("States.Array()"), json!([]));
    assert!(IntrinsicCall::parse("States.MathRandom(1, 2, 3)").is_ok());
}

#[test]
fn error_bad_escape_and_unterminated_string() {
    let m = parse_error(r"States.Array('a\nb')");
    assert!(m.contains("invalid escape sequence '\\n'"), "{m}");
    assert!(m.contains("at character 16"), "{m}");
    let m = parse_error("States.Array('abc");
    assert!(m.contains("unterminated string literal"), "{m}");
    let m = parse_error(r"States.Array('abc\')");
    assert!(m.contains("unterminated string literal"), "{m}");
    let m = parse_error("States.Array(\"abc\")");
    assert!(m.contains("single quotes"), "{m}");
}

#[test]
fn error_trailing_and_structural() {
    let m = parse_error("States.UUID() extra");
    assert!(
        m.contains("unexpected text 'extra' after the end of the call"),
        "{m}"
    );
    assert!(parse_error("States.UUID()States.UUID()").contains("after the end"));
    assert!(parse_error("States.Array(1, 2").contains("missing ')'"));
    assert!(parse_error("States.Array(1 2)").contains("expected ',' or ')'"));
    assert!(parse_error("States.Array(1,)").contains("expected an argument after ','"));
    assert!(parse_error("States.Array(,1)").contains("unexpected character ','"));
    assert!(parse_error("States.UUID").contains("expected '(' after States.UUID"));
    assert!(parse_error("").contains("empty"));
    assert!(parse_error("Foo.Bar()").contains("starting with 'States.'"));
    assert!(parse_error("States.Array(foo)").contains("unexpected argument 'foo'"));
    assert!(parse_error("States.Array(True)").contains("unexpected argument 'True'"));
    assert!(parse_error("States.Array(01)").contains("invalid number '01'"));
    assert!(parse_error("States.Array(1.)").contains("invalid number '1.'"));
    assert!(parse_error("States.Array(-)").contains("invalid number '-'"));
    assert!(parse_error("States.Array(1x)").contains("invalid number '1x'"));
    assert!(parse_error("States.Array($.a[?(@.b == 'x)])").contains("unterminated quote"));
    assert!(parse_error("States.Array($..)").contains("path"));
    // Whitespace around the call and between name and '(' is accepted.
    assert_eq!(run_lit("  States.Array (1)  "), json!([1]));
}

#[test]
fn nesting_depth_is_bounded() {
    let nested = |n: usize| format!("{}1{}", "States.Array(".repeat(n), ")".repeat(n));
    assert!(IntrinsicCall::parse(&nested(10)).is_ok());
    let m = parse_error(&nested(11));
    assert!(m.contains("nested more than 10 deep"), "{m}");
    // Very deep input does not overflow the stack.
    assert!(IntrinsicCall::parse(&nested(100_000)).is_err());
}

#[test]
fn literal_checks_at_parse_time() {
    let m = parse_error("States.Format('{} and {}', 1)");
    assert!(m.contains("2 '{}' placeholders but 1 value follows"), "{m}");
    let m = parse_error("States.Format('no placeholder', 1)");
    assert!(m.contains("0 '{}' placeholders but 1 value follows"), "{m}");
    assert!(parse_error("States.Format(1)").contains("must be a string template"));
    // Escaped braces are not placeholders.
    assert!(IntrinsicCall::parse(r"States.Format('\{}')").is_ok());
    assert!(IntrinsicCall::parse(r"States.Format('\{\}', 1)").is_err());
    let m = parse_error("States.Hash('x', 'SHA-224')");
    assert!(
        m.contains("unknown hash algorithm 'SHA-224'") && m.contains("SHA-512"),
        "{m}"
    );
    assert!(parse_error("States.Hash('x', 'sha-1')").contains("unknown hash algorithm"));
    assert!(parse_error("States.Hash('x', 1)").contains("name of an algorithm"));
    let m = parse_error("States.JsonMerge($.a, $.b, true)");
    assert!(m.contains("only shallow merging"), "{m}");
    assert!(parse_error("States.JsonMerge($.a, $.b, 'false')").contains("boolean false"));
    // Nested calls are checked too, and the error points at them.
    let m = parse_error("States.Array(1, States.Hash('x'))");
    assert!(m.contains("States.Hash takes 2 arguments, got 1"), "{m}");
    assert!(m.contains("at character 17"), "{m}");
}

#[test]
fn error_display_names_the_call() {
    let e = IntrinsicCall::parse("States.Nope()").err();
    let text = e.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        text.starts_with("invalid intrinsic function call 'States.Nope()': at character 1:"),
        "{text}"
    );
}

// ------------------------------------------------------------- Format

#[test]
fn format_from_aws_docs() {
    let input = json!({"name": "Arnav", "template": "Hello, my name is {}."});
    assert_eq!(
        run(
            "States.Format('Hello, my name is {}.', $.name)",
            input.clone()
        ),
        json!("Hello, my name is Arnav.")
    );
    assert_eq!(
        run("States.Format($.template, $.name)", input),
        json!("Hello, my name is Arnav.")
    );
    assert_eq!(
        run(
            "States.Format('Your name is {}, we are in the year {}', $.name, 2020)",
            json!({"name": "Foo"})
        ),
        json!("Your name is Foo, we are in the year 2020")
    );
}

#[test]
fn format_value_rendering() {
    let input = json!({"s": "", "n": null, "b": true, "f": 1.1, "o": {"Arg1": 1, "Arg2": []},
                       "a": ["x", 1, null, {"k": "v"}]});
    assert_eq!(
        run(
            "States.Format('[{}][{}][{}][{}]', $.s, $.n, $.b, $.f)",
            input.clone()
        ),
        json!("[][null][true][1.1]")
    );
    // AWS writes objects and arrays as Java's toString does.
    assert_eq!(
        run("States.Format('{} {}', $.o, $.a)", input),
        json!("{Arg1=1, Arg2=[]} [x, 1, null, {k=v}]")
    );
    assert_eq!(run_lit("States.Format('{}{}', -0.5, 10)"), json!("-0.510"));
}

#[test]
fn format_escaped_braces_and_nested_calls() {
    assert_eq!(
        run_lit(r"States.Format('\{\} {} \{}', 'x')"),
        json!("{} x {}")
    );
    assert_eq!(
        run_lit(r"States.Format('it\'s {}', States.Array(1, 2))"),
        json!("it's [1, 2]")
    );
    // The nine-function example of the AWS documentation.
    let input = json!({"ImageRecipe": {"Arn": "arn:aws:imagebuilder:us-east-1:123:image-recipe/my.recipe.name/1.0.0"}});
    let v = run(
        "States.Format('{}.{}.{}', States.ArrayGetItem(States.StringSplit(States.ArrayGetItem(States.StringSplit($.ImageRecipe.Arn, '/'), 2), '.'), 0), States.ArrayGetItem(States.StringSplit(States.ArrayGetItem(States.StringSplit($.ImageRecipe.Arn, '/'), 2), '.'), 1), States.ArrayGetItem(States.StringSplit(States.ArrayGetItem(States.StringSplit($.ImageRecipe.Arn, '/'), 2), '.'), 2))",
        input,
    );
    assert_eq!(v, json!("1.0.0"));
}

#[test]
fn format_failures() {
    let m = failure("States.Format($.t, 1)", json!({"t": "{} {}"}));
    assert!(m.contains("2 '{}' placeholders but 1 values"), "{m}");
    let m = failure("States.Format($.t)", json!({"t": 5}));
    assert!(
        m.contains("States.Format: argument 1 must be a string, got a number (5)"),
        "{m}"
    );
    let m = failure("States.Format('{}', $.missing)", json!({"x": 1}));
    assert!(
        m.starts_with("States.Format: argument 2 ($.missing):"),
        "{m}"
    );
}

// ------------------------------------------------------------- JSON

#[test]
fn string_to_json() {
    let input = json!({"escapedJsonString": "{\"foo\": \"bar\"}", "blank": "  ",
                       "num": "-0", "arr": "[1, 2, \"x\"]", "bad": "{x", "n": 3});
    assert_eq!(
        run("States.StringToJson($.escapedJsonString)", input.clone()),
        json!({"foo": "bar"})
    );
    assert_eq!(
        run("States.StringToJson($.arr)", input.clone()),
        json!([1, 2, "x"])
    );
    assert_eq!(run("States.StringToJson($.num)", input.clone()), json!(0));
    assert!(run("States.StringToJson($.num)", input.clone()).is_i64());
    assert_eq!(run_lit("States.StringToJson('[-0, 1.5]')"), json!([0, 1.5]));
    assert!(run_lit("States.Array(-0)")[0].is_i64());
    // AWS gives null for an empty or blank string.
    assert_eq!(
        run("States.StringToJson($.blank)", input.clone()),
        Value::Null
    );
    assert_eq!(run_lit("States.StringToJson('')"), Value::Null);
    assert!(failure("States.StringToJson($.bad)", input.clone()).contains("not valid JSON"));
    assert!(failure("States.StringToJson($.n)", input).contains("must be a string"));
}

#[test]
fn json_to_string_is_compact_and_keeps_order() {
    let input = json!({"unescapedJson": {"foo": "bar", "a": [1, 2.5, null]}, "s": "x"});
    assert_eq!(
        run("States.JsonToString($.unescapedJson)", input.clone()),
        json!("{\"foo\":\"bar\",\"a\":[1,2.5,null]}")
    );
    assert_eq!(run("States.JsonToString($.s)", input), json!("\"x\""));
    // Round trip.
    assert_eq!(
        run_lit("States.StringToJson(States.JsonToString(States.Array(1, 'a')))"),
        json!([1, "a"])
    );
}

#[test]
fn json_merge() {
    let input = json!({"json1": {"a": {"a1": 1, "a2": 2}, "b": 2},
                       "json2": {"a": {"a3": 1, "a4": 2}, "c": 3}, "flag": true});
    let v = run("States.JsonMerge($.json1, $.json2, false)", input.clone());
    assert_eq!(v, json!({"a": {"a3": 1, "a4": 2}, "b": 2, "c": 3}));
    // Key order: the first object's keys first.
    assert_eq!(
        serde_json::to_string(&v).unwrap_or_default(),
        r#"{"a":{"a3":1,"a4":2},"b":2,"c":3}"#
    );
    assert!(
        failure("States.JsonMerge($.json1, $.json2, $.flag)", input.clone())
            .contains("only shallow merging")
    );
    let m = failure("States.JsonMerge($.json1, $.flag, false)", input);
    assert!(m.contains("argument 2 must be a JSON object"), "{m}");
}

// ------------------------------------------------------------- Arrays

#[test]
fn array() {
    let input = json!({"Id": 123456, "someJson": {"random": "abcdefg"}});
    assert_eq!(run("States.Array($.Id)", input.clone()), json!([123456]));
    assert_eq!(
        run("States.Array('Foo', 2020, $.someJson, null)", input),
        json!(["Foo", 2020, {"random": "abcdefg"}, null])
    );
}

#[test]
fn array_partition() {
    assert_eq!(
        run_lit("States.ArrayPartition(States.Array(1,2,3,4), 2)"),
        json!([[1, 2], [3, 4]])
    );
    let input = json!({"inputArray": [1, 2, 3, 4, 5, 6, 7, 8, 9], "empty": []});
    assert_eq!(
        run("States.ArrayPartition($.inputArray,4)", input.clone()),
        json!([[1, 2, 3, 4], [5, 6, 7, 8], [9]])
    );
    assert_eq!(
        run("States.ArrayPartition($.empty, 3)", input.clone()),
        json!([])
    );
    assert_eq!(
        run("States.ArrayPartition($.inputArray, 20)", input.clone()),
        json!([[1, 2, 3, 4, 5, 6, 7, 8, 9]])
    );
    assert_eq!(
        run("States.ArrayPartition($.empty, 2.0)", input.clone()),
        json!([])
    );
    for bad in ["0", "-1", "1.5", "'2'"] {
        let m = failure(
            &format!("States.ArrayPartition($.inputArray, {bad})"),
            input.clone(),
        );
        assert!(m.starts_with("States.ArrayPartition:"), "{m}");
    }
    assert!(failure("States.ArrayPartition('abc', 1)", input).contains("must be an array"));
}

#[test]
fn array_contains() {
    let input = json!({"inputArray": [1, 2, 3, 4, 5, 6, 7, 8, 9], "lookingFor": 5,
                       "deep": [{"a": 1, "b": [1, 2]}, [true], null]});
    assert_eq!(
        run(
            "States.ArrayContains($.inputArray, $.lookingFor)",
            input.clone()
        ),
        json!(true)
    );
    assert_eq!(
        run("States.ArrayContains($.inputArray, 10)", input.clone()),
        json!(false)
    );
    assert_eq!(
        run("States.ArrayContains($.inputArray, '5')", input.clone()),
        json!(false)
    );
    assert_eq!(
        run(
            "States.ArrayContains($.deep, States.StringToJson('{\"b\":[1,2],\"a\":1}'))",
            input.clone()
        ),
        json!(true)
    );
    assert_eq!(
        run("States.ArrayContains($.deep, null)", input.clone()),
        json!(true)
    );
    assert_eq!(
        run(
            "States.ArrayContains($.deep, States.Array(true))",
            input.clone()
        ),
        json!(true)
    );
    assert!(failure("States.ArrayContains($.lookingFor, 1)", input).contains("must be an array"));
}

#[test]
fn array_range() {
    assert_eq!(
        run_lit("States.ArrayRange(1, 9, 2)"),
        json!([1, 3, 5, 7, 9])
    );
    assert_eq!(run_lit("States.ArrayRange(0, 10, 3)"), json!([0, 3, 6, 9]));
    assert_eq!(run_lit("States.ArrayRange(1, 9, 9)"), json!([1]));
    assert_eq!(run_lit("States.ArrayRange(5, 5, 1)"), json!([5]));
    assert_eq!(run_lit("States.ArrayRange(9, 1, -4)"), json!([9, 5, 1]));
    assert_eq!(run_lit("States.ArrayRange(9, 1, 2)"), json!([]));
    let v = run_lit("States.ArrayRange(1, 1000, 1)");
    assert_eq!(v.as_array().map(Vec::len), Some(1000));
    let m = failure("States.ArrayRange(0, 1000, 1)", json!({}));
    assert!(m.contains("1001 items; the maximum is 1000"), "{m}");
    let m = failure(
        "States.ArrayRange(-9223372036854775808, 9223372036854775807, 1)",
        json!({}),
    );
    assert!(m.contains("the maximum is 1000"), "{m}");
    assert!(failure("States.ArrayRange(1, 9, 0)", json!({})).contains("must not be 0"));
    assert!(failure("States.ArrayRange(1.5, 9, 1)", json!({})).contains("must be an integer"));
    assert!(failure("States.ArrayRange(1, '9', 1)", json!({})).contains("must be an integer"));
}

#[test]
fn array_get_item() {
    let input = json!({"inputArray": [1, 2, 3, 4, 5, 6, 7, 8, 9], "index": 5});
    assert_eq!(
        run("States.ArrayGetItem($.inputArray, $.index)", input.clone()),
        json!(6)
    );
    assert_eq!(
        run("States.ArrayGetItem($.inputArray, 0)", input.clone()),
        json!(1)
    );
    let m = failure("States.ArrayGetItem($.inputArray, 9)", input.clone());
    assert!(
        m.contains("index 9 is out of range for an array of 9 items"),
        "{m}"
    );
    assert!(
        failure("States.ArrayGetItem($.inputArray, -1)", input.clone()).contains("out of range")
    );
    assert!(failure("States.ArrayGetItem($.inputArray, 1.5)", input).contains("integer"));
}

#[test]
fn array_length() {
    let input = json!({"inputArray": [1, 2, 3, 4, 5, 6, 7, 8, 9], "o": {}});
    assert_eq!(
        run("States.ArrayLength($.inputArray)", input.clone()),
        json!(9)
    );
    assert_eq!(run_lit("States.ArrayLength(States.Array())"), json!(0));
    assert!(failure("States.ArrayLength($.o)", input).contains("must be an array"));
}

#[test]
fn array_unique() {
    let input = json!({"inputArray": [1, 2, 3, 3, 3, 3, 3, 3, 4],
        "mixed": [null, null, true, true, false, 1, 1, 1.1, "1", "1", [], [], [null], [null],
                  {"a": 1, "b": 2}, {"b": 2, "a": 1}, {"a": 1, "b": 1}]});
    assert_eq!(
        run("States.ArrayUnique($.inputArray)", input.clone()),
        json!([1, 2, 3, 4])
    );
    assert_eq!(
        run("States.ArrayUnique($.mixed)", input),
        json!([null, true, false, 1, 1.1, "1", [], [null], {"a": 1, "b": 2}, {"a": 1, "b": 1}])
    );
}

// ------------------------------------------------------- Encoding, hash

#[test]
fn base64() {
    let input = json!({"input": "Data to encode", "base64": "RGF0YSB0byBlbmNvZGU="});
    assert_eq!(
        run("States.Base64Encode($.input)", input.clone()),
        json!("RGF0YSB0byBlbmNvZGU=")
    );
    assert_eq!(
        run("States.Base64Decode($.base64)", input),
        json!("Data to encode")
    );
    assert_eq!(run_lit("States.Base64Encode('')"), json!(""));
    assert_eq!(run_lit("States.Base64Decode('')"), json!(""));
    assert_eq!(run_lit("States.Base64Encode('é✓')"), json!("w6ninJM="));
    assert_eq!(run_lit("States.Base64Decode('w6ninJM=')"), json!("é✓"));
    // Padding is optional, as in Java's decoder.
    assert_eq!(run_lit("States.Base64Decode('YQ')"), json!("a"));
    assert!(failure("States.Base64Decode('@@@')", json!({})).contains("not valid Base64"));
    // 0xFF 0xFE is not UTF-8.
    assert!(failure("States.Base64Decode('//4=')", json!({})).contains("not valid UTF-8"));
    assert!(failure("States.Base64Encode(1)", json!({})).contains("must be a string"));
}

#[test]
fn base64_length_limit_counts_characters() {
    let exactly = "é".repeat(10_000); // 20,000 bytes but 10,000 characters
    let v = run("States.Base64Encode($.s)", json!({ "s": exactly }));
    assert!(v.is_string());
    let over = "a".repeat(10_001);
    let m = failure("States.Base64Encode($.s)", json!({ "s": over }));
    assert!(m.contains("10001 characters; the maximum is 10000"), "{m}");
    let m = failure(
        "States.Base64Decode($.s)",
        json!({ "s": "A".repeat(10_004) }),
    );
    assert!(m.contains("maximum is 10000"), "{m}");
    // Characters outside the BMP count twice, as in Java (AWS): 6,000
    // emoji are 12,000 characters there.
    let m = failure(
        "States.Base64Encode($.s)",
        json!({ "s": "\u{1F600}".repeat(6_000) }),
    );
    assert!(m.contains("12000 characters; the maximum is 10000"), "{m}");
    let fits = run(
        "States.Base64Encode($.s)",
        json!({ "s": "\u{1F600}".repeat(5_000) }),
    );
    assert!(fits.is_string());
}

#[test]
fn hash_known_digests() {
    // Digests of "input data" (the SHA-1 one is AWS's documented example).
    let cases = [
        ("MD5", "812f45842bc6d66ee14572ce20db8e86"),
        ("SHA-1", "aaff4a450a104cd177d28d18d74485e8cae074b7"),
        (
            "SHA-256",
            "b4a697a057313163aee33cd8d40c66e9f0f177e00cac2de32475ffff6169c3e3",
        ),
        (
            "SHA-384",
            "d28a7d5cf25a74f11a50a18452b75e04bb3d70c9dd0510d6123aa008c756511b87525bdc835ebb27e1fb9e9374a15562",
        ),
        (
            "SHA-512",
            "6ce4adb348546d4f449c4d25aad9a7c9cb711d9e91982d3f0b29ca2f3f47d4ce2deba23bf2954f0f1d593fc50283731a533d30d425402d4f91316d871303aac4",
        ),
    ];
    for (alg, digest) in cases {
        let v = run_lit(&format!("States.Hash('input data', '{alg}')"));
        assert_eq!(v, json!(digest), "{alg}");
        let v = run(
            "States.Hash($.Data, $.Algorithm)",
            json!({"Data": "input data", "Algorithm": alg}),
        );
        assert_eq!(v, json!(digest), "{alg}");
    }
    assert_eq!(
        run_lit("States.Hash('', 'SHA-256')"),
        json!("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
    assert_eq!(
        run_lit("States.Hash('abc', 'SHA-512')"),
        json!(
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        )
    );
    assert_eq!(
        run_lit("States.Hash('abc', 'SHA-384')"),
        json!(
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
        )
    );
}

#[test]
fn hash_failures_and_non_strings() {
    let m = failure("States.Hash('x', $.alg)", json!({"alg": "SHA-3"}));
    assert!(m.contains("unknown hash algorithm 'SHA-3'"), "{m}");
    assert!(failure("States.Hash(null, 'MD5')", json!({})).contains("must be a string"));
    let m = failure("States.Hash($.s, 'MD5')", json!({"s": "a".repeat(10_001)}));
    assert!(m.contains("maximum is 10000"), "{m}");
    // A non-string is hashed as its compact JSON text.
    assert_eq!(
        run("States.Hash($.o, 'MD5')", json!({"o": {"a": 1}})),
        json!("bb6cb5c68df4652941caf652a366f2d8")
    );
}

// ---------------------------------------------------------------- Math

#[test]
fn math_add() {
    let input = json!({"value1": 111, "step": -1});
    assert_eq!(run("States.MathAdd($.value1, $.step)", input), json!(110));
    let v = run_lit("States.MathAdd(1, 2)");
    assert_eq!(v, json!(3));
    assert!(v.is_i64());
    // AWS rounds like Java's Math.round (recorded by LocalStack against AWS).
    assert_eq!(run_lit("States.MathAdd(1.49, 1.5)"), json!(3));
    assert_eq!(run_lit("States.MathAdd(1.5, 1.51)"), json!(4));
    assert_eq!(run_lit("States.MathAdd(-1.49, -1.5)"), json!(-2));
    assert_eq!(run_lit("States.MathAdd(-1.5, -1.51)"), json!(-3));
    assert_eq!(
        run_lit("States.MathAdd(2147483647, 2147483647)"),
        json!(4294967294_i64)
    );
    assert!(failure("States.MathAdd(2147483648, 0)", json!({})).contains("outside the range"));
    assert!(failure("States.MathAdd(0, -2147483649)", json!({})).contains("outside the range"));
    assert!(failure("States.MathAdd('1', 0)", json!({})).contains("must be an integer"));
    assert!(failure("States.MathAdd(1e300, 0)", json!({})).contains("out of the integer range"));
}

#[test]
fn math_random() {
    for seed in 0..200 {
        let v = run_with("States.MathRandom(1, 4)", json!({}), seed).unwrap_or(Value::Null);
        let n = v.as_i64().unwrap_or(-1);
        assert!((1..4).contains(&n), "{v}");
    }
    // Every value of a small range shows up.
    let mut seen = [false; 3];
    let mut rng = SplitMix64::new(9);
    let call = IntrinsicCall::parse("States.MathRandom(-1, 2)").unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..100 {
        let v = call
            .eval(&json!({}), &TestEnv::new(), &mut rng)
            .unwrap_or(Value::Null);
        if let Some(i) = v.as_i64().and_then(|n| usize::try_from(n + 1).ok()) {
            seen[i] = true;
        }
    }
    assert_eq!(seen, [true, true, true]);
    // Rounded bounds: (0.6, 1.4) is (1, 1): empty.
    assert!(failure("States.MathRandom(0.6, 1.4)", json!({})).contains("must be less than"));
    assert!(failure("States.MathRandom(5, 5)", json!({})).contains("must be less than"));
    assert!(failure("States.MathRandom('1', 5)", json!({})).contains("must be an integer"));
    let wide = run_lit("States.MathRandom(-9223372036854775808, 9223372036854775807)");
    assert!(wide.is_i64());
}

#[test]
fn math_random_seed_is_deterministic_and_ignores_rng() {
    let text = "States.MathRandom(0, 1000000, 42)";
    let a = run_with(text, json!({}), 1).ok();
    let b = run_with(text, json!({}), 2).ok();
    assert!(a.is_some());
    assert_eq!(a, b);
    let c = run_with("States.MathRandom(0, 1000000, 43)", json!({}), 1).ok();
    assert_ne!(a, c);
    // The seed does not consume the execution's random source.
    let call = IntrinsicCall::parse(text).unwrap_or_else(|e| panic!("{e}"));
    let mut rng = SplitMix64::new(5);
    let _ = call.eval(&json!({}), &TestEnv::new(), &mut rng);
    assert_eq!(rng.next_u64(), SplitMix64::new(5).next_u64());
}

#[test]
fn math_random_without_seed_follows_the_rng() {
    let text = "States.MathRandom(0, 1000000000)";
    assert_eq!(
        run_with(text, json!({}), 7).ok(),
        run_with(text, json!({}), 7).ok()
    );
    assert_ne!(
        run_with(text, json!({}), 7).ok(),
        run_with(text, json!({}), 8).ok()
    );
}

// -------------------------------------------------------------- Strings

#[test]
fn string_split() {
    assert_eq!(
        run_lit("States.StringSplit('1,2,3,4,5', ',')"),
        json!(["1", "2", "3", "4", "5"])
    );
    let input = json!({"inputString": "This.is+a,test=string", "splitter": ".+,="});
    assert_eq!(
        run("States.StringSplit($.inputString, $.splitter)", input),
        json!(["This", "is", "a", "test", "string"])
    );
    // Empty parts are dropped.
    assert_eq!(
        run_lit("States.StringSplit(',a,,b,', ',')"),
        json!(["a", "b"])
    );
    assert_eq!(run_lit("States.StringSplit('', ',')"), json!([]));
    assert_eq!(run_lit("States.StringSplit('abc', '')"), json!(["abc"]));
    assert_eq!(run_lit("States.StringSplit('a→b', '→')"), json!(["a", "b"]));
    assert!(failure("States.StringSplit(1, ',')", json!({})).contains("must be a string"));
    assert!(failure("States.StringSplit('a', 1)", json!({})).contains("argument 2"));
}

#[test]
fn uuid_is_v4_and_deterministic() {
    let a = run_with("States.UUID()", json!({}), 3).ok();
    let b = run_with("States.UUID()", json!({}), 3).ok();
    let c = run_with("States.UUID()", json!({}), 4).ok();
    assert_eq!(a, b);
    assert_ne!(a, c);
    for seed in 0..100 {
        let v = run_with("States.UUID()", json!({}), seed).unwrap_or(Value::Null);
        let s = v.as_str().unwrap_or_default();
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        assert_eq!(lens, [8, 4, 4, 4, 12], "{s}");
        assert!(
            s.chars()
                .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
        assert!(groups[2].starts_with('4'), "{s}");
        assert!(groups[3].starts_with(['8', '9', 'a', 'b']), "{s}");
    }
    // Two UUIDs in one call are different and drawn in order.
    let v =
        run_with("States.Array(States.UUID(), States.UUID())", json!({}), 3).unwrap_or_default();
    assert_ne!(v[0], v[1]);
    assert_eq!(Some(v[0].clone()), a);
}

// ------------------------------------------------- context and variables

#[test]
fn paths_to_context_and_variables() {
    assert_eq!(
        run(
            "States.ArrayGetItem(States.StringSplit($$.Execution.Id, ':'), 3)",
            json!({})
        ),
        json!("eu-west-1")
    );
    assert_eq!(
        run("States.MathAdd($$.Map.Item.Index, 1)", json!({})),
        json!(5)
    );
    assert_eq!(
        run("States.Format('{}-{}', $orderId, $order.total)", json!({})),
        json!("o-42-30")
    );
    assert_eq!(run("States.ArrayLength($order.items)", json!({})), json!(2));
    let m = failure("States.Array($nope)", json!({}));
    assert!(
        m.starts_with("States.Array: argument 1 ($nope):") && m.contains("nope"),
        "{m}"
    );
    let m = failure("States.Array($$.Execution.Missing)", json!({}));
    assert!(m.contains("$$.Execution.Missing"), "{m}");
}

#[test]
fn calls_built_with_new() {
    let call = IntrinsicCall::new(
        Function::Format,
        vec![
            Arg::String("{}-{}".to_string()),
            Arg::Number(1.into()),
            Arg::Bool(true),
        ],
    );
    let v = call.eval(&json!({}), &TestEnv::new(), &mut SplitMix64::new(1));
    assert_eq!(v, Ok(json!("1-true")));
    // Wrong arity is reported at evaluation, not by a panic.
    let call = IntrinsicCall::new(Function::ArrayGetItem, vec![]);
    let e = call
        .eval(&json!({}), &TestEnv::new(), &mut SplitMix64::new(1))
        .err();
    assert_eq!(
        e.map(|e| e.message),
        Some("States.ArrayGetItem: argument 1 is missing".to_string())
    );
}

#[test]
fn failure_in_nested_call_propagates() {
    let m = failure(
        "States.Array(1, States.ArrayGetItem($.a, 5))",
        json!({"a": [1]}),
    );
    assert!(m.starts_with("States.ArrayGetItem:"), "{m}");
}

// ------------------------------------------------------------ proptest

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z,.{}' ]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-c]", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_arg() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("$".to_string()),
        Just("$.a".to_string()),
        Just("$.b[0]".to_string()),
        Just("$.c".to_string()),
        Just("$$.Execution.Id".to_string()),
        Just("$orderId".to_string()),
        Just("$.a[?(@ > 1)]".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        (-5i64..2000).prop_map(|n| n.to_string()),
        Just("1.5".to_string()),
        Just("'{} x {}'".to_string()),
        Just("'SHA-1'".to_string()),
        Just("','".to_string()),
        Just("'[1,2]'".to_string()),
        Just("'eA=='".to_string()),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        (
            prop::sample::select(Function::ALL.to_vec()),
            prop::collection::vec(inner, 0..4),
        )
            .prop_map(|(f, args)| format!("{}({})", f.name(), args.join(", ")))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_never_panics_on_arbitrary_text(text in "\\PC{0,60}") {
        let _ = IntrinsicCall::parse(&text);
    }

    #[test]
    fn parse_never_panics_on_call_like_text(
        text in "States\\.[A-Za-z]{0,12}\\(([ $.,'\\\\{}()\\[\\]@?=a-z0-9-]|States\\.Array\\(){0,30}"
    ) {
        let _ = IntrinsicCall::parse(&text);
    }

    #[test]
    fn eval_never_panics(
        f in prop::sample::select(Function::ALL.to_vec()),
        args in prop::collection::vec(arb_arg(), 0..4),
        input in arb_json(),
        seed in any::<u64>(),
    ) {
        let text = format!("{}({})", f.name(), args.join(", "));
        if let Ok(call) = IntrinsicCall::parse(&text) {
            let env = TestEnv::new();
            let mut rng = SplitMix64::new(seed);
            let input = json!({"a": input.clone(), "b": [input.clone()], "c": input});
            let _ = call.eval(&input, &env, &mut rng);
        }
    }
}
