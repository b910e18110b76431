//! Lists of HTTP statuses, for `health.expect_status`.

/// Inclusive status ranges, e.g. "200-399" or "200,204,300-399"; read from the config as text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct StatusRanges(Vec<(u16, u16)>);

impl TryFrom<String> for StatusRanges {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        StatusRanges::parse(&text)
    }
}

impl StatusRanges {
    /// The statuses from `low` to `high`, both included.
    pub fn between(low: u16, high: u16) -> Self {
        StatusRanges(vec![(low, high)])
    }

    /// Parse a comma list of statuses and `low-high` ranges.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a status list like \"200-399\" or \"200,204\"");
        let ranges = text
            .split(',')
            .map(|part| {
                let part = part.trim();
                let (low, high) = part.split_once('-').unwrap_or((part, part));
                let low: u16 = low.trim().parse().map_err(|_| bad())?;
                let high: u16 = high.trim().parse().map_err(|_| bad())?;
                if !(100..=599).contains(&low) || !(100..=599).contains(&high) || low > high {
                    return Err(bad());
                }
                Ok((low, high))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StatusRanges(ranges))
    }

    /// Whether `status` passes.
    pub fn contains(&self, status: u16) -> bool {
        self.0
            .iter()
            .any(|(low, high)| (*low..=*high).contains(&status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges() {
        let r = StatusRanges::parse("200-399").unwrap();
        assert!(r.contains(200) && r.contains(399) && !r.contains(400) && !r.contains(199));
        let r = StatusRanges::parse("200, 204,300-302").unwrap();
        assert!(r.contains(204) && r.contains(301) && !r.contains(201));
        for bad in ["", "abc", "399-200", "99", "200-700"] {
            assert!(StatusRanges::parse(bad).is_err(), "{bad}");
        }
    }
}
