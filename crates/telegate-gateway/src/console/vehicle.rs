//! A vehicle: what it set, what each purpose may do with its frames now and on which basis,
//! its ledger, where its records live; and, for officers, the forms of the data-subject rights
//! (`super::requests` answers them).

use super::access::{Operator, Refused, check_csrf};
use super::page::{self, csrf, layout, respond, time};
use super::requests::MAX_REASON;
use super::{Shared, samples};
use crate::ledger::{Action, Channel, LedgerEntry};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use serde::Deserialize;
use telegate_frame::{Vin, now_ms};
use telegate_policy::{
    SubjectRecord, SubjectSecret, Verdict, decide, describe_location, format_duration,
};

#[derive(Deserialize)]
pub(super) struct Open {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    vin: String,
}

pub(super) async fn open(
    State(console): State<Shared>,
    Extension(op): Extension<Operator>,
    Form(form): Form<Open>,
) -> Response {
    if let Err(refused) = check_csrf(&op, &form.csrf) {
        return *refused;
    }
    let vin = match Vin::parse(form.vin.trim()) {
        Ok(v) => v,
        Err(e) => {
            return page::home_page(&op, StatusCode::BAD_REQUEST, Some(&format!("VIN: {e}")));
        }
    };
    metrics::counter!("telegate_console_vehicles_opened_total").increment(1);
    match console.sessions.open_vehicle(&op, vin) {
        Some(handle) => Redirect::to(&format!("/vehicles/{handle}")).into_response(),
        None => Redirect::to("/sign-in").into_response(),
    }
}

/// What the page says after an action; chosen by a fixed word in the query, so nothing the
/// operator typed travels in a URL.
#[derive(Deserialize)]
pub(super) struct Done {
    done: Option<String>,
}

fn flash(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "consent" => "The consent change is recorded and in force.",
        "objection" => "The objection is recorded and in force.",
        "activation" => "The activation is recorded and in force.",
        "export" => "The export was handed out and recorded.",
        "erase" => "The vehicle's key material and state are erased.",
        _ => return None,
    })
}

pub(super) fn vehicle_of(console: &Shared, op: &Operator, handle: &str) -> Result<Vin, Refused> {
    console.sessions.vehicle(op, handle).ok_or_else(|| {
        Box::new(page::refusal(
            StatusCode::NOT_FOUND,
            "This vehicle is not open in this session: open it again by its VIN.",
        ))
    })
}

