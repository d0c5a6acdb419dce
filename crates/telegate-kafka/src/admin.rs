//! Topic creation. telegate creates every topic it writes, with the retention its policy
//! allows, and never relies on broker auto-creation.

use crate::config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;
use telegate_policy::TopicSpec;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("cannot create the Kafka admin client: {0}")]
    Client(rdkafka::error::KafkaError),
    #[error("Kafka did not answer the topic request (is {bootstrap} reachable?): {error}")]
    Request {
        bootstrap: String,
        error: rdkafka::error::KafkaError,
    },
    #[error("Kafka refused to create topics: {0}")]
    Refused(String),
}

/// Creates each topic that does not exist yet, with `retention.ms` from its spec. Existing
/// topics are left as they are (and reported in the log).
pub async fn ensure_topics(cfg: &KafkaConfig, specs: &[TopicSpec]) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> =
        cfg.client_config().create().map_err(TopicError::Client)?;
    let retention: Vec<String> = specs
        .iter()
        .map(|s| s.retention.as_millis().min(i64::MAX as u128).to_string())
        .collect();
    let topics: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&retention)
        .map(|(s, r)| {
            NewTopic::new(
                &s.name,
                cfg.partitions,
                TopicReplication::Fixed(cfg.replication_factor),
            )
            .set("retention.ms", r)
            .set("cleanup.policy", "delete")
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        admin
            .create_topics(&topics, &opts)
            .await
            .map_err(|error| TopicError::Request {
                bootstrap: cfg.bootstrap.clone(),
                error,
            })?;
    let mut refused = Vec::new();
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "topic exists")
            }
            Err((name, code)) => refused.push(format!("{name}: {code}")),
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(TopicError::Refused(refused.join("; ")))
    }
}
