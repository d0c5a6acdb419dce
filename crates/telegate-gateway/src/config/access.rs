//! Who may reach the gateway's own APIs: the admin API's token and TLS material, and the
//! console's operators, read and checked once by [`Config::check`].

use super::{Config, ConfigErrors};
use crate::support::{PemKind, error_chain, read_pem};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The privacy office's web console (`crate::console`). Off unless `listen` is set; over TLS
/// with the admin API's certificate settings (`admin.tls_cert`, `admin.tls_key`,
/// `admin.client_ca`) when those are set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    pub listen: Option<SocketAddr>,
    /// Who may sign in (`telegate console operator NAME` makes a token and its entry).
    pub operators: Vec<Operator>,
    /// A session nobody used for this long is signed out.
    #[serde(with = "humantime_serde")]
    pub session_idle: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            listen: None,
            operators: Vec::new(),
            session_idle: Duration::from_secs(30 * 60),
        }
    }
}

/// A person who may sign in to the console: a name the ledger records, a role, and the
/// SHA-256 (hex) of the token they sign in with; the token itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    pub name: String,
    pub role: Role,
    pub token_sha256: String,
}

impl Operator {
    /// The entry for someone who signs in with `token`: its hash, never the token.
    pub fn with_token(name: &str, role: Role, token: &str) -> Self {
        Self {
            name: name.to_owned(),
            role,
            token_sha256: hex::encode(token_hash(token)),
        }
    }
}

/// The SHA-256 a console token is stored as and compared by (surrounding blanks ignored).
pub fn token_hash(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.trim().as_bytes()).into()
}

/// What an operator may do in the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[derive(strum::IntoStaticStr)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Role {
    /// Looks a vehicle up, explains decisions, watches the flows.
    Viewer,
    /// A viewer who also answers data-subject requests: export, erase, objections, consents,
    /// activations.
    Officer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The console's sign-in list and transport, as the check read them.
#[derive(Debug, Clone)]
pub struct ConsoleAccess {
    /// Name, role and token hash of each operator.
    pub operators: Vec<(String, Role, [u8; 32])>,
    /// `None`: plain HTTP (loopback, or a TLS-terminating proxy in front).
    pub tls: Option<AdminTls>,
    pub session_idle: Duration,
}

/// The admin API. Off unless `listen` is set; never served without a token.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: Option<SocketAddr>,
    /// The bearer token callers must present; or `token_file`, or `TELEGATE_ADMIN_TOKEN`.
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// The listener's certificate chain (PEM). With `tls_key`, the API speaks TLS only.
    pub tls_cert: Option<PathBuf>,
    /// The listener's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) a caller's client certificate must chain to: mutual TLS, on top
    /// of the token. Needs `tls_cert` and `tls_key`.
    pub client_ca: Option<PathBuf>,
    /// How long a blocked account's data waits for the retention check before erasure.
    #[serde(with = "humantime_serde")]
    pub block_grace: Duration,
    /// How often blocked accounts are checked for erasure.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: None,
            token: None,
            token_file: None,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            block_grace: Duration::from_secs(86_400),
            sweep_interval: Duration::from_secs(60),
        }
    }
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("client_ca", &self.client_ca)
            .field("block_grace", &self.block_grace)
            .finish_non_exhaustive()
    }
}

impl AdminConfig {
    /// The token from the config, its file, or `TELEGATE_ADMIN_TOKEN`.
    fn resolve_token(&self) -> Result<Option<String>, String> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        if let Some(path) = &self.token_file {
            let t = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            return Ok(Some(t.trim().to_owned()));
        }
        Ok(std::env::var("TELEGATE_ADMIN_TOKEN").ok())
    }
}

/// What every admin call must bring: the bearer token, over the transport `tls` sets.
#[derive(Clone)]
pub struct AdminAccess {
    pub token: String,
    /// `None`: plain HTTP/2 (loopback, or a TLS-terminating proxy in front).
    pub tls: Option<AdminTls>,
}

impl fmt::Debug for AdminAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminAccess")
            .field("token", &"<redacted>")
            .field("tls", &self.tls)
            .finish()
    }
}

/// The admin listener's TLS material (PEM) as the check read it, so that what was checked
/// is what is served. Built only by [`Config::check`].
#[derive(Clone)]
pub struct AdminTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for AdminTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminTls")
            .field("client_certificates", &self.requires_client_certificate())
            .finish_non_exhaustive()
    }
}

