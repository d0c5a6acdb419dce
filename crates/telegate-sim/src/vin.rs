//! Generates VINs that pass every validation, check digit included.

use rand::Rng;
use telegate_frame::check_digit;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKLMNPRSTUVWXYZ";

/// A random VIN with the given world manufacturer identifier (3 characters of the VIN
/// alphabet) and a correct ISO 3779 check digit.
pub fn generate(rng: &mut impl Rng, wmi: &str) -> String {
    let mut b = [b'0'; 17];
    for (slot, c) in b
        .iter_mut()
        .zip(wmi.bytes().chain(std::iter::repeat(b'Z')))
        .take(3)
    {
        *slot = c;
    }
    for slot in &mut b[3..] {
        *slot = ALPHABET[rng.random_range(0..ALPHABET.len())];
    }
    // Serial part (positions 12-17) numeric, as manufacturers use it.
    for slot in &mut b[11..] {
        *slot = b'0' + rng.random_range(0..10);
    }
    b[8] = check_digit(&b);
    String::from_utf8(b.to_vec()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use telegate_frame::Vin;

    #[test]
    fn generated_vins_validate() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        for _ in 0..1000 {
            let s = super::generate(&mut rng, "KNA");
            let vin = Vin::parse(&s).expect("structure");
            assert!(vin.check_digit_ok());
            assert!(s.starts_with("KNA"));
        }
    }
}
