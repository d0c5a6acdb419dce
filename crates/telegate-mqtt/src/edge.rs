//! The running edge: listeners, the accept loops, the shared state of all connections, and
//! the housekeeping (expired sessions, CRL reloads).

use crate::budget::BufferBudget;
use crate::config::{EdgeConfig, Listener, Mode};
use crate::conn::Accepted;
use crate::external::External;
use crate::handshakes::Handshakes;
use crate::sessions::Registry;
use crate::signal::Signal;
use crate::tls::{Tls, TlsError, TlsFiles};
use crate::{Incoming, Refusal};
use bytes::Bytes;
use metrics::{Counter, Gauge};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use strum::{EnumCount, VariantArray};
use telegate_frame::Vin;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::sessions::{Delivery, Presence};

/// Whether a vehicle may connect at all (false for a blocked or erased vehicle). Asked at
/// every CONNECT and whenever an anonymous connection binds to a vehicle.
pub type VehicleGate = Arc<dyn Fn(&Vin) -> bool + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("MQTT settings: {0}")]
    Config(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen for MQTT on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// What the edge counts, readable in process (tests) as well as through `/metrics`.
#[derive(Debug)]
pub struct EdgeStats {
    received: AtomicU64,
    open: AtomicUsize,
    authenticated: AtomicUsize,
    refused: [AtomicU64; Refusal::COUNT],
    /// When each reason was last logged (milliseconds since `born`, 0 for never), and how
    /// many of it were counted since without a line.
    logged_at: [AtomicU64; Refusal::COUNT],
    unlogged: [AtomicU64; Refusal::COUNT],
    born: std::time::Instant,
    m: Metrics,
}

/// A reason of refusal is logged at most once in this long: a client repeating it as fast as
/// it can, or an attack, cannot fill the log; the next line says how many came meanwhile.
const LOG_EVERY_MS: u64 = 10_000;

#[derive(Debug)]
struct Metrics {
    received: Counter,
    received_qos0: Counter,
    resent: Counter,
    overran: Counter,
    throttled: Counter,
    accepted: Counter,
    open: Gauge,
    /// Connections not yet authenticated, and memory held for partial packets, as of the
    /// last housekeeping round.
    handshakes: Gauge,
    buffered: Gauge,
    refused: Vec<Counter>,
    requests: [Counter; 4],
    /// Client CRL files read after a change: in force, or refused (the previous one stays).
    crl_loaded: Counter,
    crl_failed: Counter,
}

impl EdgeStats {
    pub(crate) fn new() -> Self {
        let request = |result: &'static str| metrics::counter!("telegate_mqtt_requests_total", "result" => result);
        let m = Metrics {
            received: metrics::counter!("telegate_ingress_received_total"),
            received_qos0: metrics::counter!("telegate_mqtt_received_qos0_total"),
            resent: metrics::counter!("telegate_mqtt_received_dup_total"),
            overran: metrics::counter!("telegate_mqtt_window_overruns_total"),
            throttled: metrics::counter!("telegate_mqtt_throttled_total"),
            accepted: metrics::counter!("telegate_mqtt_connections_accepted_total"),
            open: metrics::gauge!("telegate_mqtt_connections_open"),
            handshakes: metrics::gauge!("telegate_mqtt_handshakes_waiting"),
            buffered: metrics::gauge!("telegate_mqtt_partial_packet_bytes"),
            crl_loaded: metrics::counter!("telegate_mqtt_crl_reloads_total", "result" => "loaded"),
            crl_failed: metrics::counter!("telegate_mqtt_crl_reloads_total", "result" => "failed"),
            refused: Refusal::VARIANTS
                .iter()
                .map(|r| metrics::counter!("telegate_mqtt_refused_total", "reason" => r.as_str()))
                .collect(),
            requests: [
                request("sent"),
                request("queued"),
                request("no-subscriber"),
                request("queue-full"),
            ],
        };
        // Register every series at zero, so that dashboards see them before the first event.
        for c in m.refused.iter().chain(&m.requests) {
            c.increment(0);
        }
        m.received.increment(0);
        m.resent.increment(0);
        m.overran.increment(0);
        m.crl_loaded.increment(0);
        m.crl_failed.increment(0);
        Self {
            received: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            authenticated: AtomicUsize::new(0),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            logged_at: std::array::from_fn(|_| AtomicU64::new(0)),
            unlogged: std::array::from_fn(|_| AtomicU64::new(0)),
            born: std::time::Instant::now(),
            m,
        }
    }

    /// Publishes handed to the pipeline.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Open connections, handshakes included.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections past CONNACK: the ones `max_connections` counts.
    pub fn authenticated_now(&self) -> usize {
        self.authenticated.load(Ordering::Relaxed)
    }

    pub(crate) fn authenticated(&self, change: isize) {
        match change >= 0 {
            true => self
                .authenticated
                .fetch_add(change.unsigned_abs(), Ordering::Relaxed),
            false => self
                .authenticated
                .fetch_sub(change.unsigned_abs(), Ordering::Relaxed),
        };
    }

    pub fn refused(&self, why: Refusal) -> u64 {
        self.refused[why.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn count_received(&self, qos: u8) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.m.received.increment(1);
        if qos == 0 {
            self.m.received_qos0.increment(1);
        }
    }

    /// A publish flagged DUP: the vehicle sends again what it got no PUBACK for, so the
    /// frame may be in Kafka twice.
    pub(crate) fn resent(&self) {
        self.m.resent.increment(1);
    }

    /// A QoS 1 publish beyond the receive maximum: the client sends more than it was told
    /// the edge takes unacknowledged (some libraries do). Not read further until PUBACKs
    /// make room, as for MQTT 3.1.1, which cannot be told.
    pub(crate) fn overran(&self) {
        self.m.overran.increment(1);
    }

    pub(crate) fn throttled(&self) {
        self.m.throttled.increment(1);
    }

    pub(crate) fn request(&self, d: Delivery) {
        let i = match d {
            Delivery::Sent => 0,
            Delivery::Queued => 1,
            Delivery::NoSubscriber => 2,
            Delivery::QueueFull => 3,
        };
        self.m.requests[i].increment(1);
    }

    /// Counts a refusal and logs it at INFO with its reason, at most one line per reason
    /// every 10 s (the line says how many more came since the last one).
    fn count_refused(&self, why: Refusal) {
        let i = why.index();
        self.refused[i].fetch_add(1, Ordering::Relaxed);
        self.m.refused[i].increment(1);
        let now = u64::try_from(self.born.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let last = self.logged_at[i].load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY_MS;
        if due
            && self.logged_at[i]
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let more = self.unlogged[i].swap(0, Ordering::Relaxed);
            tracing::info!(
                reason = why.as_str(),
                more_since_last_line = more,
                "{}",
                why.what()
            );
        } else {
            self.unlogged[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What every connection shares.
pub(crate) struct Shared {
    pub cfg: EdgeConfig,
    pub tx: mpsc::Sender<Incoming>,
    pub registry: Registry,
    pub gate: VehicleGate,
    pub tls: Option<Tls>,
    pub stats: Arc<EdgeStats>,
    /// Cancelled at shutdown: listeners stop accepting, connections close.
    pub stop: CancellationToken,
    /// The listeners', the housekeeping's and every connection's task.
    pub tasks: TaskTracker,
    /// Connections that have not authenticated yet.
    pub handshakes: Arc<Handshakes>,
    /// Memory for partial packets, all connections together.
    pub buffers: BufferBudget,
}

impl Shared {
    pub(crate) fn refused(&self, why: Refusal) {
        self.stats.count_refused(why);
    }
}

/// Counts an open connection for as long as it lives.
struct OpenGuard(Arc<Shared>);

impl OpenGuard {
    fn new(ctx: Arc<Shared>) -> Self {
        ctx.stats.open.fetch_add(1, Ordering::Relaxed);
        ctx.stats.m.open.increment(1.0);
        ctx.stats.m.accepted.increment(1);
        Self(ctx)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.stats.open.fetch_sub(1, Ordering::Relaxed);
        self.0.stats.m.open.decrement(1.0);
    }
}

/// The running edge: listeners, or in external-broker mode a client of that broker.
pub struct Edge {
    ctx: Arc<Shared>,
    listeners: Vec<(SocketAddr, Listener)>,
    external: Option<External>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("listeners", &self.listeners)
            .field("stats", &self.ctx.stats)
            .finish_non_exhaustive()
    }
}

impl Edge {
    /// Reads the TLS files, binds every listener and starts accepting, or with
    /// `mqtt.external` connects to that broker instead. Publishes arrive on the returned
    /// channel.
    pub async fn start(
        cfg: &EdgeConfig,
        gate: VehicleGate,
    ) -> Result<(Self, mpsc::Receiver<Incoming>), EdgeError> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            let text: Vec<String> = problems.iter().map(|(k, m)| format!("{k}: {m}")).collect();
            return Err(EdgeError::Config(text.join("; ")));
        }
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) if cfg.tls() => Some(
                Tls::load(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: cfg.client_ca.clone(),
                    client_crl: cfg.client_crl.clone(),
                    allow_anonymous: cfg.allow_anonymous,
                })?
                .0,
            ),
            _ => None,
        };
        let mut bound = Vec::new();
        for (addr, kind) in cfg.listeners() {
            let listener = listen(addr).map_err(|e| EdgeError::Bind(addr, e))?;
            let local = listener
                .local_addr()
                .map_err(|e| EdgeError::Bind(addr, e))?;
            bound.push((listener, local, kind));
        }
        let (tx, rx) = mpsc::channel(cfg.channel_capacity.max(1));
        let ctx = Arc::new(Shared {
            cfg: cfg.clone(),
            tx,
            registry: Registry::default(),
            gate,
            tls,
            stats: Arc::new(EdgeStats::new()),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            handshakes: Arc::new(Handshakes::new(
                cfg.max_handshakes
                    .unwrap_or_else(crate::handshakes::default_max_handshakes),
                cfg.max_handshakes_per_source,
            )),
            buffers: BufferBudget::new(cfg.max_buffered_bytes),
        });
        let external = match cfg.mode() {
            Mode::External(_) => Some(External::start(
                cfg,
                ctx.stats.clone(),
                ctx.tx.clone(),
                &ctx.stop,
                &ctx.tasks,
            )?),
            Mode::Listeners => None,
        };
        let mut listeners = Vec::new();
        for (listener, local, kind) in bound {
            listeners.push((local, kind));
            ctx.tasks.spawn(accept_loop(listener, kind, ctx.clone()));
        }
        ctx.tasks.spawn(housekeeping(ctx.clone()));
        if cfg.allow_anonymous {
            tracing::warn!(
                "MQTT accepts anonymous clients (development setting): each is held to the \
                 first vehicle its topics name"
            );
        }
        if external.is_none() {
            tracing::info!(?listeners, "MQTT edge listening");
        }
        Ok((
            Self {
                ctx,
                listeners,
                external,
            },
            rx,
        ))
    }

    /// Where each listener is bound (the real port when 0 was asked for).
    pub fn listeners(&self) -> &[(SocketAddr, Listener)] {
        &self.listeners
    }

    /// The bound address of the first listener of `kind`.
    pub fn local_addr(&self, kind: Listener) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(_, k)| *k == kind)
            .map(|(a, _)| *a)
    }

    /// Publishes a request to a vehicle on one of its platform topics (QoS 1 where it
    /// subscribed with QoS 1). Through an external broker it is published there, QoS 1:
    /// `Sent` means the broker was handed it, not that the vehicle subscribes.
    pub fn send(&self, vin: &Vin, topic: String, payload: Bytes) -> Delivery {
        let d = match &self.external {
            Some(external) => {
                if external.send(topic, payload) {
                    Delivery::Sent
                } else {
                    Delivery::QueueFull
                }
            }
            None => self
                .ctx
                .registry
                .send(vin, topic, payload, self.ctx.cfg.max_queued_requests),
        };
        self.ctx.stats.request(d);
        d
    }

    /// Whether the vehicle is connected to this edge or has a persistent session waiting
    /// here: where a request to it can go without another gateway instance. Behind an
    /// external broker every vehicle counts as connected: the broker reaches it wherever its
    /// connection is.
    pub fn presence(&self, vin: &Vin) -> Presence {
        match &self.external {
            Some(_) => Presence::Connected,
            None => self.ctx.registry.presence(vin),
        }
    }

    /// Closes a vehicle's live connection (blocked, erased). True if there was one. Behind
    /// an external broker the broker owns the connections: nothing to close here.
    pub fn close(&self, vin: &Vin, why: Refusal) -> bool {
        self.ctx.registry.close(vin, why)
    }

    pub fn stats(&self) -> Arc<EdgeStats> {
        self.ctx.stats.clone()
    }

    /// Stops accepting and closes every connection (MQTT 5 clients are told the server is
    /// shutting down), and returns once every task of the edge has ended. QoS 1 publishes not
    /// yet acknowledged stay with their vehicles. The channel of publishes ends when the edge
    /// is dropped.
    pub async fn shutdown(&self) {
        if let Some(external) = &self.external {
            external.disconnect();
        }
        self.ctx.stop.cancel();
        self.ctx.tasks.close();
        // Connections still in their handshake or CONNECT are told through their signal.
        self.ctx.handshakes.close_all(Refusal::ShuttingDown);
        self.ctx.tasks.wait().await;
    }
}

