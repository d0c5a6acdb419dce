//! Running one client program: a stack's own program, which takes the command line of
//! interop/README.md and writes its JSON events, or mosquitto_pub/mosquitto_sub, whose `-d`
//! output is translated here into the same events.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mqtt {
    V311,
    V5,
}

impl Mqtt {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Mqtt::V311 => "3.1.1",
            Mqtt::V5 => "5",
        }
    }

    fn contract(self) -> &'static str {
        match self {
            Mqtt::V311 => "3",
            Mqtt::V5 => "5",
        }
    }

    fn mosquitto(self) -> &'static str {
        match self {
            Mqtt::V311 => "mqttv311",
            Mqtt::V5 => "mqttv5",
        }
    }
}

/// How a stack is run.
#[derive(Clone, Debug)]
pub(crate) enum Program {
    /// A program with the contract's command line (target/interop/bin/NAME).
    Contract(PathBuf),
    /// mosquitto_pub/mosquitto_sub (libmosquitto), translated.
    Mosquitto,
}

/// Where a client connects and as whom.
#[derive(Clone, Debug)]
pub(crate) struct Vehicle {
    pub(crate) vin: String,
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// The contract's connection options.
#[derive(Clone, Debug)]
pub(crate) struct Opts {
    pub(crate) port: u16,
    pub(crate) with_cert: bool,
    pub(crate) keep_alive: Option<u64>,
    pub(crate) clean: bool,
    pub(crate) store: Option<PathBuf>,
    pub(crate) timeout: u64,
    pub(crate) reconnect: bool,
}

impl Opts {
    pub(crate) fn new(port: u16, timeout: u64) -> Self {
        Self {
            port,
            with_cert: true,
            keep_alive: None,
            clean: true,
            store: None,
            timeout,
            reconnect: true,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Action {
    Publish {
        file: PathBuf,
        topic: String,
        qos: u8,
    },
    Resume,
    Subscribe {
        filter: String,
        qos: u8,
    },
    Idle(u64),
}

/// What one run of a client did.
#[derive(Debug, Default)]
pub(crate) struct Run {
    pub(crate) events: Vec<Value>,
    /// The exit status; None when the test killed it.
    pub(crate) status: Option<i32>,
    /// Whether the action did what it asked, as the contract's exit status 0 says.
    pub(crate) ok: bool,
    pub(crate) killed: bool,
    pub(crate) elapsed: Duration,
    pub(crate) stderr_tail: Vec<String>,
}

impl Run {
    pub(crate) fn count(&self, event: &str) -> usize {
        self.events.iter().filter(|e| e["event"] == event).count()
    }

    pub(crate) fn connected(&self) -> usize {
        self.count("connected")
    }

    /// QoS 1 acknowledgements: the last `acked` count, or `done`'s.
    pub(crate) fn acked(&self) -> u64 {
        let last = self
            .events
            .iter()
            .filter(|e| e["event"] == "acked")
            .filter_map(|e| e["count"].as_u64())
            .max()
            .unwrap_or(0);
        let done = self
            .events
            .iter()
            .filter(|e| e["event"] == "done")
            .filter_map(|e| e["acked"].as_u64())
            .max()
            .unwrap_or(0);
        last.max(done)
    }

    /// The largest `count` of an event (`handed`, `acked`), None when there was none.
    pub(crate) fn last_count(&self, event: &str) -> Option<u64> {
        self.events
            .iter()
            .filter(|e| e["event"] == event)
            .filter_map(|e| e["count"].as_u64())
            .max()
    }

    pub(crate) fn suback(&self) -> Option<Vec<i64>> {
        self.events
            .iter()
            .find(|e| e["event"] == "suback")
            .map(|e| {
                e["codes"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_i64).collect())
                    .unwrap_or_default()
            })
    }

    /// One line for a failure message: how it ended and what it reported.
    pub(crate) fn summary(&self) -> String {
        let end = match (self.killed, self.status) {
            (true, _) => "killed".to_owned(),
            (false, Some(c)) => format!("exit {c}"),
            (false, None) => "ended by a signal".to_owned(),
        };
        let mut kinds: Vec<(String, usize)> = Vec::new();
        for e in &self.events {
            let k = e["event"].as_str().unwrap_or("?").to_owned();
            match kinds.iter_mut().find(|(n, _)| *n == k) {
                Some((_, n)) => *n += 1,
                None => kinds.push((k, 1)),
            }
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}×{n}")).collect();
        let reasons: Vec<String> = self
            .events
            .iter()
            .filter(|e| {
                matches!(
                    e["event"].as_str(),
                    Some("lost" | "connect_failed" | "error")
                )
            })
            .filter_map(|e| {
                e["reason"]
                    .as_str()
                    .or(e["message"].as_str())
                    .map(str::to_owned)
            })
            .take(2)
            .collect();
        let mut s = format!(
            "{end} after {:.1} s; events [{}]; acked {}",
            self.elapsed.as_secs_f64(),
            kinds.join(", "),
            self.acked()
        );
        if !reasons.is_empty() {
            s.push_str(&format!("; reasons {reasons:?}"));
        }
        if !self.ok && !self.stderr_tail.is_empty() {
            let tail: Vec<&str> = self
                .stderr_tail
                .iter()
                .rev()
                .take(2)
                .rev()
                .map(|l| l.as_str())
                .collect();
            s.push_str(&format!("; stderr …{}", tail.join(" | ")));
        }
        s
    }
}

/// Runs `action` with `program` and waits for it to end. `kill_when` sees every event and
/// kills the client with SIGKILL the first time it answers true.
pub(crate) fn run(
    program: &Program,
    mqtt: Mqtt,
    v: &Vehicle,
    o: &Opts,
    action: &Action,
    kill_when: Option<&dyn Fn(&Value) -> bool>,
) -> Run {
    match program {
        Program::Contract(path) => run_contract(path, mqtt, v, o, action, kill_when),
        Program::Mosquitto => run_mosquitto(mqtt, v, o, action),
    }
}

fn path(p: &std::path::Path) -> String {
    p.to_str().expect("UTF-8 path").to_owned()
}

fn run_contract(
    program: &PathBuf,
    mqtt: Mqtt,
    v: &Vehicle,
    o: &Opts,
    action: &Action,
    kill_when: Option<&dyn Fn(&Value) -> bool>,
) -> Run {
    let mut cmd = Command::new(program);
    cmd.args(["--host", "127.0.0.1", "--port", &o.port.to_string()])
        .args(["--ca", &path(&v.ca)])
        .args(["--client-id", &v.vin, "--mqtt", mqtt.contract()])
        .args(["--clean", &o.clean.to_string()])
        .args(["--timeout", &o.timeout.to_string()])
        .args(["--reconnect", &o.reconnect.to_string()]);
    if o.with_cert {
        cmd.args(["--cert", &path(&v.cert), "--key", &path(&v.key)]);
    }
    if let Some(k) = o.keep_alive {
        cmd.args(["--keep-alive", &k.to_string()]);
    }
    if let Some(s) = &o.store {
        cmd.args(["--store", &path(s)]);
    }
    match action {
        Action::Publish { file, topic, qos } => {
            cmd.args(["--publish", &path(file), "--topic", topic])
                .args(["--qos", &qos.to_string()]);
        }
        Action::Resume => {
            cmd.arg("--resume");
        }
        Action::Subscribe { filter, qos } => {
            cmd.args(["--subscribe", filter, "--qos", &qos.to_string()]);
        }
        Action::Idle(secs) => {
            cmd.args(["--idle", &secs.to_string()]);
        }
    }
    let mut parse = |line: &str, stderr: bool| -> Vec<Value> {
        if stderr {
            return Vec::new();
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v) if v.get("event").is_some() => vec![v],
            _ => vec![json!({"event": "error", "message": format!("not an event: {line}")})],
        }
    };
    let mut r = supervise(cmd, None, o.timeout, &mut parse, kill_when);
    r.ok = !r.killed && r.status == Some(0);
    r
}

/// Spawns `cmd` and collects its events until it ends, or kills it `timeout` + 20 s after
/// the start (a client that ignores its own --timeout must not hang the test).
fn supervise(
    mut cmd: Command,
    stdin: Option<PathBuf>,
    timeout: u64,
    parse: &mut dyn FnMut(&str, bool) -> Vec<Value>,
    kill_when: Option<&dyn Fn(&Value) -> bool>,
) -> Run {
    let started = Instant::now();
    let stdin = match stdin {
        Some(f) => Stdio::from(std::fs::File::open(f).expect("stdin file")),
        None => Stdio::null(),
    };
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    let (tx, rx) = mpsc::channel::<(bool, Option<String>)>();
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    for (is_err, pipe) in [
        (false, Box::new(out) as Box<dyn std::io::Read + Send>),
        (true, Box::new(err)),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send((is_err, Some(line)));
            }
            let _ = tx.send((is_err, None));
        });
    }
    drop(tx);
    let hard = started + Duration::from_secs(timeout + 20);
    let mut r = Run::default();
    let mut open = 2;
    while open > 0 {
        let left = hard.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((_, None)) => open -= 1,
            Ok((is_err, Some(line))) => {
                if is_err {
                    r.stderr_tail.push(line.clone());
                    if r.stderr_tail.len() > 20 {
                        r.stderr_tail.remove(0);
                    }
                }
                for e in parse(&line, is_err) {
                    let kill = !r.killed && kill_when.is_some_and(|k| k(&e));
                    r.events.push(e);
                    if kill {
                        let _ = child.kill();
                        r.killed = true;
                    }
                }
            }
            Err(_) => {
                let _ = child.kill();
                r.events.push(json!({"event": "error",
                    "message": format!("the test killed it {} s past its --timeout", 20)}));
                break;
            }
        }
    }
    let status = child.wait().expect("wait");
    r.status = status.code();
    r.elapsed = started.elapsed();
    r
}

