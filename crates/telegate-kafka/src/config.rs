//! Producer and admin settings.

use rdkafka::ClientConfig;
use std::collections::BTreeMap;

/// How telegate talks to Kafka. `extra` passes any librdkafka property through (security,
/// SASL, tuning) and wins over the defaults set here.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub bootstrap: String,
    pub client_id: String,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    pub compression: String,
    pub linger_ms: u32,
    /// Give up on a record after this long (it is then counted as failed).
    pub message_timeout_ms: u32,
    /// Partitions for topics telegate creates.
    pub partitions: i32,
    /// Replication factor for topics telegate creates; -1 takes the broker's default.
    pub replication_factor: i32,
    /// Deliveries awaited at once; past this, producing waits (back-pressure).
    pub max_in_flight: usize,
    /// Prefix for every topic telegate writes (e.g. `staging.`), for deployments sharing a
    /// cluster. Empty keeps the contract's names (`telegate.{service}`).
    pub topic_namespace: String,
    /// Create missing topics at start-up. Turn off where topics are managed elsewhere
    /// (an operator, infrastructure as code); telegate then assumes they exist.
    pub manage_topics: bool,
    pub extra: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap: "127.0.0.1:9092".to_owned(),
            client_id: "telegate".to_owned(),
            compression: "lz4".to_owned(),
            linger_ms: 5,
            message_timeout_ms: 120_000,
            partitions: 6,
            replication_factor: -1,
            max_in_flight: 100_000,
            topic_namespace: String::new(),
            manage_topics: true,
            extra: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("client.id", &self.client_id);
        c
    }

    pub(crate) fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &self.compression)
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.message_timeout_ms.to_string());
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::FutureProducer;

    /// librdkafka refuses `security.protocol = SSL` when it was built without OpenSSL; this
    /// build has it, so TLS to Kafka is a matter of configuration (`[kafka.extra]`).
    #[test]
    fn tls_to_kafka_is_built_in() {
        let mut cfg = KafkaConfig {
            bootstrap: "127.0.0.1:1".into(),
            ..KafkaConfig::default()
        };
        cfg.extra.insert("security.protocol".into(), "SSL".into());
        let made: Result<FutureProducer, _> = cfg.producer_config().create();
        assert!(made.is_ok(), "{:?}", made.err());
        cfg.extra
            .insert("security.protocol".into(), "SASL_SSL".into());
        cfg.extra
            .insert("sasl.mechanism".into(), "SCRAM-SHA-512".into());
        cfg.extra.insert("sasl.username".into(), "telegate".into());
        cfg.extra
            .insert("sasl.password".into(), "not-a-secret".into());
        let made: Result<FutureProducer, _> = cfg.producer_config().create();
        assert!(made.is_ok(), "SCRAM over TLS: {:?}", made.err());
    }
}
