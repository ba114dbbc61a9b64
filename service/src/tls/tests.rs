//! Loading certificates and keys, and serving HTTPS over real sockets.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files.
struct Certs {
    dir: TempDir,
    ca_pem: String,
}

impl Certs {
    fn generate() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).unwrap();
        Self { dir, ca_pem }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> TlsConfig {
        TlsConfig {
            cert: self.path("tls.crt"),
            key: self.path("tls.key"),
            ca: None,
            identities: Default::default(),
        }
    }

    fn client(&self) -> reqwest::ClientBuilder {
        crate::client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap()])
    }
}

#[test]
fn a_certificate_chain_and_key_load_with_h2_and_http1() {
    let config = Certs::generate().config().server().unwrap().config;
    assert_eq!(
        config.alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
}

#[test]
fn a_missing_key_file_names_tls_key() {
    let certs = Certs::generate();
    let config = TlsConfig {
        key: certs.path("absent.key"),
        ..certs.config()
    };
    let error = config.server().unwrap_err();
    assert!(
        matches!(error, TlsError::Read { field: "key", .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("`tls.key`") && message.contains("absent.key"),
        "{message}"
    );
}

#[test]
fn a_file_without_pem_blocks_names_tls_cert() {
    let certs = Certs::generate();
    std::fs::write(certs.path("garbage.crt"), "not a certificate\n").unwrap();
    let config = TlsConfig {
        cert: certs.path("garbage.crt"),
        ..certs.config()
    };
    let error = config.server().unwrap_err();
    assert!(matches!(error, TlsError::NoCertificate { .. }), "{error:?}");
    assert!(error.to_string().contains("`tls.cert`"), "{error}");
}

#[test]
fn a_truncated_pem_block_is_reported_as_invalid_pem() {
    let certs = Certs::generate();
    let pem = std::fs::read_to_string(certs.path("tls.crt")).unwrap();
    std::fs::write(certs.path("cut.crt"), &pem[..pem.len() / 2]).unwrap();
    let config = TlsConfig {
        cert: certs.path("cut.crt"),
        ..certs.config()
    };
    let error = config.server().unwrap_err();
    assert!(
        matches!(error, TlsError::Pem { field: "cert", .. }),
        "{error:?}"
    );
}

#[test]
fn a_certificate_file_given_as_the_key_is_rejected() {
    let certs = Certs::generate();
    let config = TlsConfig {
        key: certs.path("tls.crt"),
        ..certs.config()
    };
    let error = config.server().unwrap_err();
    assert!(matches!(error, TlsError::NoKey { .. }), "{error:?}");
    assert!(error.to_string().contains("`tls.key`"), "{error}");
}

#[test]
fn a_key_of_another_certificate_is_rejected() {
    let certs = Certs::generate();
    let other = Certs::generate();
    let config = TlsConfig {
        key: other.path("tls.key"),
        ..certs.config()
    };
    let error = config.server().unwrap_err();
    assert!(matches!(error, TlsError::Rejected(_)), "{error:?}");
}

#[test]
fn unknown_fields_are_rejected() {
    let error = serde_yaml_ng::from_str::<TlsConfig>("cert: a\nkey: b\ncacert: c\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("cacert"), "{error}");
}

async fn start(
    certs: &Certs,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let app = Router::new().route("/", axum::routing::get(|| async { "hello" }));
    let task = tokio::spawn(crate::http::serve_tls(
        listener,
        certs.config().server().unwrap(),
        app,
        shutdown.clone(),
    ));
    (addr, shutdown, task)
}

#[tokio::test]
async fn serves_http2_and_http1_to_a_client_trusting_the_ca() {
    let certs = Certs::generate();
    let (addr, shutdown, task) = start(&certs).await;
    let mut clients = Vec::new();
    for (client, version) in [
        (certs.client().build().unwrap(), http::Version::HTTP_2),
        (
            certs.client().http1_only().build().unwrap(),
            http::Version::HTTP_11,
        ),
    ] {
        let response = client
            .get(format!("https://localhost:{}/", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), version);
        assert_eq!(response.text().await.unwrap(), "hello");
        clients.push(client);
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_stalled_handshake_and_a_plain_http_request_do_not_stop_serving() {
    let certs = Certs::generate();
    let (addr, shutdown, _task) = start(&certs).await;
    // Connected but silent: its handshake waits in its own task.
    let _silent = TcpStream::connect(addr).await.unwrap();
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    // The server answers with a TLS alert or just closes; it never serves plain HTTP.
    let _ = plain.read_to_end(&mut reply).await;
    assert!(!reply.starts_with(b"HTTP/"), "{reply:?}");
    let response = certs
        .client()
        .build()
        .unwrap()
        .get(format!("https://127.0.0.1:{}/", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "hello");
    shutdown.cancel();
}

#[tokio::test]
async fn a_tls_listener_answers_connections_beyond_its_limit_with_503() {
    let certs = Certs::generate();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}/",
        listener.local_addr().unwrap().port()
    );
    let limits = crate::http::ListenerLimits {
        max_connections: 1,
        ..Default::default()
    };
    let app = Router::new().route("/", axum::routing::get(|| async { "hello" }));
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::http::serve_with(
        listener,
        Some(certs.config().server().unwrap()),
        app,
        limits,
        shutdown.clone(),
    ));
    // Its pooled connection takes the only slot.
    let first = certs.client().build().unwrap();
    assert_eq!(first.get(&url).send().await.unwrap().status(), 200);

    let second = certs.client().build().unwrap();
    let refused = second.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.text().await.unwrap().contains("UNAVAILABLE"));

    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while second.get(&url).send().await.unwrap().status() != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused after the first client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
}

/// Mutual TLS on a real listener: a client is admitted by the role its certificate names,
/// per method; no certificate, or one of another role, gets 403 DENIED (gRPC: status 7).
#[tokio::test]
async fn mutual_tls_admits_callers_by_role() {
    use shoal_tls::generate::Authority;
    use shoal_tls::{Role, Roles};

    let ca = Authority::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = ca.write(&dir.path().join("origin"), Role::Origin).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/blobs",
        listener.local_addr().unwrap().port()
    );
    let app = Router::new().route(
        "/blobs",
        axum::routing::get(|| async { "read" }).put(|| async { "written" }),
    );
    let access = crate::http::Access {
        read: Roles::ANY,
        write: Roles::of(&[Role::Proxy, Role::Origin]),
    };
    let app = crate::http::with_common_routes(
        crate::http::with_access(app, access),
        crate::MetricsBuilder::new("test").build(),
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(crate::http::serve_tls(
        listener,
        server.server().unwrap(),
        app,
        shutdown.clone(),
    ));
    let client_of = |role: Role| {
        let config = ca.write(&dir.path().join(role.as_str()), role).unwrap();
        let loaded = LoadedTls::load(&config).unwrap();
        crate::client::cluster_builder(Some(&loaded), Roles::of(&[Role::Origin]))
            .build()
            .unwrap()
    };
    let ca_only = reqwest::Certificate::from_pem(ca.ca_pem().as_bytes()).unwrap();
    let anonymous = crate::client::builder()
        .tls_certs_only([ca_only])
        .build()
        .unwrap();

    let proxy = client_of(Role::Proxy);
    assert_eq!(proxy.put(&url).send().await.unwrap().status(), 200);
    let agent = client_of(Role::Agent);
    assert_eq!(agent.get(&url).send().await.unwrap().status(), 200);
    let refused = agent.put(&url).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let body = refused.text().await.unwrap();
    assert!(body.contains("DENIED") && body.contains("agent"), "{body}");
    assert_eq!(anonymous.get(&url).send().await.unwrap().status(), 403);
    let health = url.replace("/blobs", "/health");
    assert_eq!(
        anonymous.get(&health).send().await.unwrap().status(),
        200,
        "probes need no certificate"
    );
    let grpc = anonymous
        .post(&url)
        .header("content-type", "application/grpc")
        .send()
        .await
        .unwrap();
    assert_eq!(grpc.headers()["grpc-status"], "7");

    shutdown.cancel();
    drop((proxy, agent, anonymous));
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
