//! The lag monitor's sessions to a PostgreSQL node: plain tokio-postgres clients
//! (simple protocol, no statement cache), opened as the pool opens its own.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::oneshot;

use crate::backend::{ProbeSession, ProbeTarget, ReplicaSample};
use crate::connect::PgEndpoint;
use crate::connection::NodeFailure;
use crate::Lsn;

/// `application_name` of the monitor's connections (to find them in `pg_stat_activity`).
pub(crate) const APPLICATION_NAME: &str = "diesel-rwsplit monitor";

/// How long a closed-by-us connection may take to say goodbye to its server.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Opens monitoring sessions to one node.
pub(super) struct PgProbeTarget(pub(super) Arc<PgEndpoint>);

impl ProbeTarget for PgProbeTarget {
    fn open(&self, timeout: Duration) -> BoxFuture<'_, Result<Box<dyn ProbeSession>, String>> {
        async move {
            let session = connect(&self.0, timeout).await?;
            Ok(Box::new(session) as Box<dyn ProbeSession>)
        }
        .boxed()
    }
}

/// A dedicated connection whose driver task ends when it is dropped.
struct PgProbe {
    client: tokio_postgres::Client,
    /// Dropped with the connection: the driver then has [`CLOSE_GRACE`] to close politely.
    _closing: oneshot::Sender<()>,
}

impl PgProbe {
    /// The first row of `sql`, as text columns.
    async fn query_row(&mut self, sql: &str) -> Result<Vec<Option<String>>, String> {
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| describe("query", &e))?;
        for message in messages {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                return Ok((0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect());
            }
        }
        Err("query returned no row".to_owned())
    }
}

impl ProbeSession for PgProbe {
    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    fn primary_position(&mut self) -> BoxFuture<'_, Result<Lsn, String>> {
        async move {
            let row = self.query_row("SELECT pg_current_wal_lsn()").await?;
            parse_lsn(row.first())?.ok_or_else(|| "pg_current_wal_lsn() returned NULL".to_owned())
        }
        .boxed()
    }

    fn replica_sample(&mut self) -> BoxFuture<'_, Result<ReplicaSample, String>> {
        async move {
            let row = self
                .query_row(
                    "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), \
                     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END",
                )
                .await?;
            let in_recovery = match row.first() {
                Some(Some(t)) if t == "t" => true,
                Some(Some(f)) if f == "f" => false,
                _ => return Err("unexpected answer to pg_is_in_recovery()".to_owned()),
            };
            Ok(ReplicaSample {
                in_recovery,
                receive: parse_lsn(row.get(1))?,
                replay: parse_lsn(row.get(2))?,
                current: parse_lsn(row.get(3))?,
            })
        }
        .boxed()
    }
}

fn parse_lsn(column: Option<&Option<String>>) -> Result<Option<Lsn>, String> {
    match column {
        None => Err("missing column in the answer".to_owned()),
        Some(None) => Ok(None),
        Some(Some(text)) => text
            .parse::<Lsn>()
            .map(Some)
            .map_err(|_| "unexpected LSN format in the answer".to_owned()),
    }
}

async fn connect(endpoint: &PgEndpoint, timeout: Duration) -> Result<PgProbe, String> {
    let (client, connection) = endpoint
        .connect(Some(APPLICATION_NAME), timeout)
        .await
        .map_err(|failure| describe_failure("connect", &failure))?;
    let (closing, closed) = oneshot::channel::<()>();
    tokio::spawn(async move {
        // Errors surface through the client; this only drives the socket. Once the
        // client is dropped the connection says goodbye and ends by itself; the grace
        // period bounds that on a server that does not answer.
        tokio::select! {
            _ = connection => {}
            _ = async {
                let _ = closed.await;
                tokio::time::sleep(CLOSE_GRACE).await;
            } => {}
        }
    });
    Ok(PgProbe {
        client,
        _closing: closing,
    })
}

/// A connect failure as text: the driver's error as [`describe`] gives it, or the
/// failure (TLS, credentials) and its causes.
pub(crate) fn describe_failure(step: &str, failure: &NodeFailure) -> String {
    if let Some(error) = failure.source.downcast_ref::<tokio_postgres::Error>() {
        return describe(step, error);
    }
    let mut message = format!("{step}: {failure}");
    append_causes(&mut message, failure.source.source());
    message
}

/// `: cause: its cause: …` after `message`.
pub(crate) fn append_causes(
    message: &mut String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) {
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
}

/// A driver error as text: the server's message and SQLSTATE, or the error and its
/// causes. tokio-postgres does not put connection parameters (so no password) in
/// either; configuration errors are never formatted (the URL is parsed up front).
fn describe(step: &str, error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!(
            "{step}: {} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        );
    }
    let mut message = format!("{step}: {error}");
    append_causes(&mut message, std::error::Error::source(error));
    message
}
