//! Owned "SQL + binds" rendering for MySQL (see the PostgreSQL one for why).
//!
//! Simpler than PostgreSQL's: MySQL's `MetadataLookup` is `()`, so binds are
//! collected once, as diesel-async's own MySQL connection collects them, and replayed
//! through [`RenderedRef`](crate::backend::replay::RenderedRef), keeping the original
//! query's static query id.

use diesel::mysql::{Mysql, MysqlQueryBuilder};
use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::{QueryBuilder, QueryFragment, QueryId};
use diesel::QueryResult;
use diesel_async::{AsyncConnectionCore, AsyncMysqlConnection};
use futures_util::future::BoxFuture;

use super::MysqlRow;
use crate::backend::replay::{sql_and_cacheability, Keyed, RenderedRef, Replay, Unkeyed};
use crate::backend::{RowStream, SqlText};

/// SQL + binds, owned and `Send + 'static`; run by reference, as often as needed.
#[allow(missing_debug_implementations)] // binds must never be printed
pub struct RenderedMysql {
    sql: SqlText,
    safe_to_cache: bool,
    binds: RawBytesBindCollector<Mysql>,
    load: LoadFn,
    execute: ExecuteFn,
}

type LoadFn = for<'c> fn(
    &'c mut AsyncMysqlConnection,
    &'c RenderedMysql,
) -> BoxFuture<'c, QueryResult<RowStream<'static, MysqlRow>>>;
type ExecuteFn = for<'c> fn(
    &'c mut AsyncMysqlConnection,
    &'c RenderedMysql,
) -> BoxFuture<'c, QueryResult<usize>>;

impl Replay<Mysql> for RenderedMysql {
    fn sql(&self) -> &str {
        &self.sql
    }

    fn safe_to_cache(&self) -> bool {
        self.safe_to_cache
    }

    fn binds(&self) -> &RawBytesBindCollector<Mysql> {
        &self.binds
    }
}

/// diesel-async's MySQL row stream borrows its connection, and a rendered
/// statement's rows must not (the connection may be given up on, or flipped away
/// from, while they are read): they are collected first. diesel's `load` collects
/// them anyway; only `load_stream` on a statement that ran from its rendering (after
/// a flip's primary checkout, or a read retry) sees them all arrive at once.
fn load_as<'c, K: 'static>(
    conn: &'c mut AsyncMysqlConnection,
    rendered: &'c RenderedMysql,
) -> BoxFuture<'c, QueryResult<RowStream<'static, MysqlRow>>>
where
    for<'a> RenderedRef<'a, RenderedMysql, K>: QueryId,
{
    use futures_util::{FutureExt, StreamExt};
    async move {
        let rows = AsyncConnectionCore::load(conn, RenderedRef::<_, K>::new(rendered)).await?;
        let mut rows: Vec<QueryResult<MysqlRow>> = rows.collect().await;
        // A failure before the first row is the statement's failure (see
        // `SwitchTarget::ROWS_COLLECTED`).
        if matches!(rows.first(), Some(Err(_))) {
            // Always an error here: returns it.
            rows.swap_remove(0)?;
        }
        Ok(futures_util::stream::iter(rows).boxed())
    }
    .boxed()
}

fn execute_as<'c, K>(
    conn: &'c mut AsyncMysqlConnection,
    rendered: &'c RenderedMysql,
) -> BoxFuture<'c, QueryResult<usize>>
where
    for<'a> RenderedRef<'a, RenderedMysql, K>: QueryId,
{
    AsyncConnectionCore::execute_returning_count(conn, RenderedRef::<_, K>::new(rendered))
}

pub(crate) fn render_sql<Q: QueryFragment<Mysql> + ?Sized>(query: &Q) -> QueryResult<String> {
    let mut qb = MysqlQueryBuilder::default();
    query.to_sql(&mut qb, &Mysql)?;
    Ok(qb.finish())
}

/// Render `query` to owned SQL + binds. `sql` is its SQL text if judging it already
/// produced it.
pub(crate) fn render<Q>(query: &Q, sql: Option<SqlText>) -> QueryResult<RenderedMysql>
where
    Q: QueryFragment<Mysql> + QueryId + ?Sized,
{
    let (sql, safe_to_cache) = sql_and_cacheability(query, sql, render_sql::<Q>)?;
    let (load, execute): (LoadFn, ExecuteFn) = if Q::HAS_STATIC_QUERY_ID {
        (
            load_as::<Keyed<Q::QueryId>>,
            execute_as::<Keyed<Q::QueryId>>,
        )
    } else {
        (load_as::<Unkeyed>, execute_as::<Unkeyed>)
    };
    let mut binds = RawBytesBindCollector::<Mysql>::new();
    query.collect_binds(&mut binds, &mut (), &Mysql)?;
    Ok(RenderedMysql {
        sql,
        safe_to_cache,
        binds,
        load,
        execute,
    })
}

pub(crate) fn load<'c>(
    conn: &'c mut AsyncMysqlConnection,
    rendered: &'c RenderedMysql,
) -> BoxFuture<'c, QueryResult<RowStream<'static, MysqlRow>>> {
    (rendered.load)(conn, rendered)
}

pub(crate) fn execute<'c>(
    conn: &'c mut AsyncMysqlConnection,
    rendered: &'c RenderedMysql,
) -> BoxFuture<'c, QueryResult<usize>> {
    (rendered.execute)(conn, rendered)
}

pub(crate) fn sql_of(rendered: &RenderedMysql) -> &str {
    &rendered.sql
}
