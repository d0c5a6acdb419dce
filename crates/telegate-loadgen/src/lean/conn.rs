//! A lean vehicle's connection: plain TCP, or mutual TLS with the vehicle's own certificate
//! (tokio-rustls), opened with a CONNECT whose CONNACK is awaited before the shard takes it.

use super::wire::{self, Incoming};
use rustls_pki_types::ServerName;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

#[derive(Debug)]
pub(crate) enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// Connects, speaks CONNECT and waits for a CONNACK that accepts it.
    pub(crate) async fn open(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
        client_id: &str,
        keep_alive_s: u16,
    ) -> io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        // Frames are small and due one at a time: each goes out when written, not when the
        // previous one's segment is acknowledged.
        tcp.set_nodelay(true)?;
        let mut conn = match tls {
            None => Conn::Tcp(tcp),
            Some(config) => {
                let name = ServerName::IpAddress(addr.ip().into());
                Conn::Tls(Box::new(
                    TlsConnector::from(config).connect(name, tcp).await?,
                ))
            }
        };
        let mut packet = Vec::with_capacity(32);
        wire::connect(&mut packet, client_id, keep_alive_s, true);
        conn.write_all(&packet).await?;
        conn.flush().await?;
        let mut ack = [0u8; 4];
        conn.read_exact(&mut ack).await?;
        match wire::parse(&ack) {
            Ok(Some((Incoming::ConnAck { code: 0, .. }, 4))) => Ok(conn),
            _ => Err(io::Error::other("the target refused the CONNECT")),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
