//! Gateway settings: defaults, then a TOML file, then `TELEGATE__SECTION__KEY` environment
//! variables, then command-line flags (each flag also reads its own `TELEGATE_*` variable).

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use telegate_frame::ValidationConfig;
use telegate_kafka::KafkaConfig;
use telegate_mqtt::IngressConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub mqtt: MqttSettings,
    pub kafka: KafkaConfig,
    /// The policy pack (TOML).
    pub policy: Option<PathBuf>,
    /// Pseudonymisation keys (TOML, see README). Without one, `TELEGATE_KEYS` or ephemeral.
    pub key_file: Option<PathBuf>,
    /// Consents, activations and settings to start from (JSON, see README).
    pub state_file: Option<PathBuf>,
    /// `/metrics`, `/healthz`, `/readyz`; `None` disables the endpoint.
    pub metrics_listen: Option<SocketAddr>,
    pub validation: ValidationSettings,
    /// How long shutdown may take to drain and flush.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long start-up waits for Kafka before giving up.
    #[serde(with = "humantime_serde")]
    pub kafka_startup_timeout: Duration,
    /// How long `telegate.consent-ledger` keeps its records (records of consent are kept
    /// for the limitation period; 10 years by default).
    #[serde(with = "humantime_serde")]
    pub ledger_retention: Duration,
    pub admin: AdminSettings,
}

/// The admin API. Off unless `listen` is set; never served without a token.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    pub listen: Option<SocketAddr>,
    /// The bearer token callers must present; or `token_file`, or `TELEGATE_ADMIN_TOKEN`.
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// How long a blocked account's data waits for the retention check before erasure.
    #[serde(with = "humantime_serde")]
    pub block_grace: Duration,
    /// How often blocked accounts are checked for erasure.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: None,
            token: None,
            token_file: None,
            block_grace: Duration::from_secs(86_400),
            sweep_interval: Duration::from_secs(60),
        }
    }
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("block_grace", &self.block_grace)
            .finish_non_exhaustive()
    }
}

impl AdminSettings {
    /// The token from settings, its file, or `TELEGATE_ADMIN_TOKEN`.
    pub fn resolve_token(&self) -> anyhow::Result<Option<String>> {
        use anyhow::Context;
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        if let Some(path) = &self.token_file {
            let t = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read admin token file {}", path.display()))?;
            return Ok(Some(t.trim().to_owned()));
        }
        Ok(std::env::var("TELEGATE_ADMIN_TOKEN").ok())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mqtt: MqttSettings::default(),
            kafka: KafkaConfig::default(),
            policy: None,
            key_file: None,
            state_file: None,
            metrics_listen: Some(SocketAddr::from(([0, 0, 0, 0], 9898))),
            validation: ValidationSettings::default(),
            shutdown_timeout: Duration::from_secs(15),
            kafka_startup_timeout: Duration::from_secs(60),
            ledger_retention: Duration::from_secs(3653 * 86_400),
            admin: AdminSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    /// MQTT 3.1.1 listener.
    pub listen: Option<SocketAddr>,
    /// MQTT 5 listener.
    pub listen_v5: Option<SocketAddr>,
    pub max_connections: usize,
    pub max_packet_bytes: usize,
    pub segment_bytes: usize,
    pub segment_count: usize,
    pub channel_capacity: usize,
}

impl Default for MqttSettings {
    fn default() -> Self {
        let d = IngressConfig::default();
        Self {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 1883))),
            listen_v5: Some(SocketAddr::from(([0, 0, 0, 0], 1884))),
            max_connections: d.max_connections,
            max_packet_bytes: d.max_packet_bytes,
            segment_bytes: d.segment_bytes,
            segment_count: d.segment_count,
            channel_capacity: d.channel_capacity,
        }
    }
}

