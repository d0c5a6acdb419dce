//! The holes an attack review found in the closed edge, attacked again, black box: the real
//! `telegate serve` with its TLS listener, and independent clients.
//!
//! - A revoked or expired certificate does not get in by resuming a TLS session: Python's
//!   `ssl` (OpenSSL) saves a session, resumes it (TLS 1.3 and 1.2) after `telegate pki
//!   revoke` and after the certificate expired; a live connection closes at its
//!   certificate's expiry.
//! - A vehicle certificate under a sub-CA that the fleet CA's `pathlen:0` forbids (made with
//!   the openssl command line, which refuses it too) is refused.
//! - Unauthenticated connections from several source addresses, renewed as fast as the edge
//!   closes them, up to more than the gateway's file-descriptor limit, do not keep a vehicle
//!   out: it connects within 2 s.
//! - A packet dribbled in byte by byte does not outlive the keep-alive; a CONNECT announcing
//!   200 KB is refused at once; partial packets of many connections together stay within
//!   `max_buffered_bytes` while a well-behaved vehicle's frames go on.

mod tls_gateway;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use telegate_sim::tls::VehicleCertificates;
use telegate_tests::*;
use tls_gateway::raw::*;
use tls_gateway::{Gateway, telegate_pki};

/// A Python `ssl` vehicle that keeps its TLS session (tests/attack/resume.py).
struct Resumer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Resumer {
    fn start(g: &Gateway, cert: &Path, key: &Path, version: &str) -> Self {
        let python = std::env::var("TELEGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/attack/resume.py"
            ))
            .arg("127.0.0.1")
            .arg(g.tls.port().to_string())
            .arg(g.pki.join("ca.crt"))
            .arg(cert)
            .arg(key)
            .arg(version)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command and reads its answer (blocking; run it off the runtime's threads
    /// where the gateway must be polled meanwhile: it is a child process here, so not).
    fn ask(&mut self, command: &str) -> Value {
        writeln!(self.stdin, "{command}").expect("command");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("answer");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}

impl Drop for Resumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn vehicle_files(g: &Gateway, vin: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let base = g.pki.join("vehicles").join(vin);
    (base.with_extension("crt"), base.with_extension("key"))
}

/// Waits until the gateway has read the CRL `times` times (its log says so each time).
async fn crl_reloaded(g: &Gateway, times: usize) {
    let reloaded = |g: &Gateway| g.log_text().matches("client CRL reloaded").count() >= times;
    assert!(
        g.eventually(Duration::from_secs(10), reloaded).await,
        "the CRL was not reloaded: {}",
        g.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_certificates_are_refused_on_every_path() {
    let g = Gateway::start(&[("TELEGATE__MQTT__CRL_CHECK_INTERVAL", "200ms")]).await;
    let pki = g.pki.to_str().expect("UTF-8").to_owned();
    let mut reloads = 0;

    for version in ["1.3", "1.2"] {
        let vin = unique_vin();
        g.issue(&vin);
        let (cert, key) = vehicle_files(&g, &vin);
        let mut v = Resumer::start(&g, &cert, &key, version);
        let first = v.ask("connect");
        assert_eq!(first["connack"], 0, "TLS {version}: {first}");
        let again = v.ask("resume");
        assert_eq!(
            (&again["reused"], &again["connack"]),
            (&Value::Bool(true), &Value::from(0)),
            "TLS {version}: a valid certificate resumes its session: {again}"
        );
        let before = g.refused("certificate-revoked");
        telegate_pki(&["revoke", &pki, &vin]);
        reloads += 1;
        crl_reloaded(&g, reloads).await;
        let resumed = v.ask("resume");
        assert_ne!(
            resumed["connack"], 0,
            "TLS {version}: a session saved before the revocation got in: {resumed}"
        );
        let fresh = v.ask("connect");
        assert_ne!(
            fresh["connack"], 0,
            "TLS {version}: a new session after the revocation got in: {fresh}"
        );
        assert!(
            g.refused("certificate-revoked") >= before + 2.0,
            "TLS {version}: refusals not counted as certificate-revoked"
        );
        println!(
            "TLS {version}: revoked, offered its saved session: {resumed}; new session: {fresh}"
        );
    }

    // A certificate that expires while its ticket is still good, and while connected.
    let vin = unique_vin();
    let lifetime = Duration::from_secs(6);
    telegate_pki(&["issue", &pki, &vin, "--valid-for", "6s"]);
    let issued = Instant::now();
    let (cert, key) = vehicle_files(&g, &vin);
    let mut v = Resumer::start(&g, &cert, &key, "1.3");
    let first = v.ask("connect");
    assert_eq!(first["connack"], 0, "{first}");
    let held = v.ask("hold");
    assert_eq!(
        (&held["reused"], &held["connack"]),
        (&Value::Bool(true), &Value::from(0)),
        "{held}"
    );
    let closed_after = issued.elapsed();
    assert!(
        closed_after >= lifetime - Duration::from_secs(1)
            && closed_after <= lifetime + Duration::from_secs(4),
        "the live connection closed {closed_after:?} after issue, its certificate lasting {lifetime:?}"
    );
    let before = g.refused("certificate-expired");
    let after_expiry = v.ask("resume");
    assert_eq!(
        after_expiry["reused"], true,
        "the ticket outlives the certificate, so the CONNECT check is what refuses: {after_expiry}"
    );
    assert_ne!(after_expiry["connack"], 0, "{after_expiry}");
    assert!(g.refused("certificate-expired") >= before + 1.0);
    assert!(
        g.refused("certificate-expired") >= 2.0,
        "the live connection's close was not counted"
    );
    println!(
        "expired: live connection closed {closed_after:?} after issue; resumed after expiry: {after_expiry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_all_of_a_vehicles_certificates_covers_the_renewed_ones() {
    let g = Gateway::start(&[("TELEGATE__MQTT__CRL_CHECK_INTERVAL", "200ms")]).await;
    let pki = g.pki.to_str().expect("UTF-8").to_owned();
    let vin = unique_vin();
    g.issue(&vin);
    let (cert, key) = vehicle_files(&g, &vin);
    let dir = tempfile::tempdir().expect("tmp");
    let (old_cert, old_key) = (dir.path().join("old.crt"), dir.path().join("old.key"));
    std::fs::copy(&cert, &old_cert).expect("copy");
    std::fs::copy(&key, &old_key).expect("copy");
    g.issue(&vin); // a renewal: the old certificate stays valid
    let mut old = Resumer::start(&g, &old_cert, &old_key, "1.3");
    assert_eq!(
        old.ask("connect")["connack"],
        0,
        "a renewal leaves the old one valid"
    );
    telegate_pki(&["revoke", &pki, &vin]);
    crl_reloaded(&g, 1).await;
    assert_eq!(
        old.ask("connect")["connack"],
        0,
        "`revoke` covers the current certificate only"
    );
    telegate_pki(&["revoke", "--all", &pki, &vin]);
    crl_reloaded(&g, 2).await;
    assert_ne!(old.ask("connect")["connack"], 0, "`revoke --all` covers it");
    let mut current = Resumer::start(&g, &cert, &key, "1.3");
    assert_ne!(current.ask("connect")["connack"], 0);
}

fn openssl(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_under_a_sub_ca_the_fleet_ca_forbids_is_refused() {
    let g = Gateway::start(&[]).await;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let ca = g.pki.join("ca.crt");
    let ca_key = g.pki.join("ca.key");
    let vin = unique_vin();
    std::fs::write(
        d.join("sub.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .expect("ext");
    std::fs::write(
        d.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=clientAuth\nauthorityKeyIdentifier=keyid\n",
    )
    .expect("ext");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let steps: Vec<Vec<String>> = vec![
        [
            &["req", "-new"][..],
            &ec,
            &[
                "-keyout",
                "sub.key",
                "-subj",
                "/CN=rogue sub-CA",
                "-out",
                "sub.csr",
            ],
        ]
        .concat(),
        [
            "x509",
            "-req",
            "-in",
            "sub.csr",
            "-CA",
            ca.to_str().expect("UTF-8"),
            "-CAkey",
            ca_key.to_str().expect("UTF-8"),
            "-set_serial",
            "4242",
            "-days",
            "1",
            "-extfile",
            "sub.ext",
            "-out",
            "sub.crt",
        ]
        .to_vec(),
        [
            &["req", "-new"][..],
            &ec,
            &[
                "-keyout",
                "leaf.key",
                "-subj",
                &format!("/CN={vin}"),
                "-out",
                "leaf.csr",
            ],
        ]
        .concat(),
        [
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "sub.crt",
            "-CAkey",
            "sub.key",
            "-set_serial",
            "4243",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.crt",
        ]
        .to_vec(),
    ]
    .into_iter()
    .map(|v| v.into_iter().map(str::to_owned).collect())
    .collect();
    for step in &steps {
        let args: Vec<&str> = step.iter().map(String::as_str).collect();
        let out = openssl(d, &args);
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let verify = openssl(
        d,
        &[
            "verify",
            "-CAfile",
            ca.to_str().expect("UTF-8"),
            "-untrusted",
            "sub.crt",
            "leaf.crt",
        ],
    );
    assert!(
        !verify.status.success(),
        "openssl itself accepts the chain, so the test proves nothing: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let chain = [
        std::fs::read_to_string(d.join("leaf.crt")).expect("leaf"),
        std::fs::read_to_string(d.join("sub.crt")).expect("sub"),
    ]
    .concat();
    std::fs::write(d.join("chain.crt"), chain).expect("chain");
    let before = g.refused("handshake-failed");
    let mut v = Resumer::start(&g, &d.join("chain.crt"), &d.join("leaf.key"), "1.3");
    let answer = v.ask("connect");
    assert_ne!(
        answer["connack"], 0,
        "the sub-CA's vehicle got in: {answer}"
    );
    assert!(
        g.eventually(Duration::from_secs(5), |g| g.refused("handshake-failed")
            > before)
            .await,
        "the refusal was not counted"
    );
    // The fleet's own certificates still get in.
    let good = unique_vin();
    g.issue(&good);
    let (cert, key) = vehicle_files(&g, &good);
    assert_eq!(
        Resumer::start(&g, &cert, &key, "1.3").ask("connect")["connack"],
        0
    );
}

/// Keeps up to `target` TCP connections open to `addr` from `sources`, opening a new one
/// whenever the edge closes one, until `stop`. Returns how many it opened.
async fn flood(
    addr: SocketAddr,
    sources: Vec<IpAddr>,
    target: usize,
    stop: Arc<AtomicBool>,
) -> usize {
    let opened = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let per_task = target / sources.len();
    for source in sources {
        let (stop, opened) = (stop.clone(), opened.clone());
        tasks.push(tokio::spawn(async move {
            let mut held: Vec<tokio::net::TcpStream> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // Drop what the edge closed: an open connection has nothing to read.
                held.retain(|s| {
                    let mut buf = [0u8; 64];
                    matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                });
                while held.len() < per_task && !stop.load(Ordering::Relaxed) {
                    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                    socket.bind(SocketAddr::new(source, 0)).expect("bind");
                    match tokio::time::timeout(Duration::from_secs(1), socket.connect(addr)).await {
                        Ok(Ok(s)) => {
                            held.push(s);
                            opened.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => break,
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("flood task");
    }
    opened.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_connects_while_unauthenticated_connections_flood_the_edge() {
    const FD_LIMIT: u32 = 1024;
    let mut g = Gateway::start_with_fd_limit(&[], Some(FD_LIMIT)).await;
    let certs = Arc::new(VehicleCertificates::open(&g.pki).expect("fleet CA"));
    let addr = g.tls;
    let stop = Arc::new(AtomicBool::new(false));
    let sources: Vec<IpAddr> = (2..10)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect();
    let attack = tokio::spawn(flood(addr, sources, 2 * FD_LIMIT as usize, stop.clone()));
    // The vehicles come once the flood has filled the budget: the edge closes its
    // connections to make room.
    let evicted =
        |g: &Gateway| g.refused("too-many-handshakes") + g.refused("too-many-from-source");
    wait_until(
        "the flood fills the handshake budget",
        Duration::from_secs(30),
        || evicted(&g) > 0.0,
    )
    .await;
    let mut took = Vec::new();
    for _ in 0..8 {
        let (certs, vin) = (certs.clone(), unique_vin());
        let started = Instant::now();
        let connected = tokio::task::spawn_blocking(move || {
            let mut s = tls(&certs, addr, &vin);
            s.write_all(&connect(30, true)).expect("CONNECT");
            let mut ack = [0u8; 4];
            s.read_exact(&mut ack).map(|_| ack)
        })
        .await
        .expect("vehicle");
        let ack = connected.expect("CONNACK");
        assert_eq!((ack[0], ack[3]), (0x20, 0), "CONNACK {ack:?}");
        took.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let opened = attack.await.expect("flood");
    let evicted = evicted(&g);
    println!(
        "flood: {opened} connections opened from 8 addresses at a gateway limited to {FD_LIMIT} files, {evicted} closed to make room; the vehicle connected in {took:?}"
    );
    assert!(
        opened > FD_LIMIT as usize,
        "the flood did not reach the fd limit: {opened}"
    );
    assert!(evicted > 0.0, "no connection was closed to make room");
    assert!(
        took.iter().all(|t| *t <= Duration::from_secs(2)),
        "a vehicle took more than 2 s to connect: {took:?}"
    );
    assert!(g.alive(), "{}", g.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_packets_are_bounded_in_time_and_in_total() {
    let g = Gateway::start(&[("TELEGATE__MQTT__MAX_BUFFERED_BYTES", "1048576")]).await;
    let certs = Arc::new(VehicleCertificates::open(&g.pki).expect("fleet CA"));
    let addr = g.tls;

    // A PUBLISH dribbled in a byte at a time is not a sign of life: keep-alive 2 s, closed
    // 1.5 keep-alives after the last whole packet.
    let before = g.refused("keep-alive-timeout");
    let (c, vin) = (certs.clone(), unique_vin());
    let lasted = tokio::task::spawn_blocking(move || {
        let mut s = tls(&c, addr, &vin);
        s.write_all(&connect(2, true)).expect("CONNECT");
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).expect("CONNACK");
        let started = Instant::now();
        s.write_all(&[0x32, 100]).expect("header");
        s.sock
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        for _ in 0..20 {
            if s.write_all(&[0x00]).and_then(|()| s.flush()).is_err() {
                break;
            }
            match s.read(&mut buf) {
                Ok(0) => break,
                Err(e)
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                _ => {}
            }
        }
        started.elapsed()
    })
    .await
    .expect("dribbler");
    assert!(
        lasted < Duration::from_secs(6),
        "a dribbled packet kept the connection {lasted:?}"
    );
    assert!(
        g.eventually(Duration::from_secs(3), |g| g.refused("keep-alive-timeout")
            > before)
            .await
    );

    // A CONNECT announcing 200 KB is refused before it is read.
    let before = g.refused("packet-too-large");
    let c = certs.clone();
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = tls(&c, addr, &unique_vin());
        let _ = s.write_all(&[&[0x10][..], &remaining_length(200_000), &[0u8; 8192]].concat());
        tls_closed(&mut s, Duration::from_secs(3))
    })
    .await
    .expect("big CONNECT");
    assert!(closed, "a 200 KB CONNECT was waited for");
    assert!(g.refused("packet-too-large") > before);

    // Vehicles each holding most of a 200 KB publish: past 1 MiB in all, the one that needs
    // more is closed, while a vehicle with small frames goes on.
    let c = certs.clone();
    let held = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        for _ in 0..10 {
            let vin = unique_vin();
            let mut s = connected(&c, addr, &vin, true);
            let topic = format!("/tenants/{vin}/v1/status");
            let header = [
                &[0x32][..],
                &remaining_length(200_000),
                &string(topic.as_bytes()),
                &1u16.to_be_bytes(),
            ]
            .concat();
            let _ = s
                .write_all(&header)
                .and_then(|()| s.write_all(&vec![0u8; 160_000]));
            held.push(s);
        }
        held
    })
    .await
    .expect("holders");
    assert!(
        g.eventually(Duration::from_secs(5), |g| g.refused("buffer-budget")
            >= 1.0)
            .await,
        "1.6 MB of partial packets held within a 1 MiB budget"
    );
    let c = certs.clone();
    let acked = tokio::task::spawn_blocking(move || {
        let vin = unique_vin();
        let mut s = connected(&c, addr, &vin, true);
        let frame = format!(
            "{{\"vin\":\"{vin}\",\"seq\":\"1\",\"capturedAtMs\":\"{}\",\"status\":{{\"odometerKm\":1}}}}",
            now_ms()
        );
        s.write_all(&publish(&format!("/tenants/{vin}/v1/status"), 7, frame.as_bytes()))
            .expect("publish");
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).map(|_| ack)
    })
    .await
    .expect("vehicle");
    assert_eq!(acked.expect("PUBACK"), [0x40, 2, 0, 7]);
    drop(held);
}
