//! Timestamps in Go's JSON form (RFC 3339 with trailing-zero-trimmed nanoseconds, `Z` for UTC),
//! so that Reflow can read what this agent writes. Go's zero time is `0001-01-01T00:00:00Z`.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// A wall-clock instant in UTC.
pub type Time = DateTime<Utc>;

/// Go's zero `time.Time`, which Reflow writes for unset timestamps.
pub fn zero() -> Time {
    NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|n| n.and_utc())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Whether `t` is Go's zero time.
pub fn is_zero(t: &Time) -> bool {
    *t == zero()
}

/// Formats like Go's `time.RFC3339Nano` in UTC.
pub fn format(t: &Time) -> String {
    let s = t.to_rfc3339_opts(SecondsFormat::Nanos, true);
    // "...:05.120000000Z" -> "...:05.12Z"; "...:05.000000000Z" -> "...:05Z"
    match s.rsplit_once('.') {
        Some((head, frac)) => {
            let digits = frac.trim_end_matches('Z').trim_end_matches('0');
            if digits.is_empty() {
                format!("{head}Z")
            } else {
                format!("{head}.{digits}Z")
            }
        }
        None => s,
    }
}

/// Parses RFC 3339 with any offset and fraction.
///
/// # Errors
/// The parse error when `s` is not RFC 3339.
pub fn parse(s: &str) -> Result<Time, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
}

/// Serde `with` module for a [`Time`] in Go's form.
pub mod go {
    use super::*;

    /// Serializes in Go's RFC3339Nano form.
    ///
    /// # Errors
    /// Only the serializer's own errors.
    pub fn serialize<S: Serializer>(t: &Time, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    /// Deserializes RFC 3339; `null` is the zero time.
    ///
    /// # Errors
    /// A string that is not RFC 3339.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Time, D::Error> {
        let s = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
        match s {
            None => Ok(zero()),
            Some(s) => parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_format() {
        assert_eq!(format(&zero()), "0001-01-01T00:00:00Z");
        let t = parse("2023-10-01T12:34:56.120000000+00:00").unwrap();
        assert_eq!(format(&t), "2023-10-01T12:34:56.12Z");
        let t = parse("2023-10-01T14:34:56.000000001+02:00").unwrap();
        assert_eq!(format(&t), "2023-10-01T12:34:56.000000001Z");
        assert!(is_zero(&parse("0001-01-01T00:00:00Z").unwrap()));
        assert!(parse("yesterday").is_err());
    }
}
