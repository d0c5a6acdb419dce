//! Signing in and out, sessions, and the checks every request passes: a session cookie for
//! every page but the sign-in page, the session's CSRF token on every form, and no form posted
//! from another origin.

use super::{Shared, page};
use crate::config::{Role, token_hash};
use axum::Form;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use telegate_frame::Vin;

/// Sessions beyond this many push out the longest unused one.
const MAX_SESSIONS: usize = 1_000;
/// Vehicles one session may have open; the oldest handle goes first.
const MAX_OPEN_VEHICLES: usize = 64;

/// The operator a request was made by, as its session says.
#[derive(Debug, Clone)]
pub(super) struct Operator {
    pub name: String,
    pub role: Role,
    pub csrf: String,
    session: String,
}

impl Operator {
    pub(super) fn is_officer(&self) -> bool {
        self.role == Role::Officer
    }
}

#[derive(Debug)]
struct Session {
    name: String,
    role: Role,
    csrf: String,
    last_seen: Instant,
    /// Handle → vehicle, in the order opened.
    vehicles: Vec<(String, Vin)>,
}

#[derive(Debug)]
pub(super) struct Sessions {
    operators: Vec<(String, Role, [u8; 32])>,
    idle: Duration,
    open: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Sessions {
    pub(super) fn new(operators: Vec<(String, Role, [u8; 32])>, idle: Duration) -> Self {
        Self {
            operators,
            idle,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The operator whose token this is, compared in constant time against every entry.
    fn operator_of(&self, token: &str) -> Option<(String, Role)> {
        let hash = token_hash(token);
        let mut found = None;
        for (name, role, expected) in &self.operators {
            if bool::from(hash.ct_eq(expected)) {
                found = Some((name.clone(), *role));
            }
        }
        found
    }

    /// A new session for `token`'s operator; its id for the cookie.
    fn start(&self, token: &str) -> Option<(String, String)> {
        let (name, role) = self.operator_of(token)?;
        let id = random_hex();
        let mut open = self.lock();
        let now = Instant::now();
        open.retain(|_, s| now.duration_since(s.last_seen) < self.idle);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
        {
            open.remove(&oldest);
        }
        open.insert(
            id.clone(),
            Session {
                name: name.clone(),
                role,
                csrf: random_hex(),
                last_seen: now,
                vehicles: Vec::new(),
            },
        );
        Some((id, name))
    }

    fn touch(&self, id: &str) -> Option<Operator> {
        let mut open = self.lock();
        let now = Instant::now();
        let s = open.get_mut(id)?;
        if now.duration_since(s.last_seen) >= self.idle {
            open.remove(id);
            return None;
        }
        s.last_seen = now;
        Some(Operator {
            name: s.name.clone(),
            role: s.role,
            csrf: s.csrf.clone(),
            session: id.to_owned(),
        })
    }

    fn end(&self, id: &str) {
        self.lock().remove(id);
    }

    /// A handle for `vin` in the operator's session (the same one if it is open already).
    pub(super) fn open_vehicle(&self, op: &Operator, vin: Vin) -> Option<String> {
        let mut open = self.lock();
        let s = open.get_mut(&op.session)?;
        if let Some((h, _)) = s.vehicles.iter().find(|(_, v)| *v == vin) {
            return Some(h.clone());
        }
        if s.vehicles.len() >= MAX_OPEN_VEHICLES {
            s.vehicles.remove(0);
        }
        let handle = hex::encode(rand::random::<[u8; 16]>());
        s.vehicles.push((handle.clone(), vin));
        Some(handle)
    }

    /// The vehicle `handle` stands for in the operator's session.
    pub(super) fn vehicle(&self, op: &Operator, handle: &str) -> Option<Vin> {
        let open = self.lock();
        let s = open.get(&op.session)?;
        s.vehicles
            .iter()
            .find(|(h, _)| h == handle)
            .map(|(_, v)| *v)
    }
}

/// The session cookie's name: `__Host-` (Secure, this host only, path /) over TLS.
fn cookie_name(console: &super::Console) -> &'static str {
    if console.tls {
        "__Host-telegate-console"
    } else {
        "telegate-console"
    }
}

fn session_cookie(console: &super::Console, headers: &HeaderMap) -> Option<String> {
    let name = cookie_name(console);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(console: &super::Console, value: &str, max_age: Option<u64>) -> String {
    let mut c = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict",
        cookie_name(console)
    );
    if console.tls {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    c
}

/// Every page behind it needs a live session; without one, the sign-in page.
pub(super) async fn require_session(
    State(console): State<Shared>,
    mut req: Request,
    next: Next,
) -> Response {
    let operator =
        session_cookie(&console, req.headers()).and_then(|id| console.sessions.touch(&id));
    match operator {
        Some(op) => {
            req.extensions_mut().insert(op);
            next.run(req).await
        }
        None => Redirect::to("/sign-in").into_response(),
    }
}

/// A form posted from another origin is refused before any handler sees it: the browser's
/// `Sec-Fetch-Site` or, failing that, `Origin` must name this console.
pub(super) async fn same_origin_posts(
    State(_console): State<Shared>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() == Method::POST && !same_origin(req.headers()) {
        metrics::counter!("telegate_console_refused_total", "reason" => "cross-origin")
            .increment(1);
        return page::refusal(StatusCode::FORBIDDEN, "This form came from another site.");
    }
    next.run(req).await
}

fn same_origin(headers: &HeaderMap) -> bool {
    let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority == host),
        // No browser that sends neither is a browser a page could misuse.
        (None, _) => true,
        (Some(_), None) => false,
    }
}

/// The session's CSRF token must come with every form.
/// The answer to send instead, when a check fails (boxed: an answer is large).
pub(super) type Refused = Box<Response>;

pub(super) fn check_csrf(op: &Operator, given: &str) -> Result<(), Refused> {
    if bool::from(given.as_bytes().ct_eq(op.csrf.as_bytes())) {
        Ok(())
    } else {
        metrics::counter!("telegate_console_refused_total", "reason" => "csrf").increment(1);
        Err(Box::new(page::refusal(
            StatusCode::FORBIDDEN,
            "This form has expired: open the page again.",
        )))
    }
}

pub(super) async fn sign_in_page() -> Response {
    page::sign_in(StatusCode::OK, None)
}

#[derive(Deserialize)]
pub(super) struct SignIn {
    #[serde(default)]
    token: String,
}

pub(super) async fn sign_in(State(console): State<Shared>, Form(form): Form<SignIn>) -> Response {
    match console.sessions.start(&form.token) {
        Some((id, name)) => {
            metrics::counter!("telegate_console_sign_ins_total", "result" => "accepted")
                .increment(1);
            // Operator names are not personal data of a data subject; the ledger records them.
            tracing::info!(operator = %name, "console: signed in");
            let secs = console.sessions.idle.as_secs();
            (
                [(header::SET_COOKIE, set_cookie(&console, &id, Some(secs)))],
                Redirect::to("/"),
            )
                .into_response()
        }
        None => {
            metrics::counter!("telegate_console_sign_ins_total", "result" => "refused")
                .increment(1);
            page::sign_in(StatusCode::UNAUTHORIZED, Some("That token is not valid."))
        }
    }
}

#[derive(Deserialize)]
pub(super) struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn sign_out(
    State(console): State<Shared>,
    axum::Extension(op): axum::Extension<Operator>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Err(refused) = check_csrf(&op, &form.csrf) {
        return *refused;
    }
    console.sessions.end(&op.session);
    (
        [(header::SET_COOKIE, set_cookie(&console, "", Some(0)))],
        Redirect::to("/sign-in"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new(
            vec![
                (
                    "anna".into(),
                    Role::Officer,
                    token_hash("officer-token-0123456789"),
                ),
                (
                    "ben".into(),
                    Role::Viewer,
                    token_hash("viewer-token-0123456789"),
                ),
            ],
            Duration::from_secs(60),
        )
    }

    #[test]
    fn a_token_signs_in_its_own_operator_only() {
        let s = sessions();
        assert_eq!(
            s.operator_of("officer-token-0123456789"),
            Some(("anna".into(), Role::Officer))
        );
        assert_eq!(
            s.operator_of("viewer-token-0123456789"),
            Some(("ben".into(), Role::Viewer))
        );
        assert_eq!(s.operator_of("officer-token-012345678"), None);
        assert_eq!(s.operator_of(""), None);
    }

    #[test]
    fn a_vehicle_handle_belongs_to_the_session_that_opened_it() {
        let s = sessions();
        let (a, _) = s.start("officer-token-0123456789").expect("signs in");
        let (b, _) = s.start("viewer-token-0123456789").expect("signs in");
        let (a, b) = (s.touch(&a).expect("live"), s.touch(&b).expect("live"));
        let vin = Vin::parse("WP0ZZZ99ZTS392124").expect("vin");
        let handle = s.open_vehicle(&a, vin).expect("open");
        assert_eq!(s.open_vehicle(&a, vin).as_deref(), Some(handle.as_str()));
        assert_eq!(s.vehicle(&a, &handle), Some(vin));
        assert_eq!(s.vehicle(&b, &handle), None);
        assert!(!handle.contains("WP0"));
        s.end(&a.session);
        assert!(s.touch(&a.session).is_none());
    }

    #[test]
    fn posts_from_another_origin_are_told_apart() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().expect("header"));
            }
            m
        };
        assert!(same_origin(&h(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&h(&[("sec-fetch-site", "cross-site")])));
        assert!(same_origin(&h(&[
            ("origin", "https://127.0.0.1:8443"),
            ("host", "127.0.0.1:8443")
        ])));
        assert!(!same_origin(&h(&[
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:8443")
        ])));
    }
}
