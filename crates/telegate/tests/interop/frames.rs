//! The frames the clients publish: one proto3-JSON line each.

use crate::clients::Mqtt;
use std::path::{Path, PathBuf};
use telegate_tests::now_ms;

/// A status frame as one line of proto3-JSON.
pub(crate) fn frame(vin: &str, seq: u64) -> String {
    format!(
        r#"{{"vin":"{vin}","seq":"{seq}","capturedAtMs":"{}","status":{{"odometerKm":{}.5,"fuelLevelPct":40,"ignition":"IGNITION_ON"}}}}"#,
        now_ms() - 1_000,
        seq % 100_000
    )
}

/// A frame padded with JSON whitespace so that its PUBLISH (QoS 1, no properties) is exactly
/// `packet` bytes long.
pub(crate) fn frame_of_packet_size(
    vin: &str,
    seq: u64,
    topic: &str,
    mqtt: Mqtt,
    packet: usize,
) -> String {
    let f = frame(vin, seq);
    let variable = 2 + topic.len() + 2 + usize::from(mqtt == Mqtt::V5);
    let varint = |n: usize| match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    let remaining = (1..=4)
        .map(|len| packet - 1 - len)
        .find(|r| varint(*r) == packet - 1 - r)
        .expect("a remaining length");
    let payload = remaining - variable;
    assert!(payload >= f.len(), "the frame fits");
    format!("{{{}{}", " ".repeat(payload - f.len()), &f[1..])
}

pub(crate) fn write_lines(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").expect("frames file");
    p
}

pub(crate) fn status_topic(vin: &str) -> String {
    format!("/tenants/{vin}/v1/status")
}
