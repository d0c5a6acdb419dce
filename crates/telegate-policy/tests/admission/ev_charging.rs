//! ev-charging: the service cases of the charging notice [003].

use crate::check::{Vehicle, dropped, fwd, rows_of, run};
use crate::fixtures::{EV, OTHER, sent, session};
use telegate_policy::DropReason as R;

#[test]
fn ev_charging() {
    let row = rows_of(&EV);
    // Transactions: legal obligation [003 L73, L97]; they carry no position [003 L146].
    let transaction = || {
        fwd("pseudonym", "legal-obligation", "not-required")
            .only(&[
                "charging.sessionId",
                "charging.phase",
                "charging.energyKwh",
                "charging.evseId",
            ])
            .no_location()
    };
    let position = || {
        fwd("pseudonym", "consent", "granted").only(&[
            "charging.sessionId",
            "charging.phase",
            "charging.location",
        ])
    };
    let consenting = || Vehicle::default().consent("charging-location", 0, true);
    run(vec![
        row(
            "position with clear consent [003 L146]",
            consenting(),
            sent(1, 1_000, session("s-1")),
            vec![
                ("charging-sessions", transaction()),
                ("charging-locations", position()),
            ],
        ),
        row(
            "only the consenting vehicle's position [003 L146]",
            Vehicle::default(),
            sent(1, 1_000, session("s-2")).from(OTHER),
            vec![
                ("charging-sessions", transaction()),
                ("charging-locations", dropped(R::ConsentMissing)),
            ],
        ),
        row(
            "consent withdrawn in the settings since capture [003 L148]",
            consenting().consent("charging-location", 2_000, false),
            sent(2, 1_000, session("s-3")),
            vec![
                ("charging-sessions", transaction()),
                ("charging-locations", dropped(R::ConsentWithdrawn)),
            ],
        ),
    ]);
}
