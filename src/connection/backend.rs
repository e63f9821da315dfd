//! `SwitchTarget`: the small per-backend seam that keeps `SwitchableConnection<C>` generic.
//!
//! Everything backend-specific lives here:
//! * rendering a (non-`Send`) diesel query into owned SQL text (for the classifier),
//! * rendering it into an owned, `Send + 'static` "SQL + binds" value that can be held
//!   across the `.await` that fetches the primary,
//! * running that owned value on a connection,
//! * delegating the normal (no-await-before-the-query) path with the wrapper's boxed types.
//!
//! The PostgreSQL impl is below; `pg_owned.rs` has the rendering. A MySQL impl would be the same
//! shape: `AsyncMysqlConnection`'s futures are also `BoxFuture<'conn, _>` and its row `MysqlRow`
//! is `'static`, so `delegate_load`/`delegate_execute` below work unchanged; its `render` is
//! simpler (MySQL's `MetadataLookup` is `()`: no custom-type OID dance), i.e. exactly what
//! diesel-async's `SyncConnectionWrapper::execute_with_prepared_query` does.

use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::QueryResult;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncConnectionCore, AsyncPgConnection};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryFutureExt};

use super::owned_pg::{self, OidCache, RenderedPg};
use crate::classify::Dialect;

/// The row type a `SwitchableConnection<AsyncPgConnection>` yields (diesel-async's
/// `PgRow`, which is only nameable through this projection).
pub type PgRow = <AsyncPgConnection as AsyncConnectionCore>::Row<'static, 'static>;

/// A statement's SQL text (placeholders, never bind values): rendered for it, or
/// shared from the router's cache of SQL by static query id.
#[derive(Debug, Clone)]
pub enum SqlText {
    /// Rendered for this statement.
    Owned(String),
    /// The text every instance of one static query type renders to.
    Shared(std::sync::Arc<str>),
}

impl std::ops::Deref for SqlText {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            SqlText::Owned(sql) => sql,
            SqlText::Shared(sql) => sql,
        }
    }
}

/// Boxed row stream shared by every backend.
pub type RowStream<'c, R> = BoxStream<'c, QueryResult<R>>;
/// Boxed load future shared by every backend.
pub type LoadFut<'c, R> = BoxFuture<'c, QueryResult<RowStream<'c, R>>>;

mod sealed {
    pub trait Sealed {}
    impl Sealed for diesel_async::AsyncPgConnection {}
}

/// An inner connection checked out of a node's pool (or owned).
pub type NodeConnection<C> = Box<dyn std::ops::DerefMut<Target = C> + Send + Sync>;

/// One node's pool of inner connections: hidden plumbing between
/// [`SwitchTarget`] and the switchable pool.
#[doc(hidden)]
pub trait NodePool<C>: Send + Sync + 'static {
    /// Check a connection out (connecting if needed, within the checkout timeout).
    fn checkout(&self) -> BoxFuture<'_, Result<NodeConnection<C>, crate::BoxError>>;
}

impl NodePool<AsyncPgConnection> for bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>> {
    fn checkout(
        &self,
    ) -> BoxFuture<'_, Result<NodeConnection<AsyncPgConnection>, crate::BoxError>> {
        async move {
            match self.get_owned().await {
                Ok(conn) => Ok(Box::new(conn) as NodeConnection<AsyncPgConnection>),
                Err(e) => Err(e.to_string().into()),
            }
        }
        .boxed()
    }
}

/// How to build one node's pool (hidden plumbing).
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct NodePoolSettings {
    /// Connection URL.
    pub url: String,
    /// SQL run on every new connection (read-only session, statement timeout); may be empty.
    pub session_sql: String,
    /// Pool size.
    pub max_size: u32,
    /// Bound on establishing one connection.
    pub connect_timeout: std::time::Duration,
    /// Bound on a checkout, waiting included.
    pub checkout_timeout: std::time::Duration,
    /// Retry failed connects within the checkout timeout (primary) or fail fast (replicas).
    pub retry_connect: bool,
}

