//! External-broker mode: the vehicles connect to an existing MQTT broker or cluster (EMQX,
//! HiveMQ, VerneMQ, Mosquitto), which authenticates them; telegate runs no listener and reads
//! their frames as one member of an MQTT 5 shared subscription, so that several workers share
//! the load.
//!
//! Each worker keeps a persistent session under a stable client id and acknowledges a frame
//! only once the pipeline completes its [`Ack`] (Kafka holds its records), in the order the
//! frames arrived. A frame whose connection ended before its acknowledgement is not
//! acknowledged at all: the broker sends it again when the session resumes, and the pipeline
//! takes it again (at least once). A frame Kafka could not take ends the connection, so that
//! the broker sends it again.

use crate::codec::AckOutcome;
use crate::config::EdgeConfig;
use crate::edge::{EdgeError, EdgeStats};
use crate::{Ack, Incoming};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use strum::VariantArray;
use telegate_frame::FrameKind;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// This worker's client id: the configured one, else `telegate-` and the host name (a pod's
/// name in Kubernetes, stable in a StatefulSet).
fn client_id(cfg: &EdgeConfig) -> String {
    cfg.client_id.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "worker".to_owned());
        format!("telegate-{host}")
    })
}

/// The filters of the shared subscription: one per frame kind, so that the platform's own
/// requests to vehicles (`/tenants/{VIN}/v1/request`) never come back as frames.
pub(crate) fn filters(group: &str) -> Vec<String> {
    FrameKind::VARIANTS
        .iter()
        .map(|k| format!("$share/{group}//tenants/+/v1/{}", k.as_str()))
        .collect()
}

/// The running client.
pub(crate) struct External {
    client: AsyncClient,
}

impl std::fmt::Debug for External {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("External").finish_non_exhaustive()
    }
}

/// A QoS 1 frame waiting for the pipeline, with the connection it came on.
struct Pending {
    connection: u64,
    publish: Publish,
    outcome: oneshot::Receiver<AckOutcome>,
}

