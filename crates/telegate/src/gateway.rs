//! The wiring point: builds the running gateway from settings (policy, keys, Kafka topics
//! and sink, MQTT ingress, pipeline, endpoints) and shuts it down in order.

use crate::admin::{self, AdminContext};
use crate::http;
use crate::ledger::Ledger;
use crate::pipeline::Pipeline;
use crate::settings::Settings;
use crate::state::StateStore;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use telegate_kafka::{KafkaSink, LogWriter, SinkStats, ensure_topics};
use telegate_mqtt::Ingress;
use telegate_policy::{Keyring, Pack, TopicSpec};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The topics telegate keeps besides the pack's, behind the namespace.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Compacted: every vehicle's settings, consents and key material.
    pub state: String,
    /// Append-only audit of every change.
    pub ledger: String,
}

impl Topics {
    pub fn new(namespace: &str) -> Self {
        Self {
            state: format!("{namespace}telegate.consent-state"),
            ledger: format!("{namespace}telegate.consent-ledger"),
        }
    }
}

/// Where the policy pack comes from.
#[derive(Debug, Clone)]
pub enum PackSource {
    /// `settings.policy`.
    Settings,
    /// Text given in process (the demo's built-in pack).
    Inline { name: String, text: String },
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    ingress: Arc<Ingress>,
    admin_addr: Option<SocketAddr>,
    pack: Arc<Pack>,
    stop: watch::Sender<bool>,
    pipeline: JoinHandle<()>,
    ready: Arc<AtomicBool>,
    sink_stats: Arc<SinkStats>,
    state: Arc<StateStore>,
    ledger: Arc<Ledger>,
    ephemeral_keys: bool,
}

pub fn load_pack(source: &PackSource, settings: &Settings) -> anyhow::Result<Pack> {
    let (name, text) = match source {
        PackSource::Inline { name, text } => (name.clone(), text.clone()),
        PackSource::Settings => {
            let Some(path) = &settings.policy else {
                bail!("no policy pack: pass --policy PATH (packs/ in the repository has examples)")
            };
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read policy pack {}", path.display()))?;
            (path.display().to_string(), text)
        }
    };
    Pack::from_toml(&text).map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

/// Keys from the key file, else from `TELEGATE_KEYS` (the same TOML), else ephemeral.
pub fn load_keys(settings: &Settings) -> anyhow::Result<Keyring> {
    if let (None, Ok(text)) = (&settings.key_file, std::env::var("TELEGATE_KEYS")) {
        return Keyring::from_toml(&text).context("TELEGATE_KEYS");
    }
    match &settings.key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read key file {}", path.display()))?;
            Keyring::from_toml(&text).with_context(|| format!("key file {}", path.display()))
        }
        None => Ok(Keyring::ephemeral(rand::random())),
    }
}

impl Gateway {
    pub async fn start(settings: &Settings, pack: PackSource) -> anyhow::Result<Self> {
        // The recorder must exist before any counter is registered.
        let _ = http::metrics_handle();
        let ready = Arc::new(AtomicBool::new(false));
        if let Some(addr) = settings.metrics_listen {
            http::serve(addr, ready.clone())
                .await
                .with_context(|| format!("cannot listen for /metrics on {addr}"))?;
        }
        let namespace = &settings.kafka.topic_namespace;
        if !namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            bail!("kafka.topic_namespace {namespace:?}: use only a-z, A-Z, 0-9, '.', '_' and '-'");
        }
        let pack = Arc::new(load_pack(&pack, settings)?.with_topic_namespace(namespace));
        let keys = load_keys(settings)?;
        let ephemeral_keys = keys.is_ephemeral();
        if ephemeral_keys {
            tracing::warn!(
                "no key file: pseudonyms use an ephemeral key and change at every restart"
            );
        }

