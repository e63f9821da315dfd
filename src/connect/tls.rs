//! TLS with rustls (the `ring` provider) through tokio-postgres' TLS connector
//! traits, by way of `tokio-postgres-rustls` (which also gives SCRAM channel
//! binding, `tls-server-end-point`).
//!
//! One client configuration is built per node when the pool is built (the
//! certificate files are read then), with libpq's meaning of each `sslmode`:
//! `prefer`, `allow` and `require` encrypt without verifying the server;
//! `verify-ca` checks that its certificate chains to a trusted root; `verify-full`
//! also that it names the host connected to.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::url::{Roots, SslMode, TlsParams, TlsVersion};
use super::TlsFailure;
use crate::BoxError;

/// The stream of a session opened through [`PgTls`].
pub(crate) type PgStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// rustls with *ring*: a small dependency that builds with a C compiler in seconds
/// (aws-lc-rs, rustls' default, needs a much longer native build). rustls 0.23.48
/// deprecated it for lacking post-quantum key exchange; a custom configuration
/// ([`tls_config`](crate::SwitchablePoolBuilder::tls_config)) can bring another
/// provider.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// The client configuration for one node's connection string. `custom` (the
/// builder's `tls_config`) replaces what the string's certificate options would
/// build; `sslmode` still says whether TLS is used.
pub(crate) fn client_config(
    params: &TlsParams,
    custom: Option<&Arc<ClientConfig>>,
) -> Result<Arc<ClientConfig>, BoxError> {
    if let Some(custom) = custom {
        return Ok(Arc::clone(custom));
    }
    let provider = provider();
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::V1_2, &rustls::version::TLS12),
        (TlsVersion::V1_3, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| {
        params.min_version.is_none_or(|min| *version >= min)
            && params.max_version.is_none_or(|max| *version <= max)
    })
    .map(|(_, version)| version)
    .collect();
    let verifier: Arc<dyn ServerCertVerifier> = match params.mode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = match &params.roots {
                Some(roots) => load_roots(roots)?,
                None => return Err("verify-ca and verify-full need sslrootcert".into()),
            };
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()?;
            if params.mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
        _ => Arc::new(Unverified(Arc::clone(&provider))),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &params.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| file_error("the client certificate (sslcert)", cert, e))?;
            if chain.is_empty() {
                return Err(
                    format!("no certificate in the sslcert file {}", cert.display()).into(),
                );
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| file_error("the client key (sslkey)", key, e))?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    config.enable_sni = params.sni;
    Ok(Arc::new(config))
}

fn file_error(what: &str, path: &std::path::Path, error: impl std::fmt::Display) -> BoxError {
    // The error of a key file never holds key material, only the path and the reason.
    format!("cannot read {what} from {}: {error}", path.display()).into()
}

fn load_roots(roots: &Roots) -> Result<RootCertStore, BoxError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| file_error("the root certificates (sslrootcert)", path, e))?;
            let (added, _ignored) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "no usable CA certificate in the sslrootcert file {}",
                    path.display()
                )
                .into());
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "sslrootcert=system: the operating system offers no trusted root certificate"
                        .into(),
                );
            }
        }
    }
    Ok(store)
}

/// `require` (and `prefer`, `allow`) as libpq means them: encrypted, the server
/// not verified. The handshake's signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root (and be valid now); the name
/// is not checked. webpki checks the chain before the name, so a name error means
/// the chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// One connection attempt's TLS connector: tokio-postgres-rustls, plus a flag that
/// says whether the handshake began (the server said yes to TLS). A required TLS
/// session that failed before any handshake, with no I/O or server error, met a
/// server that does not offer TLS: told apart without reading the driver's text.
#[derive(Clone)]
pub(crate) struct PgTls {
    make: MakeRustlsConnect,
    handshake_started: Arc<AtomicBool>,
}

impl PgTls {
    pub(crate) fn new(config: &Arc<ClientConfig>) -> Self {
        PgTls {
            make: MakeRustlsConnect::new(ClientConfig::clone(config)),
            handshake_started: Arc::default(),
        }
    }

    pub(crate) fn handshake_started(&self) -> bool {
        self.handshake_started.load(Ordering::Acquire)
    }
}

impl MakeTlsConnect<Socket> for PgTls {
    type Stream = PgStream;
    type TlsConnect = Tracked<<MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect>;
    type Error = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        Ok(Tracked {
            inner: <MakeRustlsConnect as MakeTlsConnect<Socket>>::make_tls_connect(
                &mut self.make,
                domain,
            )?,
            started: Arc::clone(&self.handshake_started),
        })
    }
}