pub(super) async fn show(
    State(console): State<Shared>,
    Extension(op): Extension<Operator>,
    Path(handle): Path<String>,
    Query(done): Query<Done>,
) -> Response {
    let vin = match vehicle_of(&console, &op, &handle) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    respond(
        StatusCode::OK,
        vehicle_page(
            &console,
            &op,
            &handle,
            &vin,
            flash(done.done.as_deref()),
            None,
        ),
    )
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

pub(super) fn vehicle_page(
    console: &Shared,
    op: &Operator,
    handle: &str,
    vin: &Vin,
    flash: Option<&str>,
    error: Option<&str>,
) -> Markup {
    let ctx = &console.admin;
    let record = ctx.state.get(vin);
    let entries = console.ledger.of(&ctx.ledger.subject_hash(vin));
    let erased = record.is_none() && entries.iter().any(|e| e.action == Action::Erase);
    let settings = record.as_ref().and_then(|r| r.settings.latest().cloned());
    let body = html! {
        h1 { "Vehicle " code #vin { (vin.expose()) } }
        @if let Some(f) = flash { p #flash role="status" { (f) } }
        @if let Some(e) = error { p #error role="alert" { (e) } }
        @if erased {
            p #erased { "This vehicle was erased: its key material and state are gone; its earlier records can no longer be linked to it. The ledger below is kept, as records of consent must be." }
        } @else if record.is_none() {
            p #no-record { "Nothing is recorded for this VIN: the gateway has not seen this vehicle, and no consent or setting was recorded for it." }
        }
        section #settings aria-labelledby="settings-h" {
            h2 #settings-h { "Settings in the vehicle" }
            @match &settings {
                None => p #no-settings { "The vehicle has not reported its privacy settings: the factory settings apply." },
                Some(s) => table {
                    thead { tr { th scope="col" { "Setting" } th scope="col" { "Value" } } }
                    tbody {
                        tr data-setting="private_mode" { th scope="row" { "Private mode" } td.value { (on_off(s.private_mode)) } }
                        tr data-setting="offline_mode" { th scope="row" { "Offline mode" } td.value { (on_off(s.offline_mode)) } }
                        tr data-setting="location_services" { th scope="row" { "Location services" } td.value { (on_off(s.location_services)) } }
                        tr data-setting="non_location_services" { th scope="row" { "Non-location services" } td.value { (on_off(s.non_location_services)) } }
                        @for (id, on) in &s.services {
                            tr data-setting={ "service:" (id) } { th scope="row" { "Service " (id) } td.value { (on_off(*on)) } }
                        }
                    }
                },
            }
        }
        (purposes(console, vin, record.as_ref()))
        (activations(record.as_ref()))
        (timeline(&entries, console.ledger.caught_up()))
        @if op.is_officer() { (officer_forms(console, op, handle)) }
    };
    layout("Vehicle", Some(op), body)
}

/// Per purpose: would a frame of its first kind, captured now, reach it, and if not why; its
/// legal basis, topic, subject form, location precision and retention.
fn purposes(console: &Shared, vin: &Vin, record: Option<&SubjectRecord>) -> Markup {
    let ctx = &console.admin;
    let pack = &ctx.pack;
    let now = now_ms();
    // Key material is given on first sight; a vehicle not yet seen is judged as if it had some.
    let mut subject = record.cloned().unwrap_or_default();
    if subject.secret.is_none() {
        subject.secret = Some(SubjectSecret::from_random([0; 16], [0; 32]));
    }
    html! {
        section #purposes aria-labelledby="purposes-h" {
            h2 #purposes-h { "Purposes now" }
            p.hint { "Whether a frame the vehicle sent now would reach each purpose, under the loaded policy " (pack.label()) "." }
            table {
                thead { tr {
                    th scope="col" { "Purpose" } th scope="col" { "Legal basis" } th scope="col" { "Receives now" }
                    th scope="col" { "Topic" } th scope="col" { "Subject form" } th scope="col" { "Location" } th scope="col" { "Retention" }
                } }
                tbody {
                    @for p in &pack.purposes {
                        @let verdict = p.kinds.first().and_then(|k| samples::frame(*k, vin.expose(), now)).map(|f| decide(pack, &f, p, Some(&subject)));
                        tr data-purpose=(p.id.as_str()) {
                            th scope="row" { (p.id.as_str()) }
                            td.basis { (p.legal_basis.as_str()) }
                            td.active title=[verdict.as_ref().map(|d| d.rule.to_string())] {
                                @match verdict.as_ref().map(|d| &d.verdict) {
                                    Some(Verdict::Forward(_)) => "yes",
                                    Some(Verdict::Drop(r)) => { "no — " (r.as_str()) },
                                    None => "unknown",
                                }
                            }
                            td.topic { code { (pack.service_of(p).topic) } }
                            td.form { (p.identity.as_str()) }
                            td.location { (describe_location(p.location)) }
                            td.retention { (format_duration(p.retention)) }
                        }
                    }
                }
            }
        }
    }
}

fn activations(record: Option<&SubjectRecord>) -> Markup {
    let activations = record.filter(|r| !r.activations.is_empty()).map(|r| {
        html! { @for (f, t) in &r.activations {
            tr data-feature=(f) { th scope="row" { (f) } td.value { (on_off(t.latest().copied().unwrap_or(false))) } }
        } }
    });
    let contributions = record.filter(|r| !r.contributions.is_empty()).map(|r| {
        html! { @for (k, at) in &r.contributions {
            tr { th scope="row" { (k) } td { (time(*at)) } }
        } }
    });
    html! {
        (listing("activations", "Activations", ["Feature", "Value"], activations, "No service was activated for this vehicle."))
        (listing("contributions", "Contributions", ["Purpose / kind", "Last period contributed to, from"], contributions, "No contribution to a once-per-vehicle statistic is recorded."))
    }
}

/// A section `id` of two-column rows under `head`, or the sentence `none` when there are none.
fn listing(id: &str, title: &str, head: [&str; 2], rows: Option<Markup>, none: &str) -> Markup {
    html! {
        section id=(id) aria-labelledby={ (id) "-h" } {
            h2 id={ (id) "-h" } { (title) }
            @match rows {
                None => p { (none) },
                Some(rows) => table {
                    thead { tr { th scope="col" { (head[0]) } th scope="col" { (head[1]) } } }
                    tbody { (rows) }
                },
            }
        }
    }
}

fn channel(c: Channel) -> &'static str {
    match c {
        Channel::App => "app",
        Channel::HeadUnit => "vehicle",
        Channel::CallCentre => "call-centre",
        Channel::Api => "api",
        Channel::Console => "console",
    }
}

fn timeline(entries: &[LedgerEntry], caught_up: bool) -> Markup {
    html! {
        section #ledger aria-labelledby="ledger-h" {
            h2 #ledger-h { "Ledger" }
            @if !caught_up { p.hint role="status" { "The ledger is still being read: older entries may be missing for a moment." } }
            @if entries.is_empty() {
                p { "No ledger entry for this vehicle." }
            }
            table #timeline {
                thead { tr {
                    th scope="col" { "Recorded" } th scope="col" { "Action" } th scope="col" { "Purpose or feature" }
                    th scope="col" { "Value" } th scope="col" { "Channel" } th scope="col" { "By" } th scope="col" { "Case or ticket" }
                } }
                tbody {
                    @for e in entries {
                        tr {
                            td.recorded { (time(e.recorded_at_ms)) }
                            td.action { (<&'static str>::from(e.action)) }
                            td.target { (e.target) }
                            td.value { (e.value.to_string()) }
                            td.channel { (channel(e.channel)) }
                            td.actor { (e.actor) }
                            td.reason { (e.reason) }
                        }
                    }
                }
            }
        }
    }
}

fn reason_field() -> Markup {
    html! {
        label { "Case or ticket number" input name="reason" required maxlength=(MAX_REASON) autocomplete="off"; }
    }
}

/// A form that switches one thing on or off for a purpose or feature.
struct FlagForm<'a> {
    id: &'static str,
    title: &'static str,
    /// The select's name and label.
    target: (&'static str, &'static str),
    choices: &'a [&'a str],
    /// The on/off select's name, and its two options' labels.
    flag: (&'static str, &'static str, &'static str),
    button: &'static str,
}

