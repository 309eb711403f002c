//! Connecting: credentials, TLS, and the server checks every Sagaflow
//! process makes (version 2.11 or newer, JetStream enabled).
//!
//! [`ConnectOptions`] holds how to authenticate (one of: a user and
//! password, a token, an nkey seed or seed file, a `.creds` file) and how to
//! secure the connection (TLS CA, client certificate, TLS required), and
//! [`connect_with`] connects with them. Credentials written in the URL
//! (`nats://user:password@host:4222`, `nats://token@host:4222`) are taken out
//! of it and used as options: async-nats itself ignores them.
//!
//! ```no_run
//! # async fn f() -> Result<(), sagaflow_nats::ConnectError> {
//! use sagaflow_nats::{ConnectOptions, connect_with};
//!
//! let options = ConnectOptions::new()
//!     .nkey_file("/etc/sagaflow/participant.nk")
//!     .tls_ca_file("/etc/sagaflow/ca.pem");
//! let client = connect_with("tls://nats.internal:4222", &options).await?;
//! # drop(client);
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use crate::{INSTALL_HINT, check_server_version};

/// The connection name servers show (`connz`) when none is given.
pub const DEFAULT_NAME: &str = "sagaflow";

/// How to connect: credentials, TLS and the connection's name.
///
/// At most one way to authenticate may be set (user and password, token,
/// nkey seed, nkey seed file, credentials file); [`connect_with`] refuses
/// more than one rather than guess. Setting a TLS CA file or a client
/// certificate makes TLS required: the connection never falls back to
/// plain text.
///
/// `Debug` prints secrets (password, token, seed) as `"***"`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// The connection's name, shown by the server's monitoring (default
    /// [`DEFAULT_NAME`]).
    pub name: Option<String>,
    /// The user, for user and password authentication.
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<String>,
    /// A token (the server's `authorization { token: ... }`).
    pub token: Option<String>,
    /// An nkey user seed (`SU...`).
    pub nkey_seed: Option<String>,
    /// A file holding an nkey user seed (as written by `nk -gen user` or
    /// `nsc`): its first line that is not empty nor a comment.
    pub nkey_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and nkey seed, decentralised
    /// authentication with an operator, as written by `nsc`).
    pub creds_file: Option<PathBuf>,
    /// PEM file of the certificate authorities to trust for the server's
    /// certificate (default: the system's).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate, for servers that verify clients
    /// (`tls { verify: true }`); needs [`ConnectOptions::tls_key_file`].
    pub tls_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to connect without TLS.
    pub require_tls: bool,
    /// The prefix of this connection's reply subjects (default `_INBOX`).
    /// With a prefix of its own per user, a user's permission to subscribe
    /// to replies (`PREFIX.>`) does not let it read other users' replies.
    pub inbox_prefix: Option<String>,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("ConnectOptions")
            .field("name", &self.name)
            .field("user", &self.user)
            .field("password", &secret(&self.password))
            .field("token", &secret(&self.token))
            .field("nkey_seed", &secret(&self.nkey_seed))
            .field("nkey_file", &self.nkey_file)
            .field("creds_file", &self.creds_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("require_tls", &self.require_tls)
            .field("inbox_prefix", &self.inbox_prefix)
            .finish()
    }
}

impl ConnectOptions {
    /// No credentials, no TLS requirement, the default name.
    pub fn new() -> ConnectOptions {
        ConnectOptions::default()
    }

    /// Sets the connection's name.
    pub fn name(mut self, name: impl Into<String>) -> ConnectOptions {
        self.name = Some(name.into());
        self
    }

