//! A fleet of simulated vehicles, each with its own MQTT connection: anonymous, or over TLS
//! with the vehicle's own certificate.

use crate::tls::{IdentityError, VehicleCertificates};
use crate::vehicle::{Behaviour, Truth, Vehicle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, MqttOptions, QoS};
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
        }
    }
}

/// What the fleet did, live.
#[derive(Debug, Default)]
pub struct FleetStats {
    pub published: AtomicU64,
    pub broken_published: AtomicU64,
    pub publish_errors: AtomicU64,
    /// Vehicles that could not get their TLS identity and so never connected.
    pub identity_errors: AtomicU64,
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
    let client_id = format!("sim-{:016x}", rng.random::<u64>());
    let mut opts = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(256 * 1024, 256 * 1024);
    if let Some(certs) = certs {
        let vin = vehicle.vin().to_owned();
        // Issuing signs and writes files: not on the runtime's threads.
        let transport = tokio::task::spawn_blocking(move || certs.transport(&vin)).await;
        match transport {
            Ok(Ok(transport)) => {
                opts.set_transport(transport);
            }
            failed => {
                stats.identity_errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(Err(e)) = failed {
                    tracing::warn!(error = %e, "a simulated vehicle has no TLS identity and stays offline");
                }
                return (vehicle.vin().to_owned(), vehicle.truth().clone());
            }
        }
    }
    let (client, mut events) = AsyncClient::new(opts, 256);
    // rumqttc reconnects when its event loop is polled again after an error.
    let poller = tokio::spawn(async move {
        loop {
            if let Err(e) = events.poll().await {
                tracing::debug!(error = %e, "simulated vehicle lost its connection; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    let mut ticker = tokio::time::interval(cfg.tick);
    let dt = cfg.tick.as_millis() as i64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        let frames = vehicle.step(now_ms(), dt, &cfg.behaviour, &mut rng);
        for frame in frames {
            publish(&client, &frame, format, &stats).await;
            if cfg.bad_frame_ratio > 0.0 && rng.random_bool(cfg.bad_frame_ratio) {
                publish_broken(&client, &frame, &mut rng, &stats).await;
            }
        }
    }
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    poller.abort();
    (vehicle.vin().to_owned(), vehicle.truth().clone())
}

async fn publish(
    client: &AsyncClient,
    frame: &VehicleFrame,
    format: PayloadFormat,
    stats: &FleetStats,
) {
    let Some(body) = frame.body.as_ref() else {
        return;
    };
    let topic = vehicle_topic(&frame.vin, FrameKind::of_body(body));
    match client
        .publish(topic, QoS::AtLeastOnce, false, encode(frame, format))
        .await
    {
        Ok(()) => stats.published.fetch_add(1, Ordering::Relaxed),
        Err(_) => stats.publish_errors.fetch_add(1, Ordering::Relaxed),
    };
}

/// One of the ways real vehicles and forgers get frames wrong.
async fn publish_broken(
    client: &AsyncClient,
    frame: &VehicleFrame,
    rng: &mut SmallRng,
    stats: &FleetStats,
) {
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
    if client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .is_ok()
    {
        stats.broken_published.fetch_add(1, Ordering::Relaxed);
    }
}
