//! Kubernetes resource quantities (`100m`, `64Mi`, `1.5G`, `2`) as numbers.

/// Bytes (or plain units) of a quantity; `None` if it is malformed.
pub fn parse_bytes(q: &str) -> Option<u64> {
    parse_scaled(q, 1.0).map(|v| v.ceil() as u64)
}

/// Millicores of a CPU quantity (`100m` → 100, `2` → 2000).
pub fn parse_millis(q: &str) -> Option<u64> {
    parse_scaled(q, 1000.0).map(|v| v.ceil() as u64)
}

fn parse_scaled(q: &str, unit: f64) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    let v = n * mult * unit;
    (v.is_finite() && v >= 0.0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_bytes("64Mi"), Some(64 << 20));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("129e6"), Some(129_000_000));
        assert_eq!(parse_bytes("12x"), None);
        assert_eq!(parse_millis("100m"), Some(100));
        assert_eq!(parse_millis("1.5"), Some(1500));
        assert_eq!(parse_millis("-1"), None);
    }
}
