//! The HTTP Task handler against real HTTP servers on loopback (wiremock,
//! and raw TCP servers for endless bodies and refused connections).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::{
    body_json, body_string, header, header_exists, method, path, query_param,
};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use sagaflow_http::{Connections, HttpConfig, HttpHandler};

use common::*;

fn handler() -> HttpHandler {
    with_connections(Connections::empty())
}

fn with_connections(connections: Connections) -> HttpHandler {
    HttpHandler::new(HttpConfig::default(), connections).unwrap()
}

async fn invoke(h: &HttpHandler, params: Value) -> Result<Value, sagaflow_participant::TaskError> {
    h.invoke(&params, &ctx("Call@0#0")).await
}

#[tokio::test]
async fn every_method_reaches_the_server() {
    let server = MockServer::start().await;
    for m in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"] {
        Mock::given(method(m))
            .and(path("/thing"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("x-method", m)
                    .set_body_json(json!({"method": m})),
            )
            .expect(1)
            .mount(&server)
            .await;
    }
    let h = handler();
    for m in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"] {
        let out = invoke(
            &h,
            json!({"ApiEndpoint": format!("{}/thing", server.uri()), "Method": m}),
        )
        .await
        .unwrap();
        assert_eq!(out["StatusCode"], json!(200), "{m}");
        assert_eq!(out["StatusText"], json!("OK"));
        assert_eq!(out["Headers"]["x-method"], json!([m]));
        if m == "HEAD" {
            assert_eq!(out["ResponseBody"], json!(""));
        } else {
            assert_eq!(out["ResponseBody"], json!({"method": m}));
        }
    }
    // `expect(1)` per method is verified when the server drops.
}

#[tokio::test]
async fn query_parameters_headers_and_added_headers() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/search"))
        .and(query_param("fixed", "1"))
        .and(query_param("q", "a b&c"))
        .and(query_param("n", "42"))
        .and(header("x-custom", "yes"))
        .and(header("x-num", "7"))
        .and(header(
            "idempotency-key",
            "arn:aws:states:us-east-1:123456789012:execution:M:e1/Call@0#0",
        ))
        .and(header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_string("plain text"))
        .expect(1)
        .mount(&server)
        .await;
    let mut c = ctx("Call@0#0");
    c.trace_parent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    let out = handler()
        .invoke(
            &json!({
                "ApiEndpoint": format!("{}/search?fixed=1", server.uri()),
                "Method": "GET",
                "QueryParameters": {"q": "a b&c", "n": 42},
                "Headers": {"X-Custom": "yes", "x-num": 7}
            }),
            &c,
        )
        .await
        .unwrap();
    assert_eq!(out["ResponseBody"], json!("plain text"));
    // The query is sent as repeated keys for arrays.
    Mock::given(method("GET"))
        .and(path("/multi"))
        .respond_with(|r: &Request| {
            ResponseTemplate::new(200).set_body_string(r.url.query().unwrap_or("").to_string())
        })
        .mount(&server)
        .await;
    let out = invoke(
        &handler(),
        json!({"ApiEndpoint": format!("{}/multi", server.uri()), "Method": "GET",
               "QueryParameters": {"tag": ["x", "y"]}}),
    )
    .await
    .unwrap();
    assert_eq!(out["ResponseBody"], json!("tag=x&tag=y"));
}

#[tokio::test]
async fn a_definition_idempotency_key_wins() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("idempotency-key", "mine"))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&server)
        .await;
    let out = invoke(
        &handler(),
        json!({"ApiEndpoint": server.uri(), "Method": "POST", "Headers": {"Idempotency-Key": "mine"}}),
    )
    .await
    .unwrap();
    assert_eq!(out["StatusCode"], json!(201));
    assert_eq!(out["StatusText"], json!("Created"));
    let requests = server.received_requests().await.unwrap();
    assert_eq!(
        requests[0]
            .headers
            .get_all("idempotency-key")
            .iter()
            .count(),
        1
    );
}

