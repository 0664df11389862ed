//! Durations as users write them: `30s`, `5m`, `1h30m`, `7d`, `250ms`.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A positive duration parsed from a human string.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    /// Seconds as a float, for display and metrics.
    pub fn secs_f64(self) -> f64 {
        self.0.as_secs_f64()
    }
    /// Milliseconds, saturating.
    pub fn as_millis_i64(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
    /// Parses `30s`, `5m`, `1h30m`, `7d`, `250ms`.
    pub fn parse(s: &str) -> Result<Dur, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("empty duration: write a number and a unit, e.g. `30s`".into());
        }
        if t.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "duration `{t}` has no unit: write e.g. `{t}s` or `{t}ms`"
            ));
        }
        match humantime::parse_duration(t) {
            Ok(d) => Ok(Dur(d)),
            Err(_) => Err(format!(
                "invalid duration `{t}`: expected a number followed by a unit (ms, s, m, h, d), e.g. `30s` or `1h30m`"
            )),
        }
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"30s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "duration must be a string with a unit, e.g. \"{v}s\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(Dur::parse("30s").unwrap().0, Duration::from_secs(30));
        assert_eq!(Dur::parse("5m").unwrap().0, Duration::from_secs(300));
        assert_eq!(Dur::parse("1h30m").unwrap().0, Duration::from_secs(5400));
        assert_eq!(Dur::parse("7d").unwrap().0, Duration::from_secs(7 * 86400));
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
    }

    #[test]
    fn rejects_bad_forms() {
        assert!(Dur::parse("10").unwrap_err().contains("no unit"));
        assert!(Dur::parse("5x").unwrap_err().contains("invalid duration"));
        assert!(Dur::parse("").is_err());
    }
}
