//! The `telegate` command line: parses and dispatches, nothing else.

use clap::{Parser, Subcommand};
use telegate::{
    admin, connections, console, consume, demo, keys, loadgen, pki, policy, serve, simulate, state,
    tools,
};

/// jemalloc keeps its bookkeeping apart from the memory it hands out, so buffers reserved but
/// never written stay unbacked (docs/performance.md, "Connection scale"). It serves
/// librdkafka's C allocations too (`malloc` is jemalloc's in this binary): each record's
/// headers and message cost fewer instructions there than in glibc's allocator
/// (docs/performance.md, "The edge's cost").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "telegate",
    version,
    about = "Consent-aware MQTT-to-Kafka gateway for connected vehicles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the largest variant's options costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(serve::Args),
    /// Run everything on this machine with zero setup: the gateway with its MQTT edge,
    /// librdkafka's in-process mock Kafka cluster (or a real one), a simulated fleet, a live
    /// view.
    Demo(demo::Args),
    /// Run a simulated fleet against an MQTT broker.
    Simulate(simulate::Args),
    /// Load-test a gateway, or compare telegate with bare rumqttd, Mosquitto and Kafka.
    Loadgen(loadgen::Args),
    /// Idle vehicle connections, to measure memory per connection.
    Connections(connections::Args),
    /// Run a reference consumer: smart-service, breakdown-call, trip-log or product-insights.
    Consume(consume::Args),
    /// The admin API: consents, objections, activations, erasure, export.
    Admin(admin::Args),
    /// The privacy office's web console: operators and their tokens.
    Console(console::Args),
    /// Policy pack tools.
    Policy(policy::Args),
    /// The fleet's certificates: CA and server certificate, vehicle certificates, revocation.
    Pki(pki::Args),
    /// New key material for the key file: pseudonym, index and wrapping keys.
    Keys(keys::Args),
    /// The consent-state topic: count its records, rewrite them under the active wrapping key.
    State(state::Args),
    /// The bare embedded MQTT broker, no pipeline: the MQTT ceiling for comparisons.
    #[command(hide = true)]
    Broker(tools::BrokerArgs),
    /// librdkafka's in-memory mock Kafka cluster in a process of its own, for load studies
    /// where the Kafka-protocol broker must not be the bound. Prints its bootstrap address.
    /// Nothing is durable.
    #[command(hide = true)]
    KafkaMock(tools::KafkaMockArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(a) => serve::run(a).await,
        Command::Console(a) => console::run(a),
        Command::Demo(a) => demo::run(a).await,
        Command::Simulate(a) => simulate::run(a).await,
        Command::Loadgen(a) => loadgen::run(a).await,
        Command::Connections(a) => connections::run(a).await,
        Command::Consume(a) => consume::run(a).await,
        Command::Admin(a) => admin::run(a).await,
        Command::Policy(a) => policy::run(a).await,
        Command::Pki(a) => pki::run(a),
        Command::Keys(a) => keys::run(a),
        Command::State(a) => state::run(a).await,
        Command::Broker(a) => tools::broker(a).await,
        Command::KafkaMock(a) => tools::kafka_mock(a).await,
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
