//! Small helpers the gateway shares with the `telegate` command line: PEM files read and
//! checked before TLS sees them, and an error with its causes on one line.

use std::path::Path;

/// What a PEM file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemKind {
    /// One or more X.509 certificates (a chain, or the CA a client trusts).
    Certificates,
    /// One or more CA certificates (basicConstraints CA:TRUE), to check client certificates.
    CaCertificates,
    /// A private key: PKCS#8, PKCS#1 or SEC1.
    PrivateKey,
}

/// Reads `path` and checks it holds what `kind` says, so that a wrong file is named as such
/// rather than showing up later as a failed handshake. The problem, on error, names the file
/// and never quotes it: a key file's lines are secret.
pub fn read_pem(path: &Path, kind: PemKind) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let problem = match kind {
        PemKind::PrivateKey => PrivateKeyDer::from_pem_slice(&pem)
            .err()
            .map(|_| "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned()),
        PemKind::Certificates | PemKind::CaCertificates => {
            match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
                Err(_) => Some("is not valid PEM".to_owned()),
                Ok(certs) if certs.is_empty() => Some("holds no PEM certificate".to_owned()),
                Ok(certs) => certs.iter().enumerate().find_map(|(i, der)| {
                    match x509_parser::parse_x509_certificate(der) {
                        Err(_) => Some(format!("certificate #{} is not X.509", i + 1)),
                        Ok((_, cert)) if kind == PemKind::CaCertificates && !cert.is_ca() => {
                            Some(format!(
                                "certificate #{} is not a CA certificate (basicConstraints \
                                 CA:TRUE): name the CA that issued the client certificates",
                                i + 1
                            ))
                        }
                        Ok(_) => None,
                    }
                }),
            }
        }
    };
    match problem {
        Some(problem) => Err(format!("{} {problem}", path.display())),
        None => Ok(pem),
    }
}

/// An error and its causes on one line, without repeats (tonic's own text is only "transport
/// error", and an IO error repeats its inner error's message).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = Some(e);
    while let Some(e) = cause {
        let text = e.to_string();
        if !parts.iter().any(|p| p == &text) {
            parts.push(text);
        }
        cause = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    /// An error that says its cause's text again, as a wrapped IO error does.
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Echo(#[source] std::io::Error);

    #[test]
    fn the_chain_is_on_one_line_without_repeats() {
        let inner = std::io::Error::other("disk gone");
        assert_eq!(error_chain(&Outer(inner)), "outer: disk gone");
        let echoed = Outer(std::io::Error::other(Echo(std::io::Error::other("x"))));
        assert_eq!(error_chain(&echoed), "outer: x");
    }

    #[test]
    fn a_wrong_file_is_named_without_its_content() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("secret.pem");
        std::fs::write(&file, "SECRET-LOOKING-LINE\n").expect("write");
        for kind in [
            PemKind::Certificates,
            PemKind::CaCertificates,
            PemKind::PrivateKey,
        ] {
            let err = read_pem(&file, kind).expect_err("not PEM");
            assert!(err.starts_with(&file.display().to_string()), "{err}");
            assert!(!err.contains("SECRET"), "{err}");
        }
        let missing =
            read_pem(&dir.path().join("none.pem"), PemKind::PrivateKey).expect_err("no such file");
        assert!(missing.starts_with("cannot read "), "{missing}");
    }
}
