//! A fleet of simulated vehicles, each with its own MQTT connection: anonymous, or over TLS
//! with the vehicle's own certificate. Each keeps its frames until they are acknowledged.

use crate::link::{DeliveryStats, Link, LinkConfig, MqttVersion, Update};
use crate::tls::{IdentityError, VehicleCertificates};
use crate::vehicle::{Behaviour, Truth, Vehicle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use telegate_frame::now_ms;
use telegate_frame::pb::VehicleFrame;
use telegate_frame::{FrameKind, PayloadFormat, encode, vehicle_topic};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Which payload format vehicles use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatMix {
    Protobuf,
    Json,
    /// Each vehicle picks one.
    Mixed,
}

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub host: String,
    pub port: u16,
    pub vehicles: usize,
    pub behaviour: Behaviour,
    pub tick: Duration,
    pub format: FormatMix,
    /// Share of frames followed by a deliberately broken one (bad VIN, mismatched VIN,
    /// garbage), to show rejections.
    pub bad_frame_ratio: f64,
    pub seed: u64,
    /// World manufacturer identifiers to draw VINs from.
    pub wmis: Vec<String>,
    /// A fleet directory (`telegate pki init`). With it every vehicle connects over TLS,
    /// presenting its own certificate (issued the first time the vehicle needs it), and
    /// `host` and `port` name the gateway's TLS listener. Without it vehicles are anonymous.
    pub pki: Option<PathBuf>,
    /// MQTT 3.1.1 or 5 (with 5, a PUBACK's failure reason is how a frame Kafka did not take
    /// comes back).
    pub version: MqttVersion,
    /// Frames each vehicle keeps until acknowledged; with a full outbox it skips its steps.
    pub outbox: usize,
    /// At stop, how long a vehicle waits for outstanding PUBACKs once none came.
    pub drain: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            vehicles: 20,
            behaviour: Behaviour::default(),
            tick: Duration::from_millis(500),
            format: FormatMix::Mixed,
            bad_frame_ratio: 0.0,
            seed: 1,
            wmis: vec!["WP0".into(), "KNA".into(), "WVW".into()],
            pki: None,
            version: MqttVersion::V311,
            outbox: 1_000,
            drain: Duration::from_secs(5),
        }
    }
}

/// What the fleet did, live.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Frames made (each kept until acknowledged).
    pub published: AtomicU64,
    /// Deliberately broken frames made.
    pub broken_published: AtomicU64,
    /// Frames the MQTT client could not take (it was gone) or that were refused for good.
    pub publish_errors: AtomicU64,
    /// Vehicles that could not get their TLS identity and so never connected.
    pub identity_errors: AtomicU64,
    /// Acknowledgements, resends, failure reasons, frames still kept.
    pub delivery: Arc<DeliveryStats>,
}

/// A running fleet; [`Fleet::stop`] ends it and returns each vehicle's ground truth.
#[derive(Debug)]
pub struct Fleet {
    stop: watch::Sender<bool>,
    tasks: JoinSet<(String, Truth)>,
    stats: Arc<FleetStats>,
}

impl Fleet {
    /// Starts the fleet. With `cfg.pki`, the fleet CA is loaded first, and a directory
    /// without a usable one is an error.
    pub fn try_start(cfg: FleetConfig) -> Result<Self, IdentityError> {
        let certs = match &cfg.pki {
            Some(dir) => Some(Arc::new(VehicleCertificates::open(dir)?)),
            None => None,
        };
        Ok(Self::launch(cfg, certs, Arc::default()))
    }

    /// Starts the fleet; see [`Fleet::try_start`]. If `cfg.pki` holds no usable fleet CA,
    /// no vehicle connects: each is counted in [`FleetStats::identity_errors`].
    pub fn start(cfg: FleetConfig) -> Self {
        match Self::try_start(cfg.clone()) {
            Ok(fleet) => fleet,
            Err(e) => {
                tracing::error!(error = %e, "no simulated vehicle can connect");
                let stats = Arc::new(FleetStats::default());
                stats
                    .identity_errors
                    .fetch_add(cfg.vehicles as u64, Ordering::Relaxed);
                Self::launch(FleetConfig { vehicles: 0, ..cfg }, None, stats)
            }
        }
    }

    fn launch(
        cfg: FleetConfig,
        certs: Option<Arc<VehicleCertificates>>,
        stats: Arc<FleetStats>,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let mut rng = SmallRng::seed_from_u64(cfg.seed);
        let mut tasks = JoinSet::new();
        let now = now_ms();
        for i in 0..cfg.vehicles {
            let wmi = &cfg.wmis[i % cfg.wmis.len().max(1)];
            let vin = crate::vin::generate(&mut rng, wmi);
            let vehicle = Vehicle::new(vin, now, &cfg.behaviour, &mut rng);
            let format = match cfg.format {
                FormatMix::Protobuf => PayloadFormat::Protobuf,
                FormatMix::Json => PayloadFormat::Json,
                FormatMix::Mixed if rng.random_bool(0.5) => PayloadFormat::Json,
                FormatMix::Mixed => PayloadFormat::Protobuf,
            };
            let seed = rng.random();
            tasks.spawn(drive(
                vehicle,
                cfg.clone(),
                certs.clone(),
                format,
                seed,
                stop_rx.clone(),
                stats.clone(),
            ));
        }
        Self { stop, tasks, stats }
    }

