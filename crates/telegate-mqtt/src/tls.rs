//! TLS: the server's certificate, the fleet's CA and CRL, and the VIN a vehicle certificate
//! names. The CRL is re-read while running; each reload builds a new server configuration
//! for new handshakes and returns the revoked serials so that live connections can be closed.
//!
//! Vehicles may resume TLS sessions (a reconnecting fleet then costs no full handshakes), but
//! a resumed session proves nothing about today's CRL: its CONNECT checks the certificate
//! again, as does one whose CRL was reloaded since its handshake ([`Tls::check`]), and a reload issues tickets under a new key and starts a new
//! session cache, so that no ticket outlives the CRL it was issued under.

use crate::verify::FleetVerifier;
use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
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
    current: RwLock<Current>,
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
        let (current, revoked) = build(&files)?;
        Ok((
            Self {
                files,
                current: RwLock::new(current),
                crl_seen: Mutex::new(crl_seen),
            },
            revoked,
        ))
    }

    /// The configuration new handshakes use, and its generation (see [`Tls::check`]).
    pub(crate) fn acceptor(&self) -> (TlsAcceptor, u64) {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        (current.acceptor.clone(), current.generation)
    }

    /// Checks a client's certificate chain (end entity first) as a full handshake would
    /// now, against the CRL in force now: for every CONNECT, resumed sessions included.
    /// `verified` is the generation of the configuration whose full handshake verified the
    /// chain, if one did: under that same configuration, moments ago, the check would only
    /// repeat itself. Without a client CA there is nothing to check.
    pub(crate) fn check(
        &self,
        chain: &[CertificateDer<'_>],
        verified: Option<u64>,
    ) -> Result<(), rustls::Error> {
        let verifier = {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            if verified == Some(current.generation) {
                return Ok(());
            }
            current.verifier.clone()
        };
        match verifier {
            Some(v) => v.check(chain, UnixTime::now()),
            None => Ok(()),
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
        let (mut current, revoked) = build(&self.files)?;
        let mut in_force = self.current.write().unwrap_or_else(|p| p.into_inner());
        current.generation = in_force.generation + 1;
        *in_force = current;
        drop(in_force);
        *self.crl_seen.lock().unwrap_or_else(|p| p.into_inner()) = now;
        Ok(Some(revoked))
    }
}

/// Reads and checks the TLS files a configuration names, as the edge will at start.
pub fn check_tls(cfg: &crate::EdgeConfig) -> Result<(), TlsError> {
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => build(&TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: cfg.client_ca.clone(),
            client_crl: cfg.client_crl.clone(),
            allow_anonymous: cfg.allow_anonymous,
        })
        .map(|_| ()),
        _ => Ok(()),
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// One configuration: the acceptor for new handshakes and the verifier it uses.
struct Current {
    acceptor: TlsAcceptor,
    verifier: Option<Arc<FleetVerifier>>,
    /// Counts the reloads: a handshake made under this configuration was checked against
    /// this CRL.
    generation: u64,
}

/// Builds a configuration from the files. Its session tickets (stateless: a reconnecting
/// vehicle resumes without the server keeping a session per vehicle) are sealed under a key
/// of this configuration's own, and its session cache is new: what was issued under an
/// earlier CRL does not resume under this one.
fn build(files: &TlsFiles) -> Result<(Current, Revoked), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = read_all(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Read {
        path: files.key.clone(),
        message: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut revoked = Revoked::new();
    let mut fleet = None;
    let config = match &files.client_ca {
        None => builder.with_no_client_auth().with_single_cert(certs, key)?,
        Some(ca) => {
            let cas = read_all::<CertificateDer<'static>>(ca)?;
            let mut roots = RootCertStore::empty();
            for cert in &cas {
                roots.add(cert.clone())?;
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
            let verifier = Arc::new(FleetVerifier::new(verifier.build()?, &cas)?);
            fleet = Some(verifier.clone());
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)?
        }
    };
    let mut config = config;
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok((
        Current {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            verifier: fleet,
            generation: 0,
        },
        revoked,
    ))
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
    identity(der).map(|id| id.vin)
}

/// Who a vehicle certificate names, and what the edge keeps of it while connected.
#[derive(Debug)]
pub(crate) struct Identity {
    pub vin: Vin,
    /// Its serial number (DER integer bytes), for revocation while connected.
    pub serial: Vec<u8>,
    /// The end of its validity period (Unix seconds), for expiry while connected.
    pub not_after: i64,
    /// The generation of the TLS configuration whose full handshake verified it ([`Tls::check`]);
    /// `None` when TLS resumed a session, which verifies nothing.
    pub verified: Option<u64>,
}

/// The VIN, serial number and expiry of a vehicle certificate.
pub(crate) fn identity(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = cert.subject().iter_common_name();
    let cn = names.next()?;
    if names.next().is_some() {
        return None;
    }
    let vin = Vin::parse(cn.as_str().ok()?).ok()?;
    Some(Identity {
        vin,
        serial: cert.raw_serial().to_vec(),
        not_after: cert.validity().not_after.timestamp(),
        verified: None,
    })
}
