//! One vehicle's record on `telegate.consent-state`, as written and as read.
//!
//! Key: the vehicle's [`StateKey`], 32 hex digits. Value: the record's JSON without its
//! `secret`, plus
//! - `"format": 2`,
//! - `"index"`: the index key's fingerprint, so a gateway given another index key notices,
//! - `"wrapped_secret"`: `{"key_id", "sealed"}`, the vehicle's subject id and key, wrapped for
//!   this record under the wrapping key `key_id` (absent while the vehicle has no secret).
//!
//! No header. A tombstone (no value) erases the vehicle. Format 1, which this module still
//! reads in order to migrate it, was keyed by the raw VIN with the secret in the clear.

use serde_json::{Map, Value};
use telegate_frame::Vin;
use telegate_policy::{StateKey, StateKeys, SubjectRecord, UnwrapError, WrappedSecret};

const FORMAT: u64 = 2;

/// What one entry of the topic says.
#[derive(Debug)]
pub enum Read {
    /// A current record; `wrapped_under` names its wrapping key (None: no secret yet).
    Record {
        key: StateKey,
        record: SubjectRecord,
        wrapped_under: Option<String>,
    },
    Erased(StateKey),
    /// A format-1 record, keyed by the raw VIN: to rewrite under its state key.
    Legacy {
        vin: Vin,
        record: SubjectRecord,
    },
    /// A format-1 tombstone.
    LegacyErased(Vin),
    /// A record this gateway's keys cannot read; left on the topic untouched.
    Unreadable {
        key: StateKey,
        why: Unreadable,
    },
    /// Neither a state key nor a VIN, or a value that is not a record.
    Malformed(&'static str),
}

/// Why a record cannot be read with the key file at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// Keyed under another index key (its fingerprint).
    OtherIndex(String),
    Wrapping(UnwrapError),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OtherIndex(fp) => write!(f, "keyed under another index key (fingerprint {fp})"),
            Self::Wrapping(e) => write!(f, "secret {e}"),
        }
    }
}

/// The value written for `record` under `key`; `nonce` fresh random bytes.
pub fn encode(
    keys: &StateKeys,
    key: &StateKey,
    record: &SubjectRecord,
    nonce: [u8; 12],
) -> Vec<u8> {
    let Value::Object(mut obj) = serde_json::to_value(record).expect("a record serialises") else {
        unreachable!("a record is a JSON object")
    };
    obj.remove("secret");
    obj.insert("format".into(), FORMAT.into());
    obj.insert("index".into(), keys.fingerprint().into());
    if let Some(secret) = &record.secret {
        let wrapped = keys.wrap(key, secret, nonce);
        obj.insert(
            "wrapped_secret".into(),
            serde_json::to_value(wrapped).expect("serialises"),
        );
    }
    serde_json::to_vec(&Value::Object(obj)).expect("serialises")
}

/// Reads one entry of the topic.
pub fn decode(keys: &StateKeys, raw_key: &[u8], value: Option<&[u8]>) -> Read {
    let Ok(text) = std::str::from_utf8(raw_key) else {
        return Read::Malformed("a key that is not text");
    };
    if let Some(key) = StateKey::from_hex(text) {
        let Some(value) = value else {
            return Read::Erased(key);
        };
        return current(keys, key, value);
    }
    let Ok(vin) = Vin::parse(text) else {
        return Read::Malformed("a key that is neither a state key nor a VIN");
    };
    match value {
        None => Read::LegacyErased(vin),
        Some(v) => match serde_json::from_slice(v) {
            Ok(record) => Read::Legacy { vin, record },
            Err(_) => Read::Malformed("a format-1 value that is not a record"),
        },
    }
}

