//! `SwitchableDeadpool`: a deadpool pool of switchable connections.

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::{admin, as_user, create_role, create_table, port_of, shared_cluster, WAIT};
use deadpool::managed::Object;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{
    SwitchReason, SwitchableConnection, SwitchableDeadpool, SwitchableDeadpoolManager,
    SwitchableObject, SwitchablePool, Target,
};

/// An inner pool that connects as `role` (so that its sessions can be counted on
/// each node) with a primary pool of one connection: a primary connection kept by
/// an idle pooled item would make `get_primary()` time out.
async fn inner_pool(
    cluster: &LocalCluster,
    role: &str,
    primary_checkout_timeout: Duration,
) -> SwitchablePool {
    create_role(cluster, role).await;
    SwitchablePool::<AsyncPgConnection>::builder()
        .primary(as_user(&cluster.primary_url(), role))
        .replicas(cluster.replica_urls().iter().map(|url| as_user(url, role)))
        .primary_max_size(1)
        .primary_checkout_timeout(primary_checkout_timeout)
        .build()
        .await
        .unwrap()
}

async fn deadpool(cluster: &LocalCluster, role: &str, max_size: usize) -> SwitchableDeadpool {
    let inner = inner_pool(cluster, role, Duration::from_secs(2)).await;
    SwitchableDeadpool::builder(SwitchableDeadpoolManager::from_pool(inner))
        .max_size(max_size)
        .build()
        .unwrap()
}

fn id(conn: &SwitchableObject) -> deadpool::managed::ObjectId {
    Object::id(SwitchableObject::object(conn))
}

fn replica_ports(cluster: &LocalCluster) -> Vec<i32> {
    cluster.replica_urls().iter().map(|u| port_of(u)).collect()
}

#[tokio::test]
async fn a_deadpool_pool_hands_out_replica_first_connections_reset_on_return() {
    let cluster = shared_cluster();
    let role = "dp_reset";
    create_table(cluster, "CREATE TABLE dp_items (id SERIAL PRIMARY KEY)").await;
    let pool = deadpool(cluster, role, 1).await;
    let debug = format!("{:?}", pool.manager());
    assert!(debug.starts_with("SwitchableDeadpoolManager"), "{debug}");
    assert!(!debug.contains("postgres://"), "no URL in Debug: {debug}");
    let inner = pool.manager().pool().clone();
    let primary_port = port_of(&cluster.primary_url());

    let mut primary_sessions = None;
    let mut item = None;
    for round in 0..5 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(*item.get_or_insert(id(&conn)), id(&conn), "one pooled item");
        assert_eq!(conn.target(), Target::Replica, "round {round}");
        assert_eq!(conn.switch_reason(), None);
        let (_, port) = backend(&mut conn).await;
        assert!(
            replica_ports(cluster).contains(&port),
            "starts on a replica"
        );
        diesel::sql_query("INSERT INTO dp_items DEFAULT VALUES")
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(conn.target(), Target::Primary);
        assert_eq!(conn.switch_reason(), Some(SwitchReason::WriteStatement));
        let (primary_pid, port) = backend(&mut conn).await;
        assert_eq!(port, primary_port, "flipped to the primary");
        drop(conn);

        // The item waits in the deadpool pool; its primary connection is back in the
        // inner pool (one connection: it would time out otherwise), the same session.
        assert_eq!(pool.status().size, 1);
        assert_eq!(pool.status().available, 1);
        let mut primary = inner
            .get_primary()
            .await
            .expect("the primary was given back");
        assert_eq!(backend(&mut primary).await, (primary_pid, primary_port));
        drop(primary);

        let sessions = role_sessions(&cluster.primary_url(), role).await;
        assert_eq!(
            *primary_sessions.get_or_insert(sessions),
            sessions,
            "round {round}: no new primary session"
        );
    }
    let rows: i64 = admin(&cluster.primary_url())
        .await
        .query_one("SELECT count(*) FROM dp_items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 5, "the rows are on the primary");
    let stats = inner.stats();
    assert_eq!(stats.switches(SwitchReason::WriteStatement), 5);
    assert_eq!(
        inner.replica_checked_out().iter().sum::<usize>(),
        1,
        "the idle item holds its replica connection, nothing more"
    );
}

