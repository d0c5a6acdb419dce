//! The fleet CA at work: created once by `init`, then opened to issue and revoke.

use crate::store::{self, Access, Durability};
use crate::{
    CA_CERT, CA_KEY, CRL, PkiError, SERVER_CERT, SERVER_KEY, VEHICLES, VehicleFiles, crl, profile,
    tls,
};
use rcgen::{Issuer, KeyIdMethod, KeyPair, PKCS_ECDSA_P256_SHA256, SerialNumber};
use rustls::crypto::SecureRandom;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use telegate_frame::Vin;
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;

/// A fleet directory with its CA loaded, ready to issue and revoke.
///
/// Loading the CA parses and checks its certificate and key once; a tool issuing thousands
/// of vehicle certificates opens one `Authority` and keeps it. It is `Send + Sync`, and its
/// methods take the directory's lock for each change, so threads and processes may share a
/// directory.
#[derive(Debug)]
pub struct Authority {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA's subject (DER): the issuer every certificate and list it signs names.
    ca_subject: Vec<u8>,
    /// The CA's subject key identifier, which its revocation lists must repeat.
    ca_key_id: Vec<u8>,
    random: &'static dyn SecureRandom,
}

impl Authority {
    /// Creates a fleet CA and the gateway's server certificate in `dir` (created if need be),
    /// the server certificate valid for `localhost`, `127.0.0.1` and each of `hosts`.
    /// Refuses a directory that already has a CA key.
    pub fn init(dir: &Path, hosts: &[String]) -> Result<Self, PkiError> {
        let server_names = profile::server_names(hosts)?;
        store::create_dir(dir)?;
        let _lock = store::lock(dir)?;
        let ca_key_path = dir.join(CA_KEY);
        if ca_key_path.exists() {
            return Err(PkiError::AlreadyInitialised(ca_key_path));
        }
        let random = rustls::crypto::ring::default_provider().secure_random;
        let now = OffsetDateTime::now_utc();

        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let ca_params = profile::ca(now, new_serial(random)?);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca_pem = ca_cert.pem();
        let ca_key_pem = ca_key.serialize_pem();
        let authority = Self::from_parts(dir, ca_cert.der(), ca_key, &dir.join(CA_CERT))?;

        let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let server_cert = profile::server(now, new_serial(random)?, server_names)
            .signed_by(&server_key, &authority.issuer)?;

        let durable = |name: &str, pem: &str, access| {
            store::replace(&dir.join(name), pem, access, Durability::Synced)
        };
        durable(SERVER_KEY, &server_key.serialize_pem(), Access::Private)?;
        durable(SERVER_CERT, &server_cert.pem(), Access::Public)?;
        durable(CA_CERT, &ca_pem, Access::Public)?;
        let empty = crl::first(KeyIdMethod::PreSpecified(authority.ca_key_id.clone()), now);
        durable(
            CRL,
            &empty.signed_by(&authority.issuer)?.pem()?,
            Access::Public,
        )?;
        // Last: a directory with ca.key is complete, so an init cut short can be re-run.
        durable(CA_KEY, &ca_key_pem, Access::Private)?;
        Ok(authority)
    }

    /// Loads the CA of a directory made by [`Authority::init`].
    pub fn open(dir: &Path) -> Result<Self, PkiError> {
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        if !key_path.exists() {
            return Err(PkiError::NotInitialised(dir.to_owned()));
        }
        let cert = CertificateDer::from_pem_slice(store::read_text(&cert_path)?.as_bytes())
            .map_err(|error| PkiError::Pem {
                path: cert_path.clone(),
                error,
            })?;
        let key =
            KeyPair::from_pem(&store::read_text(&key_path)?).map_err(|_| PkiError::Invalid {
                path: key_path,
                what: "not a private key this tool can sign with",
            })?;
        Self::from_parts(dir, &cert, key, &cert_path)
    }

    fn from_parts(
        dir: &Path,
        cert: &CertificateDer<'_>,
        key: KeyPair,
        cert_path: &Path,
    ) -> Result<Self, PkiError> {
        let invalid = |what| PkiError::Invalid {
            path: cert_path.to_owned(),
            what,
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(cert)
            .map_err(|_| invalid("not an X.509 certificate"))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(invalid("does not belong to ca.key beside it"));
        }
        let ca_key_id = parsed
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .ok_or_else(|| invalid("has no subject key identifier, so it is no CA of ours"))?;
        let ca_subject = parsed.subject().as_raw().to_vec();
        let issuer = Issuer::from_ca_cert_der(cert, key)
            .map_err(|_| invalid("not a CA certificate this tool can issue from"))?;
        Ok(Self {
            dir: dir.to_owned(),
            issuer,
            ca_subject,
            ca_key_id,
            random: rustls::crypto::ring::default_provider().secure_random,
        })
    }

    /// The fleet directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issues `vin` a new certificate and key, replacing any it had (a renewal; the old
    /// certificate stays valid until it expires unless revoked first, for instance with
    /// [`Authority::revoke_all`]).
    pub fn issue(&self, vin: &Vin) -> Result<VehicleFiles, PkiError> {
        let _lock = store::lock(&self.dir)?;
        self.issue_locked(vin, profile::VEHICLE_LIFETIME)
    }

    /// [`Authority::issue`] with a certificate that expires `lifetime` from now.
    pub fn issue_valid_for(
        &self,
        vin: &Vin,
        lifetime: std::time::Duration,
    ) -> Result<VehicleFiles, PkiError> {
        let lifetime = time::Duration::try_from(lifetime).map_err(|_| PkiError::Lifetime)?;
        let _lock = store::lock(&self.dir)?;
        self.issue_locked(vin, lifetime)
    }

