//! A row of the table, what it expects of each service, and the code that checks it.

use crate::fixtures::{NOW, Sent, T, keys, minted, settings};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use telegate_frame::pb::{self, VehicleFrame, vehicle_frame::Body};
use telegate_frame::{Frame, ValidationConfig, decode};
use telegate_policy::DropReason as R;
use telegate_policy::header::{
    CAPTURED_AT_MS, CONSENT, KEY_ID, LEGAL_BASIS, PURPOSE, SEQ, SUBJECT,
};
use telegate_policy::{
    Admission, OutRecord, Outcome, Pack, PurposeId, SubjectRecord, SubjectSecret, Verdict, admit,
    unseal,
};

// --- the vehicle's state and what each service gets -----------------------------------------

/// The vehicle's record as the frame finds it; times are offsets from `T`. No key material:
/// each vehicle in the table is new to the gateway.
#[derive(Clone, Default)]
pub(crate) struct Vehicle(SubjectRecord);

impl Vehicle {
    pub(crate) fn settings(mut self, at: i64, edit: fn(&mut pb::PrivacySettings)) -> Self {
        self.0.record_settings(T + at, &settings(edit));
        self
    }
    pub(crate) fn consent(mut self, purpose: &str, at: i64, granted: bool) -> Self {
        let t = self.0.consents.entry(purpose.into()).or_default();
        t.set(T + at, granted);
        self
    }
    pub(crate) fn activation(mut self, feature: &str, at: i64, active: bool) -> Self {
        let t = self.0.activations.entry(feature.into()).or_default();
        t.set(T + at, active);
        self
    }
    /// Consent given in the app for a call placed there.
    pub(crate) fn call_consent(mut self, call: &str, assistance: bool, dealer: bool) -> Self {
        let c = self.0.call_consents.entry(call.into()).or_default();
        (c.assistance, c.dealer) = (assistance, dealer);
        self
    }
}

#[derive(Debug)]
pub(crate) enum Want {
    Forward(Form),
    Drop(R),
    /// No purpose of the service decides: it does not take the frame, or nothing does.
    NoVerdict,
}

/// The record a service receives.
#[derive(Debug)]
pub(crate) struct Form {
    /// `telegate-subject`: vin, pseudonym, sealed or anonymous.
    subject: &'static str,
    legal_basis: &'static str,
    consent: &'static str,
    /// `None`: the body exactly as sent. Otherwise only fields under these proto3-JSON paths
    /// survive, each unchanged (positions are `location`'s), and each path keeps one at least.
    only: Option<&'static [&'static str]>,
    location: Loc,
    /// Capture time truncated to this many ms (`None`: exact).
    time_to: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Loc {
    /// A position in the frame arrives unchanged.
    Exact,
    /// Snapped to a grid of this many metres: moved, within its cell, no altitude.
    Grid(f64),
    /// The frame's position is removed.
    Removed,
}

pub(crate) fn fwd(subject: &'static str, legal_basis: &'static str, consent: &'static str) -> Want {
    let (only, location, time_to) = (None, Loc::Exact, None);
    Want::Forward(Form {
        subject,
        legal_basis,
        consent,
        only,
        location,
        time_to,
    })
}

pub(crate) fn dropped(reason: R) -> Want {
    Want::Drop(reason)
}

impl Want {
    fn form(mut self, edit: impl FnOnce(&mut Form)) -> Self {
        let Want::Forward(f) = &mut self else {
            panic!("only a forwarded record has a form, not {self:?}")
        };
        edit(f);
        self
    }
    pub(crate) fn only(self, paths: &'static [&'static str]) -> Self {
        self.form(|f| f.only = Some(paths))
    }
    pub(crate) fn grid(self, metres: f64) -> Self {
        self.form(|f| f.location = Loc::Grid(metres))
    }
    pub(crate) fn no_location(self) -> Self {
        self.form(|f| f.location = Loc::Removed)
    }
    pub(crate) fn time_to(self, ms: i64) -> Self {
        self.form(|f| f.time_to = Some(ms))
    }
}