#[tokio::test]
async fn an_item_returned_inside_a_raw_transaction_is_discarded() {
    let cluster = shared_cluster();
    let pool = deadpool(cluster, "dp_begin", 1).await;

    let mut conn = pool.get().await.unwrap();
    let first = id(&conn);
    let replica_backend = backend(&mut conn).await;
    assert_eq!(conn.target(), Target::Replica);
    conn.batch_execute("BEGIN").await.unwrap();
    assert_eq!(conn.target(), Target::Primary);
    assert_eq!(conn.switch_reason(), Some(SwitchReason::TransactionBegin));
    let primary_backend = backend(&mut conn).await;
    assert_eq!(primary_backend.1, port_of(&cluster.primary_url()));
    drop(conn);
    assert_eq!(pool.status().size, 0, "taken out of the pool on return");

    let mut conn = pool.get().await.unwrap();
    assert_ne!(id(&conn), first, "a new item");
    assert_eq!(conn.target(), Target::Replica);
    assert_ne!(backend(&mut conn).await, replica_backend);
    assert_eq!(pool.status().size, 1);
    session_ends(cluster, replica_backend, "the replica connection").await;
    session_ends(
        cluster,
        primary_backend,
        "the primary connection with an open BEGIN",
    )
    .await;
}

#[tokio::test]
async fn an_item_returned_while_panicking_is_discarded() {
    let cluster = shared_cluster();
    create_table(cluster, "CREATE TABLE dp_panics (id SERIAL PRIMARY KEY)").await;
    let pool = deadpool(cluster, "dp_panic", 1).await;

    let (tx, rx) = tokio::sync::oneshot::channel();
    let handler = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut conn = pool.get().await.unwrap();
            let replica_backend = backend(&mut conn).await;
            diesel::sql_query("INSERT INTO dp_panics DEFAULT VALUES")
                .execute(&mut conn)
                .await
                .unwrap();
            let primary_backend = backend(&mut conn).await;
            tx.send((id(&conn), replica_backend, primary_backend))
                .unwrap();
            panic!("a handler panics holding a flipped connection");
        })
    };
    assert!(handler.await.unwrap_err().is_panic());
    let (first, replica_backend, primary_backend) = rx.await.unwrap();
    assert_eq!(pool.status().size, 0, "taken out of the pool on return");

    let mut conn = pool.get().await.unwrap();
    assert_ne!(id(&conn), first, "a new item");
    assert_eq!(conn.target(), Target::Replica);
    assert_ne!(backend(&mut conn).await, replica_backend);
    session_ends(cluster, replica_backend, "the replica connection").await;
    session_ends(cluster, primary_backend, "the primary connection").await;
}

/// With deadpool's own `Object` (no `SwitchableObject`), nothing runs on return:
/// the item keeps its primary connection while idle and is reset at its next
/// checkout, as the docs say.
#[tokio::test]
async fn with_deadpools_own_object_the_reset_happens_at_the_next_checkout() {
    let cluster = shared_cluster();
    create_table(cluster, "CREATE TABLE dp_plain (id SERIAL PRIMARY KEY)").await;
    let inner = inner_pool(cluster, "dp_plain", Duration::from_millis(300)).await;
    let pool: deadpool::managed::Pool<SwitchableDeadpoolManager> =
        deadpool::managed::Pool::builder(SwitchableDeadpoolManager::from_pool(inner.clone()))
            .max_size(1)
            .build()
            .unwrap();

    let mut conn = pool.get().await.unwrap();
    diesel::sql_query("INSERT INTO dp_plain DEFAULT VALUES")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(conn.target(), Target::Primary);
    let first = Object::id(&conn);
    drop(conn);
    assert!(
        inner.get_primary().await.is_err(),
        "the idle item still holds the only primary connection"
    );

    let mut conn = pool.get().await.unwrap();
    assert_eq!(Object::id(&conn), first, "the same item, reset at checkout");
    assert_eq!(conn.target(), Target::Replica);
    assert_eq!(conn.switch_reason(), None);
    let (_, port) = backend(&mut conn).await;
    assert!(replica_ports(cluster).contains(&port));
    inner.get_primary().await.expect("given back at checkout");
}

/// Most polls a future is given before it must have finished.
const MAX_POLLS: usize = 400;

