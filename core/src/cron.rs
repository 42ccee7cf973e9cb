//! CronJob schedules as Kubernetes reads them (robfig/cron's standard parser), for the API
//! server's validation and the CronJob controller alike: five fields
//! `minute hour day-of-month month day-of-week` with `*`, `?`, ranges `a-b`, steps `/n`, lists
//! `a,b` and names (`jan`..`dec`, `sun`..`sat`, any case); the macros `@yearly` `@annually`
//! `@monthly` `@weekly` `@daily` `@midnight` `@hourly`; and `@every <Go duration>`.
//! `TZ=`/`CRON_TZ=` prefixes are refused as Kubernetes does: `spec.timeZone` says it. Errors
//! are worded as kube-apiserver words them. Computing run times needs a time zone database
//! and belongs to the controller; [`Fields`] answers which minutes, hours and days match.

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Five cron fields as bit sets.
    Fields(Fields),
    /// `@every <duration>`: a constant delay in whole seconds (robfig truncates below a
    /// second and runs at most once a second).
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

/// `(name, min, max)` of the five fields, in order.
const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Ok when `schedule` parses; otherwise the parser's complaint (the 422 detail).
pub fn check(schedule: &str) -> Result<(), String> {
    Schedule::parse(schedule).map(drop)
}

impl Schedule {
    /// Parses a schedule, with the parser's complaint on error.
    ///
    /// ```
    /// use kedge_core::cron::Schedule;
    /// assert!(Schedule::parse("*/15 9-17 * * mon-fri").is_ok());
    /// assert!(Schedule::parse("@hourly").is_ok());
    /// assert_eq!(Schedule::parse("@every 1m30s"), Ok(Schedule::Every(90)));
    /// assert!(Schedule::parse("TZ=UTC 0 * * * *").is_err());
    /// assert!(Schedule::parse("61 * * * *").is_err());
    /// ```
    pub fn parse(schedule: &str) -> Result<Self, String> {
        let s = schedule.trim();
        if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
            return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
        }
        if let Some(rest) = s.strip_prefix('@') {
            let fields = match s {
                "@yearly" | "@annually" => "0 0 1 1 *",
                "@monthly" => "0 0 1 * *",
                "@weekly" => "0 0 * * 0",
                "@daily" | "@midnight" => "0 0 * * *",
                "@hourly" => "0 * * * *",
                _ => {
                    if let Some(d) = rest.strip_prefix("every ") {
                        let nanos = go_duration(d.trim()).ok_or_else(|| {
                            format!("failed to parse duration {s}: time: invalid duration {d:?}")
                        })?;
                        return Ok(Schedule::Every(
                            i64::try_from(nanos / 1_000_000_000)
                                .unwrap_or(i64::MAX)
                                .max(1),
                        ));
                    }
                    return Err(format!("unrecognized descriptor: {s}"));
                }
            };
            return Self::parse(fields);
        }
        let parts: Vec<&str> = s.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: [{}]",
                parts.len(),
                parts.join(" ")
            ));
        }
        let mut sets = [(0u64, false); 5];
        for ((set, field), (name, min, max)) in sets.iter_mut().zip(&parts).zip(FIELDS) {
            let names: &[&str] = match name {
                "month" => &MONTHS,
                "day of week" => &DAYS,
                _ => &[],
            };
            *set = parse_field(field, min, max, names)?;
        }
        let [
            (minutes, _),
            (hours, _),
            (dom, dom_star),
            (months, _),
            (mut dow, dow_star),
        ] = sets;
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
}

impl Fields {
    /// Whether the schedule may fire in `month` (1..=12).
    pub fn month(&self, month: u32) -> bool {
        month < 64 && self.months & (1 << month) != 0
    }

    /// Whether the schedule may fire on day `dom` (1..=31) of a month, a `weekday` (0 is
    /// Sunday): day-of-month OR day-of-week, unless either is `*` (then AND), as cron does.
    pub fn day(&self, dom: u32, weekday: u32) -> bool {
        let dom = dom < 64 && self.dom & (1 << dom) != 0;
        let dow = weekday < 64 && self.dow & (1 << weekday) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// Whether the schedule may fire in `hour` (0..=23).
    pub fn hour(&self, hour: u32) -> bool {
        hour < 64 && self.hours & (1 << hour) != 0
    }

    /// Whether the schedule fires at `minute` (0..=59) of a matching hour.
    pub fn minute(&self, minute: u32) -> bool {
        minute < 64 && self.minutes & (1 << minute) != 0
    }
}

/// One field: comma-separated parts; the bit set and whether it was a bare `*`/`?`.
fn parse_field(field: &str, min: u32, max: u32, names: &[&str]) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in field.split(',') {
        let (lo, hi, step) = parse_range(part, min, max, names)?;
        let range = part.split_once('/').map_or(part, |(r, _)| r);
        star |= matches!(range, "*" | "?") && step == 1;
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

/// One comma-separated part: `*`, `?`, `n`, `a-b`, each optionally `/step`.
fn parse_range(part: &str, min: u32, max: u32, names: &[&str]) -> Result<(u32, u32, u32), String> {
    let (range, step) = match part.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (part, None),
    };
    let (lo, hi) = if range == "*" || range == "?" {
        (min, max)
    } else {
        let (a, b) = match range.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (range, None),
        };
        let lo = value(a, names)?;
        let hi = match b {
            Some(b) => value(b, names)?,
            // `n/step` means n..=max.
            None if step.is_some() => max,
            None => lo,
        };
        (lo, hi)
    };
    if lo < min {
        return Err(format!(
            "beginning of range ({lo}) below minimum ({min}): {part}"
        ));
    }
    if hi > max {
        return Err(format!("end of range ({hi}) above maximum ({max}): {part}"));
    }
    if lo > hi {
        return Err(format!(
            "beginning of range ({lo}) beyond end of range ({hi}): {part}"
        ));
    }
    let step = match step {
        None => 1,
        Some(s) => match s.parse::<u32>() {
            Ok(0) => return Err(format!("step of range should be a positive number: {part}")),
            Ok(n) => n,
            Err(_) => return Err(parse_int_error(s)),
        },
    };
    Ok((lo, hi, step))
}

