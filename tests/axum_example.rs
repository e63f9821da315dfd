//! The axum example (`examples/axum_handlers.rs`) served against a real primary +
//! 2 replicas and driven over HTTP: read handlers run on replicas, the writing
//! handler on the primary, and a "read-only" handler that writes is caught by the
//! interlock and shows in `/metrics` and `/audit`.
#![cfg(feature = "axum")]

mod common;

#[path = "../examples/axum_handlers.rs"]
#[allow(dead_code)]
mod example;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use common::{as_user, create_role, shared_cluster, statement_calls_by, WAIT};
use diesel_async::AsyncPgConnection;
use diesel_rwsplit::{InterlockMode, SwitchReason, SwitchablePool, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A response as the tiny client below reads it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn target(&self) -> Option<&str> {
        self.header(example::TARGET_HEADER)
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to EOF.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, None, "").await
}

/// Serve the example's router over `pool` on an ephemeral loopback port.
async fn serve(pool: SwitchablePool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = example::app(pool);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn pool(mode: InterlockMode) -> SwitchablePool {
    let cluster = shared_cluster();
    SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .interlock(mode)
        .build()
        .await
        .unwrap()
}

/// A pool whose connections log in as `role`, a role of the test's own: the nodes'
/// pg_stat_statements then tell this test's statements from those of the tests
/// running the same handlers at the same time.
async fn pool_as(mode: InterlockMode, role: &str) -> SwitchablePool {
    let cluster = shared_cluster();
    create_role(cluster, role).await;
    SwitchablePool::<AsyncPgConnection>::builder()
        .primary(as_user(&cluster.primary_url(), role))
        .replicas(cluster.replica_urls().iter().map(|url| as_user(url, role)))
        .interlock(mode)
        .build()
        .await
        .unwrap()
}

/// Calls by `role` of statements starting with `verb` and mentioning `needle`: on
/// the primary, and on the replicas added up.
async fn calls_by(role: &str, verb: &str, needle: &str) -> (i64, i64) {
    let cluster = shared_cluster();
    let on_primary = statement_calls_by(&cluster.primary_url(), role, verb, needle).await;
    let mut on_replicas = 0;
    for url in cluster.replica_urls() {
        on_replicas += statement_calls_by(&url, role, verb, needle).await;
    }
    (on_primary, on_replicas)
}

/// A unique e-mail address per call (tests of this binary share one cluster).
fn unique_email(name: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}@axum.test",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Create a user through `POST /users` (a form) and return its id.
async fn create_user(addr: SocketAddr, name: &str, email: &str) -> i64 {
    let reply = request(
        addr,
        "POST",
        "/users",
        Some("application/x-www-form-urlencoded"),
        &format!(
            "name={}&email={}",
            name.replace(' ', "+"),
            email.replace('@', "%40")
        ),
    )
    .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let id: i64 = reply.body.split('\t').next().unwrap().parse().unwrap();
    assert_eq!(reply.body, format!("{id}\t{name}\t{email}\n"));
    assert_eq!(
        reply.header("location"),
        Some(format!("/users/{id}").as_str())
    );
    assert_eq!(reply.target(), Some("primary"));
    id
}

#[tokio::test]
async fn reads_run_on_replicas_and_writes_on_the_primary() {
    const ROLE: &str = "axum_reads";
    let cluster = shared_cluster();
    let pool = pool_as(InterlockMode::Switch, ROLE).await;
    let addr = serve(pool.clone()).await;

    // The writing handler (PrimaryConn) checks out the primary; nothing flips.
    let before = pool.stats();
    let email = unique_email("ada");
    let id = create_user(addr, "Ada Lovelace", &email).await;
    let after = pool.stats();
    assert_eq!(
        after.checkouts(Target::Primary) - before.checkouts(Target::Primary),
        1
    );
    assert_eq!(
        after.statements(Target::Primary) - before.statements(Target::Primary),
        1
    );
    assert_eq!(
        after.checkouts(Target::Replica),
        before.checkouts(Target::Replica)
    );
    assert_eq!(after.total_switches(), 0);
    // The nodes agree: the INSERT ran on the primary and nowhere else.
    assert_eq!(calls_by(ROLE, "insert", "users").await, (1, 0));

    // Read-your-writes: the POST answered with the row itself; a GET through a
    // replica is only guaranteed to see it once the replicas have replayed it.
    cluster.wait_for_replicas(WAIT).await.unwrap();

    // The read handlers (ReplicaConn) run on replicas: one statement each, no flip,
    // no primary checkout.
    let before = pool.stats();
    let one = get(addr, &format!("/users/{id}")).await;
    assert_eq!(one.status, 200, "{one:?}");
    assert_eq!(one.body, format!("{id}\tAda Lovelace\t{email}\n"));
    assert_eq!(one.target(), Some("replica"));
    let list = get(addr, "/users").await;
    assert_eq!(list.status, 200, "{list:?}");
    assert!(
        list.body
            .lines()
            .any(|l| l == format!("{id}\tAda Lovelace\t{email}")),
        "{list:?}"
    );
    assert_eq!(list.target(), Some("replica"));
    let after = pool.stats();
    assert_eq!(
        after.statements(Target::Replica) - before.statements(Target::Replica),
        2
    );
    assert_eq!(
        after.checkouts(Target::Replica) - before.checkouts(Target::Replica),
        2
    );
    assert_eq!(
        after.statements(Target::Primary),
        before.statements(Target::Primary)
    );
    assert_eq!(
        after.checkouts(Target::Primary),
        before.checkouts(Target::Primary)
    );
    assert_eq!(after.total_switches(), 0);
    // The nodes agree: both reads ran on replicas, none on the primary.
    assert_eq!(
        calls_by(ROLE, "select", "users").await,
        (0, 2),
        "(reads on the primary, reads on the replicas)"
    );

    // A plain-text body is a name; the address is made up.
    let reply = request(addr, "POST", "/users", Some("text/plain"), "grace").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert!(reply.body.contains("\tgrace\tgrace-"), "{reply:?}");

    // Handler errors: duplicate address, empty name.
    let duplicate = request(
        addr,
        "POST",
        "/users",
        Some("application/x-www-form-urlencoded"),
        &format!("name=again&email={email}"),
    )
    .await;
    assert_eq!(duplicate.status, 409, "{duplicate:?}");
    let empty = request(addr, "POST", "/users", Some("text/plain"), "  ").await;
    assert_eq!(empty.status, 400, "{empty:?}");
    assert_eq!(pool.stats().total_switches(), 0);
}

/// A read that finds no row, on a replica: `404`. (Regression: with read retry on,
/// the default, a zero-row replica read used to fail with "connection closed":
/// its row stream was polled again after it had ended.)
#[tokio::test]
async fn an_unknown_user_is_404_on_a_replica() {
    let pool = pool(InterlockMode::Switch).await;
    let addr = serve(pool.clone()).await;
    let missing = get(addr, "/users/-1").await;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (404, "not found\n")
    );
    let stats = pool.stats();
    assert_eq!(stats.statements(Target::Replica), 1);
    assert_eq!(stats.total_switches(), 0);
    assert_eq!(stats.read_retries(), 0);
}

