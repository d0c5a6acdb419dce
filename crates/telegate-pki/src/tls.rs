//! A vehicle's side of mutual TLS, built from the fleet directory.

use crate::store::{load_certs, load_key};
use crate::{PkiError, VehicleFiles};
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;

/// Trusts the certificates in `ca_cert` only and presents the vehicle's certificate. The ring
/// provider is named here rather than taken from the process: a process may have installed
/// another default, or none.
pub(crate) fn client_config(
    ca_cert: &Path,
    files: &VehicleFiles,
) -> Result<Arc<ClientConfig>, PkiError> {
    let tls_error = |path: &Path| {
        let path = path.to_owned();
        move |error| PkiError::Tls { path, error }
    };
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_cert)? {
        roots.add(cert).map_err(tls_error(ca_cert))?;
    }
    let chain = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(tls_error(ca_cert))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(tls_error(&files.cert))?;
    Ok(Arc::new(config))
}
