//! How fast the console's pages answer with a fleet in the consent state: a measurement for
//! docs/performance.md, not a check of the suite (it writes a state record and a ledger entry
//! per vehicle to Apache Kafka first), so it is ignored unless asked for:
//!
//! ```sh
//! TELEGATE_TEST_KAFKA=127.0.0.1:PORT TELEGATE_CONSOLE_VEHICLES=100000 \
//!   cargo test --release -p telegate-tests --test console_latency -- --ignored --nocapture
//! ```
//!
//! Each vehicle gets what a real one has after its first frames (key material, a privacy
//! setting, a standing consent) and a ledger entry, written through the gateway's own store
//! and ledger. Then one operator signs in and asks for each page `REQUESTS` times in turn, a
//! new connection per request, vehicles opened at random; the time from connecting to the last
//! byte of each answer is printed per page (50th and 95th percentile, maximum).

use futures::StreamExt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use telegate_frame::{Vin, pb};
use telegate_gateway::config::{Operator, Role};
use telegate_gateway::ledger::{Action, Change, Channel};
use telegate_gateway::{Gateway, PackSource};
use telegate_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "a-token-for-the-latency-measurement";
const REQUESTS: usize = 300;

/// One HTTP/1.1 request on a new connection: (status, headers and body, time to the last byte).
async fn request(addr: SocketAddr, head: &str, body: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.expect("read");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text, took)
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer.lines().find_map(|l| {
        let (k, v) = l.split_once(": ")?;
        k.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

fn summary(page: &str, mut times: Vec<Duration>) {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "{page:<28} p50 {:>7.2?}  p95 {:>7.2?}  max {:>7.2?}  ({} requests)",
        at(0.50),
        at(0.95),
        times[times.len() - 1],
        times.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement that writes a record per vehicle to Kafka first; see the file's doc"]
async fn console_pages_with_a_fleet_in_the_consent_state() {
    let vehicles: usize = std::env::var("TELEGATE_CONSOLE_VEHICLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tmp");
    let ns = format!("c{:08x}.", rand::random::<u32>());
    let mut config = gateway_config("kia-connect", &ns, dir.path());
    config.kafka.partitions = 6;
    config.console.listen = Some(free_addr());
    config.console.operators = vec![Operator::with_token("dpo-anna", Role::Officer, TOKEN)];
    let gw = Gateway::start(&config, PackSource::Config)
        .await
        .expect("gateway starts");
    let addr = gw.console_addr().expect("console");
    let (store, ledger) = (gw.state(), gw.ledger());
    let settings = &pb::PrivacySettings {
        location_services: true,
        non_location_services: true,
        services: [("gis".to_owned(), true)].into(),
        ..Default::default()
    };
    let started = Instant::now();
    let vins: Vec<Vin> = (0..vehicles)
        .map(|_| Vin::parse(&unique_vin()).expect("VIN"))
        .collect();
    futures::stream::iter(vins.iter())
        .for_each_concurrent(2_000, |vin| async move {
            let at = now_ms() - 60_000;
            store
                .update(*vin, |r| {
                    r.record_settings(at, settings);
                    r.consents
                        .entry("product-improvement".into())
                        .or_default()
                        .set(at, true);
                })
                .await
                .expect("state");
            let change = Change {
                action: Action::Consent,
                target: "product-improvement",
                value: serde_json::json!(true),
                effective_at_ms: at,
                channel: Channel::App,
                text_version: "2026-11",
                actor: "data-subject",
                reason: "",
            };
            ledger.append(vin, change).await.expect("ledger");
        })
        .await;
    println!(
        "{vehicles} vehicles written in {:.1?}; {} in the consent state",
        started.elapsed(),
        store.len()
    );

    let (status, answer, _) =
        request(addr, "POST /sign-in HTTP/1.1", &format!("token={TOKEN}")).await;
    assert_eq!(status, 303, "{answer}");
    let cookie = header(&answer, "set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let (_, home, _) = request(addr, &format!("GET / HTTP/1.1\r\nCookie: {cookie}"), "").await;
    let csrf = home
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("csrf")
        .to_owned();
    let get = |path: String| {
        let cookie = cookie.clone();
        async move {
            let (status, answer, took) = request(
                addr,
                &format!("GET {path} HTTP/1.1\r\nCookie: {cookie}"),
                "",
            )
            .await;
            assert_eq!(status, 200, "GET {path}: {answer}");
            took
        }
    };
    let (mut home, mut open, mut vehicle, mut policy, mut verdicts, mut flows) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for i in 0..REQUESTS {
        home.push(get("/".into()).await);
        let vin = &vins[rand::random_range(0..vins.len())];
        let (status, answer, took) = request(
            addr,
            &format!("POST /vehicles HTTP/1.1\r\nCookie: {cookie}"),
            &format!("csrf={csrf}&vin={}", vin.expose()),
        )
        .await;
        assert_eq!(status, 303, "{answer}");
        open.push(took);
        let page = header(&answer, "location").expect("handle").to_owned();
        vehicle.push(get(page).await);
        policy.push(get("/policy".into()).await);
        let kind = ["status", "location", "diagnostics", "charging"][i % 4];
        verdicts.push(
            get(format!(
                "/policy?kind={kind}&location_services=on&non_location_services=on&service_gis=on&consent_product-improvement=on"
            ))
            .await,
        );
        flows.push(get("/flows".into()).await);
    }
    // An export reads the ledger and every purpose's topic: an occasional answer, timed apart.
    let mut export = vec![];
    for _ in 0..10 {
        let vin = &vins[rand::random_range(0..vins.len())];
        let (_, answer, _) = request(
            addr,
            &format!("POST /vehicles HTTP/1.1\r\nCookie: {cookie}"),
            &format!("csrf={csrf}&vin={}", vin.expose()),
        )
        .await;
        let page = header(&answer, "location").expect("handle").to_owned();
        let (status, answer, took) = request(
            addr,
            &format!("POST {page}/export HTTP/1.1\r\nCookie: {cookie}"),
            &format!("csrf={csrf}&format=json&reason=MEASUREMENT"),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        export.push(took);
    }
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    println!(
        "console pages, {vehicles} vehicles in the consent state (resident memory {} MiB):",
        rss / 1024
    );
    summary("GET / (open a vehicle)", home);
    summary("POST /vehicles (open)", open);
    summary("GET /vehicles/{handle}", vehicle);
    summary("GET /policy", policy);
    summary("GET /policy?kind=… (verdicts)", verdicts);
    summary("GET /flows", flows);
    summary("POST …/export (JSON)", export);
    gw.shutdown().await;
}