/// A diesel-async connection type that [`SwitchableConnection`](super::SwitchableConnection)
/// can split over: implemented for `AsyncPgConnection` (sealed; MySQL is planned).
///
/// Its methods are the backend-specific seam of the switchable connection (rendering
/// a query into owned SQL and binds, running it, delegating); they are not meant to
/// be called directly.
pub trait SwitchTarget: sealed::Sealed + AsyncConnection + Sync + 'static {
    /// The dialect the classifier judges this backend's SQL in.
    #[doc(hidden)]
    const DIALECT: Dialect;
    /// Makes a replica session read-only at the server (the second line of defence).
    #[doc(hidden)]
    const READ_ONLY_SESSION_SQL: &'static str;

    /// The primary's current WAL write position.
    #[doc(hidden)]
    fn current_wal_lsn(conn: &mut Self) -> BoxFuture<'_, QueryResult<crate::Lsn>>;

    /// The WAL position a replica has replayed (`None` on a node not in recovery).
    #[doc(hidden)]
    fn replay_lsn(conn: &mut Self) -> BoxFuture<'_, QueryResult<Option<crate::Lsn>>>;

    /// SQL that bounds every statement of a session to `timeout`.
    #[doc(hidden)]
    fn statement_timeout_sql(timeout: std::time::Duration) -> String;

    /// A bb8 pool of this connection type for one node; `session_sql` runs on every
    /// new connection.
    #[doc(hidden)]
    fn node_pool(settings: NodePoolSettings) -> std::sync::Arc<dyn NodePool<Self>>;

    #[doc(hidden)]
    /// One row type for both paths (direct delegation and owned execution).
    /// Must not borrow from the connection or the query.
    type OwnedRow: for<'a> diesel::row::Row<'a, Self::Backend> + Send + 'static;
    #[doc(hidden)]
    /// Owned "SQL + binds" (+ whatever must still be resolved once a connection is in hand).
    type Rendered: Send + 'static;
    #[doc(hidden)]
    /// State shared by all connections of one router that rendering may consult
    /// (PostgreSQL: the custom-type OID cache).
    type RenderCtx: Default + Clone + Send + Sync + 'static;

    #[doc(hidden)]
    /// SQL text with placeholders, for the classifier. Never contains bind values.
    fn render_sql<Q>(query: &Q) -> QueryResult<String>
    where
        Q: QueryFragment<Self::Backend> + ?Sized;

    #[doc(hidden)]
    /// Whether this instance's SQL is the same for every instance of its static query
    /// type (diesel's "safe to cache prepared"), so that it may be shared by type.
    fn is_safe_to_cache<Q>(query: &Q) -> QueryResult<bool>
    where
        Q: QueryFragment<Self::Backend> + ?Sized;

    #[doc(hidden)]
    /// SQL + binds as owned data, rendering the SQL unless `sql` already has it.
    /// Runs synchronously while the query is still in hand.
    fn render<Q>(
        query: &Q,
        sql: Option<SqlText>,
        ctx: &Self::RenderCtx,
    ) -> QueryResult<Self::Rendered>
    where
        Q: QueryFragment<Self::Backend> + QueryId + ?Sized;

    #[doc(hidden)]
    /// Run owned SQL + binds, yielding rows through a stream that does not borrow
    /// the connection. By reference: a read that failed on one node runs again on
    /// another from the same rendering.
    fn load_rendered<'c>(
        conn: &'c mut Self,
        rendered: &'c mut Self::Rendered,
        ctx: &'c Self::RenderCtx,
    ) -> BoxFuture<'c, QueryResult<RowStream<'static, Self::OwnedRow>>>;

    /// Whether a failed read may be retried on another node: the connection or the
    /// server went away, or a hot standby cancelled it for a recovery conflict.
    #[doc(hidden)]
    fn is_retryable_read_error(error: &diesel::result::Error) -> bool;

    /// Run owned SQL + binds, yielding the affected row count.
    fn execute_rendered<'c>(
        conn: &'c mut Self,
        rendered: &'c mut Self::Rendered,
        ctx: &'c Self::RenderCtx,
    ) -> BoxFuture<'c, QueryResult<usize>>;

    #[doc(hidden)]
    /// Plain delegation (used whenever no await is needed before the statement).
    fn load_direct<'c, 'q, T>(conn: &'c mut Self, source: T) -> LoadFut<'c, Self::OwnedRow>
    where
        T: AsQuery + 'q,
        T::Query: QueryFragment<Self::Backend> + QueryId + 'q;

    #[doc(hidden)]
    /// Plain delegation of a statement that returns a row count.
    fn execute_direct<'c, 'q, T>(
        conn: &'c mut Self,
        source: T,
    ) -> BoxFuture<'c, QueryResult<usize>>
    where
        T: QueryFragment<Self::Backend> + QueryId + 'q;

    #[doc(hidden)]
    /// The inner connection's own pool-level brokenness. For `AsyncPgConnection` that is its
    /// (hidden) `PoolableConnection::is_broken`: transaction manager broken *or* the socket
    /// closed. Default: transaction-manager view only.
    fn inner_is_broken(conn: &mut Self) -> bool {
        <Self::TransactionManager as diesel_async::TransactionManager<Self>>::is_broken_transaction_manager(conn)
    }
}

