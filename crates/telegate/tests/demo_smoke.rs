//! `telegate demo` end to end on its defaults: librdkafka's in-process mock cluster, the
//! gateway's own MQTT edge, a simulated fleet. Checks what reaches the topics, not how fast.

use std::time::Duration;
use telegate::demo::{Args, summarize};
use telegate_tests::free_addr;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_moves_frames_to_every_contract_topic() {
    let summary = summarize(Args {
        vehicles: 30,
        duration: Some(Duration::from_secs(12)),
        kafka_bootstrap: None,
        mqtt_listen: free_addr(),
        metrics_listen: Some(free_addr()),
        console_listen: Some(free_addr()),
        policy: None,
        bad_frame_ratio: 0.1,
        k: 3,
    })
    .await
    .expect("demo runs");
    assert!(summary.published > 50, "{summary:?}");
    assert_eq!(summary.failed, 0);
    assert_eq!(summary.refused_at_edge, 0);
    // The deliberately broken frames reached the pipeline and were counted there.
    assert!(summary.rejected > 0, "{summary:?}");
    for topic in [
        "telegate.smart-service",
        "telegate.trip-log",
        "telegate.product-insights",
        "telegate.rejected",
    ] {
        let v = summary.topics.get(topic).cloned().unwrap_or_default();
        assert!(v.records > 0, "{topic} received nothing: {summary:?}");
    }
    // The reference consumers ran on the same in-process Kafka and saw the fleet.
    let smart = &summary.consumers["smart-service"];
    assert!(
        smart["vehicles"].as_object().is_some_and(|v| !v.is_empty()),
        "{smart}"
    );
    assert!(summary.consumers["product-insights"]["aggregates"].is_array());
    let trip = &summary.topics["telegate.trip-log"];
    assert_eq!(trip.last_subject, "pseudonym");
    assert!(summary.topics["telegate.product-insights"].last_key == "(none)");
}
