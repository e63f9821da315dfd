//! Adoption pattern 1, targeted: the application's default stays the primary; one
//! chosen slow read goes to a replica.
//!
//! ```text
//! cargo run --example adopt_targeted
//! ```
//!
//! Nothing changes for existing code: `pool.get()` connections start on the primary
//! (`Route::Primary`). The report query, the one that was loading the primary, asks
//! for `pool.get_replica()` explicitly; the interlock stays armed there, so if it
//! ever writes it flips to the primary and the flip is counted.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::testing::schema::{orders, users};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{Route, SwitchablePool, Target};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = LocalCluster::start(2).await?;
    cluster.apply_example_schema().await?;
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .default_route(Route::Primary)
        .build()
        .await?;

    // Existing code: unchanged, on the primary.
    let mut conn = pool.get().await?;
    let id: i64 = diesel::insert_into(users::table)
        .values((
            users::name.eq("ada"),
            users::email.eq(format!("ada-{}@example.com", std::process::id())),
        ))
        .returning(users::id)
        .get_result(&mut conn)
        .await?;
    diesel::insert_into(orders::table)
        .values((orders::user_id.eq(id), orders::amount_cents.eq(4200)))
        .execute(&mut conn)
        .await?;
    println!("{:<8} insert user and order", conn.target().as_str());
    drop(conn);
    cluster
        .wait_for_replicas(std::time::Duration::from_secs(5))
        .await?;

    // The chosen slow report: on a replica.
    let mut report = pool.get_replica().await?;
    let per_user: Vec<(String, i64)> = users::table
        .inner_join(orders::table)
        .group_by(users::name)
        .select((users::name, diesel::dsl::count(orders::id)))
        .load(&mut report)
        .await?;
    println!(
        "{:<8} orders per user: {per_user:?}",
        report.target().as_str()
    );
    assert_eq!(report.target(), Target::Replica);
    println!(
        "flips: {}, replica statements: {}",
        pool.stats().total_switches(),
        pool.stats().statements(Target::Replica)
    );
    Ok(())
}
