//! `telegate pki` as an operator types it: the files it writes, what it prints, what it
//! refuses, and whether OpenSSL (when installed) agrees the vehicle certificate chains to
//! the fleet CA.

use std::path::Path;
use std::process::{Command, Output};

const VIN: &str = "WP0ZZZ99ZTS392124";

fn pki(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telegate"))
        .arg("pki")
        .args(args)
        .output()
        .expect("telegate pki runs")
}

fn succeeds(args: &[&str]) -> Vec<String> {
    let out = pki(args);
    assert!(
        out.status.success(),
        "telegate pki {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn printed(dir: &Path, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|n| dir.join(n).display().to_string())
        .collect()
}

#[test]
fn init_issue_and_revoke_write_the_fleet_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fleet");
    let d = dir.to_str().expect("a UTF-8 path");

    let init = succeeds(&["init", d, "--host", "gateway.example", "--host", "10.0.0.7"]);
    assert_eq!(
        init,
        printed(
            &dir,
            &["ca.crt", "ca.key", "server.crt", "server.key", "crl.pem"]
        )
    );
    for line in &init {
        assert!(Path::new(line).is_file(), "{line} exists");
    }

    let again = pki(&["init", d]);
    assert!(!again.status.success(), "a second init is refused");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let crt = format!("vehicles/{VIN}.crt");
    let key = format!("vehicles/{VIN}.key");
    let serials = format!("vehicles/{VIN}.serials");
    let issue = succeeds(&["issue", d, VIN]);
    assert_eq!(issue, printed(&dir, &[&crt, &key, &serials]));
    for line in &issue {
        assert!(Path::new(line).is_file(), "{line} exists");
    }

    let bad = "WP0ZZZ99ZTS39212I";
    let refused = pki(&["issue", d, bad]);
    assert!(!refused.status.success(), "an invalid VIN is refused");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("VIN"), "{stderr}");
    assert!(!stderr.contains(bad), "the input is not echoed: {stderr}");
    let vehicles = std::fs::read_dir(dir.join("vehicles"))
        .expect("vehicles/")
        .count();
    assert_eq!(vehicles, 3, "nothing written for the invalid VIN");

    openssl_verify(&dir, &[&crt], true);
    // The empty list init wrote revokes nothing.
    openssl_verify(&dir, &["-crl_check", "-CRLfile", "crl.pem", &crt], true);

    let revoke = succeeds(&["revoke", d, VIN]);
    assert_eq!(revoke, printed(&dir, &["crl.pem"]));
    openssl_verify(&dir, &["-crl_check", "-CRLfile", "crl.pem", &crt], false);
}

/// `openssl verify -CAfile ca.crt ARGS…` in `dir` passes (or, with `pass` false, fails):
/// OpenSSL's judgement, independent of rustls. Skipped, with a note, where OpenSSL is not
/// installed.
fn openssl_verify(dir: &Path, args: &[&str], pass: bool) {
    let verify = Command::new("openssl")
        .current_dir(dir)
        .args(["verify", "-CAfile", "ca.crt"])
        .args(args)
        .output();
    match verify {
        Ok(out) => assert_eq!(
            out.status.success(),
            pass,
            "openssl verify {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("note: openssl is not on PATH; skipping `openssl verify {args:?}`");
        }
        Err(e) => panic!("openssl did not run: {e}"),
    }
}
