//! libpq connection strings as people copy them from their provider.
//!
//! tokio-postgres knows `sslmode=disable|prefer|require` only and rejects every
//! option it does not know, so the TLS options libpq has and it lacks (`verify-ca`,
//! `verify-full`, `allow`, `sslrootcert`, `sslcert`, `sslkey`, ...) are taken out of
//! the string here, checked, and kept beside the driver's configuration. Both forms
//! are read: `postgres://…?sslmode=verify-full&sslrootcert=…` and
//! `host=… sslmode=verify-full sslrootcert=…`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use percent_encoding::percent_decode_str;

/// libpq's `sslmode`, with libpq's meaning of each value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Plain text only.
    Disable,
    /// Plain text first; TLS (not verified) if the server insists on it.
    Allow,
    /// TLS (not verified) if the server offers it, else plain text. libpq's default.
    Prefer,
    /// TLS, not verified (unless a root certificate is given: then as `VerifyCa`).
    Require,
    /// TLS; the server's certificate must chain to a trusted root.
    VerifyCa,
    /// TLS; trusted chain, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Whether a session must be encrypted (the connection fails otherwise).
    pub(crate) fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted root certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Roots {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The operating system's trusted roots (`sslrootcert=system`).
    System,
}

/// A TLS protocol version as libpq spells it (`ssl_min_protocol_version`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TlsVersion {
    /// `TLSv1`, `TLSv1.1`: older than any version rustls speaks; allows 1.2 and up.
    Legacy,
    /// `TLSv1.2`.
    V1_2,
    /// `TLSv1.3`.
    V1_3,
}

/// The TLS settings of one connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsParams {
    /// What the string asked for, after libpq's rules (a root certificate turns
    /// `require` into `verify-ca`; `sslrootcert=system` defaults to `verify-full`).
    pub(crate) mode: SslMode,
    /// Trusted roots, for `verify-ca` and `verify-full`.
    pub(crate) roots: Option<Roots>,
    /// Client certificate and key (PEM), for certificate authentication.
    pub(crate) client_cert: Option<(PathBuf, PathBuf)>,
    /// Send the host name in the handshake (`sslsni`, default on).
    pub(crate) sni: bool,
    pub(crate) min_version: Option<TlsVersion>,
    pub(crate) max_version: Option<TlsVersion>,
}

impl TlsParams {
    /// Whether any setting asks for TLS (a build without TLS must refuse such a string).
    #[cfg_attr(feature = "tls", allow(dead_code))]
    pub(crate) fn asks_for_tls(&self) -> bool {
        self.mode.requires_tls() || self.roots.is_some() || self.client_cert.is_some()
    }
}

/// A connection string split into what the driver parses and the TLS settings.
#[derive(Debug)]
pub(crate) struct ParsedUrl {
    /// The driver's configuration (`ssl_mode` set from [`TlsParams::mode`]).
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: TlsParams,
}

