//! The `telegate` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use telegate::demo::{self, DemoArgs};
use telegate::{Gateway, Overrides, PackSource, Settings, policy_cli};
use telegate_policy::StateFile;
use telegate_sim::{Fleet, FleetConfig, FormatMix};

/// jemalloc keeps its bookkeeping apart from the memory it hands out, so buffers reserved but
/// never written stay unbacked. rumqttd reserves at least 177 KB of queues and socket buffers per
/// connection; with glibc's allocator an idle connection cost 44 KB resident, with jemalloc
/// 25 KB (README, "Connection scale").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "telegate",
    version,
    about = "Consent-aware MQTT-to-Kafka gateway for connected vehicles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Run everything on this machine with zero setup: embedded broker, in-process Kafka
    /// stand-in, simulated fleet, live view.
    Demo(DemoCli),
    /// Run a simulated fleet against an MQTT broker.
    Simulate(SimulateArgs),
    /// Load-test a gateway, or compare telegate with bare rumqttd, Mosquitto and Kafka.
    Loadgen(LoadgenCli),
    /// Idle vehicle connections, to measure memory per connection.
    Connections(ConnectionsCli),
    /// The bare embedded MQTT broker, no pipeline: the MQTT ceiling for comparisons.
    #[command(hide = true)]
    Broker {
        #[arg(long)]
        mqtt_listen: SocketAddr,
    },
    /// librdkafka's in-memory mock Kafka cluster in a process of its own, for load studies
    /// where the Kafka-protocol broker must not be the bound. Prints its bootstrap address;
    /// topics are created on first use. Nothing is durable.
    #[command(hide = true)]
    KafkaMock,
    /// Run a reference consumer: smart-service, breakdown-call, trip-log or product-insights.
    Consume(ConsumeArgs),
    /// The admin API: consents, objections, activations, erasure, export.
    Admin(telegate::admin_cli::AdminArgs),
    /// Policy pack tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file; flags and TELEGATE_* variables override it.
    #[arg(long, env = "TELEGATE_CONFIG")]
    config: Option<PathBuf>,
    /// MQTT 3.1.1 listener [default: 0.0.0.0:1883]
    #[arg(long, env = "TELEGATE_MQTT_LISTEN")]
    mqtt_listen: Option<SocketAddr>,
    /// MQTT 5 listener [default: 0.0.0.0:1884]
    #[arg(long, env = "TELEGATE_MQTT5_LISTEN")]
    mqtt5_listen: Option<SocketAddr>,
    /// Kafka bootstrap servers [default: 127.0.0.1:9092]
    #[arg(long, env = "TELEGATE_KAFKA_BOOTSTRAP")]
    kafka_bootstrap: Option<String>,
    /// Policy pack (TOML).
    #[arg(long, env = "TELEGATE_POLICY")]
    policy: Option<PathBuf>,
    /// /metrics, /healthz, /readyz [default: 0.0.0.0:9898]
    #[arg(long, env = "TELEGATE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Pseudonymisation key file; without one, TELEGATE_KEYS or an ephemeral key.
    #[arg(long, env = "TELEGATE_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Consents, activations and settings to start from (JSON).
    #[arg(long, env = "TELEGATE_STATE_FILE")]
    state_file: Option<PathBuf>,
    /// Admin API (gRPC); needs a token (admin.token, admin.token_file or TELEGATE_ADMIN_TOKEN).
    #[arg(long, env = "TELEGATE_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
}

#[derive(clap::Args)]
struct DemoCli {
    #[arg(long, default_value_t = 20)]
    vehicles: usize,
    /// Stop after this long (e.g. 30s); runs until Ctrl-C otherwise.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Use a real Kafka cluster instead of the in-process stand-in.
    #[arg(long)]
    kafka_bootstrap: Option<String>,
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9898")]
    metrics_listen: SocketAddr,
    /// Policy pack; the built-in reference pack otherwise.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Share of frames followed by a deliberately broken one.
    #[arg(long, default_value_t = 0.02)]
    bad_frame_ratio: f64,
    /// product-insights: minimum vehicles per released aggregate (small for a small fleet).
    #[arg(long, default_value_t = 3)]
    k: u64,
}

