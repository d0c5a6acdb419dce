//! The fleet's certificates: one CA per fleet directory, the gateway's server certificate,
//! one client certificate per vehicle, and the revocation list the gateway re-reads while
//! running. It is the offline operator tool behind `telegate pki` and the certificate source
//! of the simulator, the load generator and the tests; it is synchronous and performs no
//! network IO, and the gateway only reads what it writes (through [`load_certs`],
//! [`load_key`] and [`load_crls`]).
//!
//! A fleet directory `DIR` holds, all PEM:
//!
//! | file | what |
//! | --- | --- |
//! | `ca.crt`, `ca.key` | the fleet CA (ECDSA P-256, CN "telegate fleet CA", 10 years) |
//! | `server.crt`, `server.key` | the gateway (`localhost`, `127.0.0.1` and each `--host`) |
//! | `vehicles/VIN.crt`, `vehicles/VIN.key` | one vehicle, valid 2 years |
//! | `crl.pem` | the serials revoked so far (none after `init`) |
//!
//! **A vehicle certificate names its VIN as the subject's CommonName, exactly once**, and
//! carries clientAuth only: that CommonName is the identity the gateway gives a connection.
//! Private keys are created with mode 0600. Every file is replaced by renaming a complete
//! temporary file over it, and every change holds an exclusive lock on `DIR`, so readers and
//! concurrent writers (two processes issuing the same VIN) never see a half-written state.

mod authority;
mod crl;
mod error;
mod profile;
mod store;
mod tls;

pub use authority::Authority;
pub use error::PkiError;
pub use store::{load_certs, load_crls, load_key};

pub use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use telegate_frame::Vin;

/// The CA certificate: what the gateway trusts for vehicles and vehicles trust for the gateway.
pub const CA_CERT: &str = "ca.crt";
/// The CA's private key. Its presence marks a directory as initialised.
pub const CA_KEY: &str = "ca.key";
/// The gateway's TLS server certificate.
pub const SERVER_CERT: &str = "server.crt";
/// The gateway's private key.
pub const SERVER_KEY: &str = "server.key";
/// The certificate revocation list, absent until the first revocation.
pub const CRL: &str = "crl.pem";
/// The folder of vehicle certificates and keys, named `VIN.crt` and `VIN.key`.
pub const VEHICLES: &str = "vehicles";
/// The extension of a vehicle's certificate file.
pub const VEHICLE_CERT_EXTENSION: &str = "crt";
/// The extension of a vehicle's key file.
pub const VEHICLE_KEY_EXTENSION: &str = "key";
/// A vehicle's issued serials: `dir/vehicles/VIN.serials`.
pub const VEHICLE_SERIALS_EXTENSION: &str = "serials";

/// Where one vehicle's certificate and key live in a fleet directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VehicleFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The serial of every certificate issued to the vehicle, one hexadecimal serial a line.
    pub serials: PathBuf,
}

impl VehicleFiles {
    /// `dir/vehicles/VIN.crt` and `dir/vehicles/VIN.key`, whether they exist or not.
    pub fn of(dir: &Path, vin: &Vin) -> Self {
        let base = dir.join(VEHICLES).join(vin.expose());
        Self {
            cert: base.with_extension(VEHICLE_CERT_EXTENSION),
            key: base.with_extension(VEHICLE_KEY_EXTENSION),
            serials: base.with_extension(VEHICLE_SERIALS_EXTENSION),
        }
    }

    fn exist(&self) -> bool {
        self.cert.is_file() && self.key.is_file()
    }
}

/// Creates a fleet CA and the gateway's server certificate in `dir`; see [`Authority::init`].
pub fn init(dir: &Path, hosts: &[String]) -> Result<(), PkiError> {
    Authority::init(dir, hosts).map(drop)
}

/// Issues (or renews) `vin`'s certificate; see [`Authority::issue`].
pub fn issue(dir: &Path, vin: &Vin) -> Result<VehicleFiles, PkiError> {
    Authority::open(dir)?.issue(vin)
}

/// `vin`'s files, issued first if missing; see [`Authority::ensure_issued`]. Does not load
/// the CA when the files exist.
pub fn ensure_issued(dir: &Path, vin: &Vin) -> Result<VehicleFiles, PkiError> {
    let files = VehicleFiles::of(dir, vin);
    if files.exist() {
        return Ok(files);
    }
    Authority::open(dir)?.ensure_issued(vin)
}

/// Issues (or renews) `vin`'s certificate, valid for `lifetime` from now; see
/// [`Authority::issue_valid_for`].
pub fn issue_valid_for(
    dir: &Path,
    vin: &Vin,
    lifetime: std::time::Duration,
) -> Result<VehicleFiles, PkiError> {
    Authority::open(dir)?.issue_valid_for(vin, lifetime)
}

/// Revokes `vin`'s current certificate; returns the path of `crl.pem`. See
/// [`Authority::revoke`].
pub fn revoke(dir: &Path, vin: &Vin) -> Result<PathBuf, PkiError> {
    Authority::open(dir)?.revoke(vin)
}

/// Revokes every certificate the directory issued `vin`; see [`Authority::revoke_all`].
pub fn revoke_all(dir: &Path, vin: &Vin) -> Result<PathBuf, PkiError> {
    Authority::open(dir)?.revoke_all(vin)
}

/// A TLS client configuration for `vin` against a gateway of this fleet: trusts `ca.crt`
/// only and presents the vehicle's certificate (issued first if missing), with rustls' ring
/// provider whatever the process default is.
pub fn client_config(dir: &Path, vin: &Vin) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let files = ensure_issued(dir, vin)?;
    tls::client_config(&dir.join(CA_CERT), &files)
}
