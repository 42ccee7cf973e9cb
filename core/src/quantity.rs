//! Kubernetes resource quantities (`100m`, `0.5`, `64Mi`, `129e6`) as plain integers, so
//! schedulers can add and compare requests without a decimal type.

/// Why a quantity string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not the Kubernetes quantity grammar.
    #[error("invalid quantity {0:?}")]
    Syntax(String),
    /// Negative quantities are valid in Kubernetes but meaningless for requests here.
    #[error("negative quantity {0:?}")]
    Negative(String),
    /// Does not fit in 64 bits at the requested unit.
    #[error("quantity {0:?} is too large")]
    Overflow(String),
}

/// Parsed `digits × 10^exp10 × binary`.
struct Parsed {
    digits: u128,
    exp10: i32,
    binary: u128,
}

fn parse(q: &str) -> Result<Parsed, QuantityError> {
    let syntax = || QuantityError::Syntax(q.to_owned());
    let s = q.trim();
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let number_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_len);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(syntax());
    }
    let all_digits: String = format!("{int_part}{frac_part}");
    let trimmed = all_digits.trim_start_matches('0');
    // 38 decimal digits always fit in u128; more precision than that is not a real request.
    if trimmed.len() > 38 {
        return Err(QuantityError::Overflow(q.to_owned()));
    }
    let digits: u128 = if trimmed.is_empty() {
        0
    } else {
        trimmed.parse().map_err(|_| syntax())?
    };
    let frac_len = i32::try_from(frac_part.len()).map_err(|_| syntax())?;
    let (suffix_exp10, binary): (i32, u128) = match suffix {
        "" => (0, 1),
        "Ki" => (0, 1 << 10),
        "Mi" => (0, 1 << 20),
        "Gi" => (0, 1 << 30),
        "Ti" => (0, 1 << 40),
        "Pi" => (0, 1 << 50),
        "Ei" => (0, 1 << 60),
        "n" => (-9, 1),
        "u" => (-6, 1),
        "m" => (-3, 1),
        "k" => (3, 1),
        "M" => (6, 1),
        "G" => (9, 1),
        "T" => (12, 1),
        "P" => (15, 1),
        "E" => (18, 1),
        s if s.len() > 1 && (s.starts_with('e') || s.starts_with('E')) => {
            let exp: i32 = s[1..].parse().map_err(|_| syntax())?;
            (exp, 1)
        }
        _ => return Err(syntax()),
    };
    if negative && digits != 0 {
        return Err(QuantityError::Negative(q.to_owned()));
    }
    Ok(Parsed {
        digits,
        exp10: suffix_exp10 - frac_len,
        binary,
    })
}

/// `ceil(value × 10^shift)` as u64; rounding up matches how Kubernetes treats sub-unit requests.
fn scaled_ceil(q: &str, shift: i32) -> Result<u64, QuantityError> {
    let p = parse(q)?;
    let overflow = || QuantityError::Overflow(q.to_owned());
    let base = p.digits.checked_mul(p.binary).ok_or_else(overflow)?;
    let exp = p.exp10 + shift;
    let value = if exp >= 0 {
        let factor = 10u128
            .checked_pow(exp.unsigned_abs())
            .ok_or_else(overflow)?;
        base.checked_mul(factor).ok_or_else(overflow)?
    } else {
        match 10u128.checked_pow(exp.unsigned_abs()) {
            Some(div) => base.div_ceil(div),
            // The divisor exceeds u128, so any non-zero value is a tiny positive fraction.
            None => u128::from(base != 0),
        }
    };
    u64::try_from(value).map_err(|_| overflow())
}

/// CPU in millicores, rounded up — the unit kube-scheduler accounts CPU in.
///
/// ```
/// use kedge_core::quantity::parse_cpu_millis;
/// assert_eq!(parse_cpu_millis("100m").unwrap(), 100);
/// assert_eq!(parse_cpu_millis("0.5").unwrap(), 500);
/// assert_eq!(parse_cpu_millis("2").unwrap(), 2000);
/// ```
pub fn parse_cpu_millis(q: &str) -> Result<u64, QuantityError> {
    scaled_ceil(q, 3)
}

