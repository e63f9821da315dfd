//! What both backends' owned renderings share: running "SQL + binds" again as a
//! diesel query that keeps the original query's static id.
//!
//! A rendering is replayed through [`RenderedRef`], whose `walk_ast` pushes the SQL
//! verbatim and re-appends the collected binds (`AstPass::push_bind_collector_data`),
//! like diesel's `CollectedQuery`. Unlike `CollectedQuery`, it keeps the original
//! query's static query id, so the inner connection finds its prepared statement by
//! type, as it does for the original query, instead of building and hashing a
//! SQL-text key.

use std::any::Any;
use std::marker::PhantomData;

use diesel::backend::Backend;
use diesel::query_builder::bind_collector::{MoveableBindCollector, RawBytesBindCollector};
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::Untyped;
use diesel::QueryResult;

use super::SqlText;

/// An owned rendering of one statement for backend `DB`.
pub(crate) trait Replay<DB: Backend> {
    /// The SQL text (placeholders, never bind values).
    fn sql(&self) -> &str;
    /// Whether the statement may be cached as a prepared statement.
    fn safe_to_cache(&self) -> bool;
    /// The binds, as the inner connection collected them.
    fn binds(&self) -> &RawBytesBindCollector<DB>;
}

/// Statement-cache identity of a [`RenderedRef`]: the original query's static id.
pub(crate) struct Keyed<I>(PhantomData<fn() -> I>);
/// Statement-cache identity of a [`RenderedRef`] whose query had no static id.
pub(crate) struct Unkeyed;

/// A rendered statement as diesel sees it: its SQL and its collected binds.
pub(crate) struct RenderedRef<'a, R, K> {
    rendered: &'a R,
    _key: PhantomData<K>,
}

impl<'a, R, K> RenderedRef<'a, R, K> {
    pub(crate) fn new(rendered: &'a R) -> Self {
        RenderedRef {
            rendered,
            _key: PhantomData,
        }
    }
}

impl<DB, R, K> QueryFragment<DB> for RenderedRef<'_, R, K>
where
    DB: Backend,
    R: Replay<DB>,
    for<'bc> DB::BindCollector<'bc>:
        MoveableBindCollector<DB, BindData = RawBytesBindCollector<DB>>,
{
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        if !self.rendered.safe_to_cache() {
            pass.unsafe_to_cache_prepared();
        }
        pass.push_sql(self.rendered.sql());
        pass.push_bind_collector_data::<RawBytesBindCollector<DB>>(self.rendered.binds())
    }
}

// The SQL is the original query's, so it may share the original's prepared statement.
impl<I: Any, R> QueryId for RenderedRef<'_, R, Keyed<I>> {
    type QueryId = I;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<R> QueryId for RenderedRef<'_, R, Unkeyed> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<R, K> Query for RenderedRef<'_, R, K> {
    type SqlType = Untyped;
}

/// The SQL text of `query` and whether it may be cached prepared: `sql` if judging
/// it already produced it (shared SQL comes only for instances already found safe
/// to cache), else rendered now with `render_sql`.
pub(crate) fn sql_and_cacheability<DB, Q>(
    query: &Q,
    sql: Option<SqlText>,
    render_sql: fn(&Q) -> QueryResult<String>,
) -> QueryResult<(SqlText, bool)>
where
    DB: Backend + Default,
    Q: QueryFragment<DB> + ?Sized,
{
    Ok(match sql {
        Some(sql @ SqlText::Shared(_)) => (sql, true),
        Some(sql) => (sql, query.is_safe_to_cache_prepared(&DB::default())?),
        None => (
            SqlText::Owned(render_sql(query)?),
            query.is_safe_to_cache_prepared(&DB::default())?,
        ),
    })
}
