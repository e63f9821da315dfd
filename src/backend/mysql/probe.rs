//! The lag monitor's sessions to a MySQL or MariaDB node: plain mysql_async
//! connections (text protocol), opened as the pool opens its own.
//!
//! A node is a standby when `@@read_only` is on (how MySQL and MariaDB replicas
//! are run, and what [`testing::MariaCluster`](crate::testing::MariaCluster) does).
//! Positions are GTIDs, reduced to one number per node: MariaDB's sequence numbers
//! summed over domains (`@@gtid_binlog_pos` on a primary, `@@gtid_slave_pos` on a
//! replica), MySQL's count of transactions in `@@gtid_executed`. So lag "in bytes"
//! is lag in transactions on this backend, and lag in time is dated from when the
//! primary first showed a position the replica has not applied, as on PostgreSQL.
//! `Seconds_Behind_Master` is not used: it is a guess from event timestamps that
//! reads 0 on an idle replica that has stopped receiving anything.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use mysql_async::prelude::Queryable;

use super::endpoint::{Flavor, MysqlEndpoint};
use crate::backend::{ProbeSession, ProbeTarget, ReplicaSample};
use crate::gtid::{self, MariaPosition};
use crate::Lsn;

/// Opens monitoring sessions to one node.
pub(super) struct MysqlProbeTarget(pub(super) Arc<MysqlEndpoint>);

impl ProbeTarget for MysqlProbeTarget {
    fn open(&self, timeout: Duration) -> BoxFuture<'_, Result<Box<dyn ProbeSession>, String>> {
        async move {
            let opened = tokio::time::timeout(timeout, self.0.open())
                .await
                .map_err(|_| format!("connect: no connection within {timeout:?}"))?
                .map_err(|failure| {
                    let mut message = format!("connect: {failure}");
                    crate::backend::pg::append_causes(
                        &mut message,
                        std::error::Error::source(&*failure.source),
                    );
                    message
                })?;
            Ok(Box::new(MysqlProbe {
                conn: Some(opened.conn),
                flavor: opened.flavor,
            }) as Box<dyn ProbeSession>)
        }
        .boxed()
    }
}

struct MysqlProbe {
    /// `None` once a query failed: the session is not used again.
    conn: Option<mysql_async::Conn>,
    flavor: Flavor,
}

impl Drop for MysqlProbe {
    fn drop(&mut self) {
        // Say goodbye in the background (bounded): a server that does not answer
        // must not hold the monitor.
        if let Some(conn) = self.conn.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.disconnect()).await;
                });
            }
        }
    }
}

/// A server or driver error as text: MySQL's code and message, never the URL.
fn describe(error: &mysql_async::Error) -> String {
    match error {
        mysql_async::Error::Server(server) => {
            format!(
                "query: ERROR {} ({}): {}",
                server.code, server.state, server.message
            )
        }
        other => format!("query: {other}"),
    }
}

impl MysqlProbe {
    async fn row(&mut self, sql: &str) -> Result<Vec<Option<String>>, String> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| "the monitoring session was lost".to_owned())?;
        let row: Option<mysql_async::Row> = match conn.query_first(sql).await {
            Ok(row) => row,
            Err(e) => {
                self.conn = None;
                return Err(describe(&e));
            }
        };
        let row = row.ok_or_else(|| "query returned no row".to_owned())?;
        Ok((0..row.len())
            .map(|i| match row.as_ref(i) {
                Some(mysql_async::Value::NULL) | None => None,
                Some(mysql_async::Value::Bytes(bytes)) => {
                    Some(String::from_utf8_lossy(bytes).into_owned())
                }
                Some(mysql_async::Value::Int(n)) => Some(n.to_string()),
                Some(mysql_async::Value::UInt(n)) => Some(n.to_string()),
                Some(other) => Some(other.as_sql(true)),
            })
            .collect())
    }
}

/// One GTID column reduced to the monitor's number.
fn position(flavor: Flavor, column: Option<&Option<String>>) -> Result<Option<Lsn>, String> {
    let Some(column) = column else {
        return Err("missing column in the answer".to_owned());
    };
    let Some(text) = column else {
        return Ok(None);
    };
    let total = match flavor {
        Flavor::MariaDb => MariaPosition::parse(text).map(|p| p.total()),
        Flavor::MySql => gtid::mysql_gtid_set(text).map(|(_, count)| count),
    }
    .map_err(|e| format!("unexpected GTID position in the answer: {}", e.0))?;
    Ok(Some(Lsn(total)))
}

fn truthy(column: Option<&Option<String>>) -> Result<bool, String> {
    match column {
        Some(Some(v)) if v == "1" => Ok(true),
        Some(Some(v)) if v == "0" => Ok(false),
        _ => Err("unexpected answer to @@read_only".to_owned()),
    }
}

impl ProbeSession for MysqlProbe {
    fn is_closed(&self) -> bool {
        self.conn.is_none()
    }

    fn primary_position(&mut self) -> BoxFuture<'_, Result<Lsn, String>> {
        async move {
            let sql = match self.flavor {
                Flavor::MariaDb => "SELECT @@gtid_binlog_pos",
                Flavor::MySql => "SELECT @@gtid_executed",
            };
            let row = self.row(sql).await?;
            position(self.flavor, row.first())?
                .ok_or_else(|| "the primary's GTID position is NULL".to_owned())
        }
        .boxed()
    }

    fn replica_sample(&mut self) -> BoxFuture<'_, Result<ReplicaSample, String>> {
        async move {
            let sql = match self.flavor {
                Flavor::MariaDb => "SELECT @@read_only, @@gtid_slave_pos, @@gtid_binlog_pos",
                Flavor::MySql => "SELECT @@read_only, @@gtid_executed, @@gtid_executed",
            };
            let row = self.row(sql).await?;
            let in_recovery = truthy(row.first())?;
            let applied = position(self.flavor, row.get(1))?;
            let own = position(self.flavor, row.get(2))?;
            Ok(ReplicaSample {
                in_recovery,
                receive: None,
                replay: if in_recovery { applied } else { None },
                current: if in_recovery { None } else { own },
            })
        }
        .boxed()
    }
}
