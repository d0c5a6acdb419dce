//! The wiring point: builds the running gateway from a checked configuration (policy, keys,
//! Kafka topics and sink, consent state, MQTT ingress, pipeline, endpoints) and shuts it down
//! in order.

use crate::admin::{self, AdminContext};
use crate::config::{Checked, Config, PackSource};
use crate::console::{self, timeline::LedgerIndex};
use crate::frame_stats::FrameStats;
use crate::http;
use crate::ledger::Ledger;
use crate::pipeline::Pipeline;
use crate::requests::{Directory, Requests};
use crate::roll;
use crate::state::StateStore;
use crate::traces::Traces;
use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use telegate_frame::Vin;
use telegate_kafka::{KafkaSink, LogWriter, Run, SinkStats, ensure_topics};
use telegate_mqtt::{Edge, VehicleGate};
use telegate_policy::{Account, Pack, TopicSpec, consent_topics, vehicle_requests_topic};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One step of the shutdown order: the token that tells its tasks to stop, and the tasks,
/// each spawned on its tracker.
#[derive(Debug, Default)]
struct Stage {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Stage {
    fn run(&self) -> Run<'_> {
        Run {
            tasks: &self.tasks,
            stop: &self.stop,
        }
    }

    /// Tells its tasks to stop and returns once every one has ended.
    async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// A running gateway. It owns every task it started and stops them in order.
#[derive(Debug)]
pub struct Gateway {
    edge: Arc<Edge>,
    admin_addr: Option<SocketAddr>,
    console_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    pack: Arc<Pack>,
    /// The roll markers on the consent-state topic, stopped first.
    roll: Stage,
    /// The admin API, the console (and its ledger follower), the sweeper and the follower of
    /// requests to vehicles.
    admin: Stage,
    /// The pipeline: drains what arrived, flushes the sink.
    pipeline: Stage,
    /// The HTTP endpoints, stopped last.
    http: Stage,
    /// The frames' traces: what is left is exported after the pipeline's end.
    traces: Traces,
    ready: Arc<AtomicBool>,
    sink_stats: Arc<SinkStats>,
    frame_stats: Arc<FrameStats>,
    state: Arc<StateStore>,
    ledger: Arc<Ledger>,
    ephemeral_keys: bool,
    shutdown_timeout: Duration,
}

impl Gateway {
    /// Checks the whole configuration (every problem at once), then starts.
    pub async fn start(config: &Config, pack: PackSource) -> anyhow::Result<Self> {
        let checked = config.check(&pack)?;
        Self::start_checked(checked).await
    }

