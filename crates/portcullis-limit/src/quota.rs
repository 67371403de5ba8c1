//! [`Quota`]: how many requests, per what, with what burst, in a form that cannot be misread.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

/// The unit of time a [`Quota`]'s rate is counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Per {
    /// Requests per second (`N/s`).
    Second,
    /// Requests per minute (`N/m`).
    Minute,
    /// Requests per hour (`N/h`).
    Hour,
}

impl Per {
    /// The length of this unit.
    #[must_use]
    pub const fn duration(self) -> Duration {
        Duration::from_secs(self.seconds())
    }

    /// The length of this unit in seconds.
    #[must_use]
    pub const fn seconds(self) -> u64 {
        match self {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3600,
        }
    }

    const fn suffix(self) -> &'static str {
        match self {
            Per::Second => "s",
            Per::Minute => "m",
            Per::Hour => "h",
        }
    }
}

/// A request rate with a burst: `100/s burst 20` allows 100 requests per second on average and
/// at most 20 at once after a quiet period.
///
/// The limiter is a GCRA (the generic cell rate algorithm, the same arithmetic as a token
/// bucket): one request is allowed every `per / rate`, and up to `burst` requests may be taken
/// ahead of that schedule. Over any window of length `t` a client gets at most
/// `burst + rate × t / per` requests.
///
/// Written as a string it is `N/s`, `N/m` or `N/h`, optionally followed by `burst B`
/// (`"100/s burst 20"`, `"600/m"`). Without a burst, the burst equals the rate: `100/s` allows
/// 100 requests at once, then 100 per second. Zero, a missing unit and trailing words are
/// errors, never silently a different limit.
///
/// ```
/// use portcullis_limit::Quota;
///
/// let quota: Quota = "100/s burst 20".parse()?;
/// assert_eq!(quota.rate().get(), 100);
/// assert_eq!(quota.max_burst().get(), 20);
/// assert_eq!(quota.to_string(), "100/s burst 20");
/// assert!("0/s".parse::<Quota>().is_err());
/// # Ok::<(), portcullis_limit::QuotaError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    rate: NonZeroU32,
    per: Per,
    burst: NonZeroU32,
}

impl Quota {
    /// `rate` requests per `per`, with a burst equal to the rate.
    #[must_use]
    pub const fn new(rate: NonZeroU32, per: Per) -> Self {
        Self {
            rate,
            per,
            burst: rate,
        }
    }

    /// `rate` requests per second, burst equal to the rate.
    #[must_use]
    pub const fn per_second(rate: NonZeroU32) -> Self {
        Self::new(rate, Per::Second)
    }

    /// `rate` requests per minute, burst equal to the rate.
    #[must_use]
    pub const fn per_minute(rate: NonZeroU32) -> Self {
        Self::new(rate, Per::Minute)
    }

    /// `rate` requests per hour, burst equal to the rate.
    #[must_use]
    pub const fn per_hour(rate: NonZeroU32) -> Self {
        Self::new(rate, Per::Hour)
    }

    /// Sets how many requests may arrive at once after a quiet period.
    ///
    /// The time to refill the whole burst must fit in 2^64 nanoseconds (about 584 years):
    /// parsing refuses a larger burst, and the limiter caps one set here at that (a burst
    /// that takes centuries to refill is no limit anyway).
    #[must_use]
    pub const fn burst(mut self, burst: NonZeroU32) -> Self {
        self.burst = burst;
        self
    }

    /// The number of requests per [`Quota::per`].
    #[must_use]
    pub const fn rate(&self) -> NonZeroU32 {
        self.rate
    }

    /// The unit of time of [`Quota::rate`].
    #[must_use]
    pub const fn per(&self) -> Per {
        self.per
    }

    /// How many requests may arrive at once.
    #[must_use]
    pub const fn max_burst(&self) -> NonZeroU32 {
        self.burst
    }

