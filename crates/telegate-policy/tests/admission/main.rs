//! The seed notices' service cases for each shipped pack, as rows run through `admit` alone: no
//! broker, no clock. A row is a pack, the vehicle's state when the frame arrives (settings by
//! capture time, consents, activations), one frame, and what each service topic gets: a record
//! in its form (identity, fields, position and time precision, headers) or the reason it got
//! none. Citations such as [002 L11] name the notice line a case comes from
//! (../shared/seeds/original). After the table, the order rules of admission: offline mode is
//! judged first, settings count from their own capture time, and only forwarded purposes
//! record a contribution. tests/golden_packs.rs runs each pack once end to end.

mod bounded;
mod check;
mod ev_charging;
mod fixtures;
mod kia;
mod order;
mod porsche;
mod retention;
