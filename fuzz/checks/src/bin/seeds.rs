//! Writes the seed corpora, `fuzz/corpus/{target}/{name}`, from the shipped packs, the
//! examples, the test suite's frames and hand-made MQTT packets. Run it after changing any of
//! them: `fuzz/run seeds`. Seeds keep their names; inputs the fuzzer found (crashes made
//! regression inputs) live beside them under other names and are left alone.

use bytes::BytesMut;
use prost::Message;
use rumqttc::mqttbytes::{QoS as QoS4, v4};
use rumqttc::v5::mqttbytes::{QoS as QoS5, v5};
use std::path::{Path, PathBuf};
use telegate_admin_proto::pb as admin;
use telegate_frame::{PayloadFormat, Vin, decode, encode};
use telegate_fuzz_checks::fixtures::{
    CAPTURED_AT_MS, FRAMES, OTHER_VIN, PACK_SOURCES, VIN, secret,
};
use telegate_policy::{SubjectRecord, seal};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("checks lives in fuzz/")
        .join("corpus");
    let mut seeds = Seeds { root, written: 0 };
    topics(&mut seeds);
    frames(&mut seeds);
    packs(&mut seeds);
    state_files(&mut seeds);
    key_files(&mut seeds);
    admin_requests(&mut seeds);
    mqtt(&mut seeds);
    println!(
        "{} seeds written under {}",
        seeds.written,
        seeds.root.display()
    );
}

struct Seeds {
    root: PathBuf,
    written: usize,
}