pub(crate) struct Row {
    case: &'static str,
    pack: &'static Pack,
    vehicle: Vehicle,
    frame: Sent,
    outcome: Outcome,
    want: Vec<(&'static str, Want)>,
}

/// Rows of one pack; a row's outcome is `Routed` unless it says otherwise.
pub(crate) fn rows_of(
    pack: &'static Pack,
) -> impl Fn(&'static str, Vehicle, Sent, Vec<(&'static str, Want)>) -> Row {
    move |case, vehicle, frame, want| Row {
        case,
        pack,
        vehicle,
        frame,
        outcome: Outcome::Routed,
        want,
    }
}

impl Row {
    pub(crate) fn outcome(self, outcome: Outcome) -> Self {
        Self { outcome, ..self }
    }
}

// --- running a row ------------------------------------------------------------------------

/// Admits one frame; returns the admission and how often key material was minted.
pub(crate) fn step(pack: &Pack, record: &mut SubjectRecord, frame: &Sent) -> (Admission, usize) {
    let horizon = NOW - ValidationConfig::default().max_age_ms;
    let mints = Cell::new(0);
    let mint = || {
        mints.set(mints.get() + 1);
        minted()
    };
    let (label, keys, frame) = (pack.label(), keys(), frame.valid());
    let a = admit(pack, &label, &keys, &frame, record, horizon, mint);
    (a, mints.get())
}

/// Runs every row and reports every failing one (each failure's message is printed above).
pub(crate) fn run(rows: Vec<Row>) {
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| catch_unwind(AssertUnwindSafe(|| check(r))).is_err())
        .map(|r| r.case)
        .collect();
    assert!(failed.is_empty(), "failed cases: {failed:#?}");
}

fn check(row: &Row) {
    let (case, pack) = (row.case, row.pack);
    let frame = row.frame.valid();
    let before = row.vehicle.0.clone();
    let mut record = before.clone();
    let (a, mints) = step(pack, &mut record, &row.frame);
    assert_eq!(a.outcome, row.outcome, "{case}: outcome");

    let mut verdicts = BTreeMap::new();
    for &(i, v) in &a.verdicts {
        let service = pack.service_of(&pack.purposes[i]).id.as_str();
        let twice = verdicts.insert(service, (i, v)).is_some();
        assert!(!twice, "{case}: {service}");
    }
    let decided: BTreeSet<&str> = verdicts.keys().copied().collect();
    let asked: BTreeSet<&str> = (row.want.iter())
        .filter(|(_, w)| !matches!(w, Want::NoVerdict))
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(decided, asked, "{case}: the services that decided");

    let mut forwarded = 0;
    for (service, want) in &row.want {
        let known = pack.services.iter().any(|s| s.id.as_str() == *service);
        assert!(known, "{case}: {service} is no service of {}", pack.id);
        let topic = format!("telegate.{service}");
        let on_topic: Vec<&OutRecord> = a.records.iter().filter(|r| r.topic == topic).collect();
        let ctx = format!("{case}: {service}");
        match want {
            Want::NoVerdict => assert!(on_topic.is_empty(), "{ctx} gets nothing"),
            Want::Drop(reason) => {
                assert_eq!(verdicts[service].1, Verdict::Drop(*reason), "{ctx}");
                assert!(on_topic.is_empty(), "{ctx} gets nothing");
            }
            Want::Forward(form) => {
                let (i, verdict) = verdicts[service];
                assert!(matches!(verdict, Verdict::Forward(_)), "{ctx}: {verdict:?}");
                let [rec] = on_topic.as_slice() else {
                    panic!("{ctx}: one record, not {}", on_topic.len())
                };
                forwarded += 1;
                check_record(&ctx, form, &pack.purposes[i].id, &frame, rec, &record);
            }
        }
    }
    assert_eq!(a.records.len(), forwarded, "{case}: unlisted services");

    // Key material is minted on a vehicle's first admitted frame, never for one captured
    // offline; an offline frame changes nothing else either.
    let first_sight = before.secret.is_none() && row.outcome != Outcome::Offline;
    let want = (usize::from(first_sight), first_sight);
    assert_eq!(
        (mints, a.changes.secret_created),
        want,
        "{case}: key material"
    );
    if row.outcome == Outcome::Offline && !matches!(frame.body(), Body::Privacy(_)) {
        assert_eq!(record, before, "{case}: nothing of it kept");
    }
}