#[derive(clap::Args)]
struct LoadgenCli {
    /// telegate, rumqttd, mosquitto, kafka, or compare (all four, one table).
    #[arg(long, default_value = "telegate")]
    target: String,
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
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[derive(clap::Args)]
struct ConnectionsCli {
    /// MQTT address of the gateway to connect to.
    #[arg(long)]
    mqtt: SocketAddr,
    /// Its pid, to read its resident memory.
    #[arg(long)]
    pid: i32,
    #[arg(long, default_value_t = 50_000)]
    connections: usize,
    /// Source addresses to spread connections over (each gives about 28,000 ports).
    #[arg(long, default_value = "127.0.0.2,127.0.0.3,127.0.0.4")]
    source_ips: String,
}

#[derive(clap::Args)]
struct ConsumeArgs {
    /// smart-service, breakdown-call, trip-log or product-insights.
    service: String,
    #[arg(
        long,
        env = "TELEGATE_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    kafka_bootstrap: String,
    /// The gateway's kafka.topic_namespace, if it has one.
    #[arg(long, default_value = "")]
    namespace: String,
    /// Consumer group [default: telegate-{service}].
    #[arg(long)]
    group: Option<String>,
    /// Where to write the current results (JSON, replaced every second).
    #[arg(long)]
    view_file: Option<PathBuf>,
    /// Purposes to accept (repeatable) [default: the shipped packs' purposes for the service].
    #[arg(long)]
    purpose: Vec<String>,
    /// product-insights: minimum number of vehicles in a released group.
    #[arg(long, default_value_t = 10)]
    k: u64,
}

#[derive(clap::Args)]
struct SimulateArgs {
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

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a pack and print its purposes, rules and topic retention.
    Check { pack: PathBuf },
    /// What happens to a frame, per service, and which rule decided.
    Explain {
        pack: PathBuf,
        /// A VehicleFrame in proto3-JSON, as a vehicle would publish it.
        #[arg(long)]
        frame: PathBuf,
        /// A state file (settings, consents, activations by VIN).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Judge validation as at this time (UTC ms); default: the frame's capture time.
        #[arg(long)]
        now: Option<i64>,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TELEGATE_LOG")
        // rumqttd logs client ids at info level; vehicles may use their VIN as client id.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,rumqttd=error,librdkafka=warn")
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => {
            init_tracing();
            let flags = Overrides {
                mqtt_listen: a.mqtt_listen,
                mqtt5_listen: a.mqtt5_listen,
                kafka_bootstrap: a.kafka_bootstrap,
                policy: a.policy,
                metrics_listen: a.metrics_listen,
                key_file: a.key_file,
                state_file: a.state_file,
                admin_listen: a.admin_listen,
            };
            let settings = Settings::load(a.config.as_deref(), &flags)?;
            // Each vehicle is a connection: hold as many as the system allows.
            let fds = telegate::loadgen_cli::raise_fd_limit(1 << 20);
            tracing::info!(fds, "open-file limit");
            let gateway = Gateway::start(&settings, PackSource::Settings).await?;
            shutdown_signal().await;
            tracing::info!("shutting down: draining and flushing");
            gateway.shutdown().await;
        }
        Command::Demo(a) => {
            if std::env::var_os("TELEGATE_LOG").is_some() {
                init_tracing();
            }
            let summary = demo::run(DemoArgs {
                vehicles: a.vehicles,
                duration: a.duration,
                kafka_bootstrap: a.kafka_bootstrap,
                mqtt_listen: a.mqtt_listen,
                metrics_listen: Some(a.metrics_listen),
                policy: a.policy,
                bad_frame_ratio: a.bad_frame_ratio,
                k: a.k,
            })
            .await?;
            println!(
                "\ndemo finished: {} frames published (+{} broken), {} records delivered to Kafka, {} failed, {} lost in the MQTT broker",
                summary.published,
                summary.broken_published,
                summary.delivered,
                summary.failed,
                summary.lost_in_broker
            );
        }
        Command::Simulate(a) => {
            init_tracing();
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
                None => shutdown_signal().await,
            }
            let truth = fleet.stop().await;
            let trips: u32 = truth.iter().map(|(_, t)| t.trips).sum();
            println!(
                "{} vehicles published {} frames (+{} broken), {} trips",
                truth.len(),
                stats.published.load(std::sync::atomic::Ordering::Relaxed),
                stats
                    .broken_published
                    .load(std::sync::atomic::Ordering::Relaxed),
                trips
            );
        }
        Command::Policy { command } => return policy(command),
        Command::Loadgen(a) => {
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
                "protobuf" => telegate_frame::PayloadFormat::Protobuf,
                "json" => telegate_frame::PayloadFormat::Json,
                other => anyhow::bail!("--format {other:?}: protobuf or json"),
            };
            telegate::loadgen_cli::raise_fd_limit(1 << 20);
            let reports = telegate::loadgen_cli::run(telegate::loadgen_cli::LoadArgs {
                target: a.target,
                kafka_bootstrap: a.kafka_bootstrap,
                load: telegate_loadgen::LoadConfig {
                    vehicles: a.vehicles,
                    rate: a.rate,
                    mix: telegate_loadgen::Mix {
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
            })
            .await?;
            print_all(&telegate_loadgen::table(&reports));
        }
        Command::Connections(a) => {
            let ips: Vec<std::net::IpAddr> = a
                .source_ips
                .split(',')
                .map(|s| s.trim().parse())
                .collect::<Result<_, _>>()
                .context("--source-ips")?;
            let limit =
                telegate::loadgen_cli::raise_fd_limit((a.connections as u64 + 1024).max(1 << 16));
            let r = telegate::connections::hold(a.mqtt, a.pid, a.connections, &ips, limit).await?;
            print_all(&format!("{}\n", serde_json::to_string_pretty(&r)?));
        }
        Command::Broker { mqtt_listen } => {
            init_tracing();
            telegate::loadgen_cli::raise_fd_limit(1 << 20);
            let cfg = telegate_mqtt::IngressConfig {
                v4_listen: Some(mqtt_listen),
                ..Default::default()
            };
            let (_ingress, mut rx) =
                tokio::task::spawn_blocking(move || telegate_mqtt::Ingress::start(&cfg)).await??;
            // Drain the link like the gateway does, without a pipeline behind it.
            tokio::spawn(async move { while rx.recv().await.is_some() {} });
            shutdown_signal().await;
        }
        Command::KafkaMock => {
            init_tracing();
            let mock =
                rdkafka::mocking::MockCluster::new(1).context("starting the mock cluster")?;
            print_all(&format!("{}\n", mock.bootstrap_servers()));
            shutdown_signal().await;
            drop(mock);
        }
        Command::Consume(a) => {
            init_tracing();
            consume(a).await?;
        }
        Command::Admin(a) => {
            let out = telegate::admin_cli::run(a).await?;
            print_all(&format!("{out}\n"));
        }
    }
    Ok(())
}

/// Runs one reference consumer until Ctrl-C or SIGTERM.
async fn consume(a: ConsumeArgs) -> anyhow::Result<()> {
    use telegate_consumers::{ConsumerStats, Reference, RunnerConfig};
    let Some(service) = Reference::parse(&a.service) else {
        anyhow::bail!(
            "no reference consumer {:?}: smart-service, breakdown-call, trip-log or product-insights",
            a.service
        )
    };
    let purposes = if a.purpose.is_empty() {
        service.purposes()
    } else {
        a.purpose
    };
    let cfg = RunnerConfig {
        kafka: telegate_kafka::KafkaConfig {
            bootstrap: a.kafka_bootstrap,
            ..Default::default()
        },
        group: a
            .group
            .unwrap_or_else(|| format!("telegate-{}", service.name())),
        inputs: service.inputs(&a.namespace),
        output: service.output(&a.namespace),
        view_file: a.view_file,
        tick: Duration::from_secs(1),
        output_retention: service.output_retention(),
        from_beginning: true,
    };
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let stats = std::sync::Arc::new(ConsumerStats::default());
    let runner = tokio::spawn(telegate_consumers::run(
        cfg,
        service.build(purposes, a.k, Duration::from_secs(5)),
        stop_rx,
        stats.clone(),
    ));
    shutdown_signal().await;
    let _ = stop.send(true);
    runner.await??;
    use std::sync::atomic::Ordering::Relaxed;
    println!(
        "{}: {} processed, {} refused (other purpose), {} duplicates, {} malformed, {} results",
        service.name(),
        stats.processed.load(Relaxed),
        stats.refused.load(Relaxed),
        stats.duplicates.load(Relaxed),
        stats.malformed.load(Relaxed),
        stats.outputs.load(Relaxed)
    );
    Ok(())
}

/// Runs a policy command; exit status 1 when the pack is invalid.
fn policy(command: PolicyCommand) -> anyhow::Result<()> {
    let (pack_path, explain) = match &command {
        PolicyCommand::Check { pack } => (pack, None),
        PolicyCommand::Explain {
            pack,
            frame,
            state,
            now,
        } => (pack, Some((frame, state, now))),
    };
    let pack = match policy_cli::load_pack(pack_path)? {
        Ok(p) => p,
        Err(errors) => {
            eprint!("{}: {errors}", pack_path.display());
            std::process::exit(1);
        }
    };
    let out = match explain {
        None => policy_cli::check(&pack),
        Some((frame, state, now)) => {
            let frame = std::fs::read_to_string(frame)
                .with_context(|| format!("cannot read {}", frame.display()))?;
            let state: Option<StateFile> = match state {
                Some(p) => Some(
                    serde_json::from_str(
                        &std::fs::read_to_string(p)
                            .with_context(|| format!("cannot read {}", p.display()))?,
                    )
                    .with_context(|| format!("state file {} is not valid", p.display()))?,
                ),
                None => None,
            };
            policy_cli::explain(&pack, &frame, state.as_ref(), *now)?
        }
    };
    print_all(&out);
    Ok(())
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly.
fn print_all(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
