//! The per-backend seam: everything that differs between PostgreSQL and MySQL.
//!
//! [`SwitchTarget`] keeps `SwitchableConnection<C>` and `SwitchablePool<C>` generic.
//! Each backend supplies, in its own folder (`pg/`, `mysql/`):
//! * rendering a (non-`Send`) diesel query into owned SQL text (for the classifier)
//!   and into an owned, `Send + 'static` "SQL + binds" value that can be held across
//!   the `.await` that fetches the primary, and running that value;
//! * how a node's sessions are made ([`NodeEndpoint`]: URL, TLS, credentials,
//!   keepalives) and how the lag monitor probes a node ([`ProbeTarget`]);
//! * replication positions and causal tokens (PostgreSQL WAL positions, MySQL and
//!   MariaDB GTIDs);
//! * error classification (SQLSTATE, MySQL error codes), and session SQL.
//!
//! The monitor, the health probes and the pool go through these parts only.

use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::QueryResult;
use diesel_async::{AsyncConnection, AsyncConnectionCore};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryFutureExt};

#[cfg(feature = "mysql")]
pub(crate) mod mysql;
pub(crate) mod pg;
mod replay;

use std::sync::Arc;
use std::time::Duration;

use crate::classify::Dialect;
use crate::connect::ConnectSettings;
use crate::connection::{NodeFailure, NodePoolSettings};
use crate::{CausalToken, Error, Lsn};

pub use pg::PgRow;

/// How long a best-effort cancel request may take before it is given up.
pub(crate) const CANCEL_BOUND: Duration = Duration::from_secs(2);

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

/// What diesel's error kind alone says, for every backend: a session that is gone,
/// or a write the read-only session refused before doing it (SQLSTATE 25006; MySQL
/// error 1792, which diesel-async types so).
pub(crate) fn failure_by_kind(error: &diesel::result::Error) -> StatementFailure {
    use diesel::result::{DatabaseErrorKind, Error};
    match error {
        Error::DatabaseError(
            DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection,
            _,
        ) => StatementFailure::SessionLost,
        Error::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _) => {
            StatementFailure::ReadOnlyRefused
        }
        _ => StatementFailure::Other,
    }
}

/// Boxed row stream shared by every backend.
pub type RowStream<'c, R> = BoxStream<'c, QueryResult<R>>;
/// Boxed load future shared by every backend.
pub type LoadFut<'c, R> = BoxFuture<'c, QueryResult<RowStream<'c, R>>>;

mod sealed {
    pub trait Sealed {}
    impl Sealed for diesel_async::AsyncPgConnection {}
    #[cfg(feature = "mysql")]
    impl Sealed for diesel_async::AsyncMysqlConnection {}
}

/// How sessions to one node are opened: its URL read once, with TLS, credentials
/// and keepalives (hidden plumbing of [`SwitchTarget`]).
#[doc(hidden)]
pub trait NodeEndpoint: std::fmt::Debug + Send + Sync + Sized + 'static {
    /// The recipe for the node called `label` (`primary`, `replica1`, ...) at `url`.
    /// Errors name the node, never the password.
    fn parse(label: &str, url: &str, settings: &ConnectSettings) -> Result<Self, Error>;

    /// The same recipe for sessions that must be able to write: a session on a node
    /// that is read-only (a standby, a `read_only` MySQL replica) is refused at
    /// connect, so that a name that moves is never used while it points at a replica.
    fn read_write(&self) -> Self;

    /// `label (host:port)`: the node's name in errors and logs.
    fn name(&self) -> &str;

    /// The node's (first) host and port, as the URL names them.
    fn host_port(&self) -> (String, u16);

    /// Whether every TCP address of the node accepts a connection within `timeout`.
    fn reachable(&self, timeout: Duration) -> BoxFuture<'_, Result<(), Error>>;

    /// The lag monitor's way into the node.
    fn probe_target(self: Arc<Self>) -> Arc<dyn ProbeTarget>;
}

/// Opens the lag monitor's dedicated sessions to one node.
#[doc(hidden)]
pub trait ProbeTarget: Send + Sync + 'static {
    /// One new monitoring session (`timeout` bounds the connect); errors as text that
    /// never holds a password.
    fn open(&self, timeout: Duration) -> BoxFuture<'_, Result<Box<dyn ProbeSession>, String>>;
}

