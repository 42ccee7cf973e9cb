//! Cron schedules the way the CronJob controller reads them (robfig/cron's standard parser):
//! five fields `minute hour day-of-month month day-of-week` with `*`, `?`, ranges `a-b`,
//! steps `/n`, lists `a,b` and names (`jan`..`dec`, `sun`..`sat`); the macros `@yearly`
//! `@annually` `@monthly` `@weekly` `@daily` `@midnight` `@hourly`; and `@every <duration>`.
//! `TZ=`/`CRON_TZ=` prefixes are rejected as Kubernetes does: `spec.timeZone` says it.
//!
//! Times are evaluated in a [`jiff::tz::TimeZone`] on the civil clock; a time that falls in
//! a DST gap runs at the first instant after the gap, one repeated by a DST fold runs once.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Five cron fields as bit sets.
    Fields(Fields),
    /// `@every <duration>`: a constant delay in seconds.
    Every(i64),
}

/// The five fields as bit sets (bit n set = value n allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    minutes: u64,
    hours: u64,
    dom: u64,
    months: u64,
    /// Sunday is bit 0 (7 is folded onto 0).
    dow: u64,
    /// `*`/`?` (without a step) in day-of-month or day-of-week: then both must match,
    /// otherwise either may (cron's classic OR rule).
    dom_star: bool,
    dow_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// How far ahead [`Schedule::next_after`] looks before deciding a schedule never fires
/// (e.g. `0 0 30 2 *`): robfig/cron gives up after five years too.
const HORIZON_YEARS: i16 = 5;

impl Schedule {
    /// Parses a schedule, with the parser's complaint on error.
    ///
    /// ```
    /// use kedge_plugin_cronjob::cron::Schedule;
    /// assert!(Schedule::parse("*/15 9-17 * * mon-fri").is_ok());
    /// assert!(Schedule::parse("@hourly").is_ok());
    /// assert!(Schedule::parse("TZ=UTC 0 * * * *").is_err());
    /// assert!(Schedule::parse("61 * * * *").is_err());
    /// ```
    pub fn parse(schedule: &str) -> Result<Self, String> {
        let s = schedule.trim();
        if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
            return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
        }
        if let Some(rest) = s.strip_prefix('@') {
            let fields = match rest.to_ascii_lowercase().as_str() {
                "yearly" | "annually" => "0 0 1 1 *",
                "monthly" => "0 0 1 * *",
                "weekly" => "0 0 * * 0",
                "daily" | "midnight" => "0 0 * * *",
                "hourly" => "0 * * * *",
                other => {
                    if let Some(d) = other.strip_prefix("every ") {
                        let secs = parse_duration(d.trim())?;
                        if secs < 1 {
                            return Err(format!("@every duration must be at least 1s: {d}"));
                        }
                        return Ok(Schedule::Every(secs));
                    }
                    return Err(format!("unrecognized descriptor: {s}"));
                }
            };
            return Self::parse(fields);
        }
        let parts: Vec<&str> = s.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {s}",
                parts.len()
            ));
        }
        let (minutes, _) = parse_field(parts[0], 0, 59, &[])?;
        let (hours, _) = parse_field(parts[1], 0, 23, &[])?;
        let (dom, dom_star) = parse_field(parts[2], 1, 31, &[])?;
        let (months, _) = parse_field(parts[3], 1, 12, &MONTHS)?;
        let (mut dow, dow_star) = parse_field(parts[4], 0, 7, &DAYS)?;
        if dow & (1 << 7) != 0 {
            dow = (dow & !(1 << 7)) | 1;
        }
        Ok(Schedule::Fields(Fields {
            minutes,
            hours,
            dom,
            months,
            dow,
            dom_star,
            dow_star,
        }))
    }

    /// The first time strictly after `after` at which the schedule fires, evaluated on the
    /// civil clock of `tz`; `None` if it never fires within five years.
    ///
    /// ```
    /// use kedge_plugin_cronjob::cron::Schedule;
    /// let s = Schedule::parse("30 2 * * *").unwrap();
    /// let t: jiff::Timestamp = "2025-01-01T03:00:00Z".parse().unwrap();
    /// let next = s.next_after(t, &jiff::tz::TimeZone::UTC).unwrap();
    /// assert_eq!(next.to_string(), "2025-01-02T02:30:00Z");
    /// ```
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        match self {
            Schedule::Every(secs) => {
                // robfig's ConstantDelay: whole seconds after `after`.
                let base = Timestamp::from_second(after.as_second()).ok()?;
                base.checked_add(secs.seconds()).ok()
            }
            Schedule::Fields(f) => f.next_after(after, tz),
        }
    }
}

