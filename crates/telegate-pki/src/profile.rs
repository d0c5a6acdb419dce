//! The certificate profiles: what the CA, the server and a vehicle certificate say, as rcgen
//! parameters. No IO and no randomness here: the caller brings the time and the serial.

use crate::PkiError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::ServerName;
use telegate_frame::Vin;
use time::{Duration, OffsetDateTime};

pub(crate) const CA_COMMON_NAME: &str = "telegate fleet CA";
pub(crate) const SERVER_COMMON_NAME: &str = "telegate gateway";
/// There is no command to renew the server certificate, so it lives as long as the CA.
pub(crate) const CA_LIFETIME: Duration = Duration::days(3650);
pub(crate) const VEHICLE_LIFETIME: Duration = Duration::days(730);
/// Revoking again re-signs the list, so this only bounds how stale a forgotten list may be.
pub(crate) const CRL_LIFETIME: Duration = Duration::days(30);
/// Certificates start this far in the past so that a peer whose clock lags a little still
/// accepts a certificate issued a moment ago.
const BACKDATE: Duration = Duration::hours(1);
/// Random bytes in a serial: RFC 5280 allows 20 octets, the CA/Browser Forum asks for 64
/// random bits; 16 bytes leave 126 random bits after fixing the top two.
pub(crate) const SERIAL_BYTES: usize = 16;

/// The fleet CA: signs vehicle and server certificates and the revocation list, nothing else.
pub(crate) fn ca(now: OffsetDateTime, serial: SerialNumber) -> CertificateParams {
    let mut params = base(now, CA_LIFETIME, serial, CA_COMMON_NAME);
    // Path length 0: the CA signs end-entity certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// The gateway's TLS server certificate for the names given (see [`server_names`]).
pub(crate) fn server(
    now: OffsetDateTime,
    serial: SerialNumber,
    names: Vec<SanType>,
) -> CertificateParams {
    let mut params = base(now, CA_LIFETIME, serial, SERVER_COMMON_NAME);
    params.subject_alt_names = names;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
}

/// A vehicle's TLS client certificate: the VIN is the subject's only CommonName, which is
/// how the gateway learns who is connecting.
pub(crate) fn vehicle(
    now: OffsetDateTime,
    serial: SerialNumber,
    vin: &Vin,
    lifetime: Duration,
) -> CertificateParams {
    let mut params = base(now, lifetime, serial, vin.expose());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// `localhost`, `127.0.0.1` and each host given, without repeats; a host that parses as an
/// IP address becomes an IP name, any other must be a valid DNS name.
pub(crate) fn server_names(hosts: &[String]) -> Result<Vec<SanType>, PkiError> {
    let mut names = Vec::new();
    for host in ["localhost", "127.0.0.1"]
        .into_iter()
        .chain(hosts.iter().map(String::as_str))
    {
        let name = match ServerName::try_from(host) {
            Ok(ServerName::IpAddress(ip)) => SanType::IpAddress(ip.into()),
            Ok(ServerName::DnsName(dns)) => SanType::DnsName(
                dns.as_ref()
                    .try_into()
                    .map_err(|_| PkiError::Host(host.to_owned()))?,
            ),
            _ => return Err(PkiError::Host(host.to_owned())),
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// A positive serial of [`SERIAL_BYTES`] bytes from random bytes: the top bit cleared keeps
/// it positive, the next bit set keeps its encoded length (and so its entropy) fixed.
pub(crate) fn serial(mut random: [u8; SERIAL_BYTES]) -> SerialNumber {
    random[0] = (random[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&random)
}

fn base(
    now: OffsetDateTime,
    lifetime: Duration,
    serial: SerialNumber,
    common_name: &str,
) -> CertificateParams {
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, common_name);
    let mut params = CertificateParams::default();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
    params.serial_number = Some(serial);
    params.distinguished_name = subject;
    // Explicit CA:FALSE on end-entity certificates; the CA profile overrides it.
    params.is_ca = IsCa::ExplicitNoCa;
    // Lets verifiers (OpenSSL in particular) find the issuing key without guessing by name.
    params.use_authority_key_identifier_extension = true;
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serial_is_positive_and_keeps_its_length() {
        for first in [0x00, 0x3f, 0x80, 0xff] {
            let mut bytes = [0xa5; SERIAL_BYTES];
            bytes[0] = first;
            let serial = serial(bytes).to_bytes();
            assert_eq!(serial.len(), SERIAL_BYTES);
            assert_eq!(serial[0] & 0xc0, 0x40, "first byte {first:#x}");
        }
    }

    #[test]
    fn server_names_classify_and_deduplicate() {
        let hosts = [
            "gateway.example".to_owned(),
            "10.1.2.3".to_owned(),
            "::1".to_owned(),
            "localhost".to_owned(),
        ];
        let names = server_names(&hosts).expect("valid hosts");
        let dns = |s: &str| SanType::DnsName(s.try_into().expect("ia5"));
        let ip = |s: &str| SanType::IpAddress(s.parse().expect("ip"));
        assert_eq!(
            names,
            vec![
                dns("localhost"),
                ip("127.0.0.1"),
                dns("gateway.example"),
                ip("10.1.2.3"),
                ip("::1"),
            ]
        );
    }

    #[test]
    fn a_host_that_is_no_name_is_refused() {
        for bad in ["", "two words", "bad_host!"] {
            assert!(
                matches!(server_names(&[bad.to_owned()]), Err(PkiError::Host(h)) if h == bad),
                "{bad:?}"
            );
        }
    }
}
