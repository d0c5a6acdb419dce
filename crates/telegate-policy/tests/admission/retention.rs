//! How long each service topic keeps its records, as the notices say.

use crate::fixtures::{EV, KIA, PORSCHE};
use std::time::Duration;
use telegate_policy::Pack;

#[test]
fn topics_keep_records_as_long_as_the_notices_say() {
    let days = |d: u64| Duration::from_secs(d * 86_400);
    let retention = |pack: &Pack, service: &str| {
        let topic = format!("telegate.{service}");
        let spec = pack.topics().into_iter().find(|t| t.name == topic);
        spec.unwrap_or_else(|| panic!("{topic} exists")).retention
    };
    for (pack, service, want, cite) in [
        (&*PORSCHE, "breakdown-call", days(7), "[002 L18]"),
        (&*PORSCHE, "breakdown-dealer", days(7), "[002 L18]"),
        (&*KIA, "hv-battery-alert", days(90), "[004 L214]"),
        (&*KIA, "live-improvement", days(93), "[004 L239]"),
        (&*KIA, "product-insights", days(7), "[004 L216]"),
        (
            &*EV,
            "charging-sessions",
            days(3653),
            "transactions: 10 years [003 L97]",
        ),
    ] {
        assert_eq!(
            retention(pack, service),
            want,
            "{} {service}: {cite}",
            pack.id
        );
    }
    // At most 30 years from creation [002 L8] (years of 365.25 days).
    let smart = retention(&PORSCHE, "smart-service");
    assert!(smart <= Duration::from_secs(30 * 31_557_600), "{smart:?}");
}
