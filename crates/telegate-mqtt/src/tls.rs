//! TLS: the server's certificate, the fleet's CA and CRL, and the VIN a vehicle certificate
//! names. The CRL is re-read while running; each reload builds a new server configuration
//! for new handshakes and returns the revoked serials so that live connections can be closed.

use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;
use telegate_frame::Vin;
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up. Names files, never certificate contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{0} holds no PEM item of the expected kind")]
    Empty(PathBuf),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA or CRL unusable: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A TLS client configuration for an external broker: trusting `ca` only, presenting
/// `identity` (certificate chain, key) when given.
pub(crate) fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in read_all::<CertificateDer<'static>>(ca)? {
        roots.add(cert)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = read_all(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Read {
                path: key.to_owned(),
                message: e.to_string(),
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    Ok(Arc::new(config))
}

/// Serial numbers (DER integer bytes) of revoked certificates.
pub(crate) type Revoked = HashSet<Vec<u8>>;

fn read_all<T: PemObject>(path: &Path) -> Result<Vec<T>, TlsError> {
    let items = T::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if items.is_empty() {
        return Err(TlsError::Empty(path.to_owned()));
    }
    Ok(items)
}

/// The files TLS is built from.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_crl: Option<PathBuf>,
    pub allow_anonymous: bool,
}

pub(crate) struct Tls {
    files: TlsFiles,
    ticketer: Ticketer,
    current: RwLock<TlsAcceptor>,
    /// The CRL file's modification time and length when last read.
    crl_seen: Mutex<Option<(SystemTime, u64)>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads every file; fails on the first that is missing or unusable.
    pub(crate) fn load(files: TlsFiles) -> Result<(Self, Revoked), TlsError> {
        let crl_seen = files.client_crl.as_deref().and_then(stamp);
        let ticketer = rustls::crypto::ring::Ticketer::new()?;
        let (acceptor, revoked) = build(&files, ticketer.clone())?;
        Ok((
            Self {
                files,
                ticketer,
                current: RwLock::new(acceptor),
                crl_seen: Mutex::new(crl_seen),
            },
            revoked,
        ))
    }

    /// The configuration new handshakes use.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        match self.current.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rebuilds the configuration if the CRL file changed; returns the revoked serials then.
    /// On an unreadable CRL the previous configuration stays in force.
    pub(crate) fn reload_if_changed(&self) -> Result<Option<Revoked>, TlsError> {
        let Some(path) = &self.files.client_crl else {
            return Ok(None);
        };
        let now = stamp(path);
        {
            let seen = self.crl_seen.lock().unwrap_or_else(|p| p.into_inner());
            if now == *seen {
                return Ok(None);
            }
        }
        let (acceptor, revoked) = build(&self.files, self.ticketer.clone())?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = acceptor;
        *self.crl_seen.lock().unwrap_or_else(|p| p.into_inner()) = now;
        Ok(Some(revoked))
    }
}

/// Reads and checks the TLS files a configuration names, as the edge will at start.
pub fn check_tls(cfg: &crate::EdgeConfig) -> Result<(), TlsError> {
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => build(
            &TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: cfg.client_ca.clone(),
                client_crl: cfg.client_crl.clone(),
                allow_anonymous: cfg.allow_anonymous,
            },
            rustls::crypto::ring::Ticketer::new()?,
        )
        .map(|_| ()),
        _ => Ok(()),
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Stateless session tickets: a reconnecting vehicle resumes its TLS session without the
/// server keeping one per vehicle (rustls's default store holds 256). One ticketer lives as
/// long as the edge, so tickets survive CRL reloads.
type Ticketer = Arc<dyn rustls::server::ProducesTickets>;

fn build(files: &TlsFiles, ticketer: Ticketer) -> Result<(TlsAcceptor, Revoked), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = read_all(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Read {
        path: files.key.clone(),
        message: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut revoked = Revoked::new();
    let config = match &files.client_ca {
        None => builder.with_no_client_auth().with_single_cert(certs, key)?,
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_all::<CertificateDer<'static>>(ca)? {
                roots.add(cert)?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(path) = &files.client_crl {
                let crls: Vec<CertificateRevocationListDer<'static>> = read_all(path)?;
                for crl in &crls {
                    revoked.extend(revoked_serials(crl).ok_or_else(|| TlsError::Read {
                        path: path.clone(),
                        message: "not a certificate revocation list".into(),
                    })?);
                }
                // A CRL speaks for the vehicle certificates of its issuer; certificates from
                // an issuer without one (another issuing CA of the fleet) are not refused
                // for that.
                verifier = verifier
                    .with_crls(crls)
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status();
            }
            if files.allow_anonymous {
                verifier = verifier.allow_unauthenticated();
            }
            builder
                .with_client_cert_verifier(verifier.build()?)
                .with_single_cert(certs, key)?
        }
    };
    let mut config = config;
    config.ticketer = ticketer;
    Ok((TlsAcceptor::from(Arc::new(config)), revoked))
}

fn revoked_serials(crl: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (_, crl) = x509_parser::parse_x509_crl(crl).ok()?;
    Some(
        crl.iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect(),
    )
}

/// The VIN a vehicle certificate names: its subject CommonName, present exactly once and a
/// valid VIN. Anything else names no vehicle.
pub fn vin_of_certificate(der: &[u8]) -> Option<Vin> {
    identity(der).map(|(vin, _)| vin)
}

/// The VIN and the serial number of a vehicle certificate.
pub(crate) fn identity(der: &[u8]) -> Option<(Vin, Vec<u8>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = cert.subject().iter_common_name();
    let cn = names.next()?;
    if names.next().is_some() {
        return None;
    }
    let vin = Vin::parse(cn.as_str().ok()?).ok()?;
    Some((vin, cert.raw_serial().to_vec()))
}
