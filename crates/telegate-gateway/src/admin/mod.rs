//! Consent and settings changes and the data-subject rights, as the admin API (gRPC,
//! `telegate.admin.v1.Admin`, in [`grpc`]) and the privacy office's console offer them: every
//! change is written to the replicated state and to the consent ledger before it returns, with
//! who made it, through which channel and why.

mod grpc;

pub use grpc::{AdminService, serve};

use crate::frame_stats::FrameStats;
use crate::ledger::{Action, Change, Channel, Ledger, LedgerEntry};
use crate::requests::Requests;
use crate::state::StateStore;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use telegate_frame::now_ms;
use telegate_frame::{Vin, VinError};
use telegate_kafka::{KafkaConfig, scan};
use telegate_mqtt::{Edge, Refusal};
use telegate_policy::{Account, ConsentRule, Identity, Keyring, Pack, StateKey, SubjectRecord};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// What the admin service works with.
#[derive(Debug)]
pub struct AdminContext {
    pub pack: Arc<Pack>,
    pub state: Arc<StateStore>,
    pub ledger: Arc<Ledger>,
    pub edge: Arc<Edge>,
    /// What the pipeline made of the frames (the console's flows page).
    pub frames: Arc<FrameStats>,
    /// Requests to vehicles, whichever instance holds their connection.
    pub requests: Arc<Requests>,
    pub kafka: KafkaConfig,
    pub keys: Keyring,
    /// How long a blocked account's data waits for the retention check before erasure.
    pub block_grace: Duration,
}

/// Why an admin call failed; each becomes one gRPC code. The caller's own mistakes are
/// described to the caller; a failure inside (Kafka, the replicated state) is logged here with
/// its causes and answered with a short fixed message, so no internal detail leaves the
/// gateway. No variant carries a VIN.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `INVALID_ARGUMENT`: the request's VIN is not a VIN.
    #[error("vin: {0}")]
    Vin(#[from] VinError),
    /// `INVALID_ARGUMENT`: another field of the request is not usable.
    #[error("{0}")]
    InvalidArgument(String),
    /// `NOT_FOUND`: what the request names does not exist (a purpose, a feature, key material).
    #[error("{0}")]
    NotFound(String),
    /// `FAILED_PRECONDITION`: the request is well-formed but does not apply under this policy.
    #[error("{0}")]
    FailedPrecondition(String),
    /// `UNAVAILABLE`: the consent state, the ledger or a topic could not be written or read.
    #[error("{what} failed; try again later")]
    Unavailable {
        /// What was being done, in fixed words; the whole answer the caller gets.
        what: &'static str,
        #[source]
        source: anyhow::Error,
    },
}

impl AdminError {
    /// For `map_err`: the failure of `what`, a step that needs Kafka or the state store.
    pub fn unavailable<E: Into<anyhow::Error>>(what: &'static str) -> impl FnOnce(E) -> Self {
        move |source| AdminError::Unavailable {
            what,
            source: source.into(),
        }
    }

    /// The gRPC code this error is answered with.
    pub fn code(&self) -> tonic::Code {
        match self {
            AdminError::Vin(_) | AdminError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            AdminError::NotFound(_) => tonic::Code::NotFound,
            AdminError::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            AdminError::Unavailable { .. } => tonic::Code::Unavailable,
        }
    }
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Self {
        if let AdminError::Unavailable { what, source } = &e {
            // The whole chain, here only; it names topics and brokers, never a VIN.
            tracing::error!(error = %format!("{source:#}"), what, "admin call failed");
        }
        Status::new(e.code(), e.to_string())
    }
}

/// Who makes a change, through which channel, when it applies from, and why.
#[derive(Debug, Clone)]
pub struct Who {
    pub channel: Channel,
    pub text_version: String,
    pub actor: String,
    /// The case or ticket number (the console requires one; the gRPC API has none).
    pub reason: String,
    pub at_ms: i64,
}

