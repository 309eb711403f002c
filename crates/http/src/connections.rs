//! The connection registry: named credentials for HTTP Tasks, kept out of
//! the definition and of the history.
//!
//! A Task names a connection with `Authentication.ConnectionArn`: a full
//! EventBridge connection ARN (`arn:aws:events:REGION:ACCOUNT:connection/NAME/UUID`,
//! matched by `NAME`) or a plain name. The registry is loaded from a JSON file
//! shaped after EventBridge's `CreateConnection` request, so a connection
//! written for AWS can be copied in:
//!
//! ```json
//! {
//!   "Connections": [
//!     { "Name": "Stripe", "AuthorizationType": "API_KEY",
//!       "AuthParameters": { "ApiKeyAuthParameters": { "ApiKeyName": "Authorization", "ApiKeyValue": "Bearer sk_test_1" } } },
//!     { "Name": "Partner", "AuthorizationType": "BASIC",
//!       "AuthParameters": { "BasicAuthParameters": { "Username": "saga", "Password": "s3cret" } } },
//!     { "Name": "Bank", "AuthorizationType": "OAUTH_CLIENT_CREDENTIALS",
//!       "AuthParameters": { "OAuthParameters": {
//!         "AuthorizationEndpoint": "https://auth.example.com/oauth2/token", "HttpMethod": "POST",
//!         "ClientParameters": { "ClientID": "id", "ClientSecret": "secret" },
//!         "Scopes": ["payments:write"] } } }
//!   ]
//! }
//! ```
//!
//! Every value of a connection is treated as a secret: `Debug` prints
//! `"***"` for it, and nothing of it reaches results, errors or logs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A secret string: its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for putting on the wire only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One key/value parameter (EventBridge's `ConnectionHttpParameters` entry).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct KeyValue {
    /// The parameter's name.
    pub key: String,
    /// Its value (always treated as secret).
    pub value: Secret,
    /// Accepted for compatibility with EventBridge; every value is treated
    /// as secret anyway.
    #[serde(default)]
    pub is_value_secret: Option<bool>,
}

/// Extra parameters sent with every call through a connection
/// (EventBridge's `InvocationHttpParameters`), or with every token request
/// (`OAuthHttpParameters`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct HttpParameters {
    /// Headers added to the request; they win over the definition's.
    /// Token requests get them as headers too.
    #[serde(default)]
    pub header_parameters: Vec<KeyValue>,
    /// Query parameters added to the URL; they win over the definition's.
    /// Token requests get them in their URL's query, whatever their method
    /// (as EventBridge sends them).
    #[serde(default)]
    pub query_string_parameters: Vec<KeyValue>,
    /// Fields added to the request body, as strings; they win over the
    /// definition's. A JSON `RequestBody` must then be an object; a
    /// URL-encoded one gets them as form fields. Without a `RequestBody`
    /// the body is these fields, URL-encoded when the Task's
    /// `Transform.RequestBodyEncoding` is `URL_ENCODED` and JSON otherwise,
    /// except for `GET`, `HEAD` and `DELETE`, which are then sent without a
    /// body. Token requests get them as form fields of their body (`POST`),
    /// or in their query (`GET`, which has no body).
    #[serde(default)]
    pub body_parameters: Vec<KeyValue>,
}

/// How a connection authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// A header carrying an API key (`ApiKeyName: ApiKeyValue`).
    ApiKey {
        /// The header's name.
        name: String,
        /// The header's value.
        value: Secret,
    },
    /// HTTP Basic authentication.
    Basic {
        /// The user name.
        username: Secret,
        /// The password.
        password: Secret,
    },
    /// OAuth 2.0 client credentials: a token is fetched from the
    /// authorization endpoint, cached until it expires, and sent as
    /// `Authorization: Bearer TOKEN`.
    OAuthClientCredentials(OAuth),
}

