//! The four reference services, with the topics and purposes telegate's packs give them.

use crate::cases::Cases;
use crate::insights::Insights;
use crate::maintenance::{Maintenance, Thresholds};
use crate::record::Record;
use crate::runner::{Output, Service};
use crate::trips::Trips;
use std::time::Duration;

/// Each is named by its kebab-case name (`smart-service`, …): a topic segment and a
/// command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[derive(strum::EnumCount, strum::VariantArray)]
#[derive(strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "kebab-case")]
pub enum Reference {
    SmartService,
    BreakdownCall,
    TripLog,
    ProductInsights,
}

const DAY: Duration = Duration::from_secs(86_400);

impl Reference {
    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }

    /// The topics it reads, behind `namespace`.
    pub fn inputs(self, namespace: &str) -> Vec<String> {
        let t = |s: &str| format!("{namespace}telegate.{s}");
        match self {
            // The dealer copy is its own topic, filled only with the dealer's consent.
            Reference::BreakdownCall => vec![t("breakdown-call"), t("breakdown-dealer")],
            r => vec![t(r.name())],
        }
    }

    /// Where its results go: `telegate.{service}.out`.
    pub fn output(self, namespace: &str) -> String {
        format!("{namespace}telegate.{}.out", self.name())
    }

    /// How long its results are kept: breakdown cases 7 days [002 L18]; the rest 90 days.
    pub fn output_retention(self) -> Duration {
        match self {
            Reference::BreakdownCall => 7 * DAY,
            _ => 90 * DAY,
        }
    }

    /// The purposes of the shipped packs that feed it.
    pub fn purposes(self) -> Vec<String> {
        let v: &[&str] = match self {
            Reference::SmartService => &["component-status"],
            Reference::BreakdownCall => &["breakdown-assistance", "breakdown-dealer-transfer"],
            Reference::TripLog => &["trip-log"],
            Reference::ProductInsights => &["product-improvement", "product-development"],
        };
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The service, with `purposes` accepted (the defaults above unless given) and the
    /// product-insights minimum group size `k`.
    pub fn build(self, purposes: Vec<String>, k: u64, trip_grace: Duration) -> Box<dyn Service> {
        match self {
            Reference::SmartService => Box::new(Maintenance::new(purposes, Thresholds::default())),
            Reference::BreakdownCall => Box::new(Cases::new(
                "breakdown-assistance",
                "breakdown-dealer-transfer",
                7 * DAY,
            )),
            Reference::TripLog => Box::new(Trips::new(purposes, trip_grace)),
            Reference::ProductInsights => Box::new(Insights::new(purposes, k)),
        }
    }
}

impl Service for Box<dyn Service> {
    fn purposes(&self) -> &[String] {
        (**self).purposes()
    }
    fn handle(&mut self, record: &Record, now_ms: i64) -> Vec<Output> {
        (**self).handle(record, now_ms)
    }
    fn tick(&mut self, now_ms: i64) -> Vec<Output> {
        (**self).tick(now_ms)
    }
    fn view(&self) -> serde_json::Value {
        (**self).view()
    }
}

#[cfg(test)]
mod tests {
    use super::Reference;
    use strum::{EnumCount, VariantArray};

    /// The names are topic segments and command-line values: pinned, in declaration order.
    #[test]
    fn names_are_pinned() {
        let pinned = [
            (Reference::SmartService, "smart-service"),
            (Reference::BreakdownCall, "breakdown-call"),
            (Reference::TripLog, "trip-log"),
            (Reference::ProductInsights, "product-insights"),
        ];
        assert_eq!(pinned.len(), Reference::COUNT);
        for (i, (r, name)) in pinned.into_iter().enumerate() {
            assert_eq!(r.name(), name);
            assert_eq!(Reference::parse(name), Some(r));
            assert_eq!(Reference::VARIANTS[i], r);
        }
        assert_eq!(Reference::parse("Smart-Service"), None);
        assert_eq!(Reference::parse(""), None);
    }
}
