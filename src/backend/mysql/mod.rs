//! MySQL and MariaDB: `AsyncMysqlConnection` as a [`SwitchTarget`] (feature `mysql`).
//!
//! Replica sessions are made read-only at the server with `SET SESSION TRANSACTION
//! READ ONLY`: a write in one fails with error 1792 before it does anything. The
//! replicas' own `read_only` (error 1290) is the third line: it does not stop an
//! account with `SUPER` or (MariaDB 10.11) `READ ONLY ADMIN`, which may write on a
//! `read_only` server; so the application's account must not hold them, or a write
//! that got past the classifier and the session setting (it cannot, but defence in
//! depth is the point) would land on a replica. MySQL's `super_read_only` closes
//! that hole for MySQL; MariaDB 10.11 has no such setting.
//!
//! Errors by code, never by text. diesel-async keeps only the message of a MySQL
//! server error (it types 1792 as `ReadOnlyTransaction` and drops the code of the
//! rest), so an untyped error is looked up in the session's own diagnostics area
//! (`SHOW ERRORS`) right after it happened: 1290, 1836 and 1792 are a read-only
//! refusal (the statement did not run: it runs again on the primary), a session
//! that does not answer is lost (2006, 2013, 1927 and every I/O error end here).
//!
//! Positions are GTIDs: MariaDB's `@@gtid_binlog_pos` on the primary, applied
//! `@@gtid_slave_pos` on replicas, checked with `MASTER_GTID_WAIT`; MySQL's
//! `@@gtid_executed`, checked with `WAIT_FOR_EXECUTED_GTID_SET`. Statement timeouts:
//! MariaDB's `max_statement_time` (every statement), MySQL's `max_execution_time`
//! (read-only `SELECT`s only: MySQL does not bound other statements).
//!
//! MySQL 8 itself is not installed on the machines this crate is tested on: its
//! paths (flavour detected from `@@version`) follow MySQL's documentation and are
//! covered by unit tests only; everything else is tested on MariaDB 10.11.

mod endpoint;
mod probe;
mod render;

use std::time::Duration;

use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::QueryResult;
use diesel_async::{AsyncConnectionCore, AsyncMysqlConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{
    delegate_execute, delegate_load, LoadFut, RowStream, SqlText, StatementFailure, SwitchTarget,
    CANCEL_BOUND,
};
use crate::classify::Dialect;
use crate::connection::{NodeFailure, NodePoolSettings};
use crate::{CausalToken, FailureKind};
pub(crate) use endpoint::MysqlEndpoint;
use endpoint::{code, Flavor};
use render::RenderedMysql;

/// The row type a `SwitchableConnection<AsyncMysqlConnection>` yields.
pub type MysqlRow = <AsyncMysqlConnection as AsyncConnectionCore>::Row<'static, 'static>;

/// The crate's SQL for a new session of a server of `flavor`.
fn session_sql(flavor: Flavor, read_only: bool, timeout: Option<Duration>) -> Vec<String> {
    let mut sql = Vec::new();
    if read_only {
        sql.push("SET SESSION TRANSACTION READ ONLY".to_owned());
    }
    if let Some(timeout) = timeout {
        sql.push(match flavor {
            // Seconds, with microsecond precision.
            Flavor::MariaDb => format!(
                "SET SESSION max_statement_time = {:.6}",
                timeout.as_secs_f64().max(0.000_001)
            ),
            Flavor::MySql => format!(
                "SET SESSION max_execution_time = {}",
                timeout.as_millis().max(1)
            ),
        });
    }
    sql
}

/// What an error code found in the session's diagnostics area means.
fn failure_of_code(code: u32) -> StatementFailure {
    match u16::try_from(code) {
        Ok(
            code::OPTION_PREVENTS_STATEMENT | code::READ_ONLY_MODE | code::READ_ONLY_TRANSACTION,
        ) => StatementFailure::ReadOnlyRefused,
        Ok(
            code::CONNECTION_KILLED
            | code::CR_SERVER_GONE_ERROR
            | code::CR_SERVER_LOST
            | code::CR_CONNECTION_ERROR
            | code::CR_CONN_HOST_ERROR,
        ) => StatementFailure::SessionLost,
        _ => StatementFailure::Other,
    }
}

#[derive(diesel::QueryableByName)]
struct DiagnosticsRow {
    #[diesel(sql_type = diesel::sql_types::Unsigned<diesel::sql_types::Integer>, column_name = "Code")]
    code: u32,
}

/// `SELECT @@version` decides which server a session is on.
async fn flavor_of(conn: &mut AsyncMysqlConnection) -> QueryResult<Flavor> {
    let version: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>("@@version"))
        .get_result(conn)
        .await?;
    Ok(Flavor::of_version(&version))
}

