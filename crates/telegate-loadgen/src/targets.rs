//! `telegate loadgen`: the same load against telegate, bare embedded rumqttd, Mosquitto and
//! Kafka directly, one table. Targets run one after another on this machine; each is started
//! fresh on loopback and stopped afterwards. With a fleet directory, telegate is started with
//! its TLS listener only, and every vehicle connects with its own certificate.

use crate::tls::{FleetTls, Pki};
use crate::{LoadConfig, Observer, ProcSample, Report, Sink, Tracker};
use anyhow::{Context, bail};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The load and where to put it.
#[derive(Debug, Clone)]
pub struct LoadArgs {
    pub target: String,
    pub kafka_bootstrap: String,
    /// The same load for every target.
    pub load: LoadConfig,
    pub report_json: Option<PathBuf>,
    pub report_html: Option<PathBuf>,
    /// An already running gateway instead of one started here: its MQTT address, its pid
    /// (for CPU and memory) and the topic its load pack writes.
    pub external: Option<(SocketAddr, Option<i32>, String)>,
    pub quiet: bool,
    /// librdkafka producer properties for the Kafka writers under test (telegate's sink and
    /// the direct producer), over their defaults.
    pub producer: Vec<(String, String)>,
    /// The telegate binary to start targets with.
    pub exe: PathBuf,
    /// The Kafka broker's pid, to report its CPU and memory beside each target's.
    pub broker_pid: Option<i32>,
    /// Vehicles connect over mutual TLS with certificates from this fleet directory: the
    /// telegate target runs its TLS listener only (an external gateway must be one of this
    /// fleet). Not for the other targets.
    pub pki: Option<Pki>,
}

pub const LOAD_PACK: &str = include_str!("../../../packs/loadgen.toml");

/// A process started here, killed and reaped when dropped, on every early return too.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What is under test: a process started here (or one already running) and how to watch it.
struct Target {
    _process: Option<Process>,
    pid: Option<i32>,
    mqtt: Option<SocketAddr>,
    observer: Observer,
    _dir: Option<tempfile::TempDir>,
}

/// `telegate serve`'s MQTT listener flags: the fleet's TLS listener, or plain anonymous
/// listeners (a development setting) without a fleet.
fn mqtt_listener_args(
    mqtt: SocketAddr,
    tls: Option<&FleetTls>,
) -> anyhow::Result<Vec<std::ffi::OsString>> {
    Ok(match tls {
        Some(tls) => tls.serve_args(mqtt),
        None => vec![
            "--mqtt-listen".into(),
            mqtt.to_string().into(),
            "--mqtt5-listen".into(),
            free_addr()?.to_string().into(),
            "--mqtt-allow-anonymous".into(),
        ],
    })
}

/// `--kafka-bootstrap mock`: librdkafka's in-memory mock cluster, one per target.
pub const MOCK: &str = "mock";

/// `telegate kafka-mock` in a process of its own (so its CPU is not the gateway's), killed
/// when dropped.
struct KafkaMock {
    _process: Process,
    bootstrap: String,
}