/// A TLS connect that records that it was asked to start.
pub(crate) struct Tracked<T> {
    inner: T,
    started: Arc<AtomicBool>,
}

impl<T: TlsConnect<Socket>> TlsConnect<Socket> for Tracked<T> {
    type Stream = T::Stream;
    type Error = T::Error;
    type Future = T::Future;

    fn connect(self, stream: Socket) -> T::Future {
        self.started.store(true, Ordering::Release);
        self.inner.connect(stream)
    }
}

/// The connector of cancel requests. A cancel request carries only the session's
/// cancel key; libpq sends it in plain text. Here it goes over TLS when the
/// session did (a server that requires TLS may insist), without verifying the
/// server: the cancelled session's own handshake did that.
pub(crate) fn cancel_connector() -> PgTls {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let params = TlsParams {
            mode: SslMode::Require,
            roots: None,
            client_cert: None,
            sni: true,
            min_version: None,
            max_version: None,
        };
        client_config(&params, None).expect("an unverified TLS configuration always builds")
    });
    PgTls::new(config)
}

/// What a failed connect says in TLS terms, if it is a TLS failure: decided by
/// rustls' error and alert codes and by whether a handshake began.
pub(crate) fn tls_failure(
    error: &tokio_postgres::Error,
    tls_required: bool,
    handshake_started: bool,
) -> Option<TlsFailure> {
    if error.code().is_some() {
        return None;
    }
    let mut saw_io = false;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(current) = cause {
        let rustls_error = if let Some(io) = current.downcast_ref::<io::Error>() {
            saw_io = true;
            io.get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        } else {
            current.downcast_ref::<rustls::Error>()
        };
        if let Some(rustls_error) = rustls_error {
            return Some(rustls_failure(rustls_error));
        }
        cause = current.source();
    }
    (tls_required && !handshake_started && !saw_io).then_some(TlsFailure::ServerWithoutTls)
}

/// rustls' error in TLS terms (shared by the PostgreSQL and MySQL sessions).
pub(crate) fn rustls_failure(error: &rustls::Error) -> TlsFailure {
    use CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => TlsFailure::NameMismatch,
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => TlsFailure::CertificateExpired,
        rustls::Error::InvalidCertificate(_) => TlsFailure::CertificateNotTrusted,
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired
            | AlertDescription::AccessDenied,
        ) => TlsFailure::ClientCertificateRefused,
        _ => TlsFailure::Handshake,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_errors_in_tls_terms() {
        use CertificateError as C;
        let cases = [
            (
                rustls::Error::InvalidCertificate(C::UnknownIssuer),
                TlsFailure::CertificateNotTrusted,
            ),
            (
                rustls::Error::InvalidCertificate(C::BadSignature),
                TlsFailure::CertificateNotTrusted,
            ),
            (
                rustls::Error::InvalidCertificate(C::NotValidForName),
                TlsFailure::NameMismatch,
            ),
            (
                rustls::Error::InvalidCertificate(C::Expired),
                TlsFailure::CertificateExpired,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::UnknownCA),
                TlsFailure::ClientCertificateRefused,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                TlsFailure::ClientCertificateRefused,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::HandshakeFailure),
                TlsFailure::Handshake,
            ),
            (rustls::Error::HandshakeNotComplete, TlsFailure::Handshake),
        ];
        for (error, expected) in cases {
            assert_eq!(rustls_failure(&error), expected, "{error:?}");
        }
    }

    #[test]
    fn configurations_follow_the_mode() {
        let params = |mode| TlsParams {
            mode,
            roots: None,
            client_cert: None,
            sni: true,
            min_version: Some(TlsVersion::V1_3),
            max_version: None,
        };
        let config = client_config(&params(SslMode::Require), None).unwrap();
        assert!(!config.client_auth_cert_resolver.has_certs());
        // A missing root file is a setup error naming the file, not a panic.
        let mut verify = params(SslMode::VerifyFull);
        verify.roots = Some(Roots::File("/nonexistent/ca.pem".into()));
        let error = client_config(&verify, None).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
        let mut cert = params(SslMode::Require);
        cert.client_cert = Some(("/nonexistent/c.pem".into(), "/nonexistent/k.pem".into()));
        let error = client_config(&cert, None).unwrap_err().to_string();
        assert!(error.contains("sslcert"), "{error}");
    }
}
