//! The check a vehicle's certificate must pass: rustls's WebPKI verifier (chain to the fleet
//! CA, validity period, CRL), plus the one constraint it leaves out: a path-length limit on
//! the fleet CA itself (WebPKI takes a trust anchor as a name and a key, so a CA certificate
//! with `pathlen:0` that signed a sub-CA would see that sub-CA's certificates accepted).
//!
//! The edge asks it at every full handshake, and again at CONNECT (against the CRL in force
//! then) unless that handshake was made under the configuration still in force: a TLS session
//! resumed from a ticket skips the first ask, never the second.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;
use webpki::{EndEntityCert, KeyUsage};

/// A fleet CA that limits how many CAs may stand between it and a vehicle certificate.
#[derive(Debug)]
struct Limited {
    anchor: TrustAnchor<'static>,
    max_intermediates: u32,
}

/// The fleet's client-certificate verifier.
#[derive(Debug)]
pub(crate) struct FleetVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    anchors: Vec<TrustAnchor<'static>>,
    limited: Vec<Limited>,
    algorithms: &'static [&'static dyn SignatureVerificationAlgorithm],
}

impl FleetVerifier {
    /// `inner` checks chain, validity and revocation against the CA certificates `cas`;
    /// their path-length constraints are read here.
    pub(crate) fn new(
        inner: Arc<dyn ClientCertVerifier>,
        cas: &[CertificateDer<'static>],
    ) -> Result<Self, rustls::Error> {
        let mut anchors = Vec::new();
        let mut limited = Vec::new();
        for der in cas {
            let anchor = webpki::anchor_from_trusted_cert(der)
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?
                .to_owned();
            if let Some(max_intermediates) = path_len_constraint(der) {
                limited.push(Limited {
                    anchor: anchor.clone(),
                    max_intermediates,
                });
            }
            anchors.push(anchor);
        }
        Ok(Self {
            inner,
            anchors,
            limited,
            algorithms: rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .all,
        })
    }

    /// The whole check of a presented chain (end entity first) at `now`.
    pub(crate) fn check(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let (end_entity, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.verify_client_cert(end_entity, intermediates, now)
            .map(drop)
    }

    /// Whether some valid path from `end_entity` to a fleet CA respects that CA's limit.
    /// Only a chain with intermediates can break one.
    fn within_path_limits(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        if self.limited.is_empty() || intermediates.is_empty() {
            return Ok(());
        }
        let cert = EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let within = |path: &webpki::VerifiedPath<'_>| {
            let used = path.intermediate_certificates().count();
            let anchor = path.anchor();
            match self.limited.iter().find(|l| {
                l.anchor.subject == anchor.subject
                    && l.anchor.subject_public_key_info == anchor.subject_public_key_info
            }) {
                Some(l) if used > l.max_intermediates as usize => {
                    Err(webpki::Error::PathLenConstraintViolated)
                }
                _ => Ok(()),
            }
        };
        cert.verify_for_usage(
            self.algorithms,
            &self.anchors,
            intermediates,
            now,
            KeyUsage::client_auth(),
            None,
            Some(&within),
        )
        .map(drop)
        .map_err(|_| {
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })
    }
}

/// The `pathLenConstraint` of a CA certificate's basic constraints, if it has one.
fn path_len_constraint(der: &[u8]) -> Option<u32> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let constraints = cert.basic_constraints().ok()??.value;
    constraints.ca.then_some(constraints.path_len_constraint?)
}

impl ClientCertVerifier for FleetVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.within_path_limits(end_entity, intermediates, now)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