impl Fields {
    fn day_matches(&self, d: Date) -> bool {
        let dom = self.dom & (1 << d.day()) != 0;
        let dow = self.dow & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone()).datetime();
        let limit = start.year().checked_add(HORIZON_YEARS)?;
        // Whole minutes: the next candidate is the minute after `after`'s minute.
        let mut t: DateTime = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        while t.year() <= limit {
            if self.months & (1 << t.month()) == 0 {
                t = t
                    .date()
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .at(0, 0, 0, 0);
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t.date().tomorrow().ok()?.at(0, 0, 0, 0);
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t.date().at(t.hour(), 0, 0, 0).checked_add(1.hour()).ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            // In a DST gap `compatible` moves forward past it; in a fold it takes the
            // earlier instant, and the later one is not after it, so it runs once.
            let ts = tz.to_ambiguous_timestamp(t).compatible().ok()?;
            if ts > after {
                return Some(ts);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }
}

/// One field: comma-separated ranges; returns the bit set and whether it was a bare `*`/`?`.
fn parse_field(field: &str, min: u32, max: u32, names: &[&str]) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("failed to parse int from {s}: in {field}"))?;
                if step == 0 {
                    return Err(format!("step of range should be a positive number: {part}"));
                }
                (r, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            star |= step.is_none_or(|s| s == 1);
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, names, field)?, value(b, names, field)?)
        } else {
            let v = value(range, names, field)?;
            // "N/step" means "N-max/step".
            (v, if step.is_some() { max } else { v })
        };
        if lo < min || hi > max {
            return Err(format!(
                "value out of range ({min} to {max}): {part} in {field}"
            ));
        }
        if lo > hi {
            return Err(format!(
                "beginning of range ({lo}) beyond end of range ({hi}): {part}"
            ));
        }
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

fn value(s: &str, names: &[&str], field: &str) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        // Months are 1-based, days 0-based.
        let base = if names.len() == 12 { 1 } else { 0 };
        return Ok(i as u32 + base);
    }
    s.parse()
        .map_err(|_| format!("failed to parse int from {s}: in {field}"))
}

/// A Go duration of whole seconds: `90s`, `5m`, `1h30m`.
fn parse_duration(d: &str) -> Result<i64, String> {
    let bad = || format!("failed to parse duration @every {d}");
    let mut total: i64 = 0;
    let mut num = String::new();
    let mut seen = false;
    for c in d.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        total = total
            .checked_add(n.checked_mul(unit).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        num.clear();
        seen = true;
    }
    if !num.is_empty() || !seen {
        return Err(bad());
    }
    Ok(total)
}