fn current(keys: &StateKeys, key: StateKey, value: &[u8]) -> Read {
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(value) else {
        return Read::Malformed("a value that is not a JSON object");
    };
    if obj.remove("format").and_then(|f| f.as_u64()) != Some(FORMAT) {
        return Read::Malformed("a value of an unknown format");
    }
    match obj.remove("index") {
        Some(Value::String(fp)) if fp == keys.fingerprint() => {}
        Some(Value::String(fp)) => {
            return Read::Unreadable {
                key,
                why: Unreadable::OtherIndex(fp),
            };
        }
        _ => return Read::Malformed("a value without its index fingerprint"),
    }
    if obj.contains_key("secret") {
        return Read::Malformed("a format-2 value with a secret in the clear");
    }
    let wrapped = match take_wrapped(&mut obj) {
        Ok(w) => w,
        Err(()) => return Read::Malformed("an unreadable wrapped_secret"),
    };
    let Ok(mut record) = serde_json::from_value::<SubjectRecord>(Value::Object(obj)) else {
        return Read::Malformed("a value that is not a record");
    };
    let wrapped_under = wrapped.as_ref().map(|w| w.key_id.clone());
    if let Some(w) = wrapped {
        match keys.unwrap(&key, &w) {
            Ok(secret) => record.secret = Some(secret),
            Err(e) => {
                return Read::Unreadable {
                    key,
                    why: Unreadable::Wrapping(e),
                };
            }
        }
    }
    Read::Record {
        key,
        record,
        wrapped_under,
    }
}

fn take_wrapped(obj: &mut Map<String, Value>) -> Result<Option<WrappedSecret>, ()> {
    match obj.remove("wrapped_secret") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v).map(Some).map_err(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telegate_policy::{Keyring, SubjectSecret};

    fn ring(seed: u8) -> Keyring {
        Keyring::ephemeral([seed; 32])
    }

    fn vin() -> Vin {
        Vin::parse("WP0ZZZ99ZTS392124").expect("valid")
    }

    fn record() -> SubjectRecord {
        let mut r = SubjectRecord {
            secret: Some(SubjectSecret::from_random([1; 16], [2; 32])),
            ..Default::default()
        };
        r.consents.entry("gis".into()).or_default().set(5, true);
        r
    }

    #[test]
    fn a_record_round_trips_and_names_neither_vin_nor_secret() {
        let keys = ring(1);
        let keys = keys.state();
        let key = keys.key_of(&vin());
        let value = encode(keys, &key, &record(), [7; 12]);
        let text = String::from_utf8(value.clone()).expect("json");
        let secret = record().secret.expect("secret");
        for leak in [vin().expose(), &secret.id, &secret.key, "392124"] {
            assert!(!text.contains(leak), "{text}");
        }
        match decode(keys, key.to_hex().as_bytes(), Some(&value)) {
            Read::Record {
                key: k,
                record: r,
                wrapped_under,
            } => {
                assert_eq!(k, key);
                assert_eq!(r, record());
                assert_eq!(wrapped_under.as_deref(), Some("ephemeral"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_keys_cannot_read_it_and_say_why() {
        let key = ring(1).state().key_of(&vin());
        let value = encode(ring(1).state(), &key, &record(), [7; 12]);
        match decode(ring(2).state(), key.to_hex().as_bytes(), Some(&value)) {
            Read::Unreadable {
                why: Unreadable::OtherIndex(fp),
                ..
            } => assert_eq!(fp, ring(1).state().fingerprint()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn format_one_is_read_for_migration() {
        let keys = ring(1);
        let legacy = serde_json::to_vec(&record()).expect("json");
        match decode(keys.state(), vin().expose().as_bytes(), Some(&legacy)) {
            Read::Legacy { vin: v, record: r } => {
                assert_eq!(v, vin());
                assert_eq!(r, record());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(keys.state(), vin().expose().as_bytes(), None),
            Read::LegacyErased(_)
        ));
        assert!(matches!(
            decode(keys.state(), b"not a key", None),
            Read::Malformed(_)
        ));
        let key = keys.state().key_of(&vin());
        assert!(matches!(
            decode(keys.state(), key.to_hex().as_bytes(), Some(&legacy)),
            Read::Malformed(_)
        ));
    }
}
