//! # sagaflow-http
//!
//! The HTTP Task of AWS Step Functions (`"Resource": "arn:aws:states:::http:invoke"`)
//! for Sagaflow: an [`HttpHandler`] takes the Task's effective `Parameters`
//! (`ApiEndpoint`, `Method`, `Headers`, `QueryParameters`, `RequestBody`,
//! `Transform`, `InvocationConfig`, `Authentication`), makes the call, and
//! returns the result in AWS's shape:
//!
//! ```json
//! {"StatusCode": 200, "StatusText": "OK", "Headers": {"content-type": ["application/json"]}, "ResponseBody": {"id": "ch_1"}}
//! ```
//!
//! Credentials come from a local [`Connections`] registry (named by
//! `Authentication.ConnectionArn` or `InvocationConfig.ConnectionArn`),
//! never from the definition; they never appear in results, errors, or
//! logs, and are sent only over `https://` (or `http://` to a loopback
//! host, for local testing).
//!
//! Failures are task errors that `Retry` and `Catch` match:
//!
//! | error | when |
//! |---|---|
//! | `States.Http.StatusCode.NNN` ([`STATUS_CODE_PREFIX`]) | the API answered a status outside 2xx (3xx included: redirects are not followed) |
//! | `States.Http.Socket` ([`SOCKET`]) | no response: connection refused, DNS, TLS, reset, or the request timed out |
//! | `States.DataLimitExceeded` ([`DATA_LIMIT_EXCEEDED`]) | the response body is larger than [`HttpConfig::max_response_bytes`] |
//! | `States.Runtime` ([`INVALID_PARAMETERS`]) | invalid `Parameters` (a header AWS refuses, conflicting `ConnectionArn`s, ...), an unknown connection, a connection over `http://` to a host that is not loopback, or a response body in a content encoding (`gzip`, ...) the task cannot read |
//! | `Sagaflow.Http.AuthenticationFailed` ([`AUTHENTICATION_FAILED`]) | an OAuth token could not be obtained |
//!
//! The same handler serves tasks in-process and over NATS (register it with
//! a participant `Worker`). Example (no network needed to build it):
//!
//! ```
//! use std::sync::Arc;
//! use sagaflow_http::{Connections, HttpConfig, HttpHandler};
//! use sagaflow_participant::Handler;
//!
//! let connections = Connections::from_json(
//!     r#"{"Connections": [{"Name": "Partner", "AuthorizationType": "BASIC",
//!         "AuthParameters": {"BasicAuthParameters": {"Username": "saga", "Password": "pw"}}}]}"#,
//!     "inline",
//! )?;
//! let handler: Arc<dyn Handler> = Arc::new(HttpHandler::new(HttpConfig::default(), connections)?);
//! # let _ = handler;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod connections;
pub mod request;

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::future::BoxFuture;
use reqwest::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION,
};
use reqwest::{Response, StatusCode};
use serde_json::{Map, Value};
use tokio::time::Instant;

use sagaflow_participant::{Handler, TaskContext, TaskError};

pub use connections::{Auth, Connection, Connections, ConnectionsError, OAuth, Secret};
pub use request::{ArrayFormat, Body, RequestPlan};

use connections::{CachedToken, DEFAULT_TOKEN_LIFETIME, TOKEN_EXPIRY_MARGIN};

/// Prefix of the error of a non-2xx answer: `States.Http.StatusCode.404`.
pub const STATUS_CODE_PREFIX: &str = "States.Http.StatusCode.";
/// No response arrived: connection refused, DNS or TLS failure, reset, or
/// the request timed out (AWS's name for the HTTP Task's socket errors).
pub const SOCKET: &str = "States.Http.Socket";
/// The response body is larger than the configured limit.
pub const DATA_LIMIT_EXCEEDED: &str = "States.DataLimitExceeded";
/// The Task's `Parameters` are invalid or name an unknown connection, a
/// connection would be used over clear-text HTTP off this machine, or the
/// response body comes in a content encoding the task cannot read: a
/// problem of the definition or deployment, which ASL's `States.ALL` does
/// not catch.
pub const INVALID_PARAMETERS: &str = "States.Runtime";
/// An OAuth access token could not be obtained from the token endpoint.
pub const AUTHENTICATION_FAILED: &str = "Sagaflow.Http.AuthenticationFailed";