impl MqttSettings {
    pub fn ingress(&self) -> IngressConfig {
        IngressConfig {
            v4_listen: self.listen,
            v5_listen: self.listen_v5,
            max_connections: self.max_connections,
            max_packet_bytes: self.max_packet_bytes,
            segment_bytes: self.segment_bytes,
            segment_count: self.segment_count,
            channel_capacity: self.channel_capacity,
            filter: telegate_frame::VEHICLE_TOPIC_FILTER.to_owned(),
            ..IngressConfig::default()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationSettings {
    pub require_check_digit: bool,
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub max_payload_bytes: usize,
}

impl Default for ValidationSettings {
    fn default() -> Self {
        let d = ValidationConfig::default();
        Self {
            require_check_digit: d.require_check_digit,
            max_future_skew: Duration::from_millis(d.max_future_skew_ms as u64),
            max_age: Duration::from_millis(d.max_age_ms as u64),
            max_payload_bytes: d.max_payload_bytes,
        }
    }
}

impl ValidationSettings {
    pub fn config(&self) -> ValidationConfig {
        ValidationConfig {
            require_check_digit: self.require_check_digit,
            max_future_skew_ms: self.max_future_skew.as_millis() as i64,
            max_age_ms: self.max_age.as_millis() as i64,
            max_payload_bytes: self.max_payload_bytes,
        }
    }
}

/// Values given as flags (or their `TELEGATE_*` variables); `None` means not given.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub mqtt_listen: Option<SocketAddr>,
    pub mqtt5_listen: Option<SocketAddr>,
    pub kafka_bootstrap: Option<String>,
    pub policy: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub key_file: Option<PathBuf>,
    pub state_file: Option<PathBuf>,
    pub admin_listen: Option<SocketAddr>,
}

impl Settings {
    /// Layers defaults, the config file (which must exist if named), `TELEGATE__A__B`
    /// variables and the flags.
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Self, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "config file {} does not exist",
                    path.display()
                ))));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(Env::prefixed("TELEGATE__").split("__"));
        let mut set = serde_json::Map::new();
        let mut mqtt = serde_json::Map::new();
        if let Some(a) = flags.mqtt_listen {
            mqtt.insert("listen".into(), a.to_string().into());
        }
        if let Some(a) = flags.mqtt5_listen {
            mqtt.insert("listen_v5".into(), a.to_string().into());
        }
        if !mqtt.is_empty() {
            set.insert("mqtt".into(), mqtt.into());
        }
        if let Some(b) = &flags.kafka_bootstrap {
            set.insert("kafka".into(), serde_json::json!({ "bootstrap": b }));
        }
        if let Some(p) = &flags.policy {
            set.insert("policy".into(), p.display().to_string().into());
        }
        if let Some(a) = flags.metrics_listen {
            set.insert("metrics_listen".into(), a.to_string().into());
        }
        if let Some(p) = &flags.key_file {
            set.insert("key_file".into(), p.display().to_string().into());
        }
        if let Some(p) = &flags.state_file {
            set.insert("state_file".into(), p.display().to_string().into());
        }
        if let Some(a) = flags.admin_listen {
            set.insert(
                "admin".into(),
                serde_json::json!({ "listen": a.to_string() }),
            );
        }
        fig.merge(Serialized::defaults(serde_json::Value::Object(set)))
            .extract()
            .map_err(Box::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // figment's own test jail fixes the closure's error type.
    #[allow(clippy::result_large_err)]
    fn flags_beat_env_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("telegate.toml");
        std::fs::write(
            &file,
            "metrics_listen = \"127.0.0.1:1\"\n[kafka]\nbootstrap = \"file:1\"\nlinger_ms = 9\n[mqtt]\nlisten = \"127.0.0.1:2\"\n[validation]\nmax_age = \"2days\"\n",
        )
        .expect("write");
        figment::Jail::expect_with(|jail| {
            jail.set_env("TELEGATE__KAFKA__LINGER_MS", "11");
            let flags = Overrides {
                kafka_bootstrap: Some("flag:1".into()),
                ..Default::default()
            };
            let s = Settings::load(Some(&file), &flags).expect("loads");
            assert_eq!(s.kafka.bootstrap, "flag:1");
            assert_eq!(s.kafka.linger_ms, 11);
            assert_eq!(s.mqtt.listen, Some("127.0.0.1:2".parse().expect("addr")));
            assert_eq!(s.metrics_listen, Some("127.0.0.1:1".parse().expect("addr")));
            assert_eq!(s.validation.max_age, Duration::from_secs(2 * 86_400));
            assert_eq!(s.kafka.compression, "lz4", "defaults fill the rest");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[kafka]\nbootstrapp = \"x\"\n").expect("write");
        let err = Settings::load(Some(&file), &Overrides::default()).expect_err("typo");
        assert!(err.to_string().contains("bootstrapp"), "{err}");
        let missing = Settings::load(Some(&dir.path().join("nope.toml")), &Overrides::default());
        assert!(missing.is_err());
    }
}
