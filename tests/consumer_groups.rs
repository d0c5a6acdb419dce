//! The reference consumers as a consumer group on Apache Kafka: two members share a topic's
//! partitions, one leaves and the other takes its partitions over, and a member that starts
//! later resumes from the group's committed offsets instead of reading everything again.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use telegate_consumers::{ConsumerStats, Reference, RunnerConfig};
use telegate_frame::pb::{self, vehicle_frame::Body};
use telegate_gateway::{Gateway, PackSource};
use telegate_tests::*;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One member of the smart-service group.
struct Member {
    stop: watch::Sender<bool>,
    stats: Arc<ConsumerStats>,
    task: JoinHandle<anyhow::Result<Box<dyn telegate_consumers::Service>>>,
}

fn member(kafka: &telegate_kafka::KafkaConfig, ns: &str, group: &str) -> Member {
    let service = Reference::SmartService;
    let cfg = RunnerConfig {
        kafka: kafka.clone(),
        group: group.to_owned(),
        inputs: service.inputs(ns),
        output: service.output(ns),
        view_file: None,
        tick: Duration::from_millis(500),
        output_retention: service.output_retention(),
        from_beginning: true,
        tracer: None,
    };
    let (stop, stopped) = watch::channel(false);
    let stats = Arc::new(ConsumerStats::default());
    let task = tokio::spawn(telegate_consumers::run(
        cfg,
        service.build(service.purposes(), 3, Duration::from_secs(2)),
        stopped,
        stats.clone(),
    ));
    Member { stop, stats, task }
}

impl Member {
    fn taken(&self) -> u64 {
        self.stats.processed.load(Relaxed) + self.stats.duplicates.load(Relaxed)
    }

    async fn leave(self) -> u64 {
        let _ = self.stop.send(true);
        let Member { stats, task, .. } = self;
        task.await
            .expect("member task")
            .expect("member ran cleanly");
        stats.processed.load(Relaxed) + stats.duplicates.load(Relaxed)
    }
}

fn status(vin: &str, seq: u64) -> (String, Vec<u8>) {
    let body = Body::Status(pb::Status {
        odometer_km: Some(10_000.0 + seq as f64),
        ..Default::default()
    });
    message(vin, seq, now_ms() - 1_000, body)
}

/// Waits until `taken()` reaches `want`, or fails after 60 s.
async fn until(what: &str, want: u64, taken: impl Fn() -> u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while taken() < want {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {want} records taken",
            taken()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_partitions_take_over_and_resume_from_committed_offsets() {
    let dir = tempfile::tempdir().expect("tmp");
    let ns = format!("g{:08x}.", rand::random::<u32>());
    let mut config = gateway_config("reference", &ns, dir.path());
    config.kafka.partitions = 4;
    let gw = Gateway::start(&config, PackSource::Config)
        .await
        .expect("gateway");
    let mqtt = config.mqtt.listen.expect("mqtt");
    let group = format!("{ns}smart-service");
    let vins: Vec<String> = (0..24).map(|_| unique_vin()).collect();

    // Two members: the group splits the four partitions between them. Rounds of one frame per
    // vehicle go out until both have taken records (joining and rebalancing take a moment).
    let a = member(&config.kafka, &ns, &group);
    let b = member(&config.kafka, &ns, &group);
    let per_round = vins.len() as u64;
    let mut seq = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.taken() == 0 || b.taken() == 0 {
        assert!(
            Instant::now() < deadline,
            "both members got partitions: {} and {}",
            a.taken(),
            b.taken()
        );
        seq += 1;
        publish_v4(mqtt, vins.iter().map(|v| status(v, seq)).collect()).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let first = seq * per_round;
    until("two members", first, || a.taken() + b.taken()).await;

    // One leaves (committing what it did); the other takes its partitions over.
    let a_before = a.taken();
    let b_total = b.leave().await;
    seq += 1;
    publish_v4(mqtt, vins.iter().map(|v| status(v, seq)).collect()).await;
    until("after the rebalance", a_before + per_round, || a.taken()).await;
    let a_total = a.leave().await;
    assert_eq!(
        a_total + b_total,
        first + per_round,
        "every record taken exactly once across the two members"
    );

    // A member that joins later resumes from the committed offsets: it takes only what came
    // after, not the group's history.
    let c = member(&config.kafka, &ns, &group);
    seq += 1;
    publish_v4(mqtt, vins.iter().map(|v| status(v, seq)).collect()).await;
    until("resumed member", per_round, || c.taken()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        c.leave().await,
        per_round,
        "the new member read from the committed offsets, not from the beginning"
    );
    gw.shutdown().await;
}
