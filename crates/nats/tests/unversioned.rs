//! A peer that speaks the NATS protocol but does not say its version (a
//! proxy, or a server that is not nats-server) is refused at connect time:
//! Sagaflow cannot tell whether it has the JetStream features it needs.
//! (Not a stand-in broker for other tests: the peer only greets, answers
//! pings and is refused.)

use std::time::Duration;

use sagaflow_nats::{ConnectError, connect};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_say_its_version_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (read, mut write) = socket.into_split();
        write
            .write_all(b"INFO {\"server_id\":\"peer\",\"jetstream\":true,\"max_payload\":1048576,\"proto\":1}\r\n")
            .await
            .unwrap();
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("PING") && write.write_all(b"PONG\r\n").await.is_err() {
                break;
            }
        }
    });
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        connect(&format!("nats://127.0.0.1:{port}")),
    )
    .await
    .expect("connect answers");
    match result {
        Err(ConnectError::ServerTooOld { version, .. }) => {
            assert!(version.contains("unknown"), "{version}");
        }
        Err(other) => panic!("expected a version refusal, got {other}"),
        Ok(_) => panic!("a server without a version was accepted"),
    }
    peer.abort();
}
