//! State files (`telegate policy explain --state`): subjects by VIN, each with its settings,
//! consents, activations, objections and restriction as timelines. The consent-state topic's
//! records hold the same `SubjectRecord` JSON.

use crate::fixtures::{FRAMES, KEYS, PACKS, VALID_FRAMES, VIN, secret};
use serde_json::Value;
use telegate_policy::{Settings, StateFile, SubjectRecord, Timeline, admit, explain};

/// Checks that
/// - a state file that reads writes back to the same file;
/// - every timeline answers "what was in force at t?" as its points say: the point with the
///   latest time at or before t, of points with equal times the one listed last, whatever
///   order the file lists them in;
/// - a record merged with itself is unchanged;
/// - a frame of the file's first vehicle can be explained and admitted against its record.
pub fn state_file(data: &[u8]) {
    let Ok(file) = serde_json::from_slice::<StateFile>(data) else {
        return;
    };
    let text = serde_json::to_string(&file).expect("a state file serialises");
    let back: StateFile =
        serde_json::from_str(&text).expect("a state file reads back what it writes");
    assert_eq!(back, file, "state file round trip");
    // The points as listed, where the file is written with field names (serde also reads a
    // struct written as an array of its fields, in their order; such files are not checked
    // point by point).
    let raw = serde_json::from_slice::<Value>(data).expect("a state file is JSON");
    let raw_subjects = raw.get("subjects").and_then(Value::as_object);
    for (vin, record) in &file.subjects {
        if let Some(raw) = raw_subjects.and_then(|s| s.get(vin)) {
            timelines(record, raw);
        }
        let mut twice = record.clone();
        twice.merge(record);
        assert_eq!(&twice, record, "merging a record with itself changes it");
    }
    let which = data.len() % FRAMES.len();
    let pack = &PACKS[data.len() % PACKS.len()];
    explain(pack, FRAMES[which].1, Some(&file), None)
        .expect("a valid frame can be explained with any state file");
    if let Some(record) = file.subjects.get(VIN) {
        let mut record = record.clone();
        let _ = admit(
            pack,
            &pack.label(),
            &KEYS,
            &VALID_FRAMES[which],
            &mut record,
            0,
            secret,
        );
    }
}

/// Every timeline of `record` against the points its JSON (`raw`) lists, in the file's order.
fn timelines(record: &SubjectRecord, raw: &Value) {
    let listed = |field: &str| raw.get(field).cloned().unwrap_or(Value::Null);
    like_its_points(&record.settings, &listed("settings"), |v| {
        serde_json::from_value::<Settings>(v.clone()).ok()
    });
    like_its_points(&record.restricted, &listed("restricted"), Value::as_bool);
    for (field, map) in [
        ("consents", &record.consents),
        ("activations", &record.activations),
        ("objections", &record.objections),
    ] {
        for (name, timeline) in map {
            let points = listed(field).get(name).cloned().unwrap_or(Value::Null);
            like_its_points(timeline, &points, Value::as_bool);
        }
    }
}

fn like_its_points<T: PartialEq + std::fmt::Debug>(
    timeline: &Timeline<T>,
    raw: &Value,
    value: impl Fn(&Value) -> Option<T>,
) {
    let points: Vec<(i64, T)> = raw
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p.get(0)?.as_i64()?, value(p.get(1)?)?)))
        .collect();
    if points.len() != timeline.len() {
        return;
    }
    let in_force = |at: i64| {
        points
            .iter()
            .enumerate()
            .filter(|(_, (t, _))| *t <= at)
            .max_by_key(|(i, (t, _))| (*t, *i))
            .map(|(_, (t, v))| (*t, v))
    };
    let mut probes: Vec<i64> = points
        .iter()
        .flat_map(|(t, _)| [t.saturating_sub(1), *t, t.saturating_add(1)])
        .collect();
    probes.extend([i64::MIN, i64::MAX]);
    for at in probes {
        let expected = in_force(at);
        assert_eq!(
            timeline.at(at),
            expected.map(|(_, v)| v),
            "the value in force at {at} (points {points:?})"
        );
        assert_eq!(timeline.since(at), expected.map(|(t, _)| t));
    }
    assert_eq!(
        timeline.latest(),
        in_force(i64::MAX).map(|(_, v)| v),
        "the latest value (points {points:?})"
    );
}
