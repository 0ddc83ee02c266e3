//! Client addresses: prefixes like `10.1.0.0/16` (for region maps and trusted proxies) and the
//! client behind `X-Forwarded-For`, believed only when it comes from a trusted proxy. Pure.

use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address or prefix like 10.1.0.0/16 or 2001:db8::/32")]
pub struct PrefixError(pub String);

impl IpPrefix {
    /// `ADDR/LEN`, or a bare address (a prefix of one address).
    pub fn parse(text: &str) -> Result<Self, PrefixError> {
        let bad = || PrefixError(text.to_owned());
        let (addr, len) = match text.trim().split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(bad)?,
        };
        Ok(Self { addr, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (canonical(self.addr), ip) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(p) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(p) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }

    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) compare as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy, in which case the
/// right-most address in `X-Forwarded-For` that is not itself a trusted proxy (a client can
/// put anything on the left of that header, so only what trusted proxies appended counts).
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpPrefix]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|p| p.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in header.rsplit(',').map(str::trim) {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // Garbage where an address should be: stop believing the header here.
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// The region of the longest prefix in `map` that holds `ip`.
pub fn region_of(ip: IpAddr, map: &[(IpPrefix, String)]) -> Option<&str> {
    map.iter()
        .filter(|(p, _)| p.contains(ip))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, r)| r.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes() {
        let p = IpPrefix::parse("10.1.0.0/16").unwrap();
        assert!(p.contains(ip("10.1.200.3")));
        assert!(!p.contains(ip("10.2.0.1")));
        assert!(p.contains(ip("::ffff:10.1.0.9")), "mapped IPv4");
        assert!(
            IpPrefix::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        assert!(
            IpPrefix::parse("2001:db8::/32")
                .unwrap()
                .contains(ip("2001:db8:1::5"))
        );
        assert!(
            IpPrefix::parse("127.0.0.1")
                .unwrap()
                .contains(ip("127.0.0.1"))
        );
        for bad in ["10.1.0.0/33", "nonsense", "10.1.0.0/x", "/8", "::/129"] {
            assert!(IpPrefix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [IpPrefix::parse("10.0.0.0/8").unwrap()];
        // Straight from a client: the header is ignored.
        assert_eq!(
            client_address(ip("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        // Through our proxy: the address it appended.
        assert_eq!(
            client_address(ip("10.0.0.2"), Some("198.51.100.7"), &trusted),
            ip("198.51.100.7")
        );
        // A client that forged a left-most entry: the proxy's appended one wins.
        assert_eq!(
            client_address(ip("10.0.0.2"), Some("1.2.3.4, 198.51.100.7"), &trusted),
            ip("198.51.100.7")
        );
        // Two trusted hops.
        assert_eq!(
            client_address(ip("10.0.0.2"), Some("198.51.100.7, 10.0.0.3"), &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), Some("garbage"), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), None, &trusted),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn the_longest_prefix_names_the_region() {
        let map = vec![
            (IpPrefix::parse("10.0.0.0/8").unwrap(), "asia".to_owned()),
            (IpPrefix::parse("10.9.0.0/16").unwrap(), "eu".to_owned()),
        ];
        assert_eq!(region_of(ip("10.9.1.1"), &map), Some("eu"));
        assert_eq!(region_of(ip("10.8.1.1"), &map), Some("asia"));
        assert_eq!(region_of(ip("192.168.1.1"), &map), None);
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,50}", header in "\\PC{0,200}", a in any::<u32>(), len in 0u8..=32) {
            let _ = IpPrefix::parse(&text);
            let peer = IpAddr::V4(a.into());
            let trusted = [IpPrefix { addr: peer, len }];
            let _ = client_address(peer, Some(&header), &trusted);
            prop_assert!(trusted[0].contains(peer));
        }
    }
}
