//! Failure and cancellation paths driven through the deterministic fault seam
//! (`testing::Faults`) on a real cluster: each fault strikes exactly where it is
//! put, whatever the timing.

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::Duration;

use common::{backend_pid, port_of, server_port, terminate, token_after_write, until, write_event};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::testing::{Fault, FaultNode, FaultStep, Faults, LocalCluster};
use diesel_rwsplit::{FailureKind, SwitchablePool, SwitchablePoolBuilder, Target};

async fn setup() -> (LocalCluster, SwitchablePool, Faults) {
    setup_with(|builder| builder).await
}

/// A 1 + 2 cluster and a pool over it with the fault seam in place; `configure`
/// adjusts the pool's builder.
async fn setup_with(
    configure: impl FnOnce(SwitchablePoolBuilder) -> SwitchablePoolBuilder,
) -> (LocalCluster, SwitchablePool, Faults) {
    let cluster = LocalCluster::start(2).await.unwrap();
    cluster.apply_example_schema().await.unwrap();
    let faults = Faults::new();
    let builder = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .ejection_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .faults(faults.clone());
    let pool = configure(builder).build().await.unwrap();
    (cluster, pool, faults)
}

/// Poll a future a few times with a waker that does nothing, then drop it.
async fn poll_a_little_then_drop<F: Future>(future: F) {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..5 {
        assert!(
            future.as_mut().poll(&mut cx).is_pending(),
            "the fault holds it"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_checkout_ejects_and_a_saturated_one_does_not() {
    let (cluster, pool, faults) = setup().await;
    let other = port_of(&cluster.replica_url(1).unwrap());

    faults.inject(
        FaultNode::Replica(0),
        FaultStep::Checkout,
        Fault::Fail(FailureKind::Saturated),
    );
    let mut conn = pool.get().await.unwrap();
    assert_eq!(
        server_port(&mut conn).await,
        other,
        "the next replica served"
    );
    drop(conn);
    assert_eq!(pool.stats().ejections().0, 0, "busy is not dead");
    assert_eq!(pool.stats().replica_saturations(), 1);
    assert_eq!(pool.replica_admitted(), vec![true, true]);

    // Round robin comes back to replica 0: make it refuse.
    faults.inject(
        FaultNode::Replica(0),
        FaultStep::Checkout,
        Fault::Fail(FailureKind::Refused),
    );
    faults.inject(
        FaultNode::Replica(1),
        FaultStep::Checkout,
        Fault::Fail(FailureKind::Refused),
    );
    let mut conn = pool.get().await.unwrap();
    // Both refused: the primary served it, counted.
    assert_eq!(conn.target(), Target::Primary);
    assert_eq!(
        server_port(&mut conn).await,
        port_of(&cluster.primary_url())
    );
    drop(conn);
    let stats = pool.stats();
    assert_eq!(stats.ejections().0, 2);
    assert_eq!(stats.replica_fallbacks(), 1);
    // The probes find both nodes well and re-admit them.
    until("both re-admitted", || {
        pool.replica_admitted() == vec![true, true]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_dropped_while_it_hangs_leaks_nothing() {
    let (_cluster, pool, faults) = setup().await;
    for _ in 0..3 {
        faults.inject(FaultNode::Replica(0), FaultStep::Checkout, Fault::Hang);
        faults.inject(FaultNode::Replica(1), FaultStep::Checkout, Fault::Hang);
        poll_a_little_then_drop(pool.get()).await;
        assert_eq!(
            pool.replica_checked_out(),
            vec![0, 0],
            "outstanding counts balance"
        );
        faults.clear();
    }
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_dropped_while_the_primary_hangs_leaves_the_connection_on_its_replica() {
    let (cluster, pool, faults) = setup().await;
    let mut conn = pool.get().await.unwrap();
    let replica = server_port(&mut conn).await;
    faults.inject(FaultNode::Primary, FaultStep::Checkout, Fault::Hang);
    poll_a_little_then_drop(
        diesel::sql_query("INSERT INTO events (kind) VALUES ('seam_flip')").execute(&mut *conn),
    )
    .await;
    assert_eq!(conn.target(), Target::Replica);
    assert_eq!(server_port(&mut conn).await, replica);
    write_event(&mut conn, &cluster, "seam_flip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_retry_dropped_while_the_next_node_hangs_keeps_a_node_in_hand() {
    let (cluster, pool, faults) = setup().await;
    let mut conn = pool.get().await.unwrap();
    let first = server_port(&mut conn).await;
    let (first_index, next_index) = if first == port_of(&cluster.replica_url(0).unwrap()) {
        (0, 1)
    } else {
        (1, 0)
    };
    // Kill the session under the connection; the retry then hangs on the next node
    // (and on the primary, should it fall back).
    let pid = backend_pid(&mut conn).await;
    terminate(&cluster.replica_url(first_index).unwrap(), pid).await;
    faults.inject(
        FaultNode::Replica(next_index),
        FaultStep::Checkout,
        Fault::Hang,
    );
    faults.inject(FaultNode::Primary, FaultStep::Checkout, Fault::Hang);
    let port_read = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
        "inet_server_port()",
    ));
    poll_a_little_then_drop(port_read.get_result::<i32>(&mut *conn)).await;
    assert!(
        faults.hits(FaultNode::Replica(next_index), FaultStep::Checkout)
            + faults.hits(FaultNode::Primary, FaultStep::Checkout)
            >= 1,
        "the retry reached the hanging checkout"
    );
    // Still on a node (the broken one): the next read retries and succeeds.
    assert_eq!(conn.target(), Target::Replica);
    let port = server_port(&mut conn).await;
    assert_ne!(port, first, "ran on another node after the dead session");
    drop(conn);
    assert_eq!(pool.replica_checked_out(), vec![0, 0]);
    // One terminated session does not eject a healthy replica.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.stats().ejections().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspected_replica_that_does_not_serve_a_new_session_is_ejected() {
    let (cluster, pool, faults) = setup().await;
    let mut conn = pool.get().await.unwrap();
    let first = server_port(&mut conn).await;
    let index = usize::from(first != port_of(&cluster.replica_url(0).unwrap()));
    let pid = backend_pid(&mut conn).await;
    faults.inject(
        FaultNode::Replica(index),
        FaultStep::Probe,
        Fault::Fail(FailureKind::NotAccepting),
    );
    terminate(&cluster.replica_url(index).unwrap(), pid).await;
    let port = server_port(&mut conn).await;
    assert_ne!(port, first);
    until("the suspected replica is ejected", || {
        pool.stats().ejections().0 == 1
    })
    .await;
    assert_eq!(faults.hits(FaultNode::Replica(index), FaultStep::Probe), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_causal_read_is_bounded_even_when_replica_checkouts_hang() {
    let (cluster, pool, faults) =
        setup_with(|builder| builder.causal_wait(Duration::from_millis(200))).await;
    let token = token_after_write(&pool, &cluster, "seam_causal").await;
    for _ in 0..2 {
        faults.inject(FaultNode::Replica(0), FaultStep::Checkout, Fault::Hang);
        faults.inject(FaultNode::Replica(1), FaultStep::Checkout, Fault::Hang);
    }
    let conn = tokio::time::timeout(Duration::from_secs(3), pool.get_after(&token))
        .await
        .expect("bounded by causal_wait, not by the hanging checkouts")
        .unwrap();
    assert_eq!(conn.target(), Target::Primary);
    assert_eq!(
        pool.stats()
            .causal_reads(diesel_rwsplit::CausalOutcome::Primary),
        1
    );
    drop(conn);
    assert_eq!(pool.replica_checked_out(), vec![0, 0]);
}
