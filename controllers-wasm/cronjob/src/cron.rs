//! When a CronJob's schedule fires. The schedule itself is parsed by
//! [`kedge_core::cron`] (re-exported here), the parser the API server validates it with;
//! this module adds the calendar: times are evaluated in a [`jiff::tz::TimeZone`] on the
//! civil clock; a time that falls in a DST gap runs at the first instant after the gap, one
//! repeated by a DST fold runs once.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

pub use kedge_guest::cron::{Fields, Schedule};

/// How far ahead [`NextRun::next_after`] looks before deciding a schedule never fires
/// (e.g. `0 0 30 2 *`): robfig/cron gives up after five years too.
const HORIZON_YEARS: i16 = 5;

/// The run times of a [`Schedule`].
pub trait NextRun {
    /// The first time strictly after `after` at which the schedule fires, evaluated on the
    /// civil clock of `tz`; `None` if it never fires within five years.
    ///
    /// ```
    /// use kedge_plugin_cronjob::cron::{NextRun, Schedule};
    /// let s = Schedule::parse("30 2 * * *").unwrap();
    /// let t: jiff::Timestamp = "2025-01-01T03:00:00Z".parse().unwrap();
    /// let next = s.next_after(t, &jiff::tz::TimeZone::UTC).unwrap();
    /// assert_eq!(next.to_string(), "2025-01-02T02:30:00Z");
    /// ```
    fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp>;
}

impl NextRun for Schedule {
    fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        match self {
            Schedule::Every(secs) => {
                // robfig's ConstantDelay: whole seconds after `after`.
                let base = Timestamp::from_second(after.as_second()).ok()?;
                base.checked_add(secs.seconds()).ok()
            }
            Schedule::Fields(f) => fields_next_after(f, after, tz),
        }
    }
}

fn fields_next_after(f: &Fields, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
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
        if !f.month(t.month() as u32) {
            t = t
                .date()
                .first_of_month()
                .checked_add(1.month())
                .ok()?
                .at(0, 0, 0, 0);
            continue;
        }
        let d = t.date();
        if !f.day(d.day() as u32, d.weekday().to_sunday_zero_offset() as u32) {
            t = d.tomorrow().ok()?.at(0, 0, 0, 0);
            continue;
        }
        if !f.hour(t.hour() as u32) {
            t = d.at(t.hour(), 0, 0, 0).checked_add(1.hour()).ok()?;
            continue;
        }
        if !f.minute(t.minute() as u32) {
            t = t.checked_add(1.minute()).ok()?;
            continue;
        }
        // In a DST gap `compatible` moves forward past it; in a fold it takes the earlier
        // instant, and the later one is not after it, so it runs once.
        let ts = tz.to_ambiguous_timestamp(t).compatible().ok()?;
        if ts > after {
            return Some(ts);
        }
        t = t.checked_add(1.minute()).ok()?;
    }
    None
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
