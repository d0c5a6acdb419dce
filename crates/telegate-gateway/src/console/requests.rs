//! The data-subject rights an officer exercises from a vehicle's page: consent, objection and
//! activation changes, the export (access) and erasure. Each needs the session's CSRF token, the
//! officer role and a case or ticket number, and goes to the consent ledger through the admin
//! API's context with channel `console` and the operator's name.

use super::Shared;
use super::access::{Operator, Refused, check_csrf};
use super::page::{self, respond, time};
use super::vehicle::{vehicle_of, vehicle_page};
use crate::admin::{self, AdminError, Who};
use crate::ledger::Channel;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use serde::Deserialize;
use telegate_frame::{Vin, now_ms};

/// A reason is a case or ticket number, or a short line: at most this many characters.
pub(super) const MAX_REASON: usize = 200;

/// An officer's change, with its reason checked; `Err` is the answer to send instead.
fn officer_change(
    console: &Shared,
    op: &Operator,
    handle: &str,
    given_csrf: &str,
    reason: &str,
) -> Result<(Vin, Who), Refused> {
    check_csrf(op, given_csrf)?;
    if !op.is_officer() {
        metrics::counter!("telegate_console_refused_total", "reason" => "role").increment(1);
        return Err(Box::new(page::refusal(
            StatusCode::FORBIDDEN,
            "Only an officer may change a vehicle's consents or answer a request.",
        )));
    }
    let vin = vehicle_of(console, op, handle)?;
    let reason = reason.trim();
    let problem = if reason.is_empty() {
        Some("Give the case or ticket number this change answers.".to_owned())
    } else if reason.chars().count() > MAX_REASON {
        Some(format!(
            "The case or ticket number is longer than {MAX_REASON} characters."
        ))
    } else if reason.chars().any(char::is_control) {
        Some("The case or ticket number has a control character.".to_owned())
    } else {
        None
    };
    if let Some(p) = problem {
        metrics::counter!("telegate_console_refused_total", "reason" => "form").increment(1);
        return Err(Box::new(respond(
            StatusCode::BAD_REQUEST,
            vehicle_page(console, op, handle, &vin, None, Some(&p)),
        )));
    }
    Ok((
        vin,
        Who {
            channel: Channel::Console,
            text_version: String::new(),
            actor: op.name.clone(),
            reason: reason.to_owned(),
            at_ms: now_ms(),
        },
    ))
}

/// The answer to a change the admin context refused or could not make.
fn failed(console: &Shared, op: &Operator, handle: &str, vin: &Vin, e: AdminError) -> Response {
    let status = match e.code() {
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    // The same words the admin API answers with; an internal failure is logged there.
    let message = tonic::Status::from(e).message().to_owned();
    respond(
        status,
        vehicle_page(console, op, handle, vin, None, Some(&message)),
    )
}

fn done(handle: &str, what: &str) -> Response {
    Redirect::to(&format!("/vehicles/{handle}?done={what}")).into_response()
}

fn counted(action: &'static str) {
    metrics::counter!("telegate_console_actions_total", "action" => action).increment(1);
}

#[derive(Deserialize)]
pub(super) struct Toggle {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    feature: String,
    #[serde(default)]
    granted: Option<bool>,
    #[serde(default)]
    on: Option<bool>,
    #[serde(default)]
    active: Option<bool>,
    #[serde(default)]
    reason: String,
}

/// The three changes one form each makes: `/vehicles/{handle}/consent`, `…/objection`,
/// `…/activation`.
#[derive(Debug, Clone, Copy, Deserialize, strum::IntoStaticStr)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub(super) enum Flag {
    Consent,
    Objection,
    Activation,
}

pub(super) async fn change(
    State(console): State<Shared>,
    Extension(op): Extension<Operator>,
    Path((handle, flag)): Path<(String, Flag)>,
    Form(f): Form<Toggle>,
) -> Response {
    let (vin, who) = match officer_change(&console, &op, &handle, &f.csrf, &f.reason) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let admin = &console.admin;
    let changed = match flag {
        Flag::Consent => {
            let granted = f.granted.unwrap_or(false);
            admin.set_consent(vin, &f.purpose, granted, &who).await
        }
        Flag::Objection => {
            let on = f.on.unwrap_or(false);
            admin.set_objection(vin, &f.purpose, on, &who).await
        }
        Flag::Activation => {
            let active = f.active.unwrap_or(false);
            admin.set_activation(vin, &f.feature, active, &who).await
        }
    };
    let what: &'static str = flag.into();
    match changed {
        Ok(_) => {
            counted(what);
            done(&handle, what)
        }
        Err(e) => failed(&console, &op, &handle, &vin, e),
    }
}

