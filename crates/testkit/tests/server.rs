//! The kit against a real nats-server.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::Duration;

use sagaflow_testkit::{NatsServer, ServerOptions, TestkitError};

/// Reads the server's first line, which must be its INFO.
fn info_line(port: u16) -> std::io::Result<String> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

#[test]
fn two_servers_get_different_ports_and_answer_info() {
    let a = NatsServer::start().unwrap();
    let b = NatsServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
    for server in [&a, &b] {
        assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
        let info = info_line(server.port()).unwrap();
        assert!(info.starts_with("INFO {"), "{info}");
        assert!(info.contains("\"jetstream\":true"), "{info}");
        assert!(server.log().contains("Server is ready"));
    }
}

#[test]
fn restart_keeps_port_and_store_dir() {
    let mut server = NatsServer::start().unwrap();
    let port = server.port();
    let store = server.store_dir().to_path_buf();
    // JetStream creates its directory under the store dir.
    assert!(store.join("jetstream").is_dir());
    server.restart().unwrap();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_eq!(server.store_dir(), store);
    assert!(info_line(port).unwrap().starts_with("INFO {"));
    // Both starts are in the log.
    assert_eq!(server.log().matches("Server is ready").count(), 2);
}

#[test]
fn kill_refuses_connections_and_drop_removes_the_directory() {
    let mut server = NatsServer::start().unwrap();
    let port = server.port();
    let dir = server.dir().to_path_buf();
    server.kill().unwrap();
    assert!(!server.is_running());
    let err = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // Killing twice is harmless.
    server.kill().unwrap();
    server.start_again().unwrap();
    assert_eq!(server.port(), port);
    assert!(info_line(port).unwrap().starts_with("INFO {"));
    drop(server);
    assert!(!dir.exists());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn stop_is_graceful() {
    let mut server = NatsServer::start().unwrap();
    let port = server.port();
    server.stop().unwrap();
    assert!(!server.is_running());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(server.log().contains("Server Exiting"), "{}", server.log());
}

#[test]
fn without_jetstream() {
    let server = NatsServer::start_with(ServerOptions {
        jetstream: false,
        ..Default::default()
    })
    .unwrap();
    let info = info_line(server.port()).unwrap();
    assert!(info.starts_with("INFO {"), "{info}");
    assert!(!info.contains("\"jetstream\":true"), "{info}");
}

#[test]
fn config_file_and_store_dir_are_used() {
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::start_with(ServerOptions {
        jetstream: true,
        config_file: Some("max_payload: 2048\n".into()),
        store_dir: Some(store.path().join("custom")),
    })
    .unwrap();
    assert_eq!(server.store_dir(), store.path().join("custom"));
    assert!(store.path().join("custom").join("jetstream").is_dir());
    let info = info_line(server.port()).unwrap();
    assert!(info.contains("\"max_payload\":2048"), "{info}");
    drop(server);
    // A store dir given by the caller is the caller's: it stays.
    assert!(store.path().join("custom").is_dir());
}

#[test]
fn bad_config_is_an_error_with_the_log() {
    let err = NatsServer::start_with(ServerOptions {
        config_file: Some("this is { not a config".into()),
        ..Default::default()
    })
    .unwrap_err();
    match &err {
        TestkitError::Start {
            reason, log_tail, ..
        } => {
            assert!(reason.contains("exited"), "{reason}");
            assert!(!log_tail.trim().is_empty(), "{err}");
        }
        other => panic!("unexpected error: {other}"),
    }
}
