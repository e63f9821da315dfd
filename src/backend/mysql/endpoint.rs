//! How sessions to a MySQL or MariaDB node are opened: the `mysql://` URL read once
//! (as diesel-async's own `establish` reads it), credentials asked for, TCP
//! keepalives on, and what kind of server it is found out at connect.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder};

use crate::backend::{NodeEndpoint, ProbeTarget};
use crate::connect::{ConnectSettings, CredentialsProvider, NodeAddress};
use crate::connection::NodeFailure;
use crate::{Error, FailureKind, NodeStep};

/// TCP keepalive idle time of every session (milliseconds), as on PostgreSQL: a peer
/// that vanished without a reset is noticed on an idle connection.
const KEEPALIVE_MS: u32 = 10_000;

/// MySQL error codes this module decides by.
pub(crate) mod code {
    /// `ER_CON_COUNT_ERROR`: too many connections.
    pub(crate) const TOO_MANY_CONNECTIONS: u16 = 1040;
    /// `ER_ACCESS_DENIED_ERROR`.
    pub(crate) const ACCESS_DENIED: u16 = 1045;
    /// `ER_DBACCESS_DENIED_ERROR`.
    pub(crate) const DB_ACCESS_DENIED: u16 = 1044;
    /// `ER_HOST_IS_BLOCKED`.
    pub(crate) const HOST_BLOCKED: u16 = 1129;
    /// `ER_HOST_NOT_PRIVILEGED`.
    pub(crate) const HOST_NOT_PRIVILEGED: u16 = 1130;
    /// `ER_TOO_MANY_USER_CONNECTIONS`.
    pub(crate) const TOO_MANY_USER_CONNECTIONS: u16 = 1203;
    /// `ER_SERVER_SHUTDOWN`.
    pub(crate) const SERVER_SHUTDOWN: u16 = 1053;
    /// `ER_OPTION_PREVENTS_STATEMENT`: `--read-only` refused a write.
    pub(crate) const OPTION_PREVENTS_STATEMENT: u16 = 1290;
    /// `ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION`.
    pub(crate) const READ_ONLY_TRANSACTION: u16 = 1792;
    /// `ER_READ_ONLY_MODE` (MySQL: `super_read_only` / read-only mode).
    pub(crate) const READ_ONLY_MODE: u16 = 1836;
    /// `ER_CONNECTION_KILLED` (MariaDB).
    pub(crate) const CONNECTION_KILLED: u16 = 1927;
    /// `CR_CONNECTION_ERROR`: the socket could not be reached.
    pub(crate) const CR_CONNECTION_ERROR: u16 = 2002;
    /// `CR_CONN_HOST_ERROR`: the TCP connection failed.
    pub(crate) const CR_CONN_HOST_ERROR: u16 = 2003;
    /// `CR_SERVER_GONE_ERROR`.
    pub(crate) const CR_SERVER_GONE_ERROR: u16 = 2006;
    /// `CR_SERVER_LOST`: lost during a query.
    pub(crate) const CR_SERVER_LOST: u16 = 2013;
}

/// Which server a session talks to: their replication SQL differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    MariaDb,
    MySql,
}

impl Flavor {
    /// From `@@version`: MariaDB always names itself there (`10.11.19-MariaDB-...`).
    pub(crate) fn of_version(version: &str) -> Flavor {
        if version.contains("MariaDB") {
            Flavor::MariaDb
        } else {
            Flavor::MySql
        }
    }
}

/// One node's connection recipe.
#[derive(Clone)]
#[doc(hidden)]
pub struct MysqlEndpoint {
    name: String,
    opts: Opts,
    credentials: Option<Arc<dyn CredentialsProvider>>,
    address: NodeAddress,
    /// Refuse a session on a `read_only` server (primary sessions).
    require_writable: bool,
}

impl std::fmt::Debug for MysqlEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The options hold the password: only the name shows.
        f.debug_struct("MysqlEndpoint")
            .field("name", &self.name)
            .field("require_writable", &self.require_writable)
            .finish_non_exhaustive()
    }
}

/// A new session and what it found out about its server.
pub(crate) struct Opened {
    pub(crate) conn: mysql_async::Conn,
    pub(crate) flavor: Flavor,
}

