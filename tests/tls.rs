//! Production connections on a cluster that looks like production: TLS only
//! (`hostssl` lines, plain TCP rejected), SCRAM passwords, client certificates.
//! Every check is made on the nodes themselves (`pg_stat_ssl`, `current_user`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{
    Credentials, Error, FailureKind, NodeAddress, SwitchableConnection, SwitchablePool, Target,
    TlsFailure,
};

use common::{admin, WAIT};

/// One TLS-only SCRAM cluster for this binary; each test logs in as its own role,
/// so "every session of the role" means the sessions of that test's pool.
fn cluster() -> &'static LocalCluster {
    static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        std::thread::spawn(|| {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                LocalCluster::builder()
                    .replicas(2)
                    .tls_only(true)
                    .password_auth(true)
                    .role("tls_everywhere", "pw-everywhere")
                    .role("tls_verify", "pw-verify")
                    .role("tls_rotating", "first-password")
                    .role("tls_hook", "pw-hook")
                    .role("tls_secret", "the-right-one")
                    .cert_role("tls_cert")
                    .start()
                    .await
                    .unwrap()
            })
        })
        .join()
        .unwrap()
    })
}

fn ca() -> String {
    cluster().ca_cert_path().unwrap().display().to_string()
}

/// The cluster's URLs for `user`, with `params` appended.
fn urls(user: &str, password: Option<&str>, params: &str) -> (String, Vec<String>) {
    let cluster = cluster();
    let primary = format!("{}?{params}", cluster.primary_url_as(user, password));
    let replicas = cluster
        .replica_urls_as(user, password)
        .into_iter()
        .map(|url| format!("{url}?{params}"))
        .collect();
    (primary, replicas)
}

fn node_urls() -> Vec<String> {
    let cluster = cluster();
    std::iter::once(cluster.primary_url())
        .chain(cluster.replica_urls())
        .collect()
}

