//! What names a vehicle, and guards its secret, where telegate keeps state at rest
//! (`telegate.consent-state`, `telegate.consent-ledger`).
//!
//! Two kinds of key, both from the operator's key file and apart from the pseudonym keys:
//! - the **index key** turns a VIN into its [`StateKey`], a keyed hash that names the vehicle
//!   on both topics. It never rotates (a new one would orphan every record); its
//!   [fingerprint](StateKeys::fingerprint) rides on each record so a gateway given another
//!   index key notices instead of starting from nothing.
//! - **wrapping keys** (key-encryption keys) seal each vehicle's own secret with AES-256-GCM.
//!   They rotate like pseudonym keys: the active one wraps, every listed one unwraps.
//!
//! Without the key file the topics name no VIN and hold no usable secret; with it, everything
//! derived from a vehicle's secret (pseudonyms, sealed VINs) is what it was before.

use crate::ids::KeyId;
use crate::state::SubjectSecret;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use telegate_frame::Vin;

type HmacSha256 = Hmac<Sha256>;

/// A vehicle's name at rest: the first 16 bytes of HMAC-SHA256(index key, VIN), written as 32
/// hex digits. Linking it to a VIN takes the index key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateKey([u8; 16]);

impl StateKey {
    /// The key's sixteen bytes, to keep with a connection (`telegate_mqtt::VehicleMemo`).
    pub fn to_bytes(&self) -> [u8; 16] {
        self.0
    }

    /// A key kept as its bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the 32 hex digits [`to_hex`](Self::to_hex) writes; anything else is `None`.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0; 16];
        (text.len() == 32 && hex::decode_to_slice(text, &mut bytes).is_ok()).then_some(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateKey({})", self.to_hex())
    }
}

/// A vehicle's secret (its subject id and key), encrypted under a wrapping key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedSecret {
    /// The wrapping key's id from the key file.
    pub key_id: String,
    /// base64url(nonce ‖ AES-256-GCM ciphertext of the secret's JSON).
    pub sealed: String,
}

/// Why a wrapped secret did not open. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnwrapError {
    #[error("wrapped under key {0:?}, which the key file does not list")]
    UnknownKey(String),
    #[error("does not open under key {0:?} (another key of the same id, or altered)")]
    Corrupt(String),
}

/// Key material. Debug never shows it.
#[derive(Clone)]
pub(crate) struct Material(pub(crate) Vec<u8>);

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Material(<{} bytes>)", self.0.len())
    }
}

/// HMAC-SHA256 keyed, the version tag already absorbed: each use then costs the message's
/// blocks only, not the key's two blocks again. Debug never shows the key.
#[derive(Clone)]
pub(crate) struct Prepared(HmacSha256);

impl Prepared {
    pub(crate) fn new(key: &[u8]) -> Self {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(VERSION);
        Self(mac)
    }

    /// The first 16 bytes of the MAC of `parts`: what [`mac`] gives with the same key.
    pub(crate) fn mac16(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut mac = self.0.clone();
        absorb(&mut mac, parts);
        let mut out = [0; 16];
        out.copy_from_slice(&mac.finalize().into_bytes()[..16]);
        out
    }
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Prepared(<keyed>)")
    }
}

/// The index key and the wrapping keys.
#[derive(Debug, Clone)]
pub struct StateKeys {
    index: Prepared,
    fingerprint: String,
    wrapping: Vec<(KeyId, Material)>,
    active: usize,
}

impl StateKeys {
    /// `wrapping` is non-empty and `active` one of its positions (the key file's parser
    /// checks both).
    pub(crate) fn new(index: Vec<u8>, wrapping: Vec<(KeyId, Vec<u8>)>, active: usize) -> Self {
        assert!(active < wrapping.len(), "the active wrapping key is listed");
        let fingerprint = hex::encode(&mac(&index, &[b"index-fingerprint"])[..4]);
        Self {
            index: Prepared::new(&index),
            fingerprint,
            wrapping: wrapping
                .into_iter()
                .map(|(id, k)| (id, Material(k)))
                .collect(),
            active,
        }
    }

    /// The vehicle's [`StateKey`]: HMAC-SHA256 over a single block, once per frame.
    pub fn key_of(&self, vin: &Vin) -> StateKey {
        StateKey(
            self.index
                .mac16(&[b"state-subject", vin.expose().as_bytes()]),
        )
    }

    /// Eight hex digits that tell index keys apart without revealing them.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn active_wrapping_id(&self) -> &KeyId {
        &self.wrapping[self.active].0
    }

    /// Wraps `secret` for the record named `at` under the active wrapping key. `nonce` must be
    /// fresh random bytes (the caller's: this crate has no randomness source). The record's
    /// key is bound in, so a wrapped secret moved to another record does not open.
    pub fn wrap(&self, at: &StateKey, secret: &SubjectSecret, nonce: [u8; 12]) -> WrappedSecret {
        let (id, kek) = &self.wrapping[self.active];
        let plain = serde_json::to_vec(secret).expect("a secret serialises");
        let sealed = cipher(kek, at)
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: at.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a short text cannot fail");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        WrappedSecret {
            key_id: id.to_string(),
            sealed: URL_SAFE_NO_PAD.encode(blob),
        }
    }

    /// Opens a secret wrapped for the record named `at` under any listed wrapping key.
    pub fn unwrap(&self, at: &StateKey, w: &WrappedSecret) -> Result<SubjectSecret, UnwrapError> {
        let (_, kek) = self
            .wrapping
            .iter()
            .find(|(id, _)| id.as_str() == w.key_id)
            .ok_or_else(|| UnwrapError::UnknownKey(w.key_id.clone()))?;
        let corrupt = || UnwrapError::Corrupt(w.key_id.clone());
        let blob = URL_SAFE_NO_PAD.decode(&w.sealed).map_err(|_| corrupt())?;
        if blob.len() < 12 {
            return Err(corrupt());
        }
        let (nonce, ct) = blob.split_at(12);
        let plain = cipher(kek, at)
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: at.as_bytes(),
                },
            )
            .map_err(|_| corrupt())?;
        serde_json::from_slice(&plain).map_err(|_| corrupt())
    }
}

