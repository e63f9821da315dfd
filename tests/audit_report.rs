//! `pool.audit_report()` and Prometheus text agree with what actually ran.

mod common;

use common::{create_table, shared_cluster, statement_calls};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::{InterlockMode, SwitchablePool};

#[tokio::test]
async fn observe_mode_report_counts_equal_the_statements_run() {
    let cluster = shared_cluster();
    create_table(
        cluster,
        "CREATE TABLE audited (id SERIAL PRIMARY KEY, n INT NOT NULL DEFAULT 0)",
    )
    .await;
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .interlock(InterlockMode::Observe)
        .build()
        .await
        .unwrap();

    // 6 read-only units (2 reads each); 3 units that insert; 2 that update in a
    // transaction; 1 that claims a job with SKIP LOCKED.
    for _ in 0..6 {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("SELECT count(*) FROM audited")
            .execute(&mut conn)
            .await
            .unwrap();
        diesel::sql_query("SELECT max(id) FROM audited")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    for i in 0..3 {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("SELECT count(*) FROM audited")
            .execute(&mut conn)
            .await
            .unwrap();
        diesel::sql_query(format!("INSERT INTO audited (n) VALUES ({i})"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    for _ in 0..2 {
        let mut conn = pool.get().await.unwrap();
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            diesel::sql_query("UPDATE audited SET n = n + 1")
                .execute(c)
                .await
                .map(|_| ())
        })
        .await
        .unwrap();
    }
    {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("SELECT id FROM audited ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED")
            .execute(&mut conn)
            .await
            .unwrap();
    }

    let report = pool.audit_report();
    assert_eq!(report.mode, "observe");
    // Observe runs everything on the primary: 12 + 6 + 2 updates + 1 claim = 21.
    assert_eq!(report.statements_on_primary, 21);
    assert_eq!(report.statements_on_replicas, 0);
    assert_eq!(
        (report.observed_units, report.observed_replica_units),
        (12, 6)
    );
    assert_eq!(report.replica_share_of_units, Some(0.5));
    // Would-be replica statements: 12 reads + 3 reads before the inserts = 15 of 21.
    assert_eq!(report.replica_share_of_statements, Some(15.0 / 21.0));
    let reasons: Vec<(&str, u64)> = report
        .trips_by_reason
        .iter()
        .map(|(r, n)| (*r, *n))
        .collect();
    assert_eq!(
        reasons,
        [
            ("locking_read", 1),
            ("transaction_begin", 2),
            ("write_statement", 3)
        ]
    );
    let entries: Vec<(&str, &str, u64)> = report
        .statements
        .iter()
        .map(|e| (e.fingerprint.as_str(), e.reason, e.count))
        .collect();
    assert_eq!(
        entries,
        [
            ("insert into audited (n) values (?)", "write_statement", 3),
            ("begin", "transaction_begin", 2),
            (
                "select id from audited order by id limit ? for update skip locked",
                "locking_read",
                1
            ),
        ]
    );
    assert!(report
        .statements
        .iter()
        .all(|e| e.first_seen_unix_ms <= e.last_seen_unix_ms && e.first_seen_unix_ms > 0));
    // The nodes' own statistics agree: every statement ran on the primary (12 + 3
    // reads and the claim; 3 inserts; 2 updates) and none on a replica.
    let primary = cluster.primary_url();
    assert_eq!(statement_calls(&primary, "select", "audited").await, 16);
    assert_eq!(statement_calls(&primary, "insert", "audited").await, 3);
    assert_eq!(statement_calls(&primary, "update", "audited").await, 2);
    for url in cluster.replica_urls() {
        assert_eq!(
            statement_calls(&url, "", "audited").await,
            0,
            "Observe mode ran a statement on {url}"
        );
    }

    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["mode"], "observe");
    assert_eq!(json["statements"][0]["count"], 3);
    assert_eq!(json["trips_by_reason"]["transaction_begin"], 2);
    let table = report.to_string();
    assert!(
        table.contains("units of work: 12 observed, 6 read-only; replica share 50.0%"),
        "{table}"
    );
    assert!(
        table.contains("insert into audited (n) values (?)"),
        "{table}"
    );

    let text = pool.stats().to_prometheus();
    for line in [
        "rwsplit_would_switch_total{reason=\"write_statement\"} 3",
        "rwsplit_would_switch_total{reason=\"transaction_begin\"} 2",
        "rwsplit_statements_total{target=\"primary\"} 21",
        "rwsplit_would_be_statements_total{target=\"replica\"} 15",
        "rwsplit_observed_units_total 12",
        "# TYPE rwsplit_switches_total counter",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
}
