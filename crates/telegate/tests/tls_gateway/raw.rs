//! Raw MQTT 3.1.1 over TLS, byte by byte, for the traffic no well-behaved client sends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use telegate_sim::tls::VehicleCertificates;

/// A raw TLS connection presenting `vin`'s certificate.
pub(crate) type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub(crate) fn tls(certs: &VehicleCertificates, addr: SocketAddr, vin: &str) -> Tls {
    let cfg = certs.client_config(vin).expect("vehicle certificate");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(cfg, name).expect("TLS client");
    let tcp = TcpStream::connect(addr).expect("tcp");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("TLS handshake");
    }
    s
}

pub(crate) fn remaining_length(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return out;
        }
    }
}

pub(crate) fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    [&[first][..], &remaining_length(body.len()), body].concat()
}

pub(crate) fn string(s: &[u8]) -> Vec<u8> {
    [&(s.len() as u16).to_be_bytes()[..], s].concat()
}

/// An MQTT 3.1.1 CONNECT.
pub(crate) fn connect(keep_alive: u16, clean: bool) -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.push(4);
    body.push(if clean { 0x02 } else { 0x00 });
    body.extend(keep_alive.to_be_bytes());
    body.extend(string(
        format!("atk-{:x}", rand::random::<u32>()).as_bytes(),
    ));
    packet(0x10, &body)
}

pub(crate) fn publish(topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let body = [&string(topic.as_bytes())[..], &pkid.to_be_bytes(), payload].concat();
    packet(0x32, &body)
}

/// A connected vehicle: TLS, CONNECT, CONNACK accepted.
pub(crate) fn connected(
    certs: &VehicleCertificates,
    addr: SocketAddr,
    vin: &str,
    clean: bool,
) -> Tls {
    let mut s = tls(certs, addr, vin);
    s.write_all(&connect(30, clean)).expect("CONNECT");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).expect("CONNACK");
    assert_eq!((ack[0], ack[3]), (0x20, 0), "CONNACK {ack:?}");
    s
}

/// Whether the server closed the connection within `within`.
pub(crate) fn closed_by_server(s: &mut impl Read, sock: &TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        sock.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
}

pub(crate) fn tls_closed(s: &mut Tls, within: Duration) -> bool {
    let sock = s.sock.try_clone().expect("clone");
    closed_by_server(s, &sock, within)
}
