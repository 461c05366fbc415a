//! Parsing request targets and classifying addresses: the pure half of the
//! proxy's decisions, fuzzed by proptest.
//!
//! Invariants: a target that passes [`parse_authority`] has a host that went
//! through `host::normalize` (so it is a DNS name, never an IP literal in any
//! notation) and an explicit or defaulted port; [`forbidden_ip`] names every
//! address class a bottle must not reach unless its host is trusted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::host::{self, HostError};

/// Why a target was refused; `reason` goes into the decision log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
}

impl Refusal {
    pub fn new(reason: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
        }
    }
}

/// Parse `host[:port]` as it appears in a CONNECT request line, an absolute
/// URI's authority or a Host header. `default_port` applies when the port is
/// absent (None: the port is required, as for CONNECT).
pub fn parse_authority(
    authority: &str,
    default_port: Option<u16>,
) -> Result<(String, u16), Refusal> {
    if authority.is_empty() {
        return Err(Refusal::new("empty authority"));
    }
    if authority
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b >= 0x80)
    {
        return Err(Refusal::new(
            "whitespace, control or non-ASCII byte in authority",
        ));
    }
    if authority.contains('@') {
        return Err(Refusal::new("userinfo in authority"));
    }
    if authority.starts_with('[') {
        return Err(Refusal::new("IP literal (bracketed IPv6)"));
    }
    let (host_part, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Refusal::new(format!("bad port `{p}`")));
            }
            let port: u32 = p.parse().map_err(|_| Refusal::new("bad port"))?;
            if port == 0 || port > 65535 {
                return Err(Refusal::new(format!("bad port `{p}`")));
            }
            (h, port as u16)
        }
        Some(_) => return Err(Refusal::new("IP literal (IPv6)")),
        None => match default_port {
            Some(p) => (authority, p),
            None => return Err(Refusal::new("CONNECT target has no port")),
        },
    };
    if host_part.parse::<Ipv4Addr>().is_ok() || host_part.parse::<Ipv6Addr>().is_ok() {
        return Err(Refusal::new("IP literal"));
    }
    let host = host::normalize(host_part).map_err(|e| match e {
        HostError::IpLiteral => Refusal::new("IP literal"),
        HostError::Userinfo => Refusal::new("userinfo in authority"),
        other => Refusal::new(format!("invalid host: {other}")),
    })?;
    Ok((host, port))
}

/// The class of a resolved address that a bottle must not reach, or None
/// when the address is public.
pub fn forbidden_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback address")
    } else if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some("cloud metadata address")
    } else if ip.is_link_local() {
        Some("link-local address")
    } else if ip.is_private() {
        Some("private address")
    } else if o[0] == 0 {
        Some("unspecified or this-network address")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (CGNAT) address")
    } else if ip.is_multicast() {
        Some("multicast address")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some("reserved address")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking address")
    } else if (o[0] == 192 && o[1] == 0 && (o[2] == 0 || o[2] == 2))
        || (o[0] == 198 && o[1] == 51 && o[2] == 100)
        || (o[0] == 203 && o[1] == 0 && o[2] == 113)
    {
        Some("special-purpose or documentation address")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        Some("loopback address")
    } else if ip.is_unspecified() {
        Some("unspecified address")
    } else if s[0..5] == [0, 0, 0, 0, 0] && (s[5] == 0xffff || s[5] == 0) {
        // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d): a
        // v4 address in v6 clothing is refused whatever it embeds.
        Some("IPv4-mapped or IPv4-compatible address")
    } else if s[0] == 0x64 && s[1] == 0xff9b {
        Some("NAT64 address")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        // Includes AWS's IPv6 metadata endpoint fd00:ec2::254.
        Some("unique local (ULA) address")
    } else if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
        Some("link-local address")
    } else if (s[0] & 0xff00) == 0xff00 {
        Some("multicast address")
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Some("documentation address")
    } else if s[0] == 0x2002 || (s[0] == 0x2001 && s[1] == 0) {
        // 6to4 and Teredo embed an IPv4 address the proxy cannot vouch for.
        Some("IPv4-embedding (6to4/Teredo) address")
    } else {
        None
    }
}