/// OAuth client-credentials settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth {
    /// The token endpoint: an `https://` URL (`http://` only to a loopback
    /// host; a task using a connection with another one fails with
    /// `States.Runtime`).
    pub token_endpoint: String,
    /// `POST` (default) or `GET`.
    pub method: String,
    /// The client id.
    pub client_id: Secret,
    /// The client secret.
    pub client_secret: Secret,
    /// Scopes requested (sent space-separated as `scope`).
    pub scopes: Vec<String>,
    /// Extra parameters sent to the token endpoint.
    pub token_parameters: HttpParameters,
}

/// A cached OAuth access token.
#[derive(Clone)]
pub(crate) struct CachedToken {
    pub(crate) token: Secret,
    pub(crate) expires: Instant,
}

/// A named connection: authentication plus parameters sent with every call.
pub struct Connection {
    /// Its name (the `NAME` of `arn:aws:events:...:connection/NAME/UUID`).
    pub name: String,
    /// How it authenticates.
    pub auth: Auth,
    /// Extra headers and query parameters.
    pub invocation: HttpParameters,
    pub(crate) token: Mutex<Option<CachedToken>>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.name)
            .field("auth", &self.auth)
            .field("invocation", &self.invocation)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection with this name and authentication, no extra parameters.
    pub fn new(name: impl Into<String>, auth: Auth) -> Connection {
        Connection {
            name: name.into(),
            auth,
            invocation: HttpParameters::default(),
            token: Mutex::new(None),
        }
    }

    /// Adds extra headers and query parameters.
    pub fn with_invocation_parameters(mut self, invocation: HttpParameters) -> Connection {
        self.invocation = invocation;
        self
    }

    /// Forgets the cached OAuth token (after the API answered 401 or 407).
    pub(crate) async fn forget_token(&self) {
        *self.token.lock().await = None;
    }
}

