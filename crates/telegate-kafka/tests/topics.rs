//! Topic creation and retention against the real Kafka-protocol broker.

use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use std::time::Duration;
use telegate_kafka::{KafkaConfig, ensure_topics, topic_config, topic_retention_ms};
use telegate_policy::TopicSpec;

fn cfg() -> KafkaConfig {
    KafkaConfig {
        bootstrap: std::env::var("TELEGATE_TEST_KAFKA").unwrap_or_else(|_| {
            panic!("TELEGATE_TEST_KAFKA is not set: run scripts/test, which starts a broker")
        }),
        ..KafkaConfig::default()
    }
}

const DAY: Duration = Duration::from_secs(86_400);

fn spec(name: &str, d: Duration) -> Vec<TopicSpec> {
    vec![TopicSpec {
        name: name.to_owned(),
        retention: d,
        compact: false,
    }]
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("telegate.test-{prefix}-{n:x}")
}

#[tokio::test]
async fn topics_are_created_with_policy_retention() {
    let name = unique("create");
    ensure_topics(&cfg(), &spec(&name, 30 * DAY))
        .await
        .expect("created");
    assert_eq!(
        topic_retention_ms(&cfg(), &name).await.expect("described"),
        Some(30 * 86_400_000)
    );
    // Running again on the same topic is a no-op.
    ensure_topics(&cfg(), &spec(&name, 30 * DAY))
        .await
        .expect("idempotent");
}

#[tokio::test]
async fn an_existing_topic_that_keeps_records_longer_is_altered_and_keeps_its_own_settings() {
    let name = unique("tighten");
    ensure_topics(&cfg(), &spec(&name, 30 * DAY))
        .await
        .expect("created");
    // An operator's own setting on the topic: telegate's change must not wipe it (Kafka's
    // AlterConfigs replaces the topic's whole set of settings).
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cfg().bootstrap)
        .create()
        .expect("admin client");
    let own = [AlterConfig::new(ResourceSpecifier::Topic(&name))
        .set("retention.ms", "2592000000")
        .set("max.message.bytes", "123456")];
    let altered = admin
        .alter_configs(&own, &AdminOptions::new())
        .await
        .expect("alter request");
    assert!(altered.iter().all(Result::is_ok), "{altered:?}");
    // A broker applies a config change through its metadata log: wait until it describes the
    // operator's setting, as it would long before telegate next starts.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while topic_config(&cfg(), &name, "max.message.bytes")
        .await
        .expect("described")
        .as_deref()
        != Some("123456")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the operator's setting never showed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The policy tightened: Kafka takes the new retention.
    ensure_topics(&cfg(), &spec(&name, 7 * DAY))
        .await
        .expect("tightened");
    assert_eq!(
        topic_retention_ms(&cfg(), &name).await.expect("described"),
        Some(7 * 86_400_000)
    );
    assert_eq!(
        topic_config(&cfg(), &name, "max.message.bytes")
            .await
            .expect("described")
            .as_deref(),
        Some("123456"),
        "the topic's own settings survive the change"
    );
    // A looser policy sets the topic to the policy's retention too: the topic's retention is
    // the policy's, whichever way it moved.
    ensure_topics(&cfg(), &spec(&name, 60 * DAY))
        .await
        .expect("loosened");
    assert_eq!(
        topic_retention_ms(&cfg(), &name).await.expect("described"),
        Some(60 * 86_400_000)
    );
}
