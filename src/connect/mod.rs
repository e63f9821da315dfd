//! Every connection the crate opens is made here: the node pools' sessions, the lag
//! monitor's, health probes, causal-read checks and the catalog reader. So the
//! connection string's TLS settings, the credentials provider and TCP keepalives
//! apply to all of them alike.

mod pg;
#[cfg(feature = "tls")]
mod tls;
mod url;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::BoxError;

pub use pg::cancel_query;
pub(crate) use pg::{cancel, pg_connect_failure, PgEndpoint};
#[cfg(test)]
pub(crate) use pg::{KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_RETRIES};
#[cfg(all(feature = "tls", feature = "mysql"))]
pub(crate) use tls::rustls_failure;

/// What a TLS failure was, in TLS terms. Found on an [`Error`](crate::Error) with
/// [`Error::tls_failure`](crate::Error::tls_failure); the error's kind is then
/// [`FailureKind::Tls`](crate::FailureKind::Tls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The connection string requires TLS (`sslmode=require` or stricter) and the
    /// server does not offer it (`ssl = off`).
    ServerWithoutTls,
    /// The server's certificate does not chain to a trusted root (`sslrootcert`;
    /// MySQL URLs: `ssl_ca`, or the built-in roots).
    CertificateNotTrusted,
    /// The server's certificate is trusted but does not name the host that was
    /// connected to (`sslmode=verify-full`).
    NameMismatch,
    /// The server's certificate has expired or is not valid yet.
    CertificateExpired,
    /// The server refused the client certificate during the handshake (not signed
    /// by a CA it trusts, expired, or missing where it requires one). A server
    /// whose `pg_hba.conf` asks for `cert` and got none refuses the login after the
    /// handshake instead: that is [`FailureKind::Authentication`](crate::FailureKind::Authentication).
    ClientCertificateRefused,
    /// Any other handshake failure (no common protocol version or cipher suite, a
    /// malformed message).
    Handshake,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsFailure::ServerWithoutTls => "the server does not support TLS",
            TlsFailure::CertificateNotTrusted => {
                "the server's certificate is not trusted (no chain to a trusted root: sslrootcert, or ssl_ca for MySQL)"
            }
            TlsFailure::NameMismatch => {
                "the server's certificate does not name the host connected to"
            }
            TlsFailure::CertificateExpired => {
                "the server's certificate has expired or is not yet valid"
            }
            TlsFailure::ClientCertificateRefused => "the server refused the client certificate",
            TlsFailure::Handshake => "the TLS handshake failed",
        })
    }
}

/// A TLS failure with its cause (the source of a [`FailureKind::Tls`](crate::FailureKind::Tls) error).
#[derive(Debug)]
pub(crate) struct TlsError {
    pub(crate) failure: TlsFailure,
    pub(crate) source: BoxError,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.failure.fmt(f)
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// The node a new session is being opened to, as a [`CredentialsProvider`] is told.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeAddress {
    /// The node's name in errors and logs, e.g. `replica1 (db-2.internal:5432)`.
    pub node: String,
    /// Its (first) host: a name, an address, or a Unix socket directory.
    pub host: String,
    /// Its (first) port.
    pub port: u16,
    /// The user in the connection string, if any.
    pub user: Option<String>,
    /// The database in the connection string, if any.
    pub dbname: Option<String>,
}

/// A secret that never shows in `Debug` or `Display` output.
#[derive(Clone, PartialEq, Eq)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a [`CredentialsProvider`] hands over for one new session: a password (or
/// token), and optionally the user to log in as instead of the connection
/// string's. `Debug` never shows the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    user: Option<String>,
    password: Secret,
}

impl Credentials {
    /// Log in as the connection string's user with this password or token.
    pub fn password(password: impl Into<String>) -> Self {
        Credentials {
            user: None,
            password: Secret(password.into()),
        }
    }

