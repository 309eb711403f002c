//! TLS through `connect_with`, against nats-server configured with a
//! certificate authority and certificates generated here (rcgen).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use sagaflow_nats::{ConnectError, ConnectOptions, connect_with};
use sagaflow_testkit::{NatsServer, ServerOptions};

/// PEM files of a test PKI.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: String| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let authority = ca("sagaflow test CA");
    let stranger = ca("another CA");
    let issue = |names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &authority).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) =
        issue(vec!["127.0.0.1".into(), "localhost".into()], "nats-server");
    let (client_cert, client_key) = issue(vec!["participant".into()], "participant");
    Pki {
        ca: write("ca.pem", authority.pem()),
        other_ca: write("other-ca.pem", stranger.pem()),
        server_cert: write("server-cert.pem", server_cert),
        server_key: write("server-key.pem", server_key),
        client_cert: write("client-cert.pem", client_cert),
        client_key: write("client-key.pem", client_key),
        _dir: dir,
    }
}

fn tls_server(pki: &Pki, verify_clients: bool) -> NatsServer {
    let quote = |p: &Path| format!("{:?}", p.display().to_string());
    let config = format!(
        "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: {verify_clients}\n}}\n",
        quote(&pki.server_cert),
        quote(&pki.server_key),
        quote(&pki.ca),
    );
    NatsServer::start_with(ServerOptions {
        config_file: Some(config),
        ..ServerOptions::default()
    })
    .expect("nats-server with TLS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_certificate_is_checked_against_the_ca_file() {
    let pki = pki();
    let server = tls_server(&pki, false);
    let url = server.url();

    let client = connect_with(&url, &ConnectOptions::new().tls_ca_file(&pki.ca))
        .await
        .expect("TLS with the right CA");
    assert!(client.server_info().tls_required);
    client.publish("ping", "x".into()).await.unwrap();
    client.flush().await.unwrap();

    // A CA that did not sign the server's certificate: refused, as TLS.
    let e = connect_with(&url, &ConnectOptions::new().tls_ca_file(&pki.other_ca))
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectError::Tls { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with("TLS with the NATS server at"),
        "{e}"
    );
    // No CA file: the system's trust store does not know the test CA.
    let e = connect_with(&url, &ConnectOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectError::Tls { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_verifies_clients_needs_their_certificate() {
    let pki = pki();
    let server = tls_server(&pki, true);
    let url = server.url();

    let options = ConnectOptions::new()
        .tls_ca_file(&pki.ca)
        .tls_client_cert(&pki.client_cert, &pki.client_key);
    let client = connect_with(&url, &options)
        .await
        .expect("TLS with a client certificate");
    client.flush().await.unwrap();

    let without = connect_with(&url, &ConnectOptions::new().tls_ca_file(&pki.ca)).await;
    assert!(
        matches!(without, Err(ConnectError::Tls { .. })),
        "without a client certificate: {without:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_never_falls_back_to_plain_text() {
    let pki = pki();
    let server = NatsServer::start().unwrap();
    let plain = connect_with(&server.url(), &ConnectOptions::new().tls_ca_file(&pki.ca)).await;
    assert!(
        matches!(plain, Err(ConnectError::Tls { .. })),
        "a CA file must make TLS required: {plain:?}"
    );
    let plain = connect_with(&server.url(), &ConnectOptions::new().require_tls(true)).await;
    assert!(
        matches!(plain, Err(ConnectError::Tls { .. })),
        "require_tls must make TLS required: {plain:?}"
    );
    // Without TLS options the same server is fine.
    connect_with(&server.url(), &ConnectOptions::new())
        .await
        .expect("plain text when TLS is not asked for");
}
