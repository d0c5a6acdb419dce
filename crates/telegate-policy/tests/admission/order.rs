//! The order rules of admission: offline mode is judged first, settings count from their own
//! capture time, and only forwarded purposes record a contribution.

use crate::check::step;
use crate::fixtures::{
    DAY, HOUR, KIA, NOW, PORSCHE, REFERENCE, Sent, T, VIN, dtc, location, minted, normal,
    offline_mode, privacy, private_mode, sent, status,
};
use std::collections::BTreeMap;
use telegate_frame::pb::{self, vehicle_frame::Body};
use telegate_frame::{RejectReason, ValidationConfig, validate};
use telegate_policy::DropReason as R;
use telegate_policy::{Admission, Changes, Outcome, Pack, SubjectRecord, Verdict, When, offline};

#[test]
fn a_frame_captured_in_offline_mode_keeps_nothing_not_even_key_material() {
    // "All service functions are deactivated and no personal data is collected, in particular
    // no GPS data" [004 L462].
    let k = &*KIA;
    let mut v = SubjectRecord::default();
    let nothing = |a: &Admission| {
        a.outcome == Outcome::Offline && a.records.is_empty() && a.verdicts.is_empty()
    };

    // The frame switching offline mode on is captured offline itself: its settings are kept
    // (they make the later frames offline), nothing else.
    let (a, mints) = step(k, &mut v, &sent(2, 1_000, privacy(offline_mode)));
    assert!(nothing(&a), "{a:?}");
    let settings_only = Changes {
        settings: true,
        ..Changes::default()
    };
    assert_eq!(
        (a.changes, mints, v.secret.as_ref()),
        (settings_only, 0, None)
    );

    for frame in [
        sent(5, 1_600, Body::Status(status(11.0))),
        sent(4, 1_500, location(48.8, 9.1)),
        // Captured before offline mode, arriving while it is on: not kept either.
        sent(1, 500, Body::Status(status(10.0))),
    ] {
        let before = v.clone();
        let (a, mints) = step(k, &mut v, &frame);
        assert!(nothing(&a), "{a:?}");
        assert_eq!((a.changes, mints), (Changes::default(), 0));
        assert_eq!(v, before, "no key material, no contribution, no trace");
    }
    assert_eq!(offline(T + 500, Some(&v)), Some(When::Now));

    // A latitude out of range is rejected; captured while offline, it leaves no trace: the
    // gateway withholds the rejected record exactly when `offline` holds at its capture time.
    let (topic, payload) = sent(7, 1_700, location(95.0, 0.0)).raw();
    let rejection = validate(&topic, &payload, NOW, &ValidationConfig::default())
        .expect_err("latitude out of range");
    assert_eq!(rejection.reason, RejectReason::ValueOutOfRange);
    assert_eq!(rejection.captured_at_ms, Some(T + 1_700));
    assert_eq!(offline(T + 1_700, Some(&v)), Some(When::Capture));

    // Offline mode ends: the first frame kept gives the vehicle its key material.
    let (a, mints) = step(k, &mut v, &sent(3, 2_000, privacy(normal)));
    assert_eq!(a.outcome, Outcome::Unrouted, "no purpose takes settings");
    assert!(a.changes.settings && a.changes.secret_created && mints == 1);
    assert_eq!(v.secret, Some(minted()));

    // Store-and-forward: captured inside the offline interval, published after it ended.
    let (a, _) = step(k, &mut v, &sent(5, 1_600, Body::Status(status(11.0))));
    assert!(nothing(&a), "{a:?}");
    let (a, mints) = step(k, &mut v, &sent(6, 4_000, Body::Status(status(12.0))));
    let kept = (a.outcome, mints, a.changes.secret_created);
    assert_eq!(kept, (Outcome::Routed, 0, false));
    let topics: Vec<&str> = a.records.iter().map(|r| r.topic.as_str()).collect();
    assert!(topics.contains(&"telegate.vehicle-status"), "{topics:?}");
}