impl MysqlEndpoint {
    /// One new session: credentials asked for, keepalives on, `@@version` and
    /// `@@read_only` read; refused if it must be writable and the server is
    /// read-only. `timeout` bounds nothing here: callers bound the whole.
    pub(crate) async fn open(&self) -> Result<Opened, NodeFailure> {
        let mut builder = OptsBuilder::from_opts(self.opts.clone());
        if let Some(provider) = &self.credentials {
            let credentials = provider
                .credentials(self.address.clone())
                .await
                .map_err(|e| {
                    NodeFailure::new(
                        FailureKind::Credentials,
                        crate::connect::credentials_error(e),
                    )
                })?;
            if let Some(user) = credentials.user() {
                builder = builder.user(Some(user));
            }
            builder = builder.pass(Some(credentials.secret()));
        }
        let mut conn = mysql_async::Conn::new(builder)
            .await
            .map_err(connect_failure)?;
        let row: Option<(String, i64)> = conn
            .query_first("SELECT @@version, @@read_only")
            .await
            .map_err(connect_failure)?;
        let Some((version, read_only)) = row else {
            return Err(NodeFailure::new(
                FailureKind::Server,
                "the server did not answer SELECT @@version",
            ));
        };
        if self.require_writable && read_only != 0 {
            return Err(NodeFailure::new(
                FailureKind::NotAccepting,
                "the server is read-only (@@read_only = 1): not a primary",
            ));
        }
        Ok(Opened {
            conn,
            flavor: Flavor::of_version(&version),
        })
    }
}

impl NodeEndpoint for MysqlEndpoint {
    fn parse(label: &str, url: &str, settings: &ConnectSettings) -> Result<Self, Error> {
        // mysql_async's URL errors may quote parts of the URL: never shown.
        let opts = Opts::from_url(url).map_err(|e| Error::Node {
            node: label.to_owned(),
            step: NodeStep::ParseUrl,
            kind: FailureKind::Other,
            source: describe_url_error(&e).into(),
        })?;
        let name = match opts.socket() {
            Some(socket) => format!("{label} ({socket})"),
            None => format!("{label} ({}:{})", opts.ip_or_hostname(), opts.tcp_port()),
        };
        #[cfg(feature = "tls")]
        if settings.tls_config.is_some() {
            return Err(Error::InvalidConfig(format!(
                "{name}: tls_config() applies to PostgreSQL connections; a MySQL node takes its TLS settings from its URL (require_ssl, verify_ca, verify_identity)"
            )));
        }
        if opts.ssl_opts().is_some() {
            return Err(Error::InvalidConfig(format!(
                "{name}: the URL asks for TLS, but diesel-async's MySQL connection is built without a TLS implementation here (mysql_async's `minimal-rust` features)"
            )));
        }
        let address = NodeAddress {
            node: name.clone(),
            host: opts.ip_or_hostname().to_owned(),
            port: opts.tcp_port(),
            user: opts.user().map(str::to_owned),
            dbname: opts.db_name().map(str::to_owned),
        };
        // What diesel-async's `establish` sets (it keeps its own statement cache and
        // counts found rows, as diesel does), plus keepalives.
        let opts = OptsBuilder::from_opts(opts)
            .stmt_cache_size(0)
            .client_found_rows(true)
            .tcp_keepalive(Some(KEEPALIVE_MS))
            .into();
        Ok(MysqlEndpoint {
            name,
            opts,
            credentials: settings.credentials.clone(),
            address,
            require_writable: false,
        })
    }

    fn read_write(&self) -> Self {
        MysqlEndpoint {
            require_writable: true,
            ..self.clone()
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn host_port(&self) -> (String, u16) {
        (self.address.host.clone(), self.address.port)
    }

    fn reachable(&self, timeout: Duration) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            if self.opts.socket().is_some() {
                return Ok(());
            }
            let err = |kind, source: crate::BoxError| Error::Node {
                node: self.name.clone(),
                step: NodeStep::Connect,
                kind,
                source,
            };
            let connect =
                tokio::net::TcpStream::connect((self.opts.ip_or_hostname(), self.opts.tcp_port()));
            match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(err(io_kind(&e), Box::new(e))),
                Err(_) => Err(err(
                    FailureKind::NoAnswer,
                    format!("no TCP connection within {timeout:?}").into(),
                )),
            }
        }
        .boxed()
    }

    fn probe_target(self: Arc<Self>) -> Arc<dyn ProbeTarget> {
        Arc::new(super::probe::MysqlProbeTarget(self))
    }
}

