//! Topic creation and retention against the real Kafka-protocol broker.

use std::time::Duration;
use telegate_kafka::{KafkaConfig, ensure_topics, topic_retention_ms};
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
async fn an_existing_topic_never_keeps_longer_than_policy() {
    let name = unique("tighten");
    ensure_topics(&cfg(), &spec(&name, 30 * DAY))
        .await
        .expect("created");
    // The policy tightened. Either the broker takes the new retention, or start-up stops:
    // there is no outcome where the topic silently keeps 30 days.
    match ensure_topics(&cfg(), &spec(&name, 7 * DAY)).await {
        Ok(()) => assert_eq!(
            topic_retention_ms(&cfg(), &name).await.expect("described"),
            Some(7 * 86_400_000)
        ),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&name) && msg.contains("retention.ms=604800000"),
                "{msg}"
            );
        }
    }
    // A looser policy over a stricter topic is fine either way.
    ensure_topics(&cfg(), &spec(&name, 60 * DAY))
        .await
        .expect("stricter topic accepted");
    let have = topic_retention_ms(&cfg(), &name)
        .await
        .expect("described")
        .expect("set");
    assert!(have <= 60 * 86_400_000);
}
