//! Load over mutual TLS: a fleet directory (given, or made for the run) and one client
//! configuration per vehicle. Everything is issued and loaded before any timed part starts,
//! so that what is measured is the handshakes and the traffic, never the certificate
//! authority.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use telegate_frame::Vin;
use telegate_sim::tls::VehicleCertificates;

/// Where the vehicles' certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pki {
    /// A fleet directory made by `telegate pki init`. Vehicle certificates it lacks are
    /// issued into it; those it has are used as they are.
    Dir(PathBuf),
    /// A fleet directory made for this run and removed after it.
    Temporary,
}

/// A fleet directory in use, with every vehicle's client configuration loaded.
#[derive(Debug)]
pub struct FleetTls {
    dir: PathBuf,
    /// Kept so that a temporary directory lives as long as the run.
    _temporary: Option<tempfile::TempDir>,
    /// One per vehicle, in the order of the VINs given to [`FleetTls::prepare`].
    configs: Vec<Arc<rustls::ClientConfig>>,
    /// Certificates issued by this preparation (the others were in the directory already).
    pub issued: usize,
    /// How long issuing and loading took. It is not part of any measured figure.
    pub prepare_seconds: f64,
}

impl FleetTls {
    /// Opens (or makes) the fleet directory, issues the certificates `vins` lack and loads
    /// one client configuration per VIN.
    pub fn prepare(pki: &Pki, vins: &[String]) -> anyhow::Result<Self> {
        let started = Instant::now();
        let (dir, temporary) = match pki {
            Pki::Dir(dir) => (dir.clone(), None),
            Pki::Temporary => {
                let tmp = tempfile::tempdir().context("a temporary fleet directory")?;
                telegate_pki::init(tmp.path(), &[])?;
                (tmp.path().to_owned(), Some(tmp))
            }
        };
        let certs = VehicleCertificates::open(&dir)?;
        let mut issued = 0;
        let mut configs = Vec::with_capacity(vins.len());
        for vin in vins {
            let existed = Vin::parse(vin)
                .map(|v| telegate_pki::VehicleFiles::of(&dir, &v).cert.is_file())
                .unwrap_or(false);
            configs.push(certs.client_config(vin)?);
            issued += usize::from(!existed);
        }
        Ok(Self {
            dir,
            _temporary: temporary,
            configs,
            issued,
            prepare_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The fleet directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Vehicle `i`'s client configuration.
    pub fn config(&self, i: usize) -> Option<Arc<rustls::ClientConfig>> {
        self.configs.get(i).cloned()
    }

    pub fn vehicles(&self) -> usize {
        self.configs.len()
    }

    /// The `telegate serve` flags for a TLS listener on `listen` that admits this fleet's
    /// vehicles only.
    pub fn serve_args(&self, listen: std::net::SocketAddr) -> Vec<std::ffi::OsString> {
        let file = |name: &str| self.dir.join(name).into_os_string();
        vec![
            "--mqtt-tls-listen".into(),
            listen.to_string().into(),
            "--mqtt-tls-cert".into(),
            file(telegate_pki::SERVER_CERT),
            "--mqtt-tls-key".into(),
            file(telegate_pki::SERVER_KEY),
            "--mqtt-client-ca".into(),
            file(telegate_pki::CA_CERT),
        ]
    }

    /// One line for the operator: what was prepared, and that it is outside the figures.
    pub fn summary(&self) -> String {
        format!(
            "TLS: {} vehicle certificates (ECDSA P-256, {} issued now) and client \
             configurations prepared in {:.1} s, before the timed part; issuing is not measured",
            self.vehicles(),
            self.issued,
            self.prepare_seconds
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vins;

    #[test]
    fn a_second_preparation_issues_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        telegate_pki::init(dir.path(), &[]).expect("init");
        let pki = Pki::Dir(dir.path().to_owned());
        let first = FleetTls::prepare(&pki, &vins(3)).expect("prepare");
        assert_eq!((first.vehicles(), first.issued), (3, 3));
        let again = FleetTls::prepare(&pki, &vins(4)).expect("prepare");
        assert_eq!((again.vehicles(), again.issued), (4, 1));
        assert!(again.summary().contains("not measured"));
    }
}