    /// Authenticates with a user and password.
    pub fn user_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> ConnectOptions {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Authenticates with a token.
    pub fn token(mut self, token: impl Into<String>) -> ConnectOptions {
        self.token = Some(token.into());
        self
    }

    /// Authenticates with an nkey user seed (`SU...`).
    pub fn nkey_seed(mut self, seed: impl Into<String>) -> ConnectOptions {
        self.nkey_seed = Some(seed.into());
        self
    }

    /// Authenticates with the nkey user seed in a file.
    pub fn nkey_file(mut self, path: impl Into<PathBuf>) -> ConnectOptions {
        self.nkey_file = Some(path.into());
        self
    }

    /// Authenticates with a `.creds` file (JWT and seed).
    pub fn creds_file(mut self, path: impl Into<PathBuf>) -> ConnectOptions {
        self.creds_file = Some(path.into());
        self
    }

    /// Trusts these certificate authorities (PEM) for the server's
    /// certificate; makes TLS required.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> ConnectOptions {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate and key (PEM); makes TLS required.
    pub fn tls_client_cert(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> ConnectOptions {
        self.tls_cert_file = Some(cert.into());
        self.tls_key_file = Some(key.into());
        self
    }

    /// Refuses (true) or allows (false) a connection without TLS.
    pub fn require_tls(mut self, required: bool) -> ConnectOptions {
        self.require_tls = required;
        self
    }

    /// Uses `prefix` instead of `_INBOX` for reply subjects.
    pub fn inbox_prefix(mut self, prefix: impl Into<String>) -> ConnectOptions {
        self.inbox_prefix = Some(prefix.into());
        self
    }

    /// Whether any way to authenticate is set.
    pub fn has_credentials(&self) -> bool {
        !self.methods().is_empty()
    }

    /// Whether TLS is required, explicitly or by a TLS file.
    pub fn tls_required(&self) -> bool {
        self.require_tls
            || self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || self.tls_key_file.is_some()
    }

    /// The ways to authenticate that are set, named for error messages.
    fn methods(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        if self.user.is_some() || self.password.is_some() {
            set.push("a user and password");
        }
        if self.token.is_some() {
            set.push("a token");
        }
        if self.nkey_seed.is_some() {
            set.push("an nkey seed");
        }
        if self.nkey_file.is_some() {
            set.push("an nkey seed file");
        }
        if self.creds_file.is_some() {
            set.push("a credentials file");
        }
        set
    }

    /// Resolves these options for `url`: takes credentials out of the URL,
    /// reads and checks the credential and TLS files, and builds the
    /// async-nats options. [`connect_with`] is `connect_resolved(options.resolve(url)?)`;
    /// call the two yourself to adjust the async-nats options in between
    /// (event callback, reconnect policy, ...).
    pub fn resolve(&self, url: &str) -> Result<Resolved, ConnectError> {
        let (clean_url, from_url) = split_url_credentials(url)?;
        let mut options = self.clone();
        match from_url {
            None => {}
            Some(found) => {
                if let Some(first) = options.methods().first() {
                    return Err(ConnectError::ConflictingCredentials {
                        first: "credentials in the URL",
                        second: first,
                    });
                }
                match found {
                    UrlCredential::UserPassword(user, password) => {
                        options.user = Some(user);
                        options.password = Some(password);
                    }
                    UrlCredential::Token(token) => options.token = Some(token),
                }
            }
        }
        let methods = options.methods();
        if let [first, second, ..] = methods.as_slice() {
            return Err(ConnectError::ConflictingCredentials { first, second });
        }
        let mut client = async_nats::ConnectOptions::new()
            .name(options.name.as_deref().unwrap_or(DEFAULT_NAME))
            .event_callback(|event| async move { log_event(&event) });
        if let Some(prefix) = &options.inbox_prefix {
            client = client.custom_inbox_prefix(prefix);
        }
        let credential = if options.user.is_some() || options.password.is_some() {
            let (Some(user), Some(password)) = (&options.user, &options.password) else {
                return Err(ConnectError::IncompleteOptions {
                    reason: if options.user.is_some() {
                        "a user is set without a password"
                    } else {
                        "a password is set without a user"
                    },
                });
            };
            client = client.user_and_password(user.clone(), password.clone());
            Some(format!("user '{user}' with its password"))
        } else if let Some(token) = &options.token {
            client = client.token(token.clone());
            Some("the token".to_string())
        } else if let Some(seed) = &options.nkey_seed {
            let public = check_seed(seed, "the nkey seed")?;
            client = client.nkey(seed.trim().to_string());
            Some(format!("nkey {public}"))
        } else if let Some(path) = &options.nkey_file {
            let text = read_file("nkey seed file", path)?;
            let what = format!("the nkey seed file {}", path.display());
            let seed = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("//"))
                .ok_or_else(|| ConnectError::InvalidCredentials {
                    what: what.clone(),
                    reason: "it holds no seed".into(),
                })?;
            let public = check_seed(seed, &what)?;
            client = client.nkey(seed.to_string());
            Some(format!("nkey {public} (from {})", path.display()))
        } else if let Some(path) = &options.creds_file {
            let text = read_file("credentials file", path)?;
            client = client
                .credentials(&text)
                .map_err(|e| ConnectError::InvalidCredentials {
                    what: format!("the credentials file {}", path.display()),
                    reason: e.to_string(),
                })?;
            Some(format!("the credentials file {}", path.display()))
        } else {
            None
        };
        if let Some(ca) = &options.tls_ca_file {
            check_readable("TLS CA file", ca)?;
            client = client.add_root_certificates(ca.clone());
        }
        match (&options.tls_cert_file, &options.tls_key_file) {
            (Some(cert), Some(key)) => {
                check_readable("TLS client certificate", cert)?;
                check_readable("TLS client key", key)?;
                client = client.add_client_certificate(cert.clone(), key.clone());
            }
            (Some(_), None) => {
                return Err(ConnectError::IncompleteOptions {
                    reason: "a TLS client certificate is set without its key",
                });
            }
            (None, Some(_)) => {
                return Err(ConnectError::IncompleteOptions {
                    reason: "a TLS client key is set without its certificate",
                });
            }
            (None, None) => {}
        }
        if options.tls_required() {
            client = client.require_tls(true);
        }
        Ok(Resolved {
            url: clean_url,
            options: client,
            credential,
            tls: options.tls_required(),
        })
    }
}

/// What a connection event means for an operator, and how loud it is: the
/// server refusing something (a subscription without permission: the
/// subscriber then gets nothing), messages dropped for a subscriber too
/// slow, a lost connection are warnings; the client's own events are not
/// otherwise shown.
fn event_log(event: &async_nats::Event) -> (tracing::Level, String) {
    use async_nats::Event;
    match event {
        Event::Connected => (tracing::Level::INFO, "connected to NATS".into()),
        Event::Disconnected => (
            tracing::Level::WARN,
            "disconnected from NATS; reconnecting".into(),
        ),
        Event::LameDuckMode => (
            tracing::Level::WARN,
            "the NATS server is shutting down (lame duck mode); the client will move to another"
                .into(),
        ),
        Event::Draining => (tracing::Level::DEBUG, "draining the NATS connection".into()),
        Event::Closed => (tracing::Level::INFO, "the NATS connection is closed".into()),
        Event::SlowConsumer(sid) => (
            tracing::Level::WARN,
            format!(
                "NATS messages dropped: subscription {sid} did not keep up (its buffer is full)"
            ),
        ),
        Event::ServerError(e) => (
            tracing::Level::WARN,
            format!("the NATS server refused: {e}"),
        ),
        // Each failed reconnection attempt: the disconnection said it.
        Event::ClientError(e) => (tracing::Level::DEBUG, format!("NATS client error: {e}")),
    }
}

fn log_event(event: &async_nats::Event) {
    let (level, message) = event_log(event);
    match level {
        tracing::Level::WARN => tracing::warn!("{message}"),
        tracing::Level::INFO => tracing::info!("{message}"),
        _ => tracing::debug!("{message}"),
    }
}

/// [`ConnectOptions`] resolved for one URL, ready for [`connect_resolved`].
pub struct Resolved {
    /// The URL without credentials (safe to print).
    pub url: String,
    /// The async-nats options.
    pub options: async_nats::ConnectOptions,
    /// The credential presented, described for error messages (`None`:
    /// none).
    pub credential: Option<String>,
    /// Whether TLS is required.
    pub tls: bool,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved")
            .field("url", &self.url)
            .field("credential", &self.credential)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server could not be reached (or failed otherwise).
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL (without credentials).
        url: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The server refused the credentials (or their absence).
    #[error("the NATS server at {url} refused {credential}: {source}")]
    Refused {
        /// The URL (without credentials).
        url: String,
        /// What was presented: `user 'coordinator' with its password`,
        /// `nkey UA...`, `a connection without credentials (...)`.
        credential: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The TLS handshake or set-up failed.
    #[error(
        "TLS with the NATS server at {url} failed: {source} (check the server's certificate, \
         the CA file (--tls-ca) and, if the server verifies clients, the client certificate \
         and key (--tls-cert, --tls-key))"
    )]
    Tls {
        /// The URL (without credentials).
        url: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The URL could not be read.
    #[error("invalid NATS URL: {reason}")]
    InvalidUrl {
        /// Why (never shows a password).
        reason: String,
    },
    /// More than one way to authenticate was given.
    #[error("conflicting NATS credentials: {first} and {second} are both given; use one")]
    ConflictingCredentials {
        /// One way.
        first: &'static str,
        /// Another.
        second: &'static str,
    },
    /// An option needs another that is missing.
    #[error("incomplete NATS options: {reason}")]
    IncompleteOptions {
        /// What is missing.
        reason: &'static str,
    },
    /// A credential or certificate file could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    ReadFile {
        /// Which file (`credentials file`, `TLS CA file`, ...).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A credential is malformed.
    #[error("{what} is not valid: {reason}")]
    InvalidCredentials {
        /// Which credential (never its secret).
        what: String,
        /// Why.
        reason: String,
    },
    /// The server is too old.
    #[error("the NATS server at {url} is version {version}; Sagaflow needs 2.11 or newer: {hint}")]
    ServerTooOld {
        /// The URL.
        url: String,
        /// The server's version.
        version: String,
        /// How to install a newer one.
        hint: &'static str,
    },
    /// The server does not have JetStream enabled.
    #[error(
        "the NATS server at {url} runs without JetStream; start it with -js (or `jetstream {{}}` \
         in its config)"
    )]
    NoJetStream {
        /// The URL.
        url: String,
    },
}

