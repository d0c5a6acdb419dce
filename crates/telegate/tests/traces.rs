//! One frame followed from the vehicle to the consumer, in a real trace backend: a vehicle
//! publishes over MQTT 5 (mosquitto_pub, a `traceparent` user property) to `telegate serve`
//! on Apache Kafka, which exports its spans over OTLP to Jaeger (scripts/jaeger); the
//! reference consumer (`telegate consume`) continues the trace from the record's header. The
//! trace is read back through Jaeger's query API: the gateway's spans and the consumer's, in
//! order, under the vehicle's span, and nothing personal in any of them; the Python consumer
//! (consumers/python, OpenTelemetry's Python SDK) continues the same trace. Anonymous and
//! pseudonymous records start traces of their own; at ratio 0 only rejected frames are traced;
//! a collector that is away holds no frame back and is named in the gateway's log.
//!
//! Needs mosquitto-clients, Go (scripts/jaeger builds Jaeger once) and
//! consumers/python/requirements.txt in the Python of TELEGATE_TEST_PYTHON: scripts/test
//! provides them.

mod tls_gateway;

use serde_json::Value;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use telegate_tests::*;
use tls_gateway::Gateway;

/// A Jaeger of the test's own, stopped and removed on drop.
struct Jaeger {
    dir: tempfile::TempDir,
    otlp: String,
    query: SocketAddr,
}

impl Jaeger {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let out = Command::new(root().join("scripts/jaeger"))
            .args(["start", "--dir"])
            .arg(dir.path())
            .output()
            .expect("scripts/jaeger runs");
        assert!(
            out.status.success(),
            "scripts/jaeger start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or_else(|| panic!("{name} in {line:?}"))
                .to_owned()
        };
        let query = field("QUERY=http://").parse().expect("query address");
        Self {
            otlp: field("OTLP_HTTP="),
            query,
            dir,
        }
    }

    /// The trace `id` as Jaeger holds it, if it does.
    fn trace(&self, id: &str) -> Option<Value> {
        let (code, body) = http_get(self.query, &format!("/api/traces/{id}")).ok()?;
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).expect("JSON");
        v["data"].get(0).cloned()
    }

    /// Waits up to a minute for trace `id` to hold a span that `done` accepts: the trace, and
    /// that span.
    async fn trace_with(&self, id: &str, done: impl Fn(&Span) -> bool) -> (Value, Span) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(t) = self.trace(id)
                && let Some(found) = spans(&t).into_iter().find(&done)
            {
                return (t, found);
            }
            assert!(
                Instant::now() < deadline,
                "trace {id} not complete in Jaeger: {:?}",
                self.trace(id)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Traces of `service` whose spans carry `key=value`.
    fn search(&self, service: &str, key: &str, value: &str) -> Vec<Value> {
        let tags = format!("%7B%22{key}%22%3A%22{value}%22%7D");
        let path = format!("/api/traces?service={service}&tags={tags}&limit=100&lookback=1h");
        let (code, body) = http_get(self.query, &path).expect("query API");
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        v["data"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/jaeger"))
            .args(["stop", "--kill", "--dir"])
            .arg(self.dir.path())
            .output();
    }
}

/// A span as the query API gives it, with what the checks need.
#[derive(Debug, Clone)]
struct Span {
    id: String,
    name: String,
    parent: Option<String>,
    service: String,
    start_us: u64,
    end_us: u64,
    tags: Vec<(String, String)>,
}

impl Span {
    fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn spans(trace: &Value) -> Vec<Span> {
    let processes = &trace["processes"];
    trace["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .map(|s| {
            let start_us = s["startTime"].as_u64().expect("startTime");
            Span {
                id: s["spanID"].as_str().expect("spanID").to_owned(),
                name: s["operationName"].as_str().expect("name").to_owned(),
                parent: s["references"]
                    .as_array()
                    .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
                    .map(|r| r["spanID"].as_str().expect("spanID").to_owned()),
                service: processes[s["processID"].as_str().expect("processID")]["serviceName"]
                    .as_str()
                    .expect("serviceName")
                    .to_owned(),
                start_us,
                end_us: start_us + s["duration"].as_u64().expect("duration"),
                tags: s["tags"]
                    .as_array()
                    .expect("tags")
                    .iter()
                    .map(|t| {
                        let value = match &t["value"] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (t["key"].as_str().expect("key").to_owned(), value)
                    })
                    .collect(),
            }
        })
        .collect()
}

/// `count` random lowercase hex digits.
fn hex(count: usize) -> String {
    (0..count)
        .map(|_| char::from_digit(rand::random::<u32>() % 16, 16).expect("digit"))
        .collect()
}

/// Publishes one QoS 1 frame as `vin` with mosquitto_pub over MQTT 5, with `traceparent` as a
/// user property when given; returns once the PUBACK came (mosquitto_pub's exit).
fn publish(g: &Gateway, vin: &str, kind: &str, payload: &str, traceparent: Option<&str>) {
    let file = |name: &str| g.pki.join(name);
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &g.tls.port().to_string()])
        .arg("--cafile")
        .arg(file("ca.crt"))
        .arg("--cert")
        .arg(file(&format!("vehicles/{vin}.crt")))
        .arg("--key")
        .arg(file(&format!("vehicles/{vin}.key")))
        .args(["-i", vin, "-V", "mqttv5", "-q", "1"])
        .args(["-t", &format!("/tenants/{vin}/v1/{kind}"), "-m", payload]);
    if let Some(value) = traceparent {
        cmd.args(["-D", "publish", "user-property", "traceparent", value]);
    }
    let out = cmd.output().expect("mosquitto_pub runs");
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn status_frame(vin: &str, seq: u64) -> String {
    let at = now_ms() - 1_000;
    format!(
        r#"{{"vin":"{vin}","seq":"{seq}","capturedAtMs":"{at}","status":{{"odometerKm":48211.4,"fuelLevelPct":52.5,"ignition":"IGNITION_ON"}}}}"#
    )
}

