//! TLS to MySQL-protocol servers: `SwitchablePool<AsyncMysqlConnection>` over a
//! MariaDB cluster that serves TLS with a CA of its own. Encryption is checked on
//! the servers themselves (`Ssl_cipher` of the very session), failures by
//! `Error::tls_failure()` and `FailureKind::Tls`, never by message text.

mod maria;

use std::time::{Duration, Instant};

use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl};
use diesel_rwsplit::testing::{other_ca_pem, MariaCluster};
use diesel_rwsplit::{Error, FailureKind, PooledConnection, SwitchablePool, Target, TlsFailure};
use maria::{port_of, setup, WAIT};

#[derive(diesel::QueryableByName)]
struct Status {
    #[diesel(sql_type = Text, column_name = "Value")]
    value: String,
}

/// The cipher of the session `conn` runs its statements on, as the server sees it
/// (empty for a plaintext session).
async fn cipher_of(conn: &mut PooledConnection<AsyncMysqlConnection>) -> String {
    let row: Status = diesel::sql_query(SSL_CIPHER)
        .get_result(conn)
        .await
        .unwrap();
    row.value
}

const SSL_CIPHER: &str = "SHOW SESSION STATUS LIKE 'Ssl_cipher'";

/// `url` with this crate's TLS parameters: TLS required, the server verified
/// against `ca` only (by chain and by name).
fn tls_url(url: &str, ca: &std::path::Path) -> String {
    format!(
        "{url}?require_ssl=true&verify_ca=true&verify_identity=true&built_in_roots=false&ssl_ca={}",
        ca.display()
    )
}

/// The error of a primary checkout that must fail, soon (a TLS failure is not
/// waited out), with the password nowhere in it.
async fn primary_checkout_error(url: &str, password: &str) -> Error {
    let pool = SwitchablePool::<AsyncMysqlConnection>::builder()
        .primary(url)
        .primary_checkout_timeout(Duration::from_secs(120))
        .build()
        .await
        .unwrap();
    let started = Instant::now();
    let error = match pool.get_primary().await {
        Ok(_) => panic!("the checkout should fail"),
        Err(error) => error,
    };
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "a TLS failure waited out the checkout timeout"
    );
    let text = format!("{error} {error:?}");
    assert!(!text.contains(password), "{text}");
    error
}