/// Connects to NATS and checks the server's version and JetStream, with
/// no credentials besides those in the URL.
pub async fn connect(url: &str) -> Result<async_nats::Client, ConnectError> {
    connect_with(url, &ConnectOptions::default()).await
}

/// Connects to NATS with these options (credentials, TLS, name) and checks
/// the server's version and JetStream.
pub async fn connect_with(
    url: &str,
    options: &ConnectOptions,
) -> Result<async_nats::Client, ConnectError> {
    connect_resolved(options.resolve(url)?).await
}

/// Connects with resolved options ([`ConnectOptions::resolve`]) and checks
/// the server's version and JetStream.
pub async fn connect_resolved(resolved: Resolved) -> Result<async_nats::Client, ConnectError> {
    let Resolved {
        url,
        options,
        credential,
        tls,
    } = resolved;
    // A comma-separated list is a list of servers (the client tries them
    // in turn); handed over whole it would be read as one URL.
    let servers: Vec<&str> = url.split(',').map(str::trim).collect();
    let client = match options.connect(servers).await {
        Ok(client) => client,
        Err(source) => {
            return Err(match source.kind() {
                async_nats::ConnectErrorKind::AuthorizationViolation
                | async_nats::ConnectErrorKind::Authentication => ConnectError::Refused {
                    url,
                    credential: credential.unwrap_or_else(|| {
                        "a connection without credentials (it needs a user and password, a \
                         token, an nkey or a credentials file)"
                            .into()
                    }),
                    source,
                },
                async_nats::ConnectErrorKind::Tls => ConnectError::Tls { url, source },
                // A failed handshake (unknown issuer, bad certificate)
                // surfaces as an I/O error carrying a rustls error.
                _ if is_tls_failure(&source, tls) => ConnectError::Tls { url, source },
                _ => ConnectError::Connect { url, source },
            });
        }
    };
    let info = client.server_info();
    // No version yet: connected with `retry_on_initial_connect` to a server
    // not reached yet. `setup`, which cannot do without the server, checks
    // it then. A server that answered without saying its version is
    // refused.
    let connected = client.connection_state() == async_nats::connection::State::Connected;
    if info.version.is_empty() && !connected {
        return Ok(client);
    }
    if let Err(version) = check_server_version(&info.version) {
        let version = if version.is_empty() {
            crate::UNKNOWN_VERSION.to_string()
        } else {
            version
        };
        return Err(ConnectError::ServerTooOld {
            url,
            version,
            hint: INSTALL_HINT,
        });
    }
    if !info.jetstream {
        return Err(ConnectError::NoJetStream { url });
    }
    Ok(client)
}

