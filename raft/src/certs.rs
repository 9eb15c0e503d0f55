//! Cluster certificates: one CA per cluster, one certificate per node, used for mutual TLS
//! between nodes. Every node certificate names the same server name ([`NODE_SERVER_NAME`]), so a
//! node is trusted because the cluster CA signed it, not because of the address it dials from;
//! a certificate from any other CA is refused in both directions.
//!
//! ```text
//! <dir>/ca.pem         the cluster CA certificate (every node)
//! <dir>/ca.key         the CA key (keep it off the nodes in production; needed to add nodes)
//! <dir>/node-<id>.pem  node <id>'s certificate, signed by the CA
//! <dir>/node-<id>.key  node <id>'s private key
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::types::NodeId;

/// The DNS name every node certificate carries and every client verifies.
pub const NODE_SERVER_NAME: &str = "chat4all-node";

/// The ALPN protocol id of the node-to-node protocol.
pub const ALPN: &[u8] = b"chat4all/1";

/// Failures making or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rcgen could not make a certificate.
    #[error("generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificates or keys.
    #[error("tls config: {0}")]
    Tls(String),
}

impl CertError {
    /// A stable upper-snake code.
    pub fn code(&self) -> &'static str {
        match self {
            CertError::Io { .. } => "CERT_IO",
            CertError::Invalid { .. } => "CERT_INVALID",
            CertError::Generate(_) => "CERT_GENERATE",
            CertError::Tls(_) => "TLS_CONFIG",
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The three files one node needs.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The cluster CA certificate.
    pub ca_cert: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files of node `id` in a directory written by [`generate_cluster_certs`].
    pub fn for_node(dir: &Path, id: NodeId) -> TlsFiles {
        TlsFiles {
            ca_cert: dir.join("ca.pem"),
            cert: dir.join(format!("node-{id}.pem")),
            key: dir.join(format!("node-{id}.key")),
        }
    }
}

/// Writes a new cluster CA and a certificate for each node id into `dir` (created if missing),
/// replacing files of the same names.
pub fn generate_cluster_certs(dir: &Path, ids: &[NodeId]) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.distinguished_name = name("chat4all cluster CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write(&dir.join("ca.pem"), &ca_cert.pem(), false)?;
    write(&dir.join("ca.key"), &ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca_params, ca_key);
    for &id in ids {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![NODE_SERVER_NAME.to_string()])?;
        params.distinguished_name = name(&format!("chat4all node {id}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer)?;
        let files = TlsFiles::for_node(dir, id);
        write(&files.cert, &cert.pem(), false)?;
        write(&files.key, &key.serialize_pem(), true)?;
    }
    Ok(())
}

/// Makes sure `dir` holds a cluster CA and certificates for every id, generating them if the
/// directory has no CA yet. Several nodes may call this at once on a shared directory: each
/// generates into a private directory and renames it into place, so exactly one set wins and
/// every caller ends up using it. Returns whether this call generated the set.
pub fn ensure_cluster_certs(dir: &Path, ids: &[NodeId]) -> Result<bool, CertError> {
    let mut generated = false;
    if !dir.join("ca.pem").exists() {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        let tmp = parent.join(format!(
            ".{}.tmp-{}-{:x}",
            dir.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id(),
            rand::random::<u64>()
        ));
        generate_cluster_certs(&tmp, ids)?;
        // rename(2) onto a missing or empty directory is atomic; onto a filled one it fails,
        // which means another node won the race.
        match std::fs::rename(&tmp, dir) {
            Ok(()) => generated = true,
            Err(_) => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
    }
    for &id in ids {
        let files = TlsFiles::for_node(dir, id);
        if !files.cert.exists() || !files.key.exists() {
            return Err(CertError::Invalid {
                path: files.cert,
                what: format!(
                    "the cluster CA in {} has no certificate for node {id}; make one with `chat4all certs`",
                    dir.display()
                ),
            });
        }
    }
    Ok(generated)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), CertError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = options.open(path).map_err(io_err(path))?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Loaded {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn load(files: &TlsFiles) -> Result<Loaded, CertError> {
    let read_certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, CertError> {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| CertError::Invalid {
                path: path.to_path_buf(),
                what: e.to_string(),
            })?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertError::Invalid {
                path: path.to_path_buf(),
                what: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(CertError::Invalid {
                path: path.to_path_buf(),
                what: "no certificate in the file".into(),
            });
        }
        Ok(certs)
    };
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&files.ca_cert)? {
        roots.add(ca).map_err(|e| CertError::Invalid {
            path: files.ca_cert.clone(),
            what: e.to_string(),
        })?;
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| CertError::Invalid {
        path: files.key.clone(),
        what: e.to_string(),
    })?;
    Ok(Loaded {
        roots: Arc::new(roots),
        chain: read_certs(&files.cert)?,
        key,
    })
}

/// The TLS server side of a node: presents its certificate, requires a client certificate
/// signed by the cluster CA, TLS 1.3 only (QUIC requires it).
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, CertError> {
    let loaded = load(files)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(loaded.roots, provider())
        .build()
        .map_err(|e| CertError::Tls(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CertError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(loaded.chain, loaded.key)
        .map_err(|e| CertError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The TLS client side of a node: trusts only the cluster CA and presents its own certificate.
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, CertError> {
    let loaded = load(files)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CertError::Tls(e.to_string()))?
        .with_root_certificates(loaded.roots)
        .with_client_auth_cert(loaded.chain, loaded.key)
        .map_err(|e| CertError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_load_into_tls_configs() -> Result<(), CertError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tempdir")))?;
        generate_cluster_certs(dir.path(), &[1, 2])?;
        for id in [1, 2] {
            let files = TlsFiles::for_node(dir.path(), id);
            server_config(&files)?;
            client_config(&files)?;
        }
        assert!(
            load(&TlsFiles::for_node(dir.path(), 3)).is_err(),
            "node 3 has no files"
        );
        Ok(())
    }

    #[test]
    fn garbage_pem_is_a_clear_error() -> Result<(), CertError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tempdir")))?;
        generate_cluster_certs(dir.path(), &[1])?;
        let files = TlsFiles::for_node(dir.path(), 1);
        std::fs::write(&files.cert, "not a pem").map_err(io_err(&files.cert))?;
        let err = server_config(&files).err().map(|e| e.code());
        assert_eq!(err, Some("CERT_INVALID"));
        Ok(())
    }

    #[test]
    fn ensure_keeps_an_existing_set() -> Result<(), CertError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tempdir")))?;
        let certs = dir.path().join("certs");
        assert!(ensure_cluster_certs(&certs, &[1, 2, 3])?);
        let before = std::fs::read(certs.join("ca.pem")).map_err(io_err(&certs))?;
        assert!(!ensure_cluster_certs(&certs, &[1, 2, 3])?);
        assert_eq!(
            std::fs::read(certs.join("ca.pem")).map_err(io_err(&certs))?,
            before
        );
        let missing = ensure_cluster_certs(&certs, &[4]).err().map(|e| e.code());
        assert_eq!(missing, Some("CERT_INVALID"));
        Ok(())
    }
}
