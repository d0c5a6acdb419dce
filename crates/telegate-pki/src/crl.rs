//! The revocation list: what the current list says, plus one more serial, signed again under
//! the next number.

use crate::PkiError;
use crate::profile::CRL_LIFETIME;
use crate::store::load_crls;
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use std::path::Path;
use time::OffsetDateTime;
use x509_parser::num_bigint::BigUint;

/// What a list says that the next one must keep.
#[derive(Debug, Default)]
pub(crate) struct Revoked {
    pub(crate) entries: Vec<RevokedCertParams>,
    /// The number of the list these came from; zero before the first list.
    pub(crate) number: BigUint,
}

/// Reads the list at `path`, which must have been issued by the CA whose subject (DER) is
/// `ca_subject`: merging another CA's serials would revoke unrelated certificates.
pub(crate) fn read(path: &Path, ca_subject: &[u8]) -> Result<Revoked, PkiError> {
    let invalid = |what| PkiError::Invalid {
        path: path.to_owned(),
        what,
    };
    let crls = load_crls(path)?;
    let [der] = crls.as_slice() else {
        return Err(invalid("holds more than one revocation list"));
    };
    let (_, crl) = x509_parser::parse_x509_crl(der)
        .map_err(|_| invalid("not a certificate revocation list"))?;
    if crl.issuer().as_raw() != ca_subject {
        return Err(invalid("issued by another CA than this directory's"));
    }
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| RevokedCertParams {
            serial_number: SerialNumber::from_slice(&r.serial().to_bytes_be()),
            revocation_time: r.revocation_date.to_datetime(),
            // This tool never writes reasons or invalidity dates, so there are none to keep.
            reason_code: None,
            invalidity_date: None,
        })
        .collect();
    Ok(Revoked {
        entries,
        number: crl.crl_number().cloned().unwrap_or_default(),
    })
}

/// The first list, with nothing revoked, so that a gateway can be pointed at it from the
/// start.
pub(crate) fn first(key_id: KeyIdMethod, now: OffsetDateTime) -> CertificateRevocationListParams {
    CertificateRevocationListParams {
        this_update: now,
        next_update: now + CRL_LIFETIME,
        crl_number: SerialNumber::from_slice(&[1]),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: key_id,
    }
}

/// The next list: every entry of `previous`, plus each of `serials` not already one.
/// `key_id` must give the CA's subject key identifier, which the list names as its
/// authority key identifier.
pub(crate) fn next(
    previous: Revoked,
    serials: impl IntoIterator<Item = SerialNumber>,
    key_id: KeyIdMethod,
    now: OffsetDateTime,
) -> CertificateRevocationListParams {
    let mut revoked_certs = previous.entries;
    for serial in serials {
        if !revoked_certs.iter().any(|r| r.serial_number == serial) {
            revoked_certs.push(RevokedCertParams {
                serial_number: serial,
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            });
        }
    }
    CertificateRevocationListParams {
        this_update: now,
        next_update: now + CRL_LIFETIME,
        crl_number: SerialNumber::from_slice(&(previous.number + 1u32).to_bytes_be()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: key_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(n: u8) -> SerialNumber {
        SerialNumber::from_slice(&[0x40, n])
    }

    #[test]
    fn the_first_list_is_number_one_with_one_entry() {
        let now = OffsetDateTime::now_utc();
        let params = next(Revoked::default(), [serial(1)], KeyIdMethod::Sha256, now);
        assert_eq!(params.crl_number.to_bytes(), vec![1]);
        assert_eq!(params.revoked_certs.len(), 1);
        assert!(params.next_update > params.this_update);
    }

    #[test]
    fn the_next_list_keeps_earlier_entries_once_each() {
        let now = OffsetDateTime::now_utc();
        let first = next(Revoked::default(), [serial(1)], KeyIdMethod::Sha256, now);
        let previous = Revoked {
            entries: first.revoked_certs,
            number: BigUint::from(255u32),
        };
        let second = next(previous, [serial(2)], KeyIdMethod::Sha256, now);
        assert_eq!(second.crl_number.to_bytes(), vec![1, 0]);
        let serials: Vec<_> = second
            .revoked_certs
            .iter()
            .map(|r| r.serial_number.clone())
            .collect();
        assert_eq!(serials, vec![serial(1), serial(2)]);

        let again = next(
            Revoked {
                entries: second.revoked_certs,
                number: BigUint::from(256u32),
            },
            [serial(1), serial(2)],
            KeyIdMethod::Sha256,
            now,
        );
        assert_eq!(again.revoked_certs.len(), 2, "revoking twice adds nothing");
        let more = next(
            Revoked {
                entries: again.revoked_certs,
                number: BigUint::from(257u32),
            },
            [serial(2), serial(3), serial(3)],
            KeyIdMethod::Sha256,
            now,
        );
        assert_eq!(
            more.revoked_certs.len(),
            3,
            "each new serial once, in one list"
        );
    }
}
