//! Keyed hashing: pseudonyms for services and subject hashes for `telegate.rejected`.
//!
//! One secret per key version; per-purpose keys are derived by domain separation inside the
//! HMAC input, so two purposes never see the same pseudonym for one VIN. Several versions can
//! be loaded at once (rotation): new records use the active one and name it in
//! `telegate-key-id`.

use crate::ids::{KeyId, PurposeId};
use crate::state::SubjectSecret;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use telegate_frame::Vin;

type HmacSha256 = Hmac<Sha256>;

/// Key material. Debug never shows it.
#[derive(Clone)]
struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// The loaded key versions and which one is active.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<(KeyId, Secret)>,
    active: usize,
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
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyFile {
    keys: Vec<RawKey>,
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
    /// [[keys]]
    /// id = "2026-11"
    /// secret_hex = "…64+ hex digits…"
    /// active = true
    /// ```
    pub fn from_toml(text: &str) -> Result<Self, KeyError> {
        let raw: RawKeyFile = toml::from_str(text).map_err(|e| KeyError::Syntax(e.to_string()))?;
        let mut keys = Vec::with_capacity(raw.keys.len());
        let mut active = Vec::new();
        for k in raw.keys {
            if !crate::ids::is_slug(&k.id) {
                return Err(KeyError::BadId(k.id));
            }
            if keys
                .iter()
                .any(|(id, _): &(KeyId, Secret)| id.as_str() == k.id)
            {
                return Err(KeyError::Duplicate(k.id));
            }
            let secret = hex::decode(k.secret_hex.trim())
                .ok()
                .filter(|s| s.len() >= MIN_SECRET)
                .ok_or_else(|| KeyError::WeakOrMalformed(k.id.clone()))?;
            if k.active {
                active.push(keys.len());
            }
            keys.push((KeyId::from(k.id.as_str()), Secret(secret)));
        }
        match active.as_slice() {
            [one] => Ok(Self {
                keys,
                active: *one,
                ephemeral: false,
            }),
            _ => Err(KeyError::Active(active.len())),
        }
    }

    /// A keyring from fresh random bytes (the caller supplies them: this crate has no
    /// randomness source). Pseudonyms from it change at every start: for demos and tests.
    pub fn ephemeral(secret: [u8; 32]) -> Self {
        Self {
            keys: vec![(KeyId::from("ephemeral"), Secret(secret.to_vec()))],
            active: 0,
            ephemeral: true,
        }
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
        hex::encode(&mac(&self.keys[self.active].1.0, parts)[..16])
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(b"telegate/v1");
    for p in parts {
        // Length-prefixing keeps ("ab","c") and ("a","bc") apart.
        mac.update(&(p.len() as u32).to_be_bytes());
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
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
        let good = format!(
            "[[keys]]\nid = \"k1\"\nsecret_hex = \"{}\"\n[[keys]]\nid = \"k2\"\nsecret_hex = \"{}\"\nactive = true\n",
            "ab".repeat(32),
            "cd".repeat(32)
        );
        let ring = Keyring::from_toml(&good).expect("valid");
        assert_eq!(ring.active_id().as_str(), "k2");
        assert!(!ring.is_ephemeral());
        let weak = "[[keys]]\nid = \"k1\"\nsecret_hex = \"abcd\"\nactive = true\n";
        assert!(matches!(
            Keyring::from_toml(weak),
            Err(KeyError::WeakOrMalformed(_))
        ));
        let none_active = format!(
            "[[keys]]\nid = \"k1\"\nsecret_hex = \"{}\"\n",
            "ab".repeat(32)
        );
        assert!(matches!(
            Keyring::from_toml(&none_active),
            Err(KeyError::Active(0))
        ));
        let err = Keyring::from_toml(weak).expect_err("weak").to_string();
        assert!(!err.contains("abcd"), "errors never echo key material");
    }
}