impl KafkaMock {
    /// A mock holding `topics` (it has no CreateTopics, so telegate cannot make them).
    fn start(exe: &std::path::Path, topics: &[String]) -> anyhow::Result<Self> {
        use std::io::BufRead;
        let mut process = Process(
            Command::new(exe)
                .arg("kafka-mock")
                .args(topics.iter().flat_map(|t| ["--topic", t.as_str()]))
                .env("TELEGATE_LOG", "error")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting telegate kafka-mock")?,
        );
        let mut line = String::new();
        if let Some(out) = process.0.stdout.take() {
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        let bootstrap = line.trim().to_owned();
        anyhow::ensure!(
            !bootstrap.is_empty(),
            "telegate kafka-mock printed no bootstrap address"
        );
        Ok(Self {
            _process: process,
            bootstrap,
        })
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn wait_tcp(addr: SocketAddr, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited at start-up: {status}");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn http_ok(addr: SocketAddr, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = write!(s, "GET {path} HTTP/1.0\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200")
}

/// The topics a telegate target writes behind namespace `ns`: its pack's and its own.
fn telegate_topics(ns: &str) -> anyhow::Result<Vec<String>> {
    let pack = telegate_policy::Pack::from_toml(LOAD_PACK)
        .map_err(|e| anyhow::anyhow!("the load pack: {e}"))?
        .with_topic_namespace(ns);
    Ok(pack
        .topics()
        .into_iter()
        .chain(telegate_policy::consent_topics(ns, Duration::ZERO))
        .chain([telegate_policy::vehicle_requests_topic(ns)])
        .map(|t| t.name)
        .collect())
}

fn start_target(
    name: &str,
    a: &LoadArgs,
    bootstrap: &str,
    ns: &str,
    tls: Option<&FleetTls>,
) -> anyhow::Result<Target> {
    let exe = &a.exe;
    let dir = tempfile::tempdir()?;
    // The target's own log: shown only if it fails to start.
    let log = || std::fs::File::create(dir.path().join("target.log"));
    let log_tail = || std::fs::read_to_string(dir.path().join("target.log")).unwrap_or_default();
    match name {
        "telegate" => {
            let (mqtt, metrics) = (free_addr()?, free_addr()?);
            let pack = dir.path().join("loadgen.toml");
            std::fs::write(&pack, LOAD_PACK)?;
            // Producer properties under study reach telegate's sink through its config file.
            let config = dir.path().join("telegate.toml");
            std::fs::write(&config, producer_config(&a.producer)?)?;
            let child = Command::new(exe)
                .arg("serve")
                .args(mqtt_listener_args(mqtt, tls)?)
                .args([
                    "--metrics-listen",
                    &metrics.to_string(),
                    "--kafka-bootstrap",
                    bootstrap,
                ])
                .arg("--policy")
                .arg(&pack)
                .arg("--config")
                .arg(&config)
                .env("TELEGATE__KAFKA__TOPIC_NAMESPACE", ns)
                // The mock cluster has no CreateTopics: the load generator had it make them.
                .env(
                    "TELEGATE__KAFKA__MANAGE_TOPICS",
                    (a.kafka_bootstrap != MOCK).to_string(),
                )
                .env("TELEGATE_LOG", "warn,rumqttd=off,librdkafka=error")
                .stdout(Stdio::null())
                .stderr(log()?)
                .spawn()
                .context("starting telegate serve")?;
            let mut process = Process(child);
            let deadline = Instant::now() + Duration::from_secs(90);
            while !http_ok(metrics, "/readyz") {
                if let Some(status) = process.0.try_wait()? {
                    bail!(
                        "telegate serve exited at start-up: {status}\n{}",
                        log_tail()
                    );
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "telegate serve did not become ready"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(Target {
                pid: Some(process.0.id() as i32),
                _process: Some(process),
                mqtt: Some(mqtt),
                observer: Observer::Kafka {
                    bootstrap: bootstrap.to_owned(),
                    topic: format!("{ns}telegate.loadgen"),
                },
                _dir: Some(dir),
            })
        }
        "rumqttd" => {
            let mqtt = free_addr()?;
            let child = Command::new(exe)
                .args(["broker", "--mqtt-listen", &mqtt.to_string()])
                .env("TELEGATE_LOG", "warn,rumqttd=off")
                .stdout(Stdio::null())
                .stderr(log()?)
                .spawn()
                .context("starting the bare broker")?;
            mqtt_broker(child, mqtt, "the bare rumqttd broker", a.load.qos, dir)
        }
        "mosquitto" => {
            let mqtt = free_addr()?;
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\nmax_connections -1\npersistence false\n",
                    mqtt.port()
                ),
            )?;
            let child = Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting mosquitto (apt-get install mosquitto)")?;
            mqtt_broker(child, mqtt, "mosquitto", a.load.qos, dir)
        }
        "kafka" => Ok(Target {
            _process: None,
            pid: None,
            mqtt: None,
            observer: Observer::Kafka {
                bootstrap: bootstrap.to_owned(),
                topic: format!("telegate.loadgen-direct-{:08x}", rand::random::<u32>()),
            },
            _dir: Some(dir),
        }),
        other => bail!("unknown target {other:?}: telegate, rumqttd, mosquitto, kafka or compare"),
    }
}

/// A plain MQTT broker just started: waits for it, then observes it with a subscriber.
fn mqtt_broker(
    child: Child,
    mqtt: SocketAddr,
    what: &str,
    qos: u8,
    dir: tempfile::TempDir,
) -> anyhow::Result<Target> {
    let mut process = Process(child);
    wait_tcp(mqtt, &mut process.0, what)?;
    Ok(Target {
        pid: Some(process.0.id() as i32),
        _process: Some(process),
        mqtt: Some(mqtt),
        observer: Observer::Mqtt { addr: mqtt, qos },
        _dir: Some(dir),
    })
}

/// Runs the load against each target in turn; returns the reports.
pub async fn run(a: LoadArgs) -> anyhow::Result<Vec<Report>> {
    if a.external.is_some() && a.kafka_bootstrap == MOCK {
        bail!("a running gateway writes to its own Kafka: give its bootstrap, not {MOCK}");
    }
    let targets: Vec<&str> = match a.target.as_str() {
        "compare" => vec!["telegate", "rumqttd", "mosquitto", "kafka"],
        t => vec![t],
    };
    if a.pki.is_some() && targets != ["telegate"] {
        bail!(
            "TLS (--pki, --tls) is for the telegate target, or a running gateway given with \
             --mqtt; --target {} has other targets",
            a.target
        );
    }
    let vins = crate::vins(a.load.vehicles);
    // Before anything is timed: issuing certificates is not what is measured.
    let tls = match &a.pki {
        Some(pki) => {
            let tls = FleetTls::prepare(pki, &vins)?;
            if !a.quiet {
                eprintln!("{}", tls.summary());
            }
            Some(Arc::new(tls))
        }
        None => None,
    };
    let mut reports = Vec::new();
    for name in targets {
        // A fresh mock cluster for each target, so no target inherits another's backlog.
        let ns = format!("lg{:08x}.", rand::random::<u32>());
        let mock = match (a.kafka_bootstrap == MOCK, name) {
            (false, _) => None,
            (true, "telegate") => Some(KafkaMock::start(&a.exe, &telegate_topics(&ns)?)?),
            (true, _) => Some(KafkaMock::start(&a.exe, &[])?),
        };
        let bootstrap = mock
            .as_ref()
            .map_or(a.kafka_bootstrap.as_str(), |m| m.bootstrap.as_str());
        let target = match &a.external {
            Some((mqtt, pid, topic)) => Target {
                _process: None,
                pid: *pid,
                mqtt: Some(*mqtt),
                observer: Observer::Kafka {
                    bootstrap: bootstrap.to_owned(),
                    topic: topic.clone(),
                },
                _dir: None,
            },
            None => start_target(name, &a, bootstrap, &ns, tls.as_deref())?,
        };
        // The Kafka ceiling writes to a topic of its own, made here (the mock makes it on
        // first use).
        if let (Observer::Kafka { topic, .. }, "kafka", None) = (&target.observer, name, &mock) {
            let cfg = telegate_kafka::KafkaConfig {
                bootstrap: bootstrap.to_owned(),
                ..Default::default()
            };
            let spec = telegate_policy::TopicSpec {
                name: topic.clone(),
                retention: Duration::from_secs(3600),
                compact: false,
            };
            telegate_kafka::ensure_topics(&cfg, &[spec])
                .await
                .context("load topic")?;
        }
        let mut label = if a.external.is_some() {
            "telegate (external)".to_owned()
        } else {
            label(name)
        };
        if tls.is_some() {
            label = format!("{label}, mutual TLS");
        }
        if !a.producer.is_empty() && matches!(name, "telegate" | "kafka") {
            let props: Vec<String> = a.producer.iter().map(|(k, v)| format!("{k}={v}")).collect();
            label = format!("{label} [{}]", props.join(" "));
        }
        reports.push(measure(&a, &label, &target, &vins, tls.clone()).await?);
        drop(target);
        drop(mock);
    }
    if let Some(path) = &a.report_json {
        std::fs::write(path, serde_json::to_vec_pretty(&reports)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.report_html {
        std::fs::write(path, crate::html(&reports))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(reports)
}

/// A telegate config file holding only `[kafka.extra]`: the producer properties under study.
fn producer_config(props: &[(String, String)]) -> anyhow::Result<String> {
    let extra: std::collections::BTreeMap<&str, &str> = props
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut kafka = std::collections::BTreeMap::new();
    kafka.insert("extra", extra);
    let mut root = std::collections::BTreeMap::new();
    root.insert("kafka", kafka);
    Ok(toml::to_string(&root)?)
}

fn label(name: &str) -> String {
    match name {
        "telegate" => "telegate (loadgen pack)",
        "rumqttd" => "bare embedded rumqttd",
        "mosquitto" => "mosquitto",
        "kafka" => "rdkafka -> Kafka direct",
        other => other,
    }
    .to_owned()
}

async fn measure(
    a: &LoadArgs,
    label: &str,
    target: &Target,
    vins: &[String],
    tls: Option<Arc<FleetTls>>,
) -> anyhow::Result<Report> {
    let start = Instant::now();
    let tracker = Arc::new(Tracker::new(vins, start));
    let (stop, stop_rx) = watch::channel(false);
    let observer = target.observer.start(tracker.clone(), stop_rx).await?;
    let sink = match (&target.mqtt, &target.observer) {
        (Some(addr), _) => Sink::Mqtt { addr: *addr, tls },
        (None, Observer::Kafka { topic, bootstrap }) => Sink::Kafka {
            kafka: telegate_kafka::KafkaConfig {
                bootstrap: bootstrap.clone(),
                extra: a.producer.iter().cloned().collect(),
                ..Default::default()
            },
            topic: topic.clone(),
        },
        (None, Observer::Mqtt { .. }) => bail!("an MQTT observer needs an MQTT target"),
    };
    let window = (a.load.warm_up, a.load.duration);
    let sampler = tokio::spawn(sample(target.pid, window));
    let broker_sampler = tokio::spawn(sample(a.broker_pid, window));
    // This process over the same window: the vehicles, the observer and the tracker.
    let generator_sampler = tokio::spawn(sample(Some(std::process::id() as i32), window));
    let progress = progress_bar(a, label);
    let ticker = {
        let tracker = tracker.clone();
        let pb = progress.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                tracker.sample();
                let (delivered, pending, dups, _) = tracker.totals();
                let kept = tracker
                    .delivery()
                    .outstanding
                    .load(std::sync::atomic::Ordering::Relaxed);
                pb.set_position(start.elapsed().as_secs());
                pb.set_message(format!(
                    "delivered {delivered}, in flight {pending}, unacknowledged {kept}, duplicates {dups}"
                ));
            }
        })
    };
    crate::run(&a.load, &sink, vins, tracker.clone()).await?;
    let cpu = sampler.await.ok().flatten();
    let broker = broker_sampler.await.ok().flatten();
    let generator = generator_sampler.await.ok().flatten();
    // Let what is in flight arrive: a frame counts as lost only if it has not arrived when
    // nothing has moved for 10 s (a loaded broker can lag by seconds), and at most 60 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = tracker.totals().0;
    let mut still = Instant::now();
    while Instant::now() < deadline && tracker.totals().1 > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = tracker.totals().0;
        if now != last {
            last = now;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    ticker.abort();
    progress.finish_and_clear();
    let _ = stop.send(true);
    let _ = observer.await;
    let fmt = a.load.format.as_str();
    Ok(Report::build(
        label,
        a.load.vehicles,
        a.load.rate,
        a.load.qos,
        fmt,
        a.load.duration.as_secs_f64(),
        &tracker,
        cpu,
        broker,
        generator,
    ))
}

/// A process's CPU over the measured window (after the warm-up), and its resident memory at
/// its largest.
async fn sample(
    pid: Option<i32>,
    (warm_up, duration): (Duration, Duration),
) -> Option<(ProcSample, ProcSample)> {
    let pid = pid?;
    tokio::time::sleep(warm_up).await;
    let first = ProcSample::read(pid)?;
    let mut max_rss = first.rss_bytes;
    let end = Instant::now() + duration;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        max_rss = max_rss.max(ProcSample::read(pid).map_or(0, |s| s.rss_bytes));
    }
    let last = ProcSample::read(pid)?;
    Some((
        first,
        ProcSample {
            rss_bytes: max_rss.max(last.rss_bytes),
            ..last
        },
    ))
}

fn progress_bar(a: &LoadArgs, label: &str) -> indicatif::ProgressBar {
    if a.quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let total = (a.load.warm_up + a.load.duration).as_secs();
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>26} [{bar:30}] {pos}/{len}s {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_owned());
    pb
}
