//! MQTT client interoperability: every client stack of interop/README.md (Paho Java, Paho Go,
//! MQTT.js, paho-mqtt for Python, each built by `interop/build` into target/interop/bin/)
//! and the mosquitto command-line clients, against `telegate serve` with only its TLS
//! listener, vehicle certificates from `telegate pki`, and Apache Kafka. Each stack runs in
//! MQTT 3.1.1 and 5 where it has them, with a vehicle of its own, all stacks at once; every
//! check is judged by what the client reported and by what reached Kafka, and the test fails
//! at the end with one table of every stack × check. docs/interop.md has the matrix as
//! measured and what each check proves.

#[path = "interop/clients.rs"]
mod clients;
#[path = "interop/frames.rs"]
mod frames;
#[path = "interop/matrix.rs"]
mod matrix;
#[path = "interop/proxy.rs"]
mod proxy;
#[path = "interop/records.rs"]
mod records;
mod tls_gateway;

use clients::{Action, Mqtt, Opts, Program, Run, Vehicle};
use frames::{frame, frame_of_packet_size, status_topic, write_lines};
use matrix::{CHECKS, Check, Outcome};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use telegate_tests::*;
use tls_gateway::Gateway;

/// The gateway's limits in this test: `mqtt.max_packet_bytes` (the whole packet) and
/// `mqtt.max_inflight` (the MQTT 5 receive maximum), set small so that the stacks' default
/// windows (Paho 10 to 65535, MQTT.js unbounded, paho-mqtt 20) overrun it.
const MAX_PACKET: usize = 8192;
const RECEIVE_MAXIMUM: u16 = 16;
/// Frames in a burst: far above the receive maximum.
const BURST: u64 = 200;
/// Bytes from the client after which the proxy cuts the link: the TLS handshake with the
/// client certificate (~2.5 KB) and some 50 publishes of a 200-frame burst.
const CUT_AFTER: u64 = 15_000;

struct Stack {
    name: &'static str,
    versions: &'static [Mqtt],
    /// The library reconnects and resends by itself.
    reconnects: bool,
    /// The library persists unacknowledged publishes on disk (--store).
    store: bool,
}

const STACKS: &[Stack] = &[
    Stack {
        name: "paho-java",
        versions: &[Mqtt::V311, Mqtt::V5],
        reconnects: true,
        store: true,
    },
    Stack {
        name: "paho-go",
        versions: &[Mqtt::V311],
        reconnects: true,
        store: true,
    },
    Stack {
        name: "mqttjs",
        versions: &[Mqtt::V311, Mqtt::V5],
        reconnects: true,
        store: false,
    },
    Stack {
        name: "paho-python",
        versions: &[Mqtt::V311, Mqtt::V5],
        reconnects: true,
        store: false,
    },
    Stack {
        name: "mosquitto",
        versions: &[Mqtt::V311, Mqtt::V5],
        reconnects: false,
        store: false,
    },
];

/// A stack and version with its vehicle.
struct Cell {
    stack: &'static Stack,
    mqtt: Mqtt,
    index: usize,
    program: Option<Program>,
    vehicle: Vehicle,
    /// Another vehicle's VIN: it never connects; this cell tries to act as it.
    victim: String,
    dir: PathBuf,
}

impl Cell {
    fn label(&self) -> String {
        format!("{} {}", self.stack.name, self.mqtt.label())
    }

    fn run(&self, o: &Opts, a: &Action) -> Run {
        self.run_killing(o, a, None)
    }

    fn run_killing(&self, o: &Opts, a: &Action, kill: Option<&dyn Fn(&Value) -> bool>) -> Run {
        let program = self.program.as_ref().expect("a program");
        clients::run(program, self.mqtt, &self.vehicle, o, a, kill)
    }

