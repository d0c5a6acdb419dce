//! `telegate serve` with only its TLS listener, certificates from `telegate pki`, the
//! reference pack and a topic namespace of its own: the gateway the hostile-input tests attack.

// Each test file that includes this module uses part of it.
#![allow(dead_code)]

pub(crate) mod raw;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use telegate_tests::*;

pub(crate) struct Gateway {
    dir: tempfile::TempDir,
    pub(crate) pki: PathBuf,
    pub(crate) tls: SocketAddr,
    pub(crate) metrics: SocketAddr,
    pub(crate) ns: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn telegate_pki(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_telegate"))
        .arg("pki")
        .args(args)
        .output()
        .expect("the telegate binary runs");
    assert!(
        out.status.success(),
        "telegate pki: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Gateway {
    /// Starts the gateway with these settings (`TELEGATE__…` variables; `{pki}` in a value is
    /// the fleet's certificate directory, `TELEGATE_POLICY` replaces the reference pack) and
    /// waits until it is ready.
    pub(crate) async fn start(settings: &[(&str, &str)]) -> Self {
        Self::start_with_fd_limit(settings, None).await
    }

    /// [`Gateway::start`], the process limited to `fd_limit` open files when given (through
    /// util-linux's `prlimit`, which then runs the gateway in its own place).
    pub(crate) async fn start_with_fd_limit(
        settings: &[(&str, &str)],
        fd_limit: Option<u32>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = dir.path().join("fleet");
        telegate_pki(&["init", pki.to_str().expect("UTF-8 path")]);
        let (tls, metrics) = (free_addr(), free_addr());
        let ns = format!("h{:08x}.", rand::random::<u32>());
        let log = dir.path().join("serve.log");
        let file = |name: &str| pki.join(name).to_str().expect("UTF-8").to_owned();
        let pki_dir = pki.to_str().expect("UTF-8").to_owned();
        let settings: Vec<(&str, String)> = settings
            .iter()
            .map(|(k, v)| (*k, v.replace("{pki}", &pki_dir)))
            .collect();
        let policy = settings
            .iter()
            .find(|(k, _)| *k == "TELEGATE_POLICY")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| {
                concat!(env!("CARGO_MANIFEST_DIR"), "/../../packs/reference.toml").to_owned()
            });
        // Another build of the gateway can be measured with the same tests (docs/interop.md).
        let telegate: PathBuf = std::env::var_os("TELEGATE_TEST_SERVE")
            .map(PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_telegate").into());
        let mut command = match fd_limit {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(&telegate);
                c
            }
            None => Command::new(&telegate),
        };
        let child = command
            .arg("serve")
            .args(["--mqtt-tls-listen", &tls.to_string()])
            .args(["--mqtt-tls-cert", &file("server.crt")])
            .args(["--mqtt-tls-key", &file("server.key")])
            .args(["--mqtt-client-ca", &file("ca.crt")])
            .args(["--mqtt-client-crl", &file("crl.pem")])
            .args(["--metrics-listen", &metrics.to_string()])
            .arg("--key-file")
            .arg(key_file(dir.path()))
            .args(["--policy", &policy])
            .env("TELEGATE_KAFKA_BOOTSTRAP", kafka())
            .env("TELEGATE__KAFKA__TOPIC_NAMESPACE", &ns)
            .env("TELEGATE__KAFKA__LINGER_MS", "1")
            .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
            .env("TELEGATE_LOG", "info,librdkafka=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("telegate serve runs");
        let mut g = Self {
            dir,
            pki,
            tls,
            metrics,
            ns,
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(metrics, "/readyz").map(|(c, _)| c).unwrap_or(0) != 200 {
            assert!(
                Instant::now() < deadline && g.child.try_wait().expect("status").is_none(),
                "serve did not become ready: {}",
                g.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        g
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn key_file(&self) -> PathBuf {
        self.dir.path().join("keys.toml")
    }

    /// Whether the process still runs.
    pub(crate) fn alive(&mut self) -> bool {
        self.child.try_wait().expect("status").is_none()
    }

    /// The gateway's resident memory, and its peak, in KiB.
    pub(crate) fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Issues a vehicle certificate.
    pub(crate) fn issue(&self, vin: &str) {
        telegate_pki(&["issue", self.pki.to_str().expect("UTF-8"), vin]);
    }

    /// The sum of a metric's series whose labels contain `labels`.
    pub(crate) fn metric(&self, name: &str, labels: &str) -> f64 {
        let (_, body) = http_get(self.metrics, "/metrics").expect("/metrics");
        telegate_gateway::http::samples(&body, name)
            .into_iter()
            .filter(|(l, _)| l.contains(labels))
            .map(|(_, v)| v)
            .sum()
    }

    pub(crate) fn refused(&self, reason: &str) -> f64 {
        self.metric(
            "telegate_mqtt_refused_total",
            &format!("reason=\"{reason}\""),
        )
    }

    /// Waits up to `within` for `check` to hold.
    pub(crate) async fn eventually(
        &self,
        within: Duration,
        mut check: impl FnMut(&Self) -> bool,
    ) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if check(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
