//! One PostgreSQL node's connection recipe: the driver configuration from its
//! connection string, the TLS client configuration, the credentials provider.
//! Built once per node when the pool is built; every session to the node is
//! opened through it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio_postgres::{Client, Socket};

use super::url::{self, SslMode};
use super::{ConnectSettings, CredentialsError, CredentialsProvider, NodeAddress};
use crate::connection::NodeFailure;
use crate::{Error, FailureKind, NodeStep};

/// TCP keepalives on every session the crate opens: a peer that vanished (a host
/// that lost power, a dropped route) is noticed after about idle + 3 x interval
/// instead of the kernel's two hours. A frozen server whose kernel still answers
/// is caught by the client-side read bound instead.
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub(crate) const KEEPALIVE_RETRIES: u32 = 3;

#[cfg(feature = "tls")]
type Stream = super::tls::PgStream;
#[cfg(not(feature = "tls"))]
type Stream = tokio_postgres::tls::NoTlsStream;

/// A session's driver half, to spawn or to hand to diesel-async.
pub(crate) type PgConnection = tokio_postgres::Connection<Socket, Stream>;

/// One node's connection recipe.
#[derive(Clone)]
#[doc(hidden)]
pub struct PgEndpoint {
    name: String,
    config: tokio_postgres::Config,
    mode: SslMode,
    #[cfg(feature = "tls")]
    tls: Arc<rustls::ClientConfig>,
    credentials: Option<Arc<dyn CredentialsProvider>>,
    address: NodeAddress,
}

impl std::fmt::Debug for PgEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration holds the password.
        f.debug_struct("PgEndpoint")
            .field("name", &self.name)
            .field("sslmode", &self.mode.as_str())
            .finish_non_exhaustive()
    }
}

