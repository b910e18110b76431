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

/// Parse "250ms", "10s", "1m30s"; bare numbers are refused because their unit is a guess.
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
    humantime::parse_duration(trimmed).map_err(|e| format!("invalid duration {trimmed:?}: {e}"))
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
}