/// The default response body limit: 256 KiB, Step Functions' payload limit.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// The default request timeout: 60 s, the HTTP Task's limit on AWS.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Installs rustls' `ring` crypto provider as the process default, unless
/// one is installed already. Idempotent; [`HttpHandler::new`] calls it.
pub fn install_crypto_provider() {
    // Err means a provider is installed already: that one is used.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How the HTTP Task calls out.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest response body accepted, in bytes ([`DEFAULT_MAX_RESPONSE_BYTES`]).
    pub max_response_bytes: usize,
    /// Longest a call may take, token fetch and body included
    /// ([`DEFAULT_TIMEOUT`]). A state whose `TimeoutSeconds` is no longer
    /// than this gives the call that many seconds plus one instead (up to a
    /// second over this limit), so that the state's own timeout
    /// (`States.Timeout`) comes first.
    pub timeout: Duration,
    /// Longest a connection may take to open (10 s).
    pub connect_timeout: Duration,
    /// Bytes of a non-2xx body quoted in the error's cause (512).
    pub error_excerpt_bytes: usize,
    /// Follow redirects (up to 10). Off by default, as on AWS: a 3xx fails
    /// the task with `States.Http.StatusCode.3xx`, its `Location` named in
    /// the cause without its query. When on, a redirect to another host
    /// drops `Authorization` (basic and OAuth connections) but not an API
    /// key sent in a header of another name, nor a connection's
    /// `HeaderParameters`: turn it on only for endpoints that redirect to
    /// hosts you trust.
    pub follow_redirects: bool,
    /// The `User-Agent` header.
    pub user_agent: String,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: Duration::from_secs(10),
            error_excerpt_bytes: 512,
            follow_redirects: false,
            user_agent: concat!("sagaflow-http/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// The HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    /// reqwest refused the configuration (no TLS roots, ...).
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// A limit is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

/// How long after the state's `TimeoutSeconds` the call itself is cut off
/// (the runtime's `States.Timeout` comes first).
const STATE_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// Serves `arn:aws:states:::http:invoke` tasks.
#[derive(Debug, Clone)]
pub struct HttpHandler {
    client: reqwest::Client,
    config: Arc<HttpConfig>,
    connections: Arc<Connections>,
}

impl HttpHandler {
    /// A handler with this configuration and these connections.
    pub fn new(
        config: HttpConfig,
        connections: Connections,
    ) -> Result<HttpHandler, HttpSetupError> {
        install_crypto_provider();
        if config.max_response_bytes == 0 {
            return Err(HttpSetupError::Zero("max_response_bytes"));
        }
        if config.timeout.is_zero() {
            return Err(HttpSetupError::Zero("timeout"));
        }
        let redirect = if config.follow_redirects {
            reqwest::redirect::Policy::limited(10)
        } else {
            reqwest::redirect::Policy::none()
        };
        let client = reqwest::Client::builder()
            .redirect(redirect)
            .connect_timeout(config.connect_timeout)
            .user_agent(config.user_agent.clone())
            .build()
            .map_err(HttpSetupError::Client)?;
        Ok(HttpHandler {
            client,
            config: Arc::new(config),
            connections: Arc::new(connections),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// The connections.
    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    /// Runs one HTTP Task: `parameters` is the Task's effective input.
    pub async fn invoke(&self, parameters: &Value, ctx: &TaskContext) -> Result<Value, TaskError> {
        let plan = request::plan(parameters)
            .map_err(|m| TaskError::new(INVALID_PARAMETERS, format!("HTTP Task: {m}")))?;
        let connection = match &plan.connection {
            None => None,
            Some(arn) => Some(self.connections.lookup(arn).cloned().ok_or_else(|| {
                TaskError::new(
                    INVALID_PARAMETERS,
                    format!(
                        "HTTP Task: no connection named '{}' (from the ConnectionArn); \
                         known connections: [{}]",
                        connections::connection_name(arn),
                        self.connections.names().join(", ")
                    ),
                )
            })?),
        };
        if let Some(conn) = &connection {
            check_transport(&plan, conn)?;
        }
        // The state's `TimeoutSeconds` is the runtime's to enforce
        // (`States.Timeout`, as on AWS): the call's own cut-off comes a
        // little later, only so that the call does not outlive the task.
        let limit = match ctx.timeout_seconds.map(|s| Duration::from_secs(s.max(1))) {
            Some(state) if state <= self.config.timeout => {
                state.saturating_add(STATE_TIMEOUT_MARGIN)
            }
            _ => self.config.timeout,
        };
        let target = format!("{} {}", plan.method, redacted_url(&plan.url));
        tracing::debug!(target: "sagaflow_http", request = %target, task = %ctx.task_id, "HTTP Task call");
        let call = self.call(&plan, connection.as_deref(), ctx);
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(TaskError::new(
                SOCKET,
                format!(
                    "{target}: timed out: no complete response within {} s",
                    limit.as_secs_f64()
                ),
            )),
        }
    }

    async fn call(
        &self,
        plan: &RequestPlan,
        connection: Option<&Connection>,
        ctx: &TaskContext,
    ) -> Result<Value, TaskError> {
        let target = format!("{} {}", plan.method, redacted_url(&plan.url));
        let mut url = plan.url.clone();
        let mut headers = HeaderMap::new();
        for (name, value) in &plan.headers {
            headers.append(name.clone(), value.clone());
        }
        if !plan.has_header("idempotency-key")
            && let Ok(v) = HeaderValue::from_str(&ctx.idempotency_key())
        {
            headers.insert(HeaderName::from_static("idempotency-key"), v);
        }
        if let Some(tp) = &ctx.trace_parent
            && let Ok(v) = HeaderValue::from_str(tp)
        {
            headers.insert(HeaderName::from_static("traceparent"), v);
        }
        let body = request_body(plan, connection, &target)?;
        if let Some((_, content_type)) = &body {
            let form = *content_type == FORM_CONTENT_TYPE;
            // A form body is always labelled as one; a JSON body keeps the
            // definition's `Content-Type` when it sets one.
            if form || !plan.has_header("content-type") {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            }
        }
        if let Some(conn) = connection {
            // The connection's parameters win over the definition's, as on AWS.
            for h in &conn.invocation.header_parameters {
                set_secret_header(&mut headers, &h.key, h.value.expose(), &conn.name)?;
            }
            if !conn.invocation.query_string_parameters.is_empty() {
                let keep: Vec<(String, String)> = url
                    .query_pairs()
                    .filter(|(k, _)| {
                        !conn
                            .invocation
                            .query_string_parameters
                            .iter()
                            .any(|q| q.key == *k)
                    })
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                let mut pairs = url.query_pairs_mut();
                pairs.clear();
                for (k, v) in &keep {
                    pairs.append_pair(k, v);
                }
                for q in &conn.invocation.query_string_parameters {
                    pairs.append_pair(&q.key, q.value.expose());
                }
            }
            match &conn.auth {
                Auth::ApiKey { name, value } => {
                    set_secret_header(&mut headers, name, value.expose(), &conn.name)?;
                }
                Auth::Basic { username, password } => {
                    let raw = format!("{}:{}", username.expose(), password.expose());
                    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
                    set_secret_header(
                        &mut headers,
                        AUTHORIZATION.as_str(),
                        &format!("Basic {encoded}"),
                        &conn.name,
                    )?;
                }
                Auth::OAuthClientCredentials(oauth) => {
                    let token = self.bearer(conn, oauth).await?;
                    set_secret_header(
                        &mut headers,
                        AUTHORIZATION.as_str(),
                        &format!("Bearer {}", token.expose()),
                        &conn.name,
                    )?;
                }
            }
        }
        let mut request = self
            .client
            .request(plan.method.clone(), url)
            .headers(headers);
        if let Some((body, _)) = body {
            request = request.body(body);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| TaskError::new(SOCKET, format!("{target}: {}", transport_cause(e))))?;
        let status = response.status();
        if (status == StatusCode::UNAUTHORIZED
            || status == StatusCode::PROXY_AUTHENTICATION_REQUIRED)
            && let Some(conn) = connection
            && matches!(conn.auth, Auth::OAuthClientCredentials(_))
        {
            // The token may have been revoked: fetch a new one next time
            // (EventBridge refreshes it on 401 and on 407).
            conn.forget_token().await;
        }
        let response_headers = headers_json(response.headers());
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let status_text = status.canonical_reason().unwrap_or("").to_string();
        // The client asks for no encoding and decodes none: a body sent in
        // one could only be passed on as garbage.
        let encoding = content_encoding(response.headers());
        if !status.is_success() {
            let excerpt = match &encoding {
                None => read_excerpt(&mut response, self.config.error_excerpt_bytes).await,
                Some(encoding) => format!("(a body in content encoding '{encoding}', not quoted)"),
            };
            let mut cause = format!("{target}: {} {status_text}", status.as_u16());
            if status.is_redirection() {
                // Without its query, as every URL in a cause: a redirect may
                // carry the connection's query parameters along.
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| response.url().join(l).ok())
                    .map(|l| redacted_url(&l));
                match location {
                    Some(location) => {
                        cause.push_str(&format!(" (redirect to {location} not followed)"));
                    }
                    None => cause.push_str(" (redirect not followed)"),
                }
            }
            if !excerpt.is_empty() {
                cause.push_str(": ");
                cause.push_str(&excerpt);
            }
            return Err(TaskError::new(
                format!("{STATUS_CODE_PREFIX}{}", status.as_u16()),
                cause,
            ));
        }
        let bytes = read_limited(&mut response, self.config.max_response_bytes)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge(seen) => TaskError::new(
                    DATA_LIMIT_EXCEEDED,
                    format!(
                        "{target}: the response body ({seen} bytes or more) exceeds the limit of {} bytes",
                        self.config.max_response_bytes
                    ),
                ),
                ReadError::Transport(e) => {
                    TaskError::new(SOCKET, format!("{target}: while reading the body: {}", transport_cause(e)))
                }
            })?;
        if let Some(encoding) = encoding
            && !bytes.is_empty()
        {
            return Err(TaskError::new(
                INVALID_PARAMETERS,
                format!(
                    "{target}: the response body is in content encoding '{encoding}', which the \
                     HTTP Task cannot read (it asks for none: the API should answer without \
                     Content-Encoding)"
                ),
            ));
        }
        let body = parse_body(&bytes, &content_type);
        let mut out = Map::new();
        out.insert("StatusCode".into(), Value::from(status.as_u16()));
        out.insert("StatusText".into(), Value::String(status_text));
        out.insert("Headers".into(), response_headers);
        out.insert("ResponseBody".into(), body);
        Ok(Value::Object(out))
    }

    /// A valid OAuth access token for `conn`: the cached one, or a new one
    /// from the token endpoint (one fetch at a time per connection).
    async fn bearer(&self, conn: &Connection, oauth: &OAuth) -> Result<Secret, TaskError> {
        let mut slot = conn.token.lock().await;
        if let Some(t) = slot.as_ref()
            && Instant::now() < t.expires
        {
            return Ok(t.token.clone());
        }
        let fail = |why: String| {
            TaskError::new(
                AUTHENTICATION_FAILED,
                format!("connection '{}': no OAuth token: {why}", conn.name),
            )
        };
        let mut url = reqwest::Url::parse(&oauth.token_endpoint)
            .map_err(|_| fail("the token endpoint is not a URL".into()))?;
        // As EventBridge does: `QueryStringParameters` go in the token
        // request's query, `BodyParameters` in its form body (with
        // `grant_type` and `scope`, which they may replace), and
        // `HeaderParameters` in its headers. A `GET` token request has no
        // body: its form fields go in the query too.
        url.query_pairs_mut().extend_pairs(
            oauth
                .token_parameters
                .query_string_parameters
                .iter()
                .map(|q| (q.key.as_str(), q.value.expose())),
        );
        let mut form = vec![("grant_type".to_string(), "client_credentials".to_string())];
        if !oauth.scopes.is_empty() {
            form.push(("scope".into(), oauth.scopes.join(" ")));
        }
        for b in &oauth.token_parameters.body_parameters {
            form.retain(|(k, _)| *k != b.key);
            form.push((b.key.clone(), b.value.expose().to_string()));
        }
        let mut request = if oauth.method == "GET" {
            url.query_pairs_mut().extend_pairs(form.iter());
            self.client.get(url)
        } else {
            let mut body = form_urlencoded::Serializer::new(String::new());
            body.extend_pairs(form.iter());
            self.client
                .post(url)
                .header(CONTENT_TYPE, FORM_CONTENT_TYPE)
                .body(body.finish())
        };
        for h in &oauth.token_parameters.header_parameters {
            request = request.header(h.key.as_str(), h.value.expose());
        }
        let mut response = request
            .basic_auth(oauth.client_id.expose(), Some(oauth.client_secret.expose()))
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fail(format!("token endpoint: {}", transport_cause(e))))?;
        let status = response.status();
        if !status.is_success() {
            // The body is not quoted: token endpoints may echo credentials.
            return Err(fail(format!(
                "the token endpoint answered {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )));
        }
        let bytes = read_limited(&mut response, 64 * 1024)
            .await
            .map_err(|_| fail("the token response could not be read (or is over 64 KiB)".into()))?;
        let parsed: Value = serde_json::from_slice(&bytes)
            .map_err(|_| fail("the token response is not JSON".into()))?;
        let token = parsed
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| fail("the token response has no access_token".into()))?;
        // Checked before it is kept: a token no header can carry would fail
        // every call until it expired.
        if HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
            return Err(fail(
                "the token response's access_token cannot be sent in a header".into(),
            ));
        }
        let lifetime = parsed
            .get("expires_in")
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
            // Any lifetime beyond a day is a day: a token is fetched again
            // at least that often (and no deadline overflows).
            .min(MAX_TOKEN_LIFETIME);
        let token = Secret::new(token);
        *slot = Some(CachedToken {
            token: token.clone(),
            expires: Instant::now() + lifetime.saturating_sub(TOKEN_EXPIRY_MARGIN),
        });
        Ok(token)
    }
}

/// The longest an OAuth token is kept, whatever its `expires_in`.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

impl Handler for HttpHandler {
    fn call(&self, input: Value, ctx: TaskContext) -> BoxFuture<'_, Result<Value, TaskError>> {
        Box::pin(async move { self.invoke(&input, &ctx).await })
    }
}