fn flag_form(op: &Operator, base: &str, f: &FlagForm<'_>) -> Markup {
    let (name, on, off) = f.flag;
    html! {
        form id=(f.id) method="post" action={ (base) "/" (f.id) } {
            h3 { (f.title) }
            (csrf(op))
            label { (f.target.1) select name=(f.target.0) { @for c in f.choices { option value=(c) { (c) } } } }
            label { "Change" select name=(name) { option value="true" { (on) } option value="false" { (off) } } }
            (reason_field())
            button type="submit" { (f.button) }
        }
    }
}

fn officer_forms(console: &Shared, op: &Operator, handle: &str) -> Markup {
    let purposes: Vec<&str> = console
        .admin
        .pack
        .purposes
        .iter()
        .map(|p| p.id.as_str())
        .collect();
    let standing = console.admin.standing_purposes();
    let features = console.admin.features();
    let base = format!("/vehicles/{handle}");
    html! {
        section #requests aria-labelledby="requests-h" {
            h2 #requests-h { "Answer a request" }
            @if !standing.is_empty() {
                (flag_form(op, &base, &FlagForm {
                    id: "consent", title: "Consent", target: ("purpose", "Purpose"), choices: &standing,
                    flag: ("granted", "Record consent", "Withdraw consent"), button: "Save consent",
                }))
            }
            (flag_form(op, &base, &FlagForm {
                id: "objection", title: "Objection", target: ("purpose", "Purpose"), choices: &purposes,
                flag: ("on", "Object", "Lift objection"), button: "Save objection",
            }))
            @if !features.is_empty() {
                (flag_form(op, &base, &FlagForm {
                    id: "activation", title: "Activation", target: ("feature", "Feature"), choices: &features,
                    flag: ("active", "Activate", "Deactivate"), button: "Save activation",
                }))
            }
            form #export method="post" action={ (base) "/export" } {
                h3 { "Access (export)" }
                (csrf(op))
                label { "Format" select name="format" { option value="readable" { "Readable (HTML)" } option value="json" { "Machine-readable (JSON)" } } }
                (reason_field())
                button type="submit" { "Download export" }
            }
            form #erase method="post" action={ (base) "/erase" } {
                h3 { "Erasure" }
                (csrf(op))
                p.explain {
                    "Erasure destroys this vehicle's key material and its consent state (crypto-shredding): "
                    "every pseudonymous and sealed record already delivered can no longer be linked to the vehicle, "
                    "and its live connection is closed. If the vehicle connects again it is treated as a new one, with new key material, "
                    "so its new records cannot be joined to the old. What remains: records that carry the VIN itself stay on their topics "
                    "until their retention ends (the Retention column above); anonymous records were never linked; the ledger keeps its "
                    "entries, this erasure included. The erased record leaves the consent-state log once Kafka compacts it "
                    "(within about 1 hour 5 minutes with the default settings). This cannot be undone."
                }
                label { "Type the VIN to confirm" input name="confirm" required autocomplete="off" spellcheck="false" maxlength="17"; }
                (reason_field())
                button.danger type="submit" { "Erase" }
            }
        }
    }
}