/// A listening socket with a backlog for a fleet that reconnects at once (the kernel caps it
/// at `net.core.somaxconn`).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

const LISTEN_BACKLOG: u32 = 4096;

async fn accept_loop(listener: TcpListener, kind: Listener, ctx: Arc<Shared>) {
    let stop = ctx.stop.clone();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, mostly: wait for connections to close.
                tracing::warn!(error = %e, listener = kind.as_str(), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let guard = OpenGuard::new(ctx.clone());
        // Until CONNACK the connection holds a place among those not yet authenticated;
        // taking it may close another to make room.
        let signal = Arc::new(Signal::default());
        let new = Accepted {
            pending: ctx.handshakes.admit(peer.ip(), signal.clone()),
            signal,
        };
        // One task per connection, of the listener's kind: a plain connection's task holds
        // nothing of TLS.
        let ctx = guard.0.clone();
        let tasks = ctx.tasks.clone();
        if kind == Listener::Tls && ctx.tls.is_some() {
            tasks.spawn(async move {
                crate::conn::tls(tcp, ctx, new).await;
                drop(guard);
            });
        } else {
            tasks.spawn(async move {
                crate::conn::plain(tcp, kind, ctx, new).await;
                drop(guard);
            });
        }
    }
}

/// Expired sessions go; a changed CRL takes effect for new handshakes and closes the live
/// connections of the certificates it revokes; connections whose certificate expired close.
async fn housekeeping(ctx: Arc<Shared>) {
    let stop = ctx.stop.clone();
    let period = ctx.cfg.crl_check_interval.max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        ctx.registry.sweep();
        ctx.stats.m.handshakes.set(ctx.handshakes.waiting() as f64);
        ctx.stats.m.buffered.set(ctx.buffers.used() as f64);
        let Some(tls) = &ctx.tls else { continue };
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let expired = ctx.registry.close_expired(now_s);
        if expired > 0 {
            tracing::info!(
                closed = expired,
                "connections closed at their certificate's expiry"
            );
        }
        match tls.reload_if_changed() {
            Ok(None) => {}
            Ok(Some(revoked)) => {
                ctx.stats.m.crl_loaded.increment(1);
                let closed = ctx.registry.close_revoked(&revoked);
                tracing::info!(revoked = revoked.len(), closed, "client CRL reloaded");
            }
            Err(e) => {
                ctx.stats.m.crl_failed.increment(1);
                tracing::error!(error = %e, "client CRL not reloaded; the previous one stays in force")
            }
        }
    }
}
