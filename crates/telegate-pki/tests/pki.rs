//! The fleet PKI from the outside: the files a fleet directory holds, what the certificates
//! say (read back with x509-parser), and whether rustls' own verifier and an in-memory TLS
//! handshake accept them, before and after revocation.

use rustls::crypto::ring::default_provider;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{
    CertificateError, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};
use std::fs;
use std::path::Path;
use std::sync::Arc;
use telegate_frame::Vin;
use telegate_pki::{
    Authority, CA_CERT, CA_KEY, CRL, CertificateDer, PkiError, SERVER_CERT, SERVER_KEY,
    VehicleFiles, load_certs, load_crls, load_key,
};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{X509Certificate, parse_x509_certificate, parse_x509_crl};

const VIN_A: &str = "WP0ZZZ99ZTS392124";
const VIN_B: &str = "1HGCM82633A004352";

fn vin(s: &str) -> Vin {
    Vin::parse(s).expect("a valid VIN")
}

fn fleet(hosts: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
    telegate_pki::init(dir.path(), &hosts).expect("init");
    dir
}

fn one_cert(path: &Path) -> CertificateDer<'static> {
    let mut certs = load_certs(path).expect("certificates load");
    assert_eq!(certs.len(), 1, "{} holds one certificate", path.display());
    certs.remove(0)
}

fn parsed<'a>(der: &'a [u8]) -> X509Certificate<'a> {
    parse_x509_certificate(der).expect("X.509").1
}

fn common_names(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject()
        .iter_common_name()
        .map(|cn| cn.as_str().expect("a string CN").to_owned())
        .collect()
}

fn serial_of(path: &Path) -> Vec<u8> {
    parsed(&one_cert(path)).tbs_certificate.serial.to_bytes_be()
}

fn revoked_serials(dir: &Path) -> Vec<Vec<u8>> {
    let crls = load_crls(&dir.join(CRL)).expect("crl.pem loads");
    assert_eq!(crls.len(), 1);
    let (_, crl) = parse_x509_crl(&crls[0]).expect("a CRL");
    crl.iter_revoked_certificates()
        .map(|r| r.serial().to_bytes_be())
        .collect()
}

/// rustls' verifier for vehicles, as the gateway builds it: trusts ca.crt, optionally with
/// the revocation list.
fn verifier(dir: &Path, with_crl: bool) -> Arc<dyn ClientCertVerifier> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(&dir.join(CA_CERT)).expect("ca.crt loads") {
        roots.add(cert).expect("a usable trust anchor");
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(default_provider()));
    if with_crl {
        builder = builder.with_crls(load_crls(&dir.join(CRL)).expect("crl.pem loads"));
    }
    builder.build().expect("a verifier")
}

fn verify(verifier: &dyn ClientCertVerifier, files: &VehicleFiles) -> Result<(), rustls::Error> {
    verifier
        .verify_client_cert(&one_cert(&files.cert), &[], UnixTime::now())
        .map(drop)
}

#[test]
fn init_writes_the_four_files_and_refuses_a_second_init() {
    let fleet = fleet(&[]);
    let dir = fleet.path();
    for name in [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, CRL] {
        assert!(dir.join(name).is_file(), "{name} written");
    }
    let crls = load_crls(&dir.join(CRL)).expect("crl.pem loads");
    let (_, crl) = x509_parser::parse_x509_crl(&crls[0]).expect("a CRL");
    assert_eq!(
        crl.iter_revoked_certificates().count(),
        0,
        "nothing revoked after init"
    );
    #[cfg(unix)]
    for name in [CA_KEY, SERVER_KEY] {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join(name))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} readable by its owner only");
    }
    load_key(&dir.join(CA_KEY)).expect("ca.key is a PEM private key");

    let ca_key = fs::read(dir.join(CA_KEY)).expect("read ca.key");
    let second = telegate_pki::init(dir, &["other.example".to_owned()]);
    assert!(
        matches!(&second, Err(PkiError::AlreadyInitialised(path)) if path == &dir.join(CA_KEY)),
        "{second:?}"
    );
    assert_eq!(fs::read(dir.join(CA_KEY)).expect("read ca.key"), ca_key);
}

