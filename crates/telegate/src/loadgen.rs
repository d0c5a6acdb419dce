//! `telegate loadgen`: the same load against telegate, bare rumqttd, Mosquitto and Kafka
//! directly, one table; telegate over mutual TLS with `--pki` or `--tls`.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use telegate_frame::PayloadFormat;
use telegate_loadgen::targets::LoadArgs;
use telegate_loadgen::tls::Pki;
use telegate_loadgen::{LoadConfig, Mix};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// telegate, rumqttd, mosquitto, kafka, or compare (all four, one table).
    #[arg(long, default_value = "telegate")]
    target: String,
    /// A Kafka bootstrap list, or `mock` for a fresh librdkafka mock cluster per target.
    #[arg(
        long,
        env = "TELEGATE_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    kafka_bootstrap: String,
    #[arg(long, default_value_t = 100)]
    vehicles: usize,
    /// Frames per second per vehicle.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Frame mix as weights: status,diagnostics,location.
    #[arg(long, default_value = "2,1,7")]
    mix: String,
    /// protobuf or json.
    #[arg(long, default_value = "protobuf")]
    format: String,
    #[arg(long, default_value_t = 1)]
    qos: u8,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    ramp_up: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    warm_up: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    duration: Duration,
    #[arg(long)]
    report_json: Option<PathBuf>,
    #[arg(long)]
    report_html: Option<PathBuf>,
    /// Load an already running gateway (it must use packs/loadgen.toml): its MQTT address.
    #[arg(long, requires = "observe_topic")]
    mqtt: Option<SocketAddr>,
    /// With --mqtt: the gateway's pid, for CPU and memory.
    #[arg(long)]
    pid: Option<i32>,
    /// With --mqtt: the topic its load pack writes (telegate.loadgen behind its namespace).
    #[arg(long)]
    observe_topic: Option<String>,
    /// A librdkafka producer property for telegate's sink and the direct producer, over
    /// their defaults (e.g. linger.ms=50, compression.type=gzip, batch.size=1000000).
    /// Repeatable.
    #[arg(long = "producer", value_name = "KEY=VALUE", value_parser = key_value)]
    producer: Vec<(String, String)>,
    /// The Kafka broker's pid: its CPU per frame and memory go beside each target's.
    #[arg(long)]
    broker_pid: Option<i32>,
    /// Vehicles connect over mutual TLS, each with its own certificate from this fleet
    /// directory (`telegate pki init`; missing vehicle certificates are issued into it before
    /// the run). The telegate target then runs its TLS listener only; with --mqtt, the
    /// running gateway's TLS listener. Only for --target telegate.
    #[arg(long, value_name = "DIR")]
    pki: Option<PathBuf>,
    /// As --pki, with a fleet directory made for this run and removed after it.
    #[arg(long, conflicts_with = "pki")]
    tls: bool,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let mix: Vec<u32> = a
        .mix
        .split(',')
        .map(|w| w.trim().parse())
        .collect::<Result<_, _>>()
        .context("--mix is three weights: status,diagnostics,location")?;
    let [status, diagnostics, location] = mix[..] else {
        anyhow::bail!("--mix is three weights: status,diagnostics,location")
    };
    let format = match a.format.as_str() {
        "protobuf" => PayloadFormat::Protobuf,
        "json" => PayloadFormat::Json,
        other => anyhow::bail!("--format {other:?}: protobuf or json"),
    };
    crate::process::raise_fd_limit(1 << 20);
    let reports = telegate_loadgen::targets::run(LoadArgs {
        target: a.target,
        kafka_bootstrap: a.kafka_bootstrap,
        load: LoadConfig {
            vehicles: a.vehicles,
            rate: a.rate,
            mix: Mix {
                status,
                diagnostics,
                location,
            },
            format,
            qos: a.qos,
            ramp_up: a.ramp_up,
            warm_up: a.warm_up,
            duration: a.duration,
        },
        report_json: a.report_json,
        report_html: a.report_html,
        external: a
            .mqtt
            .map(|m| (m, a.pid, a.observe_topic.unwrap_or_default())),
        quiet: false,
        producer: a.producer,
        exe: std::env::current_exe().context("locating the telegate binary")?,
        broker_pid: a.broker_pid,
        pki: match (a.pki, a.tls) {
            (Some(dir), _) => Some(Pki::Dir(dir)),
            (None, true) => Some(Pki::Temporary),
            (None, false) => None,
        },
    })
    .await?;
    crate::process::print_all(&telegate_loadgen::table(&reports));
    Ok(())
}
