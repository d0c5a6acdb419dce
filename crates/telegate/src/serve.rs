//! `telegate serve`: the gateway. Every option is defined once, here: its flag (the field), its
//! environment variable, and by where it sits, its key in the config file (`--mqtt-listen` is
//! `mqtt.listen`). Flags and their variables override `TELEGATE__SECTION__KEY` variables, which
//! override the file, which overrides the defaults; a flag's variable and its key's variable
//! set to different values are refused. The whole configuration is checked before anything
//! starts, and every problem is reported at once.

use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use telegate_gateway::{Config, Gateway, PackSource};

#[derive(clap::Args, Serialize, Debug)]
pub struct Args {
    /// TOML config file; flags and TELEGATE_* variables override it.
    #[arg(long, env = "TELEGATE_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    #[command(flatten)]
    mqtt: MqttArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Policy pack (TOML).
    #[arg(long, env = "TELEGATE_POLICY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<PathBuf>,
    /// /metrics, /healthz, /readyz [default: 0.0.0.0:9898]
    #[arg(long, env = "TELEGATE_METRICS_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<SocketAddr>,
    /// The key file (pseudonym, index and wrapping keys; `telegate keys new` makes one);
    /// without one, TELEGATE_KEYS or ephemeral keys.
    #[arg(long, env = "TELEGATE_KEY_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    key_file: Option<PathBuf>,
    /// Consents, activations and settings to start from (JSON).
    #[arg(long, env = "TELEGATE_STATE_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    state_file: Option<PathBuf>,
    /// How often each partition of telegate.consent-state gets a roll marker, so that erased
    /// records leave partitions no vehicle writes to (e.g. 5m; 0s turns it off) [default: 5m]
    #[arg(long, env = "TELEGATE_STATE_ROLL_INTERVAL", value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    state_roll_interval: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    console: ConsoleArgs,
    #[command(flatten)]
    schema_registry: SchemaRegistryArgs,
    #[command(flatten)]
    traces: TracesArgs,
}

#[derive(clap::Args, Serialize, Debug)]
struct MqttArgs {
    /// Plain MQTT 3.1.1 listener, anonymous clients only [default: 0.0.0.0:1883]
    #[arg(
        id = "mqtt_listen",
        long = "mqtt-listen",
        value_name = "MQTT_LISTEN",
        env = "TELEGATE_MQTT_LISTEN"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Plain MQTT 5 listener, anonymous clients only [default: 0.0.0.0:1884]
    #[arg(
        id = "mqtt5_listen",
        long = "mqtt5-listen",
        env = "TELEGATE_MQTT5_LISTEN"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_v5: Option<SocketAddr>,
    /// MQTT 3.1.1 and 5 over TLS [default: 0.0.0.0:8883 once a certificate is set]
    #[arg(
        id = "mqtt_tls_listen",
        long = "mqtt-tls-listen",
        env = "TELEGATE_MQTT_TLS_LISTEN"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_listen: Option<SocketAddr>,
    /// The server's certificate chain (PEM), e.g. server.crt from `telegate pki init`.
    #[arg(
        id = "mqtt_tls_cert",
        long = "mqtt-tls-cert",
        env = "TELEGATE_MQTT_TLS_CERT"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(
        id = "mqtt_tls_key",
        long = "mqtt-tls-key",
        env = "TELEGATE_MQTT_TLS_KEY"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    /// The fleet CA (PEM) vehicle certificates chain to; each names its VIN in the subject CN.
    #[arg(
        id = "mqtt_client_ca",
        long = "mqtt-client-ca",
        env = "TELEGATE_MQTT_CLIENT_CA"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ca: Option<PathBuf>,
    /// Revoked vehicle certificates (PEM CRL), re-read while running when the file changes.
    #[arg(
        id = "mqtt_client_crl",
        long = "mqtt-client-crl",
        env = "TELEGATE_MQTT_CLIENT_CRL"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    client_crl: Option<PathBuf>,
    /// Development only: admit clients without a certificate (and run the plain listeners).
    #[arg(
        id = "mqtt_allow_anonymous",
        long = "mqtt-allow-anonymous",
        env = "TELEGATE_MQTT_ALLOW_ANONYMOUS"
    )]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    allow_anonymous: bool,
    /// Read vehicle frames from an existing MQTT broker or cluster instead of listening:
    /// mqtt://HOST:PORT or mqtts://HOST:PORT (an MQTT 5 shared subscription).
    #[arg(
        id = "mqtt_external",
        long = "mqtt-external",
        env = "TELEGATE_MQTT_EXTERNAL",
        value_name = "URL"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    external: Option<String>,
    /// mqtts://: the CA (PEM) the external broker's certificate chains to.
    #[arg(
        id = "mqtt_external_ca",
        long = "mqtt-external-ca",
        env = "TELEGATE_MQTT_EXTERNAL_CA"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    external_ca: Option<PathBuf>,
    /// mqtts://: this worker's client certificate (PEM), if the broker asks for one.
    #[arg(
        id = "mqtt_external_cert",
        long = "mqtt-external-cert",
        env = "TELEGATE_MQTT_EXTERNAL_CERT"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    external_cert: Option<PathBuf>,
    /// mqtts://: the key of --mqtt-external-cert (PEM).
    #[arg(
        id = "mqtt_external_key",
        long = "mqtt-external-key",
        env = "TELEGATE_MQTT_EXTERNAL_KEY"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    external_key: Option<PathBuf>,
    /// This worker's client id at the external broker, the same across restarts [default:
    /// telegate-HOSTNAME]
    #[arg(
        id = "mqtt_client_id",
        long = "mqtt-client-id",
        env = "TELEGATE_MQTT_CLIENT_ID"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    /// The shared subscription group of the workers [default: telegate]
    #[arg(
        id = "mqtt_share_group",
        long = "mqtt-share-group",
        env = "TELEGATE_MQTT_SHARE_GROUP"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    share_group: Option<String>,
}

