//! The loaded policy in a table, and "what happens to a frame": a frame kind and a vehicle's
//! settings and consents in, each purpose's verdict and the explanation out, from the same
//! engine as `telegate policy explain`.

use super::access::Operator;
use super::page::{layout, respond};
use super::{Shared, samples};
use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use std::collections::{BTreeMap, HashMap};
use strum::VariantArray;
use telegate_frame::{FrameKind, now_ms};
use telegate_policy::{
    Settings, StateFile, SubjectRecord, SubjectSecret, Verdict, decide_all, describe_consent,
    describe_location, explain, format_duration,
};

/// The VIN the example frames carry: the contract's example vehicle, nobody's car.
const EXAMPLE_VIN: &str = "WP0ZZZ99ZTS392124";

const SETTINGS: [(&str, &str); 4] = [
    ("private_mode", "Private mode"),
    ("offline_mode", "Offline mode"),
    ("location_services", "Location services"),
    ("non_location_services", "Non-location services"),
];

pub(super) async fn show(
    State(console): State<Shared>,
    Extension(op): Extension<Operator>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let pack = &console.admin.pack;
    let asked = q.get("kind").and_then(|k| FrameKind::parse(k));
    // Before the first question, the factory settings: location and other services on.
    let checked = |name: &str| match asked {
        Some(_) => q.contains_key(name),
        None => matches!(name, "location_services" | "non_location_services"),
    };
    let standing = console.admin.standing_purposes();
    let features = console.admin.features();
    let toggles = toggles(pack);
    let body = html! {
        h1 { "Policy " (pack.label()) }
        p { (pack.title) }
        section aria-labelledby="policy-h" {
            h2 #policy-h { "Purposes" }
            table #policy-purposes {
                thead { tr {
                    th scope="col" { "Purpose" } th scope="col" { "Topic" } th scope="col" { "Legal basis" } th scope="col" { "Consent" }
                    th scope="col" { "Frame kinds" } th scope="col" { "Subject form" } th scope="col" { "Location" }
                    th scope="col" { "Retention" } th scope="col" { "Cites" }
                } }
                tbody { @for p in &pack.purposes {
                    tr data-purpose=(p.id.as_str()) {
                        th scope="row" { (p.id.as_str()) br; small { (p.description) } }
                        td.topic { code { (pack.service_of(p).topic) } }
                        td.basis { (p.legal_basis.as_str()) }
                        td.consent { (describe_consent(&p.consent)) }
                        td.kinds { (p.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")) }
                        td.form { (p.identity.as_str()) }
                        td.location { (describe_location(p.location)) }
                        td.retention { (format_duration(p.retention)) }
                        td.cites { (p.cite.join(", ")) }
                    }
                } }
            }
        }
        section aria-labelledby="what-h" {
            h2 #what-h { "What happens to a frame" }
            form #what-happens method="get" action="/policy" {
                label { "Frame kind" select name="kind" {
                    @for k in FrameKind::VARIANTS {
                        option value=(k.as_str()) selected[asked == Some(*k)] { (k.as_str()) }
                    }
                } }
                fieldset { legend { "Settings in the vehicle" }
                    @for (name, label) in SETTINGS {
                        label.check { input type="checkbox" name=(name) checked[checked(name)]; " " (label) }
                    }
                }
                @if !toggles.is_empty() {
                    fieldset { legend { "Service toggles in the vehicle" }
                        @for t in &toggles {
                            @let name = format!("service_{t}");
                            label.check { input type="checkbox" name=(name) checked[checked(&name)]; " " (t) }
                        }
                    }
                }
                @if !standing.is_empty() {
                    fieldset { legend { "Standing consents given" }
                        @for p in &standing {
                            @let name = format!("consent_{p}");
                            label.check { input type="checkbox" name=(name) checked[checked(&name)]; " " (p) }
                        }
                    }
                }
                @if !features.is_empty() {
                    fieldset { legend { "Features activated" }
                        @for f in &features {
                            @let name = format!("activation_{f}");
                            label.check { input type="checkbox" name=(name) checked[checked(&name)]; " " (f) }
                        }
                    }
                }
                button type="submit" { "Show" }
            }
            @if let Some(kind) = asked {
                (verdicts(&console, kind, &checked, &Choices { standing: &standing, features: &features, toggles: &toggles }))
            }
        }
    };
    respond(StatusCode::OK, layout("Policy", Some(&op), body))
}

/// The vehicle toggles some purpose requires, each once.
fn toggles(pack: &telegate_policy::Pack) -> Vec<&str> {
    let mut toggles: Vec<&str> = pack
        .purposes
        .iter()
        .flat_map(|p| p.requires.iter().map(String::as_str))
        .collect();
    toggles.sort_unstable();
    toggles.dedup();
    toggles
}

/// What the form offers beyond the four settings.
struct Choices<'a> {
    standing: &'a [&'a str],
    features: &'a [&'a str],
    toggles: &'a [&'a str],
}

fn verdicts(
    console: &Shared,
    kind: FrameKind,
    checked: &dyn Fn(&str) -> bool,
    choices: &Choices<'_>,
) -> Markup {
    let pack = &console.admin.pack;
    let now = now_ms();
    let mut subject = SubjectRecord::default();
    subject.settings.set(
        0,
        Settings {
            private_mode: checked("private_mode"),
            offline_mode: checked("offline_mode"),
            location_services: checked("location_services"),
            non_location_services: checked("non_location_services"),
            services: choices
                .toggles
                .iter()
                .map(|t| ((*t).to_owned(), checked(&format!("service_{t}"))))
                .collect::<BTreeMap<_, _>>(),
        },
    );
    for p in choices.standing {
        subject
            .consents
            .entry((*p).to_owned())
            .or_default()
            .set(0, checked(&format!("consent_{p}")));
    }
    for f in choices.features {
        subject
            .activations
            .entry((*f).to_owned())
            .or_default()
            .set(0, checked(&format!("activation_{f}")));
    }
    subject.secret = Some(SubjectSecret::from_random([0; 16], [0; 32]));
    let Some(frame) = samples::frame(kind, EXAMPLE_VIN, now) else {
        return html! { p #error role="alert" { "No example frame of this kind could be made." } };
    };
    let rows: Vec<_> = decide_all(pack, &frame, Some(&subject)).collect();
    let mut file = StateFile::default();
    file.subjects
        .insert(EXAMPLE_VIN.to_owned(), subject.clone());
    let text = explain(
        pack,
        &samples::frame_json(kind, EXAMPLE_VIN, now),
        Some(&file),
        Some(now),
    )
    .unwrap_or_else(|e| e.to_string());
    html! {
        h3 { "A " (kind.as_str()) " frame captured now" }
        @if rows.is_empty() { p { "No purpose of this policy receives " (kind.as_str()) " frames." } }
        table #verdicts {
            thead { tr { th scope="col" { "Purpose" } th scope="col" { "Verdict" } th scope="col" { "Because" } } }
            tbody { @for (p, d) in &rows {
                tr data-purpose=(p.id.as_str()) {
                    th scope="row" { (p.id.as_str()) }
                    td.verdict { @match &d.verdict {
                        Verdict::Forward(_) => "forward",
                        Verdict::Drop(r) => { "drop — " (r.as_str()) },
                    } }
                    td.rule { (d.rule.to_string()) }
                }
            } }
        }
        h3 { "Explanation" }
        pre #explain { (text) }
    }
}