    pub fn stats(&self) -> Arc<FleetStats> {
        self.stats.clone()
    }

    /// Stops every vehicle and returns (VIN, truth) per vehicle.
    pub async fn stop(mut self) -> Vec<(String, Truth)> {
        let _ = self.stop.send(true);
        let mut out = Vec::new();
        while let Some(r) = self.tasks.join_next().await {
            if let Ok(t) = r {
                out.push(t);
            }
        }
        out
    }
}

async fn drive(
    mut vehicle: Vehicle,
    cfg: FleetConfig,
    certs: Option<Arc<VehicleCertificates>>,
    format: PayloadFormat,
    seed: u64,
    mut stop: watch::Receiver<bool>,
    stats: Arc<FleetStats>,
) -> (String, Truth) {
    let mut rng = SmallRng::seed_from_u64(seed);
    // The MQTT client id is not the VIN: broker logs name client ids.
    let mut link_cfg = LinkConfig::new(
        cfg.host.clone(),
        cfg.port,
        format!("sim-{:016x}", rng.random::<u64>()),
    );
    link_cfg.version = cfg.version;
    link_cfg.outbox = cfg.outbox;
    if let Some(certs) = certs {
        let vin = vehicle.vin().to_owned();
        // Issuing signs and writes files: not on the runtime's threads.
        let transport = tokio::task::spawn_blocking(move || certs.transport(&vin)).await;
        match transport {
            Ok(Ok(transport)) => link_cfg.transport = Some(transport),
            failed => {
                stats.identity_errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(Err(e)) = failed {
                    tracing::warn!(error = %e, "a simulated vehicle has no TLS identity and stays offline");
                }
                return (vehicle.vin().to_owned(), vehicle.truth().clone());
            }
        }
    }
    let mut link = Link::open(&link_cfg, stats.delivery.clone());
    let mut ticker = tokio::time::interval(cfg.tick);
    let dt = cfg.tick.as_millis() as i64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            update = link.next() => {
                count(&update, &stats);
                continue;
            }
            _ = stop.changed() => break,
        }
        // A full outbox: the vehicle waits, as one with a full store would.
        if link.is_full() {
            stats.delivery.held_back.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let frames = vehicle.step(now_ms(), dt, &cfg.behaviour, &mut rng);
        for frame in frames {
            keep(&mut link, &frame, format, &stats);
            if cfg.bad_frame_ratio > 0.0 && rng.random_bool(cfg.bad_frame_ratio) {
                keep_broken(&mut link, &frame, &mut rng, &stats);
            }
        }
    }
    link.drain(cfg.drain, |update| count(&update, &stats)).await;
    link.close().await;
    (vehicle.vin().to_owned(), vehicle.truth().clone())
}

fn count(update: &Update<()>, stats: &FleetStats) {
    if let Update::GivenUp(()) = update {
        stats.publish_errors.fetch_add(1, Ordering::Relaxed);
    }
}

fn keep(link: &mut Link<()>, frame: &VehicleFrame, format: PayloadFormat, stats: &FleetStats) {
    let Some(body) = frame.body.as_ref() else {
        return;
    };
    let topic = vehicle_topic(&frame.vin, FrameKind::of_body(body));
    link.push(topic, encode(frame, format), ());
    stats.published.fetch_add(1, Ordering::Relaxed);
}

/// One of the ways real vehicles and forgers get frames wrong.
fn keep_broken(link: &mut Link<()>, frame: &VehicleFrame, rng: &mut SmallRng, stats: &FleetStats) {
    let Some(body) = frame.body.as_ref() else {
        return;
    };
    let kind = FrameKind::of_body(body);
    let (topic, payload) = match rng.random_range(0..3) {
        // A frame whose VIN has a forbidden letter, on the vehicle's own topic (the edge
        // holds a vehicle to its own topics, so only the frame can be wrong).
        0 => {
            let mut f = frame.clone();
            f.vin = format!("{}O", &frame.vin[..16]);
            (
                vehicle_topic(&frame.vin, kind),
                encode(&f, PayloadFormat::Json),
            )
        }
        // A frame for another vehicle on this vehicle's topic.
        1 => {
            let mut f = frame.clone();
            f.vin = crate::vin::generate(rng, "WP0");
            (
                vehicle_topic(&frame.vin, kind),
                encode(&f, PayloadFormat::Protobuf),
            )
        }
        // Not a frame at all.
        _ => (
            vehicle_topic(&frame.vin, kind),
            b"{\"vin\": truncated".to_vec(),
        ),
    };
    // A broken frame is a QoS 1 frame like any other: kept until acknowledged (the gateway
    // acknowledges it once its rejection record is written).
    link.push(topic, payload, ());
    stats.broken_published.fetch_add(1, Ordering::Relaxed);
}
