//! Helpers shared by the HTTP Task tests: task contexts, connections with
//! recognisable secrets, a log capture, and raw loopback servers for what
//! wiremock cannot do (endless bodies).

#![allow(dead_code)]

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sagaflow_http::Connections;
use sagaflow_participant::{TaskContext, heartbeat_channel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Secrets used in the tests: none may ever show up in a result, an error,
/// a history or a log line.
pub const API_KEY: &str = "apikey-SECRET-7f3a";
pub const PASSWORD: &str = "password-SECRET-91bc";
pub const CLIENT_SECRET: &str = "client-SECRET-c0de";
pub const ACCESS_TOKEN: &str = "token-SECRET-5eed";
pub const EXTRA_HEADER: &str = "extra-SECRET-beef";

/// Every secret above.
pub const SECRETS: &[&str] = &[API_KEY, PASSWORD, CLIENT_SECRET, ACCESS_TOKEN, EXTRA_HEADER];

/// Asserts no secret appears in `text`.
pub fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} leaks {s}: {text}");
    }
    assert!(!text.contains("SECRET"), "{what} leaks a secret: {text}");
}

/// A context for task `task_id` of execution `exec`.
pub fn ctx(task_id: &str) -> TaskContext {
    let (tx, _rx) = heartbeat_channel();
    let mut c = TaskContext::new(task_id, tx);
    c.execution_id = "arn:aws:states:us-east-1:123456789012:execution:M:e1".into();
    c.execution_name = "e1".into();
    c.state_name = "Call".into();
    c.resource = "arn:aws:states:::http:invoke".into();
    c
}

/// Connections `Keyed` (API key), `Partner` (basic) and `Bank` (OAuth,
/// token endpoint `token_url`).
pub fn connections(token_url: &str) -> Connections {
    let text = format!(
        r#"{{"Connections": [
        {{"Name": "Keyed", "AuthorizationType": "API_KEY",
          "AuthParameters": {{"ApiKeyAuthParameters": {{"ApiKeyName": "x-api-key", "ApiKeyValue": "{API_KEY}"}},
            "InvocationHttpParameters": {{"HeaderParameters": [{{"Key": "x-extra", "Value": "{EXTRA_HEADER}"}}]}}}}}},
        {{"Name": "Partner", "AuthorizationType": "BASIC",
          "AuthParameters": {{"BasicAuthParameters": {{"Username": "saga", "Password": "{PASSWORD}"}}}}}},
        {{"Name": "Bank", "AuthorizationType": "OAUTH_CLIENT_CREDENTIALS",
          "AuthParameters": {{"OAuthParameters": {{"AuthorizationEndpoint": "{token_url}", "HttpMethod": "POST",
            "ClientParameters": {{"ClientID": "client-1", "ClientSecret": "{CLIENT_SECRET}"}},
            "Scopes": ["payments:write", "payments:read"]}}}}}}
    ]}}"#
    );
    Connections::from_json(&text, "test").expect("connections")
}

/// A writer collecting everything logged, for checking what the logs say.
#[derive(Clone, Default)]
pub struct LogCapture(pub Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> LogCapture {
        self.clone()
    }
}

/// A subscriber logging everything (TRACE, every crate) into `capture`.
pub fn capturing_subscriber(capture: &LogCapture) -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_ansi(false)
        .finish()
}

/// A server answering every request with an endless chunked JSON body;
/// returns its base URL and the number of body bytes it managed to send.
pub async fn endless_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&sent);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b' '; 64 * 1024];
                let framed = [
                    format!("{:x}\r\n", chunk.len()).into_bytes(),
                    chunk,
                    b"\r\n".to_vec(),
                ]
                .concat();
                while socket.write_all(&framed).await.is_ok() {
                    counter.fetch_add(64 * 1024, Ordering::SeqCst);
                }
            });
        }
    });
    (url, sent)
}

/// A loopback URL where nothing listens.
pub async fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/pay")
}
