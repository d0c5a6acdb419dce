//! Two gateways behind a TCP load balancer (HAProxy from Debian, on loopback), each a process
//! of its own with its own MQTT edge, sharing one Kafka and one namespace, as several gateways
//! share a cluster in production. In one run:
//! - a breakdown-snapshot request made through the admin API of the instance that does not
//!   hold the vehicle reaches the vehicle (through `telegate.vehicle-requests`), and the
//!   vehicle's answer is judged by the consent recorded on the other instance; a record on
//!   that topic that is not a request is counted on both, and ignored;
//! - consent changes made through either instance's admin API are enforced by the other: the
//!   delay, measured across processes, is printed, and a frame captured after a withdrawal
//!   made on one instance goes nowhere on the other;
//! - vehicles that keep every frame until its PUBACK (telegate-sim's link, half MQTT 3.1.1,
//!   half MQTT 5) connect through HAProxy and spread over both; one instance is killed with
//!   SIGKILL, its vehicles reconnect through HAProxy to the other, and every frame they made
//!   is in Kafka.
//!
//! Delivery and loss are asserted; timings are printed, never asserted.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use telegate_admin_proto::pb as apb;
use telegate_frame::pb::{self, vehicle_frame::Body};
use telegate_policy::SubjectRecord;
use telegate_tests::*;

mod cluster;
mod fleet;

use cluster::{Admin, Haproxy, Instance, admin, origin, settings};
use fleet::{Fleet, fleet_size, in_kafka};

/// One record per status frame keyed by VIN with its seq (as the load pack), a purpose on
/// standing consent, and the breakdown purpose a snapshot request feeds.
const PACK: &str = r#"
id = "load-balanced"
version = "1"

[services.loadgen]
[services.charging-locations]
[services.breakdown-call]

[purposes.loadgen]
service = "loadgen"
legal_basis = "contract"
kinds = ["status"]
categories = ["identification", "status"]
identity = "vin"
retention = "1day"

[purposes.charging-location]
service = "charging-locations"
legal_basis = "consent"
consent = "standing"
kinds = ["charging"]
categories = ["identification", "charging", "location"]
identity = "vin"
location = "exact"
retention = "1day"

[purposes.breakdown-assistance]
service = "breakdown-call"
legal_basis = "consent"
consent = "event:assistance"
kinds = ["breakdown"]
categories = ["identification", "breakdown", "status", "diagnostics", "location"]
identity = "vin"
retention = "1day"
"#;

/// Not a test: a gateway's own process, which the test starts (see
/// [`spawn_gateway_process`]).
#[test]
#[ignore = "a gateway process of the load-balanced test, started by it"]
fn gateway_process() {
    run_gateway_process();
}

/// An instance's view of a vehicle, through its admin API (what its decisions read).
async fn state_on(api: &mut Admin, vin: &str) -> SubjectRecord {
    let json = api
        .get_state(apb::Subject {
            vin: vin.to_owned(),
        })
        .await
        .expect("state")
        .into_inner()
        .state_json;
    serde_json::from_str(&json).expect("a subject record")
}

