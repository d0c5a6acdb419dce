//! Consent state, the admin API and data-subject rights, end to end against the real
//! Kafka-protocol broker: several gateway instances share one namespace, as several gateways
//! share one cluster in production.

use std::time::{Duration, Instant};
use telegate_admin_proto::AdminClient;
use telegate_admin_proto::pb::{self, Origin};
use telegate_frame::pb::{self as fpb, VehicleFrame, vehicle_frame::Body};
use telegate_frame::{FrameKind, PayloadFormat, Vin, decode, encode, vehicle_topic};
use telegate_gateway::state::record;
use telegate_gateway::{Config, Gateway, PackSource};
use telegate_policy::{Keyring, PurposeId, SubjectRecord, SubjectSecret, unseal};
use telegate_tests::*;
use tonic::transport::Channel;

mod erasure;

const TOKEN: &str = "test-admin-token-0123456789";

struct Instance {
    gw: Gateway,
    mqtt: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

fn settings(pack: &str, ns: &str, dir: &std::path::Path) -> Config {
    let mut s = gateway_config(pack, ns, dir);
    s.admin.listen = Some(free_addr());
    s.admin.token = Some(TOKEN.to_owned());
    s.admin.sweep_interval = Duration::from_millis(200);
    s
}

async fn start(s: &Config) -> Instance {
    let gw = Gateway::start(s, PackSource::Config)
        .await
        .expect("gateway starts");
    Instance {
        mqtt: s.mqtt.listen.expect("mqtt"),
        admin: gw.admin_addr().expect("admin API"),
        gw,
    }
}

fn namespace() -> String {
    format!("a{:08x}.", rand::random::<u32>())
}

type Intercept =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Client = AdminClient<tonic::service::interceptor::InterceptedService<Channel, Intercept>>;

async fn client(addr: std::net::SocketAddr, token: Option<&str>) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("admin API reachable");
    let header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
        token.map(|t| format!("Bearer {t}").parse().expect("header"));
    let intercept: Intercept = Box::new(move |mut req: tonic::Request<()>| {
        if let Some(h) = &header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    });
    AdminClient::with_interceptor(channel, intercept)
}

fn origin(at_ms: i64) -> Option<Origin> {
    Some(Origin {
        channel: pb::Channel::App as i32,
        text_version: "consent-text-v3".into(),
        actor: "test".into(),
        at_ms,
    })
}

