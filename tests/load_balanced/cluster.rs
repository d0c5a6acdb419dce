//! The processes of the load-balanced test: gateways (this test binary run again as its
//! ignored `gateway_process` test) and HAProxy in front of them, and the gateways' admin API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use telegate_admin_proto::AdminClient;
use telegate_admin_proto::pb::{self as apb, Origin};
use telegate_gateway::Config;
use telegate_tests::*;
use tonic::transport::Channel;

/// The variable that makes this test binary a gateway (see `gateway_process`).
const TOKEN: &str = "lb-admin-token-0123456789";

/// A gateway in a child process, killed with SIGKILL when dropped.
pub(crate) struct Instance {
    child: Child,
    pub(crate) mqtt: SocketAddr,
    pub(crate) mqtt5: SocketAddr,
    pub(crate) metrics: SocketAddr,
    admin: SocketAddr,
}

impl Instance {
    /// Starts the gateway of `config` and returns once it is ready.
    pub(crate) fn start(config: Config, dir: &Path, name: &str) -> Self {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec(&config).expect("JSON")).expect("write");
        let log = dir.join(format!("{name}.log"));
        let child = spawn_gateway_process(&path, &log);
        Self {
            child,
            mqtt: config.mqtt.listen.expect("mqtt"),
            mqtt5: config.mqtt.listen_v5.expect("mqtt5"),
            metrics: config.metrics_listen.expect("metrics"),
            admin: config.admin.listen.expect("admin"),
        }
    }

    /// The value of a series on its `/metrics` (0 when absent).
    fn metric(&self, name: &str, labels: &str) -> f64 {
        let (_, text) = http_get(self.metrics, "/metrics").expect("/metrics answers");
        telegate_gateway::http::samples(&text, name)
            .into_iter()
            .find(|(l, _)| *l == labels)
            .map_or(0.0, |(_, v)| v)
    }

    pub(crate) fn connections(&self) -> u64 {
        self.metric("telegate_mqtt_connections_open", "") as u64
    }

    pub(crate) fn requests(&self, result: &str) -> u64 {
        self.metric(
            "telegate_vehicle_requests_total",
            &format!("result=\"{result}\""),
        ) as u64
    }

    /// SIGKILL: no shutdown, no flush, no last PUBACK.
    pub(crate) fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway's settings: its own ports, the shared namespace, key file and pack.
pub(crate) fn settings(ns: &str, dir: &Path) -> Config {
    let mut s = gateway_config("loadgen", ns, dir);
    s.policy = Some(dir.join("pack.toml"));
    s.mqtt.listen_v5 = Some(free_addr());
    s.metrics_listen = Some(free_addr());
    s.admin.listen = Some(free_addr());
    s.admin.token = Some(TOKEN.to_owned());
    s.kafka.linger_ms = 5;
    s
}

/// HAProxy in front of the instances, TCP mode, one frontend per plain MQTT listener; each
/// server is checked on its gateway's `/readyz`. Killed when dropped.
pub(crate) struct Haproxy {
    child: Child,
    pub(crate) mqtt: SocketAddr,
    pub(crate) mqtt5: SocketAddr,
    /// Its stats socket (`show stat`).
    socket: PathBuf,
}

impl Haproxy {
    pub(crate) fn start(dir: &Path, gateways: &[&Instance]) -> Self {
        let (mqtt, mqtt5) = (free_addr(), free_addr());
        let socket = dir.join("haproxy.sock");
        let servers = |port: fn(&Instance) -> SocketAddr| {
            gateways
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    format!(
                        "    server gw{i} {} check port {}\n",
                        port(g),
                        g.metrics.port()
                    )
                })
                .collect::<String>()
        };
        let backend = "    balance leastconn\n    option httpchk\n    \
                       http-check send meth GET uri /readyz\n    \
                       default-server inter 300ms fall 2 rise 2\n";
        let config = format!(
            "global\n    maxconn 4096\n    stats socket {}\n\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 5m\n    \
             timeout server 5m\n    timeout check 1s\n    retries 3\n    option redispatch 1\n\n\
             frontend mqtt\n    bind {mqtt}\n    default_backend gateways-mqtt\n\n\
             frontend mqtt5\n    bind {mqtt5}\n    default_backend gateways-mqtt5\n\n\
             backend gateways-mqtt\n{backend}{}\n\
             backend gateways-mqtt5\n{backend}{}",
            socket.display(),
            servers(|g| g.mqtt),
            servers(|g| g.mqtt5),
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new(haproxy_binary())
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).expect("log"))
            .spawn()
            .expect("haproxy starts (scripts/test installs it: apt-get install haproxy)");
        let mut lb = Self {
            child,
            mqtt,
            mqtt5,
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while lb.servers_up() != 2 * gateways.len() {
            let exited = lb.child.try_wait().ok().flatten();
            assert!(
                Instant::now() < deadline && exited.is_none(),
                "HAProxy's servers not up within 15 s ({exited:?}): {}",
                std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        lb
    }

    /// Each server's status as HAProxy's health checks have it (`UP`, `DOWN`, `UP 1/2` on the
    /// way down, …), per backend: (server, status).
    fn statuses(&self) -> Vec<(String, String)> {
        use std::io::{Read, Write};
        let mut csv = String::new();
        let asked = std::os::unix::net::UnixStream::connect(&self.socket).and_then(|mut s| {
            s.write_all(b"show stat\n")?;
            s.read_to_string(&mut csv)
        });
        if asked.is_err() {
            return Vec::new();
        }
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(sv), Some(status)) = (col("svname"), col("status")) else {
            return Vec::new();
        };
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter_map(|f| Some((f.get(sv)?.to_string(), f.get(status)?.to_string())))
            .filter(|(server, _)| server.starts_with("gw"))
            .collect()
    }

    pub(crate) fn servers_up(&self) -> usize {
        self.statuses().iter().filter(|(_, s)| s == "UP").count()
    }

    /// Whether HAProxy has taken `server` out of every backend.
    pub(crate) fn is_down(&self, server: &str) -> bool {
        let s = self.statuses();
        let of: Vec<_> = s.iter().filter(|(name, _)| name == server).collect();
        !of.is_empty() && of.iter().all(|(_, status)| status.starts_with("DOWN"))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Intercept =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
pub(crate) type Admin =
    AdminClient<tonic::service::interceptor::InterceptedService<Channel, Intercept>>;

pub(crate) async fn admin(instance: &Instance) -> Admin {
    let channel = Channel::from_shared(format!("http://{}", instance.admin))
        .expect("url")
        .connect()
        .await
        .expect("admin API reachable");
    let header: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {TOKEN}").parse().expect("header");
    let intercept: Intercept = Box::new(move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", header.clone());
        Ok(req)
    });
    AdminClient::with_interceptor(channel, intercept)
}

pub(crate) fn origin(at_ms: i64) -> Option<Origin> {
    Some(Origin {
        channel: apb::Channel::App as i32,
        text_version: "consent-text-v3".into(),
        actor: "test".into(),
        at_ms,
    })
}