    fn frames(
        &self,
        check: Check,
        name: &str,
        vin: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> (PathBuf, Vec<u64>) {
        let seqs: Vec<u64> = range.map(|i| check.seq(self.index, i)).collect();
        let lines: Vec<String> = seqs.iter().map(|s| frame(vin, *s)).collect();
        (write_lines(&self.dir, name, &lines), seqs)
    }

    fn publish(&self, file: &Path, topic: String, qos: u8) -> Action {
        Action::Publish {
            file: file.to_owned(),
            topic,
            qos,
        }
    }

    /// Runs every check in turn; `tls` is the gateway's listener.
    fn checks(&self, tls: SocketAddr, rt: &tokio::runtime::Handle) -> Vec<Outcome> {
        let port = tls.port();
        let own = status_topic(&self.vehicle.vin);
        let vin = self.vehicle.vin.clone();
        let mut out = Vec::new();
        for check in CHECKS {
            let started = Instant::now();
            let mut o = Outcome::new(check);
            match check {
                Check::Connect => {
                    let r = self.run(&Opts::new(port, 15), &Action::Idle(1));
                    o.expect(r.ok && r.connected() == 1, || r.summary());
                }
                Check::NoCert => {
                    let (file, seqs) = self.frames(check, "nocert", &vin, 1..=3);
                    let opts = Opts {
                        with_cert: false,
                        reconnect: false,
                        ..Opts::new(port, 8)
                    };
                    let r = self.run(&opts, &self.publish(&file, own.clone(), 1));
                    o.expect(r.connected() == 0 && !r.ok, || {
                        format!("connected without a certificate: {}", r.summary())
                    });
                    o.absent = seqs;
                }
                Check::Qos0 | Check::Qos1 => {
                    let qos = u8::from(check == Check::Qos1);
                    let (file, seqs) = self.frames(check, check.label(), &vin, 1..=20);
                    let r = self.run(&Opts::new(port, 20), &self.publish(&file, own.clone(), qos));
                    o.context.push(r.summary());
                    o.expect(r.ok, || r.summary());
                    if qos == 1 {
                        o.expect(r.acked() == 20, || format!("{} of 20 acked", r.acked()));
                    }
                    o.present = seqs;
                }
                Check::OtherVin => {
                    // Frames of the other vehicle, on its topic: refused at the edge.
                    let (file, forged) = self.frames(check, "forged", &self.victim, 1..=5);
                    let r = self.run(
                        &Opts::new(port, 10),
                        &self.publish(&file, status_topic(&self.victim), 1),
                    );
                    o.expect(r.connected() <= 2, || {
                        format!(
                            "a reconnect loop: connected {} times in {:.0} s ({})",
                            r.connected(),
                            r.elapsed.as_secs_f64(),
                            r.summary()
                        )
                    });
                    o.expect(r.connected() >= 1, || {
                        format!("never connected: {}", r.summary())
                    });
                    o.absent = forged;
                    // The vehicle's own frames still flow afterwards.
                    let (file, seqs) = self.frames(check, "after-forged", &vin, 11..=15);
                    let r = self.run(&Opts::new(port, 20), &self.publish(&file, own.clone(), 1));
                    o.expect(r.ok && r.acked() == 5, || {
                        format!("own frames afterwards: {}", r.summary())
                    });
                    o.present = seqs;
                }
                Check::Subscribe => {
                    let request = format!("/tenants/{vin}/v1/request");
                    let r = self.run(
                        &Opts::new(port, 15),
                        &Action::Subscribe {
                            filter: request,
                            qos: 1,
                        },
                    );
                    let granted = r
                        .suback()
                        .is_some_and(|c| !c.is_empty() && c.iter().all(|&c| c < 0x80));
                    o.expect(r.ok && granted, || {
                        format!(
                            "own request topic: {}; suback {:?}",
                            r.summary(),
                            r.suback()
                        )
                    });
                    let other = format!("/tenants/{}/v1/request", self.victim);
                    let r = self.run(
                        &Opts::new(port, 15),
                        &Action::Subscribe {
                            filter: other,
                            qos: 1,
                        },
                    );
                    let refused = r
                        .suback()
                        .is_some_and(|c| !c.is_empty() && c.iter().all(|&c| c >= 0x80));
                    o.expect(refused && !r.ok, || {
                        format!(
                            "another vehicle's request topic: {}; suback {:?}",
                            r.summary(),
                            r.suback()
                        )
                    });
                }
                Check::KeepAlive => {
                    // mosquitto's clients take keep-alives of 5 s or more only.
                    let (keep, idle) = match self.program {
                        Some(Program::Mosquitto) => (5, 10),
                        _ => (2, 6),
                    };
                    let opts = Opts {
                        keep_alive: Some(keep),
                        ..Opts::new(port, idle + 10)
                    };
                    let r = self.run(&opts, &Action::Idle(idle));
                    o.expect(
                        r.ok && r.connected() == 1
                            && r.count("lost") == 0
                            && r.elapsed >= Duration::from_secs(idle),
                        || r.summary(),
                    );
                }
                Check::Oversize => {
                    let opts = Opts {
                        reconnect: false,
                        ..Opts::new(port, 10)
                    };
                    // A PUBLISH of exactly the limit passes.
                    let at = check.seq(self.index, 1);
                    let f = frame_of_packet_size(&vin, at, &own, self.mqtt, MAX_PACKET);
                    let file = write_lines(&self.dir, "at-limit", &[f]);
                    let r = self.run(&opts, &self.publish(&file, own.clone(), 1));
                    o.expect(r.ok && r.acked() == 1, || {
                        format!("a packet of exactly {MAX_PACKET} bytes: {}", r.summary())
                    });
                    o.present = vec![at];
                    // One byte more is refused, however the client learns it (MQTT 5: it may
                    // refuse by itself, the CONNACK says the maximum).
                    let over = check.seq(self.index, 2);
                    let f = frame_of_packet_size(&vin, over, &own, self.mqtt, MAX_PACKET + 1);
                    let file = write_lines(&self.dir, "over-limit", &[f]);
                    let r = self.run(&opts, &self.publish(&file, own.clone(), 1));
                    o.expect(!r.ok && r.acked() == 0, || {
                        format!(
                            "a packet of {} bytes was acknowledged: {}",
                            MAX_PACKET + 1,
                            r.summary()
                        )
                    });
                    o.absent = vec![over];
                }
                Check::Burst => {
                    let (file, seqs) = self.frames(check, "burst", &vin, 1..=BURST);
                    let r = self.run(&Opts::new(port, 60), &self.publish(&file, own.clone(), 1));
                    o.context.push(r.summary());
                    o.expect(r.ok && r.acked() == BURST, || r.summary());
                    o.expect(r.connected() == 1, || {
                        format!(
                            "{} reconnects: {}",
                            r.connected().saturating_sub(1),
                            r.summary()
                        )
                    });
                    o.present = seqs;
                }
                Check::Drop if !self.stack.reconnects => {
                    o.not_applicable = Some("mosquitto_pub does not reconnect");
                }
                Check::Drop => {
                    let (file, seqs) = self.frames(check, "drop", &vin, 1..=BURST);
                    let proxy = proxy::CutProxy::start(rt, tls, CUT_AFTER);
                    let opts = Opts {
                        clean: false,
                        ..Opts::new(proxy.port, 60)
                    };
                    let r = self.run(&opts, &self.publish(&file, own.clone(), 1));
                    o.context.push(r.summary());
                    o.expect(proxy.did_cut(), || {
                        format!(
                            "the link was never cut (fewer than {CUT_AFTER} bytes sent): {}",
                            r.summary()
                        )
                    });
                    o.expect(r.ok && r.acked() == BURST, || r.summary());
                    o.expect(r.connected() <= 2, || {
                        format!(
                            "{} reconnects for one cut: {}",
                            r.connected().saturating_sub(1),
                            r.summary()
                        )
                    });
                    o.present = seqs;
                }
                Check::Kill9 if !self.stack.store => {
                    o.not_applicable = Some("no on-disk persistence");
                }
                Check::Kill9 => {
                    let (file, seqs) = self.frames(check, "kill", &vin, 1..=BURST);
                    let store = self.dir.join("store");
                    std::fs::create_dir_all(&store).expect("store dir");
                    let opts = Opts {
                        clean: false,
                        store: Some(store),
                        ..Opts::new(port, 60)
                    };
                    let mid_burst =
                        |e: &Value| e["event"] == "acked" && e["count"].as_u64() >= Some(BURST / 5);
                    let r = self.run_killing(
                        &opts,
                        &self.publish(&file, own.clone(), 1),
                        Some(&mid_burst),
                    );
                    o.expect(r.killed, || {
                        format!("it ended before the kill: {}", r.summary())
                    });
                    // The frames the library had taken when the process died: the first
                    // `handed` of the file (they are handed in order). Those it must send
                    // again from its store; the frames never handed to it existed only in the
                    // killed program, and must not appear from anywhere.
                    let handed = (r.last_count("handed").unwrap_or(0) as usize).min(seqs.len());
                    o.expect(handed as u64 >= r.acked(), || {
                        format!(
                            "{} acknowledged but only {handed} handed to the library: {}",
                            r.acked(),
                            r.summary()
                        )
                    });
                    o.context.push(format!(
                        "killed with {handed} of {BURST} handed to the library: {}",
                        r.summary()
                    ));
                    let r = self.run(&opts, &Action::Resume);
                    o.context.push(format!("--resume: {}", r.summary()));
                    o.expect(r.ok, || format!("--resume: {}", r.summary()));
                    o.present = seqs[..handed].to_vec();
                    // The frame being handed at the kill: the library may have stored it or
                    // not before the process died (its "handed" was not yet printed). Once at
                    // most.
                    o.at_most_once = seqs[handed..(handed + 1).min(seqs.len())].to_vec();
                    o.absent = seqs[(handed + 1).min(seqs.len())..].to_vec();
                }
            }
            o.took = started.elapsed();
            println!(
                "[{}] {}: {} in {:.1} s",
                self.label(),
                check.label(),
                if o.problems.is_empty() {
                    "done"
                } else {
                    "PROBLEM"
                },
                o.took.as_secs_f64()
            );
            // What the client did when a connection was cut or the process killed: for the
            // matrix in docs/interop.md, whatever the outcome.
            if matches!(check, Check::Drop | Check::Kill9) {
                for c in &o.context {
                    println!("[{}] {}:   {c}", self.label(), check.label());
                }
            }
            out.push(o);
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_stack_against_the_closed_edge() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tmp");
    let (max_packet, max_payload, window) = (
        MAX_PACKET.to_string(),
        (MAX_PACKET - 1).to_string(),
        RECEIVE_MAXIMUM.to_string(),
    );
    let serve = Gateway::start(&[
        ("TELEGATE__MQTT__MAX_PACKET_BYTES", &max_packet),
        ("TELEGATE__VALIDATION__MAX_PAYLOAD_BYTES", &max_payload),
        ("TELEGATE__MQTT__MAX_INFLIGHT", &window),
    ])
    .await;
    println!(
        "telegate serve ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let pki_dir = serve.pki.clone();

    let bin = interop_bin();
    let mut missing = Vec::new();
    let mut cells = Vec::new();
    for stack in STACKS {
        let program = if stack.name == "mosquitto" {
            Some(Program::Mosquitto)
        } else {
            let path = bin.join(stack.name);
            path.is_file()
                .then(|| Program::Contract(path.clone()))
                .or_else(|| {
                    missing.push(format!(
                        "{} (run interop/build: {} is missing)",
                        stack.name,
                        path.display()
                    ));
                    None
                })
        };
        for &mqtt in stack.versions {
            let vin = unique_vin();
            serve.issue(&vin);
            let base = pki_dir.join("vehicles").join(&vin);
            let index = cells.len();
            let cell_dir = dir.path().join(format!("cell-{index}"));
            std::fs::create_dir_all(&cell_dir).expect("cell dir");
            cells.push(Cell {
                stack,
                mqtt,
                index,
                program: program.clone(),
                vehicle: Vehicle {
                    vin,
                    ca: pki_dir.join("ca.crt"),
                    cert: base.with_extension("crt"),
                    key: base.with_extension("key"),
                },
                victim: unique_vin(),
                dir: cell_dir,
            });
        }
    }

    let (tls, ns) = (serve.tls, serve.ns.clone());

    // Every stack and version at once, each in its own thread: the clients are processes.
    let rt = tokio::runtime::Handle::current();
    let mut tasks = Vec::new();
    for cell in cells {
        let rt = rt.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            let outcomes = if cell.program.is_some() {
                cell.checks(tls, &rt)
            } else {
                Vec::new()
            };
            (cell, outcomes)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("a cell's thread"));
    }
    println!(
        "clients done after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Frames handed over without an acknowledgement (QoS 0, a cut link) settle first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let topics = vec![
        format!("{ns}telegate.smart-service"),
        format!("{ns}telegate.trip-log"),
    ];
    let counts = records::seq_counts(&topics).await;
    for (_, outcomes) in &mut results {
        for o in outcomes.iter_mut() {
            if let Some(p) = records::judge(&counts, &topics, &o.present, 1) {
                o.problems.push(format!("Kafka: {p}"));
            }
            if let Some(p) = records::judge(&counts, &topics, &o.absent, 0) {
                o.problems.push(format!("Kafka: {p}"));
            }
            if let Some(p) = records::judge_at_most_once(&counts, &topics, &o.at_most_once) {
                o.problems.push(format!("Kafka: {p}"));
            }
        }
    }
    drop(serve);

    let labelled: Vec<(String, Vec<Outcome>)> = results
        .into_iter()
        .map(|(cell, o)| (cell.label(), o))
        .collect();
    let report = matrix::report(&labelled, &missing);
    println!("{report}");
    println!("interop test took {:.1} s", started.elapsed().as_secs_f64());
    let failed = labelled
        .iter()
        .flat_map(|(_, o)| o)
        .any(|o| !o.problems.is_empty());
    assert!(!failed && missing.is_empty(), "{report}");
}

/// Where `interop/build` put the client programs.
fn interop_bin() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("interop/bin")
}