/// Whether a connection error comes from TLS: a rustls error somewhere in
/// its chain, or (when TLS was required) a message naming TLS.
fn is_tls_failure(error: &async_nats::ConnectError, tls_required: bool) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if e.is::<async_nats::rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<async_nats::rustls::Error>())
        {
            return true;
        }
        current = e.source();
    }
    tls_required && error.to_string().to_lowercase().contains("tls")
}

/// Credentials found in a URL.
#[derive(Debug, PartialEq, Eq)]
enum UrlCredential {
    UserPassword(String, String),
    Token(String),
}

/// Splits `nats://user:pass@host:4222` (or a comma-separated list of such)
/// into the URL without credentials and the credentials, percent-decoded.
/// Every URL of a list that carries credentials must carry the same ones.
fn split_url_credentials(url: &str) -> Result<(String, Option<UrlCredential>), ConnectError> {
    let mut clean = Vec::new();
    let mut found: Option<UrlCredential> = None;
    let parts: Vec<&str> = url.split(',').map(str::trim).collect();
    for (index, &part) in parts.iter().enumerate() {
        let (scheme, rest) = match part.find("://") {
            Some(i) => (&part[..i + 3], &part[i + 3..]),
            None => ("", part),
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let Some(at) = authority.rfind('@') else {
            // An '@' past a '/', '?' or '#', or something else than a port
            // after a ':': a user or password with one of the characters
            // that end it ('/', '?', '#', ','), not percent-encoded. Say
            // so, without repeating it.
            if rest.contains('@') || !port_is_plausible(authority) || cut_at_comma(&parts, index) {
                return Err(ConnectError::InvalidUrl {
                    reason: format!(
                        "server {}: its user or password (if it has one) holds a character that must be percent-encoded: '/' as %2F, '?' as %3F, '#' as %23, ',' as %2C",
                        index + 1
                    ),
                });
            }
            clean.push(part.to_string());
            continue;
        };
        let (userinfo, host) = (&authority[..at], &authority[at + 1..]);
        let bad = |reason: &str| ConnectError::InvalidUrl {
            reason: format!("server {} ({scheme}...@{host}): {reason}", index + 1),
        };
        let credential = match userinfo.split_once(':') {
            Some((user, password)) => {
                let user = percent_decode(user).ok_or_else(|| bad("bad %-escape in the user"))?;
                let password =
                    percent_decode(password).ok_or_else(|| bad("bad %-escape in the password"))?;
                if user.is_empty() {
                    return Err(bad("empty user before ':'"));
                }
                UrlCredential::UserPassword(user, password)
            }
            None => {
                let token =
                    percent_decode(userinfo).ok_or_else(|| bad("bad %-escape in the token"))?;
                if token.is_empty() {
                    return Err(bad("empty token before '@'"));
                }
                UrlCredential::Token(token)
            }
        };
        match &found {
            Some(previous) if *previous != credential => {
                return Err(bad(
                    "the servers of the list carry different credentials; pass them as options",
                ));
            }
            _ => found = Some(credential),
        }
        clean.push(format!("{scheme}{host}{tail}"));
    }
    Ok((clean.join(","), found))
}

/// The URL (or comma-separated list) with any user, password or token
/// replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let parts: Vec<&str> = url.split(',').map(str::trim).collect();
    parts
        .iter()
        .enumerate()
        .map(|(index, &part)| {
            let (scheme, rest) = match part.find("://") {
                Some(i) => part.split_at(i + 3),
                None => ("", part),
            };
            // The last '@' anywhere ends the credentials, even past a '/'
            // (a password holding one, not percent-encoded); without one, a
            // ':' followed by something else than a port may be a password
            // cut at a ','.
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest.rfind('@') {
                Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
                None if !port_is_plausible(&rest[..end]) || cut_at_comma(&parts, index) => {
                    format!("{scheme}***")
                }
                None => part.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether server `index` of a list may be the start of a user, password
/// or token cut at a ',' (not percent-encoded): it has no '@', and the next
/// one has credentials but no scheme (`nats://tok,en@h` splits into
/// `nats://tok` and `en@h`). A list that really mixes a server with a
/// scheme and one with credentials but without a scheme is refused too: it
/// can write the scheme.
fn cut_at_comma(parts: &[&str], index: usize) -> bool {
    !parts[index].contains('@')
        && parts
            .get(index + 1)
            .is_some_and(|next| next.contains('@') && !next.contains("://"))
}

/// Whether what follows the last ':' of a host (after the ']' of an IPv6
/// address) is a port, or there is no ':'.
fn port_is_plausible(host: &str) -> bool {
    let after_address = host.rfind(']').map_or(host, |i| &host[i + 1..]);
    after_address
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
}

/// Decodes `%XX` escapes; `None` on a bad escape or invalid UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Checks an nkey user seed; returns its public key.
fn check_seed(seed: &str, what: &str) -> Result<String, ConnectError> {
    let seed = seed.trim();
    if !seed.starts_with("SU") {
        return Err(ConnectError::InvalidCredentials {
            what: what.to_string(),
            reason: "an nkey user seed starts with 'SU'".into(),
        });
    }
    nkeys::KeyPair::from_seed(seed)
        .map(|pair| pair.public_key())
        .map_err(|e| ConnectError::InvalidCredentials {
            what: what.to_string(),
            reason: e.to_string(),
        })
}

fn read_file(what: &'static str, path: &Path) -> Result<String, ConnectError> {
    std::fs::read_to_string(path).map_err(|source| ConnectError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn check_readable(what: &'static str, path: &Path) -> Result<(), ConnectError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|source| ConnectError::ReadFile {
            what,
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod event_tests {
    use super::*;

    #[test]
    fn refusals_and_dropped_messages_are_warnings() {
        let refused = async_nats::Event::ServerError(async_nats::ServerError::Other(
            "Permissions Violation for Subscription to \"orders.created\"".into(),
        ));
        let (level, message) = event_log(&refused);
        assert_eq!(level, tracing::Level::WARN);
        assert!(message.contains("Permissions Violation"), "{message}");
        let (level, message) = event_log(&async_nats::Event::SlowConsumer(7));
        assert_eq!(level, tracing::Level::WARN);
        assert!(message.contains("subscription 7"), "{message}");
        assert_eq!(
            event_log(&async_nats::Event::Disconnected).0,
            tracing::Level::WARN
        );
        assert_eq!(
            event_log(&async_nats::Event::Connected).0,
            tracing::Level::INFO
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(u: &str, p: &str) -> Option<UrlCredential> {
        Some(UrlCredential::UserPassword(u.into(), p.into()))
    }

    #[test]
    fn url_credentials_are_taken_out() {
        let cases = [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222", None),
            ("127.0.0.1:4222", "127.0.0.1:4222", None),
            (
                "nats://alice:s3cret@127.0.0.1:4222",
                "nats://127.0.0.1:4222",
                user("alice", "s3cret"),
            ),
            (
                "tls://tok3n@nats.internal",
                "tls://nats.internal",
                Some(UrlCredential::Token("tok3n".into())),
            ),
            (
                "nats://a%40b:p%3Aw%2F@h:1/x",
                "nats://h:1/x",
                user("a@b", "p:w/"),
            ),
            // '@' in the password without escaping: the last '@' ends it.
            ("nats://u:p@ss@h:1", "nats://h:1", user("u", "p@ss")),
            ("nats://u:@h:1", "nats://h:1", user("u", "")),
            (
                "nats://u:p@a:1, nats://b:2,nats://u:p@c:3",
                "nats://a:1,nats://b:2,nats://c:3",
                user("u", "p"),
            ),
        ];
        for (url, clean, credential) in cases {
            let (got, found) = split_url_credentials(url).unwrap();
            assert_eq!(got, clean, "{url}");
            assert_eq!(found, credential, "{url}");
        }
        for bad in [
            "nats://u:p@a:1,nats://v:q@b:2",
            "nats://:p@h:1",
            "nats://@h:1",
            "nats://u:%zz@h:1",
            "nats://u:%4@h:1",
        ] {
            let e = split_url_credentials(bad).unwrap_err();
            assert!(matches!(e, ConnectError::InvalidUrl { .. }), "{bad}: {e}");
            // The message names the host, never the password.
            let password = bad.split_once(':').unwrap().1.trim_start_matches("//");
            let password = password.split_once(':').map_or("", |(_, p)| p);
            let password = password.split('@').next().unwrap_or("");
            assert!(
                password.len() < 2 || !e.to_string().contains(password),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("nats://h:1"), "nats://h:1");
        assert_eq!(redact_url("nats://u:pw@h:1/x"), "nats://***@h:1/x");
        assert_eq!(redact_url("tok@a:1, nats://b:2"), "***@a:1,nats://b:2");
        assert_eq!(redact_url("nats://[::1]:4222"), "nats://[::1]:4222");
        // Passwords holding a character that ends them, not encoded.
        assert_eq!(redact_url("nats://u:p/ss@h:1"), "nats://***@h:1");
        assert_eq!(redact_url("nats://u:p?s#s@h:1"), "nats://***@h:1");
        assert_eq!(redact_url("nats://u:p,ss@h:1"), "nats://***,***@h:1");
        assert_eq!(redact_url("nats://tok,en@h:1"), "nats://***,***@h:1");
        assert_eq!(redact_url("nats://u:2024,s3@h:1"), "nats://***,***@h:1");
    }

    #[test]
    fn passwords_with_characters_to_encode_are_refused_without_being_shown() {
        for url in [
            "nats://u:x/s3cr@h:1",
            "nats://u:x?s3cr@h:1",
            "nats://u:x#s3cr@h:1",
            "nats://u:x,s3cr@h:1",
            // Cut at the ',' where what comes before looks like a host.
            "nats://s3cr,en@h:1",
            "nats://u:2024,s3cr@h:1",
            "nats://u:,s3cr@h:1",
        ] {
            let e = split_url_credentials(url).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("percent-encoded"), "{url}: {text}");
            assert!(!text.contains("s3cr"), "{url}: {text}");
        }
        // Encoded, they are fine; plain hosts, IPv6 addresses too.
        assert!(split_url_credentials("nats://u:p%2Fss@h:1").is_ok());
        assert!(split_url_credentials("nats://[::1]:4222,nats://h").is_ok());
        assert!(split_url_credentials("tls://h:4222/").is_ok());
    }

    #[test]
    fn url_credentials_become_options() {
        let resolved = ConnectOptions::new()
            .resolve("nats://coordinator:pw@127.0.0.1:4222")
            .unwrap();
        assert_eq!(resolved.url, "nats://127.0.0.1:4222");
        assert_eq!(
            resolved.credential.as_deref(),
            Some("user 'coordinator' with its password")
        );
        let resolved = ConnectOptions::new()
            .resolve("nats://t0k@127.0.0.1:4222")
            .unwrap();
        assert_eq!(resolved.credential.as_deref(), Some("the token"));
        // Credentials in both places are refused rather than merged.
        let e = ConnectOptions::new()
            .token("x")
            .resolve("nats://u:p@127.0.0.1:4222")
            .unwrap_err();
        assert!(
            matches!(e, ConnectError::ConflictingCredentials { .. }),
            "{e}"
        );
    }

    #[test]
    fn one_way_to_authenticate() {
        let e = ConnectOptions::new()
            .token("t")
            .nkey_seed("SU")
            .resolve("nats://h:1")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "conflicting NATS credentials: a token and an nkey seed are both given; use one"
        );
        let mut half = ConnectOptions::new();
        half.user = Some("u".into());
        let e = half.resolve("nats://h:1").unwrap_err();
        assert!(e.to_string().contains("without a password"), "{e}");
        let mut half = ConnectOptions::new();
        half.tls_cert_file = Some("c.pem".into());
        let e = half.resolve("nats://h:1").unwrap_err();
        assert!(e.to_string().contains("without its key"), "{e}");
    }

    #[test]
    fn nkey_seeds_are_checked() {
        let pair = nkeys::KeyPair::new_user();
        let seed = pair.seed().unwrap();
        let resolved = ConnectOptions::new()
            .nkey_seed(&seed)
            .resolve("nats://h:1")
            .unwrap();
        assert_eq!(
            resolved.credential,
            Some(format!("nkey {}", pair.public_key()))
        );
        for bad in ["", "SUAAAA", "UABCDEF", &seed[..seed.len() - 1]] {
            let e = ConnectOptions::new()
                .nkey_seed(bad)
                .resolve("nats://h:1")
                .unwrap_err();
            assert!(
                matches!(e, ConnectError::InvalidCredentials { .. }),
                "{bad}: {e}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("user.nk");
        std::fs::write(&file, format!("# participant\n\n{seed}\n")).unwrap();
        let resolved = ConnectOptions::new()
            .nkey_file(&file)
            .resolve("nats://h:1")
            .unwrap();
        assert!(
            resolved
                .credential
                .unwrap()
                .starts_with(&format!("nkey {} (from ", pair.public_key()))
        );
        let e = ConnectOptions::new()
            .nkey_file(dir.path().join("missing.nk"))
            .resolve("nats://h:1")
            .unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read the nkey seed file "),
            "{e}"
        );
    }

    #[test]
    fn creds_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.creds");
        std::fs::write(&file, "not a creds file").unwrap();
        let e = ConnectOptions::new()
            .creds_file(&file)
            .resolve("nats://h:1")
            .unwrap_err();
        assert!(
            matches!(&e, ConnectError::InvalidCredentials { what, .. } if what.contains("bad.creds")),
            "{e}"
        );
        let e = ConnectOptions::new()
            .tls_ca_file(dir.path().join("none.pem"))
            .resolve("nats://h:1")
            .unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read the TLS CA file"),
            "{e}"
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let options = ConnectOptions::new()
            .user_password("alice", "hunter2")
            .token("tok-42")
            .nkey_seed("SUSECRET");
        let text = format!("{options:?}");
        assert!(text.contains("alice"), "{text}");
        for secret in ["hunter2", "tok-42", "SUSECRET"] {
            assert!(!text.contains(secret), "{text}");
        }
    }
}
