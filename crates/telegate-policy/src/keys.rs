//! The operator's key file: pseudonym keys (pseudonyms for services, subject hashes for
//! `telegate.rejected`) and the keys of the state at rest ([`StateKeys`]).
//!
//! One secret per pseudonym key version; per-purpose keys are derived by domain separation
//! inside the HMAC input, so two purposes never see the same pseudonym for one VIN. Several
//! versions can be loaded at once (rotation): new records use the active one and name it in
//! `telegate-key-id`.

use crate::at_rest::{Material as Secret, Prepared, StateKeys, mac};
use crate::ids::{KeyId, PurposeId};
use crate::state::SubjectSecret;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use telegate_frame::Vin;

/// The loaded key versions and which one is active, and the state keys.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<(KeyId, Prepared)>,
    active: usize,
    state: StateKeys,
    ephemeral: bool,
}

/// Why a key file was refused. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file is not valid TOML: {0}")]
    Syntax(String),
    #[error("key {0:?}: secret_hex must be hex of at least 32 bytes")]
    WeakOrMalformed(String),
    #[error("key id {0:?} is not a slug ([a-z0-9-], at most 64)")]
    BadId(String),
    #[error("key id {0:?} appears twice")]
    Duplicate(String),
    #[error("exactly one key must be active = true (found {0})")]
    Active(usize),
    #[error(
        "no [state] section: the index key and wrapping keys of the consent state are missing \
         (`telegate keys state` prints a section to add; docs/operations.md, \"Keys and key rotation\")"
    )]
    NoState,
    #[error("[state] index_hex must be hex of at least 32 bytes")]
    WeakIndex,
    #[error("[state]: exactly one [[state.wrapping]] key must be active = true (found {0})")]
    WrappingActive(usize),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyFile {
    keys: Vec<RawKey>,
    state: Option<RawState>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    index_hex: String,
    #[serde(default)]
    wrapping: Vec<RawKey>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: String,
    secret_hex: String,
    #[serde(default)]
    active: bool,
}

const MIN_SECRET: usize = 32;

impl Keyring {
    /// Parses a key file:
    /// ```toml
    /// [[keys]]                  # pseudonym keys
    /// id = "2026-11"
    /// secret_hex = "…64+ hex digits…"
    /// active = true
    ///
    /// [state]
    /// index_hex = "…64+ hex digits…"
    /// [[state.wrapping]]        # key-encryption keys of the vehicles' secrets
    /// id = "w-2026-11"
    /// secret_hex = "…64+ hex digits…"
    /// active = true
    /// ```
    pub fn from_toml(text: &str) -> Result<Self, KeyError> {
        let raw: RawKeyFile = toml::from_str(text).map_err(|e| syntax(text, &e))?;
        let (keys, active) = versions(raw.keys).map_err(|e| match e {
            Versions::Key(e) => e,
            Versions::Active(n) => KeyError::Active(n),
        })?;
        let state = raw.state.ok_or(KeyError::NoState)?;
        let index = hex::decode(state.index_hex.trim())
            .ok()
            .filter(|s| s.len() >= MIN_SECRET)
            .ok_or(KeyError::WeakIndex)?;
        let (wrapping, wrap_active) = versions(state.wrapping).map_err(|e| match e {
            Versions::Key(e) => e,
            Versions::Active(n) => KeyError::WrappingActive(n),
        })?;
        let wrapping = wrapping.into_iter().map(|(id, k)| (id, k.0)).collect();
        Ok(Self {
            keys: keys
                .into_iter()
                .map(|(id, k)| (id, Prepared::new(&k.0)))
                .collect(),
            active,
            state: StateKeys::new(index, wrapping, wrap_active),
            ephemeral: false,
        })
    }

    /// A keyring from fresh random bytes (the caller supplies them: this crate has no
    /// randomness source). Pseudonyms from it change at every start, and state written under
    /// it cannot be read after one: for demos and tests.
    pub fn ephemeral(secret: [u8; 32]) -> Self {
        let state = StateKeys::new(
            mac(&secret, &[b"ephemeral-index"]),
            vec![(
                KeyId::from("ephemeral"),
                mac(&secret, &[b"ephemeral-wrapping"]),
            )],
            0,
        );
        Self {
            keys: vec![(KeyId::from("ephemeral"), Prepared::new(&secret))],
            active: 0,
            state,
            ephemeral: true,
        }
    }

    /// The index key and wrapping keys of the state at rest.
    pub fn state(&self) -> &StateKeys {
        &self.state
    }

    /// The subject hash of `subject` under every listed pseudonym key, active first: what
    /// `telegate.rejected` (and, before state keys, the consent ledger) filed it under.
    pub fn subject_hashes(&self, subject: &str) -> Vec<String> {
        let mut order: Vec<usize> = (0..self.keys.len()).collect();
        order.sort_by_key(|&i| i != self.active);
        order
            .into_iter()
            .map(|i| hash(&self.keys[i].1, &[b"rejected-subject", subject.as_bytes()]))
            .collect()
    }

    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    pub fn active_id(&self) -> &KeyId {
        &self.keys[self.active].0
    }

