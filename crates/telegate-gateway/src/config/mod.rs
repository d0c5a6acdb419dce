//! The gateway's configuration as data: defaults, then a TOML file, then
//! `TELEGATE__SECTION__KEY` environment variables, then the caller's overrides (the command
//! line's flags). [`Config::check`] then reads and validates everything the gateway will need
//! (pack, keys, admin token, state file, listeners) and reports every problem at once, with its
//! path, before anything starts.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use telegate_frame::{ValidationConfig, Vin};
use telegate_kafka::KafkaConfig;
use telegate_mqtt::EdgeConfig;
use telegate_policy::{
    Keyring, Pack, RecordEncoding, StateFile, TopicSpec, consent_topics, vehicle_requests_topic,
};

mod access;

use crate::registry::{SchemaRegistry, SchemaRegistryConfig};
use crate::traces::TraceConfig;

pub use access::{
    AdminAccess, AdminConfig, AdminTls, ConsoleAccess, ConsoleConfig, Operator, Role, token_hash,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The MQTT edge: listeners, vehicle identity, limits.
    pub mqtt: EdgeConfig,
    pub kafka: KafkaConfig,
    /// The policy pack (TOML).
    pub policy: Option<PathBuf>,
    /// The operator's keys: pseudonym, index and wrapping keys (TOML, docs/operations.md).
    /// Without one, `TELEGATE_KEYS` or ephemeral.
    pub key_file: Option<PathBuf>,
    /// Consents, activations and settings to start from (JSON, docs/operations.md).
    pub state_file: Option<PathBuf>,
    /// `/metrics`, `/healthz`, `/readyz`; `None` disables the endpoint.
    pub metrics_listen: Option<SocketAddr>,
    pub validation: ValidationConfig,
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
    /// How often each partition of `telegate.consent-state` gets a roll marker, so its
    /// segments close and an erased vehicle's earlier record is compacted away even where no
    /// vehicle writes (`crate::roll`). It adds to the time erased key material may stay in the
    /// log: keep it well under the topic's `segment.ms`. `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub state_roll_interval: Duration,
    pub admin: AdminConfig,
    pub console: ConsoleConfig,
    /// The schema registry `confluent-protobuf` services register their record schema in.
    pub schema_registry: SchemaRegistryConfig,
    /// Frames' traces over OTLP: off unless an endpoint is given.
    pub traces: TraceConfig,
}

/// Roll markers more often than this would be load for nothing.
const MIN_STATE_ROLL_INTERVAL: Duration = Duration::from_secs(1);

impl Default for Config {
    fn default() -> Self {
        Self {
            // The plain listeners run only with mqtt.allow_anonymous (development).
            mqtt: EdgeConfig {
                listen: Some(SocketAddr::from(([0, 0, 0, 0], 1883))),
                listen_v5: Some(SocketAddr::from(([0, 0, 0, 0], 1884))),
                ..EdgeConfig::default()
            },
            kafka: KafkaConfig::default(),
            policy: None,
            key_file: None,
            state_file: None,
            metrics_listen: Some(SocketAddr::from(([0, 0, 0, 0], 9898))),
            validation: ValidationConfig::default(),
            shutdown_timeout: Duration::from_secs(15),
            kafka_startup_timeout: Duration::from_secs(60),
            ledger_retention: Duration::from_secs(3653 * 86_400),
            // 5 minutes: the hour of segment.ms and max.compaction.lag.ms plus a twelfth.
            state_roll_interval: telegate_kafka::COMPACTION_BOUND / 12,
            admin: AdminConfig::default(),
            console: ConsoleConfig::default(),
            schema_registry: SchemaRegistryConfig::default(),
            traces: TraceConfig::default(),
        }
    }
}

/// Where the policy pack comes from.
#[derive(Debug, Clone)]
pub enum PackSource {
    /// The file `policy` names.
    Config,
    /// Text given in process (the demo's built-in pack).
    Inline { name: String, text: String },
}

/// One thing wrong with a configuration, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key (`admin.token`) or file it concerns.
    pub path: String,
    pub message: String,
}

