//! Local source addresses, so more connections than one ephemeral port range allows.
//!
//! A client socket bound to an address before `connect` takes its port from that address's
//! own range (net.ipv4.ip_local_port_range, 32768-60999 here: ~28,000 ports), and all of
//! 127.0.0.0/8 is local on Linux, so 127.0.0.2.. are free extra ranges.

use std::net::Ipv4Addr;

/// Parses `127.0.0.2-127.0.0.9` or `127.0.0.2,127.0.0.3`; only loopback addresses.
pub fn parse(raw: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (addr(a)?, addr(b)?),
            None => (addr(part)?, addr(part)?),
        };
        let (first, last) = (u32::from(first), u32::from(last));
        if last < first || last - first > 65_535 {
            return Err(format!(
                "source address range {part:?} is reversed or too large"
            ));
        }
        out.extend((first..=last).map(Ipv4Addr::from));
    }
    if out.is_empty() {
        return Err("no source address given".into());
    }
    Ok(out)
}

fn addr(raw: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = raw
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not an IPv4 address"))?;
    if !ip.is_loopback() {
        return Err(format!("{ip} is not a loopback address (127.0.0.0/8)"));
    }
    Ok(ip)
}

/// Ephemeral ports per source address, from the kernel's configured range.
pub fn ports_per_address() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(|n| n.parse::<u32>().ok());
            Some(it.next()??.abs_diff(it.next()??) + 1)
        })
        .unwrap_or(28_232)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_lists() {
        let got = parse("127.0.0.2-127.0.0.4,127.0.0.9").expect("parses");
        let want: Vec<Ipv4Addr> = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"]
            .iter()
            .map(|a| a.parse().expect("ip"))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn refuses_non_loopback_and_reversed() {
        assert!(parse("10.0.0.1").is_err());
        assert!(parse("127.0.0.9-127.0.0.2").is_err());
        assert!(parse("").is_err());
    }
}