/// Bytes, rounded up; accepts binary (`Mi`), decimal (`G`) and exponent (`129e6`) forms.
///
/// ```
/// use kedge_core::quantity::parse_bytes;
/// assert_eq!(parse_bytes("64Mi").unwrap(), 64 << 20);
/// assert_eq!(parse_bytes("1G").unwrap(), 1_000_000_000);
/// assert_eq!(parse_bytes("129e6").unwrap(), 129_000_000);
/// ```
pub fn parse_bytes(q: &str) -> Result<u64, QuantityError> {
    scaled_ceil(q, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(parse_cpu_millis("100m"), Ok(100));
        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_cpu_millis(".25"), Ok(250));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert_eq!(parse_cpu_millis("1.0005"), Ok(1001), "rounds up");
        assert_eq!(parse_cpu_millis("250000u"), Ok(250));
        assert_eq!(
            parse_cpu_millis("1n"),
            Ok(1),
            "any positive amount is at least 1m"
        );
        assert_eq!(parse_cpu_millis("0"), Ok(0));
        assert_eq!(parse_cpu_millis("1e-3"), Ok(1));
        assert_eq!(parse_cpu_millis("1k"), Ok(1_000_000));
    }

    #[test]
    fn byte_forms() {
        assert_eq!(parse_bytes("64Mi"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("128974848"), Ok(128_974_848));
        assert_eq!(parse_bytes("129e6"), Ok(129_000_000));
        assert_eq!(parse_bytes("129E6"), Ok(129_000_000));
        assert_eq!(parse_bytes("123Mi"), Ok(128_974_848));
        assert_eq!(parse_bytes("1.5Gi"), Ok(1_610_612_736));
        assert_eq!(parse_bytes("1E"), Ok(1_000_000_000_000_000_000));
        assert_eq!(parse_bytes("500m"), Ok(1));
        assert_eq!(parse_bytes(" 1Ki "), Ok(1024));
    }

    /// Every amount from 1m to 100 cores, in millicores and in decimal form, is exact (the
    /// host once counted `9m` as 10).
    #[test]
    fn millicores_are_exact() {
        for n in 1..=100_000u64 {
            assert_eq!(parse_cpu_millis(&format!("{n}m")), Ok(n), "{n}m");
            let decimal = format!("{}.{:03}", n / 1000, n % 1000);
            assert_eq!(parse_cpu_millis(&decimal), Ok(n), "{decimal}");
            assert_eq!(parse_cpu_millis(&format!("{n}e-3")), Ok(n), "{n}e-3");
        }
    }

    /// Every suffix Kubernetes knows, at its exact integer value.
    #[test]
    fn suffixes_are_exact() {
        let cases: &[(&str, u128)] = &[
            ("Ki", 1 << 10),
            ("Mi", 1 << 20),
            ("Gi", 1 << 30),
            ("Ti", 1 << 40),
            ("Pi", 1 << 50),
            ("Ei", 1 << 60),
            ("", 1),
            ("k", 1_000),
            ("M", 1_000_000),
            ("G", 1_000_000_000),
            ("T", 1_000_000_000_000),
            ("P", 1_000_000_000_000_000),
            ("E", 1_000_000_000_000_000_000),
            ("e3", 1_000),
            ("E6", 1_000_000),
        ];
        for (suffix, unit) in cases {
            for n in [1u128, 3, 7, 9, 15] {
                let want = u64::try_from(n * unit).ok();
                assert_eq!(
                    parse_bytes(&format!("{n}{suffix}")).ok(),
                    want,
                    "{n}{suffix}"
                );
            }
        }
        // Sub-units round up to a whole byte, as requests do.
        assert_eq!(parse_bytes("1500m"), Ok(2));
        assert_eq!(parse_bytes("999n"), Ok(1));
        assert_eq!(parse_cpu_millis("1u"), Ok(1));
        assert_eq!(parse_cpu_millis("1500u"), Ok(2));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "abc", "1Q", "1.2.3", "Mi", "1e", "1ee3", "."] {
            assert!(
                matches!(parse_bytes(bad), Err(QuantityError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(parse_bytes("-1"), Err(QuantityError::Negative(_))));
        assert!(matches!(
            parse_bytes("20E"),
            Err(QuantityError::Overflow(_))
        ));
        assert!(matches!(
            parse_bytes("1e40"),
            Err(QuantityError::Overflow(_))
        ));
    }
}
