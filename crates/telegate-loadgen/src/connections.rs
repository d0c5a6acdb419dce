//! Connection scale: hold many idle vehicle connections against a gateway and read its
//! resident memory before and after. Each connection is a bare MQTT 3.1.1 CONNECT whose
//! CONNACK is awaited, then left idle: the gateway's cost per parked vehicle, not a client's.
//! Over mutual TLS each connection is a different vehicle presenting its own certificate,
//! all issued and loaded before the connects are timed.

use crate::ProcSample;
use crate::tls::FleetTls;
use anyhow::Context;
use rustls_pki_types::ServerName;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// What to hold, where.
#[derive(Debug, Clone)]
pub struct HoldConfig {
    /// The gateway's MQTT listener: its TLS listener when `tls` is set.
    pub target: SocketAddr,
    /// The gateway's pid, for its memory and CPU.
    pub pid: i32,
    pub connections: usize,
    /// Source addresses to spread connections over.
    pub sources: Vec<IpAddr>,
    /// This process's open-file limit, reported beside the figures.
    pub open_file_limit: u64,
    /// Connects under way at once.
    pub in_flight: usize,
    /// Connect over mutual TLS, connection `i` as vehicle `i` of this fleet.
    pub tls: Option<Arc<FleetTls>>,
    /// After measuring, this many times: close every connection and open them all again.
    /// With TLS the vehicles then offer the sessions the gateway gave them (resumption).
    pub reconnect_rounds: usize,
}

#[derive(Debug, serde::Serialize)]
pub struct ConnectionScale {
    /// `mqtt` (plain TCP, anonymous) or `mqtt+tls` (mutual TLS, one certificate per vehicle).
    pub transport: &'static str,
    pub requested: usize,
    pub held: usize,
    pub failed: usize,
    /// Failed connects by the step that failed: tcp, tls, mqtt or timeout.
    pub failures: BTreeMap<&'static str, usize>,
    pub open_file_limit: u64,
    pub in_flight: usize,
    pub connect_seconds: f64,
    pub connects_per_second: f64,
    /// Connections the kernel dropped at a full accept queue while connecting (system-wide,
    /// from /proc/net/netstat). Each one's client resent its SYN a second later, so a few of
    /// them set the connect time.
    pub listen_overflows: Option<u64>,
    /// The gateway's CPU time (user + system) while connecting, per connection held.
    pub gateway_cpu_us_per_connection: f64,
    /// This process's CPU time while connecting, per connection held: the clients' side of
    /// the handshakes, which shares the machine with the gateway.
    pub generator_cpu_us_per_connection: f64,
    pub gateway_rss_before_bytes: u64,
    pub gateway_rss_after_bytes: u64,
    pub bytes_per_connection: f64,
    pub tls: Option<TlsSummary>,
    pub reconnect: Option<Reconnect>,
}

/// The handshakes of a TLS run, and what was prepared before it.
#[derive(Debug, Default, serde::Serialize)]
pub struct TlsSummary {
    pub certificates: usize,
    pub certificates_issued_now: usize,
    pub prepare_seconds: f64,
    pub prepared: &'static str,
    /// As negotiated on the first connection (every connection offers the same).
    pub protocol: Option<String>,
    pub cipher_suite: Option<String>,
    pub key_exchange: Option<String>,
    pub full_handshakes: usize,
    pub resumed_handshakes: usize,
}

/// The rounds of connects after the first, each after every connection of the one before
/// was closed; figures are over all of them.
#[derive(Debug, Default, serde::Serialize)]
pub struct Reconnect {
    pub rounds: usize,
    /// Connections made, all rounds together.
    pub held: usize,
    pub failed: usize,
    pub connect_seconds: f64,
    pub connects_per_second: f64,
    pub listen_overflows: Option<u64>,
    pub gateway_cpu_us_per_connection: f64,
    pub generator_cpu_us_per_connection: f64,
    /// TLS only: handshakes that resumed a session of the first round.
    pub resumed_handshakes: usize,
}

/// A clean-session CONNECT: an idle connection keeps nothing at the target.
fn connect_packet(client_id: &str, keep_alive_s: u16) -> Vec<u8> {
    let mut packet = Vec::new();
    crate::lean::wire::connect(&mut packet, client_id, keep_alive_s, true);
    packet
}

/// Where a connect failed: a bounded set, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Tcp,
    Tls,
    Mqtt,
    Timeout,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::Tcp => "tcp",
            Failure::Tls => "tls",
            Failure::Mqtt => "mqtt",
            Failure::Timeout => "timeout",
        }
    }
}

/// An idle connection (plain or TLS), open for as long as it is held.
type Held = Box<dyn Send>;

