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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_streams_and_buckets_keep_their_settings_and_those_are_in_effect() {
    let server = NatsServer::start().unwrap();
    let client = connect(&server.url()).await.unwrap();
    let first = Settings {
        lease_ttl: std::time::Duration::from_secs(3),
        idempotency_ttl: std::time::Duration::from_secs(3600),
        max_message_bytes: 64 * 1024,
        ..Settings::default()
    };
    let created = setup(client.clone(), first.clone()).await.unwrap();
    assert_eq!(created.settings.lease_ttl, first.lease_ttl);

    // A second process asks for other settings: the buckets keep theirs,
    // and those are the ones it is told to act on (a lease renewed every
    // 10/3 s would expire every 3 s).
    let second = setup(client.clone(), Settings::default()).await.unwrap();
    assert_eq!(second.settings.lease_ttl, first.lease_ttl);
    assert_eq!(second.settings.idempotency_ttl, first.idempotency_ttl);
    assert_eq!(second.settings.max_message_bytes, 64 * 1024);
    let leases = second.leases.status().await.unwrap();
    assert_eq!(leases.max_age(), first.lease_ttl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_the_same_name_with_other_subjects_is_refused() {
    let server = NatsServer::start().unwrap();
    let client = connect(&server.url()).await.unwrap();
    let ns = Namespace::new("acme-prod").unwrap();
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: ns.history_stream(),
        subjects: vec!["elsewhere.history.>".to_string()],
        ..Default::default()
    })
    .await
    .unwrap();
    let err = setup(
        client.clone(),
        Settings {
            namespace: ns.clone(),
            ..Settings::default()
        },
    )
    .await
    .err()
    .expect("a foreign stream is refused");
    match &err {
        sagaflow_nats::SetupError::Foreign { name, found, .. } => {
            assert_eq!(name, &ns.history_stream());
            assert_eq!(found, &vec!["elsewhere.history.>".to_string()]);
        }
        other => panic!("expected Foreign, got {other}"),
    }
    assert!(err.to_string().contains("another namespace"), "{err}");

    // Namespaces that differ only by '-' and '_' have streams of their own.
    let dash = setup(
        client.clone(),
        Settings {
            namespace: Namespace::new("tenant-a").unwrap(),
            ..Settings::default()
        },
    )
    .await
    .unwrap();
    let underscore = setup(
        client,
        Settings {
            namespace: Namespace::new("tenant_a").unwrap(),
            ..Settings::default()
        },
    )
    .await
    .unwrap();
    assert_ne!(
        dash.history.cached_info().config.name,
        underscore.history.cached_info().config.name
    );
    assert_ne!(dash.ns().leases_bucket(), underscore.ns().leases_bucket());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comma_separated_list_of_servers_connects_to_one_that_answers() {
    let server = NatsServer::start().unwrap();
    let mut gone = NatsServer::start().unwrap();
    let gone_url = gone.url();
    gone.kill().unwrap();
    let list = format!("{gone_url}, {}", server.url());
    let client = connect(&list).await.expect("the live server of the list");
    assert!(client.server_info().jetstream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_another_name_holding_the_subjects_is_named() {
    let server = NatsServer::start().unwrap();
    let client = connect(&server.url()).await.unwrap();
    let ns = Namespace::new("acme-prod").unwrap();
    // As an older Sagaflow named it ('-' became '_').
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "ACME_PROD_HISTORY".to_string(),
        subjects: vec![ns.history_wildcard()],
        ..Default::default()
    })
    .await
    .unwrap();
    let err = setup(
        client,
        Settings {
            namespace: ns,
            ..Settings::default()
        },
    )
    .await
    .err()
    .expect("refused");
    match &err {
        sagaflow_nats::SetupError::Foreign { name, .. } => assert_eq!(name, "ACME_PROD_HISTORY"),
        other => panic!("expected Foreign, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_without_jetstream_is_told_so_at_setup() {
    let server = NatsServer::start_with(ServerOptions {
        config_file: Some(
            r#"
accounts {
  WITH: { jetstream: enabled, users: [{user: with, password: with}] }
  WITHOUT: { users: [{user: without, password: without}] }
}
"#
            .to_string(),
        ),
        ..Default::default()
    })
    .unwrap();
    let url = server.url().replace("nats://", "nats://without:without@");
    let client = sagaflow_nats::connect_with(&url, &sagaflow_nats::ConnectOptions::default())
        .await
        .expect("the server has JetStream; the connection is made");
    let err = setup(client, Settings::default())
        .await
        .err()
        .expect("no JetStream in this account");
    let text = err.to_string();
    assert!(
        matches!(err, sagaflow_nats::SetupError::NoJetStream),
        "{text}"
    );
    assert!(
        text.contains("not enabled for this user's account"),
        "{text}"
    );
}

/// Streams created by hand (or edited) with settings under which what
/// Sagaflow stores would be deleted behind its back are refused, naming
/// the stream and the setting; the right ones are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_would_lose_what_they_hold_are_refused() {
    use async_nats::jetstream::stream::{Config, RetentionPolicy};
    let server = NatsServer::start().unwrap();
    let client = connect(&server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    type Make = fn(&Namespace) -> Config;
    let cases: Vec<(&str, Make, &str)> = vec![
        (
            "history-age",
            |ns: &Namespace| Config {
                name: ns.history_stream(),
                subjects: vec![ns.history_wildcard()],
                max_age: std::time::Duration::from_secs(30 * 24 * 3600),
                ..Default::default()
            },
            "max age",
        ),
        (
            "history-per-subject",
            |ns: &Namespace| Config {
                name: ns.history_stream(),
                subjects: vec![ns.history_wildcard()],
                max_messages_per_subject: 100,
                ..Default::default()
            },
            "max messages per subject",
        ),
        (
            "inbox-limits",
            |ns: &Namespace| Config {
                name: ns.inbox_stream(),
                subjects: vec![ns.inbox_wildcard()],
                retention: RetentionPolicy::Limits,
                ..Default::default()
            },
            "retention",
        ),
        (
            "inbox-per-subject",
            |ns: &Namespace| Config {
                name: ns.inbox_stream(),
                subjects: vec![ns.inbox_wildcard()],
                retention: RetentionPolicy::WorkQueue,
                max_messages_per_subject: 1,
                ..Default::default()
            },
            "max messages per subject",
        ),
        (
            "tasks-count",
            |ns: &Namespace| Config {
                name: ns.tasks_stream(),
                subjects: vec![ns.task_wildcard()],
                retention: RetentionPolicy::WorkQueue,
                max_messages: 1000,
                ..Default::default()
            },
            "max messages",
        ),
    ];
    for (namespace, config, setting) in cases {
        let ns = Namespace::new(namespace).unwrap();
        let config = config(&ns);
        let name = config.name.clone();
        js.create_stream(config).await.unwrap();
        let err = setup(
            client.clone(),
            Settings {
                namespace: ns,
                ..Settings::default()
            },
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{namespace}: accepted"));
        match &err {
            sagaflow_nats::SetupError::Unsafe {
                name: found,
                setting: s,
                ..
            } => {
                assert_eq!((found, *s), (&name, setting), "{namespace}: {err}");
            }
            other => panic!("{namespace}: expected Unsafe, got {other}"),
        }
        assert!(err.to_string().contains(&name), "{err}");
    }
    // A work-queue inbox made by hand, without limits, is fine.
    let ns = Namespace::new("by-hand").unwrap();
    js.create_stream(Config {
        name: ns.inbox_stream(),
        subjects: vec![ns.inbox_wildcard()],
        retention: RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
    setup(
        client,
        Settings {
            namespace: ns,
            ..Settings::default()
        },
    )
    .await
    .expect("a safe stream is kept");
}

/// A leases bucket made by hand without a TTL would keep every lease for
/// ever (a dead coordinator's partitions never taken over): refused, as is
/// a coordinators bucket without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_buckets_without_a_ttl_are_refused() {
    let server = NatsServer::start().unwrap();
    let client = connect(&server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    for (namespace, pick) in [("leases", 0), ("coordinators", 1)] {
        let ns = Namespace::new(namespace).unwrap();
        let bucket = [ns.leases_bucket(), ns.coordinators_bucket()][pick].clone();
        js.create_key_value(async_nats::jetstream::kv::Config {
            bucket: bucket.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        let err = setup(
            client.clone(),
            Settings {
                namespace: ns,
                ..Settings::default()
            },
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{namespace}: accepted"));
        match &err {
            sagaflow_nats::SetupError::Unsafe { name, setting, .. } => {
                assert_eq!(
                    (name.as_str(), *setting),
                    (format!("KV_{bucket}").as_str(), "max age")
                );
            }
            other => panic!("{namespace}: expected Unsafe, got {other}"),
        }
    }
}

/// An inbox created with another duplicate window keeps it, and it is the
/// one in effect (the API says how long a name stays taken by it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_duplicate_window_in_effect_is_the_streams() {
    let server = NatsServer::start().unwrap();
    let client = connect(&server.url()).await.unwrap();
    let first = Settings {
        duplicate_window: std::time::Duration::from_secs(30),
        ..Settings::default()
    };
    setup(client.clone(), first).await.unwrap();
    let second = setup(client, Settings::default()).await.unwrap();
    assert_eq!(
        second.settings.duplicate_window,
        std::time::Duration::from_secs(30)
    );
}

/// Processes starting at once with other settings: whichever creates a
/// stream or bucket first, the other opens it (and acts on its settings)
/// instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_setting_up_at_once_with_other_settings_both_start() {
    let server = NatsServer::start().unwrap();
    let client = connect(&server.url()).await.unwrap();
    let other = connect(&server.url()).await.unwrap();
    for round in 0..5 {
        let ns = Namespace::new(&format!("race{round}")).unwrap();
        let a = Settings {
            namespace: ns.clone(),
            ..Settings::default()
        };
        let b = Settings {
            namespace: ns,
            max_message_bytes: 64 * 1024,
            lease_ttl: std::time::Duration::from_secs(3),
            ..Settings::default()
        };
        let (x, y) = tokio::join!(setup(client.clone(), a), setup(other.clone(), b));
        let (x, y) = (x.expect("first"), y.expect("second"));
        // Both act on the same leases bucket's TTL, whoever made it.
        assert_eq!(x.settings.lease_ttl, y.settings.lease_ttl, "round {round}");
    }
}

/// A client told to retry its first connection (`retry_on_initial_connect`)
/// does not know the server's version when `connect` returns: it is not
/// refused for that, and `setup`, which waits for the server anyway, checks
/// the version once it is connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_retrying_its_first_connection_is_checked_at_setup() {
    let mut server = NatsServer::start().unwrap();
    server.stop().unwrap();
    let mut resolved = sagaflow_nats::ConnectOptions::new()
        .resolve(&server.url())
        .unwrap();
    resolved.options = resolved.options.retry_on_initial_connect();
    let client = sagaflow_nats::connect_resolved(resolved)
        .await
        .expect("not refused before the server is reached");
    assert_eq!(client.server_info().version, "");
    server.start_again().unwrap();
    let infra = setup(client.clone(), Settings::default())
        .await
        .expect("set up once connected");
    assert!(!infra.client.server_info().version.is_empty());
}
