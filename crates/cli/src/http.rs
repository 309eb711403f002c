//! The HTTP Task's options, shared by `sagaflow run` and `sagaflow coordinator`.

use std::path::PathBuf;

use anyhow::Context;

use sagaflow_http::{Connections, HttpConfig, HttpHandler};

/// Options of the HTTP Task handler (`arn:aws:states:::http:invoke`).
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// The HTTP Task's connections file (named credentials referenced by
    /// `Authentication.ConnectionArn`; see docs/asl-support.md). Default:
    /// none, so only unauthenticated calls work.
    #[arg(long, env = "SAGAFLOW_HTTP_CONNECTIONS", value_name = "FILE")]
    pub http_connections: Option<PathBuf>,
    /// Largest HTTP Task response body, in bytes; larger fails the state
    /// with States.DataLimitExceeded.
    #[arg(long, value_name = "BYTES", default_value_t = sagaflow_http::DEFAULT_MAX_RESPONSE_BYTES)]
    pub http_max_response_bytes: usize,
}

impl HttpArgs {
    /// The handler these options describe.
    pub fn handler(&self) -> anyhow::Result<HttpHandler> {
        let connections = match &self.http_connections {
            Some(path) => Connections::from_file(path)?,
            None => Connections::empty(),
        };
        let config = HttpConfig {
            max_response_bytes: self.http_max_response_bytes,
            ..HttpConfig::default()
        };
        HttpHandler::new(config, connections).context("--http-max-response-bytes")
    }
}
