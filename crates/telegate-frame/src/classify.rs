//! Which data categories a frame carries. Policy grants purposes categories, not kinds, so
//! that a breakdown snapshot's location is treated as location wherever it travels.

use crate::pb::vehicle_frame::Body;
use crate::validate::Frame;
use strum::VariantArray;

/// The closed set of data categories (the notices' "Kennungen", "Zustandsdaten", …); each is
/// named by its kebab-case name, as packs write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[derive(strum::EnumCount, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum DataCategory {
    /// The VIN and anything else that identifies the vehicle.
    Identification,
    /// Component condition and usage: odometer, levels, openings, batteries.
    Status,
    /// Fault codes (analysis data).
    Diagnostics,
    /// Position and movement.
    Location,
    /// The driver's privacy settings.
    Settings,
    /// A breakdown call's metadata and consent scopes.
    Breakdown,
    /// Charging sessions.
    Charging,
    /// Software, update and version state.
    Software,
}

impl DataCategory {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A small set of categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Categories(u16);

impl Categories {
    pub fn insert(&mut self, c: DataCategory) {
        self.0 |= 1 << c as u16;
    }
    pub fn contains(self, c: DataCategory) -> bool {
        self.0 & (1 << c as u16) != 0
    }
    pub fn iter(self) -> impl Iterator<Item = DataCategory> {
        DataCategory::VARIANTS
            .iter()
            .copied()
            .filter(move |c| self.contains(*c))
    }
}

impl FromIterator<DataCategory> for Categories {
    fn from_iter<I: IntoIterator<Item = DataCategory>>(iter: I) -> Self {
        let mut set = Categories::default();
        iter.into_iter().for_each(|c| set.insert(c));
        set
    }
}

/// The categories present in a validated frame.
pub fn classify(frame: &Frame) -> Categories {
    let mut set = Categories::default();
    set.insert(DataCategory::Identification);
    match frame.body() {
        Body::Status(_) => set.insert(DataCategory::Status),
        Body::Diagnostics(_) => set.insert(DataCategory::Diagnostics),
        Body::Location(_) => set.insert(DataCategory::Location),
        Body::Privacy(_) => set.insert(DataCategory::Settings),
        Body::Breakdown(b) => {
            set.insert(DataCategory::Breakdown);
            if let Some(snap) = &b.snapshot {
                if snap.status.is_some() {
                    set.insert(DataCategory::Status);
                }
                if !snap.dtcs.is_empty() {
                    set.insert(DataCategory::Diagnostics);
                }
                if snap.location.is_some() {
                    set.insert(DataCategory::Location);
                }
            }
        }
        Body::Charging(c) => {
            set.insert(DataCategory::Charging);
            if c.location.is_some() {
                set.insert(DataCategory::Location);
            }
        }
        Body::Software(_) => set.insert(DataCategory::Software),
    }
    set
}

#[cfg(test)]
mod tests {
    use super::{Categories, DataCategory};
    use strum::{EnumCount, VariantArray};

    /// The labels are what packs name under `categories`: pinned, in declaration order.
    #[test]
    fn labels_are_pinned() {
        let pinned = [
            (DataCategory::Identification, "identification"),
            (DataCategory::Status, "status"),
            (DataCategory::Diagnostics, "diagnostics"),
            (DataCategory::Location, "location"),
            (DataCategory::Settings, "settings"),
            (DataCategory::Breakdown, "breakdown"),
            (DataCategory::Charging, "charging"),
            (DataCategory::Software, "software"),
        ];
        assert_eq!(pinned.len(), DataCategory::COUNT);
        for (i, (c, label)) in pinned.into_iter().enumerate() {
            assert_eq!(c.as_str(), label);
            assert_eq!(DataCategory::VARIANTS[i], c);
        }
        let all: Categories = pinned.iter().map(|(c, _)| *c).collect();
        assert!(all.iter().eq(pinned.iter().map(|(c, _)| *c)));
    }
}
