//! `telegate consume SERVICE`: one reference consumer until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use telegate_consumers::{ConsumerStats, Reference, RunnerConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// smart-service, breakdown-call, trip-log or product-insights.
    service: String,
    #[arg(
        long,
        env = "TELEGATE_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    kafka_bootstrap: String,
    /// The gateway's kafka.topic_namespace, if it has one.
    #[arg(long, default_value = "")]
    namespace: String,
    /// Consumer group [default: telegate-{service}].
    #[arg(long)]
    group: Option<String>,
    /// Where to write the current results (JSON, replaced every second).
    #[arg(long)]
    view_file: Option<PathBuf>,
    /// Purposes to accept (repeatable) [default: the shipped packs' purposes for the service].
    #[arg(long)]
    purpose: Vec<String>,
    /// product-insights: minimum number of vehicles in a released group.
    #[arg(long, default_value_t = 10)]
    k: u64,
    /// Continue the traces records carry (sampled `traceparent` headers): a span per record,
    /// exported over OTLP/HTTP to this collector (e.g. http://jaeger:4318).
    #[arg(long, value_name = "URL", env = "TELEGATE_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    crate::process::init_tracing();
    let Some(service) = Reference::parse(&a.service) else {
        anyhow::bail!(
            "no reference consumer {:?}: smart-service, breakdown-call, trip-log or product-insights",
            a.service
        )
    };
    let purposes = if a.purpose.is_empty() {
        service.purposes()
    } else {
        a.purpose
    };
    let provider = match a.otlp_endpoint {
        Some(endpoint) => Some(
            tokio::task::spawn_blocking(move || {
                telegate_kafka::trace::otlp_provider(&endpoint, "telegate-consumer")
            })
            .await??,
        ),
        None => None,
    };
    let cfg = RunnerConfig {
        kafka: telegate_kafka::KafkaConfig {
            bootstrap: a.kafka_bootstrap,
            ..Default::default()
        },
        group: a
            .group
            .unwrap_or_else(|| format!("telegate-{}", service.name())),
        inputs: service.inputs(&a.namespace),
        output: service.output(&a.namespace),
        view_file: a.view_file,
        tick: Duration::from_secs(1),
        output_retention: service.output_retention(),
        from_beginning: true,
        tracer: provider
            .as_ref()
            .map(|p| opentelemetry::trace::TracerProvider::tracer(p, "telegate-consumer")),
    };
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let stats = Arc::new(ConsumerStats::default());
    let runner = tokio::spawn(telegate_consumers::run(
        cfg,
        service.build(purposes, a.k, Duration::from_secs(5)),
        stop_rx,
        stats.clone(),
    ));
    crate::process::shutdown_signal().await;
    let _ = stop.send(true);
    runner.await??;
    if let Some(provider) = provider {
        // Exports the spans still batched.
        telegate_kafka::trace::shutdown(provider, Duration::from_secs(10)).await;
    }
    println!(
        "{}: {} processed, {} refused (other purpose), {} duplicates, {} malformed, {} results",
        service.name(),
        stats.processed.load(Relaxed),
        stats.refused.load(Relaxed),
        stats.duplicates.load(Relaxed),
        stats.malformed.load(Relaxed),
        stats.outputs.load(Relaxed)
    );
    Ok(())
}
