//! Durations (`30m`, `1h30m`, `7d`) and absolute timestamps
//! (`2026-12-01T18:00:00Z`) as policy files and the CLI write them.

use std::time::Duration;

use jiff::{Span, SpanRelativeTo, Timestamp};
use serde::Serializer;

const DURATION_EXAMPLES: &str = "`30m`, `2h`, `1h30m` or `7d`";
const TIMESTAMP_EXAMPLE: &str = "`2026-12-01T18:00:00Z`";

/// Parses a length of time such as `30m`, `3s`, `2h`, `1h30m` or `7d`.
///
/// A day is 24 hours and a week 7 days, so the result does not depend on
/// the calendar; months and years, which have no fixed length, are refused.
/// The duration must be longer than zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let shown = text.escape_debug();
    let span: Span = text.parse().map_err(|_| {
        format!("`{shown}` is not a duration; expected something like {DURATION_EXAMPLES}")
    })?;
    if span.get_years() != 0 || span.get_months() != 0 {
        return Err(format!(
            "`{shown}` has no fixed length because months and years vary; write it in days, like `30d`"
        ));
    }
    let signed = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|_| format!("duration `{shown}` is too long"))?;
    match Duration::try_from(signed) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(format!("duration `{shown}` must be longer than zero")),
    }
}

