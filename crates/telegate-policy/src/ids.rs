//! Identifiers from a policy pack. Cheap to clone, compared by value.

use std::fmt;
use std::sync::Arc;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.into())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

id_type!(
    /// A consuming service, e.g. `smart-service`; its topic is `telegate.{id}` by default.
    ServiceId
);
id_type!(
    /// A processing purpose, e.g. `component-status`; the `telegate-purpose` header.
    PurposeId
);
id_type!(
    /// A pseudonymisation key version; the `telegate-key-id` header.
    KeyId
);

/// `[a-z0-9]` words joined by single `-`, at most 64 characters: safe in topics, headers
/// and metric labels.
pub(crate) fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    #[test]
    fn slugs() {
        for ok in ["smart-service", "a", "trip-log-2"] {
            assert!(super::is_slug(ok), "{ok}");
        }
        for bad in [
            "",
            "Smart",
            "a--b",
            "-a",
            "a-",
            "a_b",
            "a.b",
            &"x".repeat(65),
        ] {
            assert!(!super::is_slug(bad), "{bad}");
        }
    }
}
