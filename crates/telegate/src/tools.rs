//! Hidden helpers the load generator starts as processes of their own, so that their CPU is
//! not the gateway's: the bare embedded MQTT broker and librdkafka's mock cluster.

use anyhow::Context;
use std::net::SocketAddr;

#[derive(clap::Args, Debug)]
pub struct BrokerArgs {
    #[arg(long)]
    mqtt_listen: SocketAddr,
}

/// rumqttd's general-purpose broker, no pipeline: what a broker costs, for the load
/// generator's comparisons with telegate's own edge. Nothing else uses rumqttd.
pub async fn broker(a: BrokerArgs) -> anyhow::Result<()> {
    use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
    crate::process::init_tracing();
    crate::process::raise_fd_limit(1 << 20);
    let server = ServerSettings {
        name: "v4".into(),
        listen: a.mqtt_listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 256 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1_000_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 64 * 1024 * 1024,
            max_segment_count: 8,
            ..Default::default()
        },
        v4: Some(std::collections::HashMap::from([("v4".to_owned(), server)])),
        ..Default::default()
    };
    // rumqttd's start() blocks for ever; the process ends on a signal.
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            if let Err(e) = Broker::new(config).start() {
                tracing::error!(error = %e, "rumqttd stopped");
            }
        })
        .context("starting rumqttd")?;
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
