//! The policy pack: what an operator writes (TOML), validated into a [`Pack`] with every
//! error reported at once, each with its path.

use crate::ids::{PurposeId, ServiceId, is_slug};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use telegate_frame::{FrameKind, PayloadFormat};

/// GDPR Art. 6(1) basis of a purpose; the `telegate-legal-basis` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegalBasis {
    Consent,
    Contract,
    LegitimateInterest,
    LegalObligation,
}

impl LegalBasis {
    const ALL: [LegalBasis; 4] = [
        LegalBasis::Consent,
        LegalBasis::Contract,
        LegalBasis::LegitimateInterest,
        LegalBasis::LegalObligation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LegalBasis::Consent => "consent",
            LegalBasis::Contract => "contract",
            LegalBasis::LegitimateInterest => "legitimate-interest",
            LegalBasis::LegalObligation => "legal-obligation",
        }
    }
}

/// How a service may see the subject; the `telegate-subject` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The raw VIN, as record key and in the payload.
    Vin,
    /// A keyed, purpose-specific HMAC of the VIN, as record key; no VIN in the payload.
    Pseudonym,
    /// No identifier at all: no key, no VIN.
    Anonymous,
}

impl Identity {
    const ALL: [Identity; 3] = [Identity::Vin, Identity::Pseudonym, Identity::Anonymous];

    pub fn as_str(self) -> &'static str {
        match self {
            Identity::Vin => "vin",
            Identity::Pseudonym => "pseudonym",
            Identity::Anonymous => "anonymous",
        }
    }
}

/// A service: one Kafka topic, fed by one or more purposes.
#[derive(Debug, Clone)]
pub struct Service {
    pub id: ServiceId,
    pub topic: String,
    pub encoding: PayloadFormat,
    pub description: String,
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
    pub identity: Identity,
    pub retention: Duration,
    /// Where the rule comes from, e.g. `seed 002 L5-L8`.
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
    /// Per frame kind, the purposes that take it (indices into `purposes`).
    routes: [Vec<usize>; FrameKind::ALL.len()],
}

/// Topics telegate writes that are not a service's.
pub const REJECTED_TOPIC: &str = "telegate.rejected";
const RESERVED_TOPICS: [&str; 3] = [
    REJECTED_TOPIC,
    "telegate.consent-state",
    "telegate.consent-ledger",
];

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
                retention: self
                    .purposes
                    .iter()
                    .filter(|p| p.service == i)
                    .map(|p| p.retention)
                    .min()
                    .unwrap_or(Duration::ZERO),
            })
            .collect();
        specs.push(TopicSpec {
            name: REJECTED_TOPIC.to_owned(),
            retention: self.rejected_retention,
        });
        specs
    }

    /// Loads and validates a pack. Every problem is reported, not just the first.
    pub fn from_toml(text: &str) -> Result<Self, PackErrors> {
        let raw: RawPack = toml::from_str(text).map_err(|e| PackErrors(vec![syntax(e)]))?;
        raw.validate()
    }
}

/// A topic and the retention it must be created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub retention: Duration,
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

