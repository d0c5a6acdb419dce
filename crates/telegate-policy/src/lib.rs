//! telegate's policy core: policy packs (TOML, validated with every error at once), the
//! decision for each frame and purpose against the vehicle's settings and consents at
//! capture time, keyed pseudonyms, and shaping into the records each service may receive.
//! Pure like `telegate-frame`: no IO, no clock, no randomness, and never a dependency on
//! tokio, rdkafka, rumqttd, rumqttc or tonic (CI checks its dependency tree).

mod admit;
mod asyncapi;
mod at_rest;
mod decide;
mod explain;
mod fields;
mod ids;
mod keys;
mod pack;
mod raw;
mod shape;
mod state;

pub use admit::{Admission, Changes, Outcome, admit, recorded_settings};
pub use asyncapi::{FRAME_PROTO, RECORDS_PROTO, asyncapi};
pub use at_rest::{StateKey, StateKeys, UnwrapError, WrappedSecret};
pub use decide::{
    ConsentState, Decision, DropReason, Rule, Verdict, When, contribution_period, decide,
    decide_all, offline,
};
pub use explain::{
    ExplainError, check, consent as describe_consent, explain, location as describe_location,
};
pub use fields::FieldMask;
pub use ids::{KeyId, PurposeId, ServiceId};
pub use keys::{KeyError, Keyring, seal, sealed_subject, unseal};
pub use pack::{
    CONSENT_LEDGER_TOPIC, CONSENT_STATE_TOPIC, ConsentRule, EventScope, Identity, LegalBasis,
    LocationPrecision, OffCondition, Pack, PackError, PackErrors, Purpose, REJECTED_TOPIC,
    RecordEncoding, Service, TopicSpec, VEHICLE_REQUESTS_RETENTION, VEHICLE_REQUESTS_TOPIC,
    consent_topics, format_duration, vehicle_requests_topic,
};
pub use shape::{OutRecord, header, rejected_record, shape};
pub use state::{
    Account, CallConsent, MAX_SETTINGS_POINTS, Settings, StateFile, SubjectRecord, SubjectSecret,
    Timeline, factory_settings,
};
