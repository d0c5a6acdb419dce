//! `telegate demo`: the whole pipeline on one machine with zero setup. An embedded MQTT
//! broker, librdkafka's in-process MockCluster standing in for Kafka (or a real cluster with
//! `--kafka-bootstrap`), a simulated fleet, and a live view of what reaches each topic and
//! what was dropped or rejected, and why.

use crate::gateway::{Gateway, PackSource};
use crate::http::metrics_handle;
use crate::settings::Settings;
use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use telegate_sim::{Behaviour, Fleet, FleetConfig};

#[derive(Debug, Clone)]
pub struct DemoArgs {
    pub vehicles: usize,
    pub duration: Option<Duration>,
    pub kafka_bootstrap: Option<String>,
    pub mqtt_listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub policy: Option<PathBuf>,
    pub bad_frame_ratio: f64,
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
    pub lost_in_broker: u64,
    pub topics: BTreeMap<String, TopicView>,
    pub metrics: String,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<DemoSummary> {
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
    let mut settings = Settings::default();
    settings.kafka.bootstrap = bootstrap.clone();
    settings.policy = args.policy.clone();
    let source = source_for(&args);
    if let Some(mock) = &mock {
        // The mock has no CreateTopics; it takes topics through its own API.
        settings.kafka.manage_topics = false;
        let pack = crate::gateway::load_pack(&source_for(&args), &settings)?;
        let own = crate::gateway::Topics::new("");
        let names = pack
            .topics()
            .into_iter()
            .map(|t| t.name)
            .chain([own.state, own.ledger]);
        for name in names {
            mock.create_topic(&name, 1, 1)
                .with_context(|| format!("creating {name} in the MockCluster"))?;
        }
    }
    settings.mqtt.listen = Some(args.mqtt_listen);
    settings.mqtt.listen_v5 = None;
    settings.metrics_listen = args.metrics_listen;
    let gateway = Gateway::start(&settings, source).await?;
    let topics: Vec<String> = gateway
        .pack()
        .topics()
        .into_iter()
        .map(|t| t.name)
        .collect();
    let view = Arc::new(Mutex::new(BTreeMap::<String, TopicView>::new()));
    let viewer = spawn_viewer(&bootstrap, &topics, view.clone())?;

    let fleet = Fleet::start(FleetConfig {
        host: args.mqtt_listen.ip().to_string(),
        port: args.mqtt_listen.port(),
        vehicles: args.vehicles,
        behaviour: Behaviour {
            location_every_ms: 1_000,
            status_every_ms: 10_000,
            trip_ms: (20_000, 90_000),
            park_ms: (5_000, 30_000),
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
        "telegate demo: {} simulated vehicles -> MQTT {} -> policy {} -> {}\nkeys: {}\n",
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
        let screen = render(
            &header,
            started.elapsed(),
            fleet_stats
                .published
                .load(std::sync::atomic::Ordering::Relaxed),
            fleet_stats
                .broken_published
                .load(std::sync::atomic::Ordering::Relaxed),
            &gateway,
            &view.lock().map(|v| v.clone()).unwrap_or_default(),
            &metrics_handle().render(),
        );
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
    let lost = gateway.ingress().stats().lost();
    gateway.shutdown().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    viewer.abort();
    let summary = DemoSummary {
        published,
        broken_published: broken,
        delivered,
        failed,
        lost_in_broker: lost,
        topics: view.lock().map(|v| v.clone()).unwrap_or_default(),
        metrics: metrics_handle().render(),
    };
    drop(mock);
    Ok(summary)
}

fn source_for(args: &DemoArgs) -> PackSource {
    match &args.policy {
        Some(_) => PackSource::Settings,
        None => PackSource::Inline {
            name: "built-in reference pack".into(),
            text: crate::REFERENCE_PACK.into(),
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
    let mut assignment = rdkafka::TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("metadata for {topic}"))?;
        for t in metadata.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                    .with_context(|| format!("end of {topic}"))?;
                assignment.add_partition_offset(topic, p.id(), rdkafka::Offset::Offset(high))?;
            }
        }
    }
    consumer
        .assign(&assignment)
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

/// `(labels, value)` of every sample of a counter in Prometheus text format.
pub fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (n == name).then(|| (labels, value.parse().unwrap_or(0.0)))
        })
        .collect()
}

fn render(
    header: &str,
    uptime: Duration,
    published: u64,
    broken: u64,
    gateway: &Gateway,
    topics: &BTreeMap<String, TopicView>,
    metrics: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{header}");
    let _ = writeln!(
        s,
        "uptime {}s | vehicles published {published} frames (+{broken} deliberately broken) | Kafka delivered {} failed {} | lost in MQTT broker {}\n",
        uptime.as_secs(),
        gateway.sink_stats().delivered(),
        gateway.sink_stats().failed(),
        gateway.ingress().stats().lost(),
    );
    let _ = writeln!(
        s,
        "{:<30} {:>8}  {:<22} {:<10} KEY",
        "TOPIC", "RECORDS", "LAST PURPOSE", "SUBJECT"
    );
    for t in gateway.pack().topics() {
        let v = topics.get(&t.name).cloned().unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<30} {:>8}  {:<22} {:<10} {}",
            t.name, v.records, v.last_purpose, v.last_subject, v.last_key
        );
    }
    for (title, name) in [
        (
            "DROPPED BY POLICY (service, purpose, reason)",
            "telegate_records_dropped_total",
        ),
        (
            "REJECTED BY VALIDATION (reason)",
            "telegate_frames_rejected_total",
        ),
        (
            "VALID BUT ROUTED NOWHERE (kind)",
            "telegate_frames_unrouted_total",
        ),
    ] {
        let _ = writeln!(s, "\n{title}");
        let rows: Vec<_> = samples(metrics, name)
            .into_iter()
            .filter(|(_, v)| *v > 0.0)
            .collect();
        if rows.is_empty() {
            let _ = writeln!(s, "  (none yet)");
        }
        for (labels, value) in rows {
            let _ = writeln!(s, "  {value:>8}  {labels}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn prometheus_samples_parse() {
        let text = "# TYPE a counter\na{x=\"1\",y=\"2\"} 3\nb 4\na{x=\"9\"} 0\n";
        assert_eq!(
            super::samples(text, "a"),
            vec![("x=\"1\",y=\"2\"", 3.0), ("x=\"9\"", 0.0)]
        );
        assert_eq!(super::samples(text, "b"), vec![("", 4.0)]);
    }

    #[test]
    fn keys_are_masked_in_the_view() {
        assert_eq!(
            super::mask_key("vin", b"WP0ZZZ99ZTS392124"),
            "WP0**************"
        );
        assert!(super::mask_key("pseudonym", b"0123456789abcdef").starts_with("01234567..."));
    }
}