    /// The purpose-specific pseudonym of a VIN under the active key: 32 hex digits. With the
    /// vehicle's own secret mixed in, the pseudonym cannot be recomputed once that secret is
    /// erased, and a vehicle that returns after erasure gets new, unlinkable pseudonyms.
    pub fn pseudonym(
        &self,
        purpose: &PurposeId,
        vin: &Vin,
        subject: Option<&SubjectSecret>,
    ) -> String {
        // The secret's hex text is as secret as its bytes: mixing it in as text spares a
        // decode and an allocation per record.
        let secret = subject.map_or(&b""[..], |s| s.key.as_bytes());
        self.hash(&[
            b"pseudonym",
            purpose.as_str().as_bytes(),
            secret,
            vin.expose().as_bytes(),
        ])
    }

    /// The keyed hash of a raw subject (a topic's VIN segment, possibly malformed) for
    /// `telegate.rejected`: lets an operator find one vehicle's rejections without storing
    /// its VIN.
    pub fn subject_hash(&self, subject: &str) -> String {
        self.hash(&[b"rejected-subject", subject.as_bytes()])
    }

    fn hash(&self, parts: &[&[u8]]) -> String {
        hash(&self.keys[self.active].1, parts)
    }
}

fn hash(key: &Prepared, parts: &[&[u8]]) -> String {
    hex::encode(key.mac16(parts))
}

/// Where a key file stops being one and why, without its text: toml's own rendering quotes
/// the line at fault, and a message may quote a value, either of which can be a secret.
fn syntax(text: &str, e: &toml::de::Error) -> KeyError {
    let place = e.span().map_or_else(String::new, |span| {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before
            .rsplit('\n')
            .next()
            .unwrap_or_default()
            .chars()
            .count()
            + 1;
        format!("line {line}, column {column}: ")
    });
    KeyError::Syntax(format!("{place}{}", names_only(e.message())))
}

/// `message` with the text of every quoted or backquoted part elided unless it is a name (a
/// field or a token such as `#`): what is left cannot carry key material.
fn names_only(message: &str) -> String {
    let is_name = |s: &str| {
        s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b"_.-".contains(&b))
            || s.len() <= 3 && s.bytes().all(|b| b.is_ascii_punctuation())
    };
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['"', '`']) {
        let quote = char::from(rest.as_bytes()[open]);
        out.push_str(&rest[..=open]);
        let inner = &rest[open + 1..];
        // Serde writes a string value as Rust's Debug does: `\"` inside is not its end.
        let mut escaped = false;
        let close = inner.char_indices().find(|&(_, c)| {
            let end = c == quote && !escaped;
            escaped = quote == '"' && c == '\\' && !escaped;
            end
        });
        let Some((close, _)) = close else {
            out.push('…');
            return out;
        };
        let quoted = &inner[..close];
        out.push_str(if is_name(quoted) { quoted } else { "…" });
        out.push(quote);
        rest = &inner[close + 1..];
    }
    out.push_str(rest);
    out
}

enum Versions {
    Key(KeyError),
    Active(usize),
}

/// Checks a list of key versions: slug ids, no duplicates, strong secrets, one active.
fn versions(raw: Vec<RawKey>) -> Result<(Vec<(KeyId, Secret)>, usize), Versions> {
    let mut keys = Vec::with_capacity(raw.len());
    let mut active = Vec::new();
    for k in raw {
        if !crate::ids::is_slug(&k.id) {
            return Err(Versions::Key(KeyError::BadId(k.id)));
        }
        if keys
            .iter()
            .any(|(id, _): &(KeyId, Secret)| id.as_str() == k.id)
        {
            return Err(Versions::Key(KeyError::Duplicate(k.id)));
        }
        let secret = hex::decode(k.secret_hex.trim())
            .ok()
            .filter(|s| s.len() >= MIN_SECRET)
            .ok_or_else(|| Versions::Key(KeyError::WeakOrMalformed(k.id.clone())))?;
        if k.active {
            active.push(keys.len());
        }
        keys.push((KeyId::from(k.id.as_str()), Secret(secret)));
    }
    match active.as_slice() {
        [one] => Ok((keys, *one)),
        _ => Err(Versions::Active(active.len())),
    }
}

