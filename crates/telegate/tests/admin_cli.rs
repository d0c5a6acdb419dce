//! `telegate admin`, the command line over the admin API, against a gateway on the real
//! Kafka broker: what a person types, the exit status and what it prints.

use telegate_gateway::{Gateway, PackSource};
use telegate_tests::{free_addr, gateway_config, unique_vin};

const TOKEN: &str = "test-admin-token-0123456789";

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
        std::process::Command::new(env!("CARGO_BIN_EXE_telegate"))
            .args([
                "admin",
                "--endpoint",
                &endpoint,
                "--channel",
                "call-centre",
                "--text-version",
                "v7",
            ])
            .args(args)
            .env("TELEGATE_ADMIN_TOKEN", token)
            .output()
            .expect("telegate admin runs")
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
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no purpose"));
    let export = tokio::task::block_in_place(|| cli(TOKEN, &["export", &vin_s]));
    let v: serde_json::Value = serde_json::from_slice(&export.stdout).expect("export JSON");
    let entry = &v["ledger"][0];
    assert_eq!(
        (entry["channel"].as_str(), entry["text_version"].as_str()),
        (Some("call-centre"), Some("v7"))
    );
    gw.shutdown().await;
}