/// Why a connection string was refused. Never holds the string or a value from it
/// (a value may be a password).
#[derive(Debug)]
pub(crate) enum UrlError {
    /// The driver refused what was left of the string.
    Driver(tokio_postgres::Error),
    /// An option's value is not one libpq accepts.
    InvalidValue(&'static str),
    /// An option the crate does not support, and why.
    Unsupported(&'static str, &'static str),
    /// Options that contradict each other, or are incomplete.
    Inconsistent(&'static str),
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The driver's causes name options, never their values.
            UrlError::Driver(e) => match std::error::Error::source(e) {
                Some(cause) => write!(f, "{e}: {cause}"),
                None => e.fmt(f),
            },
            UrlError::InvalidValue(option) => write!(f, "invalid value for option `{option}`"),
            UrlError::Unsupported(option, why) => {
                write!(f, "option `{option}` is not supported: {why}")
            }
            UrlError::Inconsistent(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for UrlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UrlError::Driver(e) => std::error::Error::source(e),
            _ => None,
        }
    }
}

/// The options taken out of the string before the driver sees it.
#[derive(Default)]
struct Taken {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
    sslsni: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    gssencmode: Option<String>,
}

impl Taken {
    /// Takes `key` if it is one of ours; `Err` for options that cannot be honoured.
    fn take(&mut self, key: &str, value: String) -> Result<bool, UrlError> {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            "sslsni" => &mut self.sslsni,
            "ssl_min_protocol_version" => &mut self.min_version,
            "ssl_max_protocol_version" => &mut self.max_version,
            "gssencmode" => &mut self.gssencmode,
            // Deprecated in libpq and ignored by servers since PostgreSQL 14.
            "sslcompression" => return Ok(true),
            "sslpassword" => {
                return Err(UrlError::Unsupported(
                    "sslpassword",
                    "encrypted client keys cannot be read; give an unencrypted PKCS#8, PKCS#1 or SEC1 key",
                ))
            }
            "sslcrl" | "sslcrldir" => {
                return Err(UrlError::Unsupported(
                    "sslcrl",
                    "certificate revocation lists are not checked; use a custom TLS configuration (`tls_config`) with a verifier that checks them",
                ))
            }
            _ => return Ok(false),
        };
        *slot = Some(value);
        Ok(true)
    }

    fn into_params(self) -> Result<TlsParams, UrlError> {
        let given_mode = match self.sslmode.as_deref() {
            None => None,
            Some(value) => Some(SslMode::parse(value).ok_or(UrlError::InvalidValue("sslmode"))?),
        };
        let roots = match self.sslrootcert.as_deref() {
            None | Some("") => None,
            Some("system") => Some(Roots::System),
            Some(path) => Some(Roots::File(PathBuf::from(path))),
        };
        let mode = match (given_mode, &roots) {
            // libpq: the system's roots are only worth using with host name checks.
            (None, Some(Roots::System)) => SslMode::VerifyFull,
            (Some(mode), Some(Roots::System)) if mode != SslMode::VerifyFull => {
                return Err(UrlError::Inconsistent(
                    "sslrootcert=system needs sslmode=verify-full (libpq refuses weaker modes with the system's roots)",
                ))
            }
            // libpq: with a root certificate, `require` verifies the chain as `verify-ca`.
            (Some(SslMode::Require), Some(Roots::File(_))) => SslMode::VerifyCa,
            (Some(mode), _) => mode,
            (None, _) => SslMode::Prefer,
        };
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && roots.is_none() {
            return Err(UrlError::Inconsistent(
                "sslmode=verify-ca and verify-full need trusted roots: add sslrootcert=PATH (a PEM file of CA certificates) or sslrootcert=system",
            ));
        }
        let client_cert = match (self.sslcert, self.sslkey) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            _ => {
                return Err(UrlError::Inconsistent(
                    "sslcert and sslkey go together: give both files",
                ))
            }
        };
        let sni = match self.sslsni.as_deref() {
            None | Some("1") => true,
            Some("0") => false,
            Some(_) => return Err(UrlError::InvalidValue("sslsni")),
        };
        let version = |value: Option<String>, option| match value.as_deref() {
            None | Some("") => Ok(None),
            Some("TLSv1" | "TLSv1.1") => Ok(Some(TlsVersion::Legacy)),
            Some("TLSv1.2") => Ok(Some(TlsVersion::V1_2)),
            Some("TLSv1.3") => Ok(Some(TlsVersion::V1_3)),
            Some(_) => Err(UrlError::InvalidValue(option)),
        };
        let min_version = version(self.min_version, "ssl_min_protocol_version")?;
        let max_version = version(self.max_version, "ssl_max_protocol_version")?;
        if matches!(max_version, Some(TlsVersion::Legacy)) {
            return Err(UrlError::Unsupported(
                "ssl_max_protocol_version",
                "TLS versions before 1.2 are not spoken",
            ));
        }
        if let (Some(min), Some(max)) = (min_version, max_version) {
            if min > max {
                return Err(UrlError::Inconsistent(
                    "ssl_min_protocol_version is above ssl_max_protocol_version",
                ));
            }
        }
        match self.gssencmode.as_deref() {
            None | Some("disable" | "prefer") => {}
            Some("require") => {
                return Err(UrlError::Unsupported(
                    "gssencmode",
                    "GSSAPI encryption is not available; use TLS",
                ))
            }
            Some(_) => return Err(UrlError::InvalidValue("gssencmode")),
        }
        Ok(TlsParams {
            mode,
            roots,
            client_cert,
            sni,
            min_version,
            max_version,
        })
    }
}