fn assert_tls_failure(error: &Error, expected: TlsFailure) {
    assert_eq!(error.tls_failure(), Some(expected), "{error:?}");
    assert!(
        matches!(
            error,
            Error::PrimaryUnavailable {
                kind: FailureKind::Tls,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_tls_sessions_read_on_the_replica_and_write_on_the_primary() {
    let cluster = MariaCluster::builder()
        .replicas(1)
        .tls_only(true)
        .start()
        .await
        .unwrap();
    let ca = cluster.ca_cert_path().unwrap().to_owned();
    // Replication itself runs over TLS under require_secure_transport.
    setup(
        &cluster,
        "CREATE TABLE items (id BIGINT AUTO_INCREMENT PRIMARY KEY, name TEXT NOT NULL)",
    )
    .await;

    let pool = SwitchablePool::<AsyncMysqlConnection>::builder()
        .primary(tls_url(&cluster.primary_url(), &ca))
        .replicas(cluster.replica_urls().iter().map(|url| tls_url(url, &ca)))
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    assert_eq!(port_of(&mut conn).await, cluster.replica_port(0).unwrap());
    let cipher = cipher_of(&mut conn).await;
    assert!(!cipher.is_empty(), "the replica session is not encrypted");
    assert_eq!(conn.target(), Target::Replica);

    let inserted = diesel::sql_query("INSERT INTO items (name) VALUES ('over tls')")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(inserted, 1);
    assert_eq!(conn.target(), Target::Primary);
    assert_eq!(port_of(&mut conn).await, cluster.primary_port());
    let cipher = cipher_of(&mut conn).await;
    assert!(!cipher.is_empty(), "the primary session is not encrypted");
    drop(conn);

    // The row replicated (over TLS) and a fresh replica read sees it.
    cluster.wait_for_replicas(WAIT).await.unwrap();
    let mut reader = pool.get().await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let count: Count = diesel::sql_query("SELECT COUNT(*) AS n FROM items")
        .get_result(&mut reader)
        .await
        .unwrap();
    assert_eq!(count.n, 1);
    assert_eq!(reader.target(), Target::Replica);

    // The same server refuses a plaintext login over TCP (require_secure_transport):
    // the server's refusal (MariaDB 10.11: 1045, access denied), not a TLS failure.
    let plain = mysql_async::Opts::from_url(&cluster.primary_url()).unwrap();
    let refused = mysql_async::Conn::new(plain).await.map(drop).unwrap_err();
    assert!(
        matches!(&refused, mysql_async::Error::Server(e) if e.code == 1045),
        "{refused:?}"
    );
    let pool = SwitchablePool::<AsyncMysqlConnection>::builder()
        .primary(cluster.primary_url())
        .primary_checkout_timeout(Duration::from_secs(3))
        .build()
        .await
        .unwrap();
    let error = pool.get_primary().await.map(drop).unwrap_err();
    assert_eq!(error.tls_failure(), None, "{error:?}");
    assert!(
        matches!(
            error,
            Error::PrimaryUnavailable {
                kind: FailureKind::Authentication,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!format!("{error} {error:?}").contains(cluster.app_password()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_fails_in_tls_terms() {
    let cluster = MariaCluster::builder()
        .replicas(0)
        .tls(true)
        .start()
        .await
        .unwrap();
    let password = cluster.app_password().to_owned();

    // Another CA than the cluster's.
    let other = other_ca_pem(cluster.dir()).unwrap();
    let error = primary_checkout_error(&tls_url(&cluster.primary_url(), &other), &password).await;
    assert_tls_failure(&error, TlsFailure::CertificateNotTrusted);

    // No CA of its own: the built-in (public) roots do not sign the cluster's.
    let url = format!("{}?require_ssl=true", cluster.primary_url());
    let error = primary_checkout_error(&url, &password).await;
    assert_tls_failure(&error, TlsFailure::CertificateNotTrusted);

    // verify_ca=false encrypts without verifying: it connects, encrypted.
    let url = format!("{}?require_ssl=true&verify_ca=false", cluster.primary_url());
    let pool = SwitchablePool::<AsyncMysqlConnection>::builder()
        .primary(url)
        .build()
        .await
        .unwrap();
    let mut conn = pool.get_primary().await.unwrap();
    assert!(!cipher_of(&mut conn).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requiring_tls_of_a_server_without_it_fails_in_tls_terms() {
    let cluster = MariaCluster::start(0).await.unwrap();
    let password = cluster.app_password().to_owned();
    let other = other_ca_pem(cluster.dir()).unwrap();
    for url in [
        format!("{}?require_ssl=true", cluster.primary_url()),
        tls_url(&cluster.primary_url(), &other),
    ] {
        let error = primary_checkout_error(&url, &password).await;
        assert_tls_failure(&error, TlsFailure::ServerWithoutTls);
    }
    // Not asking for TLS, the same server serves (in plaintext).
    let pool = SwitchablePool::<AsyncMysqlConnection>::builder()
        .primary(cluster.primary_url())
        .build()
        .await
        .unwrap();
    let mut conn = pool.get_primary().await.unwrap();
    assert_eq!(cipher_of(&mut conn).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diesel_async_establish_uses_the_same_tls() {
    // diesel-async's own connection shares mysql_async with this crate: it gains
    // TLS from the same feature, with mysql_async's URL parameters (no `ssl_ca`).
    let cluster = MariaCluster::builder()
        .replicas(0)
        .tls(true)
        .start()
        .await
        .unwrap();
    let url = format!("{}?require_ssl=true&verify_ca=false", cluster.primary_url());
    let mut conn = AsyncMysqlConnection::establish(&url).await.unwrap();
    let row: Status = diesel::sql_query(SSL_CIPHER)
        .get_result(&mut conn)
        .await
        .unwrap();
    assert!(!row.value.is_empty());
}