impl PgEndpoint {
    /// The recipe for the node called `label` (`primary`, `replica1`, ...) at `url`.
    /// Reads the TLS files the string names. Errors name the node, never the password.
    pub(crate) fn new(label: &str, url: &str, settings: &ConnectSettings) -> Result<Self, Error> {
        let parsed = url::parse(url).map_err(|e| Error::Node {
            node: label.to_owned(),
            step: NodeStep::ParseUrl,
            kind: FailureKind::Other,
            source: Box::new(e),
        })?;
        let name = format!("{label} ({})", describe(&parsed.config));
        // What the driver would refuse only when connecting, refused now, so that a
        // connect failure says something about the server, never about the URL.
        let bad_url = |why: &str| Error::Node {
            node: name.clone(),
            step: NodeStep::ParseUrl,
            kind: FailureKind::Other,
            source: why.into(),
        };
        let (hosts, addrs, ports) = (
            parsed.config.get_hosts().len(),
            parsed.config.get_hostaddrs().len(),
            parsed.config.get_ports().len(),
        );
        if hosts == 0 && addrs == 0 {
            return Err(bad_url("no host: give host (or hostaddr)"));
        }
        if ports > 1 && ports != hosts.max(addrs) {
            return Err(bad_url(
                "the number of ports is neither one nor one per host",
            ));
        }
        if hosts > 0 && addrs > 0 && hosts != addrs {
            return Err(bad_url(
                "host and hostaddr name different numbers of servers",
            ));
        }
        if hosts == 0 && parsed.tls.mode.requires_tls() {
            // libpq needs the name only for verify-full; rustls needs one to start a
            // handshake at all.
            return Err(bad_url(
                "TLS through this crate needs the server's name: give host (with hostaddr for the address)",
            ));
        }
        #[cfg(not(feature = "tls"))]
        if parsed.tls.asks_for_tls() {
            return Err(Error::InvalidConfig(format!(
                "{name}: the connection string asks for TLS (sslmode={}, or a certificate option) but diesel-rwsplit was built without its `tls` feature",
                parsed.tls.mode.as_str()
            )));
        }
        #[cfg(feature = "tls")]
        let tls = super::tls::client_config(&parsed.tls, settings.tls_config.as_ref()).map_err(
            |source| Error::Node {
                node: name.clone(),
                step: NodeStep::Configure,
                kind: FailureKind::Tls,
                source,
            },
        )?;
        let mut config = parsed.config;
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES);
        let (host, port) = first_host(&config);
        let address = NodeAddress {
            node: name.clone(),
            host,
            port,
            user: config.get_user().map(str::to_owned),
            dbname: config.get_dbname().map(str::to_owned),
        };
        Ok(PgEndpoint {
            name,
            config,
            mode: parsed.tls.mode,
            #[cfg(feature = "tls")]
            tls,
            credentials: settings.credentials.clone(),
            address,
        })
    }

    /// The same recipe for sessions that must be able to write: a session the
    /// server opens read-only (a standby, `default_transaction_read_only`) is
    /// refused at connect (libpq's `target_session_attrs=read-write`), so a name
    /// that moves (a DNS writer endpoint) is never used while it points at a
    /// replica.
    pub(crate) fn read_write(&self) -> Self {
        let mut endpoint = self.clone();
        endpoint
            .config
            .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        endpoint
    }

    /// The node's (first) host and port, as the URL names them.
    #[cfg_attr(not(feature = "patroni"), allow(dead_code))]
    pub(crate) fn host_port(&self) -> (String, u16) {
        (self.address.host.clone(), self.address.port)
    }

    /// `label (host:port)`: the node's name in errors and logs.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The driver configuration (hosts and ports; never formatted).
    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Whether every TCP host of the node accepts a connection within `timeout`.
    pub(crate) async fn reachable(&self, timeout: Duration) -> Result<(), Error> {
        let endpoint = self;
        let err = |kind, source: crate::BoxError| Error::Node {
            node: endpoint.name().to_owned(),
            step: NodeStep::Connect,
            kind,
            source,
        };
        let config = endpoint.config();
        for (index, (host, port)) in config
            .get_hosts()
            .iter()
            .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
            .enumerate()
        {
            if let tokio_postgres::config::Host::Tcp(host) = host {
                // libpq's `hostaddr` is where the connection goes; `host` is then only
                // the name the certificate must carry.
                let connect = match config.get_hostaddrs().get(index) {
                    Some(addr) => tokio::net::TcpStream::connect((*addr, *port)).boxed(),
                    None => tokio::net::TcpStream::connect((host.as_str(), *port)).boxed(),
                };
                match tokio::time::timeout(timeout, connect).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        let kind = match e.kind() {
                            std::io::ErrorKind::TimedOut => FailureKind::NoAnswer,
                            _ => FailureKind::Refused,
                        };
                        return Err(err(kind, Box::new(e)));
                    }
                    Err(_) => {
                        return Err(err(
                            FailureKind::NoAnswer,
                            format!("no TCP connection within {timeout:?}").into(),
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// One new session: credentials asked for, TLS as the string says, keepalives
    /// on. `timeout` bounds the TCP connect; callers bound the whole.
    pub(crate) async fn connect(
        &self,
        application_name: Option<&str>,
        timeout: Duration,
    ) -> Result<(Client, PgConnection), NodeFailure> {
        let mut config = self.config.clone();
        config.connect_timeout(timeout);
        if let Some(name) = application_name {
            config.application_name(name);
        }
        if let Some(provider) = &self.credentials {
            let credentials = provider
                .credentials(self.address.clone())
                .await
                .map_err(|e| NodeFailure::new(FailureKind::Credentials, CredentialsError(e)))?;
            if let Some(user) = &credentials.user {
                config.user(user);
            }
            config.password(credentials.password.0.as_bytes());
        }
        match self.attempt(&config).await {
            // libpq's `allow`: plain text first, TLS if the server refuses that (28000).
            Err(failure)
                if self.mode == SslMode::Allow && failure.kind == FailureKind::Authentication =>
            {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                self.attempt(&config).await
            }
            other => other,
        }
    }

    #[cfg(feature = "tls")]
    async fn attempt(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<(Client, PgConnection), NodeFailure> {
        let tls = super::tls::PgTls::new(&self.tls);
        config.connect(tls.clone()).await.map_err(|error| {
            let required = config.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
            match super::tls::tls_failure(&error, required, tls.handshake_started()) {
                Some(failure) => NodeFailure::new(
                    FailureKind::Tls,
                    super::TlsError {
                        failure,
                        source: Box::new(error),
                    },
                ),
                None => pg_connect_failure(error),
            }
        })
    }

    #[cfg(not(feature = "tls"))]
    async fn attempt(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<(Client, PgConnection), NodeFailure> {
        config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(pg_connect_failure)
    }
}

/// Sends a cancel request for the session `token` came from, over TLS if that
/// session used it.
pub(crate) async fn cancel(token: tokio_postgres::CancelToken) {
    let _ = cancel_query(&token).await;
}

/// Ask the server to cancel what the session of `token` runs now (see
/// [`SwitchableConnection::cancel_token`](crate::SwitchableConnection::cancel_token)).
/// Over TLS when that session used TLS (not verifying the server: the request
/// carries only the session's cancel key, which libpq sends in plain text), in
/// plain text otherwise. As with libpq, success means the request was delivered,
/// not that anything was cancelled.
pub async fn cancel_query(
    token: &tokio_postgres::CancelToken,
) -> Result<(), tokio_postgres::Error> {
    #[cfg(feature = "tls")]
    return token.cancel_query(super::tls::cancel_connector()).await;
    #[cfg(not(feature = "tls"))]
    return token.cancel_query(tokio_postgres::NoTls).await;
}

/// `host:port` of every host, for names in errors and logs; never the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = hosts(config)
        .map(|(host, port)| format!("{host}:{port}"))
        .collect();
    if hosts.is_empty() {
        "default host".to_owned()
    } else {
        hosts.join(",")
    }
}

fn hosts(config: &tokio_postgres::Config) -> impl Iterator<Item = (String, u16)> + '_ {
    config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            tokio_postgres::config::Host::Tcp(name) => (name.clone(), *port),
            tokio_postgres::config::Host::Unix(path) => (path.display().to_string(), *port),
        })
}

fn first_host(config: &tokio_postgres::Config) -> (String, u16) {
    hosts(config)
        .next()
        .unwrap_or_else(|| ("localhost".to_owned(), 5432))
}

/// A tokio-postgres connect error, typed by SQLSTATE and I/O error kind.
pub(crate) fn pg_connect_failure(error: tokio_postgres::Error) -> NodeFailure {
    NodeFailure::new(pg_failure_kind(&error), error)
}

fn pg_failure_kind(error: &tokio_postgres::Error) -> FailureKind {
    use tokio_postgres::error::SqlState;
    if let Some(code) = error.code() {
        return match code {
            c if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
            {
                FailureKind::Authentication
            }
            c if *c == SqlState::TOO_MANY_CONNECTIONS => FailureKind::Saturated,
            c if *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || c.code().starts_with("08") =>
            {
                FailureKind::NotAccepting
            }
            _ => FailureKind::Server,
        };
    }
    let mut cause = std::error::Error::source(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return super::io_failure_kind(io);
        }
        cause = current.source();
    }
    FailureKind::Other
}