/// mosquitto_pub/mosquitto_sub with the contract's meaning. mosquitto_pub has no automatic
/// reconnect and no persistence, and both take keep-alives of 5 s or more only.
fn run_mosquitto(mqtt: Mqtt, v: &Vehicle, o: &Opts, action: &Action) -> Run {
    let tool = match action {
        Action::Publish { .. } => "mosquitto_pub",
        Action::Subscribe { .. } | Action::Idle(_) => "mosquitto_sub",
        Action::Resume => panic!("mosquitto has no persistence to resume"),
    };
    let mut cmd = Command::new(tool);
    cmd.args(["-h", "127.0.0.1", "-p", &o.port.to_string()])
        .args(["--cafile", &path(&v.ca)])
        .args(["-i", &v.vin, "-V", mqtt.mosquitto(), "-d"]);
    if o.with_cert {
        cmd.args(["--cert", &path(&v.cert), "--key", &path(&v.key)]);
    }
    if let Some(k) = o.keep_alive {
        cmd.args(["-k", &k.max(5).to_string()]);
    }
    if !o.clean {
        cmd.arg("-c");
    }
    let mut stdin = None;
    let mut lines = 0u64;
    let mut publish_qos = 0;
    match action {
        Action::Publish { file, topic, qos } => {
            lines = std::fs::read_to_string(file)
                .expect("frames")
                .lines()
                .count() as u64;
            publish_qos = *qos;
            cmd.args(["-t", topic, "-q", &qos.to_string(), "-l"]);
            stdin = Some(file.clone());
        }
        Action::Subscribe { filter, qos } => {
            cmd.args(["-t", filter, "-q", &qos.to_string(), "-E"])
                .args(["-W", &o.timeout.to_string()]);
        }
        Action::Idle(secs) => {
            let own = format!("/tenants/{}/v1/request", v.vin);
            cmd.args(["-t", &own, "-W", &secs.to_string()]);
        }
        Action::Resume => unreachable!(),
    }
    let mut st = MosquittoState::default();
    let mut parse = |line: &str, stderr: bool| st.translate(line, stderr);
    let mut r = supervise(cmd, stdin, o.timeout, &mut parse, None);
    let published = if publish_qos == 1 {
        r.count("acked") as u64
    } else {
        r.events.iter().filter(|e| e["event"] == "written").count() as u64
    };
    let (connected, lost) = (r.connected(), r.count("lost"));
    r.ok = match action {
        Action::Publish { .. } => published == lines && r.status == Some(0),
        Action::Subscribe { .. } => r
            .suback()
            .is_some_and(|c| !c.is_empty() && c.iter().all(|&c| c < 0x80)),
        // -W ends mosquitto_sub with status 27 once the time is up.
        Action::Idle(secs) => {
            connected == 1 && lost == 0 && r.elapsed >= Duration::from_secs(*secs)
        }
        Action::Resume => unreachable!(),
    };
    r.events.retain(|e| e["event"] != "written");
    r.events
        .push(json!({"event": "done", "published": lines, "acked": r.acked()}));
    r
}