#[tokio::test]
async fn a_read_handler_that_writes_is_caught_counted_and_audited() {
    const ROLE: &str = "axum_profile";
    let cluster = shared_cluster();
    let pool = pool_as(InterlockMode::Switch, ROLE).await;
    let addr = serve(pool.clone()).await;
    let email = unique_email("linus");
    let id = create_user(addr, "Linus", &email).await;
    cluster.wait_for_replicas(WAIT).await.unwrap();

    let calls: u64 = 3;
    for call in 1..=calls {
        let before = pool.stats();
        let reply = get(addr, &format!("/users/{id}/profile")).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body, format!("{id}\tLinus\t{email}\t0 orders\n"));
        // The connection ended on the primary: the interlock flipped it.
        assert_eq!(reply.target(), Some("primary"));
        let after = pool.stats();
        assert_eq!(
            after.switches(SwitchReason::WriteStatement),
            call,
            "exactly one flip per call"
        );
        assert_eq!(after.total_switches(), call);
        // The two reads ran on the replica, the INSERT on the primary.
        assert_eq!(
            after.statements(Target::Replica) - before.statements(Target::Replica),
            2
        );
        assert_eq!(
            after.statements(Target::Primary) - before.statements(Target::Primary),
            1
        );
    }

    // The nodes agree: the reads ran on replicas, the INSERTs on the primary.
    assert_eq!(
        calls_by(ROLE, "select", "users").await,
        (0, calls as i64),
        "(user reads on the primary, on the replicas)"
    );
    assert_eq!(
        calls_by(ROLE, "select", "orders").await,
        (0, calls as i64),
        "(order counts on the primary, on the replicas)"
    );
    assert_eq!(calls_by(ROLE, "insert", "events").await, (calls as i64, 0));

    // Every call's event was written (on the primary).
    let primary = common::admin(&cluster.primary_url()).await;
    let events: i64 = primary
        .query_one(
            "SELECT count(*) FROM events WHERE kind = 'profile_view' AND payload = $1",
            &[&id.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, calls as i64);

    // /metrics: Prometheus text with the flips.
    let metrics = get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        Some(diesel_rwsplit::axum::PROMETHEUS_CONTENT_TYPE)
    );
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l == format!("rwsplit_switches_total{{reason=\"write_statement\"}} {calls}")),
        "{}",
        metrics.body
    );
    assert!(metrics
        .body
        .lines()
        .any(|l| l == "rwsplit_switches_total{reason=\"transaction_begin\"} 0"));

    // /audit: the INSERT's fingerprint, under write_statement.
    let report = pool.audit_report();
    assert_eq!(report.trips_by_reason.get("write_statement"), Some(&calls));
    let entry = report
        .statements
        .iter()
        .find(|e| e.fingerprint.contains("events"))
        .unwrap_or_else(|| panic!("no audit entry for the events INSERT: {report:?}"));
    assert_eq!(entry.reason, "write_statement");
    assert!(entry.fingerprint.starts_with("insert into"), "{entry:?}");
    assert!(!entry.fingerprint.contains(&id.to_string()), "{entry:?}");
    let audit = get(addr, "/audit").await;
    assert_eq!(audit.status, 200);
    assert!(
        audit.body.contains("interlock mode: switch"),
        "{}",
        audit.body
    );
    assert!(
        audit.body.contains(&format!("write_statement={calls}")),
        "{}",
        audit.body
    );
    let audited = audit
        .body
        .lines()
        .find(|l| l.contains("events"))
        .unwrap_or_else(|| panic!("no events line in /audit:\n{}", audit.body));
    assert!(audited.contains("write_statement"), "{audited}");
    assert!(audited.contains(&entry.fingerprint), "{audited}");
}

