//! The whole `diesel_async::RunQueryDsl` surface through a switchable connection
//! returns what a plain `AsyncPgConnection` returns.

mod common;

use common::{admin, create_table, shared_cluster, WAIT};
use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use diesel::upsert::excluded;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{
    AsyncConnection, AsyncPgConnection, RunQueryDsl, SaveChangesDsl, SimpleAsyncConnection,
};
use diesel_migrations::MigrationHarness;
use diesel_rwsplit::testing::EXAMPLE_MIGRATIONS;
use diesel_rwsplit::{SwitchReason, SwitchableConnection, SwitchablePool, Target};

diesel::table! {
    surface_items (id) {
        id -> BigInt,
        tag -> Text,
        name -> Text,
        qty -> Integer,
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, AsChangeset, QueryableByName)]
#[diesel(table_name = surface_items)]
struct Item {
    id: i64,
    tag: String,
    name: String,
    qty: i32,
}

#[derive(Debug, QueryableByName)]
struct NameQty {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Integer)]
    qty: i32,
}

/// Run every operation on `$conn` (rows tagged `$tag`) and return a transcript with
/// ids made relative, so two runs on different rows compare equal.
macro_rules! exercise {
    ($conn:expr, $tag:expr) => {{
        use surface_items::dsl as t;
        let conn = $conn;
        let tag: &str = $tag;
        let mut out: Vec<String> = Vec::new();

        let first: Item = diesel::insert_into(t::surface_items)
            .values((t::tag.eq(tag), t::name.eq("apple"), t::qty.eq(1)))
            .returning(Item::as_returning())
            .get_result(conn)
            .await
            .unwrap();
        let base = first.id;
        let rel = |item: &Item| format!("#{} {} {}", item.id - base, item.name, item.qty);
        out.push(format!("insert returning: {}", rel(&first)));

        let rows = vec![
            (t::tag.eq(tag), t::name.eq("banana"), t::qty.eq(2)),
            (t::tag.eq(tag), t::name.eq("cherry"), t::qty.eq(3)),
        ];
        out.push(format!(
            "batch insert: {}",
            diesel::insert_into(t::surface_items)
                .values(rows)
                .execute(conn)
                .await
                .unwrap()
        ));

        let all: Vec<Item> = t::surface_items
            .filter(t::tag.eq(tag))
            .order(t::name)
            .select(Item::as_select())
            .load(conn)
            .await
            .unwrap();
        out.push(format!(
            "load: {:?}",
            all.iter().map(rel).collect::<Vec<_>>()
        ));
        let one: Item = t::surface_items
            .filter(t::tag.eq(tag))
            .order(t::qty.desc())
            .select(Item::as_select())
            .first(conn)
            .await
            .unwrap();
        out.push(format!("first: {}", rel(&one)));
        let names: Vec<String> = t::surface_items
            .filter(t::tag.eq(tag).and(t::qty.gt(1)))
            .select(t::name)
            .order(t::name)
            .get_results(conn)
            .await
            .unwrap();
        out.push(format!("get_results: {names:?}"));
        let count: i64 = t::surface_items
            .filter(t::tag.eq(tag))
            .count()
            .get_result(conn)
            .await
            .unwrap();
        out.push(format!("count: {count}"));
        let missing = t::surface_items
            .filter(t::tag.eq(tag).and(t::name.eq("durian")))
            .select(Item::as_select())
            .first(conn)
            .await;
        out.push(format!(
            "first missing: {:?}",
            missing.map(|i| i.name).unwrap_err()
        ));

        let updated =
            diesel::update(t::surface_items.filter(t::tag.eq(tag).and(t::name.eq("banana"))))
                .set(t::qty.eq(t::qty + 10))
                .execute(conn)
                .await
                .unwrap();
        out.push(format!("update: {updated}"));

        let by_sql: Vec<NameQty> = diesel::sql_query(
            "SELECT name, qty FROM surface_items WHERE tag = $1 AND qty >= $2 ORDER BY name",
        )
        .bind::<Text, _>(tag)
        .bind::<Integer, _>(2)
        .load(conn)
        .await
        .unwrap();
        out.push(format!(
            "sql_query binds: {:?}",
            by_sql
                .iter()
                .map(|r| (r.name.as_str(), r.qty))
                .collect::<Vec<_>>()
        ));

        let mut boxed = t::surface_items
            .filter(t::tag.eq(tag))
            .select(t::name)
            .into_boxed();
        boxed = boxed.filter(t::qty.lt(10)).order(t::name.desc());
        out.push(format!(
            "boxed: {:?}",
            boxed.load::<String>(conn).await.unwrap()
        ));

        let upserted: Item = diesel::insert_into(t::surface_items)
            .values((t::tag.eq(tag), t::name.eq("apple"), t::qty.eq(5)))
            .on_conflict((t::tag, t::name))
            .do_update()
            .set(t::qty.eq(t::qty + excluded(t::qty)))
            .returning(Item::as_returning())
            .get_result(conn)
            .await
            .unwrap();
        out.push(format!("upsert returning: {}", rel(&upserted)));

        let nested = conn
            .transaction::<_, diesel::result::Error, _>(async |c| {
                diesel::insert_into(t::surface_items)
                    .values((t::tag.eq(tag), t::name.eq("outer"), t::qty.eq(0)))
                    .execute(c)
                    .await?;
                let inner = c
                    .transaction::<(), diesel::result::Error, _>(async |c| {
                        diesel::insert_into(t::surface_items)
                            .values((t::tag.eq(tag), t::name.eq("inner"), t::qty.eq(0)))
                            .execute(c)
                            .await?;
                        Err(diesel::result::Error::RollbackTransaction)
                    })
                    .await;
                Ok(format!("{inner:?}"))
            })
            .await
            .unwrap();
        out.push(format!("nested savepoint: {nested}"));
        let rolled_back = conn
            .transaction::<(), diesel::result::Error, _>(async |c| {
                diesel::delete(t::surface_items.filter(t::tag.eq(tag)))
                    .execute(c)
                    .await?;
                Err(diesel::result::Error::RollbackTransaction)
            })
            .await;
        out.push(format!("rolled back: {rolled_back:?}"));
        let names: Vec<String> = t::surface_items
            .filter(t::tag.eq(tag))
            .select(t::name)
            .order(t::name)
            .load(conn)
            .await
            .unwrap();
        out.push(format!("after transactions: {names:?}"));

        let mut cherry: Item = t::surface_items
            .filter(t::tag.eq(tag).and(t::name.eq("cherry")))
            .select(Item::as_select())
            .first(conn)
            .await
            .unwrap();
        cherry.qty = 33;
        let saved: Item = cherry.save_changes(conn).await.unwrap();
        out.push(format!("save_changes: {}", rel(&saved)));

        conn.batch_execute(&format!(
            "UPDATE surface_items SET qty = qty * 2 WHERE tag = '{tag}'"
        ))
        .await
        .unwrap();
        let deleted =
            diesel::delete(t::surface_items.filter(t::tag.eq(tag).and(t::name.eq("outer"))))
                .execute(conn)
                .await
                .unwrap();
        out.push(format!("batch_execute + delete: {deleted}"));
        let rest: Vec<(String, i32)> = t::surface_items
            .filter(t::tag.eq(tag))
            .select((t::name, t::qty))
            .order(t::name)
            .load(conn)
            .await
            .unwrap();
        out.push(format!("final: {rest:?}"));
        out
    }};
}

