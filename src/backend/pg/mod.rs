//! PostgreSQL: `AsyncPgConnection` as a [`SwitchTarget`].

mod probe;
#[cfg(feature = "mysql")]
pub(crate) use probe::append_causes;
#[cfg(test)]
pub(crate) use probe::APPLICATION_NAME;
pub(crate) mod render;

use std::sync::Arc;
use std::time::Duration;

use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::QueryResult;
use diesel_async::{AsyncConnectionCore, AsyncPgConnection};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{
    delegate_execute, delegate_load, LoadFut, NodeEndpoint, ProbeTarget, RowStream, SqlText,
    StatementFailure, SwitchTarget, CANCEL_BOUND,
};
use crate::classify::Dialect;
use crate::connect::{ConnectSettings, PgEndpoint};
use crate::connection::{NodeFailure, NodePoolSettings};
use crate::{CausalToken, Error, FailureKind, Lsn};
use render::{OidCache, RenderedPg};

/// The row type a `SwitchableConnection<AsyncPgConnection>` yields (diesel-async's
/// `PgRow`, which is only nameable through this projection).
pub type PgRow = <AsyncPgConnection as AsyncConnectionCore>::Row<'static, 'static>;

/// The longest pause between two replay-position checks while waiting for a token.
const REPLAY_POLL_CAP: Duration = Duration::from_millis(50);

/// The WAL position this session's node has replayed (`None` when not in recovery).
async fn replay_lsn(conn: &mut AsyncPgConnection) -> QueryResult<Option<Lsn>> {
    let text: Option<String> = diesel_async::RunQueryDsl::get_result(
        diesel::select(diesel::dsl::sql::<
            diesel::sql_types::Nullable<diesel::sql_types::Text>,
        >("pg_last_wal_replay_lsn()::text")),
        conn,
    )
    .await?;
    text.map(|t| t.parse::<Lsn>())
        .transpose()
        .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))
}

/// The crate's SQL for a new session: read-only at the server (the second line of
/// defence on replicas), every statement bounded.
fn session_sql(read_only: bool, statement_timeout: Option<Duration>) -> String {
    let mut sql = Vec::new();
    if read_only {
        sql.push("SET SESSION default_transaction_read_only = on".to_owned());
    }
    if let Some(timeout) = statement_timeout {
        sql.push(format!(
            "SET SESSION statement_timeout = {}",
            timeout.as_millis().max(1)
        ));
    }
    sql.join("; ")
}

impl NodeEndpoint for PgEndpoint {
    fn parse(label: &str, url: &str, settings: &ConnectSettings) -> Result<Self, Error> {
        PgEndpoint::new(label, url, settings)
    }

    fn read_write(&self) -> Self {
        PgEndpoint::read_write(self)
    }

    fn name(&self) -> &str {
        PgEndpoint::name(self)
    }

    fn host_port(&self) -> (String, u16) {
        PgEndpoint::host_port(self)
    }

    fn reachable(&self, timeout: Duration) -> BoxFuture<'_, Result<(), Error>> {
        PgEndpoint::reachable(self, timeout).boxed()
    }

    fn probe_target(self: Arc<Self>) -> Arc<dyn ProbeTarget> {
        Arc::new(probe::PgProbeTarget(self))
    }
}

impl SwitchTarget for AsyncPgConnection {
    type Endpoint = PgEndpoint;
    const DIALECT: Dialect = Dialect::Postgres;

    fn current_position(conn: &mut Self) -> BoxFuture<'_, QueryResult<CausalToken>> {
        async move {
            let text: String = diesel_async::RunQueryDsl::get_result(
                diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                    "pg_current_wal_lsn()::text",
                )),
                conn,
            )
            .await?;
            text.parse::<Lsn>()
                .map(CausalToken::new)
                .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))
        }
        .boxed()
    }

    fn wait_replayed<'c>(
        conn: &'c mut Self,
        token: &'c CausalToken,
        timeout: Duration,
    ) -> BoxFuture<'c, QueryResult<bool>> {
        async move {
            let Some(wanted) = token.lsn() else {
                return Ok(false);
            };
            // PostgreSQL has no server-side wait for a replay position: ask again
            // after 1, 2, 4, ... ms, at most `REPLAY_POLL_CAP` apart.
            let deadline = tokio::time::Instant::now() + timeout;
            let mut pause = Duration::from_millis(1);
            loop {
                if replay_lsn(conn).await?.is_some_and(|lsn| lsn >= wanted) {
                    return Ok(true);
                }
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                if remaining.is_zero() {
                    return Ok(false);
                }
                tokio::time::sleep(pause.min(remaining)).await;
                pause = (pause * 2).min(REPLAY_POLL_CAP);
            }
        }
        .boxed()
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
            let session_sql = session_sql(settings.read_only, settings.statement_timeout);
            if !session_sql.is_empty() {
                diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, &session_sql)
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

    fn cancel_request(conn: &mut Self) -> Option<BoxFuture<'static, ()>> {
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
            // 40001 outside a transaction on a hot standby is a recovery conflict
            // (a standby runs no serializable read-write transaction).
            Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
                StatementFailure::RecoveryConflict
            }
            _ => super::failure_by_kind(error),
        }
    }

    fn diagnose(conn: &mut Self) -> BoxFuture<'_, QueryResult<StatementFailure>> {
        // diesel types every SQLSTATE this crate acts on; an untyped error is the
        // statement's own if the session still answers.
        async move {
            diesel_async::SimpleAsyncConnection::batch_execute(conn, "SELECT 1").await?;
            Ok(StatementFailure::Other)
        }
        .boxed()
    }

    fn rendered_sql(rendered: &RenderedPg) -> &str {
        render::sql_of(rendered)
    }

    type RenderCtx = OidCache;

    fn render_sql<Q>(query: &Q) -> QueryResult<String>
    where
        Q: QueryFragment<diesel::pg::Pg> + ?Sized,
    {
        render::render_sql(query)
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
        render::render(query, sql, ctx)
    }

    fn load_rendered<'c>(
        conn: &'c mut Self,
        rendered: &'c mut RenderedPg,
        ctx: &'c OidCache,
    ) -> BoxFuture<'c, QueryResult<RowStream<'static, PgRow>>> {
        render::load(conn, rendered, ctx)
    }

    fn execute_rendered<'c>(
        conn: &'c mut Self,
        rendered: &'c mut RenderedPg,
        ctx: &'c OidCache,
    ) -> BoxFuture<'c, QueryResult<usize>> {
        render::execute(conn, rendered, ctx)
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