#[test]
fn the_ca_and_server_certificates_follow_the_profile() {
    let fleet = fleet(&["gateway.example", "10.0.0.7"]);
    let dir = fleet.path();
    let ca_der = one_cert(&dir.join(CA_CERT));
    let ca = parsed(&ca_der);
    assert_eq!(common_names(&ca), vec!["telegate fleet CA"]);
    let constraints = ca.basic_constraints().expect("parses").expect("present");
    assert!(constraints.value.ca);
    let usage = ca.key_usage().expect("parses").expect("present").value;
    assert!(usage.key_cert_sign() && usage.crl_sign() && !usage.digital_signature());
    let years = (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp())
        / (365 * 24 * 3600);
    assert_eq!(years, 10);
    assert_eq!(
        ca.public_key()
            .algorithm
            .parameters
            .as_ref()
            .map(|p| p.as_oid().expect("a curve OID").to_id_string()),
        Some("1.2.840.10045.3.1.7".to_owned()),
        "ECDSA on P-256"
    );

    let server_der = one_cert(&dir.join(SERVER_CERT));
    let server = parsed(&server_der);
    assert_eq!(server.issuer().as_raw(), ca.subject().as_raw());
    let mut names = Vec::new();
    for ext in server.iter_extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                names.push(match name {
                    GeneralName::DNSName(d) => format!("dns:{d}"),
                    GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                    other => format!("other:{other:?}"),
                });
            }
        }
    }
    assert_eq!(
        names,
        vec![
            "dns:localhost".to_owned(),
            format!("ip:{:?}", [127u8, 0, 0, 1].as_slice()),
            "dns:gateway.example".to_owned(),
            format!("ip:{:?}", [10u8, 0, 0, 7].as_slice()),
        ]
    );
    let eku = server
        .extended_key_usage()
        .expect("parses")
        .expect("present");
    assert!(eku.value.server_auth && !eku.value.client_auth);
}

#[test]
fn a_vehicle_certificate_names_its_vin_once_and_chains_to_the_ca() {
    let fleet = fleet(&[]);
    let dir = fleet.path();
    let files = telegate_pki::issue(dir, &vin(VIN_A)).expect("issue");
    assert_eq!(files, VehicleFiles::of(dir, &vin(VIN_A)));
    assert!(files.cert.ends_with(format!("vehicles/{VIN_A}.crt")));
    assert!(files.key.ends_with(format!("vehicles/{VIN_A}.key")));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&files.key).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let der = one_cert(&files.cert);
    let cert = parsed(&der);
    assert_eq!(common_names(&cert), vec![VIN_A], "CN = VIN, exactly once");
    let eku = cert.extended_key_usage().expect("parses").expect("present");
    assert!(eku.value.client_auth && !eku.value.server_auth && !eku.value.any);
    let usage = cert.key_usage().expect("parses").expect("present").value;
    assert!(usage.digital_signature() && !usage.key_cert_sign());
    let constraints = cert.basic_constraints().expect("parses").expect("present");
    assert!(!constraints.value.ca);
    let serial = cert.tbs_certificate.serial.to_bytes_be();
    assert!(serial.len() >= 8, "a serial of at least 64 bits");
    assert!(cert.raw_serial()[0] & 0x80 == 0, "a positive serial");

    verify(verifier(dir, false).as_ref(), &files).expect("the vehicle chains to the CA");

    let other_fleet = self::fleet(&[]);
    let foreign = verify(verifier(other_fleet.path(), false).as_ref(), &files);
    // Every fleet CA has the same name, so webpki gets as far as the signature.
    assert!(
        matches!(
            foreign,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature
            ))
        ),
        "another fleet's CA does not accept it: {foreign:?}"
    );
}

#[test]
fn a_revoked_vehicle_is_rejected_and_the_others_are_not() {
    let fleet = fleet(&[]);
    let dir = fleet.path();
    let authority = Authority::open(dir).expect("open");
    let a = authority.issue(&vin(VIN_A)).expect("issue A");
    let b = authority.issue(&vin(VIN_B)).expect("issue B");
    let serial_a = serial_of(&a.cert);

    let crl = authority.revoke(&vin(VIN_A)).expect("revoke A");
    assert_eq!(crl, dir.join(CRL));
    let checked = verifier(dir, true);
    assert!(
        matches!(
            verify(checked.as_ref(), &a),
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        ),
        "A is revoked"
    );
    verify(checked.as_ref(), &b).expect("B still passes");
    assert_eq!(revoked_serials(dir), vec![serial_a.clone()]);

    // Revoking A again adds nothing; revoking B keeps A.
    telegate_pki::revoke(dir, &vin(VIN_A)).expect("revoke A again");
    telegate_pki::revoke(dir, &vin(VIN_B)).expect("revoke B");
    assert_eq!(revoked_serials(dir), vec![serial_a, serial_of(&b.cert)]);
    let checked = verifier(dir, true);
    assert!(verify(checked.as_ref(), &b).is_err(), "B is revoked too");
    let crls = load_crls(&dir.join(CRL)).expect("crl.pem");
    let (_, list) = parse_x509_crl(&crls[0]).expect("a CRL");
    assert_eq!(
        list.crl_number().expect("numbered").to_bytes_be(),
        vec![4],
        "one number per list: init's empty one, then one per revocation"
    );
    assert!(list.next_update().is_some());

    // A renewal is a new certificate with a new serial, which the list does not name.
    let renewed = authority.issue(&vin(VIN_A)).expect("renew A");
    assert_eq!(renewed, a);
    verify(verifier(dir, true).as_ref(), &renewed).expect("the renewed A passes");
}

