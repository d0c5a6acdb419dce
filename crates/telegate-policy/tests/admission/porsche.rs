//! porsche-connect: the service cases of the Porsche Connect notice [002].

use crate::check::{Vehicle, Want, dropped, fwd, rows_of, run};
use crate::fixtures::{
    DAY, HOUR, PORSCHE, breakdown, dtc, location, normal, private_mode, sent, software, status,
    with_location_off, without_location_off,
};
use telegate_frame::pb::vehicle_frame::Body;
use telegate_policy::DropReason as R;
use telegate_policy::Outcome;

#[test]
fn porsche_connect() {
    let row = rows_of(&PORSCHE);
    let new = Vehicle::default;
    // 30-year topic: pseudonym key, VIN sealed under the vehicle's own key.
    let smart = || fwd("sealed", "contract", "not-required");
    let insights = || fwd("anonymous", "legitimate-interest", "not-required").time_to(HOUR);
    let assistance = || fwd("vin", "consent", "granted");
    let dealer = || {
        assistance()
            .only(&[
                "breakdown.callId",
                "breakdown.trigger",
                "breakdown.consent",
                "breakdown.snapshot.status",
                "breakdown.snapshot.dtcs",
            ])
            .no_location()
    };
    run(vec![
        row(
            "Smart Service by contract [002 L5, L7]; product development anonymous [002 L8]",
            new(),
            sent(1, 0, Body::Status(status(100.0))),
            vec![("smart-service", smart()), ("product-insights", insights())],
        ),
        row(
            "private mode: the online functions stop [002 L11]",
            new().settings(1_000, private_mode),
            sent(3, 2_000, Body::Status(status(101.0))),
            vec![
                ("smart-service", dropped(R::PrivateMode)),
                ("product-insights", dropped(R::PrivateMode)),
            ],
        ),
        row(
            "private mode off again: the DTC scan reaches both [002 L11]",
            new().settings(1_000, private_mode).settings(3_000, normal),
            sent(5, 4_000, dtc()),
            vec![("smart-service", smart()), ("product-insights", insights())],
        ),
        row(
            "group 'Dienste ohne Ortung' off: Smart Service stops [002 L10]",
            new().settings(0, without_location_off),
            sent(1, 1_000, Body::Status(status(100.0))),
            vec![
                ("smart-service", dropped(R::NonLocationServicesOff)),
                ("product-insights", dropped(R::NonLocationServicesOff)),
            ],
        ),
        row(
            "Smart Service lists no location data [002 L5]: positions go nowhere",
            new(),
            sent(1, 0, location(48.8, 9.1)),
            vec![
                ("smart-service", Want::NoVerdict),
                ("product-insights", Want::NoVerdict),
            ],
        )
        .outcome(Outcome::Unrouted),
        row(
            "breakdown, consent for Assistance only [002 L17]: assistance gets the position",
            new(),
            sent(1, 0, breakdown("call-a", Some((true, false)))),
            vec![
                ("breakdown-call", assistance()),
                ("breakdown-dealer", dropped(R::EventConsentMissing)),
            ],
        ),
        row(
            "breakdown, both consents [002 L14, L17]: the dealer copy has no position",
            new(),
            sent(2, 1_000, breakdown("call-b", Some((true, true)))),
            vec![
                ("breakdown-call", assistance()),
                ("breakdown-dealer", dealer()),
            ],
        ),
        row(
            "breakdown without consent in the call: nothing transferred [002 L17]",
            new(),
            sent(3, 2_000, breakdown("call-c", Some((false, false)))),
            vec![
                ("breakdown-call", dropped(R::EventConsentMissing)),
                ("breakdown-dealer", dropped(R::EventConsentMissing)),
            ],
        ),
        row(
            "group 'with location' off: no breakdown data at all [002 L20]",
            new().settings(3_000, with_location_off),
            sent(5, 4_000, breakdown("call-d", Some((true, true)))),
            vec![
                ("breakdown-call", dropped(R::LocationServicesOff)),
                ("breakdown-dealer", dropped(R::LocationServicesOff)),
            ],
        ),
        row(
            "breakdown placed in the app: the consent given there for the call counts [002 L17]",
            new().call_consent("call-e", true, false),
            sent(6, 5_000, breakdown("call-e", None)),
            vec![
                ("breakdown-call", assistance()),
                ("breakdown-dealer", dropped(R::EventConsentMissing)),
            ],
        ),
        row(
            "software state keeps the VIN [002 L26, L28]; the map provider gets no VIN [002 L43]",
            new(),
            sent(1, 0, software()),
            vec![
                ("software-update", fwd("vin", "contract", "not-required")),
                // Only the map version reaches the provider [002 L43].
                (
                    "map-update",
                    fwd("anonymous", "contract", "not-required")
                        .only(&["software.mapVersion"])
                        .time_to(DAY),
                ),
            ],
        ),
    ]);
}