/// `telegate consume smart-service` for the gateway's namespace, exporting its spans.
fn reference_consumer(g: &Gateway, otlp: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_telegate"))
        .args(["consume", "smart-service", "--kafka-bootstrap", &kafka()])
        .args(["--namespace", &g.ns, "--otlp-endpoint", otlp])
        .args(["--group", &format!("trace-test-{}", hex(8))])
        .env("TELEGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("telegate consume runs")
}

/// A Jaeger of the test's own, and a gateway exporting to it with this sample ratio.
async fn traced(ratio: &str) -> (Jaeger, Gateway) {
    let jaeger = Jaeger::start();
    let g = Gateway::start(&[
        ("TELEGATE_OTLP_ENDPOINT", jaeger.otlp.as_str()),
        ("TELEGATE_TRACE_SAMPLE_RATIO", ratio),
    ])
    .await;
    (jaeger, g)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_frame_is_followed_from_the_vehicle_through_the_gateway_to_the_consumer() {
    let (jaeger, g) = traced("1").await;
    let _consumer = Killed(reference_consumer(&g, &jaeger.otlp));
    let vin = unique_vin();
    g.issue(&vin);
    let (trace_id, vehicle_span) = (hex(32), hex(16));
    let tp = format!("00-{trace_id}-{vehicle_span}-01");
    // A vendor's tracestate would be free text; none is sent, and none may appear.
    publish(&g, &vin, "status", &status_frame(&vin, 1), Some(&tp));

    let (trace, _) = jaeger
        .trace_with(&trace_id, |s| s.name == "telegate.consume")
        .await;
    let all = spans(&trace);
    let named = |name: &str| -> Vec<&Span> { all.iter().filter(|s| s.name == name).collect() };
    let one = |name: &str| -> &Span {
        let found = named(name);
        assert_eq!(found.len(), 1, "one {name} in {all:#?}");
        found[0]
    };

    // The gateway's frame span continues the vehicle's span.
    let frame = one("telegate.frame");
    assert_eq!(frame.service, "telegate");
    assert_eq!(frame.parent.as_deref(), Some(vehicle_span.as_str()));
    assert_eq!(frame.tag("telegate.outcome"), Some("acknowledged"));
    assert_eq!(frame.tag("telegate.frame.kind"), Some("status"));
    assert_eq!(frame.tag("mqtt.qos"), Some("1"));
    // Its steps, in order, inside it.
    let validate = one("telegate.validate");
    let decide = one("telegate.decide");
    for step in [validate, decide] {
        assert_eq!(step.parent.as_deref(), Some(frame.id.as_str()), "{step:?}");
        assert!(
            frame.start_us <= step.start_us && step.end_us <= frame.end_us,
            "{step:?}"
        );
    }
    assert!(validate.end_us <= decide.start_us);
    // A verdict per purpose the status frame is routed to, with its subject form.
    let purposes = named("telegate.purpose");
    let verdict = |purpose: &str| {
        purposes
            .iter()
            .find(|s| s.tag("telegate.purpose") == Some(purpose))
            .unwrap_or_else(|| panic!("no verdict for {purpose} in {purposes:#?}"))
    };
    for (purpose, form) in [("component-status", "vin"), ("trip-log", "pseudonym")] {
        let v = verdict(purpose);
        assert_eq!(v.tag("telegate.verdict"), Some("forward"));
        assert_eq!(v.tag("telegate.subject_form"), Some(form));
    }
    // The VIN-keyed record's production is in the frame's trace; the pseudonymous one's is not.
    let produce = one("telegate.produce");
    assert_eq!(produce.parent.as_deref(), Some(frame.id.as_str()));
    let smart = format!("{}telegate.smart-service", g.ns);
    assert_eq!(
        produce.tag("messaging.destination.name"),
        Some(smart.as_str())
    );
    assert_eq!(produce.tag("telegate.delivered"), Some("true"));
    assert!(decide.end_us <= produce.start_us && produce.end_us <= frame.end_us);
    // The consumer's span, under the record's production, after it.
    let consume = one("telegate.consume");
    assert_eq!(consume.service, "telegate-consumer");
    assert_eq!(consume.parent.as_deref(), Some(produce.id.as_str()));
    assert_eq!(consume.tag("telegate.outcome"), Some("processed"));
    assert!(produce.start_us <= consume.start_us);

    // Another stack continues the same trace: the Python consumer a backend team would write
    // (OpenTelemetry's Python SDK), reading the VIN-keyed record.
    let python = std::env::var("TELEGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .arg(root().join("consumers/python/telegate_consume.py"))
        .args(["--bootstrap", &kafka(), "--topic", &smart, "--max", "1"])
        .args(["--timeout", "60", "--otlp-endpoint", &jaeger.otlp])
        .output()
        .expect("the Python consumer runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(line["trace_id"], trace_id.as_str());
    let (_, python_span) = jaeger
        .trace_with(&trace_id, |s| s.service == "telegate-consume-python")
        .await;
    assert_eq!(python_span.name, "telegate.consume");
    assert_eq!(python_span.parent.as_deref(), Some(produce.id.as_str()));
    assert!(produce.start_us <= python_span.start_us);

    // The records: the VIN-keyed one carries the frame's trace, the pseudonymous one a trace
    // of its own; neither a tracestate.
    let trips = format!("{}telegate.trip-log", g.ns);
    let c = consumer(&[&smart, &trips]);
    let records = collect(&c, 2, Duration::from_secs(30), |r| {
        r.headers
            .iter()
            .any(|(k, v)| k == "telegate-seq" && v == "1")
            && (r.key.as_deref() == Some(vin.as_bytes()) || r.topic == trips)
    })
    .await;
    assert_eq!(records.len(), 2, "{records:?}");
    let header = |r: &Got, name: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v.clone())
    };
    let vin_record = records.iter().find(|r| r.topic == smart).expect("smart");
    let trip_record = records.iter().find(|r| r.topic == trips).expect("trip");
    assert_eq!(
        header(vin_record, "traceparent"),
        Some(format!("00-{trace_id}-{}-01", produce.id))
    );
    let own = header(trip_record, "traceparent").expect("a traceparent");
    assert!(own.starts_with("00-") && own.ends_with("-01"), "{own}");
    assert!(
        !own.contains(&trace_id),
        "{own} continues the vehicle's trace"
    );
    for r in &records {
        assert_eq!(header(r, "tracestate"), None);
    }
    // The pseudonymous record's trace holds its production alone.
    let own_trace = own.split('-').nth(1).expect("trace id").to_owned();
    let (separate, _) = jaeger
        .trace_with(&own_trace, |s| s.name == "telegate.produce")
        .await;
    let separate = spans(&separate);
    assert_eq!(separate.len(), 1, "{separate:#?}");
    assert_eq!(separate[0].parent, None);
    assert_eq!(separate[0].tag("telegate.subject_form"), Some("pseudonym"));

    // Nothing personal in any span: not the VIN, not the pseudonym (the trip record's key).
    let pseudonym = String::from_utf8(trip_record.key.clone().expect("keyed")).expect("UTF-8");
    for text in [
        trace.to_string(),
        jaeger.trace(&own_trace).expect("trace").to_string(),
    ] {
        assert!(!text.contains(&vin), "the VIN is in a span: {text}");
        assert!(
            !text.contains(&pseudonym),
            "the pseudonym is in a span: {text}"
        );
    }
    assert_eq!(
        g.metric("telegate_traces_exported_total", "kept=\"sampled\""),
        1.0
    );

    // A privacy frame waits for the consent state and the ledger: both writes are its spans.
    let settings_trace = hex(32);
    let at = now_ms() - 1_000;
    publish(
        &g,
        &vin,
        "privacy",
        &format!(
            r#"{{"vin":"{vin}","seq":"2","capturedAtMs":"{at}","privacy":{{"locationServices":false,"nonLocationServices":true}}}}"#
        ),
        Some(&format!("00-{settings_trace}-{}-01", hex(16))),
    );
    let (trace, frame) = jaeger
        .trace_with(&settings_trace, |s| s.name == "telegate.frame")
        .await;
    let all = spans(&trace);
    assert_eq!(frame.tag("telegate.frame.kind"), Some("privacy"));
    for write in ["telegate.state_write", "telegate.ledger_write"] {
        let w = all
            .iter()
            .find(|s| s.name == write)
            .unwrap_or_else(|| panic!("no {write} in {all:#?}"));
        assert_eq!(w.parent.as_deref(), Some(frame.id.as_str()));
        assert_eq!(w.tag("telegate.written"), Some("true"));
        assert!(
            frame.start_us <= w.start_us && w.end_us <= frame.end_us,
            "{w:?}"
        );
    }
    assert!(!trace.to_string().contains(&vin));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_ratio_zero_only_rejected_frames_are_traced() {
    let (jaeger, g) = traced("0").await;
    let vin = unique_vin();
    g.issue(&vin);
    let valid = hex(32);
    publish(
        &g,
        &vin,
        "status",
        &status_frame(&vin, 1),
        Some(&format!("00-{valid}-{}-01", hex(16))),
    );
    // Not W3C trace context: the frame gets a new trace, and the bad value is counted.
    publish(
        &g,
        &vin,
        "status",
        &status_frame(&vin, 2),
        Some("00-not-trace-context"),
    );
    let rejected = hex(32);
    publish(
        &g,
        &vin,
        "status",
        r#"{"vin":"not json"#,
        Some(&format!("00-{rejected}-{}-01", hex(16))),
    );

    let (_, frame) = jaeger
        .trace_with(&rejected, |s| s.name == "telegate.frame")
        .await;
    assert_eq!(frame.tag("telegate.outcome"), Some("rejected"));
    assert_eq!(frame.tag("telegate.reject_reason"), Some("decode-failed"));
    assert_eq!(frame.tag("telegate.sampled"), Some("false"));
    // The valid frames were published first: had they been exported, they would be there.
    assert!(
        jaeger.trace(&valid).is_none(),
        "an unsampled frame was exported"
    );
    assert!(
        jaeger
            .search("telegate", "telegate.outcome", "acknowledged")
            .is_empty()
    );
    assert_eq!(
        g.metric("telegate_traces_exported_total", "kept=\"rejected\""),
        1.0
    );
    assert_eq!(
        g.metric("telegate_traces_exported_total", "kept=\"sampled\""),
        0.0
    );
    assert_eq!(g.metric("telegate_trace_context_invalid_total", ""), 1.0);
    // Its records carry no trace context: the trace is not exported, and no consumer would
    // continue it.
    let smart = format!("{}telegate.smart-service", g.ns);
    let c = consumer(&[&smart]);
    let records = collect(&c, 2, Duration::from_secs(30), |_| true).await;
    assert_eq!(records.len(), 2);
    for r in &records {
        assert!(
            r.headers.iter().all(|(k, _)| k != "traceparent"),
            "{:?}",
            r.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_away_holds_no_frame_back_and_the_log_says_so() {
    // Nothing listens there: every export fails.
    let away = format!("http://{}", free_addr());
    let g = Gateway::start(&[
        ("TELEGATE_OTLP_ENDPOINT", away.as_str()),
        ("TELEGATE_TRACE_SAMPLE_RATIO", "1"),
    ])
    .await;
    let vin = unique_vin();
    g.issue(&vin);
    for seq in 1..=3 {
        // mosquitto_pub returns once the PUBACK came: Kafka holds the frame.
        publish(&g, &vin, "status", &status_frame(&vin, seq), None);
    }
    assert_eq!(
        g.metric("telegate_traces_exported_total", "kept=\"sampled\""),
        3.0
    );
    assert!(
        g.eventually(Duration::from_secs(30), |g| g
            .log_text()
            .contains("BatchSpanProcessor.ExportError"))
            .await,
        "no export error in the log: {}",
        g.log_text()
    );
    assert!(!g.log_text().contains(&vin));
}
