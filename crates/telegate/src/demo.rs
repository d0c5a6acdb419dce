//! `telegate demo`: the whole pipeline on one machine with zero setup. The gateway with its
//! own MQTT edge, librdkafka's in-process MockCluster standing in for Kafka (or a real cluster
//! with `--kafka-bootstrap`), a simulated fleet, and a live view of what reaches each topic and
//! what was dropped or rejected, and why.

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strum::VariantArray;
use telegate_consumers::{ConsumerStats, Reference, RunnerConfig};
use telegate_frame::{FrameKind, RejectReason};
use telegate_gateway::config::{Operator, Role};
use telegate_gateway::{Config, Gateway, PackSource, REFERENCE_PACK};
use telegate_policy::DropReason;
use telegate_sim::{Behaviour, Fleet, FleetConfig};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Simulated vehicles.
    #[arg(long, default_value_t = 20)]
    pub vehicles: usize,
    /// Stop after this long (e.g. 30s); runs until Ctrl-C otherwise.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// A real Kafka cluster's bootstrap servers, instead of librdkafka's in-process mock cluster.
    #[arg(long)]
    pub kafka_bootstrap: Option<String>,
    /// The gateway's MQTT listener the fleet connects to (plain, anonymous: a demo only).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt_listen: SocketAddr,
    /// /metrics, /healthz, /readyz.
    #[arg(long, default_value = "127.0.0.1:9898")]
    pub metrics_listen: Option<SocketAddr>,
    /// The privacy office's console, on loopback; its sign-in tokens are printed at start.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub console_listen: Option<SocketAddr>,
    /// Policy pack; the built-in reference pack otherwise.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Share of frames followed by a deliberately broken one.
    #[arg(long, value_parser = crate::share, default_value_t = 0.02)]
    pub bad_frame_ratio: f64,
    /// product-insights: minimum vehicles per released aggregate (small for a small fleet).
    #[arg(long, default_value_t = 3)]
    pub k: u64,
}

/// What one topic has received, as the view shows it.
#[derive(Debug, Clone, Default)]
pub struct TopicView {
    pub records: u64,
    pub last_purpose: String,
    pub last_subject: String,
    pub last_key: String,
}

/// The demo's final numbers.
#[derive(Debug, Clone, Default)]
pub struct DemoSummary {
    pub published: u64,
    pub broken_published: u64,
    pub delivered: u64,
    pub failed: u64,
    /// Connections, packets and subscriptions the MQTT edge refused.
    pub refused_at_edge: u64,
    /// Frames the pipeline's validation rejected (the deliberately broken ones).
    pub rejected: u64,
    pub topics: BTreeMap<String, TopicView>,
    /// Each reference consumer's results (its view) at the end.
    pub consumers: BTreeMap<String, serde_json::Value>,
}

/// Runs the demo and prints its final numbers.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if std::env::var_os("TELEGATE_LOG").is_some() {
        crate::process::init_tracing();
    }
    let summary = summarize(args).await?;
    println!(
        "\ndemo finished: {} frames published (+{} broken), {} rejected by validation, {} records delivered to Kafka, {} failed, {} refused at the MQTT edge",
        summary.published,
        summary.broken_published,
        summary.rejected,
        summary.delivered,
        summary.failed,
        summary.refused_at_edge
    );
    Ok(())
}

