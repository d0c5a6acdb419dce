//! Hidden helpers the load generator starts as processes of their own, so that their CPU is
//! not the gateway's: the bare embedded MQTT broker and librdkafka's mock cluster.

use anyhow::Context;
use std::net::SocketAddr;

#[derive(clap::Args, Debug)]
pub struct BrokerArgs {
    #[arg(long)]
    mqtt_listen: SocketAddr,
}

/// The bare embedded MQTT broker, no pipeline: the MQTT ceiling for comparisons.
pub async fn broker(a: BrokerArgs) -> anyhow::Result<()> {
    crate::process::init_tracing();
    crate::process::raise_fd_limit(1 << 20);
    let cfg = telegate_mqtt::IngressConfig {
        v4_listen: Some(a.mqtt_listen),
        ..Default::default()
    };
    let (_ingress, mut rx) =
        tokio::task::spawn_blocking(move || telegate_mqtt::Ingress::start(&cfg)).await??;
    // Drain the link like the gateway does, without a pipeline behind it.
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    crate::process::shutdown_signal().await;
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct KafkaMockArgs {
    /// A topic to create at start (repeatable); others are created on first produce.
    #[arg(long = "topic")]
    topics: Vec<String>,
}

/// librdkafka's in-memory mock cluster; prints its bootstrap address. Nothing is durable.
pub async fn kafka_mock(a: KafkaMockArgs) -> anyhow::Result<()> {
    crate::process::init_tracing();
    let mock = rdkafka::mocking::MockCluster::new(1).context("starting the mock cluster")?;
    // As many partitions as the gateway gives the topics it creates itself.
    let partitions = telegate_kafka::KafkaConfig::default().partitions;
    for topic in &a.topics {
        mock.create_topic(topic, partitions, 1)
            .with_context(|| format!("creating {topic} in the mock cluster"))?;
    }
    crate::process::print_all(&format!("{}\n", mock.bootstrap_servers()));
    crate::process::shutdown_signal().await;
    drop(mock);
    Ok(())
}
