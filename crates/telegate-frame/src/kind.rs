//! Frame kinds and the MQTT topic layout `/tenants/{VIN}/v1/{kind}`.

use crate::pb::vehicle_frame::Body;

/// The closed set of frame kinds, one per `VehicleFrame.body` variant; each is named by its
/// kebab-case name, the topic segment and label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[derive(strum::EnumCount, strum::VariantArray)]
#[derive(strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "kebab-case")]
pub enum FrameKind {
    Status,
    Diagnostics,
    Location,
    Privacy,
    Breakdown,
    Charging,
    Software,
}

impl FrameKind {
    /// The topic segment and label value: `status`, `diagnostics`, …
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }

    /// A dense index, for per-kind tables of [`strum::EnumCount::COUNT`] entries.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn of_body(body: &Body) -> Self {
        match body {
            Body::Status(_) => FrameKind::Status,
            Body::Diagnostics(_) => FrameKind::Diagnostics,
            Body::Location(_) => FrameKind::Location,
            Body::Privacy(_) => FrameKind::Privacy,
            Body::Breakdown(_) => FrameKind::Breakdown,
            Body::Charging(_) => FrameKind::Charging,
            Body::Software(_) => FrameKind::Software,
        }
    }
}

impl std::fmt::Display for FrameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The MQTT filter telegate subscribes to for vehicle frames.
pub const VEHICLE_TOPIC_FILTER: &str = "/tenants/+/v1/+";

/// The parts of a vehicle topic. `vin` is the raw segment, not yet validated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VehicleTopic<'a> {
    pub vin: &'a str,
    pub kind: &'a str,
}

impl std::fmt::Debug for VehicleTopic<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VehicleTopic")
            .field("vin", &"<redacted>")
            .field("kind", &self.kind)
            .finish()
    }
}

impl<'a> VehicleTopic<'a> {
    /// Splits `/tenants/{vin}/v1/{kind}`; `None` when the topic has another shape.
    pub fn parse(topic: &'a str) -> Option<Self> {
        let rest = topic.strip_prefix("/tenants/")?;
        let (vin, rest) = rest.split_once('/')?;
        let kind = rest.strip_prefix("v1/")?;
        if vin.is_empty() || kind.is_empty() || kind.contains('/') {
            return None;
        }
        Some(Self { vin, kind })
    }
}

/// `/tenants/{vin}/v1/{kind}` for a vehicle frame.
pub fn vehicle_topic(vin: &str, kind: FrameKind) -> String {
    format!("/tenants/{vin}/v1/{}", kind.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::{EnumCount, VariantArray};

    #[test]
    fn topics_parse_and_reject() {
        let t = VehicleTopic::parse("/tenants/WP0ZZZ99ZTS392124/v1/status").expect("valid");
        assert_eq!((t.vin, t.kind), ("WP0ZZZ99ZTS392124", "status"));
        for bad in [
            "tenants/X/v1/status",
            "/tenants//v1/status",
            "/tenants/X/v2/status",
            "/tenants/X/v1/",
            "/tenants/X/v1/status/extra",
            "/tenants/X",
        ] {
            assert!(VehicleTopic::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn kinds_round_trip() {
        for &k in FrameKind::VARIANTS {
            assert_eq!(FrameKind::parse(k.as_str()), Some(k));
            assert_eq!(FrameKind::VARIANTS[k.index()], k);
        }
        assert_eq!(FrameKind::parse("receipt"), None);
    }

    /// The labels are topic segments and metric labels: pinned, in declaration order (the
    /// order is the index of per-kind tables).
    #[test]
    fn labels_are_pinned() {
        let pinned = [
            (FrameKind::Status, "status"),
            (FrameKind::Diagnostics, "diagnostics"),
            (FrameKind::Location, "location"),
            (FrameKind::Privacy, "privacy"),
            (FrameKind::Breakdown, "breakdown"),
            (FrameKind::Charging, "charging"),
            (FrameKind::Software, "software"),
        ];
        assert_eq!(pinned.len(), FrameKind::COUNT);
        for (i, (k, label)) in pinned.into_iter().enumerate() {
            assert_eq!(k.as_str(), label);
            assert_eq!(k.to_string(), label);
            assert_eq!(k.index(), i);
            assert_eq!(FrameKind::VARIANTS[i], k);
        }
        assert_eq!(FrameKind::parse("Status"), None);
    }
}
