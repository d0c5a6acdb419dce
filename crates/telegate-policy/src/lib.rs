//! telegate's policy core: policy packs (TOML, validated with every error at once), the
//! decision for each frame and purpose, keyed pseudonyms, and shaping into the records each
//! service may receive. Pure like `telegate-frame`: no IO, no clock, no randomness, and never
//! a dependency on tokio, rdkafka, rumqttd, rumqttc or tonic (CI checks its dependency tree).

mod decide;
mod ids;
mod keys;
mod pack;
mod shape;

pub use decide::{ConsentState, DropReason, NoConsents, SubjectState, Verdict, decide, decide_all};
pub use ids::{KeyId, PurposeId, ServiceId};
pub use keys::{KeyError, Keyring};
pub use pack::{
    Identity, LegalBasis, Pack, PackError, PackErrors, Purpose, REJECTED_TOPIC, Service, TopicSpec,
};
pub use shape::{OutRecord, header, rejected_record, shape};