/// A sign-in token for one of the demo's console operators.
fn demo_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Runs the demo and returns what it saw.
pub async fn summarize(args: Args) -> anyhow::Result<DemoSummary> {
    // MockCluster is librdkafka's own in-process broker: real protocol, no durability.
    let mock = match &args.kafka_bootstrap {
        Some(_) => None,
        None => Some(MockCluster::new(1).context("starting the in-process Kafka MockCluster")?),
    };
    let bootstrap = match (&args.kafka_bootstrap, &mock) {
        (Some(b), _) => b.clone(),
        (None, Some(m)) => m.bootstrap_servers(),
        (None, None) => unreachable!("a mock exists when no bootstrap is given"),
    };
    let mut config = Config::default();
    config.kafka.bootstrap = bootstrap.clone();
    config.policy = args.policy.clone();
    // The demo's simulated fleet connects without certificates, on loopback: the
    // development setting, announced in the header.
    config.mqtt.listen = Some(args.mqtt_listen);
    config.mqtt.listen_v5 = None;
    config.mqtt.allow_anonymous = true;
    config.metrics_listen = args.metrics_listen;
    // The console with two operators made for this run: an officer and a viewer.
    let console_tokens = args.console_listen.map(|listen| {
        config.console.listen = Some(listen);
        let (officer, viewer) = (demo_token(), demo_token());
        config.console.operators = vec![
            Operator::with_token("demo-officer", Role::Officer, &officer),
            Operator::with_token("demo-viewer", Role::Viewer, &viewer),
        ];
        (officer, viewer)
    });
    if mock.is_some() {
        // The mock has no CreateTopics; it takes topics through its own API.
        config.kafka.manage_topics = false;
    }
    let checked = config.check(&source_for(&args))?;
    if let Some(mock) = &mock {
        let names = checked
            .topics()
            .into_iter()
            .map(|t| t.name)
            .chain(Reference::VARIANTS.iter().map(|r| r.output("")));
        for name in names {
            mock.create_topic(&name, 1, 1)
                .with_context(|| format!("creating {name} in the MockCluster"))?;
        }
    }
    let gateway = Gateway::start_checked(checked).await?;
    let topics: Vec<String> = gateway
        .pack()
        .topics()
        .into_iter()
        .map(|t| t.name)
        .collect();
    let view = Arc::new(Mutex::new(BTreeMap::<String, TopicView>::new()));
    let viewer = spawn_viewer(&bootstrap, &topics, view.clone())?;
    let (stop_consumers, stop_rx) = tokio::sync::watch::channel(false);
    let mut consumers = Vec::new();
    for &service in Reference::VARIANTS {
        let cfg = RunnerConfig {
            kafka: config.kafka.clone(),
            group: format!(
                "telegate-demo-{}-{:08x}",
                service.name(),
                rand::random::<u32>()
            ),
            inputs: service.inputs(""),
            output: service.output(""),
            view_file: None,
            tick: Duration::from_secs(1),
            output_retention: service.output_retention(),
            // A real cluster may hold earlier runs' records: this run's only.
            from_beginning: mock.is_some(),
            tracer: None,
        };
        let stats = Arc::new(ConsumerStats::default());
        let service_impl = service.build(service.purposes(), args.k, Duration::from_secs(3));
        let handle = tokio::spawn(telegate_consumers::run(
            cfg,
            service_impl,
            stop_rx.clone(),
            stats.clone(),
        ));
        consumers.push((service, stats, handle));
    }

    let fleet = Fleet::start(FleetConfig {
        host: args.mqtt_listen.ip().to_string(),
        port: args.mqtt_listen.port(),
        vehicles: args.vehicles,
        behaviour: Behaviour {
            location_every_ms: 1_000,
            status_every_ms: 10_000,
            trip_ms: (15_000, 45_000),
            park_ms: (3_000, 15_000),
            ..Behaviour::default()
        },
        bad_frame_ratio: args.bad_frame_ratio,
        ..FleetConfig::default()
    });
    let fleet_stats = fleet.stats();
    let kafka_label = if mock.is_some() {
        "in-process MockCluster (librdkafka's test broker, NOT a real Kafka cluster; nothing is durable)".to_owned()
    } else {
        format!("Kafka at {bootstrap}")
    };
    let header = format!(
        "telegate demo: {} simulated vehicles -> MQTT {} -> policy {} -> {}\nkeys: {}\nMQTT: anonymous vehicles on loopback (development setting; a fleet uses TLS with one certificate per VIN, see docs/operations.md)\n",
        args.vehicles,
        args.mqtt_listen,
        gateway.pack().label(),
        kafka_label,
        if gateway.ephemeral_keys() {
            "ephemeral, generated for this run (pseudonyms change at every start)"
        } else {
            "from key file"
        },
    );
    let header = match (gateway.console_addr(), &console_tokens) {
        (Some(addr), Some((officer, viewer))) => format!(
            "{header}console: http://{addr}/  officer token {officer}  viewer token {viewer}\n"
        ),
        _ => header,
    };
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let every = if tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let consumer_views: Vec<(Reference, serde_json::Value)> = consumers
            .iter()
            .map(|(svc, stats, _)| {
                (
                    *svc,
                    stats.view.lock().map(|v| v.clone()).unwrap_or_default(),
                )
            })
            .collect();
        let topic_view = view.lock().map(|v| v.clone()).unwrap_or_default();
        let screen = render(&Screen {
            header: &header,
            uptime: started.elapsed(),
            published: fleet_stats
                .published
                .load(std::sync::atomic::Ordering::Relaxed),
            broken: fleet_stats
                .broken_published
                .load(std::sync::atomic::Ordering::Relaxed),
            gateway: &gateway,
            topics: &topic_view,
            consumers: &consumer_views,
        });
        if tty {
            print!("\x1b[2J\x1b[H{screen}");
        } else {
            println!("{screen}");
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    let published = fleet_stats
        .published
        .load(std::sync::atomic::Ordering::Relaxed);
    let broken = fleet_stats
        .broken_published
        .load(std::sync::atomic::Ordering::Relaxed);
    fleet.stop().await;
    // Give the last frames time to cross the pipeline and be consumed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let delivered = gateway.sink_stats().delivered();
    let failed = gateway.sink_stats().failed();
    let refused_at_edge = refused_at_edge(&gateway);
    let frames = gateway.frame_stats();
    let rejected = RejectReason::VARIANTS
        .iter()
        .map(|r| frames.rejected(*r))
        .sum();
    gateway.shutdown().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _ = stop_consumers.send(true);
    let mut results = BTreeMap::new();
    for (service, stats, handle) in consumers {
        if let Ok(Err(e)) = handle.await {
            tracing::warn!(service = service.name(), error = %e, "demo consumer stopped");
        }
        let view = stats.view.lock().map(|v| v.clone()).unwrap_or_default();
        results.insert(service.name().to_owned(), view);
    }
    viewer.abort();
    let summary = DemoSummary {
        published,
        broken_published: broken,
        delivered,
        failed,
        refused_at_edge,
        rejected,
        topics: view.lock().map(|v| v.clone()).unwrap_or_default(),
        consumers: results,
    };
    drop(mock);
    Ok(summary)
}

fn refused_at_edge(gateway: &Gateway) -> u64 {
    let stats = gateway.edge().stats();
    telegate_mqtt::Refusal::VARIANTS
        .iter()
        .map(|r| stats.refused(*r))
        .sum()
}

fn source_for(args: &Args) -> PackSource {
    match &args.policy {
        Some(_) => PackSource::Config,
        None => PackSource::Inline {
            name: "built-in reference pack".into(),
            text: REFERENCE_PACK.into(),
        },
    }
}

fn spawn_viewer(
    bootstrap: &str,
    topics: &[String],
    view: Arc<Mutex<BTreeMap<String, TopicView>>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("telegate-demo-view-{:08x}", rand::random::<u32>()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .context("demo viewer consumer")?;
    // This run's records only: every partition from where it ends now, resolved before the
    // fleet starts (a real cluster may hold earlier runs' records).
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    telegate_kafka::assign_all(&consumer, &names, telegate_kafka::Start::End)
        .context("demo viewer assignment")?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(msg) = consumer.recv().await else {
                continue;
            };
            let header = |name: &str| {
                msg.headers()
                    .and_then(|h| h.iter().find(|x| x.key == name))
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            let purpose = header("telegate-purpose");
            let subject = header("telegate-subject");
            let key = msg
                .key()
                .map(|k| mask_key(&subject, k))
                .unwrap_or_else(|| "(none)".into());
            if let Ok(mut v) = view.lock() {
                let t = v.entry(msg.topic().to_owned()).or_default();
                t.records += 1;
                t.last_purpose = purpose;
                t.last_subject = subject;
                t.last_key = key;
            }
        }
    }))
}

