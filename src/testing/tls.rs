//! Certificates of a local cluster: a CA made per cluster, the servers' certificate
//! signed by it, and client certificates for `cert` roles. Made in-process with rcgen.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::process::RunAs;
use crate::{BoxError, ClusterStep, Error, Result};

/// File names in the cluster directory.
pub(super) const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
pub(super) const SERVER_CERT: &str = "server.crt";
pub(super) const SERVER_KEY: &str = "server.key";
/// File name of [`other_ca_pem`]'s certificate.
const OTHER_CA_CERT: &str = "other-ca.crt";

/// A certificate authority held in memory while the cluster starts.
pub(super) struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl ClusterCa {
    /// A fresh key pair and a self-signed CA certificate named `common_name`.
    pub(super) fn new(common_name: &str) -> std::result::Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert_pem = params.self_signed(&key)?.pem();
        let key_pem = key.serialize_pem();
        Ok(ClusterCa {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// A certificate for the servers: SANs `127.0.0.1` (IP) and `localhost` (DNS).
    /// Returns the certificate and its PKCS#8 key, both PEM.
    pub(super) fn server_cert(&self) -> std::result::Result<(String, String), rcgen::Error> {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate whose CN is `common_name` (the role it logs in as).
    pub(super) fn client_cert(
        &self,
        common_name: &str,
    ) -> std::result::Result<(String, String), rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
    ) -> std::result::Result<(String, String), rcgen::Error> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    pub(super) fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
}

/// Who a written file belongs to.
#[derive(Clone, Copy)]
pub(super) enum Owner {
    /// The OS user the servers run as.
    Server(RunAs),
    /// The current process's user.
    Us,
}

/// Write `contents` to a new file `path` with `mode`, owned by `owner`.
pub(super) fn write_file(path: &Path, contents: &str, mode: u32, owner: Owner) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    // The umask may have narrowed the mode; set it exactly.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    if let Owner::Server(run_as) = owner {
        run_as.own(path)?;
    }
    Ok(())
}

/// The files of a cluster's TLS set-up, written in `dir`: the CA (`ca.crt`, and its
/// key `ca.key`, mode 0600, for users who want to sign more certificates), and the
/// servers' `server.crt` / `server.key` (owned by the server's OS user, key mode
/// 0600, as PostgreSQL demands). Returns the CA, for client certificates.
pub(super) fn write_server_files(dir: &Path, run_as: RunAs) -> io::Result<ClusterCa> {
    write_server_files_named(dir, run_as, "diesel-rwsplit LocalCluster CA")
}

/// [`write_server_files`] with the CA named `ca_name` (its common name).
pub(super) fn write_server_files_named(
    dir: &Path,
    run_as: RunAs,
    ca_name: &str,
) -> io::Result<ClusterCa> {
    let ca = ClusterCa::new(ca_name).map_err(io::Error::other)?;
    let (cert, key) = ca.server_cert().map_err(io::Error::other)?;
    write_file(
        &dir.join(CA_CERT),
        ca.cert_pem(),
        0o644,
        Owner::Server(run_as),
    )?;
    write_file(&dir.join(CA_KEY), &ca.key_pem, 0o600, Owner::Us)?;
    write_file(&dir.join(SERVER_CERT), &cert, 0o644, Owner::Server(run_as))?;
    write_file(&dir.join(SERVER_KEY), &key, 0o600, Owner::Server(run_as))?;
    Ok(ca)
}

/// Paths of the client certificate and key of `role` in the cluster directory.
pub(super) fn client_paths(dir: &Path, role: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("client-{role}.crt")),
        dir.join(format!("client-{role}.key")),
    )
}

/// Write the client certificate and key of `role`, readable by this process only.
pub(super) fn write_client_files(ca: &ClusterCa, dir: &Path, role: &str) -> io::Result<()> {
    let (cert, key) = ca.client_cert(role).map_err(io::Error::other)?;
    let (cert_path, key_path) = client_paths(dir, role);
    write_file(&cert_path, &cert, 0o600, Owner::Us)?;
    write_file(&key_path, &key, 0o600, Owner::Us)
}

/// Write the certificate of a new self-signed CA, unrelated to any cluster, to
/// `dir/other-ca.crt` (creating `dir` if needed) and return its path.
///
/// For negative tests: a client that trusts only this CA must refuse a
/// [`LocalCluster`](super::LocalCluster)'s servers (`sslmode=verify-ca` /
/// `verify-full` fail with an unknown-issuer error). Its key is thrown away.
pub fn other_ca_pem(dir: impl AsRef<Path>) -> Result<PathBuf> {
    let dir = dir.as_ref();
    let err = |source: BoxError| Error::Cluster {
        node: "cluster".into(),
        step: ClusterStep::Tls,
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(e.into()))?;
    let ca = ClusterCa::new("diesel-rwsplit unrelated test CA").map_err(|e| err(e.into()))?;
    let path = dir.join(OTHER_CA_CERT);
    write_file(&path, ca.cert_pem(), 0o644, Owner::Us).map_err(|e| err(e.into()))?;
    Ok(path)
}
