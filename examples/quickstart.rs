//! Quick start: a real primary + two streaming replicas, the example schema, a few
//! writes and reads, and on which node each statement ran.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Boots a throwaway `LocalCluster` (about 1-2 s) unless `PRIMARY_URL` and
//! `REPLICA_URLS` (comma-separated) point at an existing primary and replicas.

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{Bool, Integer};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::testing::run_example_migrations;
use diesel_rwsplit::testing::schema::{orders, users};

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = users)]
struct User {
    id: i64,
    name: String,
    email: String,
}

#[derive(Debug, QueryableByName)]
struct NodeInfo {
    #[diesel(sql_type = Integer)]
    port: i32,
    #[diesel(sql_type = Bool)]
    in_recovery: bool,
}

/// A connection with the name of the node it talks to, for printing.
struct Named {
    label: String,
    conn: AsyncPgConnection,
}

impl Named {
    async fn connect(url: &str, name: &str) -> Result<Self, Box<dyn std::error::Error>> {
        let mut conn = AsyncPgConnection::establish(url).await?;
        let info: NodeInfo = diesel::sql_query(
            "SELECT inet_server_port() AS port, pg_is_in_recovery() AS in_recovery",
        )
        .get_result(&mut conn)
        .await?;
        let role = if info.in_recovery {
            "replica"
        } else {
            "primary"
        };
        Ok(Named {
            label: format!("{name} (port {}, {role})", info.port),
            conn,
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Keep the cluster alive for the whole run; dropping it stops the servers.
    let urls = diesel_rwsplit::testing::ClusterUrls::from_env_or_start(2).await?;
    println!("{}", urls.describe());
    let (_cluster, primary_url, replica_urls) = urls.into_parts();
    if replica_urls.is_empty() {
        return Err("REPLICA_URLS names no replica".into());
    }

    run_example_migrations(&primary_url).await?;
    println!("applied the example migrations on the primary\n");

    let mut primary = Named::connect(&primary_url, "primary").await?;
    let mut replicas = Vec::new();
    for (i, url) in replica_urls.iter().enumerate() {
        replicas.push(Named::connect(url, &format!("replica{}", i + 1)).await?);
    }

    // Writes go to the primary (routed by hand here; the switchable connection
    // does this automatically).
    let suffix = std::process::id();
    let new_users: Vec<(String, String)> = ["ada", "grace", "linus"]
        .iter()
        .map(|name| (name.to_string(), format!("{name}-{suffix}@example.com")))
        .collect();
    let inserted: Vec<i64> = diesel::insert_into(users::table)
        .values(
            new_users
                .iter()
                .map(|(n, e)| (users::name.eq(n), users::email.eq(e)))
                .collect::<Vec<_>>(),
        )
        .returning(users::id)
        .get_results(&mut primary.conn)
        .await?;
    println!(
        "{:<40} INSERT INTO users ... RETURNING id -> {inserted:?}",
        primary.label
    );
    let order_rows = inserted
        .iter()
        .map(|id| (orders::user_id.eq(*id), orders::amount_cents.eq(1999)))
        .collect::<Vec<_>>();
    let placed = diesel::insert_into(orders::table)
        .values(order_rows)
        .execute(&mut primary.conn)
        .await?;
    println!("{:<40} INSERT INTO orders -> {placed} rows", primary.label);

    // Wait until each replica has replayed what was just written, then read there.
    let written: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "pg_current_wal_lsn()::text",
    ))
    .get_result(&mut primary.conn)
    .await?;
    for (i, replica) in replicas.iter_mut().enumerate() {
        wait_for_lsn(&mut replica.conn, &written).await?;
        let found: Vec<User> = users::table
            .filter(users::id.eq_any(&inserted))
            .select(User::as_select())
            .order(users::id)
            .load(&mut replica.conn)
            .await?;
        let names: Vec<&str> = found.iter().map(|u| u.name.as_str()).collect();
        println!(
            "{:<40} SELECT users WHERE id IN (...) -> {names:?} (read {i})",
            replica.label
        );
        assert_eq!(
            found.len(),
            inserted.len(),
            "replica missed rows after catching up"
        );
        debug_assert!(found.iter().all(|u| u.id > 0 && u.email.contains('@')));
    }
    let total: i64 = orders::table
        .count()
        .get_result(&mut replicas[0].conn)
        .await?;
    println!(
        "{:<40} SELECT count(*) FROM orders -> {total}",
        replicas[0].label
    );

    // And the second line of defence: a replica refuses writes outright.
    let refused = diesel::insert_into(users::table)
        .values((
            users::name.eq("mallory"),
            users::email.eq(format!("mallory-{suffix}@example.com")),
        ))
        .execute(&mut replicas[0].conn)
        .await;
    println!(
        "{:<40} INSERT INTO users -> {}",
        replicas[0].label,
        match refused {
            Err(e) => format!("refused: {e}"),
            Ok(_) => "ACCEPTED (this replica is not read-only!)".into(),
        }
    );
    Ok(())
}

/// Poll until the replica has replayed at least `lsn` (at most 5 s).
async fn wait_for_lsn(
    conn: &mut AsyncPgConnection,
    lsn: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let caught_up: bool = diesel::select(diesel::dsl::sql::<Bool>(&format!(
            "pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"
        )))
        .get_result(conn)
        .await?;
        if caught_up {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("replica did not reach {lsn} within 5 s").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