#[tokio::test]
async fn json_body_by_default() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("content-type", "application/json"))
        .and(body_json(
            json!({"amount": 10, "items": [1, 2], "note": null}),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(r#"{"id":"ch_1"}"#, "application/json; charset=utf-8"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let out = invoke(
        &handler(),
        json!({"ApiEndpoint": server.uri(), "Method": "POST",
               "RequestBody": {"amount": 10, "items": [1, 2], "note": null}}),
    )
    .await
    .unwrap();
    assert_eq!(out["ResponseBody"], json!({"id": "ch_1"}));
    assert_eq!(
        out["Headers"]["content-type"],
        json!(["application/json; charset=utf-8"])
    );
}

#[tokio::test]
async fn url_encoded_bodies_in_every_array_format() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .respond_with(|r: &Request| {
            let pairs: Vec<Value> = form_pairs(&r.body)
                .into_iter()
                .map(|(k, v)| json!([k, v]))
                .collect();
            ResponseTemplate::new(200).set_body_json(pairs)
        })
        .mount(&server)
        .await;
    let cases = [
        (
            "INDICES",
            json!([["a[0]", "x"], ["a[1]", "y"], ["o[k]", "v"], ["n", "1"]]),
        ),
        (
            "REPEAT",
            json!([["a", "x"], ["a", "y"], ["o[k]", "v"], ["n", "1"]]),
        ),
        ("COMMAS", json!([["a", "x,y"], ["o[k]", "v"], ["n", "1"]])),
        (
            "BRACKETS",
            json!([["a[]", "x"], ["a[]", "y"], ["o[k]", "v"], ["n", "1"]]),
        ),
    ];
    let h = handler();
    for (format, expected) in cases {
        let out = invoke(
            &h,
            json!({"ApiEndpoint": server.uri(), "Method": "POST",
                   "RequestBody": {"a": ["x", "y"], "o": {"k": "v"}, "n": 1},
                   "Transform": {"RequestBodyEncoding": "URL_ENCODED",
                                 "RequestEncodingOptions": {"ArrayFormat": format}}}),
        )
        .await
        .unwrap();
        assert_eq!(out["ResponseBody"], expected, "{format}");
    }
    // No ArrayFormat: INDICES, as on AWS.
    let out = invoke(
        &h,
        json!({"ApiEndpoint": server.uri(), "Method": "POST", "RequestBody": {"a": ["x"]},
               "Transform": {"RequestBodyEncoding": "URL_ENCODED"}}),
    )
    .await
    .unwrap();
    assert_eq!(out["ResponseBody"], json!([["a[0]", "x"]]));
}

fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[tokio::test]
async fn non_2xx_is_a_status_code_error_with_an_excerpt() {
    let server = MockServer::start().await;
    Mock::given(path("/declined"))
        .respond_with(
            ResponseTemplate::new(402)
                .set_body_string(format!("card declined {}", "x".repeat(5000))),
        )
        .mount(&server)
        .await;
    Mock::given(path("/moved"))
        .respond_with(
            ResponseTemplate::new(302).insert_header("location", "https://elsewhere.example/"),
        )
        .mount(&server)
        .await;
    let h = handler();
    let e = invoke(
        &h,
        json!({"ApiEndpoint": format!("{}/declined", server.uri()), "Method": "POST"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "States.Http.StatusCode.402");
    assert!(
        e.cause.contains("402 Payment Required: card declined"),
        "{}",
        e.cause
    );
    assert!(
        e.cause.len() < 1000,
        "cause not bounded: {} bytes",
        e.cause.len()
    );
    // Redirects are not followed: the 3xx is the answer.
    let e = invoke(
        &h,
        json!({"ApiEndpoint": format!("{}/moved", server.uri()), "Method": "GET"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "States.Http.StatusCode.302");
    assert!(
        e.cause.contains("https://elsewhere.example/"),
        "{}",
        e.cause
    );
    assert!(e.cause.contains("not followed"), "{}", e.cause);
}

#[tokio::test]
async fn a_slow_server_times_out() {
    let server = MockServer::start().await;
    Mock::given(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .mount(&server)
        .await;
    let params = json!({"ApiEndpoint": format!("{}/slow", server.uri()), "Method": "GET"});
    // The configured limit.
    let h = HttpHandler::new(
        HttpConfig {
            timeout: Duration::from_millis(500),
            ..HttpConfig::default()
        },
        Connections::empty(),
    )
    .unwrap();
    let started = Instant::now();
    let e = invoke(&h, params.clone()).await.unwrap_err();
    assert_eq!(e.error, "States.Http.Socket");
    assert!(e.cause.contains("timed out"), "{}", e.cause);
    assert!(started.elapsed() < Duration::from_secs(20));
    // The state's TimeoutSeconds, shorter than the default 60 s, and a
    // second more (the runtime's States.Timeout comes first).
    let mut c = ctx("Call@0#0");
    c.timeout_seconds = Some(1);
    let started = Instant::now();
    let e = handler().invoke(&params, &c).await.unwrap_err();
    assert_eq!(e.error, "States.Http.Socket");
    assert!(e.cause.contains("within 2 s"), "{}", e.cause);
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Any `TimeoutSeconds` (a `TimeoutSecondsPath` can give the largest
/// number) leaves the call its own limit; no overflow.
#[tokio::test]
async fn the_largest_task_timeout_does_not_overflow() {
    let server = MockServer::start().await;
    Mock::given(path("/fast"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&server)
        .await;
    let mut c = ctx("Call@0#0");
    c.timeout_seconds = Some(u64::MAX);
    let out = handler()
        .invoke(
            &json!({"ApiEndpoint": format!("{}/fast", server.uri()), "Method": "GET"}),
            &c,
        )
        .await
        .expect("the call succeeds");
    assert_eq!(out["ResponseBody"], json!({"ok": true}));
}

#[tokio::test]
async fn a_huge_response_is_refused_without_reading_it_all() {
    // Announced length over the limit.
    let server = MockServer::start().await;
    Mock::given(path("/big"))
        .respond_with(ResponseTemplate::new(200).set_body_string("y".repeat(300 * 1024)))
        .mount(&server)
        .await;
    let e = invoke(
        &handler(),
        json!({"ApiEndpoint": format!("{}/big", server.uri()), "Method": "GET"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "States.DataLimitExceeded");
    assert!(e.cause.contains("262144"), "{}", e.cause);
    // An endless chunked body: read incrementally, given up at the limit.
    let (url, sent) = endless_server().await;
    let e = tokio::time::timeout(
        Duration::from_secs(20),
        invoke(&handler(), json!({"ApiEndpoint": url, "Method": "GET"})),
    )
    .await
    .expect("the endless body was not cut off")
    .unwrap_err();
    assert_eq!(e.error, "States.DataLimitExceeded");
    // The server could only push what the socket buffers took on top of
    // the 256 KiB read: far from everything it would send.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sent.load(Ordering::SeqCst) < 64 * 1024 * 1024);
    // A smaller configured limit.
    let small = HttpHandler::new(
        HttpConfig {
            max_response_bytes: 10,
            ..HttpConfig::default()
        },
        Connections::empty(),
    )
    .unwrap();
    Mock::given(path("/eleven"))
        .respond_with(ResponseTemplate::new(200).set_body_string("0123456789A"))
        .mount(&server)
        .await;
    let e = invoke(
        &small,
        json!({"ApiEndpoint": format!("{}/eleven", server.uri()), "Method": "GET"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "States.DataLimitExceeded");
}

#[tokio::test]
async fn connection_refused_and_tls_errors_are_socket_errors() {
    let url = refused_url().await;
    let e = invoke(&handler(), json!({"ApiEndpoint": url, "Method": "GET"}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "States.Http.Socket");
    assert!(e.cause.starts_with("GET http://127.0.0.1:"), "{}", e.cause);
    assert!(e.cause.contains("connection refused"), "{}", e.cause);
    // TLS spoken to a plain HTTP server.
    let server = MockServer::start().await;
    let https = server.uri().replace("http://", "https://");
    let e = invoke(&handler(), json!({"ApiEndpoint": https, "Method": "GET"}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "States.Http.Socket");
    assert!(e.cause.contains("TLS error"), "{}", e.cause);
}

#[tokio::test]
async fn invalid_parameters_and_unknown_connections_are_runtime_errors() {
    let e = invoke(
        &handler(),
        json!({"ApiEndpoint": "https://h/", "Method": "TRACE"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "States.Runtime");
    assert!(e.cause.contains("Method"), "{}", e.cause);
    let e = invoke(
        &handler(),
        json!({"ApiEndpoint": "https://h/", "Method": "GET",
               "Authentication": {"ConnectionArn": "arn:aws:events:us-east-1:1:connection/Nope/123"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "States.Runtime");
    assert!(e.cause.contains("'Nope'"), "{}", e.cause);
}

#[tokio::test]
async fn api_key_and_basic_connections_authenticate_without_leaking() {
    let server = MockServer::start().await;
    Mock::given(path("/keyed"))
        .and(header("x-api-key", API_KEY))
        .and(header("x-extra", EXTRA_HEADER))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .expect(1)
        .mount(&server)
        .await;
    let basic = format!("Basic {}", base64_encode(&format!("saga:{PASSWORD}")));
    Mock::given(path("/basic"))
        .and(header("authorization", basic.as_str()))
        .respond_with(ResponseTemplate::new(500).set_body_string("partner down"))
        .expect(1)
        .mount(&server)
        .await;
    let h = with_connections(connections("https://unused.example/token"));
    let out = invoke(
        &h,
        json!({"ApiEndpoint": format!("{}/keyed", server.uri()), "Method": "GET",
               // The connection's value wins over the definition's.
               "Headers": {"x-extra": "from-definition"},
               "Authentication": {"ConnectionArn": "arn:aws:events:us-east-1:123456789012:connection/Keyed/0a1b"}}),
    )
    .await
    .unwrap();
    assert_eq!(out["ResponseBody"], json!({"ok": true}));
    assert_no_secret("result", &out.to_string());
    let e = invoke(
        &h,
        json!({"ApiEndpoint": format!("{}/basic", server.uri()), "Method": "POST",
               "Authentication": {"ConnectionArn": "Partner"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "States.Http.StatusCode.500");
    assert_no_secret("error", &format!("{e:?} {e}"));
    assert_no_secret("handler debug", &format!("{h:?}"));
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn oauth_tokens_are_fetched_once_and_cached() {
    let server = MockServer::start().await;
    let client_basic = format!(
        "Basic {}",
        base64_encode(&format!("client-1:{CLIENT_SECRET}"))
    );
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(header("authorization", client_basic.as_str()))
        .and(body_string(
            "grant_type=client_credentials&scope=payments%3Awrite+payments%3Aread",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let bearer = format!("Bearer {ACCESS_TOKEN}");
    Mock::given(path("/pay"))
        .and(header("authorization", bearer.as_str()))
        .and(header_exists("idempotency-key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"paid": true})))
        .expect(2)
        .mount(&server)
        .await;
    let h = with_connections(connections(&format!("{}/token", server.uri())));
    let params = json!({"ApiEndpoint": format!("{}/pay", server.uri()), "Method": "POST",
                        "Authentication": {"ConnectionArn": "Bank"}});
    for _ in 0..2 {
        let out = invoke(&h, params.clone()).await.unwrap();
        assert_eq!(out["ResponseBody"], json!({"paid": true}));
        assert_no_secret("result", &out.to_string());
    }
}

#[tokio::test]
async fn a_failing_token_endpoint_is_an_authentication_error() {
    let server = MockServer::start().await;
    Mock::given(path("/token"))
        .respond_with(
            ResponseTemplate::new(401).set_body_string(format!("bad client {CLIENT_SECRET}")),
        )
        .mount(&server)
        .await;
    let h = with_connections(connections(&format!("{}/token", server.uri())));
    let e = invoke(
        &h,
        json!({"ApiEndpoint": format!("{}/pay", server.uri()), "Method": "POST",
               "Authentication": {"ConnectionArn": "Bank"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "Sagaflow.Http.AuthenticationFailed");
    assert!(e.cause.contains("401"), "{}", e.cause);
    assert_no_secret("error", &e.to_string());
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let capture = LogCapture::default();
    let _guard = tracing::subscriber::set_default(capturing_subscriber(&capture));
    // Other tests of this binary run on other threads without a
    // subscriber: make sure no callsite stays cached as uninteresting.
    tracing::callsite::rebuild_interest_cache();
    let server = MockServer::start().await;
    Mock::given(path("/token"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"access_token": ACCESS_TOKEN})),
        )
        .mount(&server)
        .await;
    Mock::given(path("/pay"))
        .respond_with(ResponseTemplate::new(503).set_body_string("try later"))
        .mount(&server)
        .await;
    let h = with_connections(connections(&format!("{}/token", server.uri())));
    // A callsite is registered once, by the first thread that reaches it:
    // one reached first by a test without a subscriber, registered while the
    // cache above was rebuilt, can stay cached as uninteresting. Registered
    // by now, it is put right by a second rebuild and a second round.
    for round in 0..2 {
        if round == 1 {
            if capture.text().contains("HTTP Task call") {
                break;
            }
            tracing::callsite::rebuild_interest_cache();
        }
        for conn in ["Keyed", "Partner", "Bank"] {
            let e = invoke(
                &h,
                json!({"ApiEndpoint": format!("{}/pay", server.uri()), "Method": "POST",
                       "RequestBody": {"a": 1}, "Authentication": {"ConnectionArn": conn}}),
            )
            .await
            .unwrap_err();
            assert_eq!(e.error, "States.Http.StatusCode.503");
            tracing::error!(error = ?e, handler = ?h, "as a caller would log it");
        }
    }
    let logs = capture.text();
    assert!(logs.contains("HTTP Task call"), "nothing captured: {logs}");
    assert_no_secret("logs", &logs);
}

/// Connections with `BodyParameters`: `Bodied` (API key, a body field that
/// also comes in the definition) and `BankForm` (OAuth with a body
/// parameter for the token request).
fn bodied_connections(token_url: &str) -> Connections {
    Connections::from_json(
        &format!(
            r#"{{"Connections": [
            {{"Name": "Bodied", "AuthorizationType": "API_KEY",
              "AuthParameters": {{"ApiKeyAuthParameters": {{"ApiKeyName": "x-api-key", "ApiKeyValue": "{API_KEY}"}},
                "InvocationHttpParameters": {{"BodyParameters": [
                    {{"Key": "account", "Value": "{EXTRA_HEADER}", "IsValueSecret": true}},
                    {{"Key": "mode", "Value": "live"}}]}}}}}},
            {{"Name": "BankForm", "AuthorizationType": "OAUTH_CLIENT_CREDENTIALS",
              "AuthParameters": {{"OAuthParameters": {{"AuthorizationEndpoint": "{token_url}", "HttpMethod": "POST",
                "ClientParameters": {{"ClientID": "client-1", "ClientSecret": "{CLIENT_SECRET}"}},
                "OAuthHttpParameters": {{"BodyParameters": [{{"Key": "audience", "Value": "payments"}}]}}}}}}}}
        ]}}"#
        ),
        "bodied.json",
    )
    .unwrap()
}

#[tokio::test]
async fn connection_body_parameters_are_merged_into_the_body() {
    let server = MockServer::start().await;
    // Echoes what it got: the content type and the body, parsed.
    Mock::given(path("/echo"))
        .respond_with(|r: &Request| {
            let kind = r
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = if kind.starts_with("application/json") {
                serde_json::from_slice::<Value>(&r.body).unwrap_or(Value::Null)
            } else {
                json!(form_pairs(&r.body))
            };
            ResponseTemplate::new(200).set_body_json(json!({"type": kind, "body": body}))
        })
        .mount(&server)
        .await;
    let h = with_connections(bodied_connections("https://unused.example/token"));
    let call = |extra: Value| {
        let mut params = json!({"ApiEndpoint": format!("{}/echo", server.uri()), "Method": "POST",
                                "Authentication": {"ConnectionArn": "Bodied"}});
        for (k, v) in extra.as_object().unwrap() {
            params[k] = v.clone();
        }
        let h = &h;
        async move { invoke(h, params).await }
    };

    // A JSON object: the connection's fields are added and win.
    let out = call(json!({"RequestBody": {"amount": 10, "mode": "test"}}))
        .await
        .unwrap();
    assert_eq!(out["ResponseBody"]["type"], "application/json");
    assert_eq!(
        out["ResponseBody"]["body"],
        json!({"amount": 10, "mode": "live", "account": EXTRA_HEADER})
    );
    // No RequestBody: the body is the connection's fields.
    let out = call(json!({})).await.unwrap();
    assert_eq!(
        out["ResponseBody"]["body"],
        json!({"mode": "live", "account": EXTRA_HEADER})
    );
    // URL-encoded: form fields, the connection's replacing the definition's.
    let out = call(json!({"RequestBody": {"amount": 10, "mode": "test"},
                          "Transform": {"RequestBodyEncoding": "URL_ENCODED"}}))
    .await
    .unwrap();
    assert_eq!(
        out["ResponseBody"]["type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(
        out["ResponseBody"]["body"],
        json!([
            ["amount", "10"],
            ["account", EXTRA_HEADER],
            ["mode", "live"]
        ])
    );
    // A body that is not an object cannot take fields: a definition error,
    // with no secret in it, and nothing sent.
    let before = server.received_requests().await.unwrap().len();
    let e = call(json!({"RequestBody": [1, 2]})).await.unwrap_err();
    assert_eq!(e.error, "States.Runtime");
    assert!(e.cause.contains("BodyParameters"), "{}", e.cause);
    assert_no_secret("error", &format!("{e:?} {e}"));
    assert_eq!(server.received_requests().await.unwrap().len(), before);
}

#[tokio::test]
async fn oauth_body_parameters_go_to_the_token_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string(
            "grant_type=client_credentials&audience=payments",
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": ACCESS_TOKEN, "expires_in": 3600})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let bearer = format!("Bearer {ACCESS_TOKEN}");
    Mock::given(path("/pay"))
        .and(header("authorization", bearer.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"paid": true})))
        .expect(1)
        .mount(&server)
        .await;
    let h = with_connections(bodied_connections(&format!("{}/token", server.uri())));
    let out = invoke(
        &h,
        json!({"ApiEndpoint": format!("{}/pay", server.uri()), "Method": "POST",
               "Authentication": {"ConnectionArn": "BankForm"}}),
    )
    .await
    .unwrap();
    assert_eq!(out["ResponseBody"], json!({"paid": true}));
}

/// A redirect (not followed) is named in the cause without its query: it
/// may carry the connection's query parameters along.
#[tokio::test]
async fn a_redirect_is_named_without_its_query() {
    let server = MockServer::start().await;
    Mock::given(path("/moved"))
        .respond_with(
            ResponseTemplate::new(301)
                .insert_header("location", format!("/moved/?api_key={API_KEY}").as_str()),
        )
        .mount(&server)
        .await;
    let e = invoke(
        &handler(),
        json!({"ApiEndpoint": format!("{}/moved", server.uri()), "Method": "GET"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "States.Http.StatusCode.301");
    assert!(
        e.cause
            .contains(&format!("redirect to {}/moved/ not followed", server.uri())),
        "{}",
        e.cause
    );
    assert_no_secret("error", &e.to_string());
}

/// A token endpoint's answer is checked before the token is kept: any
/// `expires_in` is fine (a lifetime over a day counts as a day), and a
/// token no header can carry is an authentication failure (catchable), not
/// a runtime error kept until it expires.
#[tokio::test]
async fn odd_token_responses_are_handled() {
    for (expires_in, token, works) in [
        (json!(u64::MAX), json!(ACCESS_TOKEN), true),
        (json!("18446744073709551615"), json!(ACCESS_TOKEN), true),
        (json!(60), json!("line\nbreak"), false),
    ] {
        let server = MockServer::start().await;
        Mock::given(path("/token"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"access_token": token, "expires_in": expires_in})),
            )
            .mount(&server)
            .await;
        Mock::given(path("/pay"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"paid": true})))
            .mount(&server)
            .await;
        let h = with_connections(connections(&format!("{}/token", server.uri())));
        let result = invoke(
            &h,
            json!({"ApiEndpoint": format!("{}/pay", server.uri()), "Method": "POST",
                   "Authentication": {"ConnectionArn": "Bank"}}),
        )
        .await;
        match (works, result) {
            (true, Ok(out)) => assert_eq!(out["ResponseBody"], json!({"paid": true})),
            (false, Err(e)) => {
                assert_eq!(e.error, "Sagaflow.Http.AuthenticationFailed", "{e}");
                assert!(!e.cause.contains("line"), "{}", e.cause);
            }
            (_, other) => panic!("{expires_in} {token}: {other:?}"),
        }
    }
}

/// A server answering every request on `/echo` with what it got: method,
/// content type, and the body as text.
async fn echo_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(path("/echo"))
        .respond_with(|r: &Request| {
            let kind = r
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            ResponseTemplate::new(200).set_body_json(json!({
                "method": r.method.to_string(),
                "type": kind,
                "body": String::from_utf8_lossy(&r.body),
            }))
        })
        .mount(&server)
        .await;
    server
}

/// `InvocationConfig.ConnectionArn` (the form AWS documents for
/// connections, private APIs included) selects the connection as
/// `Authentication.ConnectionArn` does; two that differ are refused before
/// anything is sent.
#[tokio::test]
async fn invocation_config_connection_arn_selects_the_connection() {
    let server = MockServer::start().await;
    Mock::given(path("/keyed"))
        .and(header("x-api-key", API_KEY))
        .and(header("x-extra", EXTRA_HEADER))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .expect(2)
        .mount(&server)
        .await;
    let h = with_connections(connections("https://unused.example/token"));
    let keyed = "arn:aws:events:us-east-1:123456789012:connection/Keyed/0a1b";
    let url = format!("{}/keyed", server.uri());
    let out = invoke(
        &h,
        json!({"ApiEndpoint": url, "Method": "GET",
               "InvocationConfig": {"ConnectionArn": keyed, "Other": "ignored"}}),
    )
    .await
    .unwrap();
    assert_eq!(out["ResponseBody"], json!({"ok": true}));
    // The same connection in both places is fine.
    invoke(
        &h,
        json!({"ApiEndpoint": url, "Method": "GET",
               "Authentication": {"ConnectionArn": keyed},
               "InvocationConfig": {"ConnectionArn": keyed}}),
    )
    .await
    .unwrap();
    // Two different ones: a definition error, nothing sent.
    let e = invoke(
        &h,
        json!({"ApiEndpoint": url, "Method": "GET",
               "Authentication": {"ConnectionArn": keyed},
               "InvocationConfig": {"ConnectionArn": "Partner"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "States.Runtime");
    assert!(
        e.cause.contains("InvocationConfig.ConnectionArn") && e.cause.contains("differ"),
        "{}",
        e.cause
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
    // An unknown connection named there is reported as for Authentication.
    let e = invoke(
        &h,
        json!({"ApiEndpoint": url, "Method": "GET",
               "InvocationConfig": {"ConnectionArn": "arn:aws:events:us-east-1:1:connection/Nope/1"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "States.Runtime");
    assert!(e.cause.contains("'Nope'"), "{}", e.cause);
}

/// A connection's credentials never travel over clear-text HTTP off this
/// machine: an `http://` ApiEndpoint or OAuth token endpoint to a host that
/// is not loopback fails the task before any network I/O (loopback stays
/// allowed, for tests such as these).
#[tokio::test]
async fn connections_are_refused_over_http_off_loopback() {
    let h = with_connections(connections("https://auth.example.invalid/token"));
    for conn in ["Keyed", "Partner", "Bank"] {
        let e = invoke(
            &h,
            json!({"ApiEndpoint": "http://api.example.invalid/pay?k=v", "Method": "POST",
                   "Authentication": {"ConnectionArn": conn}}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.error, "States.Runtime", "{conn}: {e}");
        assert!(e.cause.contains("https://"), "{}", e.cause);
        assert!(
            e.cause.contains("http://api.example.invalid/pay"),
            "{}",
            e.cause
        );
        assert_no_secret("error", &e.to_string());
    }
    // An OAuth connection whose token endpoint is http:// to another host
    // (built in code: a connections file with one is refused on loading).
    let mut insecure = Connections::empty();
    insecure.insert(sagaflow_http::Connection::new(
        "Plain",
        sagaflow_http::Auth::OAuthClientCredentials(sagaflow_http::OAuth {
            token_endpoint: "http://auth.example.invalid/token".into(),
            method: "POST".into(),
            client_id: sagaflow_http::Secret::new("client-1"),
            client_secret: sagaflow_http::Secret::new(CLIENT_SECRET),
            scopes: vec![],
            token_parameters: Default::default(),
        }),
    ));
    let server = MockServer::start().await;
    let e = invoke(
        &with_connections(insecure),
        json!({"ApiEndpoint": format!("{}/pay", server.uri()), "Method": "POST",
               "Authentication": {"ConnectionArn": "Plain"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "States.Runtime", "{e}");
    assert!(e.cause.contains("AuthorizationEndpoint"), "{}", e.cause);
    assert_no_secret("error", &e.to_string());
    assert!(server.received_requests().await.unwrap().is_empty());
    // Without a connection, http:// stays allowed (it fails here only
    // because the name does not resolve).
    let e = invoke(
        &handler(),
        json!({"ApiEndpoint": "http://api.example.invalid/pay", "Method": "GET"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.error, "States.Http.Socket", "{e}");
}

/// Headers AWS refuses in an HTTP Task are refused, by name, before
/// anything is sent: `Accept-Encoding: gzip` would get a body this client
/// cannot decode.
#[tokio::test]
async fn headers_aws_refuses_are_refused() {
    let server = echo_server().await;
    for name in [
        "Accept-Encoding",
        "Content-Encoding",
        "Content-Length",
        "Cache-Control",
        "If-None-Match",
        "X-Amz-Date",
        "x-amzn-trace-id",
        "X-Forwarded-For",
        "Proxy-Authorization",
        "Keep-Alive",
    ] {
        let e = invoke(
            &handler(),
            json!({"ApiEndpoint": format!("{}/echo", server.uri()), "Method": "GET",
                   "Headers": {name: "gzip"}}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.error, "States.Runtime", "{name}");
        assert!(e.cause.contains(&format!("'{name}'")), "{}", e.cause);
    }
    assert!(server.received_requests().await.unwrap().is_empty());
}

/// A body in a content encoding (the client asks for none and decodes
/// none) fails the task instead of being passed on as garbage; an empty
/// one, or `identity`, is fine.
#[tokio::test]
async fn an_encoded_response_body_fails_the_task() {
    let server = MockServer::start().await;
    // "{}" gzipped.
    let gzipped: Vec<u8> = vec![
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xab, 0xae, 0x05, 0x00, 0x43,
        0xbf, 0xa6, 0xa3, 0x02, 0x00, 0x00, 0x00,
    ];
    Mock::given(path("/gzip"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-encoding", "gzip")
                .set_body_raw(gzipped.clone(), "application/json"),
        )
        .mount(&server)
        .await;
    Mock::given(path("/gzip-error"))
        .respond_with(
            ResponseTemplate::new(500)
                .insert_header("content-encoding", "gzip")
                .set_body_raw(gzipped, "application/json"),
        )
        .mount(&server)
        .await;
    Mock::given(path("/identity"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-encoding", "identity")
                .set_body_json(json!({"ok": true})),
        )
        .mount(&server)
        .await;
    Mock::given(path("/empty"))
        .respond_with(ResponseTemplate::new(204).insert_header("content-encoding", "gzip"))
        .mount(&server)
        .await;
    let h = handler();
    let call = |p: &str| {
        invoke(
            &h,
            json!({"ApiEndpoint": format!("{}{p}", server.uri()), "Method": "GET"}),
        )
    };
    let e = call("/gzip").await.unwrap_err();
    assert_eq!(e.error, "States.Runtime", "{e}");
    assert!(e.cause.contains("content encoding 'gzip'"), "{}", e.cause);
    let e = call("/gzip-error").await.unwrap_err();
    assert_eq!(e.error, "States.Http.StatusCode.500");
    assert!(e.cause.contains("not quoted"), "{}", e.cause);
    assert!(!e.cause.contains('\u{fffd}'), "{}", e.cause);
    let out = call("/identity").await.unwrap();
    assert_eq!(out["ResponseBody"], json!({"ok": true}));
    let out = call("/empty").await.unwrap();
    assert_eq!(out["StatusCode"], json!(204));
}

/// A 407 from the API drops the cached OAuth token, as a 401 does
/// (EventBridge refreshes on both): the next call fetches a new one.
#[tokio::test]
async fn an_oauth_token_is_dropped_on_407() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": ACCESS_TOKEN, "expires_in": 3600})),
        )
        .mount(&server)
        .await;
    Mock::given(path("/pay"))
        .respond_with(ResponseTemplate::new(407))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(path("/pay"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"paid": true})))
        .mount(&server)
        .await;
    let h = with_connections(connections(&format!("{}/token", server.uri())));
    let params = json!({"ApiEndpoint": format!("{}/pay", server.uri()), "Method": "POST",
                        "Authentication": {"ConnectionArn": "Bank"}});
    let e = invoke(&h, params.clone()).await.unwrap_err();
    assert_eq!(e.error, "States.Http.StatusCode.407");
    let out = invoke(&h, params).await.unwrap();
    assert_eq!(out["ResponseBody"], json!({"paid": true}));
    let token_requests = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/token")
        .count();
    assert_eq!(token_requests, 2, "the token was not fetched again");
}

/// `OAuthHttpParameters.QueryStringParameters` go in the token request's
/// query (as EventBridge sends them), `BodyParameters` in its form body,
/// `HeaderParameters` in its headers.
#[tokio::test]
async fn oauth_query_parameters_go_to_the_token_url() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(query_param("tenant", "acme"))
        .and(header("x-token-extra", "h1"))
        .and(body_string(
            "grant_type=client_credentials&scope=pay&audience=payments",
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": ACCESS_TOKEN, "expires_in": 3600})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let bearer = format!("Bearer {ACCESS_TOKEN}");
    Mock::given(path("/pay"))
        .and(header("authorization", bearer.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"paid": true})))
        .expect(1)
        .mount(&server)
        .await;
    let connections = Connections::from_json(
        &format!(
            r#"{{"Connections": [
            {{"Name": "Tenant", "AuthorizationType": "OAUTH_CLIENT_CREDENTIALS",
              "AuthParameters": {{"OAuthParameters": {{"AuthorizationEndpoint": "{}/token", "HttpMethod": "POST",
                "ClientParameters": {{"ClientID": "client-1", "ClientSecret": "{CLIENT_SECRET}"}},
                "Scopes": ["pay"],
                "OAuthHttpParameters": {{
                    "QueryStringParameters": [{{"Key": "tenant", "Value": "acme"}}],
                    "BodyParameters": [{{"Key": "audience", "Value": "payments"}}],
                    "HeaderParameters": [{{"Key": "x-token-extra", "Value": "h1"}}]}}}}}}}}
        ]}}"#,
            server.uri()
        ),
        "tenant.json",
    )
    .unwrap();
    let out = invoke(
        &with_connections(connections),
        json!({"ApiEndpoint": format!("{}/pay", server.uri()), "Method": "POST",
               "Authentication": {"ConnectionArn": "Tenant"}}),
    )
    .await
    .unwrap();
    assert_eq!(out["ResponseBody"], json!({"paid": true}));
}

/// Without a `RequestBody`, a connection's `BodyParameters` are encoded as
/// `Transform.RequestBodyEncoding` asks.
#[tokio::test]
async fn connection_body_parameters_follow_the_transform_without_a_request_body() {
    let server = echo_server().await;
    let h = with_connections(bodied_connections("https://unused.example/token"));
    let out = invoke(
        &h,
        json!({"ApiEndpoint": format!("{}/echo", server.uri()), "Method": "POST",
               "Transform": {"RequestBodyEncoding": "URL_ENCODED"},
               "Authentication": {"ConnectionArn": "Bodied"}}),
    )
    .await
    .unwrap();
    assert_eq!(
        out["ResponseBody"]["type"],
        "application/x-www-form-urlencoded"
    );
    let body = out["ResponseBody"]["body"].as_str().unwrap().as_bytes();
    assert_eq!(
        form_pairs(body),
        vec![
            ("account".to_string(), EXTRA_HEADER.to_string()),
            ("mode".to_string(), "live".to_string())
        ]
    );
}

/// `GET`, `HEAD` and `DELETE` without a `RequestBody` get no body made of
/// a connection's `BodyParameters`; other methods still do.
#[tokio::test]
async fn connection_body_parameters_make_no_body_for_get_head_delete() {
    let server = echo_server().await;
    let h = with_connections(bodied_connections("https://unused.example/token"));
    for m in ["GET", "DELETE", "HEAD"] {
        let before = server.received_requests().await.unwrap().len();
        let out = invoke(
            &h,
            json!({"ApiEndpoint": format!("{}/echo", server.uri()), "Method": m,
                   "Authentication": {"ConnectionArn": "Bodied"}}),
        )
        .await
        .unwrap();
        let requests = server.received_requests().await.unwrap();
        let got = &requests[before];
        assert!(got.body.is_empty(), "{m} sent a body");
        assert!(
            got.headers.get("content-type").is_none(),
            "{m} sent a content type"
        );
        if m != "HEAD" {
            assert_eq!(out["ResponseBody"]["body"], json!(""), "{m}");
        }
    }
    let out = invoke(
        &h,
        json!({"ApiEndpoint": format!("{}/echo", server.uri()), "Method": "PUT",
               "Authentication": {"ConnectionArn": "Bodied"}}),
    )
    .await
    .unwrap();
    assert_eq!(out["ResponseBody"]["type"], "application/json");
}
