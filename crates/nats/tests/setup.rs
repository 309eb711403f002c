//! `connect` and `setup` against a real nats-server started by the test kit.

use sagaflow_nats::{ConnectError, Settings, connect, setup};
use sagaflow_protocol::Namespace;
use sagaflow_testkit::{NatsServer, ServerOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_creates_every_stream_and_bucket_and_is_idempotent() {
    let server = NatsServer::start().unwrap();
    let client = connect(&server.url()).await.unwrap();
    let ns = Namespace::default();

    let mut infra = setup(client.clone(), Settings::default()).await.unwrap();
    let streams = [
        (&mut infra.history, ns.history_stream()),
        (&mut infra.inbox, ns.inbox_stream()),
        (&mut infra.tasks, ns.tasks_stream()),
    ];
    for (stream, name) in streams {
        assert_eq!(stream.cached_info().config.name, name);
        // The server has it too.
        assert_eq!(stream.info().await.unwrap().config.name, name);
    }
    assert_eq!(
        infra.history.cached_info().config.subjects,
        vec![ns.history_wildcard()]
    );
    assert_eq!(
        infra.tasks.cached_info().config.duplicate_window,
        Settings::default().duplicate_window
    );
    let buckets = [
        (&infra.machines, ns.machines_bucket()),
        (&infra.executions, ns.executions_bucket()),
        (&infra.leases, ns.leases_bucket()),
        (&infra.coordinators, ns.coordinators_bucket()),
        (&infra.idempotency, ns.idempotency_bucket()),
    ];
    for (store, name) in buckets {
        assert_eq!(store.status().await.unwrap().bucket(), name);
    }

    // A write survives a second setup: nothing is recreated.
    infra.machines.put("m", "v1".into()).await.unwrap();
    let again = setup(client, Settings::default()).await.unwrap();
    assert_eq!(again.history.cached_info().config.name, ns.history_stream());
    assert_eq!(
        again.machines.get("m").await.unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    let mut names = Vec::new();
    let mut list = again.js.stream_names();
    use futures::StreamExt;
    while let Some(name) = list.next().await {
        names.push(name.unwrap());
    }
    // 3 streams + 5 buckets (each a KV_ stream), no duplicates.
    names.sort();
    assert_eq!(names.len(), 8, "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_with_a_namespace_prefix() {
    let server = NatsServer::start().unwrap();
    let client = connect(&server.url()).await.unwrap();
    let ns = Namespace::new("tenant1").unwrap();
    let settings = Settings {
        namespace: ns.clone(),
        ..Settings::default()
    };
    let infra = setup(client, settings).await.unwrap();
    assert_eq!(infra.inbox.cached_info().config.name, ns.inbox_stream());
    assert_ne!(ns.inbox_stream(), Namespace::default().inbox_stream());
    assert_eq!(
        infra.leases.status().await.unwrap().bucket(),
        ns.leases_bucket()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_jetstream_is_refused() {
    let server = NatsServer::start_with(ServerOptions {
        jetstream: false,
        ..Default::default()
    })
    .unwrap();
    let err = connect(&server.url()).await.unwrap_err();
    match err {
        ConnectError::NoJetStream { url } => assert_eq!(url, server.url()),
        other => panic!("expected NoJetStream, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_connect_error() {
    let mut server = NatsServer::start().unwrap();
    let url = server.url();
    server.kill().unwrap();
    let err = connect(&url).await.unwrap_err();
    assert!(matches!(err, ConnectError::Connect { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_restart_and_the_client_reconnects() {
    let mut server = NatsServer::start().unwrap();
    let client = connect(&server.url()).await.unwrap();
    let infra = setup(client.clone(), Settings::default()).await.unwrap();
    infra.machines.put("m", "v1".into()).await.unwrap();
    server.restart().unwrap();
    // The same client reconnects by itself; the value was on disk.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let value = loop {
        match infra.machines.get("m").await {
            Ok(value) => break value,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no answer after restart: {e}"),
        }
    };
    assert_eq!(value.as_deref(), Some(&b"v1"[..]));
    // setup after a restart opens what is there.
    let again = setup(client, Settings::default()).await.unwrap();
    assert_eq!(
        again.machines.get("m").await.unwrap().as_deref(),
        Some(&b"v1"[..])
    );
}