        let topics = Topics::new(namespace);
        let mut specs = pack.topics();
        specs.push(TopicSpec {
            name: topics.state.clone(),
            retention: Duration::ZERO,
            compact: true,
        });
        specs.push(TopicSpec {
            name: topics.ledger.clone(),
            retention: settings.ledger_retention,
            compact: false,
        });
        if settings.kafka.manage_topics {
            create_topics(settings, &specs).await?;
        }
        // Decisions need everyone's state: read it in full before taking a single frame.
        let state = StateStore::replicated(
            &settings.kafka,
            &topics.state,
            settings.kafka_startup_timeout,
        )
        .await?;
        if let Some(path) = &settings.state_file {
            state.load(path)?;
        }
        let ledger = Arc::new(Ledger::new(
            LogWriter::new(&settings.kafka).context("ledger writer")?,
            topics.ledger.clone(),
            keys.clone(),
        ));
        let sink = KafkaSink::new(&settings.kafka).context("Kafka producer")?;
        let sink_stats = sink.stats();
        let ingress_cfg = settings.mqtt.ingress();
        let (ingress, rx) = tokio::task::spawn_blocking(move || Ingress::start(&ingress_cfg))
            .await
            .context("ingress start-up")??;

        let ingress = Arc::new(ingress);
        let admin_addr = match settings.admin.listen {
            None => None,
            Some(listen) => {
                let ctx = AdminContext {
                    pack: pack.clone(),
                    state: state.clone(),
                    ledger: ledger.clone(),
                    ingress: ingress.clone(),
                    kafka: settings.kafka.clone(),
                    keys: keys.clone(),
                    block_grace: settings.admin.block_grace,
                };
                Some(start_admin(settings, listen, ctx).await?)
            }
        };
        let pipeline = Pipeline::new(
            pack.clone(),
            keys,
            settings.validation.config(),
            state.clone(),
            ledger.clone(),
            sink,
        );
        let (stop, stop_rx) = watch::channel(false);
        let flush = settings.shutdown_timeout;
        let pipeline = tokio::spawn(pipeline.run(rx, stop_rx, flush));
        ready.store(true, Ordering::Release);
        tracing::info!(policy = %pack.label(), "telegate ready");
        Ok(Self {
            ingress,
            admin_addr,
            pack,
            stop,
            pipeline,
            ready,
            sink_stats,
            state,
            ledger,
            ephemeral_keys,
        })
    }

    pub fn pack(&self) -> &Pack {
        &self.pack
    }

    pub fn ingress(&self) -> &Ingress {
        &self.ingress
    }

    /// The vehicles' settings and consents the decisions read.
    pub fn state(&self) -> &StateStore {
        &self.state
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn sink_stats(&self) -> &SinkStats {
        &self.sink_stats
    }

    /// Where the admin API listens, if it does.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn ephemeral_keys(&self) -> bool {
        self.ephemeral_keys
    }

    /// Stops taking frames, processes those already read, flushes Kafka.
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::Release);
        let _ = self.stop.send(true);
        if self.pipeline.await.is_err() {
            tracing::error!("pipeline task failed during shutdown");
        }
        tracing::info!(
            delivered = self.sink_stats.delivered(),
            failed = self.sink_stats.failed(),
            lost_in_broker = self.ingress.stats().lost(),
            "telegate stopped"
        );
    }
}

/// Serves the admin API and starts the sweeper that erases blocked accounts. Never without
/// a token: an open admin API would let anyone change consents.
async fn start_admin(
    settings: &Settings,
    listen: SocketAddr,
    ctx: AdminContext,
) -> anyhow::Result<SocketAddr> {
    let Some(token) = settings.admin.resolve_token()?.filter(|t| t.len() >= 16) else {
        bail!(
            "admin.listen is set, but there is no admin token of at least 16 characters: \
             set admin.token, admin.token_file or TELEGATE_ADMIN_TOKEN"
        )
    };
    let ctx = Arc::new(ctx);
    tokio::spawn(admin::sweep_blocked(
        ctx.clone(),
        settings.admin.sweep_interval,
    ));
    let addr = admin::serve(listen, token, ctx)
        .await
        .with_context(|| format!("cannot serve the admin API on {listen}"))?;
    tracing::info!(%addr, "admin API listening");
    Ok(addr)
}

/// Creates telegate's topics, retrying while Kafka is not reachable yet.
async fn create_topics(settings: &Settings, specs: &[TopicSpec]) -> anyhow::Result<()> {
    let deadline = Instant::now() + settings.kafka_startup_timeout;
    let mut wait = Duration::from_millis(200);
    loop {
        match ensure_topics(&settings.kafka, specs).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() + wait < deadline => {
                tracing::warn!(error = %e, "Kafka not ready; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "Kafka at {} did not accept telegate's topics within {:?}",
                        settings.kafka.bootstrap, settings.kafka_startup_timeout
                    )
                });
            }
        }
    }
}