fn describe_url_error(error: &mysql_async::UrlError) -> String {
    use mysql_async::UrlError::*;
    match error {
        UnsupportedScheme { .. } => "not a mysql:// URL".to_owned(),
        UnknownParameter { param } => format!("unknown URL parameter {param:?}"),
        InvalidParamValue { param, .. } => format!("invalid value for URL parameter {param:?}"),
        _ => "not a valid mysql:// URL".to_owned(),
    }
}

fn io_kind(error: &std::io::Error) -> FailureKind {
    use std::io::ErrorKind::*;
    match error.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected
        | AddrNotAvailable | BrokenPipe | UnexpectedEof | NotFound => FailureKind::Refused,
        TimedOut => FailureKind::NoAnswer,
        _ => FailureKind::Other,
    }
}

/// What kind of failure a connect error is: by MySQL error code and I/O error kind.
pub(crate) fn failure_kind(error: &mysql_async::Error) -> FailureKind {
    match error {
        mysql_async::Error::Server(server) => match server.code {
            code::ACCESS_DENIED | code::DB_ACCESS_DENIED | code::HOST_NOT_PRIVILEGED => {
                FailureKind::Authentication
            }
            code::TOO_MANY_CONNECTIONS | code::TOO_MANY_USER_CONNECTIONS => FailureKind::Saturated,
            code::HOST_BLOCKED
            | code::SERVER_SHUTDOWN
            | code::CONNECTION_KILLED
            | code::CR_CONNECTION_ERROR
            | code::CR_CONN_HOST_ERROR
            | code::CR_SERVER_GONE_ERROR
            | code::CR_SERVER_LOST => FailureKind::NotAccepting,
            _ => FailureKind::Server,
        },
        mysql_async::Error::Io(mysql_async::IoError::Io(io)) => io_kind(io),
        mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed) => {
            FailureKind::Refused
        }
        _ => FailureKind::Other,
    }
}

pub(crate) fn connect_failure(error: mysql_async::Error) -> NodeFailure {
    NodeFailure::new(failure_kind(&error), error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failures_by_code_and_io_kind() {
        let server = |code| {
            mysql_async::Error::Server(mysql_async::ServerError {
                code,
                message: "any text at all".into(),
                state: "HY000".into(),
            })
        };
        let io =
            |kind| mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::new(kind, "x")));
        let cases = [
            (server(1045), FailureKind::Authentication),
            (server(1044), FailureKind::Authentication),
            (server(1040), FailureKind::Saturated),
            (server(1203), FailureKind::Saturated),
            (server(1053), FailureKind::NotAccepting),
            (server(1927), FailureKind::NotAccepting),
            (server(2013), FailureKind::NotAccepting),
            (server(1146), FailureKind::Server),
            (
                io(std::io::ErrorKind::ConnectionRefused),
                FailureKind::Refused,
            ),
            (io(std::io::ErrorKind::TimedOut), FailureKind::NoAnswer),
            (io(std::io::ErrorKind::PermissionDenied), FailureKind::Other),
        ];
        for (error, kind) in cases {
            assert_eq!(failure_kind(&error), kind, "{error:?}");
        }
    }

    #[test]
    fn urls_are_read_without_echoing_them() {
        let settings = ConnectSettings::default();
        let endpoint =
            MysqlEndpoint::parse("primary", "mysql://app:s3cret@127.0.0.1:3307/db", &settings)
                .unwrap();
        assert_eq!(endpoint.name(), "primary (127.0.0.1:3307)");
        assert!(!format!("{endpoint:?}").contains("s3cret"));
        for bad in [
            "postgres://app:s3cret@127.0.0.1/db",
            "mysql://app:s3cret@127.0.0.1:3307/db?nonsense=1",
            "mysql://app:s3cret@[::1/db",
        ] {
            let error = MysqlEndpoint::parse("replica1", bad, &settings).unwrap_err();
            let text = format!("{error} {error:?}");
            assert!(!text.contains("s3cret"), "{text}");
            assert!(
                matches!(
                    error,
                    Error::Node {
                        step: NodeStep::ParseUrl,
                        ..
                    }
                ),
                "{text}"
            );
        }
    }
}
