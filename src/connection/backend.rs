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
use diesel_async::{AsyncConnection, AsyncConnectionCore, AsyncPgConnection};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryFutureExt};

use super::node::{NodeFailure, NodePoolSettings};
use super::owned_pg::{self, OidCache, RenderedPg};
use crate::classify::Dialect;
use crate::FailureKind;

/// How long a best-effort cancel request may take before it is given up.
const CANCEL_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// What a failed statement says about its session and its node; decided by
/// diesel's error kind (itself derived from the SQLSTATE) and the session's state,
/// never by message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementFailure {
    /// The session is gone (closed, reset, terminated): the statement may or may
    /// not have run; a read may run elsewhere.
    SessionLost,
    /// A hot standby cancelled the read for a recovery conflict: the node is
    /// fine, the read may run elsewhere.
    RecoveryConflict,
    /// The server refused it as a write in a read-only session (SQLSTATE 25006): it
    /// did not run.
    ReadOnlyRefused,
    /// The statement's own error (a missing table, a bad cast, ...).
    Other,
}

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

    /// One new session to a node: TCP keepalives on, `session_sql` run. Failures
    /// are typed from the driver's SQLSTATE and I/O error kind.
    #[doc(hidden)]
    fn connect_node(settings: &NodePoolSettings<Self>) -> BoxFuture<'_, Result<Self, NodeFailure>>;

    /// A single-node session to `url`, opened as the pool opens its own (the URL's
    /// TLS settings, keepalives), for [`AsyncConnection::establish`].
    #[doc(hidden)]
    fn establish_direct(url: &str) -> BoxFuture<'_, diesel::ConnectionResult<Self>>;

    /// A cancel request for whatever the session runs now, to send when a read is
    /// given up on (`None` if the backend cannot cancel).
    #[doc(hidden)]
    fn cancel_request(conn: &Self) -> Option<BoxFuture<'static, ()>>;

    /// What a statement's error says (see [`StatementFailure`]). A connection-level
    /// error is always `SessionLost`; a server error that is not one of the typed
    /// kinds is `Other` here, and the caller asks the session whether it still
    /// lives before deciding.
    #[doc(hidden)]
    fn statement_failure(error: &diesel::result::Error) -> StatementFailure;

    /// The SQL text of a rendering (for fingerprints).
    #[doc(hidden)]
    fn rendered_sql(rendered: &Self::Rendered) -> &str;

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

    fn connect_node(settings: &NodePoolSettings<Self>) -> BoxFuture<'_, Result<Self, NodeFailure>> {
        async move {
            let (client, connection) = settings
                .endpoint
                .connect(None, settings.connect_timeout)
                .await?;
            let mut conn = AsyncPgConnection::try_from_client_and_connection(client, connection)
                .await
                .map_err(|e| NodeFailure::new(FailureKind::Server, e))?;
            // The application's set-up first, the crate's session SQL last: a hook
            // cannot turn a replica session writable.
            if let Some(hook) = &settings.on_connect {
                hook(&mut conn)
                    .await
                    .map_err(|e| NodeFailure::new(FailureKind::Server, e))?;
            }
            if !settings.session_sql.is_empty() {
                diesel_async::SimpleAsyncConnection::batch_execute(
                    &mut conn,
                    &settings.session_sql,
                )
                .await
                .map_err(|e| NodeFailure::new(FailureKind::Server, e))?;
            }
            Ok(conn)
        }
        .boxed()
    }

    fn establish_direct(url: &str) -> BoxFuture<'_, diesel::ConnectionResult<Self>> {
        use diesel::ConnectionError;
        async move {
            let endpoint = crate::connect::PgEndpoint::new("database", url, &Default::default())
                .map_err(|e| ConnectionError::InvalidConnectionUrl(e.to_string()))?;
            // diesel's default for a connect is unbounded; keep tokio-postgres' own.
            let (client, connection) = endpoint
                .connect(None, std::time::Duration::from_secs(30))
                .await
                .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
            AsyncPgConnection::try_from_client_and_connection(client, connection).await
        }
        .boxed()
    }

    fn cancel_request(conn: &Self) -> Option<BoxFuture<'static, ()>> {
        let token = conn.cancel_token();
        Some(
            async move {
                // Best effort: a frozen server does not answer this either.
                let _ = tokio::time::timeout(CANCEL_BOUND, crate::connect::cancel(token)).await;
            }
            .boxed(),
        )
    }

    fn statement_failure(error: &diesel::result::Error) -> StatementFailure {
        use diesel::result::{DatabaseErrorKind, Error};
        match error {
            Error::DatabaseError(
                DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection,
                _,
            ) => StatementFailure::SessionLost,
            // 25006: the session is read-only and refused a write before doing it.
            Error::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _) => {
                StatementFailure::ReadOnlyRefused
            }
            // 40001 outside a transaction on a hot standby is a recovery conflict
            // (a standby runs no serializable read-write transaction).
            Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
                StatementFailure::RecoveryConflict
            }
            _ => StatementFailure::Other,
        }
    }

    fn rendered_sql(rendered: &RenderedPg) -> &str {
        owned_pg::sql_of(rendered)
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

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error};

    #[test]
    fn statement_failures_by_kind() {
        let db = |kind| Error::DatabaseError(kind, Box::new(String::from("any text at all")));
        let cases = [
            (
                db(DatabaseErrorKind::UnableToSendCommand),
                StatementFailure::SessionLost,
            ),
            (
                db(DatabaseErrorKind::ClosedConnection),
                StatementFailure::SessionLost,
            ),
            (
                db(DatabaseErrorKind::ReadOnlyTransaction),
                StatementFailure::ReadOnlyRefused,
            ),
            (
                db(DatabaseErrorKind::SerializationFailure),
                StatementFailure::RecoveryConflict,
            ),
            (
                db(DatabaseErrorKind::UniqueViolation),
                StatementFailure::Other,
            ),
            (db(DatabaseErrorKind::Unknown), StatementFailure::Other),
            (Error::NotFound, StatementFailure::Other),
        ];
        for (error, expected) in cases {
            assert_eq!(
                <AsyncPgConnection as SwitchTarget>::statement_failure(&error),
                expected,
                "{error:?}"
            );
        }
    }
}