/// The record as a person may see it: everything but the key material.
pub fn redacted(record: &SubjectRecord) -> SubjectRecord {
    SubjectRecord {
        secret: None,
        ..record.clone()
    }
}

/// The changes and rights both the gRPC API and the console offer: each writes the
/// replicated state (where it changes one) and the consent ledger before it returns.
impl AdminContext {
    /// Changes the record, writes the ledger entry, returns the new record.
    async fn change(
        &self,
        vin: Vin,
        who: &Who,
        action: Action,
        target: &str,
        value: serde_json::Value,
        apply: impl FnOnce(&mut SubjectRecord),
    ) -> Result<SubjectRecord, AdminError> {
        let record = self
            .state
            .update(vin, apply)
            .await
            .map_err(AdminError::unavailable("writing the consent state"))?;
        self.record(&vin, who, action, target, value).await?;
        Ok(record)
    }

    /// Writes one ledger entry for `vin`.
    async fn record(
        &self,
        vin: &Vin,
        who: &Who,
        action: Action,
        target: &str,
        value: serde_json::Value,
    ) -> Result<(), AdminError> {
        let change = Change {
            action,
            target,
            value,
            effective_at_ms: who.at_ms,
            channel: who.channel,
            text_version: &who.text_version,
            actor: &who.actor,
            reason: &who.reason,
        };
        self.ledger
            .append(vin, change)
            .await
            .map_err(AdminError::unavailable("writing the consent ledger"))?;
        Ok(())
    }

    pub fn purpose(&self, id: &str) -> Result<&telegate_policy::Purpose, AdminError> {
        self.pack.purpose(id).ok_or_else(|| {
            AdminError::NotFound(format!(
                "policy {} has no purpose {id:?}",
                self.pack.label()
            ))
        })
    }

    /// Records or withdraws standing consent to a purpose that rests on it.
    pub async fn set_consent(
        &self,
        vin: Vin,
        purpose: &str,
        granted: bool,
        who: &Who,
    ) -> Result<SubjectRecord, AdminError> {
        let p = self.purpose(purpose)?;
        if p.consent != ConsentRule::Standing {
            return Err(AdminError::FailedPrecondition(format!(
                "purpose {} does not rest on standing consent",
                p.id
            )));
        }
        let (id, at) = (purpose.to_owned(), who.at_ms);
        self.change(vin, who, Action::Consent, purpose, json!(granted), |s| {
            s.consents.entry(id).or_default().set(at, granted)
        })
        .await
    }

    /// Records an objection to a purpose (`on`), or lifts it.
    pub async fn set_objection(
        &self,
        vin: Vin,
        purpose: &str,
        on: bool,
        who: &Who,
    ) -> Result<SubjectRecord, AdminError> {
        self.purpose(purpose)?;
        let (id, at) = (purpose.to_owned(), who.at_ms);
        self.change(vin, who, Action::Objection, purpose, json!(on), |s| {
            s.objections.entry(id).or_default().set(at, on)
        })
        .await
    }

    /// Restricts processing for every purpose (`on`), or lifts the restriction.
    pub async fn set_restriction(
        &self,
        vin: Vin,
        on: bool,
        who: &Who,
    ) -> Result<SubjectRecord, AdminError> {
        let at = who.at_ms;
        self.change(vin, who, Action::Restriction, "", json!(on), |s| {
            s.restricted.set(at, on)
        })
        .await
    }

    /// The purposes that rest on standing consent, in pack order.
    pub fn standing_purposes(&self) -> Vec<&str> {
        self.pack
            .purposes
            .iter()
            .filter(|p| p.consent == ConsentRule::Standing)
            .map(|p| p.id.as_str())
            .collect()
    }

    /// The features some purpose of the pack depends on, in pack order, each once.
    pub fn features(&self) -> Vec<&str> {
        let mut features = Vec::new();
        for p in &self.pack.purposes {
            if let ConsentRule::Activation(f) = &p.consent
                && !features.contains(&f.as_str())
            {
                features.push(f.as_str());
            }
        }
        features
    }