    pub async fn start_checked(checked: Checked) -> anyhow::Result<Self> {
        let specs = checked.topics();
        let Checked {
            config,
            pack,
            keys,
            admin: admin_access,
            console: console_access,
            state: state_file,
            registry,
        } = checked;
        // The recorder must exist before any counter is registered.
        let _ = http::metrics_handle();
        let ready = Arc::new(AtomicBool::new(false));
        let http = Stage::default();
        let metrics_addr = match config.metrics_listen {
            None => None,
            Some(addr) => Some(
                http::serve(addr, ready.clone(), http.stop.clone(), &http.tasks)
                    .await
                    .with_context(|| format!("cannot listen for /metrics on {addr}"))?,
            ),
        };
        let mut pack = pack;
        if let Some(registry) = &registry {
            registry.register(&mut pack).await?;
        }
        let pack = Arc::new(pack);
        let ephemeral_keys = keys.is_ephemeral();
        if ephemeral_keys {
            tracing::warn!(
                "no key file: pseudonyms use an ephemeral key and change at every restart, and the consent state written now cannot be read after one"
            );
        }

        let [state_topic, ledger_topic] =
            consent_topics(&config.kafka.topic_namespace, config.ledger_retention);
        let requests_topic = vehicle_requests_topic(&config.kafka.topic_namespace);
        if config.kafka.manage_topics {
            create_topics(&config, &specs).await?;
        }
        // Decisions need everyone's state: read it in full before taking a single frame.
        let state = StateStore::replicated(
            &config.kafka,
            &state_topic.name,
            config.kafka_startup_timeout,
            keys.state().clone(),
        )
        .await?;
        let unread = state.unread();
        if unread.total() > 0 {
            if !ephemeral_keys {
                state.close(Duration::from_secs(1)).await;
                anyhow::bail!(
                    "{} records of {} cannot be read with this key file ({unread}). Starting \
                     would give those vehicles fresh records and lose their consents and \
                     pseudonyms: list the index key and wrapping keys they were written with \
                     (docs/operations.md, \"Keys and key rotation\")",
                    unread.total(),
                    state_topic.name
                );
            }
            tracing::error!(
                records = unread.total(),
                reasons = %unread,
                "consent-state records written under other keys cannot be read with an ephemeral key"
            );
        }
        if let Some(file) = &state_file {
            state.load(file)?;
        }
        // The ledger's writer also writes the consent-state topic's roll markers.
        let writer = LogWriter::new(&config.kafka).context("ledger writer")?;
        // The console's timeline: this instance's ledger entries at once, every instance's
        // through the topic.
        let ledger_index = console_access
            .as_ref()
            .map(|_| Arc::new(LedgerIndex::default()));
        let mut ledger = Ledger::new(writer.clone(), ledger_topic.name.clone(), keys.clone());
        if let Some(index) = &ledger_index {
            ledger = ledger.with_index(index.clone());
        }
        let ledger = Arc::new(ledger);
        let sink = KafkaSink::new(&config.kafka).context("Kafka producer")?;
        let sink_stats = sink.stats();
        let pipeline = Pipeline::new(
            pack.clone(),
            keys.clone(),
            config.validation.clone(),
            state.clone(),
            ledger.clone(),
            sink,
        );
        let frame_stats = pipeline.frame_stats();
        // A blocked vehicle may not connect; its live connection is closed when it is blocked.
        let gate_state = state.clone();
        let gate: VehicleGate = Arc::new(move |vin: &Vin| {
            gate_state.with(vin, |r| {
                !r.is_some_and(|r| matches!(r.account, Account::Blocked { .. }))
            })
        });
        // Which vehicle a state key on the request topic names, for those that connect here.
        let directory = Arc::new(Directory::new(keys.state().clone()));
        let gate = directory.watching(gate);
        let (edge, rx) = Edge::start(&config.mqtt, gate)
            .await
            .context("starting the MQTT edge")?;
        let edge = Arc::new(edge);
        let admin = Stage::default();
        // Requests to vehicles connected to another instance go through Kafka, and this
        // instance delivers those for its own; it stops with the admin API.
        let requests = Requests::new(
            &config.kafka,
            requests_topic.name,
            edge.clone(),
            state.clone(),
            directory,
        )?;
        requests.follow(&config.kafka, admin.run())?;
        // The admin API and the console share one context: the same changes, the same rights.
        let serves_admin = config.admin.listen.is_some() && admin_access.is_some();
        let serves_console = config.console.listen.is_some() && console_access.is_some();
        let ctx = (serves_admin || serves_console).then(|| {
            Arc::new(AdminContext {
                pack: pack.clone(),
                state: state.clone(),
                ledger: ledger.clone(),
                edge: edge.clone(),
                frames: frame_stats.clone(),
                requests: requests.clone(),
                kafka: config.kafka.clone(),
                keys: keys.clone(),
                block_grace: config.admin.block_grace,
            })
        });
        if let Some(ctx) = &ctx {
            admin.tasks.spawn(admin::sweep_blocked(
                ctx.clone(),
                config.admin.sweep_interval,
                admin.stop.clone(),
            ));
        }
        let admin_addr = match (config.admin.listen, admin_access, &ctx) {
            (Some(listen), Some(access), Some(ctx)) => {
                let addr = admin::serve(
                    listen,
                    access,
                    ctx.clone(),
                    admin.stop.clone(),
                    &admin.tasks,
                )
                .await
                .with_context(|| format!("cannot serve the admin API on {listen}"))?;
                tracing::info!(%addr, "admin API listening");
                Some(addr)
            }
            _ => None,
        };
        let console_addr = match (config.console.listen, console_access, &ctx, ledger_index) {
            (Some(listen), Some(access), Some(ctx), Some(index)) => {
                index.follow(&config.kafka, &ledger_topic.name, admin.run())?;
                let addr = console::serve(
                    listen,
                    access,
                    ctx.clone(),
                    index,
                    admin.stop.clone(),
                    &admin.tasks,
                )
                .await
                .with_context(|| format!("cannot serve the console on {listen}"))?;
                tracing::info!(%addr, "console listening");
                Some(addr)
            }
            _ => None,
        };
        let (trace_config, traced_pack) = (config.traces.clone(), pack.clone());
        let traces = tokio::task::spawn_blocking(move || Traces::start(&trace_config, traced_pack))
            .await
            .context("the trace exporter's start did not finish")??;
        let pipeline = pipeline.with_traces(traces.clone());
        let running = Stage::default();
        running
            .tasks
            .spawn(pipeline.run(rx, running.stop.clone(), config.shutdown_timeout));
        // Started after the last step that can fail, so that every start that returns a
        // gateway also stops it.
        let roll = Stage::default();
        if config.state_roll_interval.is_zero() {
            tracing::warn!(
                "state_roll_interval is 0s: an erased vehicle's earlier record stays in the log \
                 until something else is written to its partition of the consent-state topic"
            );
        } else {
            roll.tasks.spawn(roll::keep_rolling(
                writer,
                state_topic.name,
                config.state_roll_interval,
                roll.stop.clone(),
            ));
        }
        ready.store(true, Ordering::Release);
        tracing::info!(policy = %pack.label(), "telegate ready");
        Ok(Self {
            edge,
            admin_addr,
            console_addr,
            metrics_addr,
            pack,
            roll,
            admin,
            pipeline: running,
            http,
            traces,
            ready,
            sink_stats,
            frame_stats,
            state,
            ledger,
            ephemeral_keys,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    pub fn pack(&self) -> &Pack {
        &self.pack
    }

    /// The MQTT edge: where it listens, what it counted.
    pub fn edge(&self) -> &Edge {
        &self.edge
    }

    /// The vehicles' settings and consents the decisions read.
    pub fn state(&self) -> &StateStore {
        &self.state
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// What the Kafka sink delivered and lost; shared, so it can be watched from elsewhere.
    pub fn sink_stats(&self) -> Arc<SinkStats> {
        self.sink_stats.clone()
    }

    /// What the pipeline made of the frames since this gateway started.
    pub fn frame_stats(&self) -> &FrameStats {
        &self.frame_stats
    }

    /// Where the console listens, if it does.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_addr
    }

    /// Where the admin API listens, if it does.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn ephemeral_keys(&self) -> bool {
        self.ephemeral_keys
    }

    /// Stops in order: not ready; the roll markers on the consent-state topic; the admin API,
    /// the console (its event streams end), the sweeper and the follower of requests to
    /// vehicles (calls under way finish); the MQTT
    /// edge (no new connections, every connection closed; unacknowledged QoS 1 frames stay with
    /// their vehicles); the pipeline (frames already read are processed, records flushed to
    /// Kafka); the consent state (every change written to its topic); the traces (the spans
    /// left are exported); the HTTP endpoints last.
    ///
    /// Each step tells its tasks to stop and waits until every one has ended; when this
    /// returns, no task the gateway started is running.
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::Release);
        self.roll.stop().await;
        self.admin.stop().await;
        self.edge.shutdown().await;
        self.pipeline.stop().await;
        self.state.close(self.shutdown_timeout).await;
        self.traces.shutdown(self.shutdown_timeout).await;
        self.http.stop().await;
        tracing::info!(
            delivered = self.sink_stats.delivered(),
            failed = self.sink_stats.failed(),
            "telegate stopped"
        );
    }
}

/// Creates telegate's topics, retrying while Kafka is not reachable yet: 200 ms, doubling up to
/// 5 s between tries, until `kafka_startup_timeout` has passed on the clock (a try itself may
/// wait for the broker; it is cut short there too).
async fn create_topics(config: &Config, specs: &[TopicSpec]) -> anyhow::Result<()> {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times();
    let tries = (|| ensure_topics(&config.kafka, specs))
        .retry(backoff)
        .notify(|e, _| tracing::warn!(error = %e, "Kafka not ready; retrying"));
    let gave_up = || {
        format!(
            "Kafka at {} did not accept telegate's topics within {:?}",
            config.kafka.bootstrap, config.kafka_startup_timeout
        )
    };
    match tokio::time::timeout(config.kafka_startup_timeout, tries).await {
        Ok(created) => created.with_context(gave_up),
        Err(_) => Err(anyhow::anyhow!(gave_up())),
    }
}
