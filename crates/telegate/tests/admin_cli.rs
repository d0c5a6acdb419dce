//! `telegate admin`, the command line over the admin API, against a gateway on the real
//! Kafka broker: what a person types, the exit status and what it prints.

use std::path::Path;
use std::process::{Command, Output};
use telegate_frame::Vin;
use telegate_gateway::{Gateway, PackSource};
use telegate_pki::{CA_CERT, SERVER_CERT, SERVER_KEY, VehicleFiles};
use telegate_tests::{free_addr, gateway_config, unique_vin};

const TOKEN: &str = "test-admin-token-0123456789";

/// The admin settings a test's environment might hold; each run states its own.
const ADMIN_ENV: [&str; 7] = [
    "TELEGATE_ADMIN_ENDPOINT",
    "TELEGATE_ADMIN_CA",
    "TELEGATE_ADMIN_CERT",
    "TELEGATE_ADMIN_KEY",
    "TELEGATE_ADMIN_TLS_CERT",
    "TELEGATE_ADMIN_TLS_KEY",
    "TELEGATE_ADMIN_CLIENT_CA",
];

fn telegate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_telegate"));
    for var in ADMIN_ENV {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .output()
        .expect("telegate runs")
}

/// A CA of its own (`telegate pki init`) and one client certificate it issued.
fn pki_with_client(dir: &Path) -> VehicleFiles {
    telegate_pki::init(dir, &[]).expect("pki init");
    let id = Vin::parse(&unique_vin()).expect("a VIN");
    telegate_pki::issue(dir, &id).expect("client certificate")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_drives_the_api() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut config = gateway_config(
        "ev-charging",
        &format!("c{:08x}.", rand::random::<u32>()),
        dir.path(),
    );
    config.admin.listen = Some(free_addr());
    config.admin.token = Some(TOKEN.to_owned());
    let gw = Gateway::start(&config, PackSource::Config)
        .await
        .expect("gateway starts");
    let vin_s = unique_vin();
    let endpoint = format!("http://{}", gw.admin_addr().expect("admin API"));
    let cli = |token: &str, args: &[&str]| {
        let mut all = vec![
            "admin",
            "--endpoint",
            &endpoint,
            "--channel",
            "call-centre",
            "--text-version",
            "v7",
        ];
        all.extend(args);
        telegate(&all, &[("TELEGATE_ADMIN_TOKEN", token)])
    };
    let grant = tokio::task::block_in_place(|| cli(TOKEN, &["grant", &vin_s, "charging-location"]));
    assert!(
        grant.status.success(),
        "{}",
        String::from_utf8_lossy(&grant.stderr)
    );
    let state: serde_json::Value = serde_json::from_slice(&grant.stdout).expect("state JSON");
    assert!(
        state["consents"]["charging-location"][0][1] == true,
        "{state}"
    );
    let refused =
        tokio::task::block_in_place(|| cli("not-the-token-not-the-token", &["state", &vin_s]));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"));
    let unknown = tokio::task::block_in_place(|| cli(TOKEN, &["grant", &vin_s, "no-such-purpose"]));
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(unknown.status.code(), Some(1), "{said}");
    assert!(
        said.contains("NotFound") && said.contains("no purpose"),
        "{said}"
    );
    // A VIN that is not one: the caller's mistake, said as such and nothing more.
    let bad = tokio::task::block_in_place(|| cli(TOKEN, &["state", "WP0ZZZ99ZTS39212"]));
    let said = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{said}");
    assert!(
        said.contains("InvalidArgument: vin: a VIN has 17 characters"),
        "{said}"
    );
    let export = tokio::task::block_in_place(|| cli(TOKEN, &["export", &vin_s]));
    let v: serde_json::Value = serde_json::from_slice(&export.stdout).expect("export JSON");
    let entry = &v["ledger"][0];
    assert_eq!(
        (entry["channel"].as_str(), entry["text_version"].as_str()),
        (Some("call-centre"), Some("v7"))
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_speaks_mutual_tls_and_is_refused_without_its_certificate() {
    let dir = tempfile::tempdir().expect("tmp");
    let (pki, other) = (dir.path().join("admin-pki"), dir.path().join("other-pki"));
    let operator = pki_with_client(&pki);
    let stranger = pki_with_client(&other);
    let mut config = gateway_config(
        "ev-charging",
        &format!("c{:08x}.", rand::random::<u32>()),
        dir.path(),
    );
    config.admin.listen = Some(free_addr());
    config.admin.token = Some(TOKEN.to_owned());
    config.admin.tls_cert = Some(pki.join(SERVER_CERT));
    config.admin.tls_key = Some(pki.join(SERVER_KEY));
    config.admin.client_ca = Some(pki.join(CA_CERT));
    let gw = Gateway::start(&config, PackSource::Config)
        .await
        .expect("gateway starts");
    let addr = gw.admin_addr().expect("admin API");
    let (http, https) = (format!("http://{addr}"), format!("https://{addr}"));
    let vin = unique_vin();
    let (ca, other_ca) = (pki.join(CA_CERT), other.join(CA_CERT));
    let admin = |endpoint: &str, tls: &[&str], token: &str, call: &[&str]| {
        let mut args = vec!["admin", "--endpoint", endpoint];
        args.extend(tls);
        args.extend(call);
        tokio::task::block_in_place(|| telegate(&args, &[("TELEGATE_ADMIN_TOKEN", token)]))
    };
    let mutual = [
        "--admin-ca",
        path(&ca),
        "--admin-cert",
        path(&operator.cert),
        "--admin-key",
        path(&operator.key),
    ];
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let grant = admin(
        &https,
        &mutual,
        TOKEN,
        &["grant", &vin, "charging-location"],
    );
    assert!(grant.status.success(), "{}", stderr(&grant));
    let state: serde_json::Value = serde_json::from_slice(&grant.stdout).expect("state JSON");
    assert!(
        state["consents"]["charging-location"][0][1] == true,
        "{state}"
    );
    // The same through the environment, and --admin-ca turns the http:// endpoint into https://.
    let by_env = tokio::task::block_in_place(|| {
        telegate(
            &["admin", "--endpoint", &http, "state", &vin],
            &[
                ("TELEGATE_ADMIN_TOKEN", TOKEN),
                ("TELEGATE_ADMIN_CA", path(&ca)),
                ("TELEGATE_ADMIN_CERT", path(&operator.cert)),
                ("TELEGATE_ADMIN_KEY", path(&operator.key)),
            ],
        )
    });
    assert!(by_env.status.success(), "{}", stderr(&by_env));

    let refusals = [
        (
            "no client certificate",
            admin(&https, &["--admin-ca", path(&ca)], TOKEN, &["state", &vin]),
            "requires a client certificate",
        ),
        (
            "plain HTTP/2 against the TLS listener",
            admin(&http, &[], TOKEN, &["state", &vin]),
            "pass --admin-ca",
        ),
        (
            "a client certificate of another CA",
            admin(
                &https,
                &[
                    "--admin-ca",
                    path(&ca),
                    "--admin-cert",
                    path(&stranger.cert),
                    "--admin-key",
                    path(&stranger.key),
                ],
                TOKEN,
                &["state", &vin],
            ),
            "did not accept the client certificate",
        ),
        (
            "a server certificate --admin-ca did not issue",
            admin(
                &https,
                &["--admin-ca", path(&other_ca)],
                TOKEN,
                &["state", &vin],
            ),
            "certificate not trusted",
        ),
        (
            "the certificate without the token",
            admin(
                &https,
                &mutual,
                "not-the-token-not-the-token",
                &["state", &vin],
            ),
            "Unauthenticated",
        ),
    ];
    for (case, out, says) in &refusals {
        let err = stderr(out);
        assert!(!out.status.success(), "{case}: succeeded");
        assert!(err.contains(says), "{case}: {err:?} does not say {says:?}");
        assert!(
            !err.contains(TOKEN) && !err.contains("PRIVATE KEY") && !err.contains(&vin),
            "{case}: no token, key or VIN in {err:?}"
        );
    }
    gw.shutdown().await;
}

#[test]
fn serve_checks_the_admin_tls_options_before_starting() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = dir.path().join("pki");
    telegate_pki::init(&pki, &[]).expect("pki init");
    let pack = concat!(env!("CARGO_MANIFEST_DIR"), "/../../packs/reference.toml");
    let missing_key = dir.path().join("missing.key");
    let out = telegate(
        &[
            "serve",
            "--policy",
            pack,
            "--mqtt-allow-anonymous",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-tls-cert",
            path(&pki.join(SERVER_CERT)),
            "--admin-client-ca",
            path(&pki.join(SERVER_CERT)),
        ],
        &[
            ("TELEGATE_ADMIN_TOKEN", TOKEN),
            ("TELEGATE_ADMIN_TLS_KEY", path(&missing_key)),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("admin.tls_key: cannot read"),
        "the variable's key file is read: {err}"
    );
    assert!(
        err.contains("admin.client_ca") && err.contains("not a CA certificate"),
        "the flag's CA file is checked: {err}"
    );
}
