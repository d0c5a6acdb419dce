//! kia-connect: the service cases of the Kia Connect notice [004].

use crate::check::{Vehicle, Want, dropped, fwd, rows_of, run};
use crate::fixtures::{HOUR, KIA, OTHER, dtc, gis, location, normal, offline_mode, sent, status};
use telegate_frame::pb::vehicle_frame::Body;
use telegate_policy::DropReason as R;
use telegate_policy::Outcome;

/// What a Kia status frame gets besides product improvement's share.
fn kia_status(product_insights: Want) -> Vec<(&'static str, Want)> {
    vec![
        ("vehicle-status", fwd("vin", "contract", "not-required")),
        ("trip-log", fwd("pseudonym", "contract", "not-required")),
        ("product-insights", product_insights),
        // Only the listed status fields [004 L210].
        (
            "hv-battery-alert",
            fwd("vin", "legitimate-interest", "not-required").only(&[
                "status.hvBattery",
                "status.fuelLevelPct",
                "status.ignition",
            ]),
        ),
        ("idle-alert", dropped(R::ActivationMissing)),
    ]
}

/// What a Kia position gets besides product improvement's and the alerts' shares.
fn kia_position(product_insights: Want, geofence: Want, speed: Want) -> Vec<(&'static str, Want)> {
    vec![
        ("product-insights", product_insights),
        ("geofence-alert", geofence),
        ("speed-alert", speed),
        ("valet-alert", dropped(R::ActivationMissing)),
        ("idle-alert", dropped(R::ActivationMissing)),
        ("trip-log", fwd("pseudonym", "contract", "not-required")),
        // GPS position only [004 L239].
        (
            "live-improvement",
            fwd("pseudonym", "legitimate-interest", "not-required")
                .only(&["location.latDeg", "location.lonDeg"]),
        ),
    ]
}

#[test]
fn kia_connect() {
    let row = rows_of(&KIA);
    let new = Vehicle::default;
    let status = |odo| Body::Status(status(odo));
    let off = || dropped(R::ActivationMissing);
    let alert = || fwd("vin", "contract", "granted");
    // Offline mode from 1 s to 2 s.
    let was_offline = || new().settings(1_000, offline_mode).settings(2_000, normal);
    // The product-improvement toggle needs GIS [004 L216].
    let gis_and_consent = || {
        let v = new().settings(500, gis(true));
        v.consent("product-improvement", 2_000, true)
    };
    // Speed alert was deactivated after the first position: the stricter state wins for both.
    let alerts = || {
        let v = new().activation("geofence-alert", 0, true);
        v.activation("speed-alert", 0, true)
            .activation("speed-alert", 2_000, false)
    };
    let coarse = fwd("anonymous", "consent", "granted")
        .only(&[
            "location.latDeg",
            "location.lonDeg",
            "location.speedKmh",
            "location.headingDeg",
            "location.accuracyM",
        ])
        .grid(1000.0)
        .time_to(HOUR);
    let no_gis = || dropped(R::RequirementOff);
    run(vec![
        row(
            "status: app [004 L112-L127] by VIN, trips [004 L106-L110] by pseudonym",
            new(),
            sent(1, 0, status(10.0)),
            kia_status(no_gis()),
        ),
        row(
            "status captured offline, sent after reconnect: nothing captured while offline [004 L462]",
            was_offline(),
            sent(5, 1_600, status(11.0)),
            vec![("vehicle-status", Want::NoVerdict), ("trip-log", Want::NoVerdict)],
        )
        .outcome(Outcome::Offline),
        row(
            "position captured offline: in particular no GPS data [004 L462]",
            was_offline(),
            sent(4, 1_500, location(48.8, 9.1)),
            vec![("trip-log", Want::NoVerdict), ("live-improvement", Want::NoVerdict)],
        )
        .outcome(Outcome::Offline),
        row(
            "status after offline mode ended: the services work again",
            was_offline(),
            sent(6, 4_000, status(12.0)),
            kia_status(no_gis()),
        ),
        row(
            "product improvement: GIS on, consent not yet given [004 L216, L220]",
            gis_and_consent(),
            sent(2, 1_000, status(1.0)),
            kia_status(dropped(R::ConsentMissing)),
        ),
        row(
            "product improvement with consent and GIS: anonymous, 1 km grid, hour [004 L216]",
            gis_and_consent(),
            sent(3, 3_000, location(48.77581, 9.18293)),
            kia_position(coarse, off(), off()),
        ),
        row(
            "product improvement: GIS off [004 L216]",
            gis_and_consent().settings(4_000, gis(false)),
            sent(5, 5_000, status(2.0)),
            kia_status(no_gis()),
        ),
        row(
            "product improvement: consent withdrawn after capture [004 L216]",
            gis_and_consent().consent("product-improvement", 4_000, false),
            sent(4, 3_000, status(2.0)),
            kia_status(dropped(R::ConsentWithdrawn)),
        ),
        row(
            "alerts only while activated [004 L320, L326]: speed alert deactivated since capture",
            alerts(),
            sent(1, 1_000, location(48.8, 9.1)),
            kia_position(no_gis(), alert(), off()),
        ),
        row(
            "alerts: the second position of the activated VIN [004 L320, L326]",
            alerts(),
            sent(2, 3_000, location(48.81, 9.11)),
            kia_position(no_gis(), alert(), off()),
        ),
        row(
            "alerts: none for a vehicle that never activated them [004 L320]",
            new(),
            sent(1, 1_000, location(48.8, 9.1)).from(OTHER),
            kia_position(no_gis(), off(), off()),
        ),
        row(
            "DTC scan at ignition [004 L135-L139]: DTC scans stay apart from the OTA purpose",
            alerts(),
            sent(3, 4_000, dtc()),
            vec![
                ("vehicle-diagnostics", fwd("vin", "contract", "not-required")),
                ("ota-update", Want::NoVerdict),
                ("product-insights", no_gis()),
            ],
        ),
    ]);
}