/// Splits a libpq connection string (URL or key/value form).
pub(crate) fn parse(url: &str) -> Result<ParsedUrl, UrlError> {
    let mut taken = Taken::default();
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        strip_url_options(url, &mut taken)?
    } else {
        strip_key_value_options(url, &mut taken)?
    };
    let tls = taken.into_params()?;
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(UrlError::Driver)?;
    config.ssl_mode(match tls.mode {
        // `allow` connects in plain text first; the connector retries with TLS.
        SslMode::Disable | SslMode::Allow => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    Ok(ParsedUrl { config, tls })
}

fn strip_url_options(url: &str, taken: &mut Taken) -> Result<String, UrlError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok(url.to_owned());
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode_str(key).decode_utf8_lossy();
        let value = percent_decode_str(value).decode_utf8_lossy().into_owned();
        if !taken.take(&key, value)? {
            kept.push(pair);
        }
    }
    Ok(if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

fn strip_key_value_options(text: &str, taken: &mut Taken) -> Result<String, UrlError> {
    let mut kept = String::with_capacity(text.len());
    for (key, value) in key_value_pairs(text)? {
        if !taken.take(&key, value.clone())? {
            if !kept.is_empty() {
                kept.push(' ');
            }
            kept.push_str(&key);
            kept.push_str("='");
            kept.push_str(&value.replace('\\', "\\\\").replace('\'', "\\'"));
            kept.push('\'');
        }
    }
    Ok(kept)
}

/// `key = value` pairs as libpq reads them: values bare or single-quoted, with
/// backslash escapes in quotes.
fn key_value_pairs(text: &str) -> Result<Vec<(String, String)>, UrlError> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(UrlError::Inconsistent(
                "the connection string is neither a postgres:// URL nor key=value pairs",
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(UrlError::Inconsistent(
                            "a quoted value in the connection string is not closed",
                        ))
                    }
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(url: &str) -> TlsParams {
        parse(url).unwrap_or_else(|e| panic!("{url}: {e}")).tls
    }

    #[test]
    fn modes_as_libpq_reads_them() {
        let root = Some(Roots::File(PathBuf::from("/ca.pem")));
        let cases: [(&str, SslMode, Option<Roots>); 10] = [
            ("postgres://h/db", SslMode::Prefer, None),
            ("postgres://h/db?sslmode=disable", SslMode::Disable, None),
            ("postgres://h/db?sslmode=allow", SslMode::Allow, None),
            ("postgres://h/db?sslmode=require", SslMode::Require, None),
            // A root certificate makes `require` verify the chain.
            (
                "postgres://h/db?sslmode=require&sslrootcert=/ca.pem",
                SslMode::VerifyCa,
                root.clone(),
            ),
            (
                "postgres://h/db?sslmode=verify-ca&sslrootcert=%2Fca.pem",
                SslMode::VerifyCa,
                root.clone(),
            ),
            (
                "postgres://h/db?sslrootcert=/ca.pem&sslmode=verify-full",
                SslMode::VerifyFull,
                root.clone(),
            ),
            (
                "postgres://h/db?sslrootcert=system",
                SslMode::VerifyFull,
                Some(Roots::System),
            ),
            (
                "host=h sslmode=verify-full sslrootcert='/ca.pem'",
                SslMode::VerifyFull,
                root,
            ),
            ("host=h dbname=db sslmode = require", SslMode::Require, None),
        ];
        for (url, mode, roots) in cases {
            let tls = params(url);
            assert_eq!((tls.mode, tls.roots), (mode, roots), "{url}");
        }
    }

    #[test]
    fn the_driver_gets_the_rest_with_its_own_ssl_mode() {
        use tokio_postgres::config::SslMode as Driver;
        let cases = [
            ("postgres://u:p%40ss@h:6543/db?sslmode=verify-full&sslrootcert=/ca.pem&application_name=app", Driver::Require, Some("app")),
            ("postgres://u@h/db?sslmode=allow", Driver::Disable, None),
            ("postgres://u@h/db", Driver::Prefer, None),
            ("host=h user=u password=pw sslmode=require application_name='my app'", Driver::Require, Some("my app")),
        ];
        for (url, ssl, app) in cases {
            let parsed = parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(parsed.config.get_ssl_mode(), ssl, "{url}");
            assert_eq!(parsed.config.get_application_name(), app, "{url}");
            assert_eq!(parsed.config.get_user(), Some("u"), "{url}");
        }
        let parsed =
            parse("postgres://u:p%40ss@h:6543/db?sslmode=verify-full&sslrootcert=/ca.pem").unwrap();
        assert_eq!(parsed.config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(parsed.config.get_ports(), &[6543]);
        let parsed = parse("host=h user=u password='it\\'s \\\\ x'").unwrap();
        assert_eq!(parsed.config.get_password(), Some(&b"it's \\ x"[..]));
    }

    #[test]
    fn client_certificates_and_other_options() {
        let tls = params("postgres://h/db?sslmode=verify-full&sslrootcert=/ca&sslcert=/c.pem&sslkey=/k.pem&sslsni=0&ssl_min_protocol_version=TLSv1.3&sslcompression=0&gssencmode=disable");
        assert_eq!(
            tls.client_cert,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
        assert!(!tls.sni);
        assert_eq!(tls.min_version, Some(TlsVersion::V1_3));
        assert!(tls.asks_for_tls());
        assert!(!params("postgres://h/db?sslmode=prefer").asks_for_tls());
    }

    #[test]
    fn refusals_name_the_option_never_the_value() {
        let cases = [
            ("postgres://u:hunter2@h/db?sslmode=hunter2", "sslmode"),
            ("postgres://h/db?sslmode=verify-full", "sslrootcert"),
            ("postgres://h/db?sslmode=verify-ca", "sslrootcert"),
            (
                "postgres://h/db?sslmode=require&sslrootcert=system",
                "verify-full",
            ),
            ("postgres://h/db?sslcert=/c.pem", "sslkey"),
            (
                "postgres://h/db?sslkey=/k.pem&sslpassword=hunter2",
                "sslpassword",
            ),
            ("postgres://h/db?sslcrl=/crl.pem", "sslcrl"),
            ("postgres://h/db?sslsni=yes", "sslsni"),
            (
                "postgres://h/db?ssl_max_protocol_version=TLSv1.1",
                "ssl_max_protocol_version",
            ),
            (
                "postgres://h/db?ssl_min_protocol_version=TLSv1.3&ssl_max_protocol_version=TLSv1.2",
                "ssl_min_protocol_version",
            ),
            ("postgres://h/db?gssencmode=require", "gssencmode"),
            ("host=h password='hunter2", "not closed"),
            ("postgres://u:hunter2@h/db?bogus=1", "bogus"),
        ];
        for (url, says) in cases {
            let error = parse(url).expect_err(url).to_string();
            assert!(error.contains(says), "{url}: {error}");
            assert!(!error.contains("hunter2"), "{url}: {error}");
        }
    }
}