/// Polls `api` until the vehicle's consent to `purpose` is `granted`; how long it took.
async fn until_consent(api: &mut Admin, vin: &str, purpose: &str, granted: bool) -> Duration {
    let start = Instant::now();
    while state_on(api, vin).await.consent_now(purpose) != granted {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the other instance did not take the change within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

fn median_max(d: &mut [Duration]) -> String {
    d.sort();
    format!(
        "median {:.1} ms, max {:.1} ms",
        d[d.len() / 2].as_secs_f64() * 1e3,
        d[d.len() - 1].as_secs_f64() * 1e3
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_behind_haproxy_share_consent_pass_requests_on_and_lose_nothing_when_one_is_killed()
 {
    let dir = tempfile::tempdir().expect("tmp");
    let ns = format!("lb{:08x}.", rand::random::<u32>());
    std::fs::write(dir.path().join("pack.toml"), PACK).expect("pack");
    let configs = [settings(&ns, dir.path()), settings(&ns, dir.path())];
    let starting: Vec<_> = configs
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let d = dir.path().to_owned();
            tokio::task::spawn_blocking(move || Instance::start(c, &d, &format!("gw{i}")))
        })
        .collect();
    let mut gw = Vec::new();
    for s in starting {
        gw.push(s.await.expect("started"));
    }
    let lb = Haproxy::start(dir.path(), &[&gw[0], &gw[1]]);

    a_request_reaches_the_vehicle_through_the_instance_that_holds_it(&ns, &gw, &lb).await;
    a_consent_change_on_one_instance_is_enforced_by_the_other(&ns, &gw).await;
    a_killed_instance_loses_no_frame_of_its_vehicles(&ns, &mut gw, &lb).await;
}

async fn a_request_reaches_the_vehicle_through_the_instance_that_holds_it(
    ns: &str,
    gw: &[Instance],
    lb: &Haproxy,
) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let vin = unique_vin();
    let (vehicle, mut events) = AsyncClient::new(
        MqttOptions::new("lb-vehicle", "127.0.0.1", lb.mqtt.port()),
        16,
    );
    vehicle
        .subscribe(format!("/tenants/{vin}/v1/request"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no SUBACK through HAProxy");
        if let Ok(Ok(Event::Incoming(Packet::SubAck(_)))) =
            tokio::time::timeout(Duration::from_secs(1), events.poll()).await
        {
            break;
        }
    }
    // The vehicle is the only connection: the instance with one open holds it.
    let holder = gw
        .iter()
        .position(|g| g.connections() == 1)
        .expect("one instance holds the vehicle");
    let (holder, other) = (&gw[holder], &gw[1 - holder]);
    assert_eq!(other.connections(), 0);
    let (mut on_other, mut on_holder) = (admin(other).await, admin(holder).await);
    // A breakdown call placed in the app, recorded with a snapshot request; how long from
    // the admin call until the vehicle has the request.
    let ask = async |api: &mut Admin, events: &mut rumqttc::EventLoop, call: String| {
        let called = Instant::now();
        api.record_call_consent(apb::CallConsent {
            vin: vin.clone(),
            call_id: call.clone(),
            assistance: true,
            dealer: false,
            request_snapshot: true,
            origin: origin(0),
        })
        .await
        .expect("recorded");
        next_request(events, &call).await;
        called.elapsed()
    };

    // Recorded on the instance without the vehicle.
    let first = ask(&mut on_other, &mut events, "lb-call-0".into()).await;
    // The vehicle answers on its connection, to the instance that holds it, which judges the
    // snapshot by the consent recorded on the other one.
    let (topic, payload) = message(
        &vin,
        1,
        now_ms() - 500,
        Body::Breakdown(pb::BreakdownCall {
            call_id: "lb-call-0".into(),
            trigger: pb::BreakdownTrigger::App as i32,
            consent: None,
            snapshot: Some(pb::BreakdownSnapshot::default()),
        }),
    );
    vehicle
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .expect("queued");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no PUBACK for the snapshot");
        if let Ok(Ok(Event::Incoming(Packet::PubAck(_)))) =
            tokio::time::timeout(Duration::from_secs(1), events.poll()).await
        {
            break;
        }
    }
    let c = consumer(&[&format!("{ns}telegate.breakdown-call")]);
    let got = collect_expecting(&c, 1, Duration::from_secs(2), |_| true).await;
    assert_eq!(got.len(), 1, "the snapshot, once: {got:?}");
    assert_eq!(got[0].header("telegate-consent"), Some("granted"));

    // More of the same, and as many on the holder, which uses its own edge.
    const MORE: u64 = 5;
    let (mut crossed, mut local) = (Vec::new(), Vec::new());
    for i in 1..=MORE {
        crossed.push(ask(&mut on_other, &mut events, format!("lb-call-{i}")).await);
        local.push(ask(&mut on_holder, &mut events, format!("lb-call-h{i}")).await);
    }

    // A record on the topic that is not a request: counted by both, delivered nowhere.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .expect("producer");
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&format!("{ns}telegate.vehicle-requests"))
                .key("not-a-state-key")
                .payload("{\"kind\":\"unlock-doors\"}"),
            Duration::from_secs(10),
        )
        .await
        .expect("written");
    let want = [
        (other, "published", 1 + MORE),
        (other, "not-here", 1 + MORE),
        (other, "malformed", 1),
        (other, "local", 0),
        (holder, "delivered", 1 + MORE),
        (holder, "local", MORE),
        (holder, "malformed", 1),
        (holder, "published", 0),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !want.iter().all(|(g, r, n)| g.requests(r) == *n) {
        assert!(
            Instant::now() < deadline,
            "request counts: {:?}",
            want.map(|(g, r, _)| (r, g.requests(r)))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "snapshot request, admin call to the vehicle: through the other instance and \
         telegate.vehicle-requests {:.1} ms the first time, then {} ({MORE} calls); through the \
         holder's own edge {}",
        first.as_secs_f64() * 1e3,
        median_max(&mut crossed),
        median_max(&mut local),
    );
    let _ = vehicle.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
}

/// Waits for the vehicle's next request, which must be the snapshot request for `call`.
async fn next_request(events: &mut rumqttc::EventLoop, call: &str) {
    use rumqttc::{Event, Packet};
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let req: serde_json::Value =
                    serde_json::from_slice(&p.payload).expect("JSON request");
                assert_eq!(
                    (req["kind"].as_str(), req["callId"].as_str()),
                    (Some("breakdown-snapshot"), Some(call))
                );
                return;
            }
            Ok(Ok(_)) => {}
            other => panic!("no request reached the vehicle: {other:?}"),
        }
    }
}

