//! Adoption pattern 3, app-wide: every connection starts on a replica; nothing in
//! the application is marked; the safety interlock catches every write and
//! transaction, and the audit report says where it did.
//!
//! ```text
//! cargo run --example adopt_app_wide
//! ```
//!
//! Run it first in `Observe` mode (`RWSPLIT_MODE=observe`) to measure what would
//! move before turning routing on: everything then runs on the primary and the
//! report gives the share of statements and units of work replicas would serve.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::testing::schema::{events, users};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{InterlockMode, SwitchablePool};

/// A handler of an existing service: reads, and sometimes writes. Unmodified.
async fn handle_request(
    pool: &SwitchablePool,
    request: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = pool.get().await?;
    let known: i64 = users::table.count().get_result(&mut conn).await?;
    if request % 5 == 0 {
        // Writes nobody marked: the interlock flips this unit of work to the primary.
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            diesel::insert_into(users::table)
                .values((
                    users::name.eq(format!("user {request}")),
                    users::email.eq(format!("u{request}-{}@example.com", std::process::id())),
                ))
                .execute(c)
                .await?;
            diesel::insert_into(events::table)
                .values(events::kind.eq("signup"))
                .execute(c)
                .await?;
            Ok(())
        })
        .await?;
    } else if request % 7 == 0 {
        let next: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "nextval('events_id_seq')",
        ))
        .get_result(&mut conn)
        .await?;
        let _ = next;
    }
    let _ = known;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = match std::env::var("RWSPLIT_MODE").as_deref() {
        Ok("observe") => InterlockMode::Observe,
        _ => InterlockMode::Switch,
    };
    let cluster = LocalCluster::start(2).await?;
    cluster.apply_example_schema().await?;
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .interlock(mode)
        .build()
        .await?;
    for request in 1..=100 {
        handle_request(&pool, request).await?;
    }
    println!("{}", pool.audit_report());
    Ok(())
}