/// Sets a header whose value comes from a connection; an invalid value is
/// reported without quoting it.
fn set_secret_header(
    headers: &mut HeaderMap,
    name: &str,
    value: &str,
    connection: &str,
) -> Result<(), TaskError> {
    let bad = || {
        TaskError::new(
            INVALID_PARAMETERS,
            format!("connection '{connection}': header '{name}' has an invalid name or value"),
        )
    };
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
    let mut value = HeaderValue::from_str(value).map_err(|_| bad())?;
    value.set_sensitive(true);
    headers.insert(name, value);
    Ok(())
}

/// The `Content-Type` of a URL-encoded body.
const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";
/// The `Content-Type` of a JSON body.
const JSON_CONTENT_TYPE: &str = "application/json";

/// Refuses, before any network I/O, to send a connection's credentials or
/// parameters in clear text: the `ApiEndpoint`, and an OAuth connection's
/// token endpoint, must be `https://` (or `http://` to a loopback host, for
/// local testing). AWS allows only HTTPS.
fn check_transport(plan: &RequestPlan, conn: &Connection) -> Result<(), TaskError> {
    if !request::allows_credentials(&plan.url) {
        return Err(TaskError::new(
            INVALID_PARAMETERS,
            format!(
                "HTTP Task: connection '{}' is used only over https://: ApiEndpoint {} is {}:// \
                 to a host that is not loopback (http:// is allowed for localhost, 127.0.0.0/8 \
                 and ::1 only)",
                conn.name,
                redacted_url(&plan.url),
                plan.url.scheme()
            ),
        ));
    }
    if let Auth::OAuthClientCredentials(oauth) = &conn.auth {
        let secure = reqwest::Url::parse(&oauth.token_endpoint)
            .is_ok_and(|url| request::allows_credentials(&url));
        if !secure {
            // The endpoint is not quoted: it is part of the connection.
            return Err(TaskError::new(
                INVALID_PARAMETERS,
                format!(
                    "HTTP Task: connection '{}': the OAuth AuthorizationEndpoint must be an \
                     https:// URL (http:// only to localhost, 127.0.0.0/8 or ::1)",
                    conn.name
                ),
            ));
        }
    }
    Ok(())
}

