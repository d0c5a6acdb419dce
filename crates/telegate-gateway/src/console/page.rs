//! The frame every page shares, and the pages that are only a form or a message.

use super::access::Operator;
use axum::Extension;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

/// A whole page: header with the navigation and the operator, then `body`.
pub(super) fn layout(title: &str, op: Option<&Operator>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · telegate console" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                header {
                    span.brand { "telegate console" }
                    @if let Some(op) = op {
                        nav aria-label="Main" {
                            a href="/" { "Vehicle" }
                            a href="/policy" { "Policy" }
                            a href="/flows" { "Flows" }
                        }
                        span #who { (op.name) " (" (op.role.as_str()) ")" }
                        form #sign-out method="post" action="/sign-out" {
                            (csrf(op))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The hidden field every form carries.
pub(super) fn csrf(op: &Operator) -> Markup {
    html! { input type="hidden" name="csrf" value=(op.csrf); }
}

pub(super) fn respond(status: StatusCode, page: Markup) -> Response {
    (status, Html(page.into_string())).into_response()
}

/// A page that says why a request was refused, and nothing else.
pub(super) fn refusal(status: StatusCode, message: &str) -> Response {
    respond(
        status,
        layout(
            "Refused",
            None,
            html! {
                h1 { "Refused" }
                p #error role="alert" { (message) }
                p { a href="/" { "Back to the console" } }
            },
        ),
    )
}

pub(super) fn sign_in(status: StatusCode, error: Option<&str>) -> Response {
    respond(
        status,
        layout(
            "Sign in",
            None,
            html! {
                h1 { "Sign in" }
                @if let Some(e) = error { p #error role="alert" { (e) } }
                form #sign-in method="post" action="/sign-in" {
                    label for="token" { "Operator token" }
                    input #token type="password" name="token" autocomplete="current-password" required;
                    button type="submit" { "Sign in" }
                }
                p.hint { "Tokens are issued by the gateway's operators (telegate console operator NAME)." }
            },
        ),
    )
}

/// The start page: open a vehicle by its exact VIN. There is no list of vehicles.
pub(super) fn home_page(op: &Operator, status: StatusCode, error: Option<&str>) -> Response {
    respond(
        status,
        layout(
            "Vehicle",
            Some(op),
            html! {
                h1 { "Open a vehicle" }
                p { "Enter the vehicle's VIN exactly as the data subject gave it. The console has no list or search of vehicles." }
                @if let Some(e) = error { p #error role="alert" { (e) } }
                form #open-vehicle method="post" action="/vehicles" {
                    (csrf(op))
                    label for="vin" { "VIN" }
                    input #vin name="vin" autocomplete="off" spellcheck="false" maxlength="17" required;
                    button type="submit" { "Open" }
                }
            },
        ),
    )
}

pub(super) async fn home(Extension(op): Extension<Operator>) -> Response {
    home_page(&op, StatusCode::OK, None)
}

pub(super) async fn not_found() -> Response {
    refusal(StatusCode::NOT_FOUND, "There is no such page.")
}

pub(super) async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/console.css"),
    )
        .into_response()
}

pub(super) async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/console.js"),
    )
        .into_response()
}

/// Milliseconds since the epoch as a UTC time a person reads: `2026-12-04 21:55:14 UTC`.
pub(super) fn time(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC"),
        Err(_) => format!("{ms} ms"),
    }
}