/// Why `purpose` got no record of this frame (`None`: it got one).
fn drop_reason(pack: &Pack, a: &Admission, purpose: &str) -> Option<R> {
    let i = pack.purpose(purpose).expect("purpose exists").index;
    match a.verdicts.iter().find(|(j, _)| *j == i) {
        Some((_, Verdict::Forward(_))) => None,
        Some((_, Verdict::Drop(r))) => Some(*r),
        None => panic!("{purpose} did not decide: {a:?}"),
    }
}

#[test]
fn a_settings_frame_applies_from_its_own_capture_time() {
    let p = &*PORSCHE;
    let mut v = SubjectRecord::default();
    let smart = |v: &mut SubjectRecord, at: i64| {
        let (a, _) = step(p, v, &sent(9, at, Body::Status(status(100.0))));
        drop_reason(p, &a, "component-status")
    };
    let (a, _) = step(p, &mut v, &sent(2, 1_000, privacy(private_mode)));
    assert_eq!((a.outcome, a.changes.settings), (Outcome::Unrouted, true));
    // Captured before private mode, arriving while it is on: the stricter state wins.
    assert_eq!(smart(&mut v, 500), Some(R::PrivateMode));

    step(p, &mut v, &sent(4, 3_000, privacy(normal)));
    for (at, want) in [
        (999, None),
        (1_000, Some(R::PrivateMode)),
        (2_999, Some(R::PrivateMode)),
        (3_000, None),
    ] {
        assert_eq!(smart(&mut v, at), want, "captured at T + {at} ms");
    }
}

#[test]
fn only_forwarded_purposes_record_a_contribution() {
    // Reference pack: product improvement is anonymous, once per vehicle, kind and day, so a
    // count of records is a count of vehicles.
    let r = &*REFERENCE;
    let d0 = (NOW - 3 * DAY).div_euclid(DAY) * DAY;
    let mut v = SubjectRecord::default();
    // An objection to this legitimate-interest purpose from 1 h to 3 h.
    let objection = v.objections.entry("product-improvement".into());
    let objection = objection.or_default();
    objection.set(d0 + HOUR, true);
    objection.set(d0 + 3 * HOUR, false);
    let charging = || {
        Body::Charging(pb::ChargingSession {
            session_id: "s-1".into(),
            energy_kwh: Some(10.0),
            ..Default::default()
        })
    };
    let (diag, chg) = ("diagnostics", "charging");
    // Seq, hours after d0, frame, product improvement's drop reason, periods recorded.
    let steps = [
        // Dropped by the objection while Smart Service forwards: no contribution, so the
        // day's first forwarded frame is the next one.
        (1, 2, dtc(), Some(R::Objected), vec![]),
        (2, 4, dtc(), None, vec![(diag, d0)]),
        (3, 5, dtc(), Some(R::AlreadyContributed), vec![(diag, d0)]),
        (4, 5, charging(), None, vec![(chg, d0), (diag, d0)]),
        (5, 25, dtc(), None, vec![(chg, d0), (diag, d0 + DAY)]),
        // A late frame from the day before cannot be checked any more.
        (
            6,
            6,
            dtc(),
            Some(R::AlreadyContributed),
            vec![(chg, d0), (diag, d0 + DAY)],
        ),
    ];
    for (seq, hours, body, want, periods) in steps {
        let is_dtc = matches!(body, Body::Diagnostics(_));
        let frame = Sent {
            vin: VIN,
            seq,
            at: d0 + hours * HOUR,
            body,
        };
        let (a, _) = step(r, &mut v, &frame);
        let got = drop_reason(r, &a, "product-improvement");
        assert_eq!(got, want, "seq {seq}");
        if is_dtc {
            assert_eq!(drop_reason(r, &a, "component-status"), None, "seq {seq}");
        }
        assert_eq!(
            a.changes.contributions,
            usize::from(got.is_none()),
            "seq {seq}"
        );
        let want: BTreeMap<String, i64> = (periods.iter())
            .map(|(kind, start)| (format!("product-improvement/{kind}"), *start))
            .collect();
        assert_eq!(v.contributions, want, "seq {seq}");
    }
}
