//! Which IP a connection comes from, believing X-Forwarded-For only from trusted proxies.

use std::net::IpAddr;

use ipnet::IpNet;

/// The client's address: the peer itself, unless the peer is a trusted proxy, in which
/// case the right-most X-Forwarded-For entry that is not itself a trusted proxy (entries
/// further left were written by the client and can be forged).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut last = peer;
    for entry in header.rsplit(',') {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            // Garbage in the chain: stop at the last address we could trust.
            return last;
        };
        if !is_trusted(&ip) {
            return ip;
        }
        last = ip;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = Some("1.1.1.1, 203.0.113.7");
        assert_eq!(
            client_ip(ip("198.51.100.1"), xff, &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(client_ip(ip("10.0.0.5"), xff, &trusted), ip("203.0.113.7"));
        assert_eq!(
            client_ip(ip("10.0.0.5"), Some("203.0.113.7, 10.0.0.9"), &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(client_ip(ip("10.0.0.5"), None, &trusted), ip("10.0.0.5"));
        assert_eq!(
            client_ip(ip("10.0.0.5"), Some("junk"), &trusted),
            ip("10.0.0.5")
        );
        assert_eq!(client_ip(ip("10.0.0.5"), xff, &[]), ip("10.0.0.5"));
    }
}
