//! IPv4 ranges as the node's networking passes them around: `(network, prefix length)`.

use std::net::Ipv4Addr;

/// Parses `a.b.c.d/n`.
pub fn parse(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected an IPv4 CIDR such as 10.42.0.0/16"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("{s:?}: bad prefix length"))?;
    Ok((ip, len))
}

/// Whether `ip` lies in the range.
pub fn contains((net, len): (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_contain() {
        let c = parse("10.42.0.0/16").unwrap();
        assert!(contains(c, Ipv4Addr::new(10, 42, 7, 1)));
        assert!(!contains(c, Ipv4Addr::new(10, 43, 0, 1)));
        assert!(contains(
            (Ipv4Addr::UNSPECIFIED, 0),
            Ipv4Addr::new(1, 2, 3, 4)
        ));
        assert!(parse("10.42.0.0").is_err());
        assert!(parse("10.42.0.0/33").is_err());
    }
}