/// What one TLS handshake negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Negotiated {
    resumed: bool,
    protocol: Option<String>,
    cipher_suite: Option<String>,
    key_exchange: Option<String>,
}

impl Negotiated {
    fn of(stream: &TlsStream<TcpStream>) -> Self {
        let c = stream.get_ref().1;
        Self {
            resumed: c.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            protocol: c.protocol_version().map(|v| format!("{v:?}")),
            cipher_suite: c
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite())),
            key_exchange: c
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name())),
        }
    }
}

async fn mqtt_connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    id: usize,
) -> Result<(), Failure> {
    stream
        .write_all(&connect_packet(&format!("idle-{id}"), 900))
        .await
        .map_err(|_| Failure::Mqtt)?;
    let mut ack = [0u8; 4];
    stream
        .read_exact(&mut ack)
        .await
        .map_err(|_| Failure::Mqtt)?;
    // CONNACK, accepted, no session present.
    match ack {
        [0x20, 0x02, 0x00, 0x00] => Ok(()),
        _ => Err(Failure::Mqtt),
    }
}

async fn connect(
    target: SocketAddr,
    source: IpAddr,
    id: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(Held, Option<Negotiated>), Failure> {
    let socket = TcpSocket::new_v4().map_err(|_| Failure::Tcp)?;
    // Closed with a reset, the connection leaves no TIME_WAIT behind on the source address.
    // With tens of thousands of those (for a minute after each run), every bind to a free
    // port cost the kernel 1 to 5 ms, charged to this process, and slowed the next round.
    socket.set_zero_linger().map_err(|_| Failure::Tcp)?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|_| Failure::Tcp)?;
    let mut tcp = socket.connect(target).await.map_err(|_| Failure::Tcp)?;
    match tls {
        None => {
            mqtt_connect(&mut tcp, id).await?;
            Ok((Box::new(tcp), None))
        }
        Some(config) => {
            let name = ServerName::IpAddress(target.ip().into());
            let mut stream = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|_| Failure::Tls)?;
            mqtt_connect(&mut stream, id).await?;
            // Read after the CONNACK: the session tickets that came before it are stored.
            let negotiated = Negotiated::of(&stream);
            Ok((Box::new(stream), Some(negotiated)))
        }
    }
}

/// One round of connects and what it cost.
struct Round {
    held: Vec<Held>,
    failures: BTreeMap<&'static str, usize>,
    negotiated: Vec<Negotiated>,
    seconds: f64,
    listen_overflows: Option<u64>,
    gateway_cpu_s: f64,
    generator_cpu_s: f64,
}

impl Round {
    fn failed(&self) -> usize {
        self.failures.values().sum()
    }

    fn per_second(&self) -> f64 {
        self.held.len() as f64 / self.seconds.max(1e-9)
    }

    fn us_per_connection(&self, cpu_s: f64) -> f64 {
        cpu_s * 1e6 / self.held.len().max(1) as f64
    }

    fn resumed(&self) -> usize {
        self.negotiated.iter().filter(|n| n.resumed).count()
    }
}

/// The kernel's count of connections dropped at a full accept queue (`TcpExt:
/// ListenOverflows`), all listeners together.
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let at = names
            .split_whitespace()
            .position(|n| n == "ListenOverflows")?;
        return values.split_whitespace().nth(at)?.parse().ok();
    }
    None
}

fn cpu_s(pid: i32) -> anyhow::Result<f64> {
    Ok(ProcSample::read(pid)
        .context("reading CPU time from /proc (is the gateway's pid right?)")?
        .cpu_s)
}

async fn round(cfg: &HoldConfig) -> anyhow::Result<Round> {
    anyhow::ensure!(!cfg.sources.is_empty(), "at least one source address");
    let own = std::process::id() as i32;
    let (gateway_before, own_before) = (cpu_s(cfg.pid)?, cpu_s(own)?);
    let overflows_before = listen_overflows();
    let gate = Arc::new(Semaphore::new(cfg.in_flight.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..cfg.connections {
        let permit = gate.clone().acquire_owned().await?;
        let source = cfg.sources[i % cfg.sources.len()];
        let tls = match &cfg.tls {
            Some(tls) => Some(
                tls.config(i)
                    .with_context(|| format!("no TLS identity for connection {i}"))?,
            ),
            None => None,
        };
        let target = cfg.target;
        tasks.spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(30), connect(target, source, i, tls))
                .await
                .unwrap_or(Err(Failure::Timeout));
            drop(permit);
            r
        });
    }
    let mut held = Vec::with_capacity(cfg.connections);
    let mut negotiated = Vec::new();
    let mut failures = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok((stream, n))) => {
                held.push(stream);
                negotiated.extend(n);
            }
            Ok(Err(why)) => *failures.entry(why.as_str()).or_default() += 1,
            Err(_) => *failures.entry("task").or_default() += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Round {
        held,
        failures,
        negotiated,
        seconds,
        listen_overflows: listen_overflows()
            .zip(overflows_before)
            .map(|(after, before)| after.saturating_sub(before)),
        gateway_cpu_s: cpu_s(cfg.pid)? - gateway_before,
        generator_cpu_s: cpu_s(own)? - own_before,
    })
}

