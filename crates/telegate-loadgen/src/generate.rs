//! The vehicles: each publishes its own frames at a fixed rate, on its own MQTT connection
//! (anonymous, or over TLS with its own certificate; or, for the Kafka ceiling, straight to
//! Kafka), with ramp-up and warm-up. Over MQTT the vehicles are the generator's lean ones
//! ([`crate::lean`]): a vehicle keeps every QoS 1 frame until its PUBACK and publishes it
//! again, marked DUP, after a reconnect; when its outbox is full it skips its ticks, counted;
//! at the end it waits for its outstanding PUBACKs.

use crate::tls::FleetTls;
use crate::tracker::Tracker;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use telegate_frame::now_ms;
use telegate_frame::pb::{self, VehicleFrame, vehicle_frame::Body};
use telegate_frame::{PayloadFormat, encode};
use telegate_kafka::KafkaSink;
use telegate_policy::OutRecord;

/// Relative weights of the frame kinds each vehicle sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub status: u32,
    pub diagnostics: u32,
    pub location: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            status: 2,
            diagnostics: 1,
            location: 7,
        }
    }
}

/// Where vehicles send.
#[derive(Debug, Clone)]
pub enum Sink {
    Mqtt {
        addr: SocketAddr,
        /// Each vehicle's TLS identity, in the order of the VINs; without it vehicles connect
        /// anonymously.
        tls: Option<Arc<FleetTls>>,
    },
    /// Straight to Kafka, as telegate would produce: the Kafka ceiling.
    Kafka {
        /// telegate's producer settings; `extra` carries the properties under study
        /// (linger, batching, compression).
        kafka: telegate_kafka::KafkaConfig,
        topic: String,
    },
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub vehicles: usize,
    /// Frames per second per vehicle.
    pub rate: f64,
    pub mix: Mix,
    pub format: PayloadFormat,
    pub qos: u8,
    pub ramp_up: Duration,
    pub warm_up: Duration,
    pub duration: Duration,
}

/// The load's `n` vehicles: distinct VINs, the same ones on every call, so that a fleet
/// directory prepared by one run serves the next.
pub fn vins(n: usize) -> Vec<String> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let vin = telegate_sim::vin::generate(&mut rng, "WP0");
        if seen.insert(vin.clone()) {
            out.push(vin);
        }
    }
    out
}

/// Vehicle `vin`'s frame `seq`: the same bytes every time for the same capture time, so that
/// a frame published again is the frame published first.
pub(crate) fn frame(vin: &str, seq: u64, mix: Mix, captured_at_ms: i64) -> VehicleFrame {
    let total = (mix.status + mix.diagnostics + mix.location).max(1) as u64;
    let slot = (seq % total) as u32;
    let body = if slot < mix.status {
        Body::Status(pb::Status {
            odometer_km: Some(12_000.0 + seq as f64 * 0.01),
            fuel_level_pct: Some(55.0),
            ignition: pb::Ignition::On as i32,
            lv_battery: Some(pb::LowVoltageBattery {
                voltage_v: Some(12.6),
                soc_pct: Some(90.0),
            }),
            tyres: Some(pb::TyrePressures {
                front_left_kpa: Some(250.0),
                front_right_kpa: Some(250.0),
                rear_left_kpa: Some(248.0),
                rear_right_kpa: Some(248.0),
            }),
            trigger: pb::StatusTrigger::Periodic as i32,
            ..Default::default()
        })
    } else if slot < mix.status + mix.diagnostics {
        Body::Diagnostics(pb::Diagnostics {
            dtcs: vec![pb::Dtc {
                code: "P0301".into(),
                ecu: "engine".into(),
                ..Default::default()
            }],
            trigger: pb::DiagnosticsTrigger::Event as i32,
        })
    } else {
        Body::Location(pb::Location {
            lat_deg: 48.77 + (seq % 1000) as f64 * 1e-4,
            lon_deg: 9.18,
            speed_kmh: Some(50.0),
            heading_deg: Some(90.0),
            accuracy_m: Some(3.0),
            altitude_m: None,
        })
    };
    VehicleFrame {
        vin: vin.to_owned(),
        seq,
        captured_at_ms,
        body: Some(body),
    }
}