#[derive(Deserialize)]
pub(super) struct ExportForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    format: String,
    #[serde(default)]
    reason: String,
}

pub(super) async fn export(
    State(console): State<Shared>,
    Extension(op): Extension<Operator>,
    Path(handle): Path<String>,
    Form(f): Form<ExportForm>,
) -> Response {
    let (vin, who) = match officer_change(&console, &op, &handle, &f.csrf, &f.reason) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let document = match console.admin.export_for(&vin, &who).await {
        Ok(d) => d,
        Err(e) => return failed(&console, &op, &handle, &vin, e),
    };
    counted("export");
    let (body, kind, name) = if f.format == "json" {
        (
            serde_json::to_string_pretty(&document).unwrap_or_default(),
            "application/json",
            "telegate-export.json",
        )
    } else {
        (
            readable_export(&document).into_string(),
            "text/html; charset=utf-8",
            "telegate-export.html",
        )
    };
    (
        [
            (header::CONTENT_TYPE, kind.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// The export as a page a person reads: what is recorded, what was changed and by whom, and
/// where the vehicle's records are. Self-contained (no style sheet, no script).
fn readable_export(d: &serde_json::Value) -> Markup {
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "—".to_owned(),
        other => other.to_string(),
    };
    let ms = |v: &serde_json::Value| v.as_i64().map(time).unwrap_or_else(|| "—".into());
    let empty = Vec::new();
    let ledger = d["ledger"].as_array().unwrap_or(&empty);
    let deliveries = d["deliveries"].as_array().unwrap_or(&empty);
    html! {
        (maud::DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Your vehicle's data: " (s(&d["vin"])) } }
            body {
                h1 { "The data telegate holds about vehicle " (s(&d["vin"])) }
                p { "Exported " (ms(&d["exported_at_ms"])) " under the policy " (s(&d["policy"])) ". A machine-readable copy of the same data is available as JSON." }
                h2 { "Recorded settings and consents" }
                @if d["state"].is_null() {
                    p { "Nothing is recorded: the vehicle was never seen, or its record was erased." }
                } @else {
                    pre { (serde_json::to_string_pretty(&d["state"]).unwrap_or_default()) }
                }
                h2 { "Every change recorded in the consent ledger" }
                table {
                    thead { tr { th { "Recorded" } th { "Action" } th { "Purpose or feature" } th { "Value" } th { "Channel" } th { "By" } th { "Case" } } }
                    tbody { @for e in ledger {
                        tr { td { (ms(&e["recorded_at_ms"])) } td { (s(&e["action"])) } td { (s(&e["target"])) } td { (s(&e["value"])) } td { (s(&e["channel"])) } td { (s(&e["actor"])) } td { (s(&e["reason"])) } }
                    } }
                }
                h2 { "Where the vehicle's records went" }
                table {
                    thead { tr { th { "Purpose" } th { "Topic" } th { "Identified by" } th { "Legal basis" } th { "Records held" } th { "Captured from" } th { "to" } th { "Note" } } }
                    tbody { @for r in deliveries {
                        tr { td { (s(&r["purpose"])) } td { (s(&r["topic"])) } td { (s(&r["identity"])) } td { (s(&r["legal_basis"])) } td { (s(&r["records"])) } td { (ms(&r["first_captured_at_ms"])) } td { (ms(&r["last_captured_at_ms"])) } td { (s(&r["note"])) } }
                    } }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct EraseForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    reason: String,
}

pub(super) async fn erase(
    State(console): State<Shared>,
    Extension(op): Extension<Operator>,
    Path(handle): Path<String>,
    Form(f): Form<EraseForm>,
) -> Response {
    let (vin, who) = match officer_change(&console, &op, &handle, &f.csrf, &f.reason) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if f.confirm.trim() != vin.expose() {
        return respond(
            StatusCode::BAD_REQUEST,
            vehicle_page(
                &console,
                &op,
                &handle,
                &vin,
                None,
                Some("The confirmation is not this vehicle's VIN: nothing was erased."),
            ),
        );
    }
    match admin::erase(&console.admin, &vin, &who).await {
        Ok(_) => {
            counted("erase");
            done(&handle, "erase")
        }
        Err(e) => failed(&console, &op, &handle, &vin, e),
    }
}