/// Opens the connections, holds them while memory settles, reports; then closes them and
/// opens them all again, `reconnect_rounds` times.
pub async fn hold(cfg: &HoldConfig) -> anyhow::Result<ConnectionScale> {
    let before = ProcSample::read(cfg.pid)
        .context("reading the gateway's memory (is the gateway's pid right?)")?;
    let first = round(cfg).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = ProcSample::read(cfg.pid).context("reading the gateway's memory")?;
    let count = first.held.len();
    let tls = cfg.tls.as_ref().map(|tls| {
        let sample = first.negotiated.first().cloned();
        TlsSummary {
            certificates: tls.vehicles(),
            certificates_issued_now: tls.issued,
            prepare_seconds: tls.prepare_seconds,
            prepared: "before the timed connects; issuing is not measured",
            protocol: sample.as_ref().and_then(|n| n.protocol.clone()),
            cipher_suite: sample.as_ref().and_then(|n| n.cipher_suite.clone()),
            key_exchange: sample.and_then(|n| n.key_exchange),
            full_handshakes: first.negotiated.len() - first.resumed(),
            resumed_handshakes: first.resumed(),
        }
    });
    let mut scale = ConnectionScale {
        transport: if cfg.tls.is_some() {
            "mqtt+tls"
        } else {
            "mqtt"
        },
        requested: cfg.connections,
        held: count,
        failed: first.failed(),
        failures: first.failures.clone(),
        open_file_limit: cfg.open_file_limit,
        in_flight: cfg.in_flight,
        connect_seconds: first.seconds,
        connects_per_second: first.per_second(),
        listen_overflows: first.listen_overflows,
        gateway_cpu_us_per_connection: first.us_per_connection(first.gateway_cpu_s),
        generator_cpu_us_per_connection: first.us_per_connection(first.generator_cpu_s),
        gateway_rss_before_bytes: before.rss_bytes,
        gateway_rss_after_bytes: after.rss_bytes,
        bytes_per_connection: after.rss_bytes.saturating_sub(before.rss_bytes) as f64
            / count.max(1) as f64,
        tls,
        reconnect: None,
    };
    drop(first);
    if cfg.reconnect_rounds > 0 {
        let mut total = Reconnect::default();
        let (mut gateway_cpu_s, mut generator_cpu_s) = (0.0, 0.0);
        // Unknown if any round's count is.
        let mut overflows = Some(0);
        for _ in 0..cfg.reconnect_rounds {
            // Let the gateway see every close before the vehicles come back.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let again = round(cfg).await?;
            total.rounds += 1;
            total.held += again.held.len();
            total.failed += again.failed();
            total.connect_seconds += again.seconds;
            total.resumed_handshakes += again.resumed();
            overflows = overflows.zip(again.listen_overflows).map(|(a, b)| a + b);
            gateway_cpu_s += again.gateway_cpu_s;
            generator_cpu_s += again.generator_cpu_s;
        }
        let per_connection = |cpu_s: f64| cpu_s * 1e6 / total.held.max(1) as f64;
        total.listen_overflows = overflows;
        total.connects_per_second = total.held as f64 / total.connect_seconds.max(1e-9);
        total.gateway_cpu_us_per_connection = per_connection(gateway_cpu_s);
        total.generator_cpu_us_per_connection = per_connection(generator_cpu_s);
        scale.reconnect = Some(total);
    }
    Ok(scale)
}

#[cfg(test)]
mod tests {
    #[test]
    fn connect_packets_are_well_formed() {
        let p = super::connect_packet("idle-1", 900);
        assert_eq!(p[0], 0x10);
        assert_eq!(p[1] as usize, p.len() - 2);
        assert_eq!(&p[2..8], &[0, 4, b'M', b'Q', b'T', b'T']);
    }

    #[test]
    fn the_kernel_counts_accept_queue_overflows() {
        // Linux always has the counter; it only grows.
        let first = super::listen_overflows().expect("TcpExt ListenOverflows");
        assert!(super::listen_overflows().expect("again") >= first);
    }
}