/// Poll `future` up to `polls` times, letting the runtime run between polls.
/// `Some` if it finished, `None` if it was dropped unfinished.
async fn poll_then_drop<F: Future>(future: F, polls: usize) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..polls {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Some(output);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

/// Nothing leaked: every item deadpool counts is idle and holds exactly one
/// replica connection of the inner pool; `expect_size` items exist.
fn nothing_leaked(pool: &SwitchableDeadpool, what: &str, expect_size: Option<usize>) {
    let status = pool.status();
    assert_eq!(status.available, status.size, "{what}: nothing checked out");
    if let Some(size) = expect_size {
        assert_eq!(status.size, size, "{what}: deadpool's item count");
    }
    assert_eq!(
        pool.manager()
            .pool()
            .replica_checked_out()
            .iter()
            .sum::<usize>(),
        status.size,
        "{what}: one replica connection per idle item, no more"
    );
}

/// A full checkout works afterwards: replica first, a write flips, the primary
/// goes back on return.
async fn checkout_works(pool: &SwitchableDeadpool, cluster: &LocalCluster) {
    let mut conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    let (_, port) = backend(&mut conn).await;
    assert!(replica_ports(cluster).contains(&port));
    diesel::sql_query("INSERT INTO dp_cuts DEFAULT VALUES")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(conn.target(), Target::Primary);
    drop(conn);
    drop(pool.manager().pool().get_primary().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_future_dropped_at_any_await_point_leaks_nothing() {
    let cluster = shared_cluster();
    create_table(cluster, "CREATE TABLE dp_cuts (id SERIAL PRIMARY KEY)").await;
    let pool = deadpool(cluster, "dp_cuts", 1).await;

    // An empty pool: the checkout makes an item (a checkout of the inner pool).
    let mut cuts = 0;
    for polls in 1..=MAX_POLLS {
        let finished = poll_then_drop(pool.get(), polls).await;
        if finished.is_some() {
            break;
        }
        cuts += 1;
        nothing_leaked(&pool, &format!("create cut after {polls} polls"), Some(0));
        assert!(polls < MAX_POLLS, "get() did not finish");
    }
    assert!(cuts >= 1, "making an item awaited");
    // The finished checkout was dropped at once: the item went back.
    nothing_leaked(&pool, "after the made item returned", Some(1));

    // An idle item: the checkout validates it (an await on its replica session).
    // Whether the first poll already finds the answer depends on the machine's
    // load, so the phase runs until at least one checkout was cut mid-validation.
    let mut cuts = 0;
    for _attempt in 0..20 {
        for polls in 1..=MAX_POLLS {
            let finished = poll_then_drop(pool.get(), polls).await;
            if finished.is_some() {
                break;
            }
            cuts += 1;
            let what = format!("recycle cut after {polls} polls");
            nothing_leaked(&pool, &what, None);
            checkout_works(&pool, cluster).await;
            nothing_leaked(&pool, &what, Some(1));
            assert!(polls < MAX_POLLS, "get() did not finish");
        }
        if cuts >= 1 {
            break;
        }
    }
    assert!(cuts >= 1, "validating an item awaited");
    checkout_works(&pool, cluster).await;
    nothing_leaked(&pool, "at the end", Some(1));
}

/// Sessions of `role` on the node at `url`.
async fn role_sessions(url: &str, role: &str) -> i64 {
    admin(url)
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

/// Wait until the server session `(pid, port)` is gone: its connection was closed,
/// not kept in a pool. Fails after [`WAIT`].
async fn session_ends(cluster: &LocalCluster, (pid, port): (i32, i32), what: &str) {
    let url = std::iter::once(cluster.primary_url())
        .chain(cluster.replica_urls())
        .find(|url| port_of(url) == port)
        .expect("a node of the cluster");
    let client = admin(&url).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let alive: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if alive == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} (backend {pid} on port {port}) was kept open, not discarded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `(pid, port)` of the backend that answers.
async fn backend(conn: &mut SwitchableConnection<AsyncPgConnection>) -> (i32, i32) {
    diesel::select((
        diesel::dsl::sql::<diesel::sql_types::Integer>("pg_backend_pid()"),
        diesel::dsl::sql::<diesel::sql_types::Integer>("inet_server_port()"),
    ))
    .get_result(conn)
    .await
    .unwrap()
}
