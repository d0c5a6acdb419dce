//! What can go wrong, each error naming the file concerned and what to do next.

use std::path::PathBuf;

/// An error from the fleet PKI.
///
/// Paths under `vehicles/` contain a VIN: these errors are for the operator's terminal and
/// for test and simulation tools, never for the gateway's logs.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(
        "{} already exists: this directory holds a fleet CA; choose another directory \
         (replacing a CA means re-issuing every vehicle certificate)",
        .0.display()
    )]
    AlreadyInitialised(PathBuf),
    #[error(
        "{} holds no fleet CA (ca.crt, ca.key): run `telegate pki init` on it first",
        .0.display()
    )]
    NotInitialised(PathBuf),
    #[error(
        "{} does not exist: issue the vehicle's certificate first (`telegate pki issue`)",
        .0.display()
    )]
    NotIssued(PathBuf),
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot write {}: {error}; check that the directory is writable", path.display())]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: not usable PEM ({error}); restore the file from a backup", path.display())]
    Pem {
        path: PathBuf,
        error: rustls_pki_types::pem::Error,
    },
    #[error("{}: {what}; restore the file from a backup", path.display())]
    Invalid { path: PathBuf, what: &'static str },
    #[error("--host {0:?} is neither an IP address nor a DNS name")]
    Host(String),
    #[error("not a VIN: {0}")]
    Vin(telegate_frame::VinError),
    #[error("a certificate lifetime this long cannot be written; choose a shorter one")]
    Lifetime,
    #[error("the operating system's random source failed; retry")]
    Random,
    #[error("cannot sign a certificate or revocation list: {0}")]
    Sign(rcgen::Error),
    #[error(
        "cannot build a TLS client configuration from {}: {error}; re-issue the vehicle's \
         certificate",
        path.display()
    )]
    Tls { path: PathBuf, error: rustls::Error },
}

// Hand-written rather than `#[from]`: the message already carries the cause, and a `source`
// would print it twice in an error chain.
impl From<telegate_frame::VinError> for PkiError {
    fn from(e: telegate_frame::VinError) -> Self {
        Self::Vin(e)
    }
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        Self::Sign(e)
    }
}
