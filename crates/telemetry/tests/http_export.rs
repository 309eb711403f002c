//! OTLP over HTTP (`http/protobuf`) reaches a receiver: a minimal HTTP
//! server records the requests' paths.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sagaflow_telemetry::{Config, Protocol};

/// `METHOD PATH` and body size of each request received.
type Requests = Arc<Mutex<Vec<(String, usize)>>>;

/// Accepts connections forever, answers every request with 200, records
/// `METHOD PATH` and the body's size.
fn receiver() -> (String, Requests) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen: Requests = Arc::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let record = record.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let head: Vec<&str> = request_line.split_whitespace().take(2).collect();
                    record.lock().unwrap().push((head.join(" "), length));
                    let _ = reader
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    (url, seen)
}

#[test]
fn spans_and_metrics_are_posted_over_http() {
    let (url, seen) = receiver();
    let mut config = Config::from_lookup("http-test", |_| None).expect("config");
    config.endpoint = Some(url);
    config.protocol = Protocol::HttpProtobuf;
    config.export_timeout = Duration::from_secs(5);
    let guard = sagaflow_telemetry::init_with(config).expect("telemetry");
    tracing::info_span!("some work").in_scope(|| tracing::info!("inside"));
    sagaflow_telemetry::metrics::metrics()
        .executions_started
        .add(1, &[]);
    assert!(guard.flush(), "the receiver accepted the export");
    drop(guard);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|(r, n)| r == "POST /v1/traces" && *n > 0),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|(r, n)| r == "POST /v1/metrics" && *n > 0),
        "{seen:?}"
    );
}