/// Each record's secret gets a key of its own, derived from the wrapping key and the record's
/// name: random 96-bit nonces then stay far below AES-GCM's per-key limit however often a
/// fleet's records are rewritten.
fn cipher(kek: &Material, at: &StateKey) -> Aes256Gcm {
    Aes256Gcm::new_from_slice(&mac(&kek.0, &[b"wrap", at.as_bytes()])).expect("32-byte key")
}

const VERSION: &[u8] = b"telegate/v1";

/// HMAC-SHA256 over length-prefixed parts, domain-separated by a version tag.
pub(crate) fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(VERSION);
    absorb(&mut mac, parts);
    mac.finalize().into_bytes().to_vec()
}

fn absorb(mac: &mut HmacSha256, parts: &[&[u8]]) {
    for p in parts {
        // Length-prefixing keeps ("ab","c") and ("a","bc") apart.
        mac.update(&(p.len() as u32).to_be_bytes());
        mac.update(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(index: u8, wrapping: &[(&str, u8)], active: usize) -> StateKeys {
        StateKeys::new(
            vec![index; 32],
            wrapping
                .iter()
                .map(|(id, b)| (KeyId::from(*id), vec![*b; 32]))
                .collect(),
            active,
        )
    }

    fn vin() -> Vin {
        Vin::parse("WP0ZZZ99ZTS392124").expect("valid")
    }

    #[test]
    fn a_state_key_is_stable_per_index_key_and_reveals_no_vin() {
        let a = keys(1, &[("w1", 9)], 0);
        let b = keys(2, &[("w1", 9)], 0);
        assert_eq!(a.key_of(&vin()), a.key_of(&vin()));
        assert_ne!(a.key_of(&vin()), b.key_of(&vin()));
        assert_ne!(a.fingerprint(), b.fingerprint());
        let hex = a.key_of(&vin()).to_hex();
        assert_eq!(hex.len(), 32);
        assert!(!hex.contains("392124"));
        assert_eq!(StateKey::from_hex(&hex), Some(a.key_of(&vin())));
        assert_eq!(StateKey::from_hex(vin().expose()), None);
        assert_eq!(StateKey::from_hex(&hex[..30]), None);
        // The prepared MAC is the plain one, minus the key's blocks.
        let plain = mac(&[1; 32], &[b"state-subject", vin().expose().as_bytes()]);
        assert_eq!(&plain[..16], a.key_of(&vin()).as_bytes());
    }

    #[test]
    fn a_wrapped_secret_opens_under_every_listed_key_and_only_for_its_record() {
        let secret = SubjectSecret::from_random([3; 16], [4; 32]);
        let old = keys(1, &[("w1", 9)], 0);
        let rotated = keys(1, &[("w1", 9), ("w2", 8)], 1);
        let at = old.key_of(&vin());
        let wrapped = old.wrap(&at, &secret, [5; 12]);
        assert_eq!(wrapped.key_id, "w1");
        assert!(!wrapped.sealed.contains(&secret.key));
        assert!(!wrapped.sealed.contains(&secret.id));
        assert_eq!(rotated.unwrap(&at, &wrapped), Ok(secret.clone()));
        let rewrapped = rotated.wrap(&at, &secret, [6; 12]);
        assert_eq!(rewrapped.key_id, "w2");
        assert_eq!(rotated.unwrap(&at, &rewrapped), Ok(secret.clone()));
        assert_eq!(
            old.unwrap(&at, &rewrapped),
            Err(UnwrapError::UnknownKey("w2".into()))
        );
        let elsewhere = old.key_of(&Vin::parse("WP0ZZZ99ZTS392125").expect("valid"));
        assert_eq!(
            old.unwrap(&elsewhere, &wrapped),
            Err(UnwrapError::Corrupt("w1".into())),
            "bound to its record"
        );
        let same_id_other_key = keys(1, &[("w1", 7)], 0);
        assert_eq!(
            same_id_other_key.unwrap(&at, &wrapped),
            Err(UnwrapError::Corrupt("w1".into()))
        );
        let mut blob = URL_SAFE_NO_PAD.decode(&wrapped.sealed).expect("base64");
        *blob.last_mut().expect("not empty") ^= 1;
        let altered = WrappedSecret {
            sealed: URL_SAFE_NO_PAD.encode(blob),
            ..wrapped
        };
        assert_eq!(
            old.unwrap(&at, &altered),
            Err(UnwrapError::Corrupt("w1".into()))
        );
    }
}
