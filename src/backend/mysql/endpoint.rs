//! How sessions to a MySQL or MariaDB node are opened: the `mysql://` URL read once
//! (as diesel-async's own `establish` reads it), credentials asked for, TCP
//! keepalives on, and what kind of server it is found out at connect.
//!
//! # TLS (feature `tls`)
//!
//! mysql_async's rustls TLS, with the URL parameters mysql_async reads:
//! `require_ssl=true` (TLS or no session), `verify_ca` (default `true`: the
//! server's certificate must chain to a trusted root), `verify_identity` (default
//! `true`: it must also name the host of the URL) and `built_in_roots` (default
//! `true`: the Mozilla roots of `webpki-roots` are trusted). mysql_async has no URL
//! parameter for a CA file; this crate adds one, `ssl_ca=PATH` (percent-encoded),
//! a PEM file of trusted root certificates, read when the pool is built and taken
//! out of the URL before mysql_async reads it (so such a URL is this crate's, not
//! diesel-async's `establish`'s). A URL that requires TLS keeps its TCP session:
//! mysql_async's switch to the server's Unix socket (`prefer_socket`) is turned
//! off for it, since a socket session is never encrypted (a URL with `socket=`
//! is not encrypted either: mysql_async never wraps a Unix socket in TLS).
//!
//! `verify_identity=false` does not skip the name check with the rustls built
//! here: mysql_async 0.36 recognises a name mismatch by rustls' message text,
//! which rustls 0.23 (`NotValidForNameContext`) no longer matches, so a
//! certificate that does not name the host still fails (`NameMismatch`).
//! `verify_ca=false` does skip verification (encrypted, server not verified).
//!
//! A TLS failure is [`FailureKind::Tls`] with a [`TlsFailure`](crate::TlsFailure)
//! decided by mysql_async's error variants and rustls' error codes: a server
//! without TLS (no `CLIENT_SSL` in its handshake) is `ServerWithoutTls`; rustls'
//! certificate errors and alerts map as on PostgreSQL.

use std::path::PathBuf;
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

/// This crate's URL parameter naming a PEM file of trusted root certificates.
const SSL_CA: &str = "ssl_ca";

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
    /// read-only. Unbounded here: callers bound the whole (connect timeout).
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
        let url_error = |why: String| Error::Node {
            node: label.to_owned(),
            step: NodeStep::ParseUrl,
            kind: FailureKind::Other,
            source: why.into(),
        };
        let (url, ssl_ca) = take_ssl_ca(url).map_err(url_error)?;
        // mysql_async's URL errors may quote parts of the URL: never shown.
        let opts = Opts::from_url(&url).map_err(|e| url_error(describe_url_error(&e)))?;
        let name = match opts.socket() {
            Some(socket) => format!("{label} ({socket})"),
            None => format!("{label} ({}:{})", opts.ip_or_hostname(), opts.tcp_port()),
        };
        #[cfg(feature = "tls")]
        if settings.tls_config.is_some() {
            return Err(Error::InvalidConfig(format!(
                "{name}: tls_config() applies to PostgreSQL connections; a MySQL node takes its TLS settings from its URL (require_ssl, verify_ca, verify_identity, built_in_roots, ssl_ca)"
            )));
        }
        let opts = with_tls(&name, opts, ssl_ca)?;
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
                Ok(Err(e)) => Err(err(crate::connect::io_failure_kind(&e), Box::new(e))),
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

/// `ssl_ca=PATH` taken out of a `mysql://` URL (mysql_async knows no such
/// parameter): the URL without it, and the path (percent- and `+`-decoded, as
/// mysql_async decodes its own parameters). Errors never quote the URL.
fn take_ssl_ca(url: &str) -> Result<(String, Option<PathBuf>), String> {
    let Some((base, rest)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (rest, None),
    };
    let mut kept = Vec::new();
    let mut ssl_ca = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != SSL_CA {
            kept.push(pair);
            continue;
        }
        if ssl_ca.is_some() {
            return Err(format!("URL parameter {SSL_CA:?} is given twice"));
        }
        let value = value.replace('+', " ");
        let path = percent_encoding::percent_decode_str(&value)
            .decode_utf8()
            .map_err(|_| format!("URL parameter {SSL_CA:?} is not UTF-8 once decoded"))?;
        if path.is_empty() {
            return Err(format!("URL parameter {SSL_CA:?} is empty"));
        }
        ssl_ca = Some(PathBuf::from(path.into_owned()));
    }
    if ssl_ca.is_none() {
        return Ok((url.to_owned(), None));
    }
    let mut url = base.to_owned();
    if !kept.is_empty() {
        url.push('?');
        url.push_str(&kept.join("&"));
    }
    if let Some(fragment) = fragment {
        url.push('#');
        url.push_str(fragment);
    }
    Ok((url, ssl_ca))
}

