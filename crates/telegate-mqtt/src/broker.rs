//! Configures and starts the embedded broker.

use crate::reader::{self, Incoming, IngressStats};
use rumqttd::local::LinkTx;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Broker and link settings. The defaults size the in-memory log for bursts of a few
/// hundred thousand frames.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngressConfig {
    /// MQTT 3.1.1 listener; `None` disables it.
    #[serde(rename = "listen")]
    pub v4_listen: Option<SocketAddr>,
    /// MQTT 5 listener; `None` disables it.
    #[serde(rename = "listen_v5")]
    pub v5_listen: Option<SocketAddr>,
    pub max_connections: usize,
    /// The broker drops the connection of a client that sends a larger packet. Keep it above
    /// the validation limit so that oversize frames get a counted rejection instead.
    pub max_packet_bytes: usize,
    /// Time a client has to send CONNECT after opening the socket.
    pub connect_timeout_ms: u16,
    pub max_inflight: usize,
    /// Size of one segment of the broker's in-memory log, in bytes.
    pub segment_bytes: usize,
    /// Segments kept in memory; older ones are evicted (and their unread frames lost).
    pub segment_count: usize,
    /// The bounded channel from the link reader to the pipeline.
    pub channel_capacity: usize,
    /// The MQTT filter the link subscribes to: the contract's, not a setting.
    #[serde(skip)]
    pub filter: String,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            v4_listen: None,
            v5_listen: None,
            max_connections: 100_000,
            max_packet_bytes: 256 * 1024,
            connect_timeout_ms: 10_000,
            max_inflight: 100,
            segment_bytes: 64 * 1024 * 1024,
            segment_count: 8,
            channel_capacity: 8_192,
            filter: "/tenants/+/v1/+".to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("no MQTT listener configured: set a v4 and/or v5 listen address")]
    NoListener,
    #[error("the broker refused the local link: {0}")]
    Link(String),
    #[error("could not start the broker thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("MQTT listener {0} did not accept connections within {1:?} (is the port in use?)")]
    NotListening(SocketAddr, Duration),
}

/// The running ingress. The broker has no shutdown API: it lives as long as the process.
pub struct Ingress {
    /// Publishes to vehicles (receipts, requests) and holds the subscription.
    link_tx: std::sync::Mutex<LinkTx>,
    stats: Arc<IngressStats>,
    listeners: Vec<SocketAddr>,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("listeners", &self.listeners)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Ingress {
    /// Starts the broker and the link reader; returns once every listener accepts
    /// connections. Frames arrive on the returned channel.
    pub fn start(cfg: &IngressConfig) -> Result<(Self, mpsc::Receiver<Incoming>), IngressError> {
        let listeners: Vec<SocketAddr> = cfg
            .v4_listen
            .iter()
            .chain(&cfg.v5_listen)
            .copied()
            .collect();
        if listeners.is_empty() {
            return Err(IngressError::NoListener);
        }
        let broker = Broker::new(broker_config(cfg));
        // Links must be taken before the broker moves into its thread.
        let (mut link_tx, link_rx) = broker
            .link("telegate-ingress")
            .map_err(|e| IngressError::Link(e.to_string()))?;
        link_tx
            .subscribe(cfg.filter.clone())
            .map_err(|e| IngressError::Link(e.to_string()))?;
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                let mut broker = broker;
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded MQTT broker stopped");
                }
            })?;
        let stats = Arc::new(IngressStats::default());
        let (tx, rx) = mpsc::channel(cfg.channel_capacity);
        reader::spawn(link_rx, tx, stats.clone())?;
        let timeout = Duration::from_secs(10);
        for addr in &listeners {
            wait_listening(*addr, timeout)?;
        }
        tracing::info!(?listeners, "MQTT ingress listening");
        Ok((
            Self {
                link_tx: std::sync::Mutex::new(link_tx),
                stats,
                listeners,
            },
            rx,
        ))
    }

    /// Publishes to the vehicles subscribed to `topic` (e.g. `/tenants/{VIN}/v1/request`).
    pub fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), IngressError> {
        let mut link = self
            .link_tx
            .lock()
            .map_err(|_| IngressError::Link("link lock poisoned".into()))?;
        link.publish(topic, payload)
            .map(|_| ())
            .map_err(|e| IngressError::Link(e.to_string()))
    }

    pub fn stats(&self) -> &IngressStats {
        &self.stats
    }
}

fn wait_listening(addr: SocketAddr, timeout: Duration) -> Result<(), IngressError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(IngressError::NotListening(addr, timeout))
}

fn broker_config(cfg: &IngressConfig) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: cfg.connect_timeout_ms,
        max_payload_size: cfg.max_packet_bytes,
        max_inflight_count: cfg.max_inflight,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen: SocketAddr| {
        HashMap::from([(
            name.to_owned(),
            ServerSettings {
                name: name.to_owned(),
                listen,
                tls: None,
                next_connection_delay_ms: 0,
                connections: connections.clone(),
            },
        )])
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: cfg.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: cfg.segment_bytes,
            max_segment_count: cfg.segment_count,
            ..Default::default()
        },
        v4: cfg.v4_listen.map(|a| server("v4", a)),
        v5: cfg.v5_listen.map(|a| server("v5", a)),
        ..Default::default()
    }
}