/// One monitoring session: what the monitor asks a node each round. The monitor
/// bounds each call and drops the session after any failure.
#[doc(hidden)]
pub trait ProbeSession: Send + 'static {
    /// The session is known to be gone (the next round reconnects).
    fn is_closed(&self) -> bool;
    /// The primary's current write position.
    fn primary_position(&mut self) -> BoxFuture<'_, Result<Lsn, String>>;
    /// What a replica (or any member, in discovery mode) says of itself.
    fn replica_sample(&mut self) -> BoxFuture<'_, Result<ReplicaSample, String>>;
}

/// What a member answered to the monitor. Positions are backend units: WAL bytes
/// on PostgreSQL, transactions (GTID sequence numbers summed over domains) on
/// MySQL and MariaDB.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaSample {
    /// A standby (PostgreSQL: in recovery; MySQL: `read_only`).
    pub(crate) in_recovery: bool,
    /// Received, not necessarily applied (`None` where the backend does not say).
    pub(crate) receive: Option<Lsn>,
    /// Applied.
    pub(crate) replay: Option<Lsn>,
    /// Its own write position, when it is not a standby.
    pub(crate) current: Option<Lsn>,
}

/// A diesel-async connection type that [`SwitchableConnection`](super::SwitchableConnection)
/// can split over: implemented for `AsyncPgConnection` and, with the `mysql` feature,
/// `AsyncMysqlConnection` (sealed).
///
/// Its methods are the backend-specific seam of the switchable connection (rendering
/// a query into owned SQL and binds, running it, delegating); they are not meant to
/// be called directly.
pub trait SwitchTarget: sealed::Sealed + AsyncConnection + Send + 'static {
    /// How sessions to a node are opened.
    #[doc(hidden)]
    type Endpoint: NodeEndpoint;

    /// The dialect the classifier judges this backend's SQL in.
    #[doc(hidden)]
    const DIALECT: Dialect;
    /// The primary's current position, as a causal token.
    #[doc(hidden)]
    fn current_position(conn: &mut Self) -> BoxFuture<'_, QueryResult<CausalToken>>;

    /// Wait, at most `timeout`, until this replica session's node has applied
    /// everything `token` stands for: `Ok(true)` once it has, `Ok(false)` if
    /// `timeout` passed first (or the token is of another backend). The caller
    /// bounds the whole; cut mid-query, the session's state is unknown.
    #[doc(hidden)]
    fn wait_replayed<'c>(
        conn: &'c mut Self,
        token: &'c CausalToken,
        timeout: Duration,
    ) -> BoxFuture<'c, QueryResult<bool>>;

    /// One new session to a node: TCP keepalives on, the application's `on_connect`
    /// hook run, then the crate's session SQL (read-only for replicas, the
    /// statement timeout). Failures are typed from the driver's error codes and
    /// I/O error kind.
    #[doc(hidden)]
    fn connect_node(settings: &NodePoolSettings<Self>) -> BoxFuture<'_, Result<Self, NodeFailure>>;

    /// A single-node session to `url`, opened as the pool opens its own (the URL's
    /// TLS settings, keepalives), for [`AsyncConnection::establish`].
    #[doc(hidden)]
    fn establish_direct(url: &str) -> BoxFuture<'_, diesel::ConnectionResult<Self>>;

    /// A cancel request for whatever the session runs now, to send when a read is
    /// given up on (`None` if the backend cannot cancel).
    #[doc(hidden)]
    fn cancel_request(conn: &mut Self) -> Option<BoxFuture<'static, ()>>;

    /// What a statement's error says (see [`StatementFailure`]). A connection-level
    /// error is always `SessionLost`; a server error that is not one of the typed
    /// kinds is `Other` here, and the caller asks the session whether it still
    /// lives before deciding.
    #[doc(hidden)]
    fn statement_failure(error: &diesel::result::Error) -> StatementFailure;

    /// Whether [`diagnose`](Self::diagnose) must be asked about every untyped server
    /// error (the driver does not keep the error code), not only before a retry.
    #[doc(hidden)]
    const DIAGNOSE_UNTYPED: bool = false;

    /// Asked on the session right after a statement failed with an error
    /// [`statement_failure`](Self::statement_failure) could not type: what was it?
    /// An `Err` means the session did not answer (it is lost). PostgreSQL: a round
    /// trip (`Other` if it answers). MySQL: the session's diagnostics area, by code.
    #[doc(hidden)]
    fn diagnose(conn: &mut Self) -> BoxFuture<'_, QueryResult<StatementFailure>>;

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

    /// Whether [`load_rendered`](Self::load_rendered) has every row in hand when it
    /// returns, and returns a failure before the first row as its own error (MySQL:
    /// diesel-async's row stream borrows its session, so the rows are collected).
    /// The read path then need not look at the first row itself.
    #[doc(hidden)]
    const ROWS_COLLECTED: bool = false;

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