/// Parses an RFC 3339 timestamp, which names one instant everywhere only
/// because it carries a UTC offset (`Z` or `+01:00`).
///
/// jiff's parser also takes ISO 8601 forms RFC 3339 does not have (basic
/// `20261201T180000Z`, hour-only times, `[Europe/Paris]` annotations), so the
/// shape is checked first: a policy should mean the same to every tool that
/// reads it.
pub(crate) fn parse_timestamp(text: &str) -> Result<Timestamp, String> {
    let shown = text.escape_debug();
    if !is_rfc3339(text) {
        let civil =
            text.parse::<jiff::civil::DateTime>().is_ok() && text.parse::<Timestamp>().is_err();
        return Err(if !civil {
            format!(
                "`{shown}` is not an RFC 3339 timestamp; expected something like {TIMESTAMP_EXAMPLE}"
            )
        } else if !text.contains(['T', 't', ' ']) {
            format!(
                "`{shown}` is a date without a time and UTC offset; write an instant, like {TIMESTAMP_EXAMPLE}"
            )
        } else {
            format!(
                "timestamp `{shown}` has no UTC offset, so hosts in different time zones would read it differently; write `Z` or an offset, like {TIMESTAMP_EXAMPLE} or `2026-12-01T19:00:00+01:00`"
            )
        });
    }
    // jiff reads second 60 as second 59, so `23:59:60Z` and `23:59:59Z` would name one
    // instant, and `12:00:60Z` (no leap second is ever inserted there) would pass unnoticed.
    // The kernel's clock has no leap second to name either.
    if text.as_bytes()[17..19] == *b"60" {
        return Err(format!(
            "`{shown}` names second 60 (a leap second), which no clock here can tell from second \
             59; write `:59` or the next minute's `:00`"
        ));
    }
    text.parse()
        .map_err(|e| format!("`{shown}` is not a valid timestamp: {e}"))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`, with RFC 3339's
/// allowance for a lowercase `t` and `z` or a space instead of the `T`.
fn is_rfc3339(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|b| b.iter().all(u8::is_ascii_digit))
    };
    let byte_is = |at: usize, allowed: &[u8]| bytes.get(at).is_some_and(|b| allowed.contains(b));
    let date_time = digits(0..4)
        && byte_is(4, b"-")
        && digits(5..7)
        && byte_is(7, b"-")
        && digits(8..10)
        && byte_is(10, b"Tt ")
        && digits(11..13)
        && byte_is(13, b":")
        && digits(14..16)
        && byte_is(16, b":")
        && digits(17..19);
    if !date_time {
        return false;
    }
    let mut rest = &bytes[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let len = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if len == 0 {
            return false;
        }
        rest = &fraction[len..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        // jiff takes offsets up to ±25:59; RFC 3339 stops at 23:59.
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            [h1, h2, m1, m2].into_iter().all(u8::is_ascii_digit)
                && (*h1, *h2) <= (b'2', b'3')
                && *m1 <= b'5'
        }
        _ => false,
    }
}

/// Whole seconds as an integer, so status JSON reads `"ttl_secs": 1800`;
/// a fraction is kept rather than rounded away.
pub(crate) fn serialize_secs<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    if duration.subsec_nanos() == 0 {
        s.serialize_u64(duration.as_secs())
    } else {
        s.serialize_f64(duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        for (text, want) in [
            ("30m", Duration::from_secs(30 * 60)),
            ("3s", Duration::from_secs(3)),
            ("2h", hours(2)),
            ("1h30m", Duration::from_secs(90 * 60)),
            ("1h 30m", Duration::from_secs(90 * 60)),
            ("1.5h", Duration::from_secs(90 * 60)),
            ("7d", hours(7 * 24)),
            ("1w", hours(7 * 24)),
            ("2 days", hours(48)),
            ("PT12H", hours(12)),
            ("250ms", Duration::from_millis(250)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn invalid_durations() {
        let malformed = |text: &str| {
            format!(
                "`{text}` is not a duration; expected something like `30m`, `2h`, `1h30m` or `7d`"
            )
        };
        let varying = |text: &str| {
            format!(
                "`{text}` has no fixed length because months and years vary; write it in days, like `30d`"
            )
        };
        let not_positive = |text: &str| format!("duration `{text}` must be longer than zero");
        for (text, want) in [
            ("", malformed("")),
            ("30", malformed("30")),
            ("soon", malformed("soon")),
            (" 1h", malformed(" 1h")),
            ("99999999999999999999h", malformed("99999999999999999999h")),
            ("1mo", varying("1mo")),
            ("1y", varying("1y")),
            ("1y 2d", varying("1y 2d")),
            ("P1M", varying("P1M")),
            ("0s", not_positive("0s")),
            ("0d", not_positive("0d")),
            ("-1h", not_positive("-1h")),
            ("1h ago", not_positive("1h ago")),
        ] {
            assert_eq!(parse_duration(text), Err(want), "{text:?}");
        }
    }

    #[test]
    fn timestamps() {
        for (text, want) in [
            ("2026-12-01T18:00:00Z", "2026-12-01T18:00:00Z"),
            ("2026-12-01t18:00:00z", "2026-12-01T18:00:00Z"),
            ("2026-12-01 18:00:00Z", "2026-12-01T18:00:00Z"),
            ("2026-12-01T19:00:00+01:00", "2026-12-01T18:00:00Z"),
            ("2026-12-01T13:00:00-05:00", "2026-12-01T18:00:00Z"),
            ("2026-12-01T18:00:00-00:00", "2026-12-01T18:00:00Z"),
            ("2026-12-01T18:00:00.25Z", "2026-12-01T18:00:00.25Z"),
        ] {
            assert_eq!(
                parse_timestamp(text).map(|t| t.to_string()),
                Ok(want.to_owned()),
                "{text:?}"
            );
        }
    }

    #[test]
    fn invalid_timestamps() {
        let example = "like `2026-12-01T18:00:00Z`";
        let not_rfc3339 = |text: &str| {
            format!("`{text}` is not an RFC 3339 timestamp; expected something {example}")
        };
        let no_offset = |text: &str| {
            format!(
                "timestamp `{text}` has no UTC offset, so hosts in different time zones would read it differently; write `Z` or an offset, {example} or `2026-12-01T19:00:00+01:00`"
            )
        };
        for (text, want) in [
            ("2026-12-01T18:00:00", no_offset("2026-12-01T18:00:00")),
            ("2026-12-01T18:00", no_offset("2026-12-01T18:00")),
            (
                "2026-12-01",
                format!(
                    "`2026-12-01` is a date without a time and UTC offset; write an instant, {example}"
                ),
            ),
            ("", not_rfc3339("")),
            ("tomorrow", not_rfc3339("tomorrow")),
            ("2026-12-01T18:00Z", not_rfc3339("2026-12-01T18:00Z")),
            ("20261201T180000Z", not_rfc3339("20261201T180000Z")),
            (
                "2026-12-01T18:00:00+0100",
                not_rfc3339("2026-12-01T18:00:00+0100"),
            ),
            (
                "2026-12-01T18:00:00+24:00",
                not_rfc3339("2026-12-01T18:00:00+24:00"),
            ),
            (
                "2026-12-01T18:00:00+01:60",
                not_rfc3339("2026-12-01T18:00:00+01:60"),
            ),
            (
                "2026-12-01T18:00:00.Z",
                not_rfc3339("2026-12-01T18:00:00.Z"),
            ),
            (
                "2026-12-01T18:00:00Z[Europe/Paris]",
                not_rfc3339("2026-12-01T18:00:00Z[Europe/Paris]"),
            ),
            ("1764612000", not_rfc3339("1764612000")),
            (
                "2026-12-01T18:00:00Zé",
                not_rfc3339("2026-12-01T18:00:00Zé"),
            ),
        ] {
            assert_eq!(parse_timestamp(text), Err(want), "{text:?}");
        }
        for text in ["2026-12-31T23:59:60Z", "2026-12-01T12:00:60.5+01:00"] {
            assert_eq!(
                parse_timestamp(text),
                Err(format!(
                    "`{text}` names second 60 (a leap second), which no clock here can tell \
                     from second 59; write `:59` or the next minute's `:00`"
                ))
            );
        }
        for text in ["2026-02-30T00:00:00Z", "2026-12-01T24:00:00Z"] {
            let message = parse_timestamp(text).expect_err(text);
            assert!(
                message.starts_with(&format!("`{text}` is not a valid timestamp: ")),
                "{message}"
            );
        }
    }
}