/// Runs every vehicle to the end of warm-up plus duration, sending to `sink`; returns frames
/// published.
pub async fn run(
    cfg: &LoadConfig,
    sink: &Sink,
    vins: &[String],
    tracker: Arc<Tracker>,
) -> anyhow::Result<u64> {
    let start = Instant::now();
    match sink {
        Sink::Mqtt { addr, tls } => {
            if let Some(tls) = tls {
                anyhow::ensure!(
                    tls.vehicles() == vins.len(),
                    "{} TLS identities for {} vehicles",
                    tls.vehicles(),
                    vins.len()
                );
            }
            crate::lean::run(
                crate::lean::LIMITS,
                cfg,
                *addr,
                tls.clone(),
                vins,
                tracker,
                start,
            )
            .await
        }
        Sink::Kafka { kafka, topic } => {
            // One sink shared by every vehicle: telegate's own, with its producer settings.
            let sink = Arc::new(KafkaSink::new(kafka)?);
            let mut tasks = tokio::task::JoinSet::new();
            for (i, vin) in vins.iter().enumerate() {
                let (cfg, vin, tracker) = (cfg.clone(), vin.clone(), tracker.clone());
                let (sink, topic) = (sink.clone(), topic.clone());
                let delay = cfg.ramp_up.mul_f64(i as f64 / vins.len().max(1) as f64);
                tasks.spawn(async move {
                    tokio::time::sleep(delay).await;
                    kafka_vehicle(i, &vin, &cfg, &tracker, &sink, &topic, start).await
                });
            }
            let mut published = 0;
            while let Some(r) = tasks.join_next().await {
                published += r??;
            }
            // Dropping a producer purges what it still holds: give every record up to the
            // same 60 s the observer waits. What is still queued then is purged and counted
            // as lost.
            let sink = Arc::into_inner(sink).context("every vehicle has finished with the sink")?;
            sink.close(Duration::from_secs(60)).await;
            Ok(published)
        }
    }
}

fn ticker(cfg: &LoadConfig) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / cfg.rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

async fn kafka_vehicle(
    i: usize,
    vin: &str,
    cfg: &LoadConfig,
    tracker: &Tracker,
    sink: &KafkaSink,
    topic: &str,
    start: Instant,
) -> anyhow::Result<u64> {
    let end = cfg.warm_up + cfg.duration;
    let mut tick = ticker(cfg);
    let mut seq = 0u64;
    while start.elapsed() < end {
        tick.tick().await;
        seq += 1;
        let f = frame(vin, seq, cfg.mix, now_ms());
        let payload = encode(&f, cfg.format);
        tracker.published(i, seq, start.elapsed() >= cfg.warm_up);
        // The same record telegate would write, its headers included, through telegate's
        // own sink (back-pressure and delivery tracking).
        let headers = vec![
            ("telegate-purpose", "loadgen".to_owned()),
            ("telegate-legal-basis", "contract".to_owned()),
            ("telegate-consent", "not-required".to_owned()),
            ("telegate-subject", "vin".to_owned()),
            ("telegate-policy", "loadgen@1".to_owned()),
            ("telegate-captured-at-ms", f.captured_at_ms.to_string()),
            ("telegate-seq", seq.to_string()),
            ("telegate-encoding", "protobuf".to_owned()),
        ];
        sink.send(
            &OutRecord {
                topic: topic.to_owned(),
                key: Some(vin.as_bytes().to_vec()),
                headers,
                payload,
            },
            None,
            None,
        )
        .await?;
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    #[test]
    fn vins_are_distinct_valid_and_repeatable() {
        let a = super::vins(2_000);
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), 2_000);
        assert!(a.iter().all(|v| telegate_frame::Vin::parse(v).is_ok()));
        assert_eq!(super::vins(10), a[..10]);
    }
}