    /// The interval at which one more request is allowed: `per / rate`.
    #[must_use]
    pub fn interval(&self) -> Duration {
        // Nanosecond precision: 3/s gives 333_333_333 ns. Rates above 10^9/s would round to
        // zero; the interval is at least 1 ns.
        let nanos = self.per.duration().as_nanos() / u128::from(self.rate.get());
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX).max(1))
    }

    /// One instance's share when `parts` instances split this quota: the rate divided by
    /// `parts`, in the finest unit where it divides exactly (`100/s` split 3 ways is `2000/m`),
    /// else per hour rounded down; the burst divided by `parts`, rounded down. Both are at
    /// least 1, so a quota smaller than the fleet (`1/h` across 20 instances) gives each
    /// instance `1/h`: the least a limit can allow.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use portcullis_limit::Quota;
    ///
    /// let quota: Quota = "100/s burst 30".parse()?;
    /// let three = NonZeroU32::new(3).expect("not zero");
    /// assert_eq!(quota.share(three).to_string(), "2000/m burst 10");
    /// # Ok::<(), portcullis_limit::QuotaError>(())
    /// ```
    #[must_use]
    pub fn share(self, parts: NonZeroU32) -> Quota {
        let n = u64::from(parts.get());
        let rate = u64::from(self.rate.get());
        let units = [Per::Second, Per::Minute, Per::Hour];
        let exact = units
            .into_iter()
            .filter(|per| per.seconds() >= self.per.seconds())
            .find_map(|per| {
                let scaled = rate * (per.seconds() / self.per.seconds());
                let share = u32::try_from(scaled / n).ok()?;
                scaled.is_multiple_of(n).then_some((share, per))
            });
        let (share, per) = exact.unwrap_or_else(|| {
            let hourly = rate * (Per::Hour.seconds() / self.per.seconds()) / n;
            match u32::try_from(hourly) {
                Ok(hourly) => (hourly, Per::Hour),
                // Only for rates near u32::MAX per unit: rounded down in the quota's own unit.
                Err(_) => (u32::try_from(rate / n).unwrap_or(u32::MAX), self.per),
            }
        });
        let burst = self.burst.get() / parts.get();
        Quota::new(NonZeroU32::new(share).unwrap_or(NonZeroU32::MIN), per)
            .burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
    }

    /// The largest burst whose refill time (`interval × (burst − 1)`) fits in `u64`
    /// nanoseconds, which governor's arithmetic needs.
    fn max_burst_for_rate(&self) -> u32 {
        let interval = self.interval().as_nanos().max(1);
        let max = u128::from(u64::MAX) / interval + 1;
        u32::try_from(max).unwrap_or(u32::MAX)
    }

    /// The equivalent [`governor::Quota`], with the burst capped as [`Quota::burst`] says.
    pub(crate) fn to_governor(self) -> governor::Quota {
        let quota = match self.per {
            Per::Second => governor::Quota::per_second(self.rate),
            Per::Minute => governor::Quota::per_minute(self.rate),
            Per::Hour => governor::Quota::per_hour(self.rate),
        };
        let burst = self.burst.get().min(self.max_burst_for_rate());
        quota.allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.rate, self.per.suffix())?;
        if self.burst != self.rate {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

/// Why a string is not a [`Quota`]. The message quotes the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaError {
    input: String,
    reason: &'static str,
}

impl QuotaError {
    fn new(input: &str, reason: &'static str) -> Self {
        // Quote at most 64 characters of what was given.
        let input: String = input.chars().take(64).collect();
        Self { input, reason }
    }

    /// What was wrong, without the input.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid rate {:?}: {} (expected N/s, N/m or N/h, optionally followed by `burst B`, \
             for example \"100/s burst 20\")",
            self.input, self.reason
        )
    }
}

impl std::error::Error for QuotaError {}

fn parse_count(input: &str, digits: &str, what: &'static str) -> Result<NonZeroU32, QuotaError> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuotaError::new(
            input,
            match what {
                "rate" => "the rate is not a whole number",
                _ => "the burst is not a whole number",
            },
        ));
    }
    let value: u32 = digits.parse().map_err(|_| {
        QuotaError::new(
            input,
            match what {
                "rate" => "the rate is larger than 4294967295",
                _ => "the burst is larger than 4294967295",
            },
        )
    })?;
    NonZeroU32::new(value).ok_or_else(|| {
        QuotaError::new(
            input,
            match what {
                "rate" => "the rate must be at least 1",
                _ => "the burst must be at least 1",
            },
        )
    })
}

impl FromStr for Quota {
    type Err = QuotaError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let mut words = input.split_ascii_whitespace();
        let Some(rate) = words.next() else {
            return Err(QuotaError::new(input, "it is empty"));
        };
        let Some((count, unit)) = rate.split_once('/') else {
            return Err(QuotaError::new(input, "the rate has no unit"));
        };
        let per = match unit {
            "s" | "sec" | "second" => Per::Second,
            "m" | "min" | "minute" => Per::Minute,
            "h" | "hour" => Per::Hour,
            _ => return Err(QuotaError::new(input, "the unit is not s, m or h")),
        };
        let mut quota = Quota::new(parse_count(input, count, "rate")?, per);
        match (words.next(), words.next(), words.next()) {
            (None, _, _) => {}
            (Some("burst"), Some(burst), None) => {
                quota = quota.burst(parse_count(input, burst, "burst")?);
            }
            (Some("burst"), None, _) => {
                return Err(QuotaError::new(input, "`burst` has no value"));
            }
            _ => return Err(QuotaError::new(input, "unexpected words after the rate")),
        }
        if quota.burst.get() > quota.max_burst_for_rate() {
            return Err(QuotaError::new(
                input,
                "the burst is too large for the rate (refilling it would take over 584 years)",
            ));
        }
        Ok(quota)
    }
}

