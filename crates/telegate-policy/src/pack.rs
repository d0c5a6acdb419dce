//! The policy pack: what an operator writes (TOML), validated into a [`Pack`] with every
//! error reported at once, each with its path.

use crate::fields::FieldMask;
use crate::ids::{PurposeId, ServiceId};
use crate::raw::RawPack;
use std::fmt;
use std::time::Duration;
use telegate_frame::{Categories, FrameKind};

/// GDPR Art. 6(1) basis of a purpose; the `telegate-legal-basis` header and what packs write,
/// in kebab-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[derive(strum::EnumCount, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum LegalBasis {
    Consent,
    Contract,
    LegitimateInterest,
    LegalObligation,
}

impl LegalBasis {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// How a service may see the subject; the `telegate-subject` header and what packs write, in
/// kebab-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[derive(strum::EnumCount, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum Identity {
    /// The raw VIN, as record key and in the payload.
    Vin,
    /// A keyed, purpose-specific HMAC of the VIN, as record key; no VIN in the payload.
    Pseudonym,
    /// No identifier at all: no key, no VIN.
    Anonymous,
    /// The pseudonym as key, and the VIN encrypted under the vehicle's own key in the
    /// payload: readable through the admin API's unseal until the vehicle's data is erased,
    /// unreadable forever after. For long-retention topics.
    Sealed,
}

impl Identity {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// How precisely a purpose may see position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LocationPrecision {
    Exact,
    /// Snapped to a grid of this many metres; altitude removed.
    Coarse {
        metres: f64,
    },
    /// No position at all.
    None,
}

/// What consent a purpose needs beyond its legal basis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentRule {
    /// None: the legal basis suffices.
    None,
    /// Standing consent for this purpose, recorded per vehicle (a toggle in the app).
    Standing,
    /// Consent given within the event itself, e.g. a breakdown call's scope.
    Event(EventScope),
    /// The feature is activated for this vehicle (e.g. a geofence alert set up in the app).
    Activation(String),
}

/// The consent scopes a breakdown call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventScope {
    Assistance,
    Dealer,
}

impl EventScope {
    pub fn as_str(self) -> &'static str {
        match self {
            EventScope::Assistance => "assistance",
            EventScope::Dealer => "dealer",
        }
    }
}

/// A vehicle setting that switches a purpose off; packs write it in kebab-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[derive(strum::EnumCount, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum OffCondition {
    /// Private mode is on (Porsche "Privatmodus").
    PrivateMode,
    /// The service group "with location" is off.
    LocationServicesOff,
    /// The service group "without location" is off.
    NonLocationServicesOff,
    /// The vehicle's toggle for this purpose's service id is explicitly off.
    ServiceToggleOff,
}

impl OffCondition {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// How a service's records are encoded; the `telegate-encoding` header and what packs write,
/// in kebab-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[derive(strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum RecordEncoding {
    /// Binary protobuf, `telegate.v1.VehicleFrame`.
    Protobuf,
    /// Its proto3-JSON mapping.
    Json,
    /// Binary protobuf in the Confluent wire format: magic byte, the id a schema registry gave
    /// the schema, message index, payload (`telegate_frame::schema`).
    ConfluentProtobuf,
}

