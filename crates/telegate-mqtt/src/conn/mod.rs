//! One client connection: TLS handshake and CONNECT within the connect timeout, identity,
//! the topic rules, publishes handed to the pipeline with their PUBACKs sent in arrival order
//! once the pipeline completes them, requests to the vehicle, keep-alive and limits.
//!
//! The protocol is [`machine::Machine`], which does no IO and reads no clock; the task of a
//! connection ([`driver`]) owns the socket, the buffers and the timers, and feeds it.

mod driver;
mod machine;
mod rate;

use crate::Refusal;
use crate::config::Listener;
use crate::edge::Shared;
use crate::handshakes::Pending;
use crate::signal::Signal;
use bytes::BytesMut;
use rustls_pki_types::CertificateDer;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::server::TlsStream;

/// What a plain socket reserves to read into once it is readable. Most packets fit; a
/// longer one takes more reads.
const READ_CHUNK: usize = 4096;

/// What a TLS connection keeps to read into while it waits: rustls holds what does not fit
/// and hands it over on the next read.
const TLS_READ_CHUNK: usize = 512;

/// How a connection reads. A plain socket waits until it is readable and only then takes a
/// read buffer, so an idle plain connection holds none; TLS reads through rustls into a small
/// buffer kept while waiting.
pub(crate) trait Wire: AsyncRead + AsyncWrite + Unpin + Send {
    fn read_into<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;

    /// The certificate chain the client presented, end entity first (TLS only).
    fn peer_chain(&self) -> Option<&[CertificateDer<'static>]> {
        None
    }
}

impl Wire for TcpStream {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            self.readable().await?;
            buf.reserve(READ_CHUNK);
            // One attempt: tokio's read takes a short read as the socket drained and clears
            // its readiness, so the next wait does not cost a read that finds nothing.
            let polled = {
                let read = std::pin::pin!(self.read_buf(buf));
                futures::poll!(read)
            };
            if let Poll::Ready(read) = polled {
                return read;
            }
            // The readiness was stale, and is cleared now: wait without the buffer.
            if buf.is_empty() {
                *buf = BytesMut::new();
            }
        }
    }
}

impl Wire for Box<TlsStream<TcpStream>> {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        buf.reserve(TLS_READ_CHUNK);
        self.read_buf(buf).await
    }

    fn peer_chain(&self) -> Option<&[CertificateDer<'static>]> {
        self.get_ref().1.peer_certificates()
    }
}

/// Who the peer proved to be.
#[derive(Debug)]
pub(crate) enum Peer {
    /// No certificate (a plain listener, or TLS without client authentication).
    Anonymous,
    /// A certificate naming one VIN.
    Vehicle(crate::tls::Identity),
    /// A certificate that names no vehicle.
    NoVin,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The client closed it, or the network did.
    Closed,
    Refused(Refusal),
}

impl From<Refusal> for End {
    fn from(r: Refusal) -> Self {
        End::Refused(r)
    }
}

/// A connection just accepted: its signal (which also carries an eviction from the budget of
/// unauthenticated connections) and its place in that budget, held until CONNACK.
pub(crate) struct Accepted {
    pub signal: Arc<Signal>,
    pub pending: Pending,
}

/// Serves one TCP connection of a plain listener. The connection's task is this future, so
/// it holds nothing of TLS.
pub(crate) async fn plain(tcp: TcpStream, listener: Listener, ctx: Arc<Shared>, new: Accepted) {
    let deadline = Instant::now() + ctx.cfg.connect_timeout;
    let _ = tcp.set_nodelay(true);
    driver::run(tcp, listener, Peer::Anonymous, deadline, ctx, new).await
}

/// Serves one TCP connection of the TLS listener: the handshake first. The handshake's state
/// and then the TLS stream live on the heap, each for as long as it is needed, so the task
/// holds neither.
pub(crate) async fn tls(tcp: TcpStream, ctx: Arc<Shared>, new: Accepted) {
    let deadline = Instant::now() + ctx.cfg.connect_timeout;
    let _ = tcp.set_nodelay(true);
    let shaken = tokio::select! {
        biased;
        why = new.signal.closed() => return ctx.refused(why),
        shaken = Box::pin(handshake(tcp, &ctx, deadline)) => shaken,
    };
    if let Some((stream, peer)) = shaken {
        driver::run(stream, Listener::Tls, peer, deadline, ctx, new).await;
    }
}

/// Why a client certificate was refused, as counted.
fn certificate_refusal(e: &rustls::Error) -> Refusal {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::Revoked) => Refusal::CertificateRevoked,
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            Refusal::CertificateExpired
        }
        _ => Refusal::HandshakeFailed,
    }
}

/// The presented certificate against the CRL in force and the clock now (unless a full
/// handshake under the configuration in force just checked it: `verified`).
fn check_certificate(ctx: &Shared, io: &impl Wire, verified: Option<u64>) -> Result<(), Refusal> {
    match (&ctx.tls, io.peer_chain()) {
        (Some(tls), Some(chain)) => tls
            .check(chain, verified)
            .map_err(|e| certificate_refusal(&e)),
        _ => Ok(()),
    }
}

/// The TLS handshake and who the certificate names; `None` (counted) if it failed.
async fn handshake(
    tcp: TcpStream,
    ctx: &Shared,
    deadline: Instant,
) -> Option<(Box<TlsStream<TcpStream>>, Peer)> {
    let (acceptor, generation) = ctx.tls.as_ref()?.acceptor();
    match timeout_at(deadline, acceptor.accept(tcp)).await {
        Err(_) => {
            ctx.refused(Refusal::HandshakeTimeout);
            None
        }
        Ok(Err(e)) => {
            let why = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map_or(Refusal::HandshakeFailed, certificate_refusal);
            tracing::debug!(reason = why.as_str(), error = %e, "TLS handshake refused");
            ctx.refused(why);
            None
        }
        Ok(Ok(stream)) => {
            let tls = stream.get_ref().1;
            let full = !matches!(tls.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
            let peer = match tls.peer_certificates().and_then(|c| c.first()) {
                None => Peer::Anonymous,
                Some(der) => match crate::tls::identity(der) {
                    Some(id) => Peer::Vehicle(crate::tls::Identity {
                        verified: full.then_some(generation),
                        ..id
                    }),
                    None => Peer::NoVin,
                },
            };
            Some((Box::new(stream), peer))
        }
    }
}