/// A connections file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionsError {
    /// The file could not be read.
    #[error("cannot read connections file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid connections document.
    #[error("invalid connections file {path}: {message}")]
    Invalid {
        /// The file (or `<inline>`).
        path: String,
        /// What is wrong (never a secret value: serde names fields and
        /// positions only).
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct FileDoc {
    connections: Vec<FileConnection>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct FileConnection {
    name: String,
    #[serde(default)]
    description: Option<String>,
    authorization_type: String,
    auth_parameters: FileAuth,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct FileAuth {
    #[serde(default)]
    api_key_auth_parameters: Option<FileApiKey>,
    #[serde(default)]
    basic_auth_parameters: Option<FileBasic>,
    #[serde(default, rename = "OAuthParameters")]
    oauth_parameters: Option<FileOAuth>,
    #[serde(default)]
    invocation_http_parameters: Option<HttpParameters>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct FileApiKey {
    api_key_name: String,
    api_key_value: Secret,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct FileBasic {
    username: Secret,
    password: Secret,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct FileOAuth {
    authorization_endpoint: String,
    #[serde(default)]
    http_method: Option<String>,
    client_parameters: FileClient,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default, rename = "OAuthHttpParameters")]
    oauth_http_parameters: Option<HttpParameters>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClient {
    #[serde(rename = "ClientID")]
    client_id: Secret,
    #[serde(rename = "ClientSecret")]
    client_secret: Secret,
}

/// The named connections HTTP Tasks may use.
#[derive(Debug, Default)]
pub struct Connections {
    by_name: BTreeMap<String, Arc<Connection>>,
}

impl Connections {
    /// No connections: only unauthenticated calls.
    pub fn empty() -> Connections {
        Connections::default()
    }

    /// Adds (or replaces) a connection.
    pub fn insert(&mut self, connection: Connection) {
        self.by_name
            .insert(connection.name.clone(), Arc::new(connection));
    }

    /// The connection names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Loads a connections file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Connections, ConnectionsError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConnectionsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Connections::from_json(&text, &path.display().to_string())
    }

    /// Parses a connections document; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Connections, ConnectionsError> {
        let invalid = |message: String| ConnectionsError::Invalid {
            path: origin.to_string(),
            message,
        };
        let doc: FileDoc = serde_json::from_str(text).map_err(|e| invalid(safe_message(&e)))?;
        let mut out = Connections::empty();
        for c in doc.connections {
            let _ = c.description;
            if c.name.is_empty() || c.name.contains('/') {
                return Err(invalid(format!(
                    "connection name '{}' must be non-empty and contain no '/'",
                    c.name
                )));
            }
            if out.by_name.contains_key(&c.name) {
                return Err(invalid(format!("connection '{}' appears twice", c.name)));
            }
            let p = c.auth_parameters;
            let need = |what: &str| {
                invalid(format!(
                    "connection '{}': AuthorizationType {} needs AuthParameters.{what}",
                    c.name, c.authorization_type
                ))
            };
            let auth = match c.authorization_type.as_str() {
                "API_KEY" => {
                    let k = p
                        .api_key_auth_parameters
                        .ok_or_else(|| need("ApiKeyAuthParameters"))?;
                    if reqwest::header::HeaderName::from_bytes(k.api_key_name.as_bytes()).is_err() {
                        // Not quoted: a secret pasted into the wrong field
                        // would be printed.
                        return Err(invalid(format!(
                            "connection '{}': ApiKeyName is not a valid header name",
                            c.name
                        )));
                    }
                    Auth::ApiKey {
                        name: k.api_key_name,
                        value: k.api_key_value,
                    }
                }
                "BASIC" => {
                    let b = p
                        .basic_auth_parameters
                        .ok_or_else(|| need("BasicAuthParameters"))?;
                    Auth::Basic {
                        username: b.username,
                        password: b.password,
                    }
                }
                "OAUTH_CLIENT_CREDENTIALS" => {
                    let o = p.oauth_parameters.ok_or_else(|| need("OAuthParameters"))?;
                    let method = o.http_method.unwrap_or_else(|| "POST".to_string());
                    if method != "POST" && method != "GET" {
                        return Err(invalid(format!(
                            "connection '{}': OAuthParameters.HttpMethod must be POST or GET, got '{method}'",
                            c.name
                        )));
                    }
                    let Ok(endpoint) = reqwest::Url::parse(&o.authorization_endpoint) else {
                        return Err(invalid(format!(
                            "connection '{}': OAuthParameters.AuthorizationEndpoint is not a URL",
                            c.name
                        )));
                    };
                    // The client secret goes there: never in clear text
                    // off this machine.
                    if !crate::request::allows_credentials(&endpoint) {
                        return Err(invalid(format!(
                            "connection '{}': OAuthParameters.AuthorizationEndpoint must be an \
                             https:// URL (http:// only to localhost, 127.0.0.0/8 or ::1)",
                            c.name
                        )));
                    }
                    Auth::OAuthClientCredentials(OAuth {
                        token_endpoint: o.authorization_endpoint,
                        method,
                        client_id: o.client_parameters.client_id,
                        client_secret: o.client_parameters.client_secret,
                        scopes: o.scopes,
                        token_parameters: o.oauth_http_parameters.unwrap_or_default(),
                    })
                }
                other => {
                    return Err(invalid(format!(
                        "connection '{}': AuthorizationType must be API_KEY, BASIC or \
                         OAUTH_CLIENT_CREDENTIALS, got '{other}'",
                        c.name
                    )));
                }
            };
            let invocation = p.invocation_http_parameters.unwrap_or_default();
            for h in &invocation.header_parameters {
                if reqwest::header::HeaderName::from_bytes(h.key.as_bytes()).is_err() {
                    return Err(invalid(format!(
                        "connection '{}': header parameter '{}' is not a valid header name",
                        c.name, h.key
                    )));
                }
            }
            out.insert(Connection::new(c.name, auth).with_invocation_parameters(invocation));
        }
        Ok(out)
    }

    /// The connection named by an `Authentication.ConnectionArn`: a plain
    /// name, or an EventBridge connection ARN
    /// (`arn:aws:events:REGION:ACCOUNT:connection/NAME[/UUID]`).
    pub fn lookup(&self, connection_arn: &str) -> Option<&Arc<Connection>> {
        self.by_name.get(connection_name(connection_arn))
    }
}

/// serde_json's message, unless it quotes a value (which may be a secret
/// put in the wrong place, or of the wrong type): then only the position.
fn safe_message(e: &serde_json::Error) -> String {
    let m = e.to_string();
    if m.contains("string \"") || m.contains("invalid type:") || m.contains("invalid value:") {
        format!(
            "a value has the wrong type or form at line {} column {}",
            e.line(),
            e.column()
        )
    } else {
        m
    }
}

/// The connection name in a `ConnectionArn`: `NAME` of
/// `arn:...:connection/NAME/UUID`, else the text itself.
pub fn connection_name(connection_arn: &str) -> &str {
    if connection_arn.starts_with("arn:")
        && let Some((_, rest)) = connection_arn.split_once(":connection/")
    {
        return rest.split('/').next().unwrap_or(rest);
    }
    connection_arn
}

/// How long a token without `expires_in` is reused.
pub(crate) const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// A token is renewed this long before it expires.
pub(crate) const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{"Connections": [
        {"Name": "Stripe", "AuthorizationType": "API_KEY", "Description": "d",
         "AuthParameters": {"ApiKeyAuthParameters": {"ApiKeyName": "x-api-key", "ApiKeyValue": "k-SECRET"},
           "InvocationHttpParameters": {"HeaderParameters": [{"Key": "x-extra", "Value": "e-SECRET", "IsValueSecret": true}]}}},
        {"Name": "Partner", "AuthorizationType": "BASIC",
         "AuthParameters": {"BasicAuthParameters": {"Username": "u", "Password": "p-SECRET"}}},
        {"Name": "Bank", "AuthorizationType": "OAUTH_CLIENT_CREDENTIALS",
         "AuthParameters": {"OAuthParameters": {"AuthorizationEndpoint": "https://auth.example.com/token",
           "ClientParameters": {"ClientID": "id", "ClientSecret": "c-SECRET"}, "Scopes": ["a", "b"]}}}
    ]}"#;

    #[test]
    fn loads_every_kind_and_redacts_debug() {
        let c = Connections::from_json(FILE, "f").unwrap();
        assert_eq!(c.names(), vec!["Bank", "Partner", "Stripe"]);
        let stripe = c.lookup("Stripe").unwrap();
        assert!(
            matches!(&stripe.auth, Auth::ApiKey { name, value } if name == "x-api-key" && value.expose() == "k-SECRET")
        );
        assert_eq!(stripe.invocation.header_parameters[0].key, "x-extra");
        let Auth::OAuthClientCredentials(o) = &c.lookup("Bank").unwrap().auth else {
            panic!("not oauth")
        };
        assert_eq!(o.method, "POST");
        assert_eq!(o.scopes, vec!["a", "b"]);
        let debug = format!("{c:?}");
        assert!(!debug.contains("SECRET"), "{debug}");
        assert!(debug.contains("Stripe"));
    }

    #[test]
    fn arn_and_plain_names() {
        let c = Connections::from_json(FILE, "f").unwrap();
        assert!(
            c.lookup("arn:aws:events:us-east-2:123456789012:connection/Stripe/81210c42-8af1")
                .is_some()
        );
        assert!(
            c.lookup("arn:aws:events:us-east-2:123456789012:connection/Partner")
                .is_some()
        );
        assert!(c.lookup("Partner").is_some());
        assert!(
            c.lookup("arn:aws:events:us-east-2:1:connection/Nope/x")
                .is_none()
        );
        assert_eq!(connection_name("a/b"), "a/b");
    }

    #[test]
    fn rejects_bad_files_without_leaking() {
        let bad = [
            r#"{"Connections": [{"Name": "x", "AuthorizationType": "API_KEY", "AuthParameters": {}}]}"#,
            r#"{"Connections": [{"Name": "x", "AuthorizationType": "DIGEST", "AuthParameters": {}}]}"#,
            r#"{"Connections": [{"Name": "x", "AuthorizationType": "BASIC", "AuthParameters": {"BasicAuthParameters": {"Username": "u", "Password": "p-SECRET", "Typo": 1}}}]}"#,
            r#"{"Connections": [{"Name": "x", "AuthorizationType": "API_KEY", "AuthParameters": {"ApiKeyAuthParameters": {"ApiKeyName": "bad name", "ApiKeyValue": "v-SECRET"}}}]}"#,
            r#"{"Connections": [{"Name": "a/b", "AuthorizationType": "BASIC", "AuthParameters": {"BasicAuthParameters": {"Username": "u", "Password": "p"}}}]}"#,
            r#"{"Connections": [{"Name": "x", "AuthorizationType": "BASIC", "AuthParameters": {"BasicAuthParameters": {"Username": "u", "Password": 5}}}]}"#,
            // A numeric secret, and a secret pasted in as the key's name.
            r#"{"Connections": [{"Name": "x", "AuthorizationType": "BASIC", "AuthParameters": {"BasicAuthParameters": {"Username": "u", "Password": 735129864}}}]}"#,
            r#"{"Connections": [{"Name": "x", "AuthorizationType": "API_KEY", "AuthParameters": {"ApiKeyAuthParameters": {"ApiKeyName": "Authorization: Bearer SECRET", "ApiKeyValue": "v"}}}]}"#,
            r#"{"Connections": [{"Name": "x", "AuthorizationType": "BASIC", "AuthParameters": {"BasicAuthParameters": "u:p-SECRET"}}]}"#,
            // A token endpoint in clear text off this machine.
            r#"{"Connections": [{"Name": "x", "AuthorizationType": "OAUTH_CLIENT_CREDENTIALS", "AuthParameters": {"OAuthParameters": {"AuthorizationEndpoint": "http://auth.example.com/token?k=SECRET", "ClientParameters": {"ClientID": "id", "ClientSecret": "c-SECRET"}}}}]}"#,
            "[1",
        ];
        for text in bad {
            let e = Connections::from_json(text, "conn.json").unwrap_err();
            let m = e.to_string();
            assert!(m.contains("conn.json"), "{m}");
            assert!(!m.contains("SECRET"), "{m}");
            assert!(!m.contains("735129864"), "{m}");
        }
        let dup = r#"{"Connections": [
            {"Name": "x", "AuthorizationType": "BASIC", "AuthParameters": {"BasicAuthParameters": {"Username": "u", "Password": "p"}}},
            {"Name": "x", "AuthorizationType": "BASIC", "AuthParameters": {"BasicAuthParameters": {"Username": "u", "Password": "p"}}}]}"#;
        assert!(
            Connections::from_json(dup, "f")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn oauth_token_endpoints_need_https_or_loopback() {
        let file = |endpoint: &str| {
            format!(
                r#"{{"Connections": [{{"Name": "x", "AuthorizationType": "OAUTH_CLIENT_CREDENTIALS",
                "AuthParameters": {{"OAuthParameters": {{"AuthorizationEndpoint": "{endpoint}",
                "ClientParameters": {{"ClientID": "id", "ClientSecret": "s"}}}}}}}}]}}"#
            )
        };
        for ok in [
            "https://auth.example.com/token",
            "http://127.0.0.1:9/token",
            "http://localhost/token",
            "http://[::1]/token",
        ] {
            Connections::from_json(&file(ok), "f").unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["http://auth.example.com/token", "ftp://127.0.0.1/token"] {
            let e = Connections::from_json(&file(bad), "f").unwrap_err();
            assert!(e.to_string().contains("https://"), "{bad}: {e}");
        }
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let e = Connections::from_file("/nonexistent/conn.json").unwrap_err();
        assert!(matches!(e, ConnectionsError::Read { .. }));
    }
}
