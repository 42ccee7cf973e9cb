//! Syntax check of CronJob schedules, as kube-apiserver parses them (robfig/cron's standard
//! parser): five fields, or a `@hourly`-style macro, or `@every <duration>`. Only the syntax is
//! checked here; computing the next run time belongs to the CronJob controller.

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

const MACROS: [&str; 7] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// Ok when `schedule` parses; otherwise the parser's complaint (the 422 detail).
pub fn check(schedule: &str) -> Result<(), String> {
    let s = schedule.trim();
    if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
        return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
    }
    if let Some(rest) = s.strip_prefix('@') {
        if MACROS.contains(&s) {
            return Ok(());
        }
        if let Some(d) = rest.strip_prefix("every ") {
            return check_duration(d.trim()).map_err(|_| {
                format!("failed to parse duration {s}: time: invalid duration {d:?}")
            });
        }
        return Err(format!("unrecognized descriptor: {s}"));
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    for (f, (name, min, max)) in fields.iter().zip(FIELDS) {
        let names: &[&str] = match name {
            "month" => &MONTHS,
            "day of week" => &DAYS,
            _ => &[],
        };
        for part in f.split(',') {
            check_range(part, min, max, names)?;
        }
    }
    Ok(())
}

/// One comma-separated part: `*`, `?`, `n`, `a-b`, each optionally `/step`.
fn check_range(part: &str, min: u32, max: u32, names: &[&str]) -> Result<(), String> {
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
    if let Some(s) = step {
        match s.parse::<u32>() {
            Ok(0) => return Err(format!("step of range should be a positive number: {part}")),
            Ok(_) => {}
            Err(_) => return Err(parse_int_error(s)),
        }
    }
    Ok(())
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

/// A Go duration: one or more `<number><unit>` with units ns, us, µs, ms, s, m, h.
fn check_duration(d: &str) -> Result<(), ()> {
    if d.is_empty() {
        return Err(());
    }
    let mut rest = d;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or(())?;
        if digits == 0 {
            return Err(());
        }
        rest = &rest[digits..];
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .iter()
            .find(|u| rest.starts_with(**u))
            .ok_or(())?;
        rest = &rest[unit.len()..];
    }
    Ok(())
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
}
