//! What one vehicle's privacy frames can make the gateway keep: repeats change nothing, and
//! however many frames it sends, with whatever toggles, its record stays small.

use crate::check::step;
use crate::fixtures::{KIA, NOW, T, privacy, private_mode, sent};
use telegate_frame::pb::{self, vehicle_frame::Body};
use telegate_policy::{MAX_SETTINGS_POINTS, SubjectRecord, SubjectSecret};

/// The gateway writes a record as its JSON with the secret wrapped (about as long as the
/// secret in the clear) plus a format number and the index key's fingerprint: under 8 KB
/// here leaves it under 8 KB on the topic with this margin.
const BOUND: usize = 8 * 1024 - 256;

fn size(r: &SubjectRecord) -> usize {
    serde_json::to_vec(r).expect("serialises").len()
}

/// Settings with every toggle the pack names switched by `bits`, plus `junk` toggles the
/// pack does not name, each with the longest id a frame may carry.
fn settings(bits: u64, junk: usize) -> Body {
    let mut services: std::collections::HashMap<String, bool> = KIA
        .services
        .iter()
        .map(|s| s.id.to_string())
        .chain(["gis".to_owned()])
        .enumerate()
        .map(|(i, id)| (id, bits >> (i % 64) & 1 == 1))
        .collect();
    for j in 0..junk {
        services.insert(format!("{j:0>64}"), j % 2 == 0);
    }
    Body::Privacy(pb::PrivacySettings {
        private_mode: bits & 1 == 1,
        offline_mode: false,
        location_services: bits & 2 == 0,
        non_location_services: bits & 4 == 0,
        services,
    })
}

#[test]
fn identical_privacy_frames_leave_the_record_unchanged() {
    let mut v = SubjectRecord {
        secret: Some(SubjectSecret::from_random([1; 16], [2; 32])),
        ..Default::default()
    };
    let (a, _) = step(&KIA, &mut v, &sent(1, 1_000, privacy(private_mode)));
    assert!(a.changes.settings);
    let once = v.clone();
    for seq in 2..1_002 {
        let (a, _) = step(&KIA, &mut v, &sent(seq, 1_000, privacy(private_mode)));
        assert!(!a.changes.any(), "frame {seq}: {:?}", a.changes);
    }
    assert_eq!(v, once);
}

#[test]
fn a_record_stays_under_8_kb_after_1000_privacy_frames_of_any_content() {
    type Content = fn(u64) -> Body;
    let kinds: [(&str, Content); 4] = [
        ("identical", |_| settings(0b1010, 0)),
        ("alternating", |i| {
            settings(if i % 2 == 0 { 0 } else { u64::MAX }, 0)
        }),
        ("every toggle changing", |i| {
            settings(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), 0)
        }),
        ("huge toggle maps", |i| settings(i, 240)),
    ];
    for (kind, body) in kinds {
        let mut v = SubjectRecord::default();
        for i in 0..1_000u64 {
            // Captured a second apart, ending just before NOW; some arrive late.
            let at = if i % 10 == 9 {
                i as i64 * 1_000 - 5_500
            } else {
                i as i64 * 1_000
            };
            let at = at - 1_000_000 + (NOW - T) - 1;
            step(&KIA, &mut v, &sent(i + 1, at, body(i)));
            assert!(v.settings.len() <= MAX_SETTINGS_POINTS, "{kind}");
        }
        let bytes = size(&v);
        assert!(bytes <= BOUND, "{kind}: {bytes} bytes");
        assert!(v.secret.is_some(), "{kind}: sized with its key material");
        println!("{kind}: {bytes} bytes, {} points", v.settings.len());
    }
}

#[test]
fn toggles_the_pack_does_not_name_are_not_kept() {
    let mut v = SubjectRecord::default();
    let (a, _) = step(&KIA, &mut v, &sent(1, 1_000, settings(0, 3)));
    assert_eq!(a.toggles_ignored, 3);
    let kept = &v.settings_now().services;
    assert!(kept.contains_key("gis"));
    assert!(kept.keys().all(|k| k.len() < 64), "{kept:?}");
}