fn charging(vin: &str, seq: u64, at: i64) -> (String, Vec<u8>) {
    message(
        vin,
        seq,
        at,
        Body::Charging(pb::ChargingSession {
            session_id: format!("s-{seq}"),
            phase: pb::ChargingPhase::Ended as i32,
            energy_kwh: Some(12.0),
            location: Some(pb::Location {
                lat_deg: 52.5,
                lon_deg: 13.4,
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
}

async fn a_consent_change_on_one_instance_is_enforced_by_the_other(ns: &str, gw: &[Instance]) {
    const PURPOSE: &str = "charging-location";
    let vin = unique_vin();
    let mut api = [admin(&gw[0]).await, admin(&gw[1]).await];
    let change = |granted: bool, at: i64| apb::ConsentChange {
        vin: vin.clone(),
        purpose: PURPOSE.into(),
        granted,
        origin: origin(at),
    };
    api[0]
        .set_consent(change(true, now_ms() - 60_000))
        .await
        .expect("granted on 0");
    until_consent(&mut api[1], &vin, PURPOSE, true).await;
    // Straight to instance 1's own listener: it decides.
    publish_v4(gw[1].mqtt, vec![charging(&vin, 1, now_ms() - 1_000)]).await;

    // Alternate the instance that takes the change; the other must decide by it. From
    // "granted", 21 toggles end in a withdrawal made on instance 0.
    let mut delays: [Vec<Duration>; 2] = Default::default();
    for i in 0..21 {
        let (on, watch) = (i % 2, 1 - i % 2);
        let granted = i % 2 == 1;
        let called = Instant::now();
        api[on]
            .set_consent(change(granted, 0))
            .await
            .expect("changed");
        until_consent(&mut api[watch], &vin, PURPOSE, granted).await;
        delays[on].push(called.elapsed());
    }
    let mut all: Vec<Duration> = delays.iter().flatten().copied().collect();
    println!(
        "consent change on one gateway process to enforcement by the other: {} ({} changes; 0 -> 1: {}; 1 -> 0: {})",
        median_max(&mut all),
        all.len(),
        median_max(&mut delays[0]),
        median_max(&mut delays[1]),
    );
    // Withdrawn on instance 0: a frame captured now goes nowhere on instance 1.
    publish_v4(gw[1].mqtt, vec![charging(&vin, 2, now_ms() + 5)]).await;
    let c = consumer(&[&format!("{ns}telegate.charging-locations")]);
    let got = collect_expecting(&c, 1, Duration::from_secs(3), |g| {
        g.key.as_deref() == Some(vin.as_bytes())
    })
    .await;
    let seqs: Vec<_> = got
        .iter()
        .filter_map(|g| g.header("telegate-seq"))
        .collect();
    assert_eq!(
        seqs,
        ["1"],
        "only the frame captured while consent was in force"
    );
}

async fn a_killed_instance_loses_no_frame_of_its_vehicles(
    ns: &str,
    gw: &mut [Instance],
    lb: &Haproxy,
) {
    let n = fleet_size();
    // 4 frames/s from each vehicle.
    let fleet = Fleet::start(n, lb, Duration::from_millis(250));
    fleet
        .wait_acknowledged(8 * n as u64, Duration::from_secs(60))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let held = loop {
        let held = [gw[0].connections(), gw[1].connections()];
        if held[0] + held[1] == n as u64 {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "not every vehicle connected once: {held:?} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        held[0] > 0 && held[1] > 0,
        "the vehicles spread over both instances: {held:?}"
    );
    let connects = fleet.stats.connects.load(Relaxed);
    let before = fleet.acknowledged();

    gw[0].kill();
    let killed = Instant::now();
    // Its vehicles reconnect through HAProxy to the other instance.
    let (mut moved, mut down) = (None, None);
    while moved.is_none() || down.is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "60 s after the kill: {} of {n} vehicles on the other instance; HAProxy has it {}",
            gw[1].connections(),
            if down.is_some() { "down" } else { "up" },
        );
        if moved.is_none() && gw[1].connections() >= n as u64 {
            moved = Some(killed.elapsed());
        }
        if down.is_none() && lb.is_down("gw0") {
            down = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64());
    fleet
        .wait_acknowledged(before + 8 * n as u64, Duration::from_secs(60))
        .await;
    let fleet = fleet.stop().await;
    let made = fleet.made();
    let seen = in_kafka(
        &format!("{ns}telegate.loadgen"),
        &fleet.vins,
        &made,
        Duration::from_secs(30),
    )
    .await;
    let lost = made.iter().filter(|k| !seen.contains_key(*k)).count();
    let doubled: u32 = seen.values().map(|n| n - 1).sum();
    println!(
        "{n} vehicles through HAProxy, {held:?} per instance; instance 0 killed with SIGKILL: \
         its {} vehicles all on instance 1 {:.1} s later ({} reconnects), HAProxy had it down \
         after {:.1} s; {} frames made, {lost} missing, {doubled} duplicates in Kafka; \
         vehicles: {:?}",
        held[0],
        secs(moved),
        fleet.stats.connects.load(Relaxed) - connects,
        secs(down),
        made.len(),
        fleet.stats
    );
    assert_eq!(lost, 0, "frames the vehicles made are not in Kafka");
    assert_eq!(fleet.stats.outstanding.load(Relaxed), 0);
}