/// The request body and its content type: the definition's `RequestBody`
/// with the connection's `BodyParameters` added (they win, as its headers
/// and query parameters do). Without a `RequestBody`, the body is those
/// fields alone, encoded as `Transform.RequestBodyEncoding` says, except
/// for `GET`, `HEAD` and `DELETE`, which then get no body.
fn request_body(
    plan: &RequestPlan,
    connection: Option<&Connection>,
    target: &str,
) -> Result<Option<(Vec<u8>, &'static str)>, TaskError> {
    let extra: &[connections::KeyValue] =
        connection.map_or(&[], |c| c.invocation.body_parameters.as_slice());
    let form_with_extra = |text: &str| -> Vec<u8> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form_urlencoded::parse(text.as_bytes()) {
            if !extra.iter().any(|f| f.key == k) {
                form.append_pair(&k, &v);
            }
        }
        for field in extra {
            form.append_pair(&field.key, field.value.expose());
        }
        form.finish().into_bytes()
    };
    let json_with_extra = |v: &Value| -> Result<Vec<u8>, TaskError> {
        if extra.is_empty() {
            return Ok(serde_json::to_vec(v).unwrap_or_default());
        }
        let Value::Object(fields) = v else {
            return Err(TaskError::new(
                INVALID_PARAMETERS,
                format!(
                    "{target}: connection '{}' has BodyParameters, so RequestBody must be \
                     a JSON object (or absent)",
                    connection.map_or("", |c| c.name.as_str())
                ),
            ));
        };
        let mut fields = fields.clone();
        for field in extra {
            fields.insert(
                field.key.clone(),
                Value::String(field.value.expose().to_string()),
            );
        }
        Ok(serde_json::to_vec(&Value::Object(fields)).unwrap_or_default())
    };
    Ok(match &plan.body {
        Body::None if extra.is_empty() || !plan.takes_body_parameters() => None,
        Body::None if plan.url_encoded => Some((form_with_extra(""), FORM_CONTENT_TYPE)),
        Body::None => Some((
            json_with_extra(&Value::Object(Map::new()))?,
            JSON_CONTENT_TYPE,
        )),
        Body::Json(v) => Some((json_with_extra(v)?, JSON_CONTENT_TYPE)),
        Body::Form(text) if extra.is_empty() => {
            Some((text.clone().into_bytes(), FORM_CONTENT_TYPE))
        }
        Body::Form(text) => Some((form_with_extra(text), FORM_CONTENT_TYPE)),
    })
}