/// The URL's TLS settings, checked and completed: the `ssl_ca` file read into the
/// trusted roots, no switch to a Unix socket, the crypto provider in place.
#[cfg(feature = "tls")]
fn with_tls(name: &str, opts: Opts, ssl_ca: Option<PathBuf>) -> Result<Opts, Error> {
    let Some(ssl) = opts.ssl_opts().cloned() else {
        if ssl_ca.is_some() {
            return Err(Error::InvalidConfig(format!(
                "{name}: the URL names trusted roots (ssl_ca) but does not ask for TLS: add require_ssl=true"
            )));
        }
        return Ok(opts);
    };
    let ssl = match ssl_ca {
        Some(path) => ssl.with_root_certs(vec![read_roots(name, &path)?.into()]),
        None => ssl,
    };
    if ssl.disable_built_in_roots() && ssl.root_certs().is_empty() && !ssl.accept_invalid_certs() {
        return Err(Error::InvalidConfig(format!(
            "{name}: built_in_roots=false and no ssl_ca: no root certificate would be trusted"
        )));
    }
    default_crypto_provider();
    Ok(OptsBuilder::from_opts(opts)
        .ssl_opts(ssl)
        .prefer_socket(false)
        .into())
}

#[cfg(not(feature = "tls"))]
fn with_tls(name: &str, opts: Opts, ssl_ca: Option<PathBuf>) -> Result<Opts, Error> {
    if opts.ssl_opts().is_some() || ssl_ca.is_some() {
        return Err(Error::InvalidConfig(format!(
            "{name}: the URL asks for TLS, but diesel-rwsplit is built without its `tls` feature (mysql_async without a TLS implementation)"
        )));
    }
    Ok(opts)
}

/// The `ssl_ca` file, read now (a missing file is a configuration error, not a
/// connect failure later): PEM with at least one certificate.
#[cfg(feature = "tls")]
fn read_roots(name: &str, path: &std::path::Path) -> Result<Vec<u8>, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bytes = std::fs::read(path).map_err(|e| {
        Error::InvalidConfig(format!(
            "{name}: cannot read the root certificates (ssl_ca) from {}: {e}",
            path.display()
        ))
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(bytes),
        Ok(_) => Err(Error::InvalidConfig(format!(
            "{name}: no PEM certificate in the ssl_ca file {}",
            path.display()
        ))),
        Err(e) => Err(Error::InvalidConfig(format!(
            "{name}: cannot read the root certificates (ssl_ca) from {}: {e}",
            path.display()
        ))),
    }
}

/// mysql_async builds its rustls configuration with the process-wide default
/// crypto provider (`ClientConfig::builder()`), which rustls picks by itself only
/// when exactly one provider is compiled in. Install *ring* (what the rest of the
/// crate uses) as that default if the process has none yet; one the application
/// installed stays.
#[cfg(feature = "tls")]
fn default_crypto_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            #[allow(deprecated)]
            let ring = rustls::crypto::ring::default_provider();
            // Another thread may have installed one meanwhile: that one stays.
            let _ = ring.install_default();
        }
    });
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
        mysql_async::Error::Io(mysql_async::IoError::Io(io)) => crate::connect::io_failure_kind(io),
        mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed) => {
            FailureKind::Refused
        }
        _ => FailureKind::Other,
    }
}

pub(crate) fn connect_failure(error: mysql_async::Error) -> NodeFailure {
    #[cfg(feature = "tls")]
    if let Some(failure) = tls_failure(&error) {
        return NodeFailure::new(
            FailureKind::Tls,
            crate::connect::TlsError {
                failure,
                source: Box::new(error),
            },
        );
    }
    NodeFailure::new(failure_kind(&error), error)
}