/// Generic delegation helper for any connection whose `LoadFuture<'c,'q>` is
/// `BoxFuture<'c, _>` (true for `AsyncPgConnection` and `AsyncMysqlConnection`).
/// The HRTB equality bounds are what make "the inner future does not capture `'query`"
/// provable; without them `C::LoadFuture<'c,'q>` could borrow the query and could not be
/// boxed as `BoxFuture<'c, _>`.
pub(crate) fn delegate_load<'c, 'q, C, R, T>(conn: &'c mut C, source: T) -> LoadFut<'c, R>
where
    C: for<'a, 'b> AsyncConnectionCore<
        Row<'a, 'b> = R,
        LoadFuture<'a, 'b> = BoxFuture<'a, QueryResult<<C as AsyncConnectionCore>::Stream<'a, 'b>>>,
    >,
    for<'a, 'b> <C as AsyncConnectionCore>::Stream<'a, 'b>: 'a,
    T: AsQuery + 'q,
    T::Query: QueryFragment<C::Backend> + QueryId + 'q,
{
    conn.load(source).map_ok(|s| s.boxed()).boxed()
}

pub(crate) fn delegate_execute<'c, 'q, C, T>(
    conn: &'c mut C,
    source: T,
) -> BoxFuture<'c, QueryResult<usize>>
where
    C: for<'a, 'b> AsyncConnectionCore<ExecuteFuture<'a, 'b> = BoxFuture<'a, QueryResult<usize>>>,
    T: QueryFragment<C::Backend> + QueryId + 'q,
{
    conn.execute_returning_count(source)
}

impl SwitchTarget for AsyncPgConnection {
    const DIALECT: Dialect = Dialect::Postgres;
    const READ_ONLY_SESSION_SQL: &'static str = "SET SESSION default_transaction_read_only = on";

    fn current_wal_lsn(conn: &mut Self) -> BoxFuture<'_, QueryResult<crate::Lsn>> {
        async move {
            let text: String = diesel_async::RunQueryDsl::get_result(
                diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                    "pg_current_wal_lsn()::text",
                )),
                conn,
            )
            .await?;
            text.parse::<crate::Lsn>()
                .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))
        }
        .boxed()
    }

    fn replay_lsn(conn: &mut Self) -> BoxFuture<'_, QueryResult<Option<crate::Lsn>>> {
        async move {
            let text: Option<String> = diesel_async::RunQueryDsl::get_result(
                diesel::select(diesel::dsl::sql::<
                    diesel::sql_types::Nullable<diesel::sql_types::Text>,
                >("pg_last_wal_replay_lsn()::text")),
                conn,
            )
            .await?;
            text.map(|t| t.parse::<crate::Lsn>())
                .transpose()
                .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))
        }
        .boxed()
    }

    fn statement_timeout_sql(timeout: std::time::Duration) -> String {
        format!(
            "SET SESSION statement_timeout = {}",
            timeout.as_millis().max(1)
        )
    }
    type OwnedRow = PgRow;
    type Rendered = RenderedPg;

    fn node_pool(settings: NodePoolSettings) -> std::sync::Arc<dyn NodePool<Self>> {
        let NodePoolSettings {
            url,
            session_sql,
            max_size,
            connect_timeout,
            checkout_timeout,
            retry_connect,
        } = settings;
        let mut config = ManagerConfig::<Self>::default();
        config.custom_setup = Box::new(move |url: &str| {
            let url = url.to_owned();
            let session_sql = session_sql.clone();
            async move {
                let connect = AsyncPgConnection::establish(&url);
                let mut conn = tokio::time::timeout(connect_timeout, connect)
                    .await
                    .map_err(|_| {
                        diesel::ConnectionError::BadConnection(format!(
                            "no connection within the connect timeout of {connect_timeout:?}"
                        ))
                    })??;
                if !session_sql.is_empty() {
                    diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, &session_sql)
                        .await
                        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                }
                Ok(conn)
            }
            .boxed()
        });
        let manager = AsyncDieselConnectionManager::<Self>::new_with_config(url, config);
        std::sync::Arc::new(
            bb8::Pool::builder()
                .max_size(max_size)
                .connection_timeout(checkout_timeout)
                .retry_connection(retry_connect)
                .build_unchecked(manager),
        )
    }

    type RenderCtx = OidCache;

    fn render_sql<Q>(query: &Q) -> QueryResult<String>
    where
        Q: QueryFragment<diesel::pg::Pg> + ?Sized,
    {
        owned_pg::render_sql(query)
    }

    fn is_safe_to_cache<Q>(query: &Q) -> QueryResult<bool>
    where
        Q: QueryFragment<diesel::pg::Pg> + ?Sized,
    {
        query.is_safe_to_cache_prepared(&diesel::pg::Pg)
    }

    fn render<Q>(query: &Q, sql: Option<SqlText>, ctx: &OidCache) -> QueryResult<RenderedPg>
    where
        Q: QueryFragment<diesel::pg::Pg> + QueryId + ?Sized,
    {
        owned_pg::render(query, sql, ctx)
    }

    fn load_rendered<'c>(
        conn: &'c mut Self,
        rendered: &'c mut RenderedPg,
        ctx: &'c OidCache,
    ) -> BoxFuture<'c, QueryResult<RowStream<'static, PgRow>>> {
        owned_pg::load(conn, rendered, ctx)
    }

    fn execute_rendered<'c>(
        conn: &'c mut Self,
        rendered: &'c mut RenderedPg,
        ctx: &'c OidCache,
    ) -> BoxFuture<'c, QueryResult<usize>> {
        owned_pg::execute(conn, rendered, ctx)
    }

    fn is_retryable_read_error(error: &diesel::result::Error) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        match error {
            Error::DatabaseError(
                DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection,
                _,
            ) => true,
            Error::DatabaseError(_, info) => {
                let message = info.message();
                // 57P01-57P03 (shutdown, crash, starting up) and 40001 recovery conflicts.
                message.starts_with("terminating connection")
                    || message.starts_with("the database system is")
                    || message.starts_with("canceling statement due to conflict with recovery")
            }
            _ => false,
        }
    }

    fn load_direct<'c, 'q, T>(conn: &'c mut Self, source: T) -> LoadFut<'c, PgRow>
    where
        T: AsQuery + 'q,
        T::Query: QueryFragment<diesel::pg::Pg> + QueryId + 'q,
    {
        delegate_load(conn, source)
    }

    fn execute_direct<'c, 'q, T>(conn: &'c mut Self, source: T) -> BoxFuture<'c, QueryResult<usize>>
    where
        T: QueryFragment<diesel::pg::Pg> + QueryId + 'q,
    {
        delegate_execute(conn, source)
    }

    fn inner_is_broken(conn: &mut Self) -> bool {
        diesel_async::pooled_connection::PoolableConnection::is_broken(conn)
    }
}
