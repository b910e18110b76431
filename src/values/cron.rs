//! Five-field cron expressions (minute hour day-of-month month day-of-week, UTC) for scheduled
//! capacity: `*`, numbers, ranges `a-b`, lists `a,b` and steps `*/n` or `a-b/n`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Cron {
    minutes: u64,  // bits 0..59
    hours: u32,    // bits 0..23
    days: u32,     // bits 1..31
    months: u16,   // bits 1..12
    weekdays: u8,  // bits 0..6, Sunday = 0 (7 also means Sunday)
    any_day: bool, // day-of-month was "*"
    any_weekday: bool,
}

/// A moment broken into the fields cron matches, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilMinute {
    /// 0..59
    pub minute: u32,
    /// 0..23
    pub hour: u32,
    /// 1..31
    pub day: u32,
    /// 1..12
    pub month: u32,
    /// 0..6, Sunday = 0
    pub weekday: u32,
}

impl CivilMinute {
    /// The UTC fields of `minutes` whole minutes since the Unix epoch.
    pub fn from_unix_minutes(minutes: u64) -> Self {
        let days = (minutes / 1440) as i64;
        let minute_of_day = (minutes % 1440) as u32;
        let (_year, month, day) = super::clock::civil_from_days(days);
        CivilMinute {
            minute: minute_of_day % 60,
            hour: minute_of_day / 60,
            day,
            month,
            // 1970-01-01 was a Thursday (4).
            weekday: ((days + 4).rem_euclid(7)) as u32,
        }
    }
}

/// Whole minutes since the Unix epoch, now.
pub fn unix_minutes_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
        / 60
}

fn parse_field(text: &str, low: u32, high: u32) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| format!("bad step {s:?}"))?;
                if step == 0 {
                    return Err("a step must be at least 1".into());
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (from, to) = if range == "*" {
            (low, high)
        } else if let Some((a, b)) = range.split_once('-') {
            let a: u32 = a.parse().map_err(|_| format!("bad value {a:?}"))?;
            let b: u32 = b.parse().map_err(|_| format!("bad value {b:?}"))?;
            (a, b)
        } else {
            let v: u32 = range.parse().map_err(|_| format!("bad value {range:?}"))?;
            (v, if step > 1 { high } else { v })
        };
        if from < low || to > high || from > to {
            return Err(format!("{part:?} is outside {low}-{high}"));
        }
        let mut v = from;
        while v <= to {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl TryFrom<String> for Cron {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Cron::parse(&text)
    }
}

impl Cron {
    /// Parse "m h dom mon dow".
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [m, h, dom, mon, dow] = fields[..] else {
            return Err(format!(
                "{text:?} needs five fields: minute hour day-of-month month day-of-week"
            ));
        };
        let wrap = |e: String, name: &str| format!("{name} field of {text:?}: {e}");
        let mut weekdays = parse_field(dow, 0, 7).map_err(|e| wrap(e, "day-of-week"))?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Cron {
            minutes: parse_field(m, 0, 59).map_err(|e| wrap(e, "minute"))?,
            hours: parse_field(h, 0, 23).map_err(|e| wrap(e, "hour"))? as u32,
            days: parse_field(dom, 1, 31).map_err(|e| wrap(e, "day-of-month"))? as u32,
            months: parse_field(mon, 1, 12).map_err(|e| wrap(e, "month"))? as u16,
            weekdays: (weekdays & 0x7f) as u8,
            any_day: dom == "*",
            any_weekday: dow == "*",
        })
    }

    /// Whether the expression fires at this minute. As in classic cron, when both day fields
    /// are restricted, either may match.
    pub fn matches(&self, t: &CivilMinute) -> bool {
        let day_ok = self.days & (1 << t.day) != 0;
        let weekday_ok = self.weekdays & (1 << t.weekday) != 0;
        let day_match = match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (true, false) => weekday_ok,
            (false, true) => day_ok,
            (false, false) => day_ok || weekday_ok,
        };
        self.minutes & (1 << t.minute) != 0
            && self.hours & (1 << t.hour) != 0
            && self.months & (1 << t.month) != 0
            && day_match
    }

    /// Whether a window of `duration` starting at a firing of this expression covers
    /// `now_minutes` (minutes since the Unix epoch).
    pub fn window_covers(&self, now_minutes: u64, duration: Duration) -> bool {
        let span = (duration.as_secs() / 60).max(1);
        (0..span).any(|back| {
            now_minutes
                .checked_sub(back)
                .is_some_and(|m| self.matches(&CivilMinute::from_unix_minutes(m)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minutes(days: u64, hour: u64, minute: u64) -> u64 {
        days * 1440 + hour * 60 + minute
    }

    #[test]
    fn civil_conversion() {
        // 2026-11-24 is day 20781 since the epoch, a Tuesday.
        let t = CivilMinute::from_unix_minutes(minutes(20781, 11, 5));
        assert_eq!(
            (t.day, t.month, t.hour, t.minute, t.weekday),
            (24, 11, 11, 5, 2)
        );
        let t = CivilMinute::from_unix_minutes(0);
        assert_eq!((t.day, t.month, t.weekday), (1, 1, 4));
        // 2024-02-29, leap day.
        let t = CivilMinute::from_unix_minutes(minutes(19782, 0, 0));
        assert_eq!((t.day, t.month), (29, 2));
    }

    #[test]
    fn lunch_peak_window() {
        let cron = Cron::parse("0 11 * * *").unwrap();
        let two_hours = Duration::from_secs(7200);
        assert!(!cron.window_covers(minutes(20781, 10, 59), two_hours));
        assert!(cron.window_covers(minutes(20781, 11, 0), two_hours));
        assert!(cron.window_covers(minutes(20781, 12, 59), two_hours));
        assert!(!cron.window_covers(minutes(20781, 13, 0), two_hours));
    }

    #[test]
    fn fields_lists_ranges_steps() {
        let cron = Cron::parse("*/15 9-17 * * 1-5").unwrap();
        let tue_0930 = CivilMinute::from_unix_minutes(minutes(20781, 9, 30));
        let tue_0931 = CivilMinute::from_unix_minutes(minutes(20781, 9, 31));
        let sun_0930 = CivilMinute::from_unix_minutes(minutes(20779, 9, 30));
        assert!(cron.matches(&tue_0930));
        assert!(!cron.matches(&tue_0931));
        assert!(!cron.matches(&sun_0930));
        assert!(Cron::parse("0 0 * * 7")
            .unwrap()
            .matches(&sun_0930.clone_with_time(0, 0)));
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "*/0 * * * *",
            "a * * * *",
            "5-1 * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }

    impl CivilMinute {
        fn clone_with_time(&self, hour: u32, minute: u32) -> Self {
            CivilMinute {
                hour,
                minute,
                ..*self
            }
        }
    }
}