/// Resolves `spec.timeZone`: unset means UTC (kedge's controller manager runs in UTC);
/// otherwise any IANA name from the time zone database compiled into the plugin.
///
/// ```
/// use kedge_plugin_cronjob::cron::time_zone;
/// assert!(time_zone(None).is_ok());
/// assert!(time_zone(Some("Europe/Paris")).is_ok());
/// assert!(time_zone(Some("Mars/Olympus_Mons")).is_err());
/// ```
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        None => Ok(TimeZone::UTC),
        Some("UTC" | "Etc/UTC") => Ok(TimeZone::UTC),
        Some(n) => TimeZone::get(n).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(sched: &str, after: &str, tz: &str) -> String {
        let tz = time_zone(Some(tz)).unwrap();
        Schedule::parse(sched)
            .unwrap()
            .next_after(ts(after), &tz)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn fields_ranges_steps_lists_names() {
        assert_eq!(
            next("*/15 * * * *", "2025-01-01T00:07:10Z", "UTC"),
            "2025-01-01T00:15:00Z"
        );
        assert_eq!(
            next("5,35 10-11 * * *", "2025-01-01T10:35:00Z", "UTC"),
            "2025-01-01T11:05:00Z"
        );
        // 2025-01-01 is a Wednesday.
        assert_eq!(
            next("0 9 * * MON-fri", "2025-01-03T10:00:00Z", "UTC"),
            "2025-01-06T09:00:00Z"
        );
        assert_eq!(
            next("0 0 1 feb,Jun *", "2025-01-01T00:00:00Z", "UTC"),
            "2025-02-01T00:00:00Z"
        );
        assert_eq!(
            next("10/20 * * * *", "2025-01-01T00:31:00Z", "UTC"),
            "2025-01-01T00:50:00Z"
        );
        assert_eq!(
            next("0 0 * * 7", "2025-01-01T00:00:00Z", "UTC"),
            "2025-01-05T00:00:00Z",
            "7 is Sunday"
        );
    }

    #[test]
    fn dom_and_dow_or_unless_star() {
        // Day 15 OR a Monday: 2025-01-06 is the first Monday.
        assert_eq!(
            next("0 0 15 * 1", "2025-01-01T00:00:00Z", "UTC"),
            "2025-01-06T00:00:00Z"
        );
        // `*/2` in day-of-month is not a star: OR again (day 3 is odd-numbered: 1,3,5..).
        assert_eq!(
            next("0 0 */2 * 1", "2025-01-01T00:00:00Z", "UTC"),
            "2025-01-03T00:00:00Z"
        );
        // `*` in day-of-week: only day-of-month counts.
        assert_eq!(
            next("0 0 15 * *", "2025-01-01T00:00:00Z", "UTC"),
            "2025-01-15T00:00:00Z"
        );
    }

    #[test]
    fn macros_and_every() {
        for (m, want) in [
            ("@yearly", "2026-01-01T00:00:00Z"),
            ("@annually", "2026-01-01T00:00:00Z"),
            ("@monthly", "2025-02-01T00:00:00Z"),
            ("@weekly", "2025-01-05T00:00:00Z"),
            ("@daily", "2025-01-02T00:00:00Z"),
            ("@midnight", "2025-01-02T00:00:00Z"),
            ("@hourly", "2025-01-01T01:00:00Z"),
            ("@every 1h30m", "2025-01-01T01:30:00Z"),
        ] {
            assert_eq!(next(m, "2025-01-01T00:00:00Z", "UTC"), want, "{m}");
        }
    }

    #[test]
    fn rejects_bad_schedules() {
        for bad in [
            "TZ=UTC * * * * *",
            "CRON_TZ=Europe/Paris 0 * * * *",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "x * * * *",
            "@fortnightly",
            "@every 5x",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        assert!(
            Schedule::parse("TZ=UTC * * * * *")
                .unwrap_err()
                .contains("timeZone")
        );
    }

    #[test]
    fn impossible_schedule_never_fires() {
        assert_eq!(next("0 0 30 2 *", "2025-01-01T00:00:00Z", "UTC"), "");
    }

    #[test]
    fn time_zones_from_bundled_database() {
        // 09:00 in Paris in winter is 08:00 UTC, in summer 07:00 UTC.
        assert_eq!(
            next("0 9 * * *", "2025-01-01T00:00:00Z", "Europe/Paris"),
            "2025-01-01T08:00:00Z"
        );
        assert_eq!(
            next("0 9 * * *", "2025-07-01T00:00:00Z", "Europe/Paris"),
            "2025-07-01T07:00:00Z"
        );
        // Fixed offset zones.
        assert_eq!(
            next("0 0 * * *", "2025-01-01T00:00:00Z", "Etc/GMT-2"),
            "2025-01-01T22:00:00Z"
        );
        // DST gap (2025-03-30 02:30 does not exist in Paris): runs after the gap, once.
        assert_eq!(
            next("30 2 * * *", "2025-03-30T00:00:00Z", "Europe/Paris"),
            "2025-03-30T01:30:00Z"
        );
        // DST fold (01:30 happens twice in New York on 2025-11-02): runs once.
        let first = next("30 1 * * *", "2025-11-02T04:00:00Z", "America/New_York");
        assert_eq!(first, "2025-11-02T05:30:00Z");
        assert_eq!(
            next("30 1 * * *", &first, "America/New_York"),
            "2025-11-03T06:30:00Z"
        );
        assert!(time_zone(Some("Nowhere/Special")).is_err());
    }
}