/// Pipelock's matcher, used for blocklists: a plain entry matches only
/// itself, `*.suffix` matches the suffix and every subdomain of it.
pub fn pipelock_match(host: &str, pattern: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(base) => host == base || host.strip_suffix(base).is_some_and(|h| h.ends_with('.')),
        None => host == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_targets() {
        assert_eq!(
            parse_authority("Example.COM.:443", None).unwrap(),
            ("example.com".into(), 443)
        );
        assert_eq!(
            parse_authority("example.com", Some(80)).unwrap(),
            ("example.com".into(), 80)
        );
        assert_eq!(
            parse_authority("bücher.example:443", None)
                .unwrap_err()
                .reason,
            "whitespace, control or non-ASCII byte in authority"
        );
        assert_eq!(
            parse_authority("xn--bcher-kva.example:443", None).unwrap(),
            ("xn--bcher-kva.example".into(), 443)
        );
    }

    #[test]
    fn refuses_every_ip_notation() {
        for t in [
            "127.0.0.1:443",
            "2130706433:443",
            "0x7f000001:443",
            "0177.0.0.1:443",
            "0x7f.0.0.1:443",
            "127.1:443",
            "[::1]:443",
            "[::ffff:127.0.0.1]:443",
            "::1:443",
            "169.254.169.254:443",
            "198.51.100.1.:443",
        ] {
            let r = parse_authority(t, None).unwrap_err();
            assert!(r.reason.contains("IP literal"), "{t}: {}", r.reason);
        }
    }

    #[test]
    fn refuses_malformed() {
        for t in [
            "user@example.com:443",
            "example.com :443",
            "example.com\r\n:443",
            "ex%61mple.com:443",
            "example.com:",
            "example.com:99999",
            "example.com:0",
            "example.com:+443",
            "example.com",
            "",
            "a..b:443",
        ] {
            assert!(parse_authority(t, None).is_err(), "{t:?}");
        }
    }

    #[test]
    fn classifies_addresses() {
        for (ip, bad) in [
            ("127.0.0.1", true),
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("169.254.1.1", true),
            ("100.64.0.1", true),
            ("0.0.0.0", true),
            ("224.0.0.1", true),
            ("255.255.255.255", true),
            ("::1", true),
            ("::", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:203.0.113.8", true),
            ("fc00::1", true),
            ("fd12::1", true),
            ("fe80::1", true),
            ("ff02::1", true),
            ("93.184.216.34", false),
            ("2606:4700::1111", false),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(forbidden_ip(ip).is_some(), bad, "{ip}");
        }
    }

    #[test]
    fn pipelock_semantics_for_blocklist() {
        assert!(pipelock_match("example.com", "*.example.com"));
        assert!(pipelock_match("a.example.com", "*.example.com"));
        assert!(!pipelock_match("evilexample.com", "*.example.com"));
        assert!(pipelock_match("example.com", "example.com"));
        assert!(!pipelock_match("a.example.com", "example.com"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn authority_parser_never_panics_and_accepts_only_dns_names(s in "\\PC{0,40}") {
            if let Ok((host, port)) = parse_authority(&s, Some(80)) {
                proptest::prop_assert!(port > 0);
                proptest::prop_assert_eq!(crate::host::normalize(&host), Ok(host.clone()));
                proptest::prop_assert!(host.parse::<IpAddr>().is_err());
            }
        }

        #[test]
        fn authority_parser_on_hostlike_input(s in "[a-zA-Z0-9.:\\[\\]@%_-]{0,30}") {
            if let Ok((host, _)) = parse_authority(&s, None) {
                proptest::prop_assert!(!host.contains(['@', '[', ']', ':', '%']));
                proptest::prop_assert!(host.parse::<IpAddr>().is_err());
            }
        }
    }
}