impl External {
    /// Connects to the broker; its tasks run on `tasks` until `stop` is cancelled.
    pub(crate) fn start(
        cfg: &EdgeConfig,
        stats: Arc<EdgeStats>,
        tx: mpsc::Sender<Incoming>,
        stop: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, EdgeError> {
        let broker = cfg
            .external
            .as_ref()
            .ok_or_else(|| EdgeError::Config("mqtt.external is not set".to_owned()))?;
        let id = client_id(cfg);
        let mut options = MqttOptions::new(id.clone(), broker.host(), broker.port());
        options
            .set_clean_start(false)
            // The session, and the frames in flight to it, outlive a crash of this worker.
            .set_session_expiry_interval(Some(
                cfg.session_expiry.as_secs().min(u32::MAX as u64) as u32
            ))
            .set_manual_acks(true)
            .set_receive_maximum(Some(cfg.external_inflight))
            .set_max_packet_size(Some(cfg.max_packet_bytes.min(u32::MAX as usize) as u32))
            .set_keep_alive(Duration::from_secs(30));
        if broker.tls() {
            let ca = cfg.external_ca.as_deref().ok_or_else(|| {
                EdgeError::Config("mqtt.external_ca: mqtts:// needs a CA".to_owned())
            })?;
            let identity = cfg
                .external_cert
                .as_deref()
                .zip(cfg.external_key.as_deref());
            let tls = crate::tls::client_config(ca, identity)?;
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        let (client, eventloop) = AsyncClient::new(options, 64);
        let connection = Arc::new(AtomicU64::new(0));
        let (order_tx, order_rx) = mpsc::unbounded_channel();
        tasks.spawn(read(
            eventloop,
            client.clone(),
            cfg.share_group.clone(),
            tx,
            order_tx,
            connection.clone(),
            stats,
            stop.clone(),
        ));
        tasks.spawn(acknowledge(client.clone(), order_rx, connection));
        tracing::info!(
            broker = %format!("{}:{}", broker.host(), broker.port()),
            tls = broker.tls(),
            client_id = %id,
            group = %cfg.share_group,
            "reading vehicle frames from an external MQTT broker"
        );
        Ok(Self { client })
    }

    /// Publishes a request to a vehicle through the broker, QoS 1. The broker delivers it if
    /// the vehicle subscribes; telegate cannot tell whether it does.
    pub(crate) fn send(&self, topic: String, payload: Bytes) -> bool {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .is_ok()
    }

    /// Disconnects, leaving the session for the next start; the tasks end when the edge's
    /// stop is cancelled.
    pub(crate) fn disconnect(&self) {
        let _ = self.client.try_disconnect();
    }
}

/// Polls the connection: hands each frame to the pipeline and queues its acknowledgement,
/// subscribes whenever the broker has no session for this worker, and reconnects after a
/// pause when the connection fails.
#[allow(clippy::too_many_arguments)]
async fn read(
    mut eventloop: EventLoop,
    client: AsyncClient,
    group: String,
    tx: mpsc::Sender<Incoming>,
    order: mpsc::UnboundedSender<Pending>,
    connection: Arc<AtomicU64>,
    stats: Arc<EdgeStats>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                failures = 0;
                connection.fetch_add(1, Ordering::AcqRel);
                connected(true);
                if !ack.session_present {
                    for filter in filters(&group) {
                        if client.try_subscribe(filter, QoS::AtLeastOnce).is_err() {
                            tracing::error!("could not ask the external broker for a subscription");
                        }
                    }
                }
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the external MQTT broker"
                );
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let ack = match publish.qos {
                    QoS::AtMostOnce => None,
                    QoS::AtLeastOnce | QoS::ExactlyOnce => {
                        let (ack, outcome) = Ack::new();
                        let pending = Pending {
                            connection: connection.load(Ordering::Acquire),
                            publish: publish.clone(),
                            outcome,
                        };
                        if order.send(pending).is_err() {
                            return;
                        }
                        Some(ack)
                    }
                };
                stats.count_received(if ack.is_none() { 0 } else { 1 });
                if publish.dup {
                    stats.resent();
                }
                let incoming = Incoming {
                    received: std::time::Instant::now(),
                    traceparent: publish
                        .properties
                        .and_then(|p| crate::codec::traceparent(p.user_properties)),
                    topic: publish.topic,
                    payload: publish.payload,
                    ack,
                    // The broker enforces its own topic rules.
                    denied: None,
                    // One connection carries every vehicle's frames.
                    memo: None,
                };
                // A full pipeline holds this loop: the broker's in-flight window (the receive
                // maximum) fills and it stops sending.
                if tx.send(incoming).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                connection.fetch_add(1, Ordering::AcqRel);
                connected(false);
                tracing::warn!(reason = ?d.reason_code, "the external MQTT broker disconnected");
            }
            Ok(_) => {}
            Err(e) => {
                connection.fetch_add(1, Ordering::AcqRel);
                connected(false);
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "external MQTT broker connection; retrying");
                }
                let pause = Duration::from_millis(200 * u64::from(failures.min(25)));
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// `telegate_mqtt_external_connected`: 1 while this worker is connected to the broker.
fn connected(yes: bool) {
    metrics::gauge!("telegate_mqtt_external_connected").set(if yes { 1.0 } else { 0.0 });
}

/// Acknowledges frames in the order they arrived, each once the pipeline completed it. Frames
/// of an earlier connection are not acknowledged (the broker sends them again); a frame Kafka
/// could not take ends the connection, so that the broker sends it again.
async fn acknowledge(
    client: AsyncClient,
    mut order: mpsc::UnboundedReceiver<Pending>,
    connection: Arc<AtomicU64>,
) {
    while let Some(p) = order.recv().await {
        let outcome = p.outcome.await.unwrap_or(AckOutcome::Failed);
        if p.connection != connection.load(Ordering::Acquire) {
            continue;
        }
        match outcome {
            // Taken, or one that sending again would not change.
            AckOutcome::Accepted | AckOutcome::NotAuthorized => {
                if client.ack(&p.publish).await.is_err() {
                    return;
                }
            }
            AckOutcome::Failed => {
                // Not acknowledged: the broker sends it again once the session resumes.
                connection.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(
                    "a frame from the external broker could not be delivered to Kafka; \
                     reconnecting so that the broker sends it again"
                );
                let _ = client.disconnect().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subscription_takes_every_frame_kind_and_never_requests() {
        let filters = filters("telegate");
        assert_eq!(filters.len(), <FrameKind as strum::EnumCount>::COUNT);
        assert!(filters.contains(&"$share/telegate//tenants/+/v1/status".to_owned()));
        assert!(
            !filters
                .iter()
                .any(|f| f.ends_with("/request") || f.ends_with('#'))
        );
    }
}
