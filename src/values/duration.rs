//! Human-readable durations ("500ms", "10s", "2h") for config values.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written the way operators write them, so configs never carry bare numbers of
/// unknown unit.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    /// Build from whole milliseconds (used for defaults).
    pub const fn from_millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }

    /// Build from whole seconds (used for defaults).
    pub const fn from_secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }

    /// The wrapped value.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map(Dur).map_err(serde::de::Error::custom)
    }
}

/// Longest duration any setting may have: one year as humantime counts it (`"1y"`, 365.25
/// days). Every timeout and window is added to a clock reading somewhere, and a value near
/// `u64::MAX` seconds makes that addition overflow and panic on every request; a year is far
/// beyond any sensible timeout and far below where instants overflow.
pub const MAX: Duration = Duration::from_secs(31_557_600);

/// Parse "250ms", "10s", "1m30s"; bare numbers are refused because their unit is a guess, and
/// anything longer than `MAX` (one year) is refused because it cannot be added to a clock reading.
pub fn parse(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration (write e.g. \"500ms\" or \"10s\")".to_string());
    }
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "duration {trimmed:?} has no unit (write e.g. \"{trimmed}s\" or \"{trimmed}ms\")"
        ));
    }
    let value = humantime::parse_duration(trimmed)
        .map_err(|e| format!("invalid duration {trimmed:?}: {e}"))?;
    if value > MAX {
        return Err(format!(
            "duration {trimmed:?} is longer than the 1 year (\"1y\") weir allows"
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_units() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
    }

    #[test]
    fn refuses_bare_numbers_and_garbage() {
        assert!(parse("10").unwrap_err().contains("no unit"));
        assert!(parse("").is_err());
        assert!(parse("soon").is_err());
    }

    #[test]
    fn refuses_durations_longer_than_a_year() {
        assert_eq!(parse("1y").unwrap(), MAX);
        assert_eq!(parse("365d").unwrap(), Duration::from_secs(365 * 86_400));
        for text in ["18446744073709551615s", "1y 1s", "366d", "100years"] {
            let e = parse(text).unwrap_err();
            assert!(e.contains("longer than the 1 year"), "{text}: {e}");
        }
        // Far larger than u64 seconds: humantime's own overflow error, still an error.
        assert!(parse("99999999999999999999999s").is_err());
        // The bound holds through serde, where every config duration is read.
        let e = toml::from_str::<Wrapped>("d = \"18446744073709551615s\"").unwrap_err();
        assert!(e.message().contains("longer than the 1 year"), "{e}");
    }

    #[derive(Debug, serde::Deserialize)]
    struct Wrapped {
        #[allow(dead_code)]
        d: Dur,
    }
}
