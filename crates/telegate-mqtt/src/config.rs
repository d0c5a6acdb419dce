//! The edge's settings: the `[mqtt]` section of the gateway's config file.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Listeners, identity and limits. Plain listeners only ever take anonymous clients, so they
/// run only with `allow_anonymous` (a development setting); TLS runs when `tls_cert` and
/// `tls_key` are set, and with `client_ca` every vehicle presents a certificate naming its VIN.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Plain MQTT 3.1.1 listener (anonymous clients only).
    pub listen: Option<SocketAddr>,
    /// Plain MQTT 5 listener (anonymous clients only).
    pub listen_v5: Option<SocketAddr>,
    /// TLS listener for MQTT 3.1.1 and 5 (the CONNECT's protocol level decides); 0.0.0.0:8883
    /// when `tls_cert` is set and this is not.
    pub tls_listen: Option<SocketAddr>,
    /// The server's certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM, one or more certificates) vehicle certificates must chain to. Without it,
    /// TLS clients are anonymous.
    pub client_ca: Option<PathBuf>,
    /// Revoked vehicle certificates (PEM CRLs), re-read while running when the file changes.
    pub client_crl: Option<PathBuf>,
    /// How often `client_crl` is checked for changes.
    #[serde(with = "humantime_serde")]
    pub crl_check_interval: Duration,
    /// Development only: clients without a certificate are admitted. Each is bound to the
    /// first vehicle its topics name and may use only that vehicle's topics.
    pub allow_anonymous: bool,
    /// Vehicles connected at once (past CONNACK); a CONNECT beyond it is refused with
    /// "server unavailable" (3.1.1) or "server busy" (5).
    pub max_connections: usize,
    /// Connections that have not authenticated yet (TLS handshake and CONNECT under way),
    /// apart from `max_connections`. When full, the oldest of the source address holding the
    /// most is closed to make room. Default: a quarter of the process's file-descriptor
    /// limit, between 16 and 8,192.
    pub max_handshakes: Option<usize>,
    /// Of those, how many one source address (IPv6: one /64) may hold; past it, its own
    /// oldest is closed. Vehicles behind one carrier NAT share an address: keep it above the
    /// number that may reconnect at once through one.
    pub max_handshakes_per_source: usize,
    /// Memory all connections together may hold for partial packets (read buffers above
    /// 16 KiB); a connection that needs more when it is used up is closed.
    pub max_buffered_bytes: usize,
    /// The largest packet a client may send; larger ones close the connection. Keep it above
    /// the validation limit so that oversize frames get a counted rejection instead.
    pub max_packet_bytes: usize,
    /// Time from TCP accept to a complete TLS handshake and CONNECT.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The longest keep-alive the edge accepts; also imposed on clients asking for none.
    #[serde(with = "humantime_serde")]
    pub max_keep_alive: Duration,
    /// QoS 1 publishes per connection that may await their PUBACK (MQTT 5 receive maximum);
    /// past it the edge stops reading from that connection.
    pub max_inflight: u16,
    /// What the edge does with a publish to a topic the vehicle may not use (another
    /// vehicle's, or none of its own): `acknowledge` (the default) writes a counted
    /// `topic-not-permitted` rejection and acknowledges it (MQTT 5: PUBACK "not authorized";
    /// MQTT 3.1.1, which has no negative PUBACK: a plain PUBACK), so that a misconfigured
    /// vehicle does not resend it on every reconnect; `disconnect` closes the connection
    /// (MQTT 5 with DISCONNECT "not authorized").
    pub deny_action: DenyAction,
    /// Publishes per second one connection may send; above it the edge reads more slowly.
    pub publish_rate: u32,
    /// Publishes one connection may send at once above the rate.
    pub publish_burst: u32,
    /// The longest a persistent session outlives its connection.
    #[serde(with = "humantime_serde")]
    pub session_expiry: Duration,
    /// Requests kept for a vehicle that is not connected (persistent sessions only).
    pub max_queued_requests: usize,
    /// How long a write to a client may block before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// The bounded channel from the connections to the pipeline.
    pub channel_capacity: usize,
    /// External-broker mode: read vehicle frames from an existing MQTT broker or cluster,
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT`, through an MQTT 5 shared subscription,
    /// instead of running listeners. The broker authenticates the vehicles.
    pub external: Option<BrokerUrl>,
    /// `mqtts://`: the CA certificate(s) (PEM) the broker's certificate chains to.
    pub external_ca: Option<PathBuf>,
    /// `mqtts://`: this worker's client certificate chain (PEM), if the broker asks for one.
    pub external_cert: Option<PathBuf>,
    /// `mqtts://`: the key of `external_cert` (PEM).
    pub external_key: Option<PathBuf>,
    /// This worker's client id at the external broker: unique per worker and the same
    /// across its restarts, so that its persistent session (and the frames in flight to it)
    /// survives a crash. Default: `telegate-` and the host name.
    pub client_id: Option<String>,
    /// The shared subscription's group: workers of one deployment share the load.
    pub share_group: String,
    /// Frames the external broker may have in flight to this worker, unacknowledged (MQTT 5
    /// receive maximum); each is acknowledged once Kafka holds its records.
    pub external_inflight: u16,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: None,
            listen_v5: None,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            client_crl: None,
            crl_check_interval: Duration::from_secs(5),
            allow_anonymous: false,
            max_connections: 1_000_000,
            max_handshakes: None,
            max_handshakes_per_source: 256,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_packet_bytes: 256 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_keep_alive: Duration::from_secs(1200),
            max_inflight: 100,
            deny_action: DenyAction::Acknowledge,
            publish_rate: 100,
            publish_burst: 1000,
            session_expiry: Duration::from_secs(86_400),
            max_queued_requests: 16,
            write_timeout: Duration::from_secs(30),
            channel_capacity: 8_192,
            external: None,
            external_ca: None,
            external_cert: None,
            external_key: None,
            client_id: None,
            share_group: "telegate".to_owned(),
            external_inflight: 1_000,
        }
    }
}

