//! The far side: reads what arrived and matches it back by (VIN, seq).

use crate::tracker::Tracker;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Headers, Message};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use telegate_kafka::{Start, assign_all};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub enum Observer {
    /// Records on a Kafka topic, keyed by VIN with a `telegate-seq` header.
    Kafka { bootstrap: String, topic: String },
    /// An MQTT subscriber to every vehicle topic (bare brokers): the generator's own, which
    /// keeps its session across connections.
    Mqtt { addr: SocketAddr, qos: u8 },
}

impl Observer {
    /// Starts observing and returns once it is in place (nothing published after this is
    /// missed).
    pub async fn start(
        &self,
        tracker: Arc<Tracker>,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        match self.clone() {
            Observer::Kafka { bootstrap, topic } => {
                let consumer: StreamConsumer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set(
                        "group.id",
                        format!("telegate-loadgen-{:08x}", rand::random::<u32>()),
                    )
                    .set("enable.auto.commit", "false")
                    .set("fetch.wait.max.ms", "5")
                    // Where the broker makes topics on first use (the mock cluster), asking
                    // for this one makes it.
                    .set("allow.auto.create.topics", "true")
                    .create()?;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                loop {
                    if !assign_all(&consumer, &[&topic], Start::End)?.is_empty() {
                        break;
                    }
                    anyhow::ensure!(
                        tokio::time::Instant::now() < deadline,
                        "topic {topic} has no partitions"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = stop.changed() => return,
                            m = consumer.recv() => {
                                let Ok(m) = m else { continue };
                                let seq = m.headers().and_then(|h| h.iter().find(|x| x.key == "telegate-seq"))
                                    .and_then(|x| x.value).and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
                                if let (Some(vin), Some(seq)) = (m.key().and_then(|k| std::str::from_utf8(k).ok()), seq) {
                                    tracker.observed(vin, seq);
                                }
                            }
                        }
                    }
                }))
            }
            Observer::Mqtt { addr, qos } => {
                crate::lean::subscriber::start(addr, qos, tracker, stop).await
            }
        }
    }
}