/// Every problem found, in the order checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the configuration has {} error(s):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {}: {}", e.path, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// A configuration whose files have been read and checked: what the gateway starts from.
#[derive(Debug)]
pub struct Checked {
    pub config: Config,
    /// The pack, its topics behind the namespace.
    pub pack: Pack,
    pub keys: Keyring,
    /// Present exactly when the admin API is to listen.
    pub admin: Option<AdminAccess>,
    /// Present exactly when the console is to listen.
    pub console: Option<ConsoleAccess>,
    pub state: Option<StateFile>,
    /// Present when a registry is configured; `confluent-protobuf` services need one.
    pub registry: Option<SchemaRegistry>,
}

impl Checked {
    /// Every topic the gateway writes or follows, behind the namespace: the pack's service
    /// topics (its rejected topic among them), then the consent state, the consent ledger and
    /// the requests to vehicles.
    pub fn topics(&self) -> Vec<TopicSpec> {
        let ns = &self.config.kafka.topic_namespace;
        let mut specs = self.pack.topics();
        specs.extend(consent_topics(ns, self.config.ledger_retention));
        specs.push(vehicle_requests_topic(ns));
        specs
    }
}

impl Config {
    /// Layers defaults, the config file (which must exist if named), `TELEGATE__A__B`
    /// variables and `overrides` (a value that serializes to the file's shape, with absent
    /// options left out).
    pub fn load(file: Option<&Path>, overrides: &impl Serialize) -> Result<Self, ConfigErrors> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                let mut errors = ConfigErrors(Vec::new());
                errors.push(path.display().to_string(), "the config file does not exist");
                return Err(errors);
            }
            fig = fig.merge(Toml::file(path));
        }
        fig.merge(Env::prefixed("TELEGATE__").split("__"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| {
                ConfigErrors(
                    e.into_iter()
                        .map(|e| ConfigError {
                            path: if e.path.is_empty() {
                                "config".to_owned()
                            } else {
                                e.path.join(".")
                            },
                            message: e.kind.to_string(),
                        })
                        .collect(),
                )
            })
    }

    /// Reads and checks everything the gateway needs before it starts anything, and
    /// reports every problem at once.
    pub fn check(&self, source: &PackSource) -> Result<Checked, ConfigErrors> {
        let mut errors = ConfigErrors(Vec::new());
        let namespace = &self.kafka.topic_namespace;
        if !namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            errors.push(
                "kafka.topic_namespace",
                format!("{namespace:?}: use only a-z, A-Z, 0-9, '.', '_' and '-'"),
            );
        }
        if self.kafka.bootstrap.trim().is_empty() {
            errors.push("kafka.bootstrap", "empty: name at least one HOST:PORT");
        }
        let roll = self.state_roll_interval;
        if !roll.is_zero() && roll < MIN_STATE_ROLL_INTERVAL {
            errors.push(
                "state_roll_interval",
                format!(
                    "{roll:?} is shorter than {MIN_STATE_ROLL_INTERVAL:?}: a few minutes keeps \
                     erasure's bound (0s turns the roll markers off)"
                ),
            );
        }
        let pack = self.pack(source, &mut errors);
        let keys = self.keys(&mut errors);
        let state = self.state(&mut errors);
        let tls = self.admin_tls(&mut errors);
        let admin = self.admin_access(tls.clone(), &mut errors);
        let console = self.console_access(tls, &mut errors);
        let registry = self.registry(pack.as_ref(), &mut errors);
        self.check_listeners(&mut errors);
        for (key, message) in self.mqtt.problems() {
            errors.push(key, message);
        }
        for (key, message) in self.traces.problems() {
            errors.push(key, message);
        }
        if let Err(e) = telegate_mqtt::check_tls(&self.mqtt) {
            errors.push("mqtt (TLS)", e.to_string());
        }
        if self.mqtt.max_packet_bytes <= self.validation.max_payload_bytes {
            errors.push(
                "mqtt.max_packet_bytes",
                format!(
                    "{} must exceed validation.max_payload_bytes ({}), so that an oversize frame \
                     gets a counted rejection instead of a dropped connection",
                    self.mqtt.max_packet_bytes, self.validation.max_payload_bytes
                ),
            );
        }
        match (pack, keys) {
            (Some(pack), Some(keys)) if errors.0.is_empty() => Ok(Checked {
                config: self.clone(),
                pack: pack.with_topic_namespace(namespace),
                keys,
                admin,
                console,
                state,
                registry,
            }),
            _ => Err(errors),
        }
    }

    /// The schema registry, which must be given where a service of the pack writes the
    /// Confluent wire format.
    fn registry(&self, pack: Option<&Pack>, errors: &mut ConfigErrors) -> Option<SchemaRegistry> {
        let registry = SchemaRegistry::from_config(&self.schema_registry)
            .map_err(|problems| {
                for (key, message) in problems {
                    errors.push(key, message);
                }
            })
            .ok()
            .flatten();
        let framed: Vec<&str> = pack
            .into_iter()
            .flat_map(|p| &p.services)
            .filter(|s| s.encoding == RecordEncoding::ConfluentProtobuf)
            .map(|s| s.id.as_str())
            .collect();
        if !framed.is_empty() && self.schema_registry.url.is_none() {
            errors.push(
                "schema_registry.url",
                format!(
                    "service(s) {} write the Confluent wire format (encoding = \
                     \"confluent-protobuf\"): give the registry with --schema-registry URL",
                    framed.join(", ")
                ),
            );
        }
        registry
    }

    fn pack(&self, source: &PackSource, errors: &mut ConfigErrors) -> Option<Pack> {
        let (name, text) = match source {
            PackSource::Inline { name, text } => (name.clone(), text.clone()),
            PackSource::Config => {
                let Some(path) = &self.policy else {
                    errors.push(
                        "policy",
                        "no policy pack: pass --policy PATH (packs/ in the repository has examples)",
                    );
                    return None;
                };
                match std::fs::read_to_string(path) {
                    Ok(text) => (path.display().to_string(), text),
                    Err(e) => {
                        errors.push("policy", format!("cannot read {}: {e}", path.display()));
                        return None;
                    }
                }
            }
        };
        Pack::from_toml(&text)
            .map_err(|pack_errors| {
                for e in pack_errors.0 {
                    errors.push(format!("policy ({name}) {}", e.path), e.message);
                }
            })
            .ok()
    }

    /// The operator's keys, from the key file or `TELEGATE_KEYS`; None when neither is set
    /// (the gateway then makes ephemeral ones).
    pub fn operator_keys(&self) -> Result<Option<Keyring>, ConfigErrors> {
        let mut errors = ConfigErrors(Vec::new());
        let keys = self.keys(&mut errors);
        match keys {
            Some(k) if k.is_ephemeral() => Ok(None),
            Some(k) => Ok(Some(k)),
            None => Err(errors),
        }
    }

    /// Keys from the key file, else from `TELEGATE_KEYS` (the same TOML), else ephemeral.
    fn keys(&self, errors: &mut ConfigErrors) -> Option<Keyring> {
        let (path, text) = match (&self.key_file, std::env::var("TELEGATE_KEYS")) {
            (Some(path), _) => match std::fs::read_to_string(path) {
                Ok(text) => (format!("key_file ({})", path.display()), text),
                Err(e) => {
                    errors.push("key_file", format!("cannot read {}: {e}", path.display()));
                    return None;
                }
            },
            (None, Ok(text)) => ("TELEGATE_KEYS".to_owned(), text),
            (None, Err(_)) => return Some(Keyring::ephemeral(rand::random())),
        };
        Keyring::from_toml(&text)
            .map_err(|e| errors.push(path, e.to_string()))
            .ok()
    }

    fn state(&self, errors: &mut ConfigErrors) -> Option<StateFile> {
        let path = self.state_file.as_ref()?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| errors.push("state_file", format!("cannot read {}: {e}", path.display())))
            .ok()?;
        let file: StateFile = serde_json::from_str(&text)
            .map_err(|e| errors.push(format!("state_file ({})", path.display()), e.to_string()))
            .ok()?;
        // Errors name the entry's position, never the VIN.
        for (i, vin) in file.subjects.keys().enumerate() {
            if Vin::parse(vin).is_err() {
                errors.push(
                    format!("state_file ({}) subject #{i}", path.display()),
                    "not a VIN",
                );
            }
        }
        Some(file)
    }

    fn check_listeners(&self, errors: &mut ConfigErrors) {
        let tls = self.mqtt.tls().then(|| {
            self.mqtt
                .tls_listen
                .unwrap_or(telegate_mqtt::DEFAULT_TLS_LISTEN)
        });
        let listeners = [
            ("mqtt.listen", self.mqtt.listen),
            ("mqtt.listen_v5", self.mqtt.listen_v5),
            ("mqtt.tls_listen", tls),
            ("metrics_listen", self.metrics_listen),
            ("admin.listen", self.admin.listen),
            ("console.listen", self.console.listen),
        ];
        for (i, (name, addr)) in listeners.iter().enumerate() {
            let Some(addr) = addr.filter(|a| a.port() != 0) else {
                continue;
            };
            if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| *a == Some(addr)) {
                errors.push(*name, format!("{addr} is already {other}'s address"));
            }
        }
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
            let flags = serde_json::json!({ "kafka": { "bootstrap": "flag:1" } });
            let s = Config::load(Some(&file), &flags).expect("loads");
            assert_eq!(s.kafka.bootstrap, "flag:1");
            assert_eq!(s.kafka.linger_ms, 11);
            assert_eq!(s.mqtt.listen, Some("127.0.0.1:2".parse().expect("addr")));
            assert_eq!(s.metrics_listen, Some("127.0.0.1:1".parse().expect("addr")));
            assert_eq!(s.validation.max_age_ms, 2 * 86_400_000);
            assert_eq!(s.kafka.compression, "lz4", "defaults fill the rest");
            Ok(())
        });
    }

    #[test]
    fn the_state_roll_interval_is_off_or_at_least_a_second() {
        let loaded =
            Config::load(None, &serde_json::json!({ "state_roll_interval": "2m" })).expect("loads");
        assert_eq!(loaded.state_roll_interval, Duration::from_secs(120));
        assert_eq!(
            Config::default().state_roll_interval,
            Duration::from_secs(300),
            "docs/operations.md states the default"
        );
        let mut config = Config::default();
        config.mqtt.allow_anonymous = true;
        for (interval, valid) in [
            (Duration::ZERO, true),
            (Duration::from_millis(500), false),
            (Duration::from_secs(1), true),
        ] {
            config.state_roll_interval = interval;
            match config.check(&PackSource::Inline {
                name: "reference".into(),
                text: crate::REFERENCE_PACK.into(),
            }) {
                Ok(_) => assert!(valid, "{interval:?} accepted"),
                Err(e) => {
                    assert!(!valid, "{interval:?} refused: {e}");
                    assert_eq!(e.0.len(), 1, "{e}");
                    assert_eq!(e.0[0].path, "state_roll_interval");
                }
            }
        }
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[kafka]\nbootstrapp = \"x\"\n").expect("write");
        let err = Config::load(Some(&file), &serde_json::json!({})).expect_err("typo");
        assert!(err.to_string().contains("bootstrapp"), "{err}");
        let missing = Config::load(Some(&dir.path().join("nope.toml")), &serde_json::json!({}));
        assert!(missing.is_err());
    }

    #[test]
    fn check_reports_every_problem_at_once_before_anything_starts() {
        let dir = tempfile::tempdir().expect("tmp");
        let pack = dir.path().join("pack.toml");
        std::fs::write(&pack, "id = \"x\"\n").expect("write");
        let config = Config {
            policy: Some(pack),
            key_file: Some(dir.path().join("missing-keys.toml")),
            state_file: Some(dir.path().join("missing-state.json")),
            metrics_listen: Some("127.0.0.1:7001".parse().expect("addr")),
            admin: AdminConfig {
                listen: Some("127.0.0.1:7001".parse().expect("addr")),
                token: Some("short".into()),
                ..AdminConfig::default()
            },
            kafka: KafkaConfig {
                topic_namespace: "bad ns".into(),
                ..KafkaConfig::default()
            },
            ..Config::default()
        };
        let errors = config.check(&PackSource::Config).expect_err("invalid");
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "kafka.topic_namespace",
            "key_file",
            "state_file",
            "admin.token",
            "admin.listen",
        ] {
            assert!(paths.contains(&want), "{want} missing from {errors}");
        }
        assert!(
            paths.iter().any(|p| p.starts_with("policy (")),
            "the pack's own errors are listed: {errors}"
        );
        assert!(!errors.to_string().contains("short"), "no token in errors");
    }

    #[test]
    fn no_vehicle_can_connect_without_tls_or_the_development_setting() {
        let errors = Config::default()
            .check(&PackSource::Inline {
                name: "reference".into(),
                text: crate::REFERENCE_PACK.into(),
            })
            .expect_err("closed by default");
        assert!(errors.to_string().contains("allow_anonymous"), "{errors}");
        let tls_without_ca = Config {
            mqtt: EdgeConfig {
                tls_cert: Some("server.crt".into()),
                tls_key: Some("server.key".into()),
                ..Config::default().mqtt
            },
            ..Config::default()
        };
        let errors = tls_without_ca
            .check(&PackSource::Config)
            .expect_err("no client CA");
        assert!(
            errors.0.iter().any(|e| e.path == "mqtt.client_ca"),
            "{errors}"
        );
        assert!(
            errors.0.iter().any(|e| e.path == "mqtt (TLS)"),
            "unreadable files: {errors}"
        );
    }

    #[test]
    fn a_valid_configuration_checks_with_its_pack_and_keys() {
        let mut config = Config::default();
        config.mqtt.allow_anonymous = true;
        let checked = config
            .check(&PackSource::Inline {
                name: "reference".into(),
                text: crate::REFERENCE_PACK.into(),
            })
            .expect("valid");
        assert!(checked.keys.is_ephemeral());
        assert!(checked.admin.is_none());
    }

    /// A fleet directory as `telegate pki init` writes it: ca.crt, ca.key, server.crt, server.key.
    fn pki(dir: &Path) -> PathBuf {
        let pki = dir.join("pki");
        telegate_pki::init(&pki, &[]).expect("pki init");
        pki
    }

    /// A configuration that checks but for its `[admin]` section.
    fn with_admin(admin: AdminConfig) -> Config {
        let mut config = Config::default();
        config.mqtt.allow_anonymous = true;
        config.admin = admin;
        config
    }

    fn check_reference(config: &Config) -> Result<Checked, ConfigErrors> {
        config.check(&PackSource::Inline {
            name: "reference".into(),
            text: crate::REFERENCE_PACK.into(),
        })
    }

    fn listening(token: &str) -> AdminConfig {
        AdminConfig {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            token: Some(token.into()),
            ..AdminConfig::default()
        }
    }

    fn error_paths(errors: &ConfigErrors) -> Vec<&str> {
        errors.0.iter().map(|e| e.path.as_str()).collect()
    }

    fn operator(name: &str, role: Role, token_sha256: &str) -> Operator {
        Operator {
            name: name.into(),
            role,
            token_sha256: token_sha256.into(),
        }
    }

    #[test]
    fn a_console_needs_operators_each_with_a_name_and_a_token_hash_of_their_own() {
        let hash = "ab".repeat(32);
        let mut config = with_admin(AdminConfig::default());
        config.console.listen = Some("127.0.0.1:0".parse().expect("addr"));
        let errors = check_reference(&config).expect_err("nobody may sign in");
        assert_eq!(error_paths(&errors), ["console.operators"], "{errors}");

        config.console.operators = vec![
            operator("dpo-anna", Role::Officer, &hash),
            operator("dpo-anna", Role::Viewer, "not-hex"),
            operator("care ben", Role::Viewer, &hash),
        ];
        let errors = check_reference(&config).expect_err("three bad entries");
        assert_eq!(
            error_paths(&errors),
            [
                "console.operators[1].name",
                "console.operators[1].token_sha256",
                "console.operators[2].name",
                "console.operators[2].token_sha256",
            ],
            "{errors}"
        );

        config.console.operators = vec![
            operator("dpo-anna", Role::Officer, &hash),
            operator("care-ben", Role::Viewer, &"cd".repeat(32)),
        ];
        let checked = check_reference(&config).expect("two operators");
        let access = checked.console.expect("the console listens");
        assert_eq!(access.operators.len(), 2);
        assert!(access.tls.is_none());
        // Off unless it listens, whatever else is set.
        config.console.listen = None;
        assert!(check_reference(&config).expect("off").console.is_none());
    }

    #[test]
    fn admin_tls_half_set_is_an_error_for_each_missing_half() {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = pki(dir.path());
        let cert_only = with_admin(AdminConfig {
            tls_cert: Some(pki.join("server.crt")),
            ..listening("0123456789abcdef")
        });
        let errors = check_reference(&cert_only).expect_err("no key");
        assert_eq!(error_paths(&errors), ["admin.tls_key"], "{errors}");

        let key_and_ca = with_admin(AdminConfig {
            tls_key: Some(pki.join("server.key")),
            client_ca: Some(pki.join("ca.crt")),
            ..listening("0123456789abcdef")
        });
        let errors = check_reference(&key_and_ca).expect_err("no certificate");
        assert_eq!(
            error_paths(&errors),
            ["admin.tls_cert", "admin.client_ca"],
            "every problem at once: {errors}"
        );

        let ca_only = with_admin(AdminConfig {
            client_ca: Some(pki.join("ca.crt")),
            ..listening("0123456789abcdef")
        });
        let errors = check_reference(&ca_only).expect_err("client CA without TLS");
        assert_eq!(error_paths(&errors), ["admin.client_ca"], "{errors}");
        assert!(errors.to_string().contains("need TLS"), "{errors}");

        // Named files are checked even while the API is off.
        let off = with_admin(AdminConfig {
            tls_cert: Some(pki.join("server.crt")),
            ..AdminConfig::default()
        });
        let errors = check_reference(&off).expect_err("no key, API off");
        assert_eq!(error_paths(&errors), ["admin.tls_key"], "{errors}");
    }

    #[test]
    fn admin_tls_files_are_read_and_checked_without_quoting_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = pki(dir.path());
        let not_a_key = dir.path().join("not-a-key.pem");
        std::fs::write(&not_a_key, "SECRET-LOOKING-LINE\n").expect("write");
        let config = with_admin(AdminConfig {
            tls_cert: Some(dir.path().join("missing.crt")),
            tls_key: Some(not_a_key),
            // A leaf certificate where the CA belongs: the commonest mix-up.
            client_ca: Some(pki.join("server.crt")),
            ..listening("0123456789abcdef")
        });
        let errors = check_reference(&config).expect_err("three bad files");
        assert_eq!(
            error_paths(&errors),
            ["admin.tls_cert", "admin.tls_key", "admin.client_ca"],
            "{errors}"
        );
        let text = errors.to_string();
        assert!(text.contains("cannot read"), "{text}");
        assert!(text.contains("no PEM private key"), "{text}");
        assert!(text.contains("not a CA certificate"), "{text}");
        assert!(
            !text.contains("SECRET"),
            "a file's content is never quoted: {text}"
        );

        // Both files are PEM of the right kind, but the key is not the certificate's.
        let mismatched = with_admin(AdminConfig {
            tls_cert: Some(pki.join("server.crt")),
            tls_key: Some(pki.join("ca.key")),
            ..listening("0123456789abcdef")
        });
        let errors = check_reference(&mismatched).expect_err("key of another certificate");
        assert_eq!(error_paths(&errors), ["admin (TLS)"], "{errors}");
        assert!(!errors.to_string().contains("PRIVATE KEY"), "{errors}");
    }

    #[test]
    fn admin_tls_checks_and_never_replaces_the_token() {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = pki(dir.path());
        let mutual = AdminConfig {
            tls_cert: Some(pki.join("server.crt")),
            tls_key: Some(pki.join("server.key")),
            client_ca: Some(pki.join("ca.crt")),
            ..listening("0123456789abcdef")
        };
        let short_token = AdminConfig {
            token: Some("short".into()),
            ..mutual.clone()
        };
        let errors = check_reference(&with_admin(short_token)).expect_err("token too short");
        assert_eq!(error_paths(&errors), ["admin.token"], "{errors}");

        let checked = check_reference(&with_admin(mutual.clone())).expect("valid");
        let access = checked.admin.as_ref().expect("admin API on");
        assert_eq!(access.token, "0123456789abcdef");
        let tls = access.tls.as_ref().expect("TLS on");
        assert!(tls.requires_client_certificate());
        let debug = format!("{checked:?}");
        assert!(!debug.contains("0123456789abcdef"), "no token: {debug}");
        assert!(!debug.contains("BEGIN"), "no PEM: {debug}");

        let server_only = AdminConfig {
            client_ca: None,
            ..mutual
        };
        let checked = check_reference(&with_admin(server_only)).expect("valid");
        let access = checked.admin.expect("admin API on");
        assert!(!access.tls.expect("TLS on").requires_client_certificate());
    }
}
