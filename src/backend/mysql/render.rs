//! Owned "SQL + binds" rendering for MySQL (see the PostgreSQL one for why).
//!
//! Simpler than PostgreSQL's: MySQL's `MetadataLookup` is `()`, so binds are
//! collected once, as diesel-async's own MySQL connection collects them, and replayed
//! with `AstPass::push_bind_collector_data`. The original query's static query id
//! is kept, so the inner connection finds its prepared statement by type.

use std::any::Any;
use std::marker::PhantomData;

use diesel::mysql::{Mysql, MysqlQueryBuilder};
use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::{AstPass, Query, QueryBuilder, QueryFragment, QueryId};
use diesel::sql_types::Untyped;
use diesel::QueryResult;
use diesel_async::{AsyncConnectionCore, AsyncMysqlConnection};
use futures_util::future::BoxFuture;

use super::MysqlRow;
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

struct Keyed<I>(PhantomData<fn() -> I>);
struct Unkeyed;

struct RenderedRef<'a, K> {
    rendered: &'a RenderedMysql,
    _key: PhantomData<K>,
}

impl<K> QueryFragment<Mysql> for RenderedRef<'_, K> {
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        if !self.rendered.safe_to_cache {
            pass.unsafe_to_cache_prepared();
        }
        pass.push_sql(&self.rendered.sql);
        pass.push_bind_collector_data::<RawBytesBindCollector<Mysql>>(&self.rendered.binds)
    }
}

impl<I: Any> QueryId for RenderedRef<'_, Keyed<I>> {
    type QueryId = I;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryId for RenderedRef<'_, Unkeyed> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<K> Query for RenderedRef<'_, K> {
    type SqlType = Untyped;
}

impl RenderedMysql {
    fn view<K>(&self) -> RenderedRef<'_, K> {
        RenderedRef {
            rendered: self,
            _key: PhantomData,
        }
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
    for<'a> RenderedRef<'a, K>: QueryId,
{
    use futures_util::{FutureExt, StreamExt};
    async move {
        let rows = AsyncConnectionCore::load(conn, rendered.view::<K>()).await?;
        let rows: Vec<QueryResult<MysqlRow>> = rows.collect().await;
        Ok(futures_util::stream::iter(rows).boxed())
    }
    .boxed()
}

fn execute_as<'c, K>(
    conn: &'c mut AsyncMysqlConnection,
    rendered: &'c RenderedMysql,
) -> BoxFuture<'c, QueryResult<usize>>
where
    for<'a> RenderedRef<'a, K>: QueryId,
{
    AsyncConnectionCore::execute_returning_count(conn, rendered.view::<K>())
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
    let (sql, safe_to_cache) = match sql {
        Some(sql @ SqlText::Shared(_)) => (sql, true),
        Some(sql) => (sql, query.is_safe_to_cache_prepared(&Mysql)?),
        None => (
            SqlText::Owned(render_sql(query)?),
            query.is_safe_to_cache_prepared(&Mysql)?,
        ),
    };
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