/// (sessions, encrypted sessions) of `user` on the node at `admin_url`.
async fn sessions_of(admin_url: &str, user: &str) -> (i64, i64) {
    let row = admin(admin_url)
        .await
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.usename = $1",
            &[&user],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn table(name: &str) {
    let ddl = format!(
        "CREATE TABLE {name} (id BIGSERIAL PRIMARY KEY, note TEXT NOT NULL); \
         GRANT ALL ON {name} TO PUBLIC; GRANT ALL ON SEQUENCE {name}_id_seq TO PUBLIC"
    );
    admin(&cluster().primary_url())
        .await
        .batch_execute(&ddl)
        .await
        .unwrap();
    cluster().wait_for_replicas(WAIT).await.unwrap();
}

async fn count_rows(conn: &mut diesel_rwsplit::PooledConnection, table: &str) -> i64 {
    diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
        .get_result::<Count>(conn)
        .await
        .unwrap()
        .n
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    on: bool,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

async fn insert(conn: &mut diesel_rwsplit::PooledConnection, table: &str, note: &str) {
    diesel::sql_query(format!("INSERT INTO {table} (note) VALUES ($1)"))
        .bind::<Text, _>(note)
        .execute(conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_encrypts_every_session_on_every_node() {
    let user = "tls_everywhere";
    table("tls_everywhere_notes").await;
    let (primary, replicas) = urls(user, Some("pw-everywhere"), "sslmode=require");
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(primary.clone())
        .replicas(replicas)
        .monitor_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();

    // Reads on both replicas, a flipping write, a causal read after it.
    for _ in 0..4 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(conn.target(), Target::Replica);
        count_rows(&mut conn, "tls_everywhere_notes").await;
    }
    let mut conn = pool.get().await.unwrap();
    insert(&mut conn, "tls_everywhere_notes", "over tls").await;
    assert_eq!(conn.target(), Target::Primary);
    let token = conn.causal_token().await.unwrap().unwrap();
    drop(conn);
    let mut after = pool.get_after(&token).await.unwrap();
    assert_eq!(count_rows(&mut after, "tls_everywhere_notes").await, 1);
    drop(after);
    // The monitor has sessions of its own on every node by its second round.
    common::until("the monitor polled every replica", || {
        pool.replication_status()
            .iter()
            .all(|r| r.replay_lsn.is_some())
    })
    .await;
    // The catalog reader goes over TLS too (the cluster takes nothing else).
    diesel_rwsplit::volatile_user_functions(&primary)
        .await
        .unwrap();

    for node in node_urls() {
        let (sessions, encrypted) = sessions_of(&node, user).await;
        assert!(sessions >= 2, "{node}: {sessions} sessions of {user}");
        assert_eq!(encrypted, sessions, "{node}: every session encrypted");
    }
    let monitor_sessions: i64 = admin(&cluster().primary_url())
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.usename = $1 AND a.application_name = 'diesel-rwsplit monitor' AND s.ssl",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        monitor_sessions, 1,
        "the monitor's primary session, encrypted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_trusts_the_cluster_ca_and_refuses_others() {
    let user = "tls_verify";
    let password = Some("pw-verify");
    let (primary, replicas) = urls(
        user,
        password,
        &format!("sslmode=verify-full&sslrootcert={}", ca()),
    );
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(primary)
        .replicas(replicas)
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let on: Flag =
        diesel::sql_query("SELECT ssl AS on FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .get_result(&mut conn)
            .await
            .unwrap();
    assert!(on.on);
    drop(conn);

    // Another CA: the certificate is not trusted, said in TLS terms, at once.
    let other = diesel_rwsplit::testing::other_ca_pem(cluster().dir()).unwrap();
    let (primary, _) = urls(
        user,
        password,
        &format!("sslmode=verify-full&sslrootcert={}", other.display()),
    );
    let error = primary_checkout_error(&primary, None).await;
    assert_eq!(
        error.tls_failure(),
        Some(TlsFailure::CertificateNotTrusted),
        "{error}"
    );
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

    // The cluster's CA, but a host name its certificate does not carry.
    let port = common::port_of(&cluster().primary_url_as(user, password));
    let wrong_name = |mode: &str| {
        format!(
            "postgres://{user}:pw-verify@wrong-name.invalid:{port}/postgres?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={}",
            ca()
        )
    };
    let error = primary_checkout_error(&wrong_name("verify-full"), None).await;
    assert_eq!(
        error.tls_failure(),
        Some(TlsFailure::NameMismatch),
        "{error}"
    );
    // verify-ca checks the chain only: the same name passes.
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(wrong_name("verify-ca"))
        .build()
        .await
        .unwrap();
    pool.get_primary().await.unwrap();
}

/// The error of a primary checkout that must fail, checked to come long before the
/// checkout timeout (a TLS failure is not retried).
async fn primary_checkout_error(
    url: &str,
    tls_config: Option<diesel_rwsplit::rustls::ClientConfig>,
) -> Error {
    let mut builder = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(url)
        .primary_checkout_timeout(Duration::from_secs(120));
    if let Some(config) = tls_config {
        builder = builder.tls_config(config);
    }
    let pool = builder.build().await.unwrap();
    let started = Instant::now();
    let error = match pool.get_primary().await {
        Ok(_) => panic!("{url}: the checkout should fail"),
        Err(error) => error,
    };
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "a TLS failure waited out the checkout timeout"
    );
    let text = format!("{error} {error:?}");
    assert!(!text.contains("pw-verify"), "{text}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_authentication() {
    let (cert, key) = cluster().client_cert("tls_cert").unwrap();
    let port = common::port_of(&cluster().primary_url_as("tls_cert", None));
    let url = |extra: &str| {
        format!(
            "postgres://tls_cert@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={}{extra}",
            ca()
        )
    };
    let with_cert = url(&format!(
        "&sslcert={}&sslkey={}",
        cert.display(),
        key.display()
    ));
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(with_cert.clone())
        .build()
        .await
        .unwrap();
    let mut conn = pool.get_primary().await.unwrap();
    let who: Name = diesel::sql_query("SELECT current_user::text AS name")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(who.name, "tls_cert");

    // The same through diesel-async's URL constructor.
    let mut direct = SwitchableConnection::<AsyncPgConnection>::establish(&with_cert)
        .await
        .unwrap();
    direct.batch_execute("SELECT 1").await.unwrap();

    // No certificate: the server refuses the login (`cert` in pg_hba), by SQLSTATE.
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(url(""))
        .primary_checkout_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let error = pool.get_primary().await.err().unwrap();
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_fails_fast_and_clearly() {
    let plain = common::shared_cluster();
    let url = format!("{}?sslmode=require", plain.primary_url());
    let error = primary_checkout_error(&url, None).await;
    assert_eq!(
        error.tls_failure(),
        Some(TlsFailure::ServerWithoutTls),
        "{error}"
    );
    assert!(error.to_string().contains("TLS"), "{error}");
    // Replicas fail the same way, and the read falls back to the (equally failing) primary.
    let replica = format!("{}?sslmode=require", plain.replica_urls()[0]);
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(url)
        .replicas([replica])
        .fallback_to_primary(false)
        .build()
        .await
        .unwrap();
    let error = pool.get().await.err().unwrap();
    assert!(
        matches!(error, Error::NoReplicaAvailable { .. }),
        "{error:?}"
    );
    let (ejected, _) = pool.stats().ejections();
    assert!(
        ejected >= 1,
        "the replica that refused TLS is out of rotation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_provider_keeps_the_pool_working_across_a_rotation() {
    let user = "tls_rotating";
    table("tls_rotating_notes").await;
    let current = Arc::new(Mutex::new(String::from("first-password")));
    let calls = Arc::new(AtomicUsize::new(0));
    let asked: Arc<Mutex<Vec<NodeAddress>>> = Arc::default();
    // No password in the URLs: the provider gives it for every new session.
    let (primary, replicas) = urls(user, None, "sslmode=require");
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(primary)
        .replicas(replicas)
        .credentials({
            let (current, calls, asked) = (current.clone(), calls.clone(), asked.clone());
            move |node: NodeAddress| {
                let password = current.lock().unwrap().clone();
                calls.fetch_add(1, Ordering::SeqCst);
                asked.lock().unwrap().push(node);
                async move { Ok(Credentials::password(password)) }
            }
        })
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    insert(&mut conn, "tls_rotating_notes", "before").await;
    drop(conn);
    let before = AtomicUsize::load(&calls, Ordering::SeqCst);
    assert!(
        before >= 2,
        "a replica session and a primary session: {before} calls"
    );
    assert!(asked
        .lock()
        .unwrap()
        .iter()
        .all(|node| node.host == "127.0.0.1" && node.user.as_deref() == Some(user)));

    // Rotate: the server takes only the new password from now on, and every open
    // session of the role ends, so the pool must log in again.
    admin(&cluster().primary_url())
        .await
        .batch_execute(&format!("ALTER ROLE {user} PASSWORD 'second-password'"))
        .await
        .unwrap();
    cluster().wait_for_replicas(WAIT).await.unwrap();
    *current.lock().unwrap() = String::from("second-password");
    for node in node_urls() {
        let client = admin(&node).await;
        tokio_postgres::Client::execute(
            &client,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&user],
        )
        .await
        .unwrap();
    }
    let old = tokio_postgres_login(user, "first-password").await;
    assert_eq!(old, Some("28P01".to_owned()), "the old password is refused");

    let mut conn = pool.get().await.unwrap();
    assert_eq!(count_rows(&mut conn, "tls_rotating_notes").await, 1);
    insert(&mut conn, "tls_rotating_notes", "after").await;
    assert_eq!(conn.target(), Target::Primary);
    drop(conn);
    assert!(
        AtomicUsize::load(&calls, Ordering::SeqCst) > before,
        "new sessions asked again"
    );
    for node in node_urls() {
        let (sessions, encrypted) = sessions_of(&node, user).await;
        assert_eq!(encrypted, sessions, "{node}");
    }
}

/// The SQLSTATE of a TLS login attempt as `user` (None when it succeeds).
async fn tokio_postgres_login(user: &str, password: &str) -> Option<String> {
    let url = format!(
        "{}?sslmode=require",
        cluster().primary_url_as(user, Some(password))
    );
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(url)
        .primary_checkout_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    match pool.get_primary().await {
        Ok(_) => None,
        Err(error) => Some(
            error
                .sqlstate()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("no SQLSTATE in {error:?}")),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_show_in_errors_or_debug_output() {
    let (primary, replicas) = urls("tls_secret", Some("hunter2-wrong"), "sslmode=require");
    let builder = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(primary)
        .replicas(replicas)
        .primary_checkout_timeout(Duration::from_secs(2))
        .credentials(|_node: NodeAddress| async { Ok(Credentials::password("hunter2-wrong")) });
    assert!(!format!("{builder:?}").contains("hunter2"));
    let pool = builder.build().await.unwrap();
    let error = pool.get().await.err().unwrap();
    let text = format!("{error} {error:?}");
    assert!(!text.contains("hunter2"), "{text}");
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
    let credentials = Credentials::password("hunter2-wrong").with_user("someone");
    let debug = format!("{credentials:?}");
    assert!(
        !debug.contains("hunter2") && debug.contains("someone"),
        "{debug}"
    );
    for status in pool.replication_status() {
        let error = status.last_error.unwrap_or_default();
        assert!(!error.contains("hunter2"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_credentials_provider_is_a_typed_error() {
    let (primary, _) = urls("tls_secret", None, "sslmode=require");
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(primary)
        .primary_checkout_timeout(Duration::from_secs(1))
        .credentials(|_node: NodeAddress| async {
            Err::<Credentials, _>("the vault is sealed".into())
        })
        .build()
        .await
        .unwrap();
    let error = pool.get_primary().await.err().unwrap();
    assert!(
        matches!(
            error,
            Error::PrimaryUnavailable {
                kind: FailureKind::Credentials,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_hook_runs_on_every_session_and_cannot_unlock_a_replica() {
    let (primary, replicas) = urls("tls_hook", Some("pw-hook"), "sslmode=require");
    let hooked = Arc::new(AtomicUsize::new(0));
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(primary)
        .replicas(replicas)
        .on_connect({
            let hooked = hooked.clone();
            move |conn| {
                hooked.fetch_add(1, Ordering::SeqCst);
                Box::pin(conn.batch_execute(
                    "SET application_name = 'hooked'; SET default_transaction_read_only = off",
                ))
            }
        })
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let app: Name = diesel::sql_query("SELECT current_setting('application_name') AS name")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(app.name, "hooked");
    let read_only: Name =
        diesel::sql_query("SELECT current_setting('default_transaction_read_only') AS name")
            .get_result(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        read_only.name, "on",
        "the crate's session SQL runs after the hook"
    );
    conn.switch_to_primary().await.unwrap();
    let app: Name = diesel::sql_query("SELECT current_setting('application_name') AS name")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(app.name, "hooked");
    assert_eq!(AtomicUsize::load(&hooked, Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_tls_configuration_replaces_the_urls_certificates() {
    use diesel_rwsplit::rustls;
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cluster().ca_cert_path().unwrap()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = || {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            #[allow(deprecated)]
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth()
    };
    // `require` alone would not verify; the custom configuration does, by name too.
    let port = common::port_of(&cluster().primary_url_as("tls_verify", None));
    let url = |host: &str| {
        format!("postgres://tls_verify:pw-verify@{host}:{port}/postgres?hostaddr=127.0.0.1&sslmode=require")
    };
    let error = primary_checkout_error(&url("wrong-name.invalid"), Some(config())).await;
    assert_eq!(
        error.tls_failure(),
        Some(TlsFailure::NameMismatch),
        "{error}"
    );
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(url("localhost"))
        .tls_config(config())
        .build()
        .await
        .unwrap();
    pool.get_primary().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_reaches_a_tls_only_server() {
    let (primary, replicas) = urls("tls_hook", Some("pw-hook"), "sslmode=require");
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(primary)
        .replicas(replicas)
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let token = conn.cancel_token();
    // A token for a TLS session insists on TLS: plain text is refused by the client.
    assert!(token.cancel_query(tokio_postgres::NoTls).await.is_err());
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        diesel_rwsplit::cancel_query(&token).await.unwrap();
    });
    let started = Instant::now();
    let result = diesel::sql_query("SELECT pg_sleep(10)")
        .execute(&mut conn)
        .await;
    canceller.await.unwrap();
    assert!(result.is_err(), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cancelled, not finished"
    );
}
