//! The operator's key file (`--key-file`): pseudonym keys, the index key and the wrapping
//! keys of the state at rest, in TOML.

use crate::fixtures::{VIN, secret};
use telegate_frame::Vin;
use telegate_policy::{Keyring, PurposeId};

/// Checks that
/// - a key file that is refused says why without repeating any key material: no run of 16 or
///   more hex digits from a key it sets (`secret_hex`, `index_hex`) appears in the error;
/// - a key ring that loads makes pseudonyms, subject hashes and state keys, and a secret it
///   wraps unwraps to the same secret.
pub fn key_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let keys = match Keyring::from_toml(text) {
        Ok(keys) => keys,
        Err(e) => {
            let said = e.to_string();
            for run in hex_runs(text) {
                assert!(
                    !said.contains(&run),
                    "a refused key file's error shows key material: {said}"
                );
            }
            return;
        }
    };
    let vin = Vin::parse(VIN).expect("valid VIN");
    let purpose = PurposeId::from("trip-log");
    let _ = keys.pseudonym(&purpose, &vin, None);
    let _ = keys.pseudonym(&purpose, &vin, Some(&secret()));
    assert!(!keys.subject_hashes(VIN).is_empty());
    let state = keys.state();
    let at = state.key_of(&vin);
    let wrapped = state.wrap(&at, &secret(), [7; 12]);
    assert_eq!(wrapped.key_id, state.active_wrapping_id().as_str());
    assert_eq!(state.unwrap(&at, &wrapped).ok(), Some(secret()));
}

/// Every maximal run of at least 16 hex digits in what `text` gives as keys (the values of
/// `…_hex` fields if it is TOML, else every line that mentions one) that appears nowhere else
/// in it: an id may show in an error, and the fuzzer may well copy a key's digits into one.
fn hex_runs(text: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut others = Vec::new();
    match toml::from_str::<toml::Table>(text) {
        Ok(table) => strings(&toml::Value::Table(table), false, &mut keys, &mut others),
        Err(_) => {
            for line in text.lines() {
                match line.contains("_hex") {
                    true => keys.push(line.to_owned()),
                    false => others.push(line.to_owned()),
                }
            }
        }
    }
    keys.iter()
        .flat_map(|s| s.split(|c: char| !c.is_ascii_hexdigit()))
        .filter(|run| run.len() >= 16 && !others.iter().any(|o| o.contains(run)))
        .map(str::to_owned)
        .collect()
}

/// The strings in `v`, sorted into key values (of `…_hex` fields) and the others (names
/// included).
fn strings(v: &toml::Value, key: bool, keys: &mut Vec<String>, others: &mut Vec<String>) {
    match v {
        toml::Value::String(s) if key => keys.push(s.clone()),
        toml::Value::String(s) => others.push(s.clone()),
        toml::Value::Table(t) => {
            for (name, v) in t {
                others.push(name.clone());
                strings(v, name.ends_with("_hex"), keys, others);
            }
        }
        toml::Value::Array(items) => {
            for v in items {
                strings(v, key, keys, others);
            }
        }
        v => others.push(v.to_string()),
    }
}