/// What becomes of a publish the topic rules refuse ([`EdgeConfig::deny_action`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenyAction {
    /// Counted, written as a rejection without the payload, and acknowledged.
    Acknowledge,
    /// Counted and the connection closed.
    Disconnect,
}

/// Where vehicles connect ([`EdgeConfig::mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode<'a> {
    /// To this edge's own listeners (TLS, and plain ones for development).
    Listeners,
    /// To an existing broker, which this gateway reads through a shared subscription.
    External(&'a BrokerUrl),
}

/// An external broker's address, `mqtt://HOST[:PORT]` (1883) or `mqtts://HOST[:PORT]` (8883),
/// parsed (with the `url` crate) when the configuration is read: a bad one is a configuration
/// error at `mqtt.external` before anything starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BrokerUrl(url::Url);

impl BrokerUrl {
    /// Whether the broker is spoken to over TLS (`mqtts://`).
    pub fn tls(&self) -> bool {
        self.0.scheme() == "mqtts"
    }

    /// The host name or address (an IPv6 address without its brackets).
    pub fn host(&self) -> String {
        match self.0.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => String::new(),
        }
    }

    pub fn port(&self) -> u16 {
        self.0
            .port()
            .unwrap_or(if self.tls() { 8883 } else { 1883 })
    }
}

impl std::str::FromStr for BrokerUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const FORM: &str = "mqtt://HOST[:PORT] or mqtts://HOST[:PORT]";
        let url = url::Url::parse(s).map_err(|e| format!("{e}: {FORM}"))?;
        if !matches!(url.scheme(), "mqtt" | "mqtts") {
            return Err(format!("scheme {:?}: {FORM}", url.scheme()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "no credentials in the address ({FORM}): the broker knows this worker by its \
                 client certificate"
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("no host: {FORM}"));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(format!("nothing after the port: {FORM}"));
        }
        Ok(Self(url))
    }
}

impl TryFrom<String> for BrokerUrl {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<BrokerUrl> for String {
    fn from(b: BrokerUrl) -> String {
        b.0.into()
    }
}

/// The TLS listener's default address.
pub const DEFAULT_TLS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8883);