impl RecordEncoding {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A service: one Kafka topic, fed by one or more purposes.
#[derive(Debug, Clone)]
pub struct Service {
    pub id: ServiceId,
    pub topic: String,
    pub encoding: RecordEncoding,
    /// The id a schema registry gave the record schema under `<topic>-value`: set by the
    /// gateway at start for `confluent-protobuf` services, before the first record.
    pub schema_id: Option<u32>,
    pub description: String,
    /// Topic retention if the pack sets one; it may not exceed any purpose's maximum.
    pub retention: Option<Duration>,
}

/// One purpose of one service: which frames it receives, on which basis, in which form, for
/// how long.
#[derive(Debug, Clone)]
pub struct Purpose {
    pub id: PurposeId,
    /// Position in [`Pack::purposes`], for per-purpose tables.
    pub index: usize,
    /// Index into [`Pack::services`].
    pub service: usize,
    pub legal_basis: LegalBasis,
    pub kinds: Vec<FrameKind>,
    /// The data categories this purpose may receive; other parts of a frame are removed.
    pub categories: Categories,
    pub fields: FieldMask,
    pub identity: Identity,
    pub location: LocationPrecision,
    /// Capture times are truncated to this granularity; `None` keeps them exact.
    pub time_precision: Option<Duration>,
    pub consent: ConsentRule,
    pub off_when: Vec<OffCondition>,
    /// Vehicle toggles that must be explicitly on (e.g. `gis`).
    pub requires: Vec<String>,
    /// Maximum retention.
    pub retention: Duration,
    pub recipients: Vec<String>,
    /// Direct marketing: an objection stops it whatever its legal basis (GDPR Art. 21(3)).
    pub direct_marketing: bool,
    /// At most one record per vehicle, frame kind and period: for anonymous statistics, a
    /// count of records is then a count of vehicles, so a minimum group size can hold.
    pub once_per_vehicle: Option<Duration>,
    /// Where the rules come from, e.g. `002 L5`.
    pub cite: Vec<String>,
    pub description: String,
}

/// A validated pack.
#[derive(Debug, Clone)]
pub struct Pack {
    pub id: String,
    pub version: String,
    pub title: String,
    pub services: Vec<Service>,
    pub purposes: Vec<Purpose>,
    /// How long `telegate.rejected` keeps its records.
    pub rejected_retention: Duration,
    /// Where rejected frames go: `telegate.rejected`, behind the namespace if one is set.
    pub rejected_topic: String,
    /// Per frame kind, the purposes that take it (indices into `purposes`).
    pub(crate) routes: [Vec<usize>; <FrameKind as strum::EnumCount>::COUNT],
}

/// The contract's topics that are not a service's (docs/contract.md); each gateway puts its
/// `kafka.topic_namespace` in front.
pub const REJECTED_TOPIC: &str = "telegate.rejected";
/// Compacted: every vehicle's settings, consents and key material.
pub const CONSENT_STATE_TOPIC: &str = "telegate.consent-state";
/// Append-only audit of every consent and settings change.
pub const CONSENT_LEDGER_TOPIC: &str = "telegate.consent-ledger";
/// Requests to vehicles (a breakdown snapshot, say) on their way from the gateway instance that
/// took them to the one that holds the vehicle's connection; keyed by state key, never a VIN.
pub const VEHICLE_REQUESTS_TOPIC: &str = "telegate.vehicle-requests";
/// How long `telegate.vehicle-requests` keeps a request: instances read it as it arrives and
/// a request older than a minute is not delivered, so ten minutes is plenty.
pub const VEHICLE_REQUESTS_RETENTION: Duration = Duration::from_secs(600);
pub(crate) const RESERVED_TOPICS: [&str; 4] = [
    REJECTED_TOPIC,
    CONSENT_STATE_TOPIC,
    CONSENT_LEDGER_TOPIC,
    VEHICLE_REQUESTS_TOPIC,
];

/// The topics a gateway keeps besides its pack's, behind `namespace`: the compacted consent
/// state, then the consent ledger, which keeps its records for `ledger_retention`.
pub fn consent_topics(namespace: &str, ledger_retention: Duration) -> [TopicSpec; 2] {
    [
        TopicSpec {
            name: format!("{namespace}{CONSENT_STATE_TOPIC}"),
            retention: Duration::ZERO,
            compact: true,
        },
        TopicSpec {
            name: format!("{namespace}{CONSENT_LEDGER_TOPIC}"),
            retention: ledger_retention,
            compact: false,
        },
    ]
}

/// The topic of requests to vehicles behind `namespace`, with its short retention.
pub fn vehicle_requests_topic(namespace: &str) -> TopicSpec {
    TopicSpec {
        name: format!("{namespace}{VEHICLE_REQUESTS_TOPIC}"),
        retention: VEHICLE_REQUESTS_RETENTION,
        compact: false,
    }
}

impl Pack {
    /// `{id}@{version}`: the `telegate-policy` header.
    pub fn label(&self) -> String {
        format!("{}@{}", self.id, self.version)
    }

    /// The purposes that take frames of `kind`, in pack order.
    pub fn routes(&self, kind: FrameKind) -> impl Iterator<Item = &Purpose> {
        self.routes[kind.index()].iter().map(|&i| &self.purposes[i])
    }

    pub fn service_of(&self, purpose: &Purpose) -> &Service {
        &self.services[purpose.service]
    }

    pub fn purpose(&self, id: &str) -> Option<&Purpose> {
        self.purposes.iter().find(|p| p.id.as_str() == id)
    }