#[derive(clap::Args, Serialize, Debug)]
struct KafkaArgs {
    /// Kafka bootstrap servers [default: 127.0.0.1:9092]
    #[arg(
        id = "kafka_bootstrap",
        long = "kafka-bootstrap",
        env = "TELEGATE_KAFKA_BOOTSTRAP"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    bootstrap: Option<String>,
}

#[derive(clap::Args, Serialize, Debug)]
struct AdminArgs {
    /// Admin API (gRPC); needs a token (admin.token, admin.token_file or TELEGATE_ADMIN_TOKEN).
    #[arg(
        id = "admin_listen",
        long = "admin-listen",
        env = "TELEGATE_ADMIN_LISTEN"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// The admin API's certificate chain (PEM); with --admin-tls-key it speaks TLS only.
    #[arg(
        id = "admin_tls_cert",
        long = "admin-tls-cert",
        env = "TELEGATE_ADMIN_TLS_CERT"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    /// The admin API's private key (PEM).
    #[arg(
        id = "admin_tls_key",
        long = "admin-tls-key",
        env = "TELEGATE_ADMIN_TLS_KEY"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) admin callers' client certificates must chain to (mutual TLS, on top of the
    /// token); needs --admin-tls-cert.
    #[arg(
        id = "admin_client_ca",
        long = "admin-client-ca",
        env = "TELEGATE_ADMIN_CLIENT_CA"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ca: Option<PathBuf>,
}

#[derive(clap::Args, Serialize, Debug)]
struct ConsoleArgs {
    /// The privacy office's web console; needs console.operators, and speaks TLS with the admin
    /// API's certificate (--admin-tls-cert, --admin-tls-key) when one is set.
    #[arg(
        id = "console_listen",
        long = "console-listen",
        env = "TELEGATE_CONSOLE_LISTEN"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
}

#[derive(clap::Args, Serialize, Debug)]
struct SchemaRegistryArgs {
    /// The schema registry's Confluent-compatible API (e.g.
    /// http://registry:8080/apis/ccompat/v7), where services with encoding
    /// "confluent-protobuf" register their record schema at start.
    #[arg(
        id = "schema_registry_url",
        long = "schema-registry",
        value_name = "URL",
        env = "TELEGATE_SCHEMA_REGISTRY"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
}

