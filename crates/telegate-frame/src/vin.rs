//! The vehicle identification number (ISO 3779).

use std::fmt;

/// A structurally valid VIN: 17 characters from `0-9A-Z` without `I`, `O` and `Q`.
///
/// `Debug` and `Display` are redacted so that a VIN can never reach a log line or an error
/// message by accident; [`Vin::expose`] is the one explicit way to read it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vin([u8; 17]);

/// Why a string is not a VIN. Carries no part of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VinError {
    #[error("a VIN has 17 characters")]
    Length,
    #[error("a VIN uses only 0-9 and A-Z without I, O and Q (upper case)")]
    Character,
}

impl Vin {
    /// Parses the structure only. Whether the check digit must hold is a deployment choice
    /// (North-American VINs carry one, many European VINs do not): see [`Vin::check_digit_ok`].
    pub fn parse(s: &str) -> Result<Self, VinError> {
        let bytes: [u8; 17] = s.as_bytes().try_into().map_err(|_| VinError::Length)?;
        if !bytes.iter().all(|&b| transliterate(b).is_some()) {
            return Err(VinError::Character);
        }
        Ok(Self(bytes))
    }

    /// The raw VIN. Call only where the raw identifier is the intended output (a record
    /// whose policy grants the VIN), never for logs or metrics.
    pub fn expose(&self) -> &str {
        // Every byte was checked to be ASCII in `parse`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The ISO 3779 check digit (position 9) matches the other sixteen characters.
    pub fn check_digit_ok(&self) -> bool {
        self.0[8] == check_digit(&self.0)
    }
}

impl fmt::Debug for Vin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Vin(<redacted>)")
    }
}

impl fmt::Display for Vin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<vin>")
    }
}

const WEIGHTS: [u32; 17] = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2];

/// The check digit for the 17 bytes given (position 9 is ignored), `b'X'` for ten.
pub fn check_digit(vin: &[u8; 17]) -> u8 {
    let sum: u32 = vin
        .iter()
        .zip(WEIGHTS)
        .map(|(&b, w)| transliterate(b).unwrap_or(0) * w)
        .sum();
    match sum % 11 {
        10 => b'X',
        d => b'0' + d as u8,
    }
}

fn transliterate(b: u8) -> Option<u32> {
    Some(match b {
        b'0'..=b'9' => u32::from(b - b'0'),
        b'A' | b'J' => 1,
        b'B' | b'K' | b'S' => 2,
        b'C' | b'L' | b'T' => 3,
        b'D' | b'M' | b'U' => 4,
        b'E' | b'N' | b'V' => 5,
        b'F' | b'W' => 6,
        b'G' | b'P' | b'X' => 7,
        b'H' | b'Y' => 8,
        b'R' | b'Z' => 9,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_north_american_vin_has_a_valid_check_digit() {
        // The worked example from 49 CFR 565 / Wikipedia's "Vehicle identification number".
        let vin = Vin::parse("1M8GDM9AXKP042788").expect("structurally valid");
        assert!(vin.check_digit_ok());
        let wrong = Vin::parse("1M8GDM9A1KP042788").expect("structurally valid");
        assert!(!wrong.check_digit_ok());
    }

    #[test]
    fn structure_is_enforced() {
        assert_eq!(Vin::parse("WP0ZZZ99ZTS39212"), Err(VinError::Length));
        assert_eq!(Vin::parse("WP0ZZZ99ZTS3921234"), Err(VinError::Length));
        assert_eq!(Vin::parse("WP0ZZZ99ZTS39212I"), Err(VinError::Character));
        assert_eq!(Vin::parse("WP0ZZZ99ZTS39212O"), Err(VinError::Character));
        assert_eq!(Vin::parse("WP0ZZZ99ZTS39212Q"), Err(VinError::Character));
        assert_eq!(Vin::parse("wp0zzz99zts392124"), Err(VinError::Character));
        assert!(Vin::parse("WP0ZZZ99ZTS392124").is_ok());
    }

    #[test]
    fn debug_and_display_never_show_the_vin() {
        let vin = Vin::parse("WP0ZZZ99ZTS392124").expect("valid");
        assert!(!format!("{vin:?} {vin}").contains("392124"));
    }

    fn vin_chars() -> impl Strategy<Value = Vec<u8>> {
        let alphabet: Vec<u8> = b"0123456789ABCDEFGHJKLMNPRSTUVWXYZ".to_vec();
        proptest::collection::vec(proptest::sample::select(alphabet), 17)
    }

    proptest! {
        #[test]
        fn setting_the_computed_check_digit_always_validates(mut bytes in vin_chars()) {
            let arr: [u8; 17] = bytes.clone().try_into().expect("17 bytes");
            bytes[8] = check_digit(&arr);
            let s = String::from_utf8(bytes).expect("ascii");
            let vin = Vin::parse(&s).expect("valid structure");
            prop_assert!(vin.check_digit_ok());
            prop_assert_eq!(vin.expose(), s.as_str());
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = Vin::parse(&s);
        }
    }
}
