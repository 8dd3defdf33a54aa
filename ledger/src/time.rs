//! Timestamps as they appear in entries: RFC 3339, UTC, exactly three fractional
//! digits (`2026-11-24T19:20:00.123Z`).
//!
//! One fixed textual form means a timestamp has one canonical encoding, so the
//! JCS bytes of an entry are a function of its meaning.

use std::fmt;

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

use crate::LedgerError;

const FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// A UTC instant with millisecond precision.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    pub fn now() -> Self {
        Self::from_datetime(OffsetDateTime::now_utc())
    }

    /// Truncates to whole milliseconds and converts to UTC.
    pub fn from_datetime(t: OffsetDateTime) -> Self {
        let t = t.to_offset(UtcOffset::UTC);
        let ms = t.millisecond();
        Self(t.replace_millisecond(ms).unwrap_or(t))
    }

    pub fn from_unix_millis(ms: i128) -> Result<Self, LedgerError> {
        ms.checked_mul(1_000_000)
            .and_then(|ns| OffsetDateTime::from_unix_timestamp_nanos(ns).ok())
            .map(Self)
            .ok_or_else(|| LedgerError::InvalidTimestamp("out of range".into()))
    }

    pub fn unix_millis(&self) -> i128 {
        self.0.unix_timestamp_nanos() / 1_000_000
    }

    pub fn datetime(&self) -> OffsetDateTime {
        self.0
    }

    /// Parses the canonical form only: anything that would not print back to the
    /// same text is rejected.
    pub fn parse(text: &str) -> Result<Self, LedgerError> {
        let bad = |why: &str| LedgerError::InvalidTimestamp(format!("{text:?}: {why}"));
        let t = time::PrimitiveDateTime::parse(text, FORMAT)
            .map_err(|_| bad("expected YYYY-MM-DDTHH:MM:SS.mmmZ"))?
            .assume_utc();
        let ts = Self(t);
        if ts.to_string() != text {
            return Err(bad("not in canonical form"));
        }
        Ok(ts)
    }

    pub fn plus_millis(&self, ms: i64) -> Self {
        Self(self.0 + time::Duration::milliseconds(ms))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Formatting a UTC datetime with a fixed description cannot fail for years 0..=9999.
        match self.0.format(FORMAT) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_round_trip() {
        let t = Timestamp::parse("2026-11-24T19:20:00.123Z").unwrap();
        assert_eq!(t.to_string(), "2026-11-24T19:20:00.123Z");
        for bad in [
            "2026-11-24T19:20:00Z",
            "2026-11-24T19:20:00.1234Z",
            "2026-11-24T19:20:00.123+00:00",
            "2026-11-24 19:20:00.123Z",
            "2026-13-24T19:20:00.123Z",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn now_is_canonical() {
        let t = Timestamp::now();
        assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
    }
}
