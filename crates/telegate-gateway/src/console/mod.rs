//! The privacy office's console: a web page for the people who answer data-subject letters.
//! Served by the gateway on its own listener (`console.listen`), over TLS with the admin API's
//! certificate settings when those are set. Operators sign in with a token; a *viewer* looks a
//! vehicle up by its exact VIN, explains decisions and watches the flows, an *officer* also
//! exports, erases, records objections, consents and activations, each with a case or ticket
//! number that goes to the consent ledger with the operator's name.
//!
//! The pages are HTML written on the server ([`maud`] escapes every value); the one script and
//! the one style sheet are this module's own files, served from the same origin under a strict
//! Content-Security-Policy. No URL carries a VIN: a vehicle is opened with a form and shown
//! under a random handle that only the session that opened it knows.

mod access;
mod flows;
mod page;
mod policy;
mod requests;
mod samples;
pub mod timeline;
mod vehicle;

use crate::admin::AdminContext;
use crate::config::ConsoleAccess;
use access::Sessions;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use timeline::LedgerIndex;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the console's pages read and change.
#[derive(Debug)]
pub struct Console {
    admin: Arc<AdminContext>,
    ledger: Arc<LedgerIndex>,
    sessions: Sessions,
    /// Whether pages are served over TLS (cookies are then `Secure` and `__Host-`).
    tls: bool,
    /// Ends the event streams, which would otherwise hold shutdown up.
    stop: CancellationToken,
    /// The flows page's last minutes.
    history: flows::History,
}

type Shared = Arc<Console>;

/// A client that opens a connection and stalls its handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the console on `listen` until `stop` is cancelled; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    access: ConsoleAccess,
    admin: Arc<AdminContext>,
    ledger: Arc<LedgerIndex>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<SocketAddr> {
    let tls = match &access.tls {
        Some(tls) => Some(TlsAcceptor::from(Arc::new(tls.rustls_config()?))),
        None if !listen.ip().is_loopback() => {
            tracing::warn!(
                %listen,
                "the console serves plain HTTP beyond loopback: operator tokens and session \
                 cookies cross the network in clear; set admin.tls_cert and admin.tls_key, or \
                 listen on 127.0.0.1 behind a TLS-terminating proxy"
            );
            None
        }
        None => None,
    };
    let console = Arc::new(Console {
        admin,
        ledger,
        sessions: Sessions::new(access.operators, access.session_idle),
        tls: tls.is_some(),
        stop: stop.clone(),
        history: flows::History::default(),
    });
    tasks.spawn(flows::record(console.clone(), stop.clone()));
    let app = router(console);
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let serve_stop = stop.clone();
    match tls {
        None => {
            tasks.spawn(async move {
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(serve_stop.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "console stopped");
                }
            });
        }
        Some(acceptor) => {
            let incoming = tls_incoming(listener, acceptor, stop, tasks);
            tasks.spawn(async move {
                if let Err(e) = axum::serve(incoming, app)
                    .with_graceful_shutdown(serve_stop.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "console stopped");
                }
            });
        }
    }
    Ok(addr)
}

fn router(console: Shared) -> Router {
    let signed_in = Router::new()
        .route("/", get(page::home))
        .route("/sign-out", post(access::sign_out))
        .route("/vehicles", post(vehicle::open))
        .route("/vehicles/{handle}", get(vehicle::show))
        .route("/vehicles/{handle}/export", post(requests::export))
        .route("/vehicles/{handle}/erase", post(requests::erase))
        // consent, objection, activation
        .route("/vehicles/{handle}/{flag}", post(requests::change))
        .route("/policy", get(policy::show))
        .route("/flows", get(flows::show))
        .route("/flows/events", get(flows::events))
        .route_layer(middleware::from_fn_with_state(
            console.clone(),
            access::require_session,
        ));
    Router::new()
        .route("/sign-in", get(access::sign_in_page).post(access::sign_in))
        .route("/static/console.css", get(page::style))
        .route("/static/console.js", get(page::script))
        // Browsers ask for it on every site; there is none.
        .route(
            "/favicon.ico",
            get(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .merge(signed_in)
        .fallback(page::not_found)
        .layer(middleware::from_fn_with_state(
            console.clone(),
            access::same_origin_posts,
        ))
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

/// The headers every answer carries: nothing runs or loads from another origin, nothing is
/// framed, cached or told where it came from.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::CACHE_CONTROL, "no-store");
    set(
        h,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        h,
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    res
}

/// Connections whose TLS handshake finished, for `axum::serve`. Handshakes run on tasks of
/// their own, each bounded in time, so that one slow client holds up nobody else.
struct TlsIncoming {
    rx: mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    addr: SocketAddr,
}

fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> TlsIncoming {
    let addr = listener
        .local_addr()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    let (tx, rx) = mpsc::channel(64);
    let handshakes = tasks.clone();
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "console: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            handshakes.spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send((stream, peer)).await;
                    }
                    Ok(Err(_)) | Err(_) => {
                        metrics::counter!("telegate_console_handshakes_failed_total").increment(1);
                    }
                }
            });
        }
    });
    TlsIncoming { rx, addr }
}

impl axum::serve::Listener for TlsIncoming {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The acceptor stopped: the server is shutting down; wait for its signal.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
