//! `telegate simulate`: a simulated fleet publishing to any MQTT broker.

use anyhow::Context;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use telegate_sim::{Fleet, FleetConfig, FormatMix};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// MQTT broker host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    #[arg(long, default_value_t = 20)]
    vehicles: usize,
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// protobuf, json or mixed.
    #[arg(long, default_value = "mixed")]
    format: String,
    #[arg(long, default_value_t = 0.0)]
    bad_frame_ratio: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    crate::process::init_tracing();
    let (host, port) = a.mqtt.rsplit_once(':').context("--mqtt is HOST:PORT")?;
    let format = match a.format.as_str() {
        "protobuf" => FormatMix::Protobuf,
        "json" => FormatMix::Json,
        "mixed" => FormatMix::Mixed,
        other => anyhow::bail!("--format {other:?}: use protobuf, json or mixed"),
    };
    let fleet = Fleet::start(FleetConfig {
        host: host.to_owned(),
        port: port.parse().context("--mqtt port")?,
        vehicles: a.vehicles,
        format,
        bad_frame_ratio: a.bad_frame_ratio,
        seed: a.seed,
        ..FleetConfig::default()
    });
    let stats = fleet.stats();
    match a.duration {
        Some(d) => tokio::time::sleep(d).await,
        None => crate::process::shutdown_signal().await,
    }
    let truth = fleet.stop().await;
    let trips: u32 = truth.iter().map(|(_, t)| t.trips).sum();
    println!(
        "{} vehicles published {} frames (+{} broken), {} trips",
        truth.len(),
        stats.published.load(Relaxed),
        stats.broken_published.load(Relaxed),
        trips
    );
    Ok(())
}