fn check_record(
    ctx: &str,
    form: &Form,
    purpose: &PurposeId,
    frame: &Frame,
    rec: &OutRecord,
    record: &SubjectRecord,
) {
    let h = |name| rec.header(name);
    let got = [PURPOSE, SUBJECT, LEGAL_BASIS, CONSENT].map(h);
    let want = [
        purpose.as_str(),
        form.subject,
        form.legal_basis,
        form.consent,
    ];
    assert_eq!(
        got,
        want.map(Some),
        "{ctx}: purpose, subject, basis, consent"
    );
    let (shaped, _) = decode(&rec.payload).expect("a service record decodes");
    let vin = frame.vin().expose();
    let vin_in_payload = rec.payload.windows(vin.len()).any(|w| w == vin.as_bytes());
    let seq = frame.seq().to_string();
    let key_id_and_seq = (h(KEY_ID), h(SEQ), shaped.seq);
    match form.subject {
        "vin" => {
            assert_eq!(rec.key.as_deref(), Some(vin.as_bytes()), "{ctx}: VIN key");
            assert_eq!(shaped.vin, vin, "{ctx}: VIN in the payload");
            assert_eq!(key_id_and_seq, (None, Some(&*seq), frame.seq()), "{ctx}");
        }
        "pseudonym" | "sealed" => {
            // The purpose's own pseudonym, mixed with this vehicle's key material.
            let p = keys().pseudonym(purpose, frame.vin(), record.secret.as_ref());
            assert_eq!(rec.key.as_deref(), Some(p.as_bytes()), "{ctx}: key");
            assert_eq!(p.len(), 32, "{ctx}: 32 hex digits");
            let want = (Some("ephemeral"), Some(&*seq), frame.seq());
            assert_eq!(key_id_and_seq, want, "{ctx}");
            assert!(!vin_in_payload, "{ctx}: no VIN in the payload");
        }
        "anonymous" => {
            assert_eq!(rec.key, None, "{ctx}: no key");
            assert_eq!(key_id_and_seq, (None, None, 0), "{ctx}: no key id, no seq");
            assert!(shaped.vin.is_empty() && !vin_in_payload, "{ctx}: no VIN");
        }
        other => panic!("{ctx}: unknown subject form {other}"),
    }
    if form.subject == "sealed" {
        // Sealed under the vehicle's own key: it opens with that key and no other.
        let secret = record.secret.as_ref().expect("sealed needs key material");
        let opened = unseal(secret, &shaped.vin).map(|v| v.expose().to_owned());
        assert_eq!(opened.as_deref(), Some(vin), "{ctx}: unseals to the VIN");
        let other = SubjectSecret::from_random([0x11; 16], [0x33; 32]);
        let opened = unseal(&other, &shaped.vin);
        assert!(opened.is_none(), "{ctx}: another key fails");
    } else if form.subject == "pseudonym" {
        assert!(shaped.vin.is_empty(), "{ctx}: no VIN beside a pseudonym");
    }

    let at = frame.captured_at_ms();
    let want_at = form.time_to.map_or(at, |ms| at.div_euclid(ms) * ms);
    assert!(
        form.time_to.is_none() || want_at != at,
        "{ctx}: T on a boundary"
    );
    let time = (shaped.captured_at_ms, h(CAPTURED_AT_MS));
    assert_eq!(time, (want_at, Some(&*want_at.to_string())), "{ctx}: time");

    let got = shaped.body.as_ref().expect("a record has a body");
    match form.only {
        None => assert_eq!(got, frame.body(), "{ctx}: the body as sent"),
        Some(paths) => check_fields(ctx, frame.body(), got, paths),
    }
    check_location(ctx, form.location, position(frame.body()), position(got));
}