    /// Every topic the pack writes to, with the retention it may have: no longer than the
    /// strictest purpose it carries.
    pub fn topics(&self) -> Vec<TopicSpec> {
        let mut specs: Vec<TopicSpec> = self
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| TopicSpec {
                name: s.topic.clone(),
                retention: s.retention.unwrap_or_else(|| {
                    self.purposes
                        .iter()
                        .filter(|p| p.service == i)
                        .map(|p| p.retention)
                        .min()
                        .unwrap_or(Duration::ZERO)
                }),
                compact: false,
            })
            .collect();
        specs.push(TopicSpec {
            name: self.rejected_topic.clone(),
            retention: self.rejected_retention,
            compact: false,
        });
        specs
    }

    /// Puts every topic behind `namespace` (e.g. `staging.`), for several deployments
    /// sharing one cluster. An empty namespace keeps the contract's names.
    pub fn with_topic_namespace(mut self, namespace: &str) -> Self {
        for s in &mut self.services {
            s.topic = format!("{namespace}{}", s.topic);
        }
        self.rejected_topic = format!("{namespace}{REJECTED_TOPIC}");
        self
    }

    /// Loads and validates a pack. Every problem is reported, not just the first.
    pub fn from_toml(text: &str) -> Result<Self, PackErrors> {
        let raw: RawPack = toml::from_str(text).map_err(|e| PackErrors(vec![syntax(text, e)]))?;
        raw.validate()
    }
}

/// A retention as packs write it: whole days as `30d`, anything else in humantime.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs > 0 && secs.is_multiple_of(86_400) && d.subsec_nanos() == 0 {
        format!("{}d", secs / 86_400)
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// A topic and the retention it must be created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub retention: Duration,
    /// A compacted topic (latest record per key, kept until a tombstone): `retention` is
    /// then ignored.
    pub compact: bool,
}

/// One problem in a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackError {
    /// Where, e.g. `purposes.component-status.kinds[1]`.
    pub path: String,
    pub message: String,
}

/// All problems found in a pack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PackErrors(pub Vec<PackError>);

impl fmt::Display for PackErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "policy pack has {} error(s):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {}: {}", e.path, e.message)?;
        }
        Ok(())
    }
}

fn syntax(text: &str, e: toml::de::Error) -> PackError {
    let path = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}")
        }
        None => "toml".to_owned(),
    };
    PackError {
        path,
        message: e.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{Identity, LegalBasis, OffCondition};
    use strum::{EnumCount, VariantArray};

    /// These are what packs write (`legal_basis`, `identity`, `off_when`) and the
    /// `telegate-legal-basis` and `telegate-subject` headers: pinned, in declaration order.
    #[test]
    fn labels_are_pinned() {
        let bases = [
            (LegalBasis::Consent, "consent"),
            (LegalBasis::Contract, "contract"),
            (LegalBasis::LegitimateInterest, "legitimate-interest"),
            (LegalBasis::LegalObligation, "legal-obligation"),
        ];
        assert_eq!(bases.len(), LegalBasis::COUNT);
        for (i, (b, label)) in bases.into_iter().enumerate() {
            assert_eq!(b.as_str(), label);
            assert_eq!(LegalBasis::VARIANTS[i], b);
        }
        let identities = [
            (Identity::Vin, "vin"),
            (Identity::Pseudonym, "pseudonym"),
            (Identity::Anonymous, "anonymous"),
            (Identity::Sealed, "sealed"),
        ];
        assert_eq!(identities.len(), Identity::COUNT);
        for (i, (id, label)) in identities.into_iter().enumerate() {
            assert_eq!(id.as_str(), label);
            assert_eq!(Identity::VARIANTS[i], id);
        }
        let conditions = [
            (OffCondition::PrivateMode, "private-mode"),
            (OffCondition::LocationServicesOff, "location-services-off"),
            (
                OffCondition::NonLocationServicesOff,
                "non-location-services-off",
            ),
            (OffCondition::ServiceToggleOff, "service-toggle-off"),
        ];
        assert_eq!(conditions.len(), OffCondition::COUNT);
        for (i, (c, label)) in conditions.into_iter().enumerate() {
            assert_eq!(c.as_str(), label);
            assert_eq!(OffCondition::VARIANTS[i], c);
        }
    }
}
