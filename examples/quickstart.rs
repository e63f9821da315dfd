//! Quick start: a real primary + two streaming replicas, the example schema, and
//! unchanged diesel-async code running through a `SwitchablePool`, printing on which
//! node each statement ran and what the safety interlock did.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Boots a throwaway `LocalCluster` (about 1-2 s) unless `PRIMARY_URL` and
//! `REPLICA_URLS` (comma-separated) point at an existing primary and replicas.

use diesel::prelude::*;
use diesel::sql_types::Integer;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::testing::schema::{orders, users};
use diesel_rwsplit::testing::{run_example_migrations, ClusterUrls};
use diesel_rwsplit::{
    interlock_refusal, InterlockMode, PooledConnection, SwitchReason, SwitchablePool, Target,
};

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = users)]
struct User {
    id: i64,
    name: String,
}

/// `replica :43331` or `primary :37219`: where this connection's statements run now.
async fn node(conn: &mut PooledConnection) -> Result<String, diesel::result::Error> {
    let target = conn.target();
    let port: i32 = diesel::select(diesel::dsl::sql::<Integer>("inet_server_port()"))
        .get_result(conn)
        .await?;
    Ok(format!("{:<7} :{port}", target.as_str()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let urls = ClusterUrls::from_env_or_start(2).await?;
    println!("{}", urls.describe());
    // Keep the cluster alive for the whole run; dropping it stops the servers.
    let (_cluster, primary_url, replica_urls) = urls.into_parts();
    run_example_migrations(&primary_url).await?;
    println!("applied the example migrations on the primary\n");

    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(&primary_url)
        .replicas(replica_urls.clone())
        .build()
        .await?;

    // A unit of work that only reads: served by a replica, no primary connection.
    let mut conn = pool.get().await?;
    let known: i64 = users::table.count().get_result(&mut conn).await?;
    println!(
        "[{}] SELECT count(*) FROM users -> {known}",
        node(&mut conn).await?
    );
    drop(conn);

    // A unit of work that writes: it starts on a replica; the INSERT flips it to the
    // primary (the safety interlock), where it stays, so it reads its own writes.
    let mut conn = pool.get().await?;
    println!("[{}] (checked out)", node(&mut conn).await?);
    let suffix = std::process::id();
    let new_users: Vec<_> = ["ada", "grace", "linus"]
        .iter()
        .map(|name| {
            (
                users::name.eq(*name),
                users::email.eq(format!("{name}-{suffix}@example.com")),
            )
        })
        .collect();
    let ids: Vec<i64> = diesel::insert_into(users::table)
        .values(new_users)
        .returning(users::id)
        .get_results(&mut conn)
        .await?;
    println!(
        "[{}] INSERT INTO users ... RETURNING id -> {ids:?}   (flipped: {:?})",
        node(&mut conn).await?,
        conn.switch_reason()
    );
    conn.transaction::<_, diesel::result::Error, _>(async |c| {
        let rows: Vec<_> = ids
            .iter()
            .map(|id| (orders::user_id.eq(*id), orders::amount_cents.eq(1999)))
            .collect();
        diesel::insert_into(orders::table)
            .values(rows)
            .execute(c)
            .await?;
        Ok(())
    })
    .await?;
    println!(
        "[{}] BEGIN; INSERT INTO orders ...; COMMIT",
        node(&mut conn).await?
    );
    let mine: Vec<User> = users::table
        .filter(users::id.eq_any(&ids))
        .select(User::as_select())
        .load(&mut conn)
        .await?;
    println!(
        "[{}] SELECT users WHERE id = ANY(...) -> {:?}",
        node(&mut conn).await?,
        mine.iter()
            .map(|u| (u.id, u.name.as_str()))
            .collect::<Vec<_>>()
    );
    // A token for reading these writes elsewhere (another request, another service).
    let token = conn
        .causal_token()
        .await?
        .ok_or("a unit of work that wrote has a token")?;
    drop(conn);

    // Another connection reads them on a replica that provably has them.
    let mut reader = pool.get_after(&token).await?;
    let orders: i64 = orders::table
        .filter(orders::user_id.eq_any(&ids))
        .count()
        .get_result(&mut reader)
        .await?;
    println!(
        "[{}] causal read after token {token} -> {orders} orders",
        node(&mut reader).await?
    );
    drop(reader);

    // Raise mode refuses instead of flipping, and runs nothing.
    let strict = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(&primary_url)
        .replicas(replica_urls)
        .interlock(InterlockMode::Raise)
        .build()
        .await?;
    let mut conn = strict.get().await?;
    let refused = diesel::delete(users::table.filter(users::id.eq_any(&ids)))
        .execute(&mut conn)
        .await;
    println!(
        "[{}] DELETE FROM users ... -> {}",
        node(&mut conn).await?,
        match &refused {
            Err(e) if interlock_refusal(e).is_some() => format!("refused: {e}"),
            other => format!("{other:?}"),
        }
    );

    let stats = pool.stats();
    println!(
        "\nstatements: {} on replicas, {} on the primary; flips: {} for writes, {} for transactions",
        stats.statements(Target::Replica),
        stats.statements(Target::Primary),
        stats.switches(SwitchReason::WriteStatement),
        stats.switches(SwitchReason::TransactionBegin)
    );
    println!("\n{}", pool.audit_report());
    Ok(())
}
