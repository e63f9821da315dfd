//! `testing::LocalCluster` with TLS, password and client-certificate authentication,
//! checked from the server's side with a minimal rustls client (not the crate's own
//! TLS code).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use diesel_rwsplit::testing::{other_ca_pem, LocalCluster};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

const WAIT: Duration = Duration::from_secs(10);

/// A rustls client that trusts `ca` and, if given, presents a client certificate.
fn tls(ca: &Path, client: Option<(PathBuf, PathBuf)>) -> MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    // The ring provider, as the dev-dependencies choose it (its lack of post-quantum
    // key exchange, why rustls 0.23.48 deprecates it, does not matter to these tests).
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(cert).unwrap()],
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    MakeRustlsConnect::new(config)
}

async fn connect_tls(url: &str, tls: MakeRustlsConnect) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&format!("{url}?sslmode=require"), tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn connect_plain(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// `pg_stat_ssl.ssl` of the session's own backend.
async fn own_ssl(client: &Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn current_user(client: &Client) -> String {
    client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

fn sqlstate(result: Result<Client, tokio_postgres::Error>) -> Option<SqlState> {
    match result {
        Ok(_) => panic!("the login was accepted"),
        Err(e) => e.code().cloned(),
    }
}

#[tokio::test]
async fn a_tls_session_as_a_role_reports_ssl_in_pg_stat_ssl_on_every_node() {
    let cluster = LocalCluster::builder()
        .replicas(1)
        .tls(true)
        .role("app", "app-secret")
        .start()
        .await
        .unwrap();
    let ca = cluster.ca_cert_path().expect("a CA with tls(true)");
    assert!(ca.starts_with(cluster.dir()), "{}", ca.display());
    assert!(std::fs::read_to_string(ca)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    // tls alone keeps trust over TCP: the superuser URL is unchanged.
    assert!(
        cluster
            .primary_url()
            .starts_with("postgres://postgres@127.0.0.1:"),
        "{}",
        cluster.primary_url()
    );

    let urls = std::iter::once(cluster.primary_url_as("app", Some("app-secret")))
        .chain(cluster.replica_urls_as("app", Some("app-secret")));
    for url in urls {
        let client = connect_tls(&url, tls(ca, None)).await.unwrap();
        assert!(own_ssl(&client).await, "no TLS on {url}");
        assert_eq!(current_user(&client).await, "app");
        // Plaintext stays allowed without tls_only.
        let plain = connect_plain(&url).await.unwrap();
        assert!(!own_ssl(&plain).await);
    }

    // A client that trusts an unrelated CA refuses the servers' certificate.
    let scratch = cluster.dir().join("scratch-other-ca");
    let other = other_ca_pem(&scratch).unwrap();
    assert_ne!(std::fs::read(&other).unwrap(), std::fs::read(ca).unwrap());
    let refused = connect_tls(&cluster.primary_url_as("app", None), tls(&other, None)).await;
    assert!(
        refused.is_err(),
        "a certificate from another CA was accepted"
    );
}

#[tokio::test]
async fn tls_only_refuses_plaintext_tcp_with_28000_and_accepts_tls() {
    let cluster = LocalCluster::builder()
        .replicas(0)
        .tls_only(true)
        .role("app", "pw")
        .start()
        .await
        .unwrap();
    let ca = cluster.ca_cert_path().expect("tls_only implies tls");
    let url = cluster.primary_url_as("app", Some("pw"));

    let plain = connect_plain(&url).await;
    assert_eq!(
        sqlstate(plain),
        Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    );
    let client = connect_tls(&url, tls(ca, None)).await.unwrap();
    assert!(own_ssl(&client).await);

    // The harness's superuser goes through the Unix socket, without TLS.
    let admin = connect_plain(&cluster.primary_url()).await.unwrap();
    assert_eq!(current_user(&admin).await, "postgres");
    let over_socket: Option<String> = admin
        .query_one("SELECT inet_client_addr()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(over_socket, None, "the admin URL is not a Unix socket");
    // ... while the superuser over plaintext TCP is refused like everyone else.
    let superuser_tcp = connect_plain(&cluster.primary_url_as("postgres", None)).await;
    assert_eq!(
        sqlstate(superuser_tcp),
        Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    );
}

#[tokio::test]
async fn password_auth_refuses_a_wrong_password_with_28p01() {
    let cluster = LocalCluster::builder()
        .replicas(0)
        .password_auth(true)
        .role("app", "right:pw@/?")
        .start()
        .await
        .unwrap();
    assert!(cluster.ca_cert_path().is_none(), "no TLS was asked for");

    let wrong = connect_plain(&cluster.primary_url_as("app", Some("wrong"))).await;
    assert_eq!(sqlstate(wrong), Some(SqlState::INVALID_PASSWORD));

    // The password needs percent-encoding in the URL.
    let client = connect_plain(&cluster.primary_url_as("app", Some("right:pw@/?")))
        .await
        .unwrap();
    assert_eq!(current_user(&client).await, "app");
    // The role may create tables in public and sees every session's statistics.
    client
        .batch_execute("CREATE TABLE app_owned (id INT)")
        .await
        .unwrap();
    let stats_member: bool = client
        .query_one(
            "SELECT pg_has_role('app', 'pg_read_all_stats', 'MEMBER')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stats_member);

    let stored: String = connect_plain(&cluster.primary_url())
        .await
        .unwrap()
        .query_one(
            "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'app'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, "SCRAM-SHA-256$");
}

#[tokio::test]
async fn a_cert_role_logs_in_with_its_client_certificate_and_not_without() {
    let cluster = LocalCluster::builder()
        .replicas(0)
        .cert_role("certy")
        .start()
        .await
        .unwrap();
    let ca = cluster.ca_cert_path().expect("cert_role implies tls");
    assert_eq!(cluster.client_cert("nobody"), None);
    let (cert, key) = cluster.client_cert("certy").unwrap();
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    for file in [&cert, &key] {
        let meta = std::fs::metadata(file).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600, "{}", file.display());
        assert_eq!(meta.uid(), me, "{}", file.display());
    }
    // PostgreSQL's own key: the server's user, 0600.
    let server_key = std::fs::metadata(cluster.dir().join("server.key")).unwrap();
    let server_user = std::fs::metadata(cluster.dir().join("primary"))
        .unwrap()
        .uid();
    assert_eq!(server_key.mode() & 0o777, 0o600);
    assert_eq!(server_key.uid(), server_user);

    let url = cluster.primary_url_as("certy", None);
    let client = connect_tls(&url, tls(ca, Some((cert, key)))).await.unwrap();
    assert_eq!(current_user(&client).await, "certy");
    assert!(own_ssl(&client).await);

    let no_cert = connect_tls(&url, tls(ca, None)).await;
    assert_eq!(
        sqlstate(no_cert),
        Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    );
    let plain = connect_plain(&url).await;
    assert_eq!(
        sqlstate(plain),
        Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_operations_work_with_tls_only_and_password_auth() {
    let cluster = LocalCluster::builder()
        .replicas(1)
        .tls_only(true)
        .password_auth(true)
        .role("app", "pw")
        .start()
        .await
        .unwrap();
    let ca = cluster.ca_cert_path().unwrap().to_path_buf();
    let app = |url: String| {
        let ca = ca.clone();
        async move { connect_tls(&url, tls(&ca, None)).await.unwrap() }
    };
    let primary = app(cluster.primary_url_as("app", Some("pw"))).await;
    primary
        .batch_execute("CREATE TABLE harness_rows (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    cluster.wait_for_replicas(WAIT).await.unwrap();
    let replica_url = cluster.replica_urls_as("app", Some("pw")).remove(0);
    let replica = app(replica_url.clone()).await;

    cluster.pause_replay(0).await.unwrap();
    primary
        .execute("INSERT INTO harness_rows VALUES (1)", &[])
        .await
        .unwrap();
    let written = cluster.primary_lsn().await.unwrap();
    assert!(cluster.replay_lsn(0).await.unwrap() < written);
    assert_eq!(rows(&replica).await, 0, "a paused replica showed the row");
    cluster.resume_replay(0).await.unwrap();
    cluster.wait_for_replicas(WAIT).await.unwrap();
    assert_eq!(rows(&replica).await, 1);

    cluster.stop_replica(0).await.unwrap();
    let status = cluster.status().await;
    assert_eq!(
        status.iter().map(|n| n.role).collect::<Vec<_>>(),
        ["primary", "down"]
    );
    cluster.start_replica(0).await.unwrap();
    primary
        .execute("INSERT INTO harness_rows VALUES (2)", &[])
        .await
        .unwrap();
    cluster.wait_for_replicas(WAIT).await.unwrap();
    let status = cluster.status().await;
    assert_eq!(
        status.iter().map(|n| n.role).collect::<Vec<_>>(),
        ["primary", "replica"]
    );
    assert!(status[1].lag_bytes.is_some(), "{status:?}");
    let replica = app(replica_url).await;
    assert_eq!(rows(&replica).await, 2);

    // The example schema goes through the superuser's socket URL with diesel.
    cluster.apply_example_schema().await.unwrap();
}

async fn rows(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM harness_rows", &[])
        .await
        .unwrap()
        .get(0)
}