/// What a failed connect says in TLS terms, if it is a TLS failure: decided by
/// mysql_async's error variants and rustls' error and alert codes.
#[cfg(feature = "tls")]
fn tls_failure(error: &mysql_async::Error) -> Option<crate::TlsFailure> {
    use mysql_async::{DriverError, IoError, TlsError};
    match error {
        // The URL requires TLS and the server's handshake lacks CLIENT_SSL.
        mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer) => {
            Some(crate::TlsFailure::ServerWithoutTls)
        }
        mysql_async::Error::Io(IoError::Tls(TlsError::Tls(error))) => {
            Some(crate::connect::rustls_failure(error))
        }
        mysql_async::Error::Io(IoError::Tls(_)) => Some(crate::TlsFailure::Handshake),
        // tokio-rustls reports a failed handshake as an I/O error around rustls' own.
        mysql_async::Error::Io(IoError::Io(io)) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(crate::connect::rustls_failure),
        _ => None,
    }
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
    fn ssl_ca_is_taken_out_of_the_url() {
        let url = "mysql://app:s3cret@127.0.0.1:3307/db";
        assert_eq!(take_ssl_ca(url).unwrap(), (url.to_owned(), None));
        let plain = format!("{url}?require_ssl=true&verify_ca=true");
        assert_eq!(take_ssl_ca(&plain).unwrap(), (plain.clone(), None));
        let (rest, path) =
            take_ssl_ca(&format!("{url}?require_ssl=true&ssl_ca=%2Fetc%2Fmy+ca.pem")).unwrap();
        assert_eq!(rest, format!("{url}?require_ssl=true"));
        assert_eq!(path, Some(PathBuf::from("/etc/my ca.pem")));
        let (rest, path) = take_ssl_ca(&format!("{url}?ssl_ca=/ca.pem")).unwrap();
        assert_eq!(rest, url);
        assert_eq!(path, Some(PathBuf::from("/ca.pem")));
        for bad in ["?ssl_ca=", "?ssl_ca=/a&ssl_ca=/b", "?ssl_ca=%FF"] {
            let error = take_ssl_ca(&format!("{url}{bad}")).unwrap_err();
            assert!(!error.contains("s3cret"), "{error}");
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_urls_are_checked_when_read() {
        let settings = ConnectSettings::default();
        let url = "mysql://app:s3cret@127.0.0.1:3307/db";
        let endpoint =
            MysqlEndpoint::parse("primary", &format!("{url}?require_ssl=true"), &settings).unwrap();
        let ssl = endpoint.opts.ssl_opts().expect("TLS asked for");
        assert!(!ssl.accept_invalid_certs() && !ssl.skip_domain_validation());
        assert!(!endpoint.opts.prefer_socket(), "a TLS session stays on TCP");
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        // Without TLS, mysql_async's default stays.
        let plain = MysqlEndpoint::parse("primary", url, &settings).unwrap();
        assert!(plain.opts.ssl_opts().is_none());

        let dir = std::env::temp_dir().join(format!("rws-ssl-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        // Read as PEM only here (DER inside is checked at the handshake).
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let with_ca = format!(
            "{url}?require_ssl=true&built_in_roots=false&ssl_ca={}",
            ca.display()
        );
        let endpoint = MysqlEndpoint::parse("replica1", &with_ca, &settings).unwrap();
        let ssl = endpoint.opts.ssl_opts().unwrap();
        assert!(ssl.disable_built_in_roots());
        assert_eq!(ssl.root_certs().len(), 1);

        for bad in [
            format!("{url}?ssl_ca={}", ca.display()),
            format!("{url}?require_ssl=true&ssl_ca=/nonexistent/ca.pem"),
            format!("{url}?require_ssl=true&ssl_ca={}", not_pem.display()),
            format!("{url}?require_ssl=true&built_in_roots=false"),
        ] {
            let error = MysqlEndpoint::parse("replica1", &bad, &settings).unwrap_err();
            let text = format!("{error} {error:?}");
            assert!(matches!(error, Error::InvalidConfig(_)), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_failures_by_error_variant() {
        use crate::TlsFailure;
        use rustls::CertificateError as C;
        let failure = connect_failure(mysql_async::Error::Driver(
            mysql_async::DriverError::NoClientSslFlagFromServer,
        ));
        assert_eq!(failure.kind, FailureKind::Tls);
        let error = Error::Node {
            node: "primary".into(),
            step: NodeStep::Connect,
            kind: failure.kind,
            source: failure.into_source(),
        };
        assert_eq!(error.tls_failure(), Some(TlsFailure::ServerWithoutTls));
        let in_io = |e: rustls::Error| {
            mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e,
            )))
        };
        let cases = [
            (
                in_io(rustls::Error::InvalidCertificate(C::UnknownIssuer)),
                TlsFailure::CertificateNotTrusted,
            ),
            (
                in_io(rustls::Error::InvalidCertificate(C::NotValidForName)),
                TlsFailure::NameMismatch,
            ),
            (
                in_io(rustls::Error::InvalidCertificate(C::Expired)),
                TlsFailure::CertificateExpired,
            ),
            (
                in_io(rustls::Error::AlertReceived(
                    rustls::AlertDescription::UnknownCA,
                )),
                TlsFailure::ClientCertificateRefused,
            ),
            (
                in_io(rustls::Error::HandshakeNotComplete),
                TlsFailure::Handshake,
            ),
            (
                mysql_async::Error::Io(mysql_async::IoError::Tls(mysql_async::TlsError::Tls(
                    rustls::Error::InvalidCertificate(C::BadSignature),
                ))),
                TlsFailure::CertificateNotTrusted,
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(tls_failure(&error), Some(expected), "{error:?}");
        }
        // Not TLS: a refused TCP connection, a server error.
        let refused = mysql_async::Error::Io(mysql_async::IoError::Io(
            std::io::ErrorKind::ConnectionRefused.into(),
        ));
        assert_eq!(tls_failure(&refused), None);
        assert_eq!(connect_failure(refused).kind, FailureKind::Refused);
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
