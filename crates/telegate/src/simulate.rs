//! `telegate simulate`: a simulated fleet publishing to any MQTT broker, or over mutual TLS
//! to a gateway of the fleet's PKI. Each vehicle keeps its frames until they are
//! acknowledged and publishes them again after a reconnect or a failure reason.

use anyhow::Context;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use telegate_sim::{Fleet, FleetConfig, FormatMix, MqttVersion};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// MQTT broker host:port (with --pki, the gateway's TLS listener, e.g. 127.0.0.1:8883;
    /// the host must be a name in the gateway's certificate).
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// A fleet directory (`telegate pki init`): every vehicle connects over TLS with its own
    /// certificate, issued into DIR the first time the vehicle needs it.
    #[arg(long, value_name = "DIR")]
    pki: Option<PathBuf>,
    /// Simulated vehicles, one connection each.
    #[arg(long, default_value_t = 20)]
    vehicles: usize,
    /// Stop after this long (e.g. 5m); runs until Ctrl-C otherwise.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// protobuf, json or mixed.
    #[arg(long, default_value = "mixed")]
    format: String,
    /// Share of frames followed by a deliberately broken one.
    #[arg(long, value_parser = crate::share, default_value_t = 0.0)]
    bad_frame_ratio: f64,
    /// Seed of the fleet's randomness: the same seed drives the same days.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Speak MQTT 5 (the gateway's --mqtt5-listen, or its TLS listener): a frame Kafka did
    /// not take comes back as a PUBACK failure reason instead of a disconnect.
    #[arg(long)]
    mqtt5: bool,
    /// Frames each vehicle keeps until acknowledged; a vehicle with a full outbox pauses.
    #[arg(long, default_value_t = 1_000)]
    outbox: usize,
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
    let fleet = Fleet::try_start(FleetConfig {
        host: host.to_owned(),
        port: port.parse().context("--mqtt port")?,
        vehicles: a.vehicles,
        format,
        bad_frame_ratio: a.bad_frame_ratio,
        seed: a.seed,
        pki: a.pki,
        version: if a.mqtt5 {
            MqttVersion::V5
        } else {
            MqttVersion::V311
        },
        outbox: a.outbox,
        ..FleetConfig::default()
    })?;
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
    let d = &stats.delivery;
    println!(
        "acknowledged {}, published again {}, failure reasons {}, still unacknowledged {}, paused with a full outbox {} times",
        d.acknowledged.load(Relaxed),
        d.resent.load(Relaxed),
        d.failure_codes.load(Relaxed),
        d.outstanding.load(Relaxed),
        d.held_back.load(Relaxed),
    );
    let offline = stats.identity_errors.load(Relaxed);
    if offline > 0 {
        println!("{offline} vehicles had no TLS identity and stayed offline (see the log)");
    }
    Ok(())
}
