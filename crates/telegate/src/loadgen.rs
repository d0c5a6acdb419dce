//! `telegate loadgen`: the same load against telegate, bare rumqttd, Mosquitto and Kafka
//! directly, one table; telegate over mutual TLS with `--pki` or `--tls`. Each row says what
//! the target and what the generator itself cost per frame, so that a run shows which of the
//! two set its ceiling.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use telegate_frame::PayloadFormat;
use telegate_loadgen::targets::LoadArgs;
use telegate_loadgen::tls::Pki;
use telegate_loadgen::{LoadConfig, Mix};

/// Printed after the options: what a row of the table means and what the vehicles are.
const AFTER_HELP: &str = "\
Each row: frames published and delivered per second over the measured window (after the
warm-up), lost and duplicated frames matched by (VIN, seq) on the far side, publish-to-delivery
and publish-to-PUBACK latency, the target's CPU per frame delivered and memory, and the load
generator's own CPU over the same window (gen CPU µs/f, gen cores): when the generator's cores
approach the machine's, it, not the target, sets the ceiling.

Over MQTT every vehicle is a connection of its own (MQTT 3.1.1, clean session, keep-alive 60 s)
driven by the generator's lean publisher: a few tasks serve all vehicles, and each vehicle's
packets due together go out in one write. A vehicle keeps every QoS 1 frame until its PUBACK
(at most 100 on the wire, 1,000 kept), publishes it again with DUP after a reconnect, skips its
ticks while its outbox is full (counted), and at the end waits up to 30 s past its last PUBACK
for the rest. Bare brokers are observed by one subscriber that keeps its session across
connections; telegate and Kafka by a Kafka consumer.";

#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
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
    /// Vehicles, one connection each.
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
    /// 1: every frame waits for its PUBACK; 0: at most once, nothing acknowledged.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// The vehicles start one after another over this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    ramp_up: Duration,
    /// From the start, load before the measured window (not counted).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    warm_up: Duration,
    /// The measured window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    duration: Duration,
    /// Writes every report as JSON: the table's figures (generator_cpu_s and
    /// generator_cpu_us_per_frame among them) and a series per second.
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// Writes a self-contained HTML page: the table, and throughput, latency and frames kept
    /// unacknowledged over time for each target.
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