/// The view shows what kind of key a record has, not the identifier itself.
fn mask_key(subject: &str, key: &[u8]) -> String {
    let k = String::from_utf8_lossy(key);
    match subject {
        "vin" => format!(
            "{}{}",
            k.get(..3).unwrap_or(""),
            "*".repeat(k.len().saturating_sub(3))
        ),
        _ => format!("{}... ({} chars)", k.get(..8).unwrap_or(&k), k.len()),
    }
}

/// Everything one screen of the live view shows.
struct Screen<'a> {
    header: &'a str,
    uptime: Duration,
    published: u64,
    broken: u64,
    gateway: &'a Gateway,
    topics: &'a BTreeMap<String, TopicView>,
    consumers: &'a [(Reference, serde_json::Value)],
}

fn render(v: &Screen<'_>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", v.header);
    let _ = writeln!(
        s,
        "uptime {}s | vehicles published {} frames (+{} deliberately broken) | Kafka delivered {} failed {} | refused at the MQTT edge {}\n",
        v.uptime.as_secs(),
        v.published,
        v.broken,
        v.gateway.sink_stats().delivered(),
        v.gateway.sink_stats().failed(),
        refused_at_edge(v.gateway),
    );
    let _ = writeln!(
        s,
        "{:<30} {:>8}  {:<22} {:<10} KEY",
        "TOPIC", "RECORDS", "LAST PURPOSE", "SUBJECT"
    );
    for t in v.gateway.pack().topics() {
        let tv = v.topics.get(&t.name).cloned().unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<30} {:>8}  {:<22} {:<10} {}",
            t.name, tv.records, tv.last_purpose, tv.last_subject, tv.last_key
        );
    }
    let frames = v.gateway.frame_stats();
    let pack = v.gateway.pack();
    let _ = writeln!(
        s,
        "\nCAPTURED IN OFFLINE MODE (sent nowhere, nothing kept): {}",
        frames.offline()
    );
    let dropped: Vec<(String, u64)> = pack
        .purposes
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            DropReason::VARIANTS.iter().map(move |r| {
                let service = &pack.service_of(p).id;
                (
                    format!("{service}, {}, {}", p.id, r.as_str()),
                    frames.dropped(i, *r),
                )
            })
        })
        .collect();
    let rejected = RejectReason::VARIANTS
        .iter()
        .map(|r| (r.as_str().to_owned(), frames.rejected(*r)))
        .collect();
    let unrouted = FrameKind::VARIANTS
        .iter()
        .map(|k| (k.as_str().to_owned(), frames.unrouted(*k)))
        .collect();
    for (title, rows) in [
        ("DROPPED BY POLICY (service, purpose, reason)", dropped),
        ("REJECTED BY VALIDATION (reason)", rejected),
        ("VALID BUT ROUTED NOWHERE (kind)", unrouted),
    ] {
        let _ = writeln!(s, "\n{title}");
        let rows: Vec<_> = rows.into_iter().filter(|(_, n)| *n > 0).collect();
        if rows.is_empty() {
            let _ = writeln!(s, "  (none yet)");
        }
        for (what, n) in rows {
            let _ = writeln!(s, "  {n:>8}  {what}");
        }
    }
    let _ = writeln!(
        s,
        "\nREFERENCE CONSUMERS (telegate consume …, results on telegate.<service>.out)"
    );
    for (service, view) in v.consumers {
        let _ = writeln!(
            s,
            "  {:<17} {}",
            service.name(),
            consumer_line(*service, view)
        );
    }
    s
}