/// A VIN encrypted under the vehicle's own key: `tgs1.{subject id}.{nonce+ciphertext}`.
/// The nonce derives from `context` (purpose, sequence, time), unique per record.
pub fn seal(subject: &SubjectSecret, vin: &Vin, context: &[u8]) -> String {
    let key = mac(&subject.key_bytes(), &[b"seal"]);
    let nonce = mac(&subject.key_bytes(), &[b"nonce", context]);
    let cipher = Aes256Gcm::new_from_slice(&key).expect("32-byte key");
    let nonce = Nonce::from_slice(&nonce[..12]);
    let sealed = cipher
        .encrypt(nonce, vin.expose().as_bytes())
        .expect("AES-GCM encryption of 17 bytes cannot fail");
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&sealed);
    format!("tgs1.{}.{}", subject.id, URL_SAFE_NO_PAD.encode(blob))
}

/// The subject id a sealed value names, to look its secret up.
pub fn sealed_subject(sealed: &str) -> Option<&str> {
    let rest = sealed.strip_prefix("tgs1.")?;
    rest.split_once('.').map(|(id, _)| id)
}

/// Opens a sealed VIN with the vehicle's secret; `None` if it does not open (wrong or
/// erased key, tampered value).
pub fn unseal(subject: &SubjectSecret, sealed: &str) -> Option<Vin> {
    let rest = sealed.strip_prefix("tgs1.")?;
    let (id, blob) = rest.split_once('.')?;
    if id != subject.id {
        return None;
    }
    let blob = URL_SAFE_NO_PAD.decode(blob).ok()?;
    if blob.len() < 12 {
        return None;
    }
    let (nonce, ct) = blob.split_at(12);
    let cipher = Aes256Gcm::new_from_slice(&mac(&subject.key_bytes(), &[b"seal"])).ok()?;
    let plain = cipher.decrypt(Nonce::from_slice(nonce), ct).ok()?;
    Vin::parse(std::str::from_utf8(&plain).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(secret: u8) -> Keyring {
        Keyring::ephemeral([secret; 32])
    }

    #[test]
    fn pseudonyms_are_stable_per_key_and_separated_per_purpose() {
        let vin = Vin::parse("WP0ZZZ99ZTS392124").expect("valid");
        let a = PurposeId::from("a");
        let b = PurposeId::from("b");
        assert_eq!(
            ring(1).pseudonym(&a, &vin, None),
            ring(1).pseudonym(&a, &vin, None)
        );
        assert_ne!(
            ring(1).pseudonym(&a, &vin, None),
            ring(1).pseudonym(&b, &vin, None)
        );
        assert_ne!(
            ring(1).pseudonym(&a, &vin, None),
            ring(2).pseudonym(&a, &vin, None)
        );
        assert_eq!(ring(1).pseudonym(&a, &vin, None).len(), 32);
        assert!(!ring(1).pseudonym(&a, &vin, None).contains("392124"));
    }

    #[test]
    fn pseudonyms_and_subject_hashes_are_the_documented_hmac() {
        // HMAC-SHA256(key, "telegate/v1" ‖ for each part: u32 length ‖ part), first 16 bytes,
        // computed independently (Python's hmac): a deployment's pseudonyms never change
        // with how they are computed.
        let vin = Vin::parse("WP0ZZZ99ZTS392124").expect("valid");
        let subject = SubjectSecret::from_random([1; 16], [2; 32]);
        assert_eq!(
            ring(1).pseudonym(&PurposeId::from("p"), &vin, Some(&subject)),
            "435a6e331331877a4b2c7071fcfccb74"
        );
        assert_eq!(
            ring(1).subject_hash(vin.expose()),
            "6a4fb134b3a0ca621bc993d1879cb2ae"
        );
    }

    #[test]
    fn seals_open_only_with_their_subject_key() {
        let vin = Vin::parse("WP0ZZZ99ZTS392124").expect("valid");
        let a = SubjectSecret::from_random([1; 16], [2; 32]);
        let b = SubjectSecret::from_random([1; 16], [3; 32]);
        let sealed = seal(&a, &vin, b"p/1/2");
        assert!(!sealed.contains("392124"));
        assert_eq!(sealed_subject(&sealed), Some(a.id.as_str()));
        assert_eq!(unseal(&a, &sealed), Some(vin));
        assert_eq!(unseal(&b, &sealed), None, "another key cannot open it");
        assert_ne!(
            seal(&a, &vin, b"p/1/2"),
            seal(&a, &vin, b"p/1/3"),
            "nonce per record"
        );
        let with = ring(1).pseudonym(&PurposeId::from("p"), &vin, Some(&a));
        assert_ne!(
            with,
            ring(1).pseudonym(&PurposeId::from("p"), &vin, Some(&b))
        );
    }

    #[test]
    fn key_files_are_checked() {
        let state = format!(
            "[state]\nindex_hex = \"{}\"\n[[state.wrapping]]\nid = \"w1\"\nsecret_hex = \"{}\"\nactive = true\n",
            "ef".repeat(32),
            "01".repeat(32)
        );
        let good = format!(
            "[[keys]]\nid = \"k1\"\nsecret_hex = \"{}\"\n[[keys]]\nid = \"k2\"\nsecret_hex = \"{}\"\nactive = true\n{state}",
            "ab".repeat(32),
            "cd".repeat(32)
        );
        let ring = Keyring::from_toml(&good).expect("valid");
        assert_eq!(ring.active_id().as_str(), "k2");
        assert_eq!(ring.state().active_wrapping_id().as_str(), "w1");
        assert!(!ring.is_ephemeral());
        let weak = format!("[[keys]]\nid = \"k1\"\nsecret_hex = \"abcd\"\nactive = true\n{state}");
        assert!(matches!(
            Keyring::from_toml(&weak),
            Err(KeyError::WeakOrMalformed(_))
        ));
        let none_active = format!(
            "[[keys]]\nid = \"k1\"\nsecret_hex = \"{}\"\n{state}",
            "ab".repeat(32)
        );
        assert!(matches!(
            Keyring::from_toml(&none_active),
            Err(KeyError::Active(0))
        ));
        let pseudonyms_only = format!(
            "[[keys]]\nid = \"k1\"\nsecret_hex = \"{}\"\nactive = true\n",
            "ab".repeat(32)
        );
        assert!(matches!(
            Keyring::from_toml(&pseudonyms_only),
            Err(KeyError::NoState)
        ));
        let weak_index = format!("{pseudonyms_only}[state]\nindex_hex = \"abcd\"\n");
        assert!(matches!(
            Keyring::from_toml(&weak_index),
            Err(KeyError::WeakIndex)
        ));
        let no_wrapping = format!(
            "{pseudonyms_only}[state]\nindex_hex = \"{}\"\n",
            "ef".repeat(32)
        );
        assert!(matches!(
            Keyring::from_toml(&no_wrapping),
            Err(KeyError::WrappingActive(0))
        ));
        let err = Keyring::from_toml(&weak).expect_err("weak").to_string();
        assert!(!err.contains("abcd"), "errors never echo key material");
    }

    /// Found by the key_file fuzz target: a stray quote on a `secret_hex` line made the error
    /// quote that line, secret and all (toml's rendering shows the line at fault).
    #[test]
    fn syntax_errors_say_where_without_the_text() {
        let secret = "1a".repeat(32);
        for (text, place) in [
            (
                format!("[[keys]]\nid = \"k1\"\nsecret_hex = \"1a \"{secret}\"\n"),
                "line 3, column 19: ",
            ),
            (
                format!("[[keys]]\nid = \"k1\"\nsecret_hex = {secret}\n"),
                "line 3",
            ),
            (
                format!("[[keys]]\nid = \"k1\"\nsecret_hx = \"{secret}\"\n"),
                "line 3",
            ),
            (
                format!("[[keys]]\nid = \"k1\"\nactive = \"{secret}\"\n"),
                "line 3",
            ),
        ] {
            let err = Keyring::from_toml(&text)
                .expect_err("not a key file")
                .to_string();
            assert!(!err.contains(&secret[..16]), "{err}");
            assert!(err.contains(place), "{err}");
        }
        let typo = format!("[[keys]]\nid = \"k1\"\nsecret_hx = \"{secret}\"\n");
        let err = Keyring::from_toml(&typo)
            .expect_err("unknown field")
            .to_string();
        assert!(err.contains("unknown field `secret_hx`"), "{err}");
        let wrong_type = "[[keys]]\nid = \"k1\"\nsecret_hex = \"ab\"\nactive = \"yes\"\n";
        let err = Keyring::from_toml(wrong_type)
            .expect_err("wrong type")
            .to_string();
        assert!(err.contains("expected a boolean"), "{err}");
        assert_eq!(
            names_only(r#"invalid type: string "a\"b`c", expected `#` or `]`"#),
            r#"invalid type: string "…", expected `#` or `]`"#
        );
    }

    #[test]
    fn subject_hashes_cover_every_listed_key_active_first() {
        let text = format!(
            "[[keys]]\nid = \"k1\"\nsecret_hex = \"{}\"\n[[keys]]\nid = \"k2\"\nsecret_hex = \"{}\"\nactive = true\n[state]\nindex_hex = \"{}\"\n[[state.wrapping]]\nid = \"w1\"\nsecret_hex = \"{}\"\nactive = true\n",
            "ab".repeat(32),
            "cd".repeat(32),
            "ef".repeat(32),
            "01".repeat(32)
        );
        let ring = Keyring::from_toml(&text).expect("valid");
        let hashes = ring.subject_hashes("WP0ZZZ99ZTS392124");
        assert_eq!(hashes.len(), 2);
        assert_eq!(hashes[0], ring.subject_hash("WP0ZZZ99ZTS392124"));
        assert_ne!(hashes[0], hashes[1]);
    }
}
