//! Simulated vehicles' TLS identities: one fleet CA, one client certificate per VIN, issued
//! the first time a vehicle needs it. The simulator, the load generator and the connection
//! scale tool share this, so that every simulated vehicle proves its VIN the way a real
//! one does.
//!
//! The fleet directory's vehicle files are named after their VIN, and the PKI's own errors
//! name those files. The errors here never do: they say which directory and what went wrong.

use rumqttc::{TlsConfiguration, Transport};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use telegate_frame::Vin;
use telegate_pki::{Authority, PkiError};

/// Why a simulated vehicle has no TLS identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The directory holds no usable fleet CA. The message names CA files only.
    #[error("fleet PKI: {0}")]
    Open(PkiError),
    #[error("a simulated vehicle's identifier is not a VIN: {0}")]
    Vin(telegate_frame::VinError),
    #[error(
        "a vehicle certificate in {} could not be issued or loaded: {reason}; \
         check the directory (or issue again with `telegate pki issue`)",
        dir.display()
    )]
    Vehicle { dir: PathBuf, reason: String },
}

/// The fleet CA of one directory, loaded once, handing out vehicle identities.
#[derive(Debug)]
pub struct VehicleCertificates {
    authority: Authority,
}

impl VehicleCertificates {
    /// Loads the fleet CA in `dir` (made by `telegate pki init`).
    pub fn open(dir: &Path) -> Result<Self, IdentityError> {
        Ok(Self {
            authority: Authority::open(dir).map_err(IdentityError::Open)?,
        })
    }

    /// The fleet directory.
    pub fn dir(&self) -> &Path {
        self.authority.dir()
    }

    /// A TLS client configuration presenting `vin`'s certificate (issued first if it does
    /// not exist) and trusting the fleet CA only. Blocking: it may sign and write files.
    pub fn client_config(&self, vin: &str) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
        let vin = Vin::parse(vin).map_err(IdentityError::Vin)?;
        self.authority
            .client_config(&vin)
            .map_err(|e| IdentityError::Vehicle {
                dir: self.dir().to_owned(),
                reason: without_paths(&e),
            })
    }

    /// The MQTT client transport for `vin`: TLS with its certificate. Blocking, as
    /// [`VehicleCertificates::client_config`].
    pub fn transport(&self, vin: &str) -> Result<Transport, IdentityError> {
        Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
            self.client_config(vin)?,
        )))
    }
}

/// What went wrong with a vehicle's files, without the files' names (they contain the VIN).
fn without_paths(e: &PkiError) -> String {
    match e {
        PkiError::Read { error, .. } => format!("cannot read a file: {error}"),
        PkiError::Write { error, .. } => format!("cannot write a file: {error}"),
        PkiError::Pem { error, .. } => format!("a file is not usable PEM ({error})"),
        PkiError::Invalid { what, .. } => format!("a file is invalid: {what}"),
        PkiError::Tls { error, .. } => format!("TLS refused the certificate or key: {error}"),
        PkiError::NotIssued(_) => "the certificate was not issued".to_owned(),
        PkiError::NotInitialised(_) | PkiError::AlreadyInitialised(_) => {
            "the fleet CA changed while in use".to_owned()
        }
        // These name no file.
        PkiError::Host(_)
        | PkiError::Vin(_)
        | PkiError::Random
        | PkiError::Sign(_)
        | PkiError::Lifetime => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIN: &str = "WP0ZZZ99ZTS392124";

    #[test]
    fn a_vehicle_gets_its_certificate_on_first_use_and_keeps_it() {
        let dir = tempfile::tempdir().expect("tmp");
        telegate_pki::init(dir.path(), &[]).expect("init");
        let certs = VehicleCertificates::open(dir.path()).expect("open");
        let files = telegate_pki::VehicleFiles::of(dir.path(), &Vin::parse(VIN).expect("vin"));
        assert!(!files.cert.exists());
        certs.client_config(VIN).expect("issued on demand");
        let first = std::fs::read(&files.cert).expect("certificate written");
        certs.client_config(VIN).expect("again");
        assert_eq!(
            std::fs::read(&files.cert).expect("cert"),
            first,
            "not re-issued"
        );
    }

    #[test]
    fn errors_never_name_a_vehicle() {
        let dir = tempfile::tempdir().expect("tmp");
        telegate_pki::init(dir.path(), &[]).expect("init");
        let certs = VehicleCertificates::open(dir.path()).expect("open");
        // A directory where the vehicle's certificate file should be: it cannot be written.
        let files = telegate_pki::VehicleFiles::of(dir.path(), &Vin::parse(VIN).expect("vin"));
        std::fs::create_dir_all(&files.cert).expect("blocker");
        std::fs::create_dir_all(&files.key).expect("blocker");
        let e = certs.client_config(VIN).expect_err("unwritable");
        assert!(matches!(e, IdentityError::Vehicle { .. }), "{e}");
        assert!(!e.to_string().contains(VIN), "{e}");

        let empty = tempfile::tempdir().expect("tmp");
        let e = VehicleCertificates::open(empty.path()).expect_err("no CA");
        assert!(e.to_string().contains("pki init"), "{e}");
    }
}