    /// Log in as `user` instead of the connection string's user.
    #[must_use]
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The user name, if the provider gave one.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The password or token.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) fn secret(&self) -> &str {
        &self.password.0
    }
}

/// Called for every new session the crate opens (node pools, the lag monitor,
/// probes, causal-read checks), for passwords that rotate: RDS IAM tokens live
/// 15 minutes, Vault leases expire. Sessions already open are not affected by a
/// rotation; PostgreSQL checks a password only at login.
///
/// Closures `Fn(NodeAddress) -> impl Future<Output = Result<Credentials, BoxError>>`
/// implement it. The call is bounded by the role's connect timeout (the monitor's
/// probe timeout for its own sessions); if it fails or takes longer, the connect
/// fails with [`FailureKind::Credentials`](crate::FailureKind::Credentials) or
/// [`FailureKind::NoAnswer`](crate::FailureKind::NoAnswer) and the pool treats it
/// as it treats a node that refused the session. A provider that caches should
/// renew a little before expiry: a login with an expired token fails with
/// [`FailureKind::Authentication`](crate::FailureKind::Authentication).
///
/// ```no_run
/// # async fn demo(primary: &str, replica: &str) -> Result<(), diesel_rwsplit::Error> {
/// use diesel_async::AsyncPgConnection;
/// use diesel_rwsplit::{Credentials, NodeAddress, SwitchablePool};
///
/// async fn fetch_token(node: &NodeAddress) -> Result<String, std::io::Error> {
///     // e.g. an RDS IAM token for node.host, node.port and node.user
///     # Ok(String::new())
/// }
///
/// let pool = SwitchablePool::<AsyncPgConnection>::builder()
///     .primary(primary)
///     .replicas([replica])
///     .credentials(|node: NodeAddress| async move {
///         Ok(Credentials::password(fetch_token(&node).await?))
///     })
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
pub trait CredentialsProvider: Send + Sync + 'static {
    /// Credentials for one new session to `node`.
    fn credentials(&self, node: NodeAddress) -> BoxFuture<'static, Result<Credentials, BoxError>>;
}

impl<F, Fut> CredentialsProvider for F
where
    F: Fn(NodeAddress) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Credentials, BoxError>> + Send + 'static,
{
    fn credentials(&self, node: NodeAddress) -> BoxFuture<'static, Result<Credentials, BoxError>> {
        self(node).boxed()
    }
}

/// What an I/O error on the way to a node says about it (both backends' connects).
pub(crate) fn io_failure_kind(error: &std::io::Error) -> crate::FailureKind {
    use crate::FailureKind;
    use std::io::ErrorKind::*;
    match error.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected
        | AddrNotAvailable | BrokenPipe | UnexpectedEof | NotFound => FailureKind::Refused,
        TimedOut => FailureKind::NoAnswer,
        _ => FailureKind::Other,
    }
}

/// A credentials provider's failure (the source of a
/// [`FailureKind::Credentials`](crate::FailureKind::Credentials) error).
#[derive(Debug)]
struct CredentialsError(BoxError);

/// A credentials provider's failure, as the cause of a `Credentials` node failure.
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub(crate) fn credentials_error(error: BoxError) -> BoxError {
    Box::new(CredentialsError(error))
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the credentials provider failed")
    }
}

impl std::error::Error for CredentialsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// How the pool's connections are made, beyond their URLs: set on the builder.
#[derive(Clone, Default)]
#[doc(hidden)]
pub struct ConnectSettings {
    #[cfg(feature = "tls")]
    pub(crate) tls_config: Option<Arc<rustls::ClientConfig>>,
    pub(crate) credentials: Option<Arc<dyn CredentialsProvider>>,
}

impl fmt::Debug for ConnectSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("ConnectSettings");
        #[cfg(feature = "tls")]
        out.field("custom_tls_config", &self.tls_config.is_some());
        out.field("credentials_provider", &self.credentials.is_some())
            .finish()
    }
}
