//! Every public future of the crate, dropped at each of its await points: it is
//! polled N times (N = 1, 2, ...) with a waker that does nothing, the runtime
//! is given time between polls so that its I/O makes progress, and then it is
//! dropped. After each drop the connection and the pool must still work and the
//! checked-out counts must balance.

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::{port_of, server_port, token_after_write, write_event};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{InterlockMode, SwitchablePool, Target};

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

/// Drop the future made by `make` after 1, 2, 3, ... polls until it finishes;
/// run `check` after every drop. Returns how many await points were cut.
async fn cut_everywhere<F, Fut, C, CFut>(what: &str, mut make: F, mut check: C) -> usize
where
    F: FnMut() -> Fut,
    Fut: Future,
    C: FnMut() -> CFut,
    CFut: Future<Output = ()>,
{
    for polls in 1..=MAX_POLLS {
        let finished = poll_then_drop(make(), polls).await.is_some();
        check().await;
        if finished {
            return polls - 1;
        }
    }
    panic!("{what} did not finish within {MAX_POLLS} polls");
}

async fn pool(cluster: &LocalCluster, mode: InterlockMode) -> SwitchablePool {
    SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .interlock(mode)
        .primary_max_size(2)
        .replica_max_size(2)
        .replica_statement_timeout(Duration::from_secs(5))
        .monitor_interval(Duration::from_millis(100))
        .causal_wait(Duration::from_millis(100))
        .build()
        .await
        .unwrap()
}

/// The pool still hands out working connections, on the right nodes, and nothing
/// is left checked out.
async fn pool_works(pool: &SwitchablePool, cluster: &LocalCluster) {
    assert_eq!(pool.replica_checked_out(), vec![0, 0], "nothing leaked");
    let mut conn = pool.get().await.unwrap();
    if pool.interlock() != InterlockMode::Observe {
        assert_eq!(conn.target(), Target::Replica);
        let port = server_port(&mut conn).await;
        assert_ne!(port, port_of(&cluster.primary_url()));
    }
    write_event(&mut conn, cluster, "cancel_check").await;
    drop(conn);
    assert_eq!(pool.replica_checked_out(), vec![0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_future_can_be_dropped_at_every_await_point() {
    let cluster = LocalCluster::start(2).await.unwrap();
    cluster.apply_example_schema().await.unwrap();
    let pool = pool(&cluster, InterlockMode::Switch).await;

    let cut = cut_everywhere("get()", || pool.get(), || pool_works(&pool, &cluster)).await;
    assert!(cut >= 1, "get() awaited at least once");
    cut_everywhere(
        "get_primary()",
        || pool.get_primary(),
        || pool_works(&pool, &cluster),
    )
    .await;

    // A statement that flips, cut while the primary is checked out or the write runs;
    // the same connection is used afterwards.
    let mut conn = pool.get().await.unwrap();
    let mut flips = 0;
    for polls in 1..=MAX_POLLS {
        let write =
            diesel::sql_query("INSERT INTO events (kind) VALUES ('cut_write')").execute(&mut *conn);
        let finished = poll_then_drop(write, polls).await.is_some();
        // Whatever happened, the connection is on a node and serves a read and a write.
        let port = server_port(&mut conn).await;
        match conn.target() {
            Target::Primary => assert_eq!(port, port_of(&cluster.primary_url())),
            Target::Replica => assert_ne!(port, port_of(&cluster.primary_url())),
        }
        if finished {
            flips = polls;
            break;
        }
        if conn.target() == Target::Primary {
            // Flipped already: start again from a replica for the next cut.
            drop(conn);
            conn = pool.get().await.unwrap();
        }
    }
    assert!(flips > 1, "the flip awaited");
    drop(conn);
    pool_works(&pool, &cluster).await;

    cut_everywhere(
        "get_for_session()",
        || pool.get_for_session("cut-session"),
        || pool_works(&pool, &cluster),
    )
    .await;
    cut_everywhere(
        "wait_for_replication()",
        || pool.wait_for_replication(Duration::from_secs(5)),
        || pool_works(&pool, &cluster),
    )
    .await;

    // A re-runnable replica read, and a transaction begin.
    cut_everywhere(
        "a replica read",
        || async {
            let mut conn = pool.get().await.unwrap();
            server_port(&mut conn).await
        },
        || pool_works(&pool, &cluster),
    )
    .await;
    cut_everywhere(
        "transaction()",
        || async {
            let mut conn = pool.get().await.unwrap();
            conn.transaction::<_, diesel::result::Error, _>(async |conn| {
                diesel::sql_query("INSERT INTO events (kind) VALUES ('cut_tx')")
                    .execute(conn)
                    .await
            })
            .await
            .unwrap()
        },
        || pool_works(&pool, &cluster),
    )
    .await;

    // A causal read that must wait for paused replicas, cut while it waits.
    cluster.pause_replay(0).await.unwrap();
    cluster.pause_replay(1).await.unwrap();
    let token = token_after_write(&pool, &cluster, "cut_causal").await;
    cut_everywhere(
        "get_after()",
        || pool.get_after(&token),
        || pool_works(&pool, &cluster),
    )
    .await;
    cluster.resume_replay(0).await.unwrap();
    cluster.resume_replay(1).await.unwrap();

    let stats = pool.stats();
    assert_eq!(
        stats.ejections().0,
        0,
        "no healthy node was ejected: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_futures_can_be_dropped_too() {
    let cluster = LocalCluster::start(2).await.unwrap();
    cluster.apply_example_schema().await.unwrap();
    let pool = pool(&cluster, InterlockMode::Observe).await;
    cut_everywhere(
        "Observe begin_test_transaction",
        || async {
            let mut conn = pool.get().await.unwrap();
            conn.begin_test_transaction().await.unwrap();
        },
        || pool_works(&pool, &cluster),
    )
    .await;
}
