//! Each option's default is written in the code once (`Config::default()`); what
//! `telegate serve --help` and docs/operations.md say about it is checked against that here:
//!
//! - every `[default: …]` in `telegate serve --help` is the configuration's default for the
//!   flag's key (or, for the two computed ones, what the code computes);
//! - the options table in docs/operations.md gives the same default as the help;
//! - the config file shown in docs/operations.md is a valid configuration, names every key the
//!   configuration has, and shows each key's default unless the key is an operator's own value
//!   (a path, an address, a token) listed below.

use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;
use telegate::serve::{config_key, conflicting_variables, variables_of_flagged_keys};
use telegate_gateway::Config;

const OPERATIONS: &str = include_str!("../../../docs/operations.md");

/// Keys whose value in the documented config file is an example, not the default.
const EXAMPLES: &[&str] = &[
    "policy",
    "key_file",
    "state_file",
    "mqtt.tls_listen",
    "mqtt.tls_cert",
    "mqtt.tls_key",
    "mqtt.client_ca",
    "mqtt.client_crl",
    "admin.listen",
    "console.listen",
    "console.operators",
    "admin.token_file",
    "admin.tls_cert",
    "admin.tls_key",
    "admin.client_ca",
    "kafka.bootstrap",
    "kafka.extra.security.protocol",
    "schema_registry.url",
    "schema_registry.username",
    "schema_registry.password_file",
    "schema_registry.ca",
    "schema_registry.client_cert",
    "schema_registry.client_key",
    "traces.otlp_endpoint",
];

/// Keys the config file in operations.md leaves out, each documented in its own section.
const ELSEWHERE: &[&str] = &[
    // "Behind an existing MQTT broker".
    "mqtt.external",
    "mqtt.external_ca",
    "mqtt.external_cert",
    "mqtt.external_key",
    "mqtt.client_id",
    "mqtt.share_group",
    "mqtt.external_inflight",
    // "Admin API and CLI": a token is given as token_file or TELEGATE_ADMIN_TOKEN.
    "admin.token",
    // "Schema registry": given as password_file or TELEGATE__SCHEMA_REGISTRY__PASSWORD.
    "schema_registry.password",
];

/// A configuration as `key.path -> value` for every leaf (unset options are `null`).
fn leaves(config: &Config) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let key = match prefix {
                        "" => k.clone(),
                        p => format!("{p}.{k}"),
                    };
                    walk(&key, v, out);
                }
            }
            _ => {
                out.insert(prefix.to_owned(), v.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        "",
        &serde_json::to_value(config).expect("serializes"),
        &mut out,
    );
    out
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `(flag, default)` for every flag of `telegate serve --help` that names a default.
fn help_defaults() -> Vec<(String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_telegate"))
        .args(["serve", "--help"])
        .output()
        .expect("the telegate binary runs");
    let help = String::from_utf8(out.stdout).expect("UTF-8");
    // One block per option: its flag line and the lines of help under it.
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if let Some(flag) = t.strip_prefix("--").map(|r| r.split([' ', ',']).next()) {
            blocks.push((format!("--{}", flag.unwrap_or_default()), String::new()));
        } else if let Some((_, text)) = blocks.last_mut() {
            text.push(' ');
            text.push_str(t);
        }
    }
    blocks
        .into_iter()
        .filter_map(|(flag, text)| {
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let (_, rest) = text.split_once("[default: ")?;
            let (default, _) = rest.split_once(']')?;
            Some((flag, default.to_owned()))
        })
        .collect()
}

#[test]
fn every_default_the_help_names_is_the_configurations() {
    let defaults = leaves(&Config::default());
    let named = help_defaults();
    assert!(named.len() >= 8, "the help names few defaults: {named:?}");
    for (flag, said) in named {
        let key = config_key(&flag);
        let actual = match key.as_str() {
            // Computed when TLS is configured and the key is not set.
            "mqtt.tls_listen" => format!(
                "{} once a certificate is set",
                telegate_mqtt::DEFAULT_TLS_LISTEN
            ),
            // Computed from the host name at start.
            "mqtt.client_id" => "telegate-HOSTNAME".to_owned(),
            key => {
                let v = defaults
                    .get(key)
                    .unwrap_or_else(|| panic!("{flag}: no key {key} in the configuration"));
                as_text(v)
            }
        };
        assert_eq!(said, actual, "{flag} ({key}): the help's default");
    }
}

#[test]
fn the_options_table_in_operations_md_gives_the_helps_defaults() {
    let help: BTreeMap<String, String> = help_defaults().into_iter().collect();
    let table = OPERATIONS
        .split("### Options")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").nth(1))
        .expect("the options table");
    let mut rows = 0;
    for row in table.lines().filter(|l| l.starts_with("| `--")) {
        rows += 1;
        let cells: Vec<&str> = row.split(" | ").collect();
        let flag = cells[0]
            .trim_start_matches("| `")
            .split([' ', '`'])
            .next()
            .expect("a flag");
        let default = cells.last().expect("a default").trim_end_matches(" |");
        let said = default
            .strip_prefix('`')
            .and_then(|d| d.split_once('`'))
            .map(|(value, _)| value);
        match (help.get(flag), said) {
            (Some(h), Some(d)) => assert!(
                h.starts_with(d),
                "{flag}: operations.md says `{d}`, the help `{h}`"
            ),
            (Some(h), None) if flag == "--mqtt-client-id" => {
                assert!(default.contains("telegate-") && h.starts_with("telegate-"));
            }
            (Some(h), None) => {
                panic!("{flag}: the help says [default: {h}], operations.md `{default}`")
            }
            (None, Some(d)) => {
                panic!("{flag}: operations.md says `{d}`, the help names no default")
            }
            (None, None) => {}
        }
    }
    assert!(rows >= 20, "only {rows} rows read from the options table");
}

