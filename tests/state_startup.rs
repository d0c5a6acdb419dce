//! How long a gateway reads `telegate.consent-state` before it is ready, for a fleet of a
//! given size: a measurement for docs/performance.md, not a check of the suite (it writes a
//! record per vehicle to Apache Kafka first, minutes for a million), so it is ignored unless
//! asked for:
//!
//! ```sh
//! TELEGATE_TEST_KAFKA=127.0.0.1:PORT TELEGATE_STARTUP_VEHICLES=100000 \
//!   cargo test --release -p telegate-tests --test state_startup -- --ignored --nocapture
//! ```
//!
//! Each vehicle gets what a real one has after its first frames: key material, a privacy
//! setting and a standing consent, written through the gateway's own store. Then a new store
//! reads the topic to its end, as a starting gateway does, and the time and its resident
//! memory are printed.

use futures::StreamExt;
use std::time::{Duration, Instant};
use telegate_frame::Vin;
use telegate_frame::pb;
use telegate_gateway::state::StateStore;
use telegate_gateway::{Gateway, PackSource};
use telegate_kafka::KafkaConfig;
use telegate_policy::Keyring;
use telegate_tests::*;

fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement that writes a record per vehicle to Kafka first; see the file's doc"]
async fn reading_the_consent_state_before_ready() {
    let vehicles: usize = std::env::var("TELEGATE_STARTUP_VEHICLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tmp");
    let ns = format!("u{:08x}.", rand::random::<u32>());
    let mut config = gateway_config("porsche-connect", &ns, dir.path());
    config.kafka.partitions = 6; // as a deployment's topics have by default
    let key_file = config.key_file.clone().expect("key file");
    let gw = Gateway::start(&config, PackSource::Config)
        .await
        .expect("gateway starts");
    let started = Instant::now();
    let store = gw.state();
    let location_off = &pb::PrivacySettings {
        location_services: false,
        non_location_services: true,
        ..Default::default()
    };
    futures::stream::iter(0..vehicles)
        .for_each_concurrent(2_000, |i| async move {
            let vin = Vin::parse(&unique_vin()).expect("VIN");
            store
                .update(vin, |r| {
                    r.record_settings(now_ms() - 60_000, location_off);
                    r.consents
                        .entry("component-status".into())
                        .or_default()
                        .set(now_ms() - 60_000, true);
                })
                .await
                .unwrap_or_else(|e| panic!("vehicle {i}: {e:#}"));
        })
        .await;
    let written = started.elapsed();
    gw.shutdown().await;

    let keys =
        Keyring::from_toml(&std::fs::read_to_string(&key_file).expect("key file")).expect("keys");
    let cfg = KafkaConfig {
        bootstrap: kafka(),
        ..Default::default()
    };
    let rss_before = rss_mib();
    let reading = Instant::now();
    let again = StateStore::replicated(
        &cfg,
        &format!("{ns}telegate.consent-state"),
        Duration::from_secs(1_800),
        keys.state().clone(),
    )
    .await
    .expect("read to its end");
    let read = reading.elapsed();
    assert_eq!(again.len(), vehicles, "every vehicle's record read");
    println!(
        "{vehicles} vehicles: written in {written:.1?}; read to its end in {read:.2?} \
         ({:.0} records/s); resident memory {rss_before} MiB before, {} MiB after",
        vehicles as f64 / read.as_secs_f64(),
        rss_mib()
    );
    again.close(Duration::from_secs(10)).await;
}
