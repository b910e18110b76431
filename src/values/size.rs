//! Byte sizes ("64KiB", "1MiB", or a plain integer of bytes) for config values.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A size in bytes, written with a unit the way operators write them ("64KiB", "1MiB") or as
/// a plain integer of bytes, so a buffer's size is never a guess between KB and KiB.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// Units accepted after the number, lowercase, with their multipliers: IEC (KiB = 1024) and SI
/// (kB = 1000) both mean what their standards say.
const UNITS: [(&str, u64); 7] = [
    ("b", 1),
    ("kb", 1000),
    ("kib", 1 << 10),
    ("mb", 1_000_000),
    ("mib", 1 << 20),
    ("gb", 1_000_000_000),
    ("gib", 1 << 30),
];

impl ByteSize {
    /// Build from KiB (used for defaults).
    pub const fn from_kib(kib: u64) -> Self {
        ByteSize(kib * 1024)
    }

    /// Build from MiB (used for bounds).
    pub const fn from_mib(mib: u64) -> Self {
        ByteSize(mib * 1024 * 1024)
    }

    /// The number of bytes.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 30 && n % (1 << 30) == 0 {
            write!(f, "{}GiB", n >> 30)
        } else if n >= 1 << 20 && n % (1 << 20) == 0 {
            write!(f, "{}MiB", n >> 20)
        } else if n >= 1 << 10 && n % (1 << 10) == 0 {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n}B")
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"64KiB\" or \"1MiB\", or an integer of bytes")
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("size {n} is negative")))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<ByteSize, E> {
                parse(text).map(ByteSize).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

/// Parse "65536", "64KiB", "64 KiB", "1MiB", "1MB" (units without case); fractions and unknown
/// units are refused.
pub fn parse(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "invalid size {trimmed:?} (write e.g. \"64KiB\", \"1MiB\" or a number of bytes)"
        ));
    }
    let unit = unit.trim_start().to_ascii_lowercase();
    let multiplier = if unit.is_empty() {
        1
    } else {
        UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                format!(
                    "invalid size {trimmed:?}: unknown unit (use B, KiB, MiB, GiB, kB, MB or GB)"
                )
            })?
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("size {trimmed:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_units() {
        assert_eq!(parse("65536").unwrap(), 65536);
        assert_eq!(parse("64KiB").unwrap(), 64 * 1024);
        assert_eq!(parse(" 64 kib ").unwrap(), 64 * 1024);
        assert_eq!(parse("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse("3kB").unwrap(), 3000);
        assert_eq!(parse("1MB").unwrap(), 1_000_000);
        assert_eq!(parse("0").unwrap(), 0);
        assert_eq!(parse("10B").unwrap(), 10);
    }

    #[test]
    fn refuses_garbage_fractions_and_overflow() {
        for bad in [
            "",
            "KiB",
            "1.5MiB",
            "64k",
            "-1",
            "64 KiBs",
            "99999999999999999999GiB",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse("64k").unwrap_err().contains("unknown unit"));
        assert!(parse("18446744073709551615GiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn deserializes_from_integers_and_strings() {
        #[derive(Deserialize)]
        struct T {
            a: ByteSize,
            b: ByteSize,
        }
        let t: T = toml::from_str("a = 1024\nb = \"1MiB\"").unwrap();
        assert_eq!((t.a, t.b), (ByteSize(1024), ByteSize::from_mib(1)));
        assert!(toml::from_str::<T>("a = -1\nb = 1").is_err());
        assert!(toml::from_str::<T>("a = \"lots\"\nb = 1").is_err());
    }

    #[test]
    fn displays_in_the_largest_whole_unit() {
        assert_eq!(ByteSize::from_kib(64).to_string(), "64KiB");
        assert_eq!(ByteSize::from_mib(2).to_string(), "2MiB");
        assert_eq!(ByteSize(1 << 30).to_string(), "1GiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }
}
