//! Human durations for config: `"100ms"`, `"2s"`, `"5m"`, `"1h"` (whole numbers and a unit, so
//! a key never needs one in its name).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeSpan(pub Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: use a whole number and a unit (ms, s, m, h), e.g. \"2s\"")]
pub struct SpanError(String);

impl FromStr for TimeSpan {
    type Err = SpanError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || SpanError(text.to_owned());
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(err)?;
        let (digits, unit) = trimmed.split_at(split);
        let n: u64 = digits.parse().map_err(|_| err())?;
        let millis_per: u64 = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(err()),
        };
        n.checked_mul(millis_per)
            .map(|ms| TimeSpan(Duration::from_millis(ms)))
            .ok_or_else(err)
    }
}

impl fmt::Display for TimeSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, per) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
            if ms >= per && ms % per == 0 {
                return write!(f, "{}{unit}", ms / per);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl<'de> serde::Deserialize<'de> for TimeSpan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_units() {
        let p = |s: &str| s.parse::<TimeSpan>().map(|t| t.0);
        assert_eq!(p("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(p("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(p(" 5m "), Ok(Duration::from_secs(300)));
        assert_eq!(p("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "2",
            "s",
            "1.5s",
            "-1s",
            "2 days",
            "99999999999999999999h",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert_eq!(TimeSpan(Duration::from_secs(120)).to_string(), "2m");
        assert_eq!(TimeSpan(Duration::from_millis(1500)).to_string(), "1500ms");
    }

    proptest! {
        #[test]
        fn display_parses_back(ms in 0u64..u64::MAX / 4_000_000) {
            let t = TimeSpan(Duration::from_millis(ms));
            prop_assert_eq!(t.to_string().parse::<TimeSpan>(), Ok(t));
        }

        #[test]
        fn never_panics(text in "\\PC{0,30}") {
            let _ = text.parse::<TimeSpan>();
        }
    }
}