fn syntax(e: toml::de::Error) -> PackError {
    let path = match e.span() {
        Some(span) => format!("toml bytes {}..{}", span.start, span.end),
        None => "toml".to_owned(),
    };
    PackError {
        path,
        message: e.message().to_owned(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPack {
    id: String,
    version: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    rejected: RawRejected,
    #[serde(default)]
    services: BTreeMap<String, RawService>,
    #[serde(default)]
    purposes: BTreeMap<String, RawPurpose>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRejected {
    retention: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    topic: Option<String>,
    encoding: Option<String>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurpose {
    service: String,
    legal_basis: String,
    kinds: Vec<String>,
    identity: String,
    retention: String,
    #[serde(default)]
    cite: Vec<String>,
    #[serde(default)]
    description: String,
}

/// Collects errors while validating.
#[derive(Default)]
struct Errors(Vec<PackError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(PackError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn one_of<T: Copy>(
        &mut self,
        path: String,
        value: &str,
        all: &[T],
        name: impl Fn(T) -> &'static str,
    ) -> Option<T> {
        let found = all.iter().copied().find(|v| name(*v) == value);
        if found.is_none() {
            let names: Vec<_> = all.iter().map(|v| name(*v)).collect();
            self.push(
                path,
                format!("{value:?} is not one of: {}", names.join(", ")),
            );
        }
        found
    }

    fn retention(&mut self, path: String, value: &str) -> Option<Duration> {
        match humantime::parse_duration(value) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.push(path, "retention must be longer than zero");
                None
            }
            Err(e) => {
                self.push(
                    path,
                    format!("{value:?} is not a duration such as \"7days\" or \"30years\": {e}"),
                );
                None
            }
        }
    }
}

fn is_topic_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 249
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl RawPack {
    fn validate(self) -> Result<Pack, PackErrors> {
        let mut errs = Errors::default();
        if !is_slug(&self.id) {
            errs.push("id", "pack id must be a slug ([a-z0-9-], at most 64)");
        }
        if self.version.trim().is_empty() {
            errs.push("version", "pack version must not be empty");
        }
        let rejected_retention = match &self.rejected.retention {
            Some(r) => errs
                .retention("rejected.retention".into(), r)
                .unwrap_or_default(),
            None => Duration::from_secs(7 * 24 * 3600),
        };

        let mut services = Vec::new();
        for (id, raw) in &self.services {
            let path = format!("services.{id}");
            if !is_slug(id) {
                errs.push(&path, "service id must be a slug ([a-z0-9-], at most 64)");
            }
            let topic = raw
                .topic
                .clone()
                .unwrap_or_else(|| format!("telegate.{id}"));
            if !is_topic_name(&topic) {
                errs.push(
                    format!("{path}.topic"),
                    "not a valid Kafka topic name ([a-zA-Z0-9._-], at most 249)",
                );
            }
            if RESERVED_TOPICS.contains(&topic.as_str()) {
                errs.push(
                    format!("{path}.topic"),
                    format!("{topic} is reserved for telegate"),
                );
            }
            if let Some(other) = services.iter().find(|s: &&Service| s.topic == topic) {
                errs.push(
                    format!("{path}.topic"),
                    format!("topic {topic} is already used by service {}", other.id),
                );
            }
            let encoding = match raw.encoding.as_deref() {
                None => Some(PayloadFormat::Protobuf),
                Some(e) => errs.one_of(
                    format!("{path}.encoding"),
                    e,
                    &[PayloadFormat::Protobuf, PayloadFormat::Json],
                    PayloadFormat::as_str,
                ),
            };
            services.push(Service {
                id: ServiceId::from(id.as_str()),
                topic,
                encoding: encoding.unwrap_or(PayloadFormat::Protobuf),
                description: raw.description.clone(),
            });
        }

        let mut purposes: Vec<Purpose> = Vec::new();
        for (id, raw) in &self.purposes {
            let path = format!("purposes.{id}");
            if !is_slug(id) {
                errs.push(&path, "purpose id must be a slug ([a-z0-9-], at most 64)");
            }
            let service = services.iter().position(|s| s.id.as_str() == raw.service);
            if service.is_none() {
                errs.push(
                    format!("{path}.service"),
                    format!("no service {:?} is declared under [services]", raw.service),
                );
            }
            let legal_basis = errs.one_of(
                format!("{path}.legal_basis"),
                &raw.legal_basis,
                &LegalBasis::ALL,
                LegalBasis::as_str,
            );
            let identity = errs.one_of(
                format!("{path}.identity"),
                &raw.identity,
                &Identity::ALL,
                Identity::as_str,
            );
            let retention = errs.retention(format!("{path}.retention"), &raw.retention);
            if raw.kinds.is_empty() {
                errs.push(format!("{path}.kinds"), "a purpose needs at least one kind");
            }
            let mut kinds = Vec::new();
            for (i, k) in raw.kinds.iter().enumerate() {
                let kpath = format!("{path}.kinds[{i}]");
                let Some(kind) = errs.one_of(kpath.clone(), k, &FrameKind::ALL, FrameKind::as_str)
                else {
                    continue;
                };
                if kinds.contains(&kind) {
                    errs.push(kpath, format!("{k} is listed twice"));
                    continue;
                }
                let taken = purposes
                    .iter()
                    .find(|p| Some(p.service) == service && p.kinds.contains(&kind));
                if let Some(other) = taken {
                    errs.push(
                        kpath,
                        format!(
                            "{k} frames already go to service {} through purpose {}: one \
                             purpose per kind and service",
                            raw.service, other.id
                        ),
                    );
                    continue;
                }
                kinds.push(kind);
            }
            if let (Some(service), Some(legal_basis), Some(identity), Some(retention)) =
                (service, legal_basis, identity, retention)
            {
                purposes.push(Purpose {
                    id: PurposeId::from(id.as_str()),
                    index: purposes.len(),
                    service,
                    legal_basis,
                    kinds,
                    identity,
                    retention,
                    cite: raw.cite.clone(),
                    description: raw.description.clone(),
                });
            }
        }
        for s in &services {
            if !self.purposes.values().any(|p| p.service == s.id.as_str()) {
                errs.push(
                    format!("services.{}", s.id),
                    "service has no purpose: nothing could ever reach it",
                );
            }
        }
        if !errs.0.is_empty() {
            return Err(PackErrors(errs.0));
        }

        let mut routes: [Vec<usize>; FrameKind::ALL.len()] = Default::default();
        for (i, p) in purposes.iter().enumerate() {
            for k in &p.kinds {
                routes[k.index()].push(i);
            }
        }
        Ok(Pack {
            id: self.id,
            version: self.version,
            title: self.title,
            services,
            purposes,
            rejected_retention,
            routes,
        })
    }
}