impl Seeds {
    fn put(&mut self, target: &str, name: &str, bytes: impl AsRef<[u8]>) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        write(&dir.join(name), bytes.as_ref());
        self.written += 1;
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn topics(s: &mut Seeds) {
    for (name, topic) in [
        ("status", format!("/tenants/{VIN}/v1/status")),
        ("charging", format!("/tenants/{VIN}/v1/charging")),
        ("other-vehicle", format!("/tenants/{OTHER_VIN}/v1/location")),
        ("unknown-kind", format!("/tenants/{VIN}/v1/receipt")),
        ("v2", format!("/tenants/{VIN}/v2/status")),
        ("extra-level", format!("/tenants/{VIN}/v1/status/extra")),
        ("no-vin", "/tenants//v1/status".to_owned()),
        (
            "lower-case-vin",
            "/tenants/wp0zzz99zts392124/v1/status".to_owned(),
        ),
        (
            "short-vin",
            "/tenants/WP0ZZZ99ZTS39212/v1/status".to_owned(),
        ),
        ("wildcard", "/tenants/+/v1/status".to_owned()),
        ("no-leading-slash", format!("tenants/{VIN}/v1/status")),
        ("vin-only", VIN.to_owned()),
        ("check-digit", "1M8GDM9AXKP042788".to_owned()),
    ] {
        s.put("topic", name, topic);
    }
}

/// Every fixture frame in both formats, with steering bytes that spread them over the packs
/// and arrival times; and the frames of crates/telegate-frame/tests.
fn frames(s: &mut Seeds) {
    let mut json_frames: Vec<(String, String)> = FRAMES
        .iter()
        .map(|(name, json)| (name.to_string(), json.trim().to_owned()))
        .collect();
    json_frames.extend([
        (
            "status-full".to_owned(),
            format!(
                r#"{{"vin":"{VIN}","seq":"48","capturedAtMs":"{CAPTURED_AT_MS}","status":{{"odometerKm":48211.4,"fuelLevelPct":12.5,"batterySocPct":80,"rangeKm":120,"ignition":"IGNITION_ACCESSORY","openings":{{"locked":true,"doorFrontLeft":"OPEN_STATE_CLOSED","boot":"OPEN_STATE_OPEN","sunroof":"OPEN_STATE_CLOSED"}},"tyres":{{"frontLeftKpa":240,"frontRightKpa":241,"rearLeftKpa":250,"rearRightKpa":249.5}},"fluids":{{"engineOil":"FLUID_LEVEL_OK","coolant":"FLUID_LEVEL_LOW","brakeFluid":"FLUID_LEVEL_OK","washerFluid":"FLUID_LEVEL_CRITICAL","adbluePct":33}},"lvBattery":{{"voltageV":12.4,"socPct":90}},"hvBattery":{{"socPct":80,"sohPct":97,"temperatureC":21.5,"voltageV":398,"charging":true,"alert":false}},"trigger":"STATUS_TRIGGER_PERIODIC","serviceDueKm":-120}}}}"#
            ),
        ),
        // crates/telegate-frame/tests/validation.rs: the contract's example, unknown fields.
        (
            "contract-location".to_owned(),
            format!(
                r#"{{"vin":"{VIN}","seq":"7","capturedAtMs":"{CAPTURED_AT_MS}","location":{{"latDeg":48.8,"lonDeg":9.2}}}}"#
            ),
        ),
        (
            "unknown-fields".to_owned(),
            format!(
                r#"{{"vin":"{VIN}","seq":"1","capturedAtMs":"{CAPTURED_AT_MS}","futureField":1,"status":{{"newSensor":3}}}}"#
            ),
        ),
        (
            "no-body".to_owned(),
            format!(r#"{{"vin":"{VIN}","seq":"1","capturedAtMs":"{CAPTURED_AT_MS}"}}"#),
        ),
        (
            "out-of-range".to_owned(),
            format!(
                r#"{{"vin":"{VIN}","seq":"2","capturedAtMs":"{CAPTURED_AT_MS}","location":{{"latDeg":91,"lonDeg":9.2}}}}"#
            ),
        ),
        ("not-json".to_owned(), "{not json".to_owned()),
    ]);
    for (i, (name, json)) in json_frames.iter().enumerate() {
        // Own topic, on time, pack i; the last bit pattern asks for the check digit too.
        let steer = ((i as u8) << 4) | if i % 3 == 2 { 1 } else { 0 };
        s.put("frame_json", name, [&[steer][..], json.as_bytes()].concat());
        if let Ok((raw, _)) = decode(json.as_bytes()) {
            let pb = encode(&raw, PayloadFormat::Protobuf);
            s.put("frame_protobuf", name, [&[steer][..], &pb[..]].concat());
        }
    }
    // Late and early arrivals, and the example's topic for another vehicle's frame.
    let status = json_frames[0].1.as_bytes();
    for (name, steer) in [
        ("late", 0b1000u8),
        ("early", 0b0100),
        ("fixed-topic", 0b0010),
    ] {
        s.put("frame_json", name, [&[steer][..], status].concat());
    }
}

fn packs(s: &mut Seeds) {
    for (name, text) in PACK_SOURCES {
        s.put("pack", name, text);
    }
    // Every service option the shipped packs leave out: JSON records, own topics and
    // retention, coarse location and time, sealed and anonymous subjects, once per vehicle.
    s.put(
        "pack",
        "options",
        r#"id = "options"
version = "1"
title = "Every option"

[rejected]
retention = "1day"

[services.json-out]
topic = "options.json-out"
encoding = "json"
retention = "90days"
description = "JSON records"

[services.stats]

[purposes.coarse]
service = "json-out"
legal_basis = "legitimate-interest"
kinds = ["location", "status", "charging"]
categories = ["identification", "location", "status", "charging"]
fields = ["location.*", "status.fuel_level_pct", "charging.session_id"]
identity = "sealed"
location = "1km"
time = "1h"
off_when = ["private-mode", "location-services-off"]
requires = ["location-services"]
retention = "30days"
recipients = ["the operator"]
cite = ["none"]

[purposes.stats]
service = "stats"
legal_basis = "consent"
consent = "standing"
kinds = ["software", "diagnostics", "breakdown", "privacy"]
categories = ["identification", "software", "diagnostics", "breakdown"]
identity = "anonymous"
once_per_vehicle = "1day"
retention = "1year"
"#,
    );
    // From crates/telegate-policy/tests/policy.rs: every error at once.
    s.put(
        "pack",
        "errors",
        r#"id = "Bad Id"
version = ""
[services.a]
encoding = "xml"
[services.b]
topic = "telegate.rejected"
[purposes.p]
service = "nope"
legal_basis = "vibes"
kinds = ["status", "teleport", "status"]
identity = "face"
categories = ["status"]
retention = "forever"
"#,
    );
    s.put("pack", "syntax", "id = \"x\"\nversion = 1\n");
}

fn state_files(s: &mut Seeds) {
    s.put(
        "state_file",
        "private-mode",
        include_str!("../../../../examples/state/private-mode.json"),
    );
    // From telegate-policy's state tests.
    s.put(
        "state_file",
        "consents",
        format!(
            r#"{{"subjects":{{"{VIN}":{{"consents":{{"product-improvement":[[1000,true],[5000,false]]}},"activations":{{"geofence-alert":[[0,true]]}},"settings":[[2000,{{"private_mode":true,"location_services":true,"non_location_services":true}}]]}}}}}}"#
        ),
    );
    // Every part of a record, as the gateway writes it.
    let mut r = SubjectRecord::default();
    let at = CAPTURED_AT_MS;
    r.settings.set(
        at - 5000,
        telegate_policy::Settings {
            offline_mode: false,
            private_mode: false,
            location_services: false,
            non_location_services: true,
            services: [("trip-log".to_owned(), false)].into(),
        },
    );
    r.consents
        .entry("product-improvement".into())
        .or_default()
        .set(at - 9000, true);
    r.activations
        .entry("geofence-alert".into())
        .or_default()
        .set(at - 9000, true);
    r.objections
        .entry("offers".into())
        .or_default()
        .set(at - 1, true);
    r.restricted.set(at + 1000, true);
    r.call_consents.insert(
        "call-7".into(),
        telegate_policy::CallConsent {
            assistance: true,
            dealer: false,
        },
    );
    r.secret = Some(secret());
    r.contributions
        .insert("stats/software".into(), at - 86_400_000);
    let mut file = telegate_policy::StateFile::default();
    file.subjects.insert(VIN.into(), r.clone());
    r.account = telegate_policy::Account::Blocked {
        at_ms: at,
        delete_after_ms: at + 1000,
    };
    file.subjects.insert(OTHER_VIN.into(), r);
    s.put(
        "state_file",
        "full",
        serde_json::to_vec(&file).expect("serialises"),
    );
}

fn key_files(s: &mut Seeds) {
    let hex = |b: u8| format!("{b:02x}").repeat(32);
    s.put(
        "key_file",
        "rotation",
        format!(
            r#"[[keys]]
id = "2026-11"
secret_hex = "{}"
active = true

[[keys]]
id = "2026-05"
secret_hex = "{}"

[state]
index_hex = "{}"

[[state.wrapping]]
id = "w-2026-11"
secret_hex = "{}"
active = true

[[state.wrapping]]
id = "w-2026-05"
secret_hex = "{}"
"#,
            hex(0x1a),
            hex(0x2b),
            hex(0x3c),
            hex(0x4d),
            hex(0x5e)
        ),
    );
    s.put(
        "key_file",
        "no-state",
        format!(
            "[[keys]]\nid = \"k\"\nsecret_hex = \"{}\"\nactive = true\n",
            hex(0x6f)
        ),
    );
}

fn admin_requests(s: &mut Seeds) {
    let origin = Some(admin::Origin {
        channel: admin::Channel::App as i32,
        text_version: "2026-11".into(),
        actor: "fuzz".into(),
        at_ms: CAPTURED_AT_MS,
    });
    let mut put = |name: &str, which: u8, bytes: Vec<u8>| {
        s.put("admin_request", name, [&[which][..], &bytes[..]].concat());
    };
    put(
        "set-consent",
        0,
        admin::ConsentChange {
            vin: VIN.into(),
            purpose: "product-improvement".into(),
            granted: true,
            origin: origin.clone(),
        }
        .encode_to_vec(),
    );
    put(
        "set-objection",
        1,
        admin::PurposeFlag {
            vin: VIN.into(),
            purpose: "trip-log".into(),
            on: true,
            origin: origin.clone(),
        }
        .encode_to_vec(),
    );
    put(
        "set-restriction",
        2,
        admin::Flag {
            vin: VIN.into(),
            on: true,
            origin: origin.clone(),
        }
        .encode_to_vec(),
    );
    put(
        "set-activation",
        3,
        admin::ActivationChange {
            vin: VIN.into(),
            feature: "geofence-alert".into(),
            active: true,
            origin: origin.clone(),
        }
        .encode_to_vec(),
    );
    put(
        "call-consent",
        4,
        admin::CallConsent {
            vin: VIN.into(),
            call_id: "call-7".into(),
            assistance: true,
            dealer: true,
            request_snapshot: true,
            origin,
        }
        .encode_to_vec(),
    );
    put(
        "subject",
        5,
        admin::Subject { vin: VIN.into() }.encode_to_vec(),
    );
    for (name, json) in FRAMES {
        put(
            &format!("explain-{name}"),
            6,
            admin::ExplainRequest {
                frame_json: json.trim().into(),
            }
            .encode_to_vec(),
        );
    }
    let vin = Vin::parse(VIN).expect("valid VIN");
    put(
        "unseal",
        7,
        admin::UnsealRequest {
            sealed: seal(&secret(), &vin, b"breakdown-dealer/42"),
        }
        .encode_to_vec(),
    );
}

/// Steering byte for [`telegate_fuzz_checks::mqtt_codec`]: the edge's packet limit, the bytes
/// in pieces of `piece`.
fn steer(piece: u8) -> u8 {
    ((piece - 1) << 2) | 2
}

fn mqtt(s: &mut Seeds) {
    let own = format!("/tenants/{VIN}/v1/status");
    let request = format!("/tenants/{VIN}/v1/request");
    let payload = FRAMES[0].1.trim().as_bytes().to_vec();

    // MQTT 3.1.1: a session with every packet a vehicle sends.
    let mut v4s = BytesMut::new();
    let mut connect = v4::Connect::new("car-1");
    connect.keep_alive = 30;
    connect.clean_session = false;
    connect.login = Some(v4::Login::new("user", "pass"));
    let mut publish = v4::Publish::new(own.clone(), QoS4::AtLeastOnce, payload.clone());
    publish.pkid = 7;
    let mut subscribe = v4::Subscribe::new(request.clone(), QoS4::AtLeastOnce);
    subscribe.pkid = 8;
    subscribe.filters.push(v4::SubscribeFilter::new(
        "/tenants/+/v1/+".into(),
        QoS4::AtMostOnce,
    ));
    let mut unsubscribe = v4::Unsubscribe::new(request.clone());
    unsubscribe.pkid = 9;
    for p in [
        v4::Packet::Connect(connect),
        v4::Packet::Publish(publish),
        v4::Packet::Publish(v4::Publish::new(
            format!("/tenants/{OTHER_VIN}/v1/status"),
            QoS4::AtMostOnce,
            b"x".to_vec(),
        )),
        v4::Packet::Subscribe(subscribe),
        v4::Packet::PubAck(v4::PubAck::new(1)),
        v4::Packet::Unsubscribe(unsubscribe),
        v4::Packet::PingReq,
        v4::Packet::Disconnect,
    ] {
        p.write(&mut v4s, usize::MAX).expect("encodes");
    }
    s.put(
        "mqtt_codec",
        "v4-session",
        [&[steer(64)][..], &v4s[..]].concat(),
    );
    s.put(
        "mqtt_codec",
        "v4-session-bytewise",
        [&[steer(1)][..], &v4s[..]].concat(),
    );

    // MQTT 3.1 ("MQIsdp", level 3): the same CONNECT under the old name.
    let mut v3 = BytesMut::new();
    v4::Packet::Connect(v4::Connect::new("car-3"))
        .write(&mut v3, usize::MAX)
        .expect("encodes");
    let mut old = vec![0x10, 0, 0, 6];
    old.extend_from_slice(b"MQIsdp");
    old.push(3);
    old.extend_from_slice(&v3[2 + 2 + 4 + 1..]);
    old[1] = u8::try_from(old.len() - 2).expect("short");
    s.put(
        "mqtt_codec",
        "v3-connect",
        [&[steer(3)][..], &old[..]].concat(),
    );

    // MQTT 5: properties on every packet that has them.
    let mut v5s = BytesMut::new();
    let connect = v5::Connect {
        keep_alive: 60,
        client_id: "car-5".into(),
        clean_start: false,
        properties: Some(v5::ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(8),
            max_packet_size: Some(65536),
            topic_alias_max: Some(0),
            request_response_info: Some(0),
            request_problem_info: Some(1),
            user_properties: vec![("fleet".into(), "demo".into())],
            authentication_method: None,
            authentication_data: None,
        }),
    };
    let mut publish = v5::Publish::new(
        own.clone(),
        QoS5::AtLeastOnce,
        payload,
        Some(v5::PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            topic_alias: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![("k".into(), "v".into())],
            subscription_identifiers: Vec::new(),
            content_type: Some("application/json".into()),
        }),
    );
    publish.pkid = 7;
    let mut subscribe =
        v5::Subscribe::new(v5::Filter::new(request.clone(), QoS5::AtLeastOnce), None);
    subscribe.pkid = 8;
    let mut unsubscribe = v5::Unsubscribe::new(request, None);
    unsubscribe.pkid = 9;
    for p in [
        v5::Packet::Connect(connect, None, Some(v5::Login::new("user", "pass"))),
        v5::Packet::Publish(publish),
        v5::Packet::Subscribe(subscribe),
        v5::Packet::PubAck(v5::PubAck::new(1, None)),
        v5::Packet::Unsubscribe(unsubscribe),
        v5::Packet::PingReq(v5::PingReq),
        v5::Packet::Disconnect(v5::Disconnect::new(
            v5::DisconnectReasonCode::NormalDisconnection,
        )),
    ] {
        p.write(&mut v5s, None).expect("encodes");
    }
    s.put(
        "mqtt_codec",
        "v5-session",
        [&[steer(64)][..], &v5s[..]].concat(),
    );
    s.put(
        "mqtt_codec",
        "v5-session-in-7s",
        [&[steer(7)][..], &v5s[..]].concat(),
    );
    // The short DISCONNECT (no reason code) after a bare CONNECT.
    let mut short = BytesMut::new();
    v5::Packet::Connect(
        v5::Connect {
            keep_alive: 0,
            client_id: String::new(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    )
    .write(&mut short, None)
    .expect("encodes");
    short.extend_from_slice(&[0xE0, 0]);
    s.put(
        "mqtt_codec",
        "v5-short-disconnect",
        [&[steer(1)][..], &short[..]].concat(),
    );
    // A first packet that is not a CONNECT, and a CONNECT of an unknown level.
    s.put("mqtt_codec", "ping-first", [steer(64), 0xC0, 0]);
    let mut level6 = v4s[..].to_vec();
    level6[2 + 6] = 6;
    s.put(
        "mqtt_codec",
        "level-6",
        [&[steer(64)][..], &level6[..]].concat(),
    );

    for (name, rule) in [
        ("own-status", own),
        ("own-request", format!("/tenants/{VIN}/v1/request")),
        ("other-request", format!("/tenants/{OTHER_VIN}/v1/request")),
        ("own-prefix-wildcard", format!("/tenants/{VIN}/#")),
        ("own-level-wildcard", format!("/tenants/{VIN}/v1/+")),
        ("any-vehicle-request", "/tenants/+/v1/request".to_owned()),
        ("everything", "#".to_owned()),
        ("shared", "$share/g/#".to_owned()),
        ("hash-inside", "/tenants/#/x".to_owned()),
        ("vin-suffix", format!("/tenants/{VIN}X/v1/status")),
    ] {
        s.put("mqtt_rules", name, rule);
    }
}
