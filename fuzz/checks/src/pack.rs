//! Policy pack loading (`telegate serve --policy`, `telegate policy check|explain`): TOML in,
//! a validated pack or every error in it out.

use crate::fixtures::{CAPTURED_AT_MS, FRAMES, KEYS, VALID_FRAMES, secret};
use telegate_policy::{Pack, SubjectRecord, admit, check, explain};

/// Checks that
/// - a pack either loads or names at least one error, and its errors print;
/// - a pack that loads can be printed (`policy check`), lists its topics, takes a topic
///   namespace, and admits and explains a valid frame (one kind, picked by the input's length)
///   without panicking, every record going to one of its topics.
pub fn pack(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let pack = match Pack::from_toml(text) {
        Ok(pack) => pack,
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a refused pack names no error");
            let _ = errors.to_string();
            return;
        }
    };
    let _ = check(&pack);
    let topics = pack.topics();
    let namespaced = pack.clone().with_topic_namespace("fuzz.");
    assert_eq!(namespaced.topics().len(), topics.len());
    let which = data.len() % VALID_FRAMES.len();
    let mut record = SubjectRecord::default();
    let admission = admit(
        &pack,
        &pack.label(),
        &KEYS,
        &VALID_FRAMES[which],
        &mut record,
        0,
        secret,
    );
    for r in &admission.records {
        assert!(
            topics.iter().any(|t| t.name == r.topic),
            "a record for {}, which is not among the pack's topics",
            r.topic
        );
    }
    explain(&pack, FRAMES[which].1, None, Some(CAPTURED_AT_MS))
        .expect("a valid frame can be explained under any valid pack");
}