/// Every flip of the surprise write is counted under its fingerprint, not only
/// the first. (Regression: diesel's static query ids cache the verdict, and a
/// cached verdict used to come without the statement, so only the first flip of a
/// typed query reached the audit table.)
#[tokio::test]
async fn the_audit_counts_every_flip_of_the_surprise_write() {
    let cluster = shared_cluster();
    let pool = pool(InterlockMode::Switch).await;
    let addr = serve(pool.clone()).await;
    let id = create_user(addr, "Barbara", &unique_email("barbara")).await;
    cluster.wait_for_replicas(WAIT).await.unwrap();
    for _ in 0..3 {
        assert_eq!(get(addr, &format!("/users/{id}/profile")).await.status, 200);
    }
    let report = pool.audit_report();
    let counts: Vec<(&str, u64)> = report
        .statements
        .iter()
        .map(|e| (e.fingerprint.as_str(), e.count))
        .collect();
    assert_eq!(
        counts,
        [(
            "insert into \"events\" (\"kind\", \"payload\") values (?, ?)",
            3
        )]
    );
}

#[tokio::test]
async fn in_raise_mode_the_write_in_a_read_handler_is_refused() {
    let cluster = shared_cluster();
    let pool = pool(InterlockMode::Raise).await;
    let addr = serve(pool.clone()).await;
    let email = unique_email("mallory");
    // PrimaryConn is on the primary from the start: Raise does not concern it.
    let id = create_user(addr, "Mallory", &email).await;
    cluster.wait_for_replicas(WAIT).await.unwrap();

    let reply = get(addr, &format!("/users/{id}/profile")).await;
    assert_eq!(reply.status, 500, "{reply:?}");
    assert_eq!(reply.body, "a read-only handler tried to write\n");
    let stats = pool.stats();
    assert_eq!(stats.refusals(SwitchReason::WriteStatement), 1);
    assert_eq!(stats.total_switches(), 0);
    let primary = common::admin(&cluster.primary_url()).await;
    let events: i64 = primary
        .query_one(
            "SELECT count(*) FROM events WHERE kind = 'profile_view' AND payload = $1",
            &[&id.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 0, "nothing was written");
    // Pure reads are unaffected.
    assert_eq!(get(addr, &format!("/users/{id}")).await.status, 200);
}

#[tokio::test]
async fn no_connection_is_a_503_that_names_no_node() {
    // A replica on a port nobody listens on, and no fallback to the primary.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cluster = shared_cluster();
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas([format!("postgres://app:s3cret@127.0.0.1:{port}/postgres")])
        .fallback_to_primary(false)
        .verify_on_build(false)
        .build()
        .await
        .unwrap();
    let addr = serve(pool).await;
    let reply = get(addr, "/users/1").await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.body, "database unavailable (replica)\n");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(!reply.body.contains(&port.to_string()));
    assert!(!reply.body.contains("s3cret"));
    // The primary is still there for the writing handler.
    let email = unique_email("still");
    create_user(addr, "Still Here", &email).await;
}