#[derive(Default)]
struct MosquittoState {
    up: bool,
    acked: u64,
    connects: u32,
}

impl MosquittoState {
    fn translate(&mut self, line: &str, stderr: bool) -> Vec<Value> {
        let number_after = |s: &str, key: &str| -> Option<i64> {
            let rest = &s[s.find(key)? + key.len()..];
            let digits: String = rest
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        };
        if stderr || line.starts_with("Error") || line.starts_with("OpenSSL Error") {
            // What mosquitto_sub says when -W ends it, or after a SUBACK that refused.
            let benign = ["Timed out", "All subscription requests were denied"];
            if line.trim().is_empty() || benign.iter().any(|b| line.starts_with(b)) {
                return Vec::new();
            }
            let was_up = std::mem::replace(&mut self.up, false);
            let event = if was_up { "lost" } else { "connect_failed" };
            return vec![json!({"event": event, "reason": line})];
        }
        if line.contains(" sending CONNECT") {
            self.connects += 1;
            // A second CONNECT without an error line: the connection before it went down.
            if self.up {
                self.up = false;
                return vec![json!({"event": "lost", "reason": "reconnecting"})];
            }
        } else if line.contains(" received CONNACK (") {
            let code = number_after(line, "CONNACK (").unwrap_or(-1);
            if code == 0 {
                self.up = true;
                return vec![json!({"event": "connected", "session_present": false})];
            }
            return vec![json!({"event": "connect_failed", "reason": format!("CONNACK {code}")})];
        } else if line.contains(" received PUBACK (") {
            let rc = number_after(line, "RC:").unwrap_or(0);
            if rc < 0x80 {
                self.acked += 1;
                return vec![json!({"event": "acked", "count": self.acked})];
            }
            return vec![json!({"event": "error", "message": format!("PUBACK reason {rc}")})];
        } else if line.contains(" sending PUBLISH (") && line.contains("q0,") {
            return vec![json!({"event": "written"})];
        } else if let Some(rest) = line.strip_prefix("Subscribed (mid: ") {
            let codes: Vec<i64> = rest
                .split_once("): ")
                .map(|(_, c)| c.split(',').filter_map(|x| x.trim().parse().ok()).collect())
                .unwrap_or_default();
            return vec![json!({"event": "suback", "codes": codes})];
        }
        Vec::new()
    }
}
