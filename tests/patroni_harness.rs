//! `testing::PatroniCluster` against real Patroni, etcd and PostgreSQL: start-up,
//! a planned switchover, an unplanned failover and the old leader's rejoin.
//!
//! Slow by nature (a cluster takes 10-18 s to come up, a failover about 21 s);
//! each test has its own cluster, so they run in parallel.

use std::time::{Duration, Instant};

use diesel_rwsplit::testing::PatroniCluster;
use tokio_postgres::{Client, NoTls};

const WAIT: Duration = Duration::from_secs(60);

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    tokio::spawn(connection);
    client
}

async fn in_recovery(url: &str) -> bool {
    connect(url)
        .await
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Wait until `id` is readable in `table` on the server at `url` (the table itself
/// may not have been replayed yet: SQLSTATE 42P01 until then).
async fn wait_for_row(url: &str, table: &str, id: i64) {
    let client = connect(url).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let sql = format!("SELECT count(*) FROM {table} WHERE id = $1");
    loop {
        let found = client.query_one(&sql, &[&id]).await;
        match found {
            Ok(row) if row.get::<_, i64>(0) == 1 => return,
            Ok(_) => {}
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {}
            Err(e) => panic!("reading {table} on {url}: {e}"),
        }
        assert!(Instant::now() < deadline, "row {id} never reached {url}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until the server at `url` has a streaming WAL sender for `member`.
async fn wait_streaming_to(url: &str, member: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let senders = streaming_to(url).await;
        if senders.iter().any(|s| s == member) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{member} never streamed from {url} (WAL senders: {senders:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The WAL sender names (Patroni's member names) streaming from the server at `url`.
async fn streaming_to(url: &str) -> Vec<String> {
    let rows = connect(url)
        .await
        .query(
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

/// Prints how long a test took, when it ends (also by a panic).
struct Took(&'static str, Instant);

impl Drop for Took {
    fn drop(&mut self) {
        eprintln!("{} took {:?}", self.0, self.1.elapsed());
    }
}

async fn start() -> PatroniCluster {
    let started = Instant::now();
    let cluster = PatroniCluster::builder()
        .members(3)
        .tag(2, "group", "analytics")
        .start()
        .await
        .unwrap();
    eprintln!(
        "3 Patroni members up in {:?} under {}",
        started.elapsed(),
        cluster.dir().display()
    );
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_one_leader_two_streaming_replicas_a_write_reaches_both() {
    let _took = Took(
        "three_members_one_leader_two_streaming_replicas_a_write_reaches_both",
        Instant::now(),
    );
    let cluster = start().await;
    let status = cluster.cluster_status().await.unwrap();
    assert_eq!(status.scope, cluster.scope());
    assert_eq!(status.members.len(), 3, "{status:?}");
    let leaders: Vec<_> = status
        .members
        .iter()
        .filter(|m| m.role == "leader")
        .collect();
    assert_eq!(leaders.len(), 1, "{status:?}");
    let leader = cluster.leader().await.unwrap().expect("a leader");
    assert_eq!(leaders[0].index, Some(leader));
    assert_eq!(
        status
            .member("member2")
            .unwrap()
            .tags
            .get("group")
            .map(String::as_str),
        Some("analytics")
    );
    assert_eq!(cluster.member_names(), ["member0", "member1", "member2"]);
    assert_eq!(cluster.rest_urls().len(), 3);

    for (index, url) in cluster.member_urls().into_iter().enumerate() {
        let member = status.member(&format!("member{index}")).unwrap();
        assert_eq!(
            member.port,
            url.rsplit(':')
                .next()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse::<u16>()
                .unwrap()
        );
        if index == leader {
            assert_eq!(member.state, "running");
            assert!(!in_recovery(&url).await, "leader {url} is in recovery");
        } else {
            assert_eq!(member.state, "streaming", "{status:?}");
            assert!(in_recovery(&url).await, "replica {url} is not in recovery");
        }
    }

    let leader_url = cluster.member_url(leader).unwrap();
    let primary = connect(&leader_url).await;
    primary
        .batch_execute(
            "CREATE TABLE patroni_row (id BIGINT PRIMARY KEY); INSERT INTO patroni_row VALUES (7)",
        )
        .await
        .unwrap();
    for index in (0..3).filter(|i| *i != leader) {
        wait_for_row(&cluster.member_url(index).unwrap(), "patroni_row", 7).await;
    }
    for index in (0..3).filter(|i| *i != leader) {
        wait_streaming_to(&leader_url, &format!("member{index}")).await;
    }
    assert_eq!(streaming_to(&leader_url).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switchover_names_another_leader_and_the_old_one_streams_from_it() {
    let _took = Took(
        "a_planned_switchover_names_another_leader_and_the_old_one_streams_from_it",
        Instant::now(),
    );
    let cluster = start().await;
    let old = cluster.leader().await.unwrap().expect("a leader");
    let candidate = (old + 1) % 3;

    let took = cluster.switchover(Some(candidate)).await.unwrap();
    eprintln!("switchover member{old} -> member{candidate} took {took:?}");
    assert_eq!(cluster.leader().await.unwrap(), Some(candidate));
    let new_url = cluster.member_url(candidate).unwrap();
    assert!(!in_recovery(&new_url).await);

    cluster.wait_member_streaming(old, WAIT).await.unwrap();
    let old_url = cluster.member_url(old).unwrap();
    assert!(
        in_recovery(&old_url).await,
        "the old leader is not a replica"
    );
    // It streams from the new leader: the new leader's WAL sender serves it and
    // a row written there reaches it.
    wait_streaming_to(&new_url, &format!("member{old}")).await;
    connect(&new_url)
        .await
        .batch_execute("CREATE TABLE after_switchover (id BIGINT PRIMARY KEY); INSERT INTO after_switchover VALUES (1)")
        .await
        .unwrap();
    wait_for_row(&old_url, "after_switchover", 1).await;

    // A switchover without a candidate: Patroni picks one.
    let took = cluster.switchover(None).await.unwrap();
    let picked = cluster.leader().await.unwrap().unwrap();
    assert_ne!(picked, candidate);
    eprintln!("switchover member{candidate} -> member{picked} (Patroni's pick) took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_rejoins_as_a_replica_after_pg_rewind() {
    let _took = Took(
        "a_killed_leader_is_replaced_and_rejoins_as_a_replica_after_pg_rewind",
        Instant::now(),
    );
    let cluster = start().await;
    let before = cluster.leader().await.unwrap().expect("a leader");
    connect(&cluster.member_url(before).unwrap())
        .await
        .batch_execute(
            "CREATE TABLE before_kill (id BIGINT PRIMARY KEY); INSERT INTO before_kill VALUES (1)",
        )
        .await
        .unwrap();

    let killed_at = Instant::now();
    let killed = cluster.kill_leader().await.unwrap();
    assert_eq!(killed, before);
    assert!(
        tokio_postgres::connect(&cluster.member_url(killed).unwrap(), NoTls)
            .await
            .is_err(),
        "the killed leader still accepts connections"
    );
    let (leader, seen) = cluster
        .wait_for_leader(Duration::from_secs(60), Some(killed))
        .await
        .unwrap();
    eprintln!(
        "member{leader} named leader {:?} after member{killed} was killed",
        seen - killed_at
    );
    assert_ne!(leader, killed);
    let leader_url = cluster.member_url(leader).unwrap();
    assert!(!in_recovery(&leader_url).await);
    connect(&leader_url)
        .await
        .batch_execute("INSERT INTO before_kill VALUES (2); CREATE TABLE after_kill (id BIGINT PRIMARY KEY); INSERT INTO after_kill VALUES (3)")
        .await
        .unwrap();

    let restarted = Instant::now();
    cluster.restart_member(killed).await.unwrap();
    cluster.wait_member_streaming(killed, WAIT).await.unwrap();
    eprintln!(
        "member{killed} streams again {:?} after its restart",
        restarted.elapsed()
    );
    let rejoined = cluster.member_url(killed).unwrap();
    assert!(
        in_recovery(&rejoined).await,
        "the old leader is not a replica"
    );
    wait_for_row(&rejoined, "after_kill", 3).await;
    wait_for_row(&rejoined, "before_kill", 2).await;
    let log = std::fs::read_to_string(cluster.member_log(killed).unwrap()).unwrap();
    eprintln!(
        "pg_rewind ran: {}",
        log.lines().any(|l| l.contains("running pg_rewind"))
    );
    let status = cluster.cluster_status().await.unwrap();
    assert_eq!(status.leader().and_then(|m| m.index), Some(leader));
    assert_eq!(status.members.len(), 3, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_mode_names_a_sync_standby_and_tags_reach_get_cluster() {
    let _took = Took(
        "synchronous_mode_names_a_sync_standby_and_tags_reach_get_cluster",
        Instant::now(),
    );
    let started = Instant::now();
    let cluster = PatroniCluster::builder()
        .synchronous_mode(true)
        .tags(2, [("nofailover", "true"), ("group", "analytics")])
        .start()
        .await
        .unwrap();
    eprintln!("3 synchronous-mode members up in {:?}", started.elapsed());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let status = cluster.cluster_status().await.unwrap();
        if status.members.iter().any(|m| m.role == "sync_standby") {
            break status;
        }
        assert!(Instant::now() < deadline, "no sync standby: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let leader = status.leader().expect("a leader");
    assert_ne!(
        leader.index,
        Some(2),
        "member2 may not fail over, nor bootstrap first"
    );
    let tags = &status.member("member2").unwrap().tags;
    assert_eq!(tags.get("nofailover").map(String::as_str), Some("true"));
    assert_eq!(tags.get("group").map(String::as_str), Some("analytics"));
    let leader_url = cluster.member_url(leader.index.unwrap()).unwrap();
    let setting: String = connect(&leader_url)
        .await
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!setting.is_empty(), "synchronous_standby_names is empty");
}
