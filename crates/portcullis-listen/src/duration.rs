//! Human-written durations (`"5s"`, `"250ms"`, `"1m 30s"`), parsed by the `humantime` crate,
//! with an error that names the rejected input, and serde helpers that deserialize a
//! [`Duration`] from such a string.
//!
//! Grammar (humantime's): one or more `<digits><unit>` pairs, optionally separated by spaces,
//! where `unit` is `ns`, `us`, `ms`, `s`, `m`, `h`, `d` or a spelled-out form (`sec`, `min`,
//! `hours`, …). Surrounding whitespace is ignored. The bare string `"0"` means zero; any other
//! number needs a unit, so `"5"` is rejected rather than guessed at. Decimal fractions
//! (`"1.5s"`) are accepted; signs are not.

use std::fmt;
use std::time::Duration;

use serde::Deserializer;
use serde::de::{self, Visitor};

/// The error returned by [`parse_duration`]: names the rejected input and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseDurationError {
    input: String,
    reason: &'static str,
}

impl ParseDurationError {
    fn new(input: &str, reason: &'static str) -> Self {
        // Bound the copy of untrusted input kept in the error.
        let input: String = input.chars().take(64).collect();
        Self { input, reason }
    }

    /// The input that was rejected (at most its first 64 characters).
    #[must_use]
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for ParseDurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid duration {:?}: {}", self.input, self.reason)
    }
}

impl std::error::Error for ParseDurationError {}

const EXPECTED: &str = "expected a number followed by a unit (ns, us, ms, s, m, h, d), for example \"5s\" or \"250ms\"";

/// Parses a duration such as `"5s"`, `"250ms"`, `"1m"` or `"1h30m"`.
///
/// # Errors
///
/// Returns [`ParseDurationError`] for an empty string, a number without a unit (other than
/// `"0"`), an unknown unit, a sign, or a value too large for [`Duration`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use portcullis_listen::parse_duration;
///
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert!(parse_duration("5").is_err());
/// ```
pub fn parse_duration(input: &str) -> Result<Duration, ParseDurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(ParseDurationError::new(input, EXPECTED));
    }
    humantime::parse_duration(s).map_err(|error| {
        use humantime::DurationError as E;
        let reason = match error {
            E::NumberExpected(_) | E::Empty => EXPECTED,
            E::InvalidCharacter(_) => "unexpected character (signs are not accepted)",
            E::UnknownUnit { .. } => "unknown unit (expected ns, us, ms, s, m, h or d)",
            E::NumberOverflow => "duration too large",
        };
        ParseDurationError::new(input, reason)
    })
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string such as \"5s\" or \"250ms\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
}

/// Deserializes a [`Duration`] from a string accepted by [`parse_duration`].
///
/// For use as `#[serde(deserialize_with = "portcullis_listen::duration::deserialize")]`.
///
/// # Errors
///
/// Fails when the value is not a string or [`parse_duration`] rejects it.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_str(DurationVisitor)
}

/// Deserializes an optional [`Duration`]: a string accepted by [`parse_duration`] gives
/// `Some`, and an explicit null (where the format has one) gives `None`.
///
/// For use as `#[serde(default, deserialize_with = "portcullis_listen::duration::deserialize_option")]`.
///
/// # Errors
///
/// Fails when the value is neither null nor a string that [`parse_duration`] accepts.
pub fn deserialize_option<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    struct OptionVisitor;

    impl<'de> Visitor<'de> for OptionVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"5s\" or \"250ms\"")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            deserialize(d).map(Some)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_duration(v).map(Some).map_err(E::custom)
        }
    }

    deserializer.deserialize_option(OptionVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_each_unit() {
        let cases = [
            ("7ns", Duration::from_nanos(7)),
            ("7us", Duration::from_micros(7)),
            ("7µs", Duration::from_micros(7)),
            ("250ms", Duration::from_millis(250)),
            ("5s", Duration::from_secs(5)),
            ("1m", Duration::from_secs(60)),
            ("2h", Duration::from_secs(7200)),
            ("1d", Duration::from_secs(86_400)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            (" 5s ", Duration::from_secs(5)),
            ("1m30s", Duration::from_secs(90)),
            ("1s500ms", Duration::from_millis(1500)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for input in [
            "",
            " ",
            "5",
            "s",
            "5x",
            "-5s",
            "+5s",
            "5S",
            "ms5",
            "1m30",
            "99999999999999999999s",
            "18446744073709551615d",
        ] {
            let err = parse_duration(input).expect_err(input);
            assert!(err.to_string().contains("invalid duration"), "{err}");
        }
    }

    #[test]
    fn humantime_forms_are_accepted() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5 s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn error_names_input() {
        let err = parse_duration("5x").expect_err("5x");
        assert_eq!(err.input(), "5x");
        assert_eq!(
            err.to_string(),
            "invalid duration \"5x\": unknown unit (expected ns, us, ms, s, m, h or d)"
        );
    }

    fn unit() -> impl Strategy<Value = (&'static str, u64)> {
        prop_oneof![
            Just(("ns", 1)),
            Just(("us", 1_000)),
            Just(("ms", 1_000_000)),
            Just(("s", 1_000_000_000)),
            Just(("m", 60_000_000_000)),
            Just(("h", 3_600_000_000_000)),
        ]
    }

    proptest! {
        #[test]
        fn round_trips_single_unit(value in 0u64..1_000_000, (suffix, nanos) in unit()) {
            let parsed = parse_duration(&format!("{value}{suffix}"));
            prop_assert_eq!(parsed, Ok(Duration::from_nanos(value * nanos)));
        }

        #[test]
        fn compound_is_the_sum(a in 0u64..10_000, b in 0u64..10_000, c in 0u64..10_000) {
            let parsed = parse_duration(&format!("{a}h{b}m{c}ms"));
            let want = Duration::from_secs(a * 3600 + b * 60) + Duration::from_millis(c);
            prop_assert_eq!(parsed, Ok(want));
        }

        #[test]
        fn never_panics(s in "\\PC{0,24}") {
            let _ = parse_duration(&s);
        }

        #[test]
        fn bare_numbers_other_than_zero_are_rejected(value in 1u64..u64::MAX) {
            prop_assert!(parse_duration(&value.to_string()).is_err());
        }
    }
}