fn value(s: &str, names: &[&str]) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        // Months count from 1, weekdays from 0.
        return Ok(if names.len() == 12 {
            i as u32 + 1
        } else {
            i as u32
        });
    }
    s.parse::<u32>().map_err(|_| parse_int_error(s))
}

fn parse_int_error(s: &str) -> String {
    format!("failed to parse int from {s}: strconv.Atoi: parsing {s:?}: invalid syntax")
}

/// A Go duration in nanoseconds: one or more `<number><unit>` (the number may have a
/// fraction) with units ns, us, µs, ms, s, m, h, as `time.ParseDuration` reads them.
fn go_duration(d: &str) -> Option<u128> {
    if d.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    let mut rest = d;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, after) = rest.split_at(digits);
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && frac.is_empty() {
            return None;
        }
        let (unit, scale) = [
            ("ns", 1u128),
            ("us", 1_000),
            ("µs", 1_000),
            ("ms", 1_000_000),
            ("s", 1_000_000_000),
            ("m", 60_000_000_000),
            ("h", 3_600_000_000_000),
        ]
        .into_iter()
        .find(|(u, _)| after.starts_with(u))?;
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut part = whole.checked_mul(scale)?;
        // The fraction, digit by digit, to the nanosecond.
        let mut unit_scale = scale;
        for c in frac.chars() {
            unit_scale /= 10;
            part = part.checked_add(u128::from(c.to_digit(10)?) * unit_scale)?;
        }
        total = total.checked_add(part)?;
        rest = &after[unit.len()..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn valid_schedules() {
        for s in [
            "* * * * *",
            "*/5 * * * *",
            "0 0 13 * 5",
            "0-30/10 9-17 * jan-mar mon-fri",
            "@hourly",
            "@daily",
            "@every 1h30m",
            "5 4 * * SUN,7",
        ] {
            assert_eq!(check(s), Ok(()), "{s}");
        }
    }

    #[test]
    fn invalid_schedules() {
        assert_eq!(
            check("not a schedule").unwrap_err(),
            "expected exactly 5 fields, found 3: [not a schedule]"
        );
        assert!(
            check("60 * * * *")
                .unwrap_err()
                .contains("above maximum (59)")
        );
        assert!(
            check("* * 0 * *")
                .unwrap_err()
                .contains("below minimum (1)")
        );
        assert!(check("*/0 * * * *").is_err());
        assert!(
            check("x * * * *")
                .unwrap_err()
                .contains("failed to parse int")
        );
        assert!(check("@fortnightly").is_err());
        assert!(check("TZ=UTC 0 * * * *").unwrap_err().contains("timeZone"));
        assert!(check("@every banana").is_err());
    }

    #[test]
    fn every_is_whole_seconds_at_least_one() {
        use super::Schedule;
        for (s, secs) in [
            ("@every 1h30m", 5400),
            ("@every 1.5h", 5400),
            ("@every 90s", 90),
            ("@every 1500ms", 1),
            ("@every 250ms", 1),
            ("@every 2m0.5s", 120),
        ] {
            assert_eq!(Schedule::parse(s), Ok(Schedule::Every(secs)), "{s}");
        }
        for bad in ["@every", "@every 5", "@every 5x", "@every .m", "@every -1h"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fields_answer_what_matches() {
        use super::Schedule;
        let Ok(Schedule::Fields(f)) = Schedule::parse("*/20 9-17 15 JAN,jul mon") else {
            panic!("parses");
        };
        assert!(f.minute(0) && f.minute(40) && !f.minute(10));
        assert!(f.hour(9) && f.hour(17) && !f.hour(18));
        assert!(f.month(1) && f.month(7) && !f.month(2));
        // Day-of-month OR day-of-week when neither is a star.
        assert!(f.day(15, 3) && f.day(2, 1) && !f.day(2, 2));
        let Ok(Schedule::Fields(f)) = Schedule::parse("0 0 15 * */1") else {
            panic!("parses");
        };
        // `*/1` counts as a star: both must match.
        assert!(f.day(15, 4) && !f.day(16, 4));
        // 7 is Sunday too.
        let Ok(Schedule::Fields(f)) = Schedule::parse("0 0 * * 7") else {
            panic!("parses");
        };
        assert!(f.day(5, 0));
        // Macros are lowercase only, as in robfig/cron.
        assert!(Schedule::parse("@HOURLY").is_err());
    }
}