/// One line a person can read about a consumer's results.
fn consumer_line(service: Reference, v: &serde_json::Value) -> String {
    let len = |x: &serde_json::Value| x.as_array().map_or(0, Vec::len);
    match service {
        Reference::SmartService => {
            let vehicles = v["vehicles"].as_object();
            let needs: usize = vehicles.map_or(0, |m| {
                m.values()
                    .map(|x| x["needs"].as_object().map_or(0, |n| n.len()))
                    .sum()
            });
            format!(
                "{} vehicles tracked, {needs} open maintenance needs",
                vehicles.map_or(0, |m| m.len())
            )
        }
        Reference::BreakdownCall => {
            let cases = v["cases"].as_array().cloned().unwrap_or_default();
            let dealer = cases.iter().filter(|c| c["audience"] == "dealer").count();
            format!(
                "{} assistance cases, {dealer} dealer copies (consented only)",
                cases.len() - dealer
            )
        }
        Reference::TripLog => {
            let trips = v["trips"].as_array().cloned().unwrap_or_default();
            // Not `sum()`: an empty f64 sum is -0.0, which would print as "-0.0 km".
            let km = trips
                .iter()
                .filter_map(|t| t["distance_km"].as_f64())
                .fold(0.0, |a, b| a + b);
            let last = trips.last().map_or(String::new(), |t| {
                format!(
                    "; last {:.1} km in {:.0} s, max {} km/h",
                    t["distance_km"].as_f64().unwrap_or_default(),
                    t["duration_s"].as_f64().unwrap_or_default(),
                    t["max_speed_kmh"]
                        .as_f64()
                        .map_or("-".into(), |m| format!("{m:.0}"))
                )
            });
            format!("{} trips closed, {km:.1} km{last}", trips.len())
        }
        Reference::ProductInsights => format!(
            "{} aggregates released (k = {}), {} groups withheld below k",
            len(&v["aggregates"]),
            v["k"],
            v["groups_below_k"]
        ),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn keys_are_masked_in_the_view() {
        assert_eq!(
            super::mask_key("vin", b"WP0ZZZ99ZTS392124"),
            "WP0**************"
        );
        assert!(super::mask_key("pseudonym", b"0123456789abcdef").starts_with("01234567..."));
    }

    #[test]
    fn no_trips_read_zero_km() {
        use telegate_consumers::Reference;
        let line = super::consumer_line(Reference::TripLog, &serde_json::json!({ "trips": [] }));
        assert_eq!(line, "0 trips closed, 0.0 km");
    }
}