    /// The files of `vin`, issued first if they do not exist yet. Concurrent callers for
    /// one VIN, in any process, end with one certificate between them.
    pub fn ensure_issued(&self, vin: &Vin) -> Result<VehicleFiles, PkiError> {
        let files = VehicleFiles::of(&self.dir, vin);
        if files.exist() {
            return Ok(files);
        }
        let _lock = store::lock(&self.dir)?;
        if files.exist() {
            return Ok(files);
        }
        self.issue_locked(vin, profile::VEHICLE_LIFETIME)
    }

    fn issue_locked(&self, vin: &Vin, lifetime: time::Duration) -> Result<VehicleFiles, PkiError> {
        let files = VehicleFiles::of(&self.dir, vin);
        store::create_dir(&self.dir.join(VEHICLES))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let serial = self.serial()?;
        let cert = profile::vehicle(OffsetDateTime::now_utc(), serial.clone(), vin, lifetime)
            .signed_by(&key, &self.issuer)?;
        // The serial is on record before the certificate exists, so `revoke --all` can
        // never miss a certificate that was handed out.
        let buffered = Durability::Buffered;
        let mut history = self.history_of(&files)?;
        history.push(serial);
        store::replace(
            &files.serials,
            &history
                .iter()
                .map(|s| format!("{}\n", hex::encode(s.to_bytes())))
                .collect::<String>(),
            Access::Public,
            buffered,
        )?;
        // Key first: `ensure_issued` takes the files as issued once the certificate exists.
        store::replace(&files.key, &key.serialize_pem(), Access::Private, buffered)?;
        store::replace(&files.cert, &cert.pem(), Access::Public, buffered)?;
        Ok(files)
    }

    /// Every serial this directory issued `files`' vehicle, oldest first (certificates issued
    /// before the directory kept a history are not on it).
    fn history_of(&self, files: &VehicleFiles) -> Result<Vec<SerialNumber>, PkiError> {
        if !files.serials.exists() {
            return Ok(Vec::new());
        }
        store::read_text(&files.serials)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                hex::decode(l.trim())
                    .map(|b| SerialNumber::from_slice(&b))
                    .map_err(|_| PkiError::Invalid {
                        path: files.serials.clone(),
                        what: "a line is not a hexadecimal serial number",
                    })
            })
            .collect()
    }

    /// Adds the serial of `vin`'s current certificate to the directory's revocation list,
    /// keeping every serial already there. Returns the list's path.
    pub fn revoke(&self, vin: &Vin) -> Result<PathBuf, PkiError> {
        self.revoke_some(vin, false)
    }

    /// Revokes every certificate this directory ever issued `vin` (its current one and the
    /// ones renewals replaced), for a vehicle whose keys may all be compromised.
    pub fn revoke_all(&self, vin: &Vin) -> Result<PathBuf, PkiError> {
        self.revoke_some(vin, true)
    }

    fn revoke_some(&self, vin: &Vin, earlier_too: bool) -> Result<PathBuf, PkiError> {
        let files = VehicleFiles::of(&self.dir, vin);
        let _lock = store::lock(&self.dir)?;
        if !files.cert.exists() {
            return Err(PkiError::NotIssued(files.cert));
        }
        let mut serials = vec![self.serial_of(&files.cert)?];
        if earlier_too {
            serials.extend(self.history_of(&files)?);
        }
        let crl_path = self.dir.join(CRL);
        let previous = if crl_path.exists() {
            crl::read(&crl_path, &self.ca_subject)?
        } else {
            crl::Revoked::default()
        };
        let params = crl::next(
            previous,
            serials,
            KeyIdMethod::PreSpecified(self.ca_key_id.clone()),
            OffsetDateTime::now_utc(),
        );
        let pem = params.signed_by(&self.issuer)?.pem()?;
        store::replace(&crl_path, &pem, Access::Public, Durability::Synced)?;
        Ok(crl_path)
    }

    /// A TLS client configuration for `vin` (issued first if need be); see
    /// [`crate::client_config`].
    pub fn client_config(&self, vin: &Vin) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let files = self.ensure_issued(vin)?;
        tls::client_config(&self.dir.join(CA_CERT), &files)
    }

    /// The serial of a certificate this CA issued.
    fn serial_of(&self, path: &Path) -> Result<SerialNumber, PkiError> {
        let invalid = |what| PkiError::Invalid {
            path: path.to_owned(),
            what,
        };
        let der = CertificateDer::from_pem_slice(store::read_text(path)?.as_bytes()).map_err(
            |error| PkiError::Pem {
                path: path.to_owned(),
                error,
            },
        )?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|_| invalid("not an X.509 certificate"))?;
        if cert.issuer().as_raw() != self.ca_subject.as_slice() {
            return Err(invalid("not issued by this directory's CA"));
        }
        Ok(SerialNumber::from_slice(
            &cert.tbs_certificate.serial.to_bytes_be(),
        ))
    }

    fn serial(&self) -> Result<SerialNumber, PkiError> {
        new_serial(self.random)
    }
}

fn new_serial(random: &dyn SecureRandom) -> Result<SerialNumber, PkiError> {
    let mut bytes = [0; profile::SERIAL_BYTES];
    random.fill(&mut bytes).map_err(|_| PkiError::Random)?;
    Ok(profile::serial(bytes))
}