fn charging(vin: &str, seq: u64, at: i64) -> VehicleFrame {
    VehicleFrame {
        vin: vin.into(),
        seq,
        captured_at_ms: at,
        body: Some(Body::Charging(fpb::ChargingSession {
            session_id: format!("s-{seq}"),
            phase: fpb::ChargingPhase::Ended as i32,
            energy_kwh: Some(12.0),
            location: Some(fpb::Location {
                lat_deg: 52.5,
                lon_deg: 13.4,
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

fn status(vin: &str, seq: u64, at: i64) -> VehicleFrame {
    VehicleFrame {
        vin: vin.into(),
        seq,
        captured_at_ms: at,
        body: Some(Body::Status(fpb::Status {
            odometer_km: Some(1234.0),
            ..Default::default()
        })),
    }
}

async fn send(mqtt: std::net::SocketAddr, frames: &[VehicleFrame]) {
    let msgs = frames
        .iter()
        .map(|f| {
            let kind = FrameKind::of_body(f.body.as_ref().expect("body"));
            (
                vehicle_topic(&f.vin, kind),
                encode(f, PayloadFormat::Protobuf),
            )
        })
        .collect();
    publish_v4(mqtt, msgs).await;
}

/// Polls until `f` holds for the instance's view of `vin`; returns how long it took.
async fn until(gw: &Gateway, vin: &Vin, f: impl Fn(Option<&SubjectRecord>) -> bool) -> Duration {
    let start = Instant::now();
    while !gw.state().with(vin, &f) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "state did not converge"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_rejects_unauthenticated_calls() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = start(&settings("ev-charging", &namespace(), dir.path())).await;
    let vin = unique_vin();
    for token in [None, Some("wrong-token-wrong-token")] {
        let err = client(a.admin, token)
            .await
            .get_state(pb::Subject { vin: vin.clone() })
            .await
            .expect_err("must be refused");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    }
    let ok = client(a.admin, Some(TOKEN))
        .await
        .get_state(pb::Subject { vin })
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    a.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_each_mistake_with_its_own_code() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = start(&settings("ev-charging", &namespace(), dir.path())).await;
    let mut api = client(a.admin, Some(TOKEN)).await;
    let vin = unique_vin();
    fn code_and_message<T>(r: Result<tonic::Response<T>, tonic::Status>) -> (tonic::Code, String) {
        let e = r.map(|_| ()).expect_err("must fail");
        (e.code(), e.message().to_owned())
    }

    // Not a VIN: said as such, and nothing else.
    let bad = api
        .get_state(pb::Subject {
            vin: "WP0ZZZ99ZTS3921".into(),
        })
        .await;
    assert_eq!(
        code_and_message(bad),
        (
            tonic::Code::InvalidArgument,
            "vin: a VIN has 17 characters".to_owned()
        )
    );
    let bad = api
        .erase(pb::Subject {
            vin: "wp0zzz99zts392124".into(),
        })
        .await;
    assert_eq!(code_and_message(bad).0, tonic::Code::InvalidArgument);
    let bad = api
        .record_call_consent(pb::CallConsent {
            vin: vin.clone(),
            call_id: String::new(),
            ..Default::default()
        })
        .await;
    assert_eq!(code_and_message(bad).0, tonic::Code::InvalidArgument);
    let bad = api
        .unseal(pb::UnsealRequest {
            sealed: "not-sealed".into(),
        })
        .await;
    assert_eq!(code_and_message(bad).0, tonic::Code::InvalidArgument);

    // A purpose the pack does not have.
    let (code, message) = code_and_message(
        api.set_consent(pb::ConsentChange {
            vin: vin.clone(),
            purpose: "no-such-purpose".into(),
            granted: true,
            origin: origin(0),
        })
        .await,
    );
    assert_eq!(code, tonic::Code::NotFound, "{message}");
    assert!(message.contains("no-such-purpose"), "{message}");
    // A purpose that rests on a legal obligation, not on consent.
    let (code, message) = code_and_message(
        api.set_consent(pb::ConsentChange {
            vin: vin.clone(),
            purpose: "charging-transactions".into(),
            granted: true,
            origin: origin(0),
        })
        .await,
    );
    assert_eq!(code, tonic::Code::FailedPrecondition, "{message}");

    // None of them changed anything; a vehicle never seen is no error.
    let state = api
        .get_state(pb::Subject { vin })
        .await
        .expect("an empty record")
        .into_inner();
    assert!(
        !state.state_json.contains("charging-transactions"),
        "{state:?}"
    );
    a.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_consent_state_and_a_withdrawal_on_one_is_enforced_by_the_other() {
    let dir = tempfile::tempdir().expect("tmp");
    let ns = namespace();
    let a = start(&settings("ev-charging", &ns, dir.path())).await;
    let b = start(&settings("ev-charging", &ns, dir.path())).await;
    let vin_s = unique_vin();
    let vin = Vin::parse(&vin_s).expect("vin");
    let mut api = client(a.admin, Some(TOKEN)).await;
    let t0 = now_ms() - 60_000;
    api.set_consent(pb::ConsentChange {
        vin: vin_s.clone(),
        purpose: "charging-location".into(),
        granted: true,
        origin: origin(t0),
    })
    .await
    .expect("granted on A");
    until(&b.gw, &vin, |s| {
        s.is_some_and(|r| r.consent_now("charging-location"))
    })
    .await;
    send(b.mqtt, &[charging(&vin_s, 1, now_ms() - 1_000)]).await;

    // Toggle consent on A; measure how long until B enforces each change.
    let mut delays = Vec::new();
    // An odd number of toggles from "granted": the last change is a withdrawal.
    for i in 0..11 {
        let granted = i % 2 == 1;
        let called = Instant::now();
        api.set_consent(pb::ConsentChange {
            vin: vin_s.clone(),
            purpose: "charging-location".into(),
            granted,
            origin: origin(0),
        })
        .await
        .expect("changed on A");
        until(&b.gw, &vin, |s| {
            s.is_some_and(|r| r.consent_now("charging-location") == granted)
        })
        .await;
        // From the API call to the other instance deciding by the new state.
        delays.push(called.elapsed());
    }
    delays.sort();
    println!(
        "admin call on instance A to enforcement on instance B: median {:?}, max {:?} ({} changes)",
        delays[delays.len() / 2],
        delays[delays.len() - 1],
        delays.len()
    );
    // The last change was a withdrawal: a frame captured now goes nowhere on B.
    let withdrawn_at = now_ms();
    send(b.mqtt, &[charging(&vin_s, 2, withdrawn_at + 5)]).await;
    let topic = format!("{ns}telegate.charging-locations");
    let c = consumer(&[&topic]);
    let got = collect_expecting(&c, 1, Duration::from_secs(4), |_| true).await;
    let seqs: Vec<_> = got
        .iter()
        .filter_map(|g| g.header("telegate-seq").map(str::to_owned))
        .collect();
    assert_eq!(
        seqs,
        ["1"],
        "only the frame captured while consent was in force"
    );

    // A new instance reads the whole state topic before it is ready.
    let c_instance = start(&settings("ev-charging", &ns, dir.path())).await;
    let recovered = c_instance
        .gw
        .state()
        .get(&vin)
        .expect("state recovered from the topic");
    assert_eq!(
        recovered.consents,
        a.gw.state().get(&vin).expect("state").consents
    );
    assert_eq!(
        recovered.secret,
        a.gw.state().get(&vin).expect("state").secret
    );
    for i in [a, b, c_instance] {
        i.gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_shows_state_ledger_and_what_each_purpose_received() {
    let dir = tempfile::tempdir().expect("tmp");
    let ns = namespace();
    let a = start(&settings("ev-charging", &ns, dir.path())).await;
    let vin_s = unique_vin();
    let mut api = client(a.admin, Some(TOKEN)).await;
    api.set_consent(pb::ConsentChange {
        vin: vin_s.clone(),
        purpose: "charging-location".into(),
        granted: true,
        origin: origin(now_ms() - 60_000),
    })
    .await
    .expect("granted");
    let t = now_ms() - 10_000;
    send(
        a.mqtt,
        &[charging(&vin_s, 1, t), charging(&vin_s, 2, t + 1_000)],
    )
    .await;
    let c = consumer(&[&format!("{ns}telegate.charging-sessions")]);
    assert_eq!(
        collect(&c, 2, Duration::from_secs(20), |_| true)
            .await
            .len(),
        2
    );

    let json = api
        .export(pb::Subject { vin: vin_s.clone() })
        .await
        .expect("export")
        .into_inner()
        .json;
    let v: serde_json::Value = serde_json::from_str(&json).expect("export is JSON");
    assert_eq!(v["vin"], vin_s);
    assert!(v["state"]["consents"]["charging-location"].is_array());
    assert!(
        v["state"].get("secret").is_none_or(|s| s.is_null()),
        "key material never exported"
    );
    let ledger = v["ledger"].as_array().expect("ledger");
    let grant = ledger
        .iter()
        .find(|e| e["action"] == "consent")
        .expect("consent entry");
    assert_eq!(
        (grant["channel"].as_str(), grant["text_version"].as_str()),
        (Some("app"), Some("consent-text-v3"))
    );
    let deliveries = v["deliveries"].as_array().expect("deliveries");
    for purpose in ["charging-transactions", "charging-location"] {
        let d = deliveries
            .iter()
            .find(|d| d["purpose"] == purpose)
            .expect("listed");
        assert_eq!(d["records"], 2, "{purpose}: {d}");
        assert_eq!(d["first_captured_at_ms"], t);
        assert_eq!(d["last_captured_at_ms"], t + 1_000);
    }
    a.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_account_is_processed_no_more_and_deleted_after_the_retention_check() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = settings("kia-connect", &namespace(), dir.path());
    s.admin.block_grace = Duration::from_secs(1);
    let a = start(&s).await;
    let vin_s = unique_vin();
    let vin = Vin::parse(&vin_s).expect("vin");
    send(a.mqtt, &[status(&vin_s, 1, now_ms() - 5_000)]).await;
    until(&a.gw, &vin, |r| r.is_some()).await;
    let mut api = client(a.admin, Some(TOKEN)).await;
    let state = api
        .block_account(pb::Subject { vin: vin_s.clone() })
        .await
        .expect("blocked")
        .into_inner();
    assert!(state.state_json.contains("blocked"), "{}", state.state_json);
    // The edge no longer admits the vehicle.
    let late = status(&vin_s, 2, now_ms() - 1_000);
    let refused = publish_refused(
        a.mqtt,
        vehicle_topic(&vin_s, FrameKind::Status),
        encode(&late, PayloadFormat::Protobuf),
    )
    .await;
    assert!(refused, "a blocked vehicle's frame is refused at the edge");
    assert_eq!(
        a.gw.edge()
            .stats()
            .refused(telegate_mqtt::Refusal::VehicleBlocked),
        1
    );
    let topic = format!("{}telegate.vehicle-status", s.kafka.topic_namespace);
    let c = consumer(&[&topic]);
    let got = collect_expecting(&c, 1, Duration::from_secs(4), |_| true).await;
    let seqs: Vec<_> = got
        .iter()
        .filter_map(|g| g.header("telegate-seq").map(str::to_owned))
        .collect();
    assert_eq!(seqs, ["1"], "nothing after the block");
    // After the grace period the sweeper erases the vehicle.
    until(&a.gw, &vin, |r| r.is_none()).await;
    let ledger_topic = format!("{}telegate.consent-ledger", s.kafka.topic_namespace);
    let hash = a.gw.ledger().subject_hash(&vin);
    let cfg = telegate_kafka::KafkaConfig {
        bootstrap: kafka(),
        ..Default::default()
    };
    let entries = telegate_kafka::scan(&cfg, &ledger_topic, |k| k == hash.as_bytes())
        .await
        .expect("scan");
    let actions: Vec<String> = entries
        .iter()
        .filter_map(|e| e.value.as_ref())
        .filter_map(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
        .map(|v| {
            format!(
                "{}:{}",
                v["action"].as_str().unwrap_or(""),
                v["actor"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(actions.contains(&"block:".to_owned()), "{actions:?}");
    assert!(
        actions.contains(&"erase:retention-check".to_owned()),
        "{actions:?}"
    );
    a.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_objection_stops_legitimate_interest_purposes_from_then_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let ns = namespace();
    let a = start(&settings("kia-connect", &ns, dir.path())).await;
    let vin_s = unique_vin();
    let location = |seq, at| VehicleFrame {
        vin: vin_s.clone(),
        seq,
        captured_at_ms: at,
        body: Some(Body::Location(fpb::Location {
            lat_deg: 48.8,
            lon_deg: 9.2,
            ..Default::default()
        })),
    };
    let t = now_ms() - 30_000;
    send(a.mqtt, &[location(1, t)]).await;
    let mut api = client(a.admin, Some(TOKEN)).await;
    api.set_objection(pb::PurposeFlag {
        vin: vin_s.clone(),
        purpose: "live-improvement".into(),
        on: true,
        origin: origin(t + 1_000),
    })
    .await
    .expect("objection recorded");
    send(a.mqtt, &[location(2, t + 2_000)]).await;
    let live = format!("{ns}telegate.live-improvement");
    let trips = format!("{ns}telegate.trip-log");
    let c = consumer(&[&live, &trips]);
    let got = collect_expecting(&c, 3, Duration::from_secs(4), |_| true).await;
    let on = |topic: &str| got.iter().filter(|g| g.topic == topic).count();
    assert_eq!(
        on(&live),
        1,
        "legitimate interest: only the frame before the objection"
    );
    assert_eq!(
        on(&trips),
        2,
        "contract purposes are not affected by an objection"
    );
    a.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_breakdown_call_asks_the_vehicle_and_uses_the_recorded_consent() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let dir = tempfile::tempdir().expect("tmp");
    let ns = namespace();
    let a = start(&settings("porsche-connect", &ns, dir.path())).await;
    let vin_s = unique_vin();
    // The vehicle listens for requests.
    let (vehicle, mut events) =
        AsyncClient::new(MqttOptions::new("vehicle", "127.0.0.1", a.mqtt.port()), 16);
    vehicle
        .subscribe(format!("/tenants/{vin_s}/v1/request"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        if let Ok(Ok(Event::Incoming(Packet::SubAck(_)))) =
            tokio::time::timeout(Duration::from_secs(5), events.poll()).await
        {
            break;
        }
    }
    let mut api = client(a.admin, Some(TOKEN)).await;
    api.record_call_consent(pb::CallConsent {
        vin: vin_s.clone(),
        call_id: "app-call-1".into(),
        assistance: true,
        dealer: false,
        request_snapshot: true,
        origin: origin(0),
    })
    .await
    .expect("recorded");
    let request = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => break p,
            Ok(Ok(_)) => {}
            other => panic!("no request reached the vehicle: {other:?}"),
        }
    };
    let req: serde_json::Value = serde_json::from_slice(&request.payload).expect("JSON request");
    assert_eq!(
        (req["kind"].as_str(), req["callId"].as_str()),
        (Some("breakdown-snapshot"), Some("app-call-1"))
    );
    // The vehicle answers with its snapshot; the frame itself carries no consent.
    let call = VehicleFrame {
        vin: vin_s.clone(),
        seq: 1,
        captured_at_ms: now_ms() - 500,
        body: Some(Body::Breakdown(fpb::BreakdownCall {
            call_id: "app-call-1".into(),
            trigger: fpb::BreakdownTrigger::App as i32,
            consent: None,
            snapshot: Some(fpb::BreakdownSnapshot::default()),
        })),
    };
    send(a.mqtt, &[call]).await;
    let c = consumer(&[
        &format!("{ns}telegate.breakdown-call"),
        &format!("{ns}telegate.breakdown-dealer"),
    ]);
    let got = collect_expecting(&c, 1, Duration::from_secs(4), |_| true).await;
    assert_eq!(got.len(), 1, "assistance only: {got:?}");
    assert!(got[0].topic.ends_with("breakdown-call"));
    assert_eq!(got[0].header("telegate-consent"), Some("granted"));
    a.gw.shutdown().await;
}