#[test]
fn refusals_name_the_next_step() {
    let empty = tempfile::tempdir().expect("tempdir");
    let opened = Authority::open(empty.path());
    assert!(
        matches!(opened, Err(PkiError::NotInitialised(_))),
        "{opened:?}"
    );
    assert!(
        opened
            .map(drop)
            .expect_err("refused")
            .to_string()
            .contains("pki init")
    );

    let fleet = fleet(&[]);
    let revoked = telegate_pki::revoke(fleet.path(), &vin(VIN_A));
    assert!(
        matches!(revoked, Err(PkiError::NotIssued(_))),
        "{revoked:?}"
    );

    let bad = "WP0ZZZ99ZTS39212I";
    let refused = Vin::parse(bad)
        .map_err(PkiError::from)
        .expect_err("an I is no VIN");
    assert!(matches!(refused, PkiError::Vin(_)));
    assert!(
        !refused.to_string().contains(bad),
        "the input is not echoed"
    );

    let host = telegate_pki::init(empty.path(), &["not a host".to_owned()]);
    assert!(matches!(host, Err(PkiError::Host(_))), "{host:?}");
    assert!(!empty.path().join(CA_KEY).exists(), "nothing written");
}

#[test]
fn concurrent_ensure_issued_ends_with_one_consistent_identity() {
    let fleet = fleet(&[]);
    let dir = fleet.path();
    let files: Vec<VehicleFiles> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..6)
            .map(|_| s.spawn(|| telegate_pki::ensure_issued(dir, &vin(VIN_A))))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("no panic").expect("ensure_issued"))
            .collect()
    });
    assert!(files.windows(2).all(|w| w[0] == w[1]));
    let serial = serial_of(&files[0].cert);
    // rustls refuses a certificate with another certificate's key.
    telegate_pki::client_config(dir, &vin(VIN_A)).expect("certificate and key belong together");
    assert_eq!(serial_of(&files[0].cert), serial, "issued once, not again");
    let names: Vec<_> = fs::read_dir(dir.join("vehicles"))
        .expect("vehicles/")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 3, "no temporary files left: {names:?}");
    let serials = fs::read_to_string(&files[0].serials).expect("serials");
    assert_eq!(
        serials.lines().count(),
        1,
        "one certificate issued: {serials}"
    );
}

/// A gateway-side configuration as the gateway would build it from the fleet directory.
fn server_config(dir: &Path, with_crl: bool) -> Arc<ServerConfig> {
    let config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_client_cert_verifier(verifier(dir, with_crl))
        .with_single_cert(
            load_certs(&dir.join(SERVER_CERT)).expect("server.crt"),
            load_key(&dir.join(SERVER_KEY)).expect("server.key"),
        )
        .expect("server identity");
    Arc::new(config)
}

/// Pumps TLS records between the two ends, in memory, until both finish the handshake or
/// one fails.
fn handshake(client: &mut Connection, server: &mut Connection) -> Result<(), rustls::Error> {
    fn pass(from: &mut Connection, to: &mut Connection) -> Result<(), rustls::Error> {
        let mut bytes = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut bytes).expect("write to memory");
        }
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            to.read_tls(&mut rest).expect("read from memory");
            to.process_new_packets()?;
        }
        Ok(())
    }
    for _ in 0..10 {
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
        pass(client, server)?;
        pass(server, client)?;
    }
    panic!("the handshake did not finish in ten round trips");
}

fn connect(dir: &Path, vin_s: &str, with_crl: bool) -> Result<Connection, rustls::Error> {
    let config = telegate_pki::client_config(dir, &vin(vin_s)).expect("client config");
    let name = ServerName::try_from("localhost").expect("a name");
    let mut client = Connection::from(ClientConnection::new(config, name).expect("client"));
    let mut server =
        Connection::from(ServerConnection::new(server_config(dir, with_crl)).expect("server"));
    handshake(&mut client, &mut server)?;
    Ok(server)
}

#[test]
fn a_vehicle_completes_mutual_tls_with_the_gateway_until_revoked() {
    let fleet = fleet(&[]);
    let dir = fleet.path();
    // client_config issues the certificate itself.
    let server = connect(dir, VIN_A, false).expect("the handshake succeeds");
    let peer = server
        .peer_certificates()
        .expect("the vehicle presented a certificate");
    assert_eq!(common_names(&parsed(&peer[0])), vec![VIN_A]);

    telegate_pki::revoke(dir, &vin(VIN_A)).expect("revoke");
    telegate_pki::ensure_issued(dir, &vin(VIN_B)).expect("issue B");
    let refused = connect(dir, VIN_A, true).map(drop);
    assert!(
        matches!(
            refused,
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        ),
        "{refused:?}"
    );
    connect(dir, VIN_B, true).expect("B still connects");
}