impl SwitchTarget for AsyncMysqlConnection {
    type Endpoint = MysqlEndpoint;
    const DIALECT: Dialect = Dialect::Mysql;
    const DIAGNOSE_UNTYPED: bool = true;
    const ROWS_COLLECTED: bool = true;

    fn current_position(conn: &mut Self) -> BoxFuture<'_, QueryResult<CausalToken>> {
        async move {
            let flavor = flavor_of(conn).await?;
            let variable = match flavor {
                Flavor::MariaDb => "@@gtid_binlog_pos",
                Flavor::MySql => "@@gtid_executed",
            };
            let text: String =
                diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(variable))
                    .get_result(conn)
                    .await?;
            match flavor {
                Flavor::MariaDb => CausalToken::mariadb_gtid(&text),
                Flavor::MySql => CausalToken::mysql_gtid_set(&text),
            }
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
            use diesel::sql_types::{Double, Text};
            // Server-side waits: one statement, answered 0 when the position is
            // applied, else when the timeout passes (MariaDB -1, MySQL 1; NULL for
            // a malformed position).
            let (sql, gtid) = if let Some(position) = token.maria_position() {
                (
                    "SELECT MASTER_GTID_WAIT(?, ?) AS answer",
                    position.to_string(),
                )
            } else if let Some(set) = token.mysql_set() {
                (
                    "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?) AS answer",
                    set.to_owned(),
                )
            } else {
                return Ok(false);
            };
            let answer: Option<i32> = diesel::sql_query(sql)
                .bind::<Text, _>(gtid)
                .bind::<Double, _>(timeout.as_secs_f64())
                .load::<WaitAnswer>(conn)
                .await?
                .into_iter()
                .next()
                .and_then(|row| row.answer);
            Ok(answer == Some(0))
        }
        .boxed()
    }

    type OwnedRow = MysqlRow;
    type Rendered = RenderedMysql;

    fn connect_node(settings: &NodePoolSettings<Self>) -> BoxFuture<'_, Result<Self, NodeFailure>> {
        async move {
            let opened = settings.endpoint.open().await?;
            let flavor = opened.flavor;
            let mut conn = AsyncMysqlConnection::try_from(opened.conn)
                .await
                .map_err(|e| NodeFailure::new(FailureKind::Server, e))?;
            // The application's set-up first, the crate's session SQL last: a hook
            // cannot turn a replica session writable.
            if let Some(hook) = &settings.on_connect {
                hook(&mut conn)
                    .await
                    .map_err(|e| NodeFailure::new(FailureKind::Server, e))?;
            }
            for sql in session_sql(flavor, settings.read_only, settings.statement_timeout) {
                conn.batch_execute(&sql)
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
            let endpoint =
                <MysqlEndpoint as super::NodeEndpoint>::parse("database", url, &Default::default())
                    .map_err(|e| ConnectionError::InvalidConnectionUrl(e.to_string()))?;
            let opened = endpoint
                .open()
                .await
                .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
            AsyncMysqlConnection::try_from(opened.conn).await
        }
        .boxed()
    }

    fn cancel_request(conn: &mut Self) -> Option<BoxFuture<'static, ()>> {
        let token = conn.cancel_token();
        Some(
            async move {
                // Best effort (`KILL QUERY` from a new session): a frozen server does
                // not answer this either.
                let _ = tokio::time::timeout(CANCEL_BOUND, token.cancel_query()).await;
            }
            .boxed(),
        )
    }

    fn statement_failure(error: &diesel::result::Error) -> StatementFailure {
        // Untyped errors (1290, 1836, lost sessions) are asked of the session:
        // `diagnose`.
        super::failure_by_kind(error)
    }

    fn diagnose(conn: &mut Self) -> BoxFuture<'_, QueryResult<StatementFailure>> {
        async move {
            // A diagnostics statement: it reads the last statement's conditions
            // without clearing them.
            let rows: Vec<DiagnosticsRow> = diesel::sql_query("SHOW ERRORS").load(conn).await?;
            Ok(rows
                .iter()
                .map(|row| failure_of_code(row.code))
                .find(|failure| *failure != StatementFailure::Other)
                .unwrap_or(StatementFailure::Other))
        }
        .boxed()
    }

    fn rendered_sql(rendered: &RenderedMysql) -> &str {
        render::sql_of(rendered)
    }

    type RenderCtx = ();

    fn render_sql<Q>(query: &Q) -> QueryResult<String>
    where
        Q: QueryFragment<diesel::mysql::Mysql> + ?Sized,
    {
        render::render_sql(query)
    }

    fn is_safe_to_cache<Q>(query: &Q) -> QueryResult<bool>
    where
        Q: QueryFragment<diesel::mysql::Mysql> + ?Sized,
    {
        query.is_safe_to_cache_prepared(&diesel::mysql::Mysql)
    }

    fn render<Q>(query: &Q, sql: Option<SqlText>, _ctx: &()) -> QueryResult<RenderedMysql>
    where
        Q: QueryFragment<diesel::mysql::Mysql> + QueryId + ?Sized,
    {
        render::render(query, sql)
    }

    fn load_rendered<'c>(
        conn: &'c mut Self,
        rendered: &'c mut RenderedMysql,
        _ctx: &'c (),
    ) -> BoxFuture<'c, QueryResult<RowStream<'static, MysqlRow>>> {
        render::load(conn, rendered)
    }

    fn execute_rendered<'c>(
        conn: &'c mut Self,
        rendered: &'c mut RenderedMysql,
        _ctx: &'c (),
    ) -> BoxFuture<'c, QueryResult<usize>> {
        render::execute(conn, rendered)
    }

    fn load_direct<'c, 'q, T>(conn: &'c mut Self, source: T) -> LoadFut<'c, MysqlRow>
    where
        T: AsQuery + 'q,
        T::Query: QueryFragment<diesel::mysql::Mysql> + QueryId + 'q,
    {
        delegate_load(conn, source)
    }

    fn execute_direct<'c, 'q, T>(conn: &'c mut Self, source: T) -> BoxFuture<'c, QueryResult<usize>>
    where
        T: QueryFragment<diesel::mysql::Mysql> + QueryId + 'q,
    {
        delegate_execute(conn, source)
    }
}

#[derive(diesel::QueryableByName)]
struct WaitAnswer {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>, column_name = "answer")]
    answer: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_from_the_diagnostics_area() {
        let cases = [
            (1290, StatementFailure::ReadOnlyRefused),
            (1836, StatementFailure::ReadOnlyRefused),
            (1792, StatementFailure::ReadOnlyRefused),
            (1927, StatementFailure::SessionLost),
            (2006, StatementFailure::SessionLost),
            (2013, StatementFailure::SessionLost),
            (1146, StatementFailure::Other),
            (1969, StatementFailure::Other),
            (70_000, StatementFailure::Other),
        ];
        for (code, failure) in cases {
            assert_eq!(failure_of_code(code), failure, "{code}");
        }
    }

    #[test]
    fn session_sql_by_flavor() {
        let t = Some(Duration::from_millis(1500));
        let cases: &[(Flavor, bool, Option<Duration>, &[&str])] = &[
            (Flavor::MariaDb, false, None, &[]),
            (
                Flavor::MariaDb,
                true,
                t,
                &[
                    "SET SESSION TRANSACTION READ ONLY",
                    "SET SESSION max_statement_time = 1.500000",
                ],
            ),
            (
                Flavor::MySql,
                false,
                t,
                &["SET SESSION max_execution_time = 1500"],
            ),
            (
                Flavor::MySql,
                true,
                None,
                &["SET SESSION TRANSACTION READ ONLY"],
            ),
        ];
        for (flavor, read_only, timeout, expected) in cases {
            assert_eq!(session_sql(*flavor, *read_only, *timeout), *expected);
        }
    }

    #[test]
    fn statement_failures_by_kind() {
        use diesel::result::{DatabaseErrorKind, Error};
        let db = |kind| Error::DatabaseError(kind, Box::new(String::from("any text at all")));
        let cases = [
            (
                db(DatabaseErrorKind::ReadOnlyTransaction),
                StatementFailure::ReadOnlyRefused,
            ),
            (
                db(DatabaseErrorKind::ClosedConnection),
                StatementFailure::SessionLost,
            ),
            (db(DatabaseErrorKind::Unknown), StatementFailure::Other),
            (Error::NotFound, StatementFailure::Other),
        ];
        for (error, expected) in cases {
            assert_eq!(
                <AsyncMysqlConnection as SwitchTarget>::statement_failure(&error),
                expected,
                "{error:?}"
            );
        }
    }
}