    /// Activates a feature (a service the vehicle's owner booked), or deactivates it.
    pub async fn set_activation(
        &self,
        vin: Vin,
        feature: &str,
        active: bool,
        who: &Who,
    ) -> Result<SubjectRecord, AdminError> {
        if !self.features().contains(&feature) {
            return Err(AdminError::NotFound(format!(
                "no purpose depends on feature {feature:?}"
            )));
        }
        let (f, at) = (feature.to_owned(), who.at_ms);
        self.change(vin, who, Action::Activation, feature, json!(active), |s| {
            s.activations.entry(f).or_default().set(at, active)
        })
        .await
    }

    /// Access: the export document ([`export`]), with an `export` entry in the ledger saying
    /// who handed it out and why.
    pub async fn export_for(&self, vin: &Vin, who: &Who) -> Result<serde_json::Value, AdminError> {
        let document = export(self, vin).await?;
        self.record(vin, who, Action::Export, "", json!(true))
            .await?;
        Ok(document)
    }
}

/// Erases a vehicle: the ledger records it, then the state and key material go everywhere,
/// and its live connection is closed.
pub async fn erase(ctx: &AdminContext, vin: &Vin, who: &Who) -> Result<bool, AdminError> {
    let existed = erase_at(ctx, &ctx.state.key_of(vin), who)
        .await
        .map_err(AdminError::unavailable("erasing the vehicle"))?;
    ctx.edge.close(vin, Refusal::VehicleBlocked);
    Ok(existed)
}

/// Erases the vehicle whose record is named `key` (the retention check knows no VIN).
async fn erase_at(ctx: &AdminContext, key: &StateKey, who: &Who) -> anyhow::Result<bool> {
    let change = Change {
        action: Action::Erase,
        target: "",
        value: json!(true),
        effective_at_ms: now_ms(),
        channel: who.channel,
        text_version: "",
        actor: &who.actor,
        reason: &who.reason,
    };
    ctx.ledger.append_at(key, change).await?;
    ctx.state.erase(key).await
}

/// Access and portability: the vehicle's state, its ledger, and what each purpose's topic
/// still holds of it (records, capture-time range). Anonymous records cannot be attributed
/// to anyone, by design, and are listed as such.
pub async fn export(ctx: &AdminContext, vin: &Vin) -> Result<serde_json::Value, AdminError> {
    let record = ctx.state.get(vin);
    let secret = record.as_ref().and_then(|r| r.secret.clone());
    // Entries filed under the state key, and older ones under a pseudonym key's subject hash.
    let mut filed_under = vec![ctx.ledger.subject_hash(vin)];
    filed_under.extend(ctx.keys.subject_hashes(vin.expose()));
    let ledger: Vec<LedgerEntry> = scan(&ctx.kafka, ctx.ledger.topic(), |k| {
        filed_under.iter().any(|h| k == h.as_bytes())
    })
    .await
    .map_err(AdminError::unavailable("reading the consent ledger"))?
    .into_iter()
    .filter_map(|r| r.value.and_then(|v| serde_json::from_slice(&v).ok()))
    .collect();
    let mut deliveries = Vec::new();
    for purpose in &ctx.pack.purposes {
        let topic = &ctx.pack.service_of(purpose).topic;
        let key = match purpose.identity {
            Identity::Vin => Some(vin.expose().to_owned()),
            Identity::Pseudonym | Identity::Sealed => secret
                .as_ref()
                .map(|s| ctx.keys.pseudonym(&purpose.id, vin, Some(s))),
            Identity::Anonymous => None,
        };
        let Some(key) = key else {
            deliveries.push(json!({
                "purpose": purpose.id.as_str(), "topic": topic, "identity": purpose.identity.as_str(),
                "records": serde_json::Value::Null,
                "note": if purpose.identity == Identity::Anonymous {
                    "anonymous records carry no identifier and cannot be attributed to this vehicle"
                } else {
                    "no key material: earlier records can no longer be linked to this vehicle"
                },
            }));
            continue;
        };
        let found = scan(&ctx.kafka, topic, |k| k == key.as_bytes())
            .await
            .map_err(AdminError::unavailable("reading the purposes' topics"))?;
        let mine: Vec<i64> = found
            .iter()
            .filter(|r| {
                r.headers
                    .iter()
                    .any(|(k, v)| k == "telegate-purpose" && v == purpose.id.as_str())
            })
            .filter_map(|r| {
                r.headers
                    .iter()
                    .find(|(k, _)| k == "telegate-captured-at-ms")
                    .and_then(|(_, v)| v.parse().ok())
            })
            .collect();
        deliveries.push(json!({
            "purpose": purpose.id.as_str(), "topic": topic, "identity": purpose.identity.as_str(),
            "legal_basis": purpose.legal_basis.as_str(),
            "records": mine.len(),
            "first_captured_at_ms": mine.iter().min(),
            "last_captured_at_ms": mine.iter().max(),
        }));
    }
    Ok(json!({
        "vin": vin.expose(),
        "exported_at_ms": now_ms(),
        "policy": ctx.pack.label(),
        "state": record.as_ref().map(redacted),
        "ledger": ledger,
        "deliveries": deliveries,
    }))
}

