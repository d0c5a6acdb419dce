//! The topic rules: a vehicle publishes only under `/tenants/{its VIN}/` and subscribes only
//! to filters that match one of the platform's topics for it. Anything else matches nothing.

use rumqttc::mqttbytes::{matches, valid_filter};
use telegate_frame::Vin;

const PREFIX: &[u8] = b"/tenants/";

/// The topic the platform's requests to a vehicle are published on.
pub fn request_topic(vin: &Vin) -> String {
    format!("/tenants/{}/v1/request", vin.expose())
}

/// The VIN whose prefix a topic (or filter) is under, if its second level is a valid VIN.
pub fn named_vin(topic: &[u8]) -> Option<Vin> {
    let rest = topic.strip_prefix(PREFIX)?;
    let end = rest.iter().position(|&b| b == b'/')?;
    Vin::parse(std::str::from_utf8(&rest[..end]).ok()?).ok()
}

/// Whether `vin` may publish to `topic`: only under its own prefix.
pub fn may_publish(vin: &Vin, topic: &[u8]) -> bool {
    topic
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_prefix(vin.expose().as_bytes()))
        .is_some_and(|rest| rest.first() == Some(&b'/'))
}

/// Whether `vin` may hold `filter`: a valid filter that matches one of the platform's
/// topics for it. `#` is granted and delivers only the vehicle's own requests; a shared
/// subscription is not offered.
pub fn may_subscribe(vin: &Vin, filter: &str) -> bool {
    valid_filter(filter) && !filter.starts_with("$share/") && matches(&request_topic(vin), filter)
}

/// Whether a filter names one topic (no wildcards): only such a filter can bind an
/// anonymous connection to a vehicle.
pub fn is_concrete(filter: &str) -> bool {
    !filter.contains(['+', '#'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vin(s: &str) -> Vin {
        Vin::parse(s).expect("valid VIN")
    }

    const A: &str = "WP0ZZZ99ZTS392124";
    const B: &str = "KNAZZZ99ZTS392124";

    #[test]
    fn a_vehicle_publishes_only_under_its_own_prefix() {
        let a = vin(A);
        assert!(may_publish(
            &a,
            format!("/tenants/{A}/v1/status").as_bytes()
        ));
        assert!(may_publish(
            &a,
            format!("/tenants/{A}/v2/anything").as_bytes()
        ));
        for topic in [
            format!("/tenants/{B}/v1/status"),
            format!("/tenants/{A}X/v1/status"),
            format!("/tenants/{A}"),
            format!("tenants/{A}/v1/status"),
            "/tenants/+/v1/status".to_owned(),
            "#".to_owned(),
        ] {
            assert!(!may_publish(&a, topic.as_bytes()), "{topic}");
        }
    }

    #[test]
    fn subscriptions_match_only_the_vehicles_own_platform_topics() {
        let a = vin(A);
        for granted in [
            format!("/tenants/{A}/v1/request"),
            format!("/tenants/{A}/#"),
            format!("/tenants/{A}/v1/+"),
            "#".to_owned(),
            "/tenants/+/v1/request".to_owned(),
        ] {
            assert!(may_subscribe(&a, &granted), "{granted}");
        }
        for refused in [
            format!("/tenants/{B}/v1/request"),
            format!("/tenants/{B}/#"),
            format!("/tenants/{A}/v1/status"),
            "/tenants/+/v1/status".to_owned(),
            "$share/g/#".to_owned(),
            "/tenants/#/x".to_owned(),
            String::new(),
        ] {
            assert!(!may_subscribe(&a, &refused), "{refused}");
        }
    }

    #[test]
    fn the_named_vin_is_the_second_level() {
        assert_eq!(
            named_vin(format!("/tenants/{A}/v1/status").as_bytes()),
            Some(vin(A))
        );
        assert_eq!(named_vin(b"/tenants/NOTAVIN/v1/status"), None);
        assert_eq!(named_vin(format!("/tenants/{A}").as_bytes()), None);
        assert!(is_concrete("/tenants/x/v1/request"));
        assert!(!is_concrete("/tenants/+/v1/request"));
    }
}
