//! The consent ledger: every grant, withdrawal, objection, restriction, activation, call
//! consent, settings change, block and erasure, appended to `telegate.consent-ledger` with
//! who, what, when, through which channel and under which text version. The subject is the
//! vehicle's state key, a keyed hash of the VIN under the index key (export finds a vehicle's
//! entries by hashing its VIN with the same key); the ledger outlives erasure, as records of
//! consent must.

use serde::{Deserialize, Serialize};
use telegate_frame::Vin;
use telegate_kafka::LogWriter;
use telegate_policy::{Keyring, StateKey};

/// Through which channel a change was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Channel {
    App,
    HeadUnit,
    CallCentre,
    Api,
    /// The privacy office's web console (`crate::console`).
    Console,
}

/// What a ledger entry records; its kebab-case name is the `action` field on the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[derive(strum::IntoStaticStr)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Action {
    Consent,
    Objection,
    Restriction,
    Activation,
    CallConsent,
    Settings,
    Block,
    Erase,
    /// An access request answered: the vehicle's export was handed out.
    Export,
}

/// One ledger record, as JSON on the topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub subject_hash: String,
    pub key_id: String,
    pub action: Action,
    /// The purpose, feature or call id the change concerns, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// The new value (e.g. `true` for granted), as the action defines it.
    pub value: serde_json::Value,
    /// From when the change applies (capture-time axis), UTC ms.
    pub effective_at_ms: i64,
    pub recorded_at_ms: i64,
    pub channel: Channel,
    /// The version of the text the person agreed to or was shown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text_version: String,
    /// Who made the change (an operator id, "vehicle", "data-subject").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor: String,
    /// Why, in the operator's words: the case or ticket number the console requires.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A change to record, before the ledger adds the subject hash and times.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub action: Action,
    pub target: &'a str,
    pub value: serde_json::Value,
    pub effective_at_ms: i64,
    pub channel: Channel,
    pub text_version: &'a str,
    pub actor: &'a str,
    pub reason: &'a str,
}

#[derive(Debug, Clone)]
pub struct Ledger {
    writer: LogWriter,
    topic: String,
    keys: Keyring,
    /// The console's copy of the ledger, which learns of this instance's entries at once.
    index: Option<std::sync::Arc<crate::console::timeline::LedgerIndex>>,
}

impl Ledger {
    pub fn new(writer: LogWriter, topic: String, keys: Keyring) -> Self {
        Self {
            writer,
            topic,
            keys,
            index: None,
        }
    }

    /// Adds every entry this ledger appends to `index` as soon as Kafka has it.
    pub fn with_index(self, index: std::sync::Arc<crate::console::timeline::LedgerIndex>) -> Self {
        Self {
            index: Some(index),
            ..self
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The keyed hash the ledger files a vehicle under: its state key, as on
    /// `telegate.consent-state`, stable across pseudonym key rotations.
    pub fn subject_hash(&self, vin: &Vin) -> String {
        self.keys.state().key_of(vin).to_hex()
    }

    /// Appends one entry and returns once Kafka has it.
    pub async fn append(&self, vin: &Vin, change: Change<'_>) -> anyhow::Result<LedgerEntry> {
        self.append_at(&self.keys.state().key_of(vin), change).await
    }

    /// Appends one entry for the vehicle whose state key is `key`.
    pub async fn append_at(
        &self,
        key: &StateKey,
        change: Change<'_>,
    ) -> anyhow::Result<LedgerEntry> {
        let entry = LedgerEntry {
            subject_hash: key.to_hex(),
            key_id: format!("index-{}", self.keys.state().fingerprint()),
            action: change.action,
            target: change.target.to_owned(),
            value: change.value,
            effective_at_ms: change.effective_at_ms,
            recorded_at_ms: telegate_frame::now_ms(),
            channel: change.channel,
            text_version: change.text_version.to_owned(),
            actor: change.actor.to_owned(),
            reason: change.reason.to_owned(),
        };
        let value = serde_json::to_vec(&entry)?;
        self.writer
            .put(
                &self.topic,
                Some(entry.subject_hash.as_bytes()),
                Some(&value),
            )
            .await?;
        if let Some(index) = &self.index {
            index.add(entry.clone());
        }
        Ok(entry)
    }
}