/// Erases blocked accounts whose retention check has passed, until `stop` is cancelled.
pub async fn sweep_blocked(ctx: Arc<AdminContext>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        // A blocked vehicle is refused at the edge: no connection of its to close.
        let due = ctx.state.keys_where(|r| {
            matches!(r.account, Account::Blocked { delete_after_ms, .. } if delete_after_ms <= now)
        });
        for key in due {
            let who = Who {
                channel: Channel::Api,
                text_version: String::new(),
                actor: "retention-check".into(),
                reason: String::new(),
                at_ms: now,
            };
            match erase_at(&ctx, &key, &who).await {
                Ok(_) => metrics::counter!("telegate_blocked_erased_total").increment(1),
                Err(e) => tracing::error!(error = %e, "erasing a blocked account failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::grpc::vin;
    use super::*;
    use tonic::Code;

    #[test]
    fn each_failure_has_its_own_code() {
        let cases = [
            (
                vin("WP0ZZZ99ZTS39212").expect_err("16 characters"),
                Code::InvalidArgument,
            ),
            (
                vin("WP0ZZZ99ZTS39212O").expect_err("an O"),
                Code::InvalidArgument,
            ),
            (
                AdminError::InvalidArgument("call_id".into()),
                Code::InvalidArgument,
            ),
            (AdminError::NotFound("purpose".into()), Code::NotFound),
            (
                AdminError::FailedPrecondition("standing".into()),
                Code::FailedPrecondition,
            ),
            (
                AdminError::unavailable("writing the consent state")(anyhow::anyhow!("down")),
                Code::Unavailable,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
        assert!(vin("WP0ZZZ99ZTS392124").is_ok());
    }

    #[test]
    fn a_bad_vin_is_described_to_the_caller() {
        let status = Status::from(vin("wp0zzz99zts392124").expect_err("lower case"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "vin: a VIN uses only 0-9 and A-Z without I, O and Q (upper case)"
        );
    }

    #[test]
    fn an_internal_failure_is_answered_without_its_chain() {
        let chain = anyhow::anyhow!("broker kafka-7.internal:9092 refused the connection")
            .context("producing to telegate.consent-state")
            .context("writing consent state");
        let e = AdminError::unavailable("writing the consent state")(chain);
        // The chain is still there for the log.
        let logged = crate::support::error_chain(&e);
        assert!(logged.contains("kafka-7.internal"), "{logged}");
        let status = Status::from(e);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "writing the consent state failed; try again later"
        );
    }
}
