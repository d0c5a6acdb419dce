//! Topic creation. telegate creates every topic it writes, with the retention its policy
//! allows, and never relies on broker auto-creation.

use crate::config::KafkaConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigEntry, ConfigSource, NewTopic, ResourceSpecifier,
    TopicReplication,
};
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

/// `max.compaction.lag.ms` and `segment.ms` of the compacted topics telegate creates: one hour.
/// Kafka closes a segment only when a record arrives, so this bounds how long an erased record
/// stays only while every partition is written to more often; the gateway sees to that on the
/// consent-state topic (`state_roll_interval`, docs/operations.md).
pub const COMPACTION_BOUND: Duration = Duration::from_secs(3600);

/// Kafka's default `log.roll.ms`: a segment is closed, and can be deleted, after a week.
const KAFKA_SEGMENT_ROLL: Duration = Duration::from_secs(7 * 86_400);

/// Creates each topic that does not exist yet, with `retention.ms` from its spec, and sets
/// `retention.ms` on those that exist, so no topic keeps records longer than its policy
/// allows. A broker that refuses either is an error: telegate does not start on topics whose
/// retention it cannot vouch for.
pub async fn ensure_topics(cfg: &KafkaConfig, specs: &[TopicSpec]) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> =
        cfg.client_config().create().map_err(TopicError::Client)?;
    let retention: Vec<String> = specs
        .iter()
        .map(|s| s.retention.as_millis().min(i64::MAX as u128).to_string())
        .collect();
    let bound = COMPACTION_BOUND.as_millis().to_string();
    let topics: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&retention)
        .map(|(s, r)| {
            let topic = NewTopic::new(
                &s.name,
                cfg.partitions,
                TopicReplication::Fixed(cfg.replication_factor),
            );
            if s.compact {
                // Erasure writes a tombstone; these bound how long the erased record (and its
                // key material) may stay in the log: compaction may run at once and must run
                // within COMPACTION_BOUND (Kafka >= 2.3), but takes the record only once the
                // segment holding the tombstone is closed, which segment.ms asks for at the
                // next write (the gateway's roll markers). Tombstones stay a day so every
                // follower sees them.
                topic
                    .set("cleanup.policy", "compact")
                    .set("min.compaction.lag.ms", "0")
                    .set("max.compaction.lag.ms", &bound)
                    .set("segment.ms", &bound)
                    .set("delete.retention.ms", "86400000")
            } else if !s.retention.is_zero() && s.retention < KAFKA_SEGMENT_ROLL {
                // Kafka deletes whole segments and rolls one after a week by default: a quiet
                // topic would keep records up to a week past a shorter retention.
                topic
                    .set("retention.ms", r)
                    .set("cleanup.policy", "delete")
                    .set("segment.ms", r)
            } else {
                topic.set("retention.ms", r).set("cleanup.policy", "delete")
            }
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
    let mut existing = Vec::new();
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(name),
            Err((name, code)) => refused.push(format!("{name}: {code}")),
        }
    }
    if !refused.is_empty() {
        return Err(TopicError::Refused(refused.join("; ")));
    }
    // Compacted topics keep the latest record per key by design: no retention to reconcile.
    for spec in specs
        .iter()
        .filter(|s| !s.compact && existing.contains(&s.name))
    {
        reconcile_retention(&admin, cfg, spec, &opts).await?;
    }
    Ok(())
}

/// Brings an existing topic's retention to its spec. Where the broker cannot alter configs,
/// a topic that already keeps records no longer than allowed is accepted; one that keeps
/// them longer stops start-up.
async fn reconcile_retention(
    admin: &AdminClient<DefaultClientContext>,
    cfg: &KafkaConfig,
    spec: &TopicSpec,
    opts: &AdminOptions,
) -> Result<(), TopicError> {
    let want = spec.retention.as_millis().min(i64::MAX as u128) as i64;
    let entries = describe_configs(admin, cfg, &spec.name).await?;
    // What the topic keeps records for now, whether set on it or inherited from the broker.
    let have: Option<i64> = entries
        .iter()
        .find(|e| e.name == "retention.ms")
        .and_then(|e| e.value.as_deref()?.parse().ok());
    // The settings made on the topic itself.
    let own = entries
        .iter()
        .filter(|e| e.source == ConfigSource::DynamicTopic && !e.is_sensitive)
        .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?)));
    if have == Some(want) {
        return Ok(());
    }
    // AlterConfigs replaces every setting of the topic's own with the set it is given (rdkafka
    // offers no IncrementalAlterConfigs): send the topic's own settings back with the two
    // changed, so an operator's min.insync.replicas or segment size survives.
    let want_text = want.to_string();
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&spec.name));
    for (k, v) in own.filter(|(k, _)| !matches!(*k, "retention.ms" | "cleanup.policy")) {
        alter = alter.set(k, v);
    }
    let alter = [alter
        .set("retention.ms", &want_text)
        .set("cleanup.policy", "delete")];
    let outcome = match admin.alter_configs(&alter, opts).await {
        Ok(results) => results
            .into_iter()
            .find_map(|r| r.err())
            .map(|(_, code)| code.to_string()),
        Err(e) => Some(e.to_string()),
    };
    let Some(why) = outcome else {
        tracing::info!(topic = %spec.name, retention_ms = want, "topic retention set");
        return Ok(());
    };
    match have {
        // -1 is "forever" in Kafka.
        Some(h) if (0..=want).contains(&h) => {
            tracing::warn!(topic = %spec.name, have_ms = h, want_ms = want, %why,
                "cannot alter topic retention; it is already stricter than policy, keeping it");
            Ok(())
        }
        _ => Err(TopicError::Refused(format!(
            "topic {} keeps records for {} ms but policy allows {want} ms, and the broker did \
             not take the change ({why}); set retention.ms={want} on it, or delete it so \
             telegate recreates it",
            spec.name,
            have.map_or("an unknown time".to_owned(), |h| h.to_string()),
        ))),
    }
}

async fn describe_configs(
    admin: &AdminClient<DefaultClientContext>,
    cfg: &KafkaConfig,
    topic: &str,
) -> Result<Vec<ConfigEntry>, TopicError> {
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .map_err(|error| TopicError::Request {
            bootstrap: cfg.bootstrap.clone(),
            error,
        })?;
    Ok(described
        .into_iter()
        .flatten()
        .flat_map(|r| r.entries)
        .collect())
}

/// A setting of a topic, as the broker describes it (for tests and operators' checks).
pub async fn topic_config(
    cfg: &KafkaConfig,
    topic: &str,
    name: &str,
) -> Result<Option<String>, TopicError> {
    let admin: AdminClient<DefaultClientContext> =
        cfg.client_config().create().map_err(TopicError::Client)?;
    Ok(describe_configs(&admin, cfg, topic)
        .await?
        .into_iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value))
}

/// The `retention.ms` a topic has now, as the broker describes it.
pub async fn topic_retention_ms(cfg: &KafkaConfig, topic: &str) -> Result<Option<i64>, TopicError> {
    Ok(topic_config(cfg, topic, "retention.ms")
        .await?
        .and_then(|v| v.parse().ok()))
}