async fn surface_table() {
    static CREATED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    CREATED
        .get_or_init(|| async {
            create_table(
                shared_cluster(),
                "CREATE TABLE surface_items (id BIGSERIAL PRIMARY KEY, tag TEXT NOT NULL, name TEXT NOT NULL, qty INT NOT NULL, UNIQUE (tag, name))",
            )
            .await
        })
        .await;
}

#[tokio::test]
async fn run_query_dsl_results_match_a_plain_connection() {
    let cluster = shared_cluster();
    surface_table().await;
    let mut plain = AsyncPgConnection::establish(&cluster.primary_url())
        .await
        .unwrap();
    let expected = exercise!(&mut plain, "plain");

    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    let got = exercise!(&mut conn, "switch");
    assert_eq!(conn.target(), Target::Primary);
    assert_eq!(conn.switch_reason(), Some(SwitchReason::WriteStatement));
    for (plain_line, switch_line) in expected.iter().zip(&got) {
        assert_eq!(plain_line, switch_line);
    }
    assert_eq!(expected.len(), got.len());
    assert!(
        expected
            .iter()
            .any(|l| l.starts_with("nested savepoint: Err(RollbackTransaction)")),
        "{expected:#?}"
    );

    // Reads first, then the same surface through `&mut SwitchableConnection` itself.
    cluster.wait_for_replicas(WAIT).await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let count: i64 = surface_items::table
        .filter(surface_items::tag.eq("switch"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        count, 3,
        "the replica serves the rows written above (see the final transcript line)"
    );
    assert_eq!(conn.target(), Target::Replica);
    let inner: &mut SwitchableConnection<AsyncPgConnection> = &mut conn;
    let again = exercise!(inner, "switch-direct");
    assert_eq!(again, expected);
}

#[tokio::test]
async fn a_transaction_and_a_test_transaction_flip_before_beginning() {
    let cluster = shared_cluster();
    surface_table().await;
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .build()
        .await
        .unwrap();

    let mut conn = pool.get().await.unwrap();
    let in_txn_on_primary: bool = conn
        .transaction::<_, diesel::result::Error, _>(async |c| {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
                "NOT pg_is_in_recovery()",
            ))
            .get_result(c)
            .await
        })
        .await
        .unwrap();
    assert!(
        in_txn_on_primary,
        "a read-only transaction must still run on the primary"
    );
    assert_eq!(conn.switch_reason(), Some(SwitchReason::TransactionBegin));

    let mut conn = pool.get().await.unwrap();
    conn.begin_test_transaction().await.unwrap();
    assert_eq!(conn.switch_reason(), Some(SwitchReason::TransactionBegin));
    diesel::insert_into(surface_items::table)
        .values((
            surface_items::tag.eq("test-txn"),
            surface_items::name.eq("ghost"),
            surface_items::qty.eq(1),
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    let seen: i64 = surface_items::table
        .filter(surface_items::tag.eq("test-txn"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(seen, 1);
    drop(conn); // never committed
    let primary = admin(&cluster.primary_url()).await;
    let after: i64 = primary
        .query_one(
            "SELECT count(*) FROM surface_items WHERE tag = 'test-txn'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, 0);
    assert_eq!(pool.stats().switches(SwitchReason::TransactionBegin), 2);
}

#[tokio::test]
async fn migrations_run_through_async_connection_wrapper() {
    let cluster = shared_cluster();
    let primary = admin(&cluster.primary_url()).await;
    primary
        .batch_execute("CREATE DATABASE surface_migrations")
        .await
        .unwrap();
    cluster.wait_for_replicas(WAIT).await.unwrap();
    let in_db = |url: String| {
        format!(
            "{}/surface_migrations",
            url.strip_suffix("/postgres").unwrap()
        )
    };
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(in_db(cluster.primary_url()))
        .replicas(cluster.replica_urls().into_iter().map(in_db))
        .build()
        .await
        .unwrap();
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    let applied = tokio::task::spawn_blocking(move || {
        let mut wrapper: AsyncConnectionWrapper<_> = AsyncConnectionWrapper::from(conn);
        wrapper
            .run_pending_migrations(EXAMPLE_MIGRATIONS)
            .map(|v| v.len())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(applied, 1);
    assert!(
        pool.stats().total_switches() >= 1,
        "the migration's DDL must have flipped to the primary"
    );

    // The single-node form from a URL, as diesel-async's constructors use it.
    let url = in_db(cluster.primary_url());
    let pending = tokio::task::spawn_blocking(move || {
        let mut wrapper = <AsyncConnectionWrapper<SwitchableConnection<AsyncPgConnection>> as diesel::Connection>::establish(&url).unwrap();
        wrapper.pending_migrations(EXAMPLE_MIGRATIONS).map(|v| v.len()).map_err(|e| e.to_string())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(pending, 0);
}