/// Every set field of a body as a proto3-JSON path (`status.hvBattery.socPct`) with its
/// value; an array is one field.
fn fields(body: &Body) -> BTreeMap<String, serde_json::Value> {
    fn walk(path: String, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
        match v {
            serde_json::Value::Object(m) if !m.is_empty() => m
                .iter()
                .for_each(|(k, x)| walk(format!("{path}.{k}"), x, out)),
            _ => _ = out.insert(path[1..].to_owned(), v.clone()),
        }
    }
    let frame = VehicleFrame {
        body: Some(body.clone()),
        ..Default::default()
    };
    let (json, mut out) = (serde_json::to_value(&frame), BTreeMap::new());
    walk(String::new(), &json.expect("serialises"), &mut out);
    out
}

fn check_fields(ctx: &str, sent: &Body, got: &Body, paths: &[&str]) {
    let under = |field: &str, path: &str| {
        field == path || field.strip_prefix(path).is_some_and(|r| r.starts_with('.'))
    };
    let (sent, got) = (fields(sent), fields(got));
    for (field, value) in &got {
        let listed = paths.iter().any(|p| under(field, p));
        assert!(listed, "{ctx}: {field} must not survive");
        if !(field.starts_with("location.") || field.contains(".location.")) {
            assert_eq!(Some(value), sent.get(field), "{ctx}: {field} unchanged");
        }
    }
    for p in paths {
        assert!(got.keys().any(|f| under(f, p)), "{ctx}: {p} survives");
    }
}

fn position(body: &Body) -> Option<&pb::Location> {
    match body {
        Body::Location(l) => Some(l),
        Body::Breakdown(b) => b.snapshot.as_ref().and_then(|s| s.location.as_ref()),
        Body::Charging(c) => c.location.as_ref(),
        _ => None,
    }
}

fn check_location(ctx: &str, want: Loc, sent: Option<&pb::Location>, got: Option<&pb::Location>) {
    match (want, sent, got) {
        (Loc::Exact, None, None) | (Loc::Removed, Some(_), None) => {}
        (Loc::Exact, Some(s), Some(g)) => {
            let exact = (g.lat_deg, g.lon_deg) == (s.lat_deg, s.lon_deg);
            assert!(exact, "{ctx}: exact position, not {g:?}");
        }
        (Loc::Grid(m), Some(s), Some(g)) => {
            // The centre of the sent position's cell, cells being `m` high and `m` wide.
            let lat_cell = m / 111_320.0;
            let lon_cell = lat_cell / g.lat_deg.to_radians().cos();
            let centre = |deg: f64, cell: f64| {
                let k = deg / cell - 0.5;
                (k - k.round()).abs() < 1e-6
            };
            let near = |d: f64, cell: f64| d.abs() > 1e-9 && d.abs() <= cell / 2.0 + 1e-9;
            let (dlat, dlon) = (g.lat_deg - s.lat_deg, g.lon_deg - s.lon_deg);
            let snapped = centre(g.lat_deg, lat_cell) && centre(g.lon_deg, lon_cell);
            assert!(
                snapped && near(dlat, lat_cell) && near(dlon, lon_cell),
                "{ctx}: {g:?}"
            );
            // No altitude to refine it; the accuracy says how coarse it is.
            let rest = (g.altitude_m, g.accuracy_m);
            assert_eq!(rest, (None, Some(m as f32)), "{ctx}: altitude, accuracy");
        }
        _ => panic!("{ctx}: position should be {want:?}, sent {sent:?}, got {got:?}"),
    }
}