impl TryFrom<&str> for Quota {
    type Error = QuotaError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        value.parse()
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Quota {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Quota {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
    }

    #[test]
    fn parses_each_unit_and_burst() {
        assert_eq!("100/s".parse(), Ok(Quota::per_second(nz(100))));
        assert_eq!("600/m".parse(), Ok(Quota::per_minute(nz(600))));
        assert_eq!("5/h".parse(), Ok(Quota::per_hour(nz(5))));
        assert_eq!(
            "100/s burst 20".parse(),
            Ok(Quota::per_second(nz(100)).burst(nz(20)))
        );
        assert_eq!(
            "  7/min   burst   3 ".parse(),
            Ok(Quota::per_minute(nz(7)).burst(nz(3)))
        );
    }

    #[test]
    fn rejects_zero_and_nonsense_with_a_reason() {
        for (input, reason) in [
            ("", "it is empty"),
            ("100", "the rate has no unit"),
            ("100/d", "the unit is not s, m or h"),
            ("0/s", "the rate must be at least 1"),
            ("-1/s", "the rate is not a whole number"),
            ("1.5/s", "the rate is not a whole number"),
            ("99999999999/s", "the rate is larger than 4294967295"),
            ("10/s burst 0", "the burst must be at least 1"),
            ("10/s burst", "`burst` has no value"),
            ("10/s burst x", "the burst is not a whole number"),
            ("10/s 20", "unexpected words after the rate"),
            ("10/s burst 2 3", "unexpected words after the rate"),
            (
                "1/h burst 4294967295",
                "the burst is too large for the rate (refilling it would take over 584 years)",
            ),
        ] {
            let error = input.parse::<Quota>().expect_err(input);
            assert_eq!(error.reason(), reason, "{input:?}");
            assert!(error.to_string().contains(&format!("{input:?}")), "{error}");
        }
    }

    #[test]
    fn interval_divides_the_unit() {
        assert_eq!(
            Quota::per_second(nz(4)).interval(),
            Duration::from_millis(250)
        );
        assert_eq!(Quota::per_minute(nz(1)).interval(), Duration::from_secs(60));
        assert_eq!(
            Quota::per_second(nz(3)).interval(),
            Duration::from_nanos(333_333_333)
        );
    }

    #[cfg(feature = "serde")]
    #[test]
    fn quotas_come_from_toml_strings_with_the_same_errors() {
        #[derive(Debug, serde::Deserialize, serde::Serialize)]
        struct Config {
            rate: Quota,
        }
        let config: Config = toml::from_str("rate = \"100/s burst 20\"").expect("valid");
        assert_eq!(config.rate, Quota::per_second(nz(100)).burst(nz(20)));
        let error = toml::from_str::<Config>("rate = \"0/m\"").expect_err("zero");
        assert!(
            error.to_string().contains("the rate must be at least 1"),
            "{error}"
        );
        assert!(
            toml::from_str::<Config>("rate = 100").is_err(),
            "a number is not a rate"
        );
        assert_eq!(
            toml::to_string(&config).ok().as_deref(),
            Some("rate = \"100/s burst 20\"\n")
        );
    }

    proptest! {
        #[test]
        fn display_round_trips(rate in 1u32.., burst in 1u32.., unit in 0..3u8) {
            let per = [Per::Second, Per::Minute, Per::Hour][usize::from(unit)];
            let quota = Quota::new(nz(rate), per).burst(nz(burst));
            let parsed = quota.to_string().parse::<Quota>();
            if u128::from(burst - 1) * quota.interval().as_nanos() <= u128::from(u64::MAX) {
                prop_assert_eq!(parsed, Ok(quota));
            } else {
                prop_assert!(parsed.is_err_and(|e| e.reason().contains("too large")));
            }
            // Whatever was set, the limiter never overflows governor's arithmetic.
            let limiter = crate::GlobalLimiter::new(quota);
            let _ = limiter.check();
        }

        #[test]
        fn a_share_is_the_rate_divided_rounded_down_by_less_than_one_an_hour(
            rate in 1u32.., burst in 1u32.., unit in 0..3u8, parts in 1u32..10_000,
        ) {
            let per = [Per::Second, Per::Minute, Per::Hour][usize::from(unit)];
            let quota = Quota::new(nz(rate), per).burst(nz(burst));
            let share = quota.share(nz(parts));
            // Requests per hour, exactly: the share is never above the quota's part, and below
            // it by less than one request an hour (or it is the least, 1 per its unit).
            let hourly = |q: Quota| u128::from(q.rate().get()) * u128::from(3600 / q.per().seconds());
            let part = hourly(quota) * 1_000_000 / u128::from(parts);
            let got = hourly(share) * 1_000_000;
            if share.rate().get() == 1 && hourly(quota) < u128::from(parts) {
                prop_assert_eq!(share.per(), Per::Hour);
            } else if share.per() == Per::Hour || share.per() == per {
                prop_assert!(got <= part && part - got < 1_000_000 * u128::from(3600 / share.per().seconds()),
                    "{} / {} = {}", quota, parts, share);
            } else {
                prop_assert_eq!(got, part, "{} / {} = {}", quota, parts, share);
            }
            prop_assert_eq!(share.max_burst().get(), (burst / parts).max(1));
            if parts == 1 {
                prop_assert_eq!(hourly(share), hourly(quota));
            }
        }

        #[test]
        fn any_string_parses_or_errors_without_panicking(input in ".{0,40}") {
            let _ = input.parse::<Quota>();
        }
    }
}