impl EdgeConfig {
    /// Whether TLS is configured.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_listen.is_some()
    }

    /// Where vehicles connect: to this edge's listeners, or to an external broker.
    pub fn mode(&self) -> Mode<'_> {
        match &self.external {
            Some(broker) => Mode::External(broker),
            None => Mode::Listeners,
        }
    }

    /// Every problem with these settings, as (key, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        if let Mode::External(broker) = self.mode() {
            return self.external_problems(broker);
        }
        let mut out = Vec::new();
        if self.tls() {
            for (key, value) in [
                ("mqtt.tls_cert", &self.tls_cert),
                ("mqtt.tls_key", &self.tls_key),
            ] {
                if value.is_none() {
                    out.push((key, "TLS needs a server certificate and key".to_owned()));
                }
            }
            if self.client_ca.is_none() && !self.allow_anonymous {
                out.push((
                    "mqtt.client_ca",
                    "without a client CA no vehicle can prove its VIN: set the fleet's CA \
                     (or mqtt.allow_anonymous for development)"
                        .to_owned(),
                ));
            }
        } else if !self.allow_anonymous {
            out.push((
                "mqtt",
                "no listener can admit a vehicle: configure TLS with client certificates \
                 (mqtt.tls_cert, mqtt.tls_key, mqtt.client_ca) or, for development, \
                 mqtt.allow_anonymous = true for the plain listeners"
                    .to_owned(),
            ));
        }
        if self.client_crl.is_some() && self.client_ca.is_none() {
            out.push(("mqtt.client_crl", "a CRL needs mqtt.client_ca".to_owned()));
        }
        if self.max_inflight == 0 || self.publish_rate == 0 || self.publish_burst == 0 {
            out.push((
                "mqtt",
                "max_inflight, publish_rate and publish_burst must be at least 1".to_owned(),
            ));
        }
        if self.listeners().is_empty() {
            out.push(("mqtt", "no MQTT listener configured".to_owned()));
        }
        out
    }

    /// The problems of external-broker mode's settings.
    fn external_problems(&self, broker: &BrokerUrl) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if broker.tls() && self.external_ca.is_none() {
            out.push((
                "mqtt.external_ca",
                "mqtts:// needs the CA the broker's certificate chains to".to_owned(),
            ));
        }
        if !broker.tls()
            && (self.external_ca.is_some()
                || self.external_cert.is_some()
                || self.external_key.is_some())
        {
            out.push((
                "mqtt.external",
                "a CA or client certificate is set but the broker is mqtt:// (plain): \
                 use mqtts://"
                    .to_owned(),
            ));
        }
        if self.external_cert.is_some() != self.external_key.is_some() {
            out.push((
                "mqtt.external_cert",
                "a client certificate needs its key (mqtt.external_key), and a key its certificate"
                    .to_owned(),
            ));
        }
        if self.tls() || self.allow_anonymous {
            out.push((
                "mqtt.external",
                "with an external broker telegate runs no MQTT listener of its own: remove \
                 the TLS listener settings and mqtt.allow_anonymous"
                    .to_owned(),
            ));
        }
        if self.share_group.is_empty()
            || self
                .share_group
                .contains(|c: char| matches!(c, '/' | '+' | '#') || c.is_whitespace())
        {
            out.push((
                "mqtt.share_group",
                "a shared subscription group is a non-empty name without '/', '+', '#' or spaces"
                    .to_owned(),
            ));
        }
        if self
            .client_id
            .as_deref()
            .is_some_and(|id| id.is_empty() || id.len() > 128)
        {
            out.push((
                "mqtt.client_id",
                "a client id has 1 to 128 characters".to_owned(),
            ));
        }
        if self.external_inflight == 0 {
            out.push((
                "mqtt.external_inflight",
                "at least 1 frame must be allowed in flight".to_owned(),
            ));
        }
        out
    }

    /// The listeners that will run: plain ones only with anonymous clients allowed, none with
    /// an external broker.
    pub fn listeners(&self) -> Vec<(SocketAddr, Listener)> {
        let mut out = Vec::new();
        if let Mode::External(_) = self.mode() {
            return out;
        }
        if self.allow_anonymous {
            out.extend(self.listen.map(|a| (a, Listener::PlainV4)));
            out.extend(self.listen_v5.map(|a| (a, Listener::PlainV5)));
        }
        if self.tls() {
            out.push((self.tls_listen.unwrap_or(DEFAULT_TLS_LISTEN), Listener::Tls));
        }
        out
    }
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    PlainV4,
    PlainV5,
    /// MQTT 3.1.1 and 5 over TLS.
    Tls,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::PlainV4 => "mqtt",
            Listener::PlainV5 => "mqtt5",
            Listener::Tls => "mqtts",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn external(url: &str) -> EdgeConfig {
        EdgeConfig {
            external: Some(url.parse().expect("a broker address")),
            ..EdgeConfig::default()
        }
    }

    fn keys(cfg: &EdgeConfig) -> Vec<&'static str> {
        cfg.problems().into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn an_external_broker_replaces_the_listeners() {
        let plain = external("mqtt://broker:1883");
        assert!(plain.problems().is_empty(), "{:?}", plain.problems());
        assert!(plain.listeners().is_empty());
        let with_tls_listener = EdgeConfig {
            tls_cert: Some("server.crt".into()),
            ..external("mqtt://broker:1883")
        };
        assert!(keys(&with_tls_listener).contains(&"mqtt.external"));
        let anonymous = EdgeConfig {
            allow_anonymous: true,
            ..external("mqtt://broker:1883")
        };
        assert!(keys(&anonymous).contains(&"mqtt.external"));
    }

    #[test]
    fn broker_addresses_are_parsed_or_refused() {
        let parsed = |s: &str| {
            s.parse::<BrokerUrl>()
                .map(|b| (b.host(), b.port(), b.tls()))
        };
        assert_eq!(
            parsed("mqtt://broker.example:1883"),
            Ok(("broker.example".into(), 1883, false))
        );
        assert_eq!(
            parsed("mqtts://10.0.0.7"),
            Ok(("10.0.0.7".into(), 8883, true))
        );
        assert_eq!(
            parsed("mqtts://[::1]:8884/"),
            Ok(("::1".into(), 8884, true))
        );
        for bad in [
            "tcp://h:1",
            "http://broker",
            "mqtt://",
            "mqtt://h:99999",
            "mqtt://u@h:1",
            "mqtt://u:p@h:1",
            "mqtt://h:1/path",
            "mqtt://h:1?x=1",
            "h:1883",
        ] {
            assert!(bad.parse::<BrokerUrl>().is_err(), "{bad}");
        }
        // Read from a config file as a string, and written back the same.
        let b: BrokerUrl = serde_json::from_str("\"mqtts://broker:8884\"").expect("parses");
        assert_eq!(
            serde_json::to_string(&b).expect("writes"),
            "\"mqtts://broker:8884\""
        );
        assert!(serde_json::from_str::<BrokerUrl>("\"http://broker\"").is_err());
    }

    #[test]
    fn external_settings_are_checked() {
        assert_eq!(keys(&external("mqtts://broker")), ["mqtt.external_ca"]);
        let ca_on_plain = EdgeConfig {
            external_ca: Some("ca.crt".into()),
            ..external("mqtt://broker")
        };
        assert_eq!(keys(&ca_on_plain), ["mqtt.external"]);
        let cert_without_key = EdgeConfig {
            external_ca: Some("ca.crt".into()),
            external_cert: Some("worker.crt".into()),
            ..external("mqtts://broker")
        };
        assert_eq!(keys(&cert_without_key), ["mqtt.external_cert"]);
        let bad_group = EdgeConfig {
            share_group: "a/b".into(),
            ..external("mqtt://broker")
        };
        assert_eq!(keys(&bad_group), ["mqtt.share_group"]);
        let no_window = EdgeConfig {
            external_inflight: 0,
            client_id: Some(String::new()),
            ..external("mqtt://broker")
        };
        assert_eq!(
            keys(&no_window),
            ["mqtt.client_id", "mqtt.external_inflight"]
        );
    }
}