#[test]
fn the_config_file_in_operations_md_shows_every_key_and_its_default() {
    let block = OPERATIONS
        .split("### The config file")
        .nth(1)
        .and_then(|rest| rest.split("```toml\n").nth(1))
        .and_then(|rest| rest.split("\n```").next())
        .expect("the config file example");
    let shown: Config = toml::from_str(block).expect("the example is a valid configuration");
    let (shown, defaults) = (leaves(&shown), leaves(&Config::default()));
    // Keys commented out in the example (`# max_handshakes = …`) count as shown.
    let commented: Vec<&str> = block
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("# "))
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
        .collect();
    let mut section = String::new();
    let mut written = Vec::new();
    for line in block.lines() {
        let l = line.split(" #").next().unwrap_or_default().trim();
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = format!("{s}.");
        } else if let Some((k, _)) = l.split_once(" = ") {
            written.push(format!("{section}{}", k.trim_matches('"')));
        }
    }
    let (mut missing, mut different) = (Vec::new(), Vec::new());
    for (key, default) in &defaults {
        if ELSEWHERE.contains(&key.as_str()) || key.starts_with("kafka.extra") {
            continue;
        }
        let name = key.rsplit('.').next().unwrap_or(key);
        if !(written.contains(key) || commented.contains(&name)) {
            missing.push(key.clone());
        }
        if written.contains(key)
            && !EXAMPLES.contains(&key.as_str())
            && shown.get(key) != Some(default)
        {
            different.push(format!(
                "{key}: shown {:?}, default {default}",
                shown.get(key)
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "operations.md's config file does not show {missing:?}"
    );
    assert!(
        different.is_empty(),
        "operations.md's config file shows other than the default: {different:#?}"
    );
    for key in EXAMPLES {
        assert!(
            written.contains(&(*key).to_owned()),
            "{key} is listed as an example but not shown"
        );
    }
}

#[test]
fn a_flags_variable_and_its_keys_variable_set_to_different_values_are_refused_and_a_key_variable_for_a_flag_is_named()
 {
    let env = |set: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            set.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    assert_eq!(
        conflicting_variables(env(&[
            ("TELEGATE_MQTT_LISTEN", "0.0.0.0:1883"),
            ("TELEGATE__MQTT__LISTEN", "0.0.0.0:2883"),
            ("TELEGATE_STATE_ROLL_INTERVAL", "5m"),
            ("TELEGATE__STATE_ROLL_INTERVAL", "5m"),
            ("TELEGATE_MQTT5_LISTEN", "0.0.0.0:1884"),
        ])),
        [(
            "TELEGATE_MQTT_LISTEN".to_owned(),
            "TELEGATE__MQTT__LISTEN".to_owned()
        )],
        "the same value twice, or one of the two, is no conflict"
    );
    assert_eq!(
        variables_of_flagged_keys(env(&[
            ("TELEGATE__MQTT__LISTEN", "0.0.0.0:2883"),
            ("TELEGATE__KAFKA__LINGER_MS", "10"),
            ("TELEGATE_STATE_ROLL_INTERVAL", "5m"),
        ])),
        [(
            "TELEGATE_MQTT_LISTEN".to_owned(),
            "TELEGATE__MQTT__LISTEN".to_owned()
        )],
        "a key without a flag has one variable, its TELEGATE__ one"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_telegate"))
        .arg("serve")
        .env("TELEGATE_KAFKA_BOOTSTRAP", "a:9092")
        .env("TELEGATE__KAFKA__BOOTSTRAP", "b:9092")
        .output()
        .expect("the telegate binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TELEGATE_KAFKA_BOOTSTRAP and TELEGATE__KAFKA__BOOTSTRAP"),
        "{stderr}"
    );
}

#[test]
fn serve_waits_for_an_unreachable_kafka_for_kafka_startup_timeout_then_says_so() {
    let nowhere = telegate_tests::free_addr().to_string();
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_telegate"))
        .arg("serve")
        .arg("--policy")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../packs/reference.toml"
        ))
        .args(["--kafka-bootstrap", &nowhere])
        .args(["--mqtt-listen", &telegate_tests::free_addr().to_string()])
        .args(["--mqtt5-listen", &telegate_tests::free_addr().to_string()])
        .args(["--metrics-listen", &telegate_tests::free_addr().to_string()])
        .env("TELEGATE__MQTT__ALLOW_ANONYMOUS", "true")
        .env("TELEGATE__KAFKA_STARTUP_TIMEOUT", "3s")
        .env("TELEGATE_LOG", "warn,librdkafka=off")
        .output()
        .expect("the telegate binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Kafka at {nowhere} did not accept telegate's topics within 3s"
        )),
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the start-up timeout is the clock's, tries and waits together: gave up after {:?}",
        started.elapsed()
    );
}