/// A caller that opens a connection and stalls its handshake is dropped after this.
const ADMIN_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl AdminTls {
    /// Callers must present a certificate that chains to `admin.client_ca`.
    pub fn requires_client_certificate(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    /// tonic's settings for the listener (rustls with the ring provider).
    pub fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(ADMIN_TLS_HANDSHAKE_TIMEOUT);
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

impl AdminTls {
    /// The same material as rustls' own settings, for listeners tonic does not serve (the
    /// console): HTTP/1.1, TLS 1.2 and 1.3, client certificates when `admin.client_ca` is set.
    pub fn rustls_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use std::sync::Arc;
        let certs =
            CertificateDer::pem_slice_iter(&self.cert_pem).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca_pem {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(ca) {
                    roots.add(c?)?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Reads `path` and checks it holds what `kind` says; a problem goes to `errors` under `key`.
fn read_admin_pem(
    key: &str,
    path: &Path,
    kind: PemKind,
    errors: &mut ConfigErrors,
) -> Option<Vec<u8>> {
    read_pem(path, kind).map_err(|e| errors.push(key, e)).ok()
}

impl Config {
    /// Never an admin API without a token: an open one would let anyone change consents.
    /// TLS, when configured, comes on top of the token; it never replaces it.
    pub(super) fn admin_access(
        &self,
        tls: Option<AdminTls>,
        errors: &mut ConfigErrors,
    ) -> Option<AdminAccess> {
        self.admin.listen?;
        let token = match self.admin.resolve_token() {
            Ok(Some(t)) if t.len() >= 16 => t,
            Ok(_) => {
                errors.push(
                    "admin.token",
                    "admin.listen is set, but there is no admin token of at least 16 characters: \
                     set admin.token, admin.token_file or TELEGATE_ADMIN_TOKEN",
                );
                return None;
            }
            Err(e) => {
                errors.push("admin.token_file", e);
                return None;
            }
        };
        Some(AdminAccess { token, tls })
    }

    /// Never a console nobody can sign in to, nor one with a token anyone could guess from its
    /// hash's shape: every operator has a name the ledger can record, a role and a SHA-256.
    pub(super) fn console_access(
        &self,
        tls: Option<AdminTls>,
        errors: &mut ConfigErrors,
    ) -> Option<ConsoleAccess> {
        let c = &self.console;
        c.listen?;
        if c.operators.is_empty() {
            errors.push(
                "console.operators",
                "console.listen is set, but nobody may sign in: add [[console.operators]] \
                 entries (`telegate console operator NAME` prints one)",
            );
        }
        let mut operators: Vec<(String, Role, [u8; 32])> = Vec::new();
        for (i, o) in c.operators.iter().enumerate() {
            let key = format!("console.operators[{i}]");
            let name_ok = !o.name.is_empty()
                && o.name.len() <= 64
                && o.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
            if !name_ok {
                errors.push(
                    format!("{key}.name"),
                    "1 to 64 characters of a-z, A-Z, 0-9, '.', '_', '-' and '@'",
                );
            }
            if operators.iter().any(|(n, _, _)| *n == o.name) {
                errors.push(
                    format!("{key}.name"),
                    format!("{:?} is listed twice", o.name),
                );
            }
            let mut hash = [0u8; 32];
            if hex::decode_to_slice(&o.token_sha256, &mut hash).is_err() {
                errors.push(
                    format!("{key}.token_sha256"),
                    "not a SHA-256 in hex (64 characters): `telegate console operator NAME` \
                     prints a token and its hash",
                );
                continue;
            }
            if operators.iter().any(|(_, _, h)| *h == hash) {
                errors.push(
                    format!("{key}.token_sha256"),
                    "two operators share a token: each needs their own",
                );
            }
            operators.push((o.name.clone(), o.role, hash));
        }
        if let Some(tls) = &tls
            && let Err(e) = tls.rustls_config()
        {
            errors.push(
                "console (TLS)",
                format!("no TLS listener can be built from the admin API's TLS files: {e:#}"),
            );
        }
        Some(ConsoleAccess {
            operators,
            tls,
            session_idle: c.session_idle,
        })
    }

    /// The admin listener's TLS files, read and checked as the listener will use them. Checked
    /// whenever one is named, even with `admin.listen` unset, so that a mistake does not wait
    /// for the day the API is switched on.
    pub(super) fn admin_tls(&self, errors: &mut ConfigErrors) -> Option<AdminTls> {
        let a = &self.admin;
        let cert = a
            .tls_cert
            .as_deref()
            .map(|path| read_admin_pem("admin.tls_cert", path, PemKind::Certificates, errors));
        let key = a
            .tls_key
            .as_deref()
            .map(|path| read_admin_pem("admin.tls_key", path, PemKind::PrivateKey, errors));
        let client_ca = a
            .client_ca
            .as_deref()
            .map(|path| read_admin_pem("admin.client_ca", path, PemKind::CaCertificates, errors));
        match (&cert, &key) {
            (Some(_), None) => errors.push(
                "admin.tls_key",
                "admin.tls_cert is set, but not its private key: set admin.tls_key too",
            ),
            (None, Some(_)) => errors.push(
                "admin.tls_cert",
                "admin.tls_key is set, but not the certificate: set admin.tls_cert too",
            ),
            _ => {}
        }
        if client_ca.is_some() && cert.is_none() {
            errors.push(
                "admin.client_ca",
                "client certificates need TLS: set admin.tls_cert and admin.tls_key too",
            );
        }
        let tls = AdminTls {
            cert_pem: cert??,
            key_pem: key??,
            client_ca_pem: match client_ca {
                Some(pem) => Some(pem?),
                None => None,
            },
        };
        // Builds what the listener will: a key that does not belong to the certificate, or a
        // CA rustls cannot use, shows here.
        if let Err(e) = tonic::transport::Server::builder().tls_config(tls.server_config()) {
            errors.push(
                "admin (TLS)",
                format!(
                    "no TLS listener can be built from admin.tls_cert, admin.tls_key and \
                     admin.client_ca: {}",
                    error_chain(&e)
                ),
            );
            return None;
        }
        Some(tls)
    }
}
