//! The pack as written: TOML structures and their validation into a [`Pack`]. Every problem
//! is collected with its path; nothing stops at the first.

use crate::fields::FieldMask;
use crate::ids::{PurposeId, ServiceId, is_slug};
use crate::pack::{
    ConsentRule, EventScope, Identity, LegalBasis, LocationPrecision, OffCondition, Pack,
    PackError, PackErrors, Purpose, RESERVED_TOPICS, RecordEncoding, Service,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use strum::{EnumCount, VariantArray};
use telegate_frame::{Categories, DataCategory, FrameKind};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPack {
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
    retention: Option<String>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurpose {
    // Required fields default to empty so that every missing one is reported, not only the
    // first serde meets.
    #[serde(default)]
    service: String,
    #[serde(default)]
    legal_basis: String,
    #[serde(default)]
    kinds: Vec<String>,
    #[serde(default)]
    categories: Vec<String>,
    fields: Option<Vec<String>>,
    #[serde(default)]
    identity: String,
    location: Option<String>,
    time: Option<String>,
    consent: Option<String>,
    #[serde(default)]
    off_when: Vec<String>,
    #[serde(default)]
    requires: Vec<String>,
    #[serde(default)]
    retention: String,
    #[serde(default)]
    recipients: Vec<String>,
    #[serde(default)]
    direct_marketing: bool,
    once_per_vehicle: Option<String>,
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
        if found.is_none() && !value.is_empty() {
            let names: Vec<_> = all.iter().map(|v| name(*v)).collect();
            self.push(
                path,
                format!("{value:?} is not one of: {}", names.join(", ")),
            );
        }
        found
    }

    fn retention(&mut self, path: String, value: &str) -> Option<Duration> {
        if value.is_empty() {
            return None;
        }
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
    pub(crate) fn validate(self) -> Result<Pack, PackErrors> {
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
                None => Some(RecordEncoding::Protobuf),
                Some(e) => errs.one_of(
                    format!("{path}.encoding"),
                    e,
                    RecordEncoding::VARIANTS,
                    RecordEncoding::as_str,
                ),
            };
            let retention = raw
                .retention
                .as_deref()
                .and_then(|r| errs.retention(format!("{path}.retention"), r));
            services.push(Service {
                id: ServiceId::from(id.as_str()),
                topic,
                encoding: encoding.unwrap_or(RecordEncoding::Protobuf),
                schema_id: None,
                description: raw.description.clone(),
                retention,
            });
        }

        let mut purposes: Vec<Purpose> = Vec::new();
        for (id, raw) in &self.purposes {
            let path = format!("purposes.{id}");
            if !is_slug(id) {
                errs.push(&path, "purpose id must be a slug ([a-z0-9-], at most 64)");
            }
            for (field, value) in [
                ("service", &raw.service),
                ("legal_basis", &raw.legal_basis),
                ("identity", &raw.identity),
                ("retention", &raw.retention),
            ] {
                if value.is_empty() {
                    errs.push(format!("{path}.{field}"), "is required");
                }
            }
            if raw.categories.is_empty() {
                errs.push(
                    format!("{path}.categories"),
                    "is required: the data categories this purpose may receive",
                );
            }
            let service = services.iter().position(|s| s.id.as_str() == raw.service);
            if service.is_none() && !raw.service.is_empty() {
                errs.push(
                    format!("{path}.service"),
                    format!("no service {:?} is declared under [services]", raw.service),
                );
            }
            let legal_basis = errs.one_of(
                format!("{path}.legal_basis"),
                &raw.legal_basis,
                LegalBasis::VARIANTS,
                LegalBasis::as_str,
            );
            let identity = errs.one_of(
                format!("{path}.identity"),
                &raw.identity,
                Identity::VARIANTS,
                Identity::as_str,
            );
            let retention = errs.retention(format!("{path}.retention"), &raw.retention);
            if raw.kinds.is_empty() {
                errs.push(format!("{path}.kinds"), "a purpose needs at least one kind");
            }
            let mut kinds = Vec::new();
            for (i, k) in raw.kinds.iter().enumerate() {
                let kpath = format!("{path}.kinds[{i}]");
                let Some(kind) =
                    errs.one_of(kpath.clone(), k, FrameKind::VARIANTS, FrameKind::as_str)
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
            let rules = raw.rules(&path, &kinds, legal_basis, identity, &mut errs);
            let too_long = service
                .zip(retention)
                .and_then(|(svc, r)| services[svc].retention.filter(|t| *t > r).zip(Some(r)));
            if let Some((max, allowed)) = too_long {
                errs.push(
                    format!("services.{}.retention", raw.service),
                    format!(
                        "topic retention {} exceeds the {} that purpose {id} allows",
                        crate::pack::format_duration(max),
                        crate::pack::format_duration(allowed)
                    ),
                );
            }
            if let (Some(service), Some(legal_basis), Some(identity), Some(retention), Some(r)) =
                (service, legal_basis, identity, retention, rules)
            {
                purposes.push(Purpose {
                    id: PurposeId::from(id.as_str()),
                    index: purposes.len(),
                    service,
                    legal_basis,
                    kinds,
                    categories: r.categories,
                    fields: r.fields,
                    identity,
                    location: r.location,
                    time_precision: r.time_precision,
                    consent: r.consent,
                    off_when: r.off_when,
                    requires: raw.requires.clone(),
                    retention,
                    recipients: raw.recipients.clone(),
                    direct_marketing: raw.direct_marketing,
                    once_per_vehicle: r.once_per_vehicle,
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

        let mut routes: [Vec<usize>; FrameKind::COUNT] = Default::default();
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
            rejected_topic: crate::pack::REJECTED_TOPIC.to_owned(),
            routes,
        })
    }
}

/// The parts of a purpose beyond routing, parsed and cross-checked together.
struct Rules {
    once_per_vehicle: Option<Duration>,
    categories: Categories,
    fields: FieldMask,
    location: LocationPrecision,
    time_precision: Option<Duration>,
    consent: ConsentRule,
    off_when: Vec<OffCondition>,
}

/// The category a kind's body is; a purpose taking the kind must be allowed it.
fn primary_category(kind: FrameKind) -> DataCategory {
    match kind {
        FrameKind::Status => DataCategory::Status,
        FrameKind::Diagnostics => DataCategory::Diagnostics,
        FrameKind::Location => DataCategory::Location,
        FrameKind::Privacy => DataCategory::Settings,
        FrameKind::Breakdown => DataCategory::Breakdown,
        FrameKind::Charging => DataCategory::Charging,
        FrameKind::Software => DataCategory::Software,
    }
}

/// `"1km"`, `"500m"`.
fn parse_metres(s: &str) -> Option<f64> {
    let (n, scale) = if let Some(n) = s.strip_suffix("km") {
        (n, 1000.0)
    } else {
        (s.strip_suffix('m')?, 1.0)
    };
    n.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(|v| v * scale)
}

impl RawPurpose {
    fn rules(
        &self,
        path: &str,
        kinds: &[FrameKind],
        basis: Option<LegalBasis>,
        identity: Option<Identity>,
        errs: &mut Errors,
    ) -> Option<Rules> {
        let before = errs.0.len();
        let mut categories = Categories::default();
        for (i, c) in self.categories.iter().enumerate() {
            if let Some(c) = errs.one_of(
                format!("{path}.categories[{i}]"),
                c,
                DataCategory::VARIANTS,
                DataCategory::as_str,
            ) {
                categories.insert(c);
            }
        }
        for k in kinds {
            if !categories.contains(primary_category(*k)) {
                errs.push(
                    format!("{path}.categories"),
                    format!(
                        "takes {k} frames, so it must list the {} category",
                        primary_category(*k).as_str()
                    ),
                );
            }
        }
        let identifies = categories.contains(DataCategory::Identification);
        match identity {
            Some(Identity::Anonymous) if identifies => errs.push(
                format!("{path}.categories"),
                "an anonymous purpose cannot receive the identification category",
            ),
            Some(Identity::Vin | Identity::Pseudonym | Identity::Sealed) if !identifies => errs.push(
                format!("{path}.categories"),
                "a purpose that sees a VIN, pseudonym or sealed VIN must list the identification category",
            ),
            _ => {}
        }

        let fields = match &self.fields {
            None => FieldMask::all(),
            Some(paths) => FieldMask::compile(paths).unwrap_or_else(|bad| {
                for (i, msg) in bad {
                    errs.push(format!("{path}.fields[{i}]"), msg);
                }
                FieldMask::all()
            }),
        };

        let has_location = categories.contains(DataCategory::Location);
        let location = match (self.location.as_deref(), has_location) {
            (None, true) | (Some("exact"), true) => LocationPrecision::Exact,
            (None, false) | (Some("none"), false) => LocationPrecision::None,
            (Some("none"), true) => {
                errs.push(
                    format!("{path}.location"),
                    "location = \"none\" contradicts the location category: remove one",
                );
                LocationPrecision::None
            }
            (Some(other), true) => match parse_metres(other) {
                Some(metres) => LocationPrecision::Coarse { metres },
                None => {
                    errs.push(
                        format!("{path}.location"),
                        format!("{other:?} is not \"exact\", \"none\" or a precision such as \"1km\" or \"500m\""),
                    );
                    LocationPrecision::None
                }
            },
            (Some(_), false) => {
                errs.push(
                    format!("{path}.location"),
                    "a location precision needs the location category",
                );
                LocationPrecision::None
            }
        };

        let time_precision = match self.time.as_deref() {
            None | Some("exact") => None,
            Some(t) => errs.retention(format!("{path}.time"), t),
        };
        if identity == Some(Identity::Anonymous) {
            if location == LocationPrecision::Exact {
                errs.push(
                    format!("{path}.location"),
                    "anonymous output must coarsen location (e.g. \"1km\") or have none",
                );
            }
            if time_precision.is_none() {
                errs.push(
                    format!("{path}.time"),
                    "anonymous output must coarsen time (e.g. \"1h\")",
                );
            }
        }

        let consent = match self.consent.as_deref() {
            None | Some("none") => ConsentRule::None,
            Some("standing") => ConsentRule::Standing,
            Some("event:assistance") => ConsentRule::Event(EventScope::Assistance),
            Some("event:dealer") => ConsentRule::Event(EventScope::Dealer),
            Some(c) if c.starts_with("activation:") && is_slug(&c["activation:".len()..]) => {
                ConsentRule::Activation(c["activation:".len()..].to_owned())
            }
            Some(c) => {
                errs.push(
                    format!("{path}.consent"),
                    format!("{c:?} is not one of: none, standing, event:assistance, event:dealer, activation:<feature>"),
                );
                ConsentRule::None
            }
        };
        match (&consent, basis) {
            (ConsentRule::None, Some(LegalBasis::Consent)) => errs.push(
                format!("{path}.consent"),
                "legal_basis = \"consent\" needs a consent rule: standing, event:<scope> or activation:<feature>",
            ),
            (ConsentRule::Standing | ConsentRule::Event(_), Some(b)) if b != LegalBasis::Consent => errs.push(
                format!("{path}.consent"),
                format!("a consent rule of this kind needs legal_basis = \"consent\", not {:?}", b.as_str()),
            ),
            _ => {}
        }
        if matches!(consent, ConsentRule::Event(_)) && kinds != [FrameKind::Breakdown] {
            errs.push(
                format!("{path}.consent"),
                "event consent is carried by breakdown calls: kinds must be [\"breakdown\"]",
            );
        }

        let mut off_when = Vec::new();
        for (i, o) in self.off_when.iter().enumerate() {
            if let Some(o) = errs.one_of(
                format!("{path}.off_when[{i}]"),
                o,
                OffCondition::VARIANTS,
                OffCondition::as_str,
            ) {
                off_when.push(o);
            }
        }
        for (i, r) in self.requires.iter().enumerate() {
            if !is_slug(r) {
                errs.push(
                    format!("{path}.requires[{i}]"),
                    "a toggle name is a slug ([a-z0-9-])",
                );
            }
        }
        let once_per_vehicle = self
            .once_per_vehicle
            .as_deref()
            .and_then(|p| errs.retention(format!("{path}.once_per_vehicle"), p));
        (errs.0.len() == before).then_some(Rules {
            once_per_vehicle,
            categories,
            fields,
            location,
            time_precision,
            consent,
            off_when,
        })
    }
}
