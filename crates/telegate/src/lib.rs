//! The `telegate` command line: one module per subcommand, each with its `Args` and its
//! `run`. `main` only parses and dispatches; the gateway itself is `telegate-gateway`, the
//! tools are their own crates.

pub mod admin;
pub mod connections;
pub mod console;
pub mod consume;
pub mod demo;
pub mod keys;
pub mod loadgen;
pub mod pki;
pub mod policy;
pub mod process;
pub mod serve;
pub mod simulate;
pub mod state;
pub mod tools;

/// Parses a share given on the command line: a number from 0 to 1.
pub(crate) fn share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_share_is_a_number_from_0_to_1() {
        assert_eq!(super::share("0"), Ok(0.0));
        assert_eq!(super::share("0.02"), Ok(0.02));
        assert_eq!(super::share("1"), Ok(1.0));
        for bad in ["1.5", "-0.1", "NaN", "inf", "two", ""] {
            assert!(super::share(bad).is_err(), "{bad} taken");
        }
    }
}