/// The response's content encoding, when it is one the client cannot read
/// (anything but `identity`): the header's values as sent (their first 64
/// characters, for a cause).
fn content_encoding(headers: &HeaderMap) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let encoded = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"));
    encoded.then(|| {
        let mut shown = values.join(", ");
        if let Some((cut, _)) = shown.char_indices().nth(64) {
            shown.truncate(cut);
            shown.push_str("...");
        }
        shown
    })
}

/// The URL as shown in causes and logs: without its query (which a
/// definition may fill from the execution's data).
fn redacted_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// The response headers as AWS shows them: lower-case names, each with the
/// list of its values.
fn headers_json(headers: &HeaderMap) -> Value {
    let mut out: Map<String, Value> = Map::new();
    for (name, value) in headers {
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match out.entry(name.as_str().to_string()) {
            serde_json::map::Entry::Occupied(mut e) => {
                if let Value::Array(list) = e.get_mut() {
                    list.push(Value::String(text));
                }
            }
            serde_json::map::Entry::Vacant(e) => {
                e.insert(Value::Array(vec![Value::String(text)]));
            }
        }
    }
    Value::Object(out)
}

/// The body as JSON when the response says it is JSON (and it parses),
/// else as text.
fn parse_body(bytes: &[u8], content_type: &str) -> Value {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    let json = mime == "application/json" || mime.ends_with("+json");
    if json
        && !bytes.is_empty()
        && let Ok(v) = serde_json::from_slice::<Value>(bytes)
    {
        return v;
    }
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

enum ReadError {
    TooLarge(usize),
    Transport(reqwest::Error),
}

/// Reads the body chunk by chunk, giving up as soon as it passes `limit`.
async fn read_limited(response: &mut Response, limit: usize) -> Result<Vec<u8>, ReadError> {
    if let Some(announced) = response.content_length()
        && announced > limit as u64
    {
        return Err(ReadError::TooLarge(
            usize::try_from(announced).unwrap_or(usize::MAX),
        ));
    }
    let mut buf = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        if buf.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge(buf.len() + chunk.len()));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The first `max` bytes of the body (as text), read incrementally; a body
/// that cannot be read gives what was read.
async fn read_excerpt(response: &mut Response, max: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < max {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    let truncated = buf.len() > max;
    buf.truncate(max);
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if truncated {
        text.push_str("...");
    }
    text
}

/// A transport error's cause: what kind of failure, then its chain of
/// messages (without the URL, whose query may carry connection parameters).
fn transport_cause(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut chain = e.to_string();
    let mut tls = false;
    let mut refused = false;
    let mut source = e.source();
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        tls |= s.is::<rustls::Error>();
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
            tls |= io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>());
        }
        source = s.source();
    }
    let lower = chain.to_ascii_lowercase();
    let kind = if e.is_timeout() {
        "timed out"
    } else if refused || lower.contains("connection refused") {
        "connection refused"
    } else if tls
        || [
            "certificate",
            "tls",
            "handshake",
            "corrupt message",
            "peer sent",
            "alert",
        ]
        .iter()
        .any(|w| lower.contains(w))
    {
        "TLS error"
    } else if lower.contains("dns") || lower.contains("failed to lookup") {
        "name resolution failed"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response interrupted"
    } else {
        "request failed"
    };
    format!("{kind}: {chain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_by_content_type() {
        assert_eq!(
            parse_body(br#"{"a":1}"#, "application/json; charset=utf-8"),
            serde_json::json!({"a": 1})
        );
        assert_eq!(
            parse_body(br#"{"a":1}"#, "application/problem+json"),
            serde_json::json!({"a": 1})
        );
        assert_eq!(
            parse_body(br#"{"a":1}"#, "text/plain"),
            Value::from(r#"{"a":1}"#)
        );
        assert_eq!(
            parse_body(b"not json", "application/json"),
            Value::from("not json")
        );
        assert_eq!(parse_body(b"", "application/json"), Value::from(""));
    }

    #[test]
    fn content_encodings_other_than_identity_are_unreadable() {
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(CONTENT_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            content_encoding(&h)
        };
        assert_eq!(with(&[]), None);
        assert_eq!(with(&["identity"]), None);
        assert_eq!(with(&["Identity, "]), None);
        assert_eq!(with(&["gzip"]).as_deref(), Some("gzip"));
        assert_eq!(with(&["identity", "br"]).as_deref(), Some("identity, br"));
        assert_eq!(with(&["x".repeat(100).as_str()]).unwrap().len(), 67);
    }

    #[test]
    fn urls_in_causes_drop_the_query() {
        let u = reqwest::Url::parse("https://h/p?key=secret#f").unwrap();
        assert_eq!(redacted_url(&u), "https://h/p");
    }

    #[test]
    fn zero_limits_are_refused() {
        let c = HttpConfig {
            max_response_bytes: 0,
            ..HttpConfig::default()
        };
        assert!(matches!(
            HttpHandler::new(c, Connections::empty()),
            Err(HttpSetupError::Zero("max_response_bytes"))
        ));
        install_crypto_provider();
        install_crypto_provider();
    }
}