#[derive(clap::Args, Serialize, Debug)]
struct TracesArgs {
    /// Export frames' traces over OTLP/HTTP to this collector (e.g. http://jaeger:4318;
    /// /v1/traces is added). Off without one.
    #[arg(
        long = "otlp-endpoint",
        value_name = "URL",
        env = "TELEGATE_OTLP_ENDPOINT"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    otlp_endpoint: Option<String>,
    /// The share of frames traced, 0 to 1; rejected and failed frames are traced whatever it
    /// is [default: 0.01]
    #[arg(
        long = "trace-sample-ratio",
        value_name = "R",
        env = "TELEGATE_TRACE_SAMPLE_RATIO"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    sample_ratio: Option<f64>,
}

/// The config key a flag of `telegate serve` sets: `--mqtt-listen` is `mqtt.listen`,
/// `--state-roll-interval` is `state_roll_interval`.
pub fn config_key(flag: &str) -> String {
    let name = flag.trim_start_matches("--");
    let key = match name {
        "mqtt5-listen" => "mqtt.listen_v5".to_owned(),
        "schema-registry" => "schema_registry.url".to_owned(),
        "otlp-endpoint" => "traces.otlp_endpoint".to_owned(),
        "trace-sample-ratio" => "traces.sample_ratio".to_owned(),
        n => match n.split_once('-') {
            Some((section @ ("mqtt" | "kafka" | "admin" | "console"), rest)) => {
                format!("{section}.{rest}")
            }
            _ => n.to_owned(),
        },
    };
    key.replace('-', "_")
}

/// Each option that has a flag, as `(flag's variable, key's variable)`: `TELEGATE_MQTT_LISTEN`
/// and `TELEGATE__MQTT__LISTEN`.
fn variable_pairs() -> Vec<(String, String)> {
    let cmd = <Args as clap::Args>::augment_args(clap::Command::new("serve"));
    cmd.get_arguments()
        .filter_map(|arg| {
            let own = arg.get_env()?.to_str()?.to_owned();
            let key = format!(
                "TELEGATE__{}",
                config_key(arg.get_long()?)
                    .to_uppercase()
                    .replace('.', "__")
            );
            Some((own, key))
        })
        .collect()
}

/// Options given twice with different values: a flag's own variable (`TELEGATE_MQTT_LISTEN`)
/// and the variable of its key (`TELEGATE__MQTT__LISTEN`) both set. Each is `(flag's
/// variable, key's variable)`. The flag's wins by precedence, but an operator who set both
/// meant one of them: `serve` refuses to guess.
pub fn conflicting_variables(env: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    variable_pairs()
        .into_iter()
        .filter(|(own, key)| matches!((env(own), env(key)), (Some(a), Some(b)) if a != b))
        .collect()
}

/// Options that have a flag but were set through their key's variable
/// (`TELEGATE__MQTT__LISTEN` for `--mqtt-listen`): each option has one variable, the flag's
/// (`TELEGATE_MQTT_LISTEN`), and `serve` says so. Each is `(flag's variable, key's variable)`.
pub fn variables_of_flagged_keys(env: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    variable_pairs()
        .into_iter()
        .filter(|(_, key)| env(key).is_some())
        .collect()
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    crate::process::init_tracing();
    let twice = conflicting_variables(|name| std::env::var(name).ok());
    if !twice.is_empty() {
        let names: Vec<String> = twice.iter().map(|(a, b)| format!("{a} and {b}")).collect();
        anyhow::bail!(
            "options set twice, to different values: {} (set one of each pair)",
            names.join(", ")
        );
    }
    for (own, key) in variables_of_flagged_keys(|name| std::env::var(name).ok()) {
        tracing::warn!("{key} is read, but this option's variable is {own}: set that one instead");
    }
    let config = Config::load(a.config.as_deref(), &a)?;
    // Each vehicle is a connection: hold as many as the system allows.
    let fds = crate::process::raise_fd_limit(1 << 20);
    tracing::info!(fds, "open-file limit");
    let gateway = Gateway::start(&config, PackSource::Config).await?;
    crate::process::shutdown_signal().await;
    tracing::info!("shutting down: draining and flushing");
    gateway.shutdown().await;
    Ok(())
}
