//! The address range each run's networks are carved from.
//!
//! Left to itself, the engine gives every new network a subnet from its
//! default pools (172.17–172.31 as /16s, 192.168 as /20s: about 30 networks
//! for the whole host, shared with compose projects and everything else).
//! A bottle takes two networks, so a stock engine ran out at about 15
//! bottles. bottle instead asks for a small explicit subnet ([`SLOT_PREFIX`])
//! for each network, out of a pool of its own.
//!
//! Invariants:
//! - Pure: which subnets are candidates follows from the pool, the subnets
//!   the engine already has and the host's routes. Between concurrent
//!   `bottle run`s the engine's refusal of an overlapping subnet is the
//!   arbiter: the runner takes the next candidate and tries again.
//! - A pool lies wholly inside address space the sidecar never connects to
//!   (private, shared/CGNAT or benchmarking ranges: see
//!   `egress::proxy::target::forbidden_ip`), so the bridge addresses bottle
//!   adds to the host are never reachable through an allowed name.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Each run network's prefix: 16 addresses, 13 for containers once the
/// network, broadcast and gateway addresses are taken. A bottle's internal
/// network holds two containers; its egress network one.
pub const SLOT_PREFIX: u8 = 28;

/// The default pool: RFC 2544's benchmarking range. Unlike 10/8 or
/// 192.168/16 it is not used for real hosts on office, VPN or cloud
/// networks, so carving it up locally hides nobody's servers from the host,
/// and it is outside every pool the engine uses by default. 8,192 slots.
pub const DEFAULT_POOL: &str = "198.18.0.0/15";

/// The engine's built-in default address pools (when `daemon.json` sets no
/// `default-address-pools`): 172.17.0.0/16 … 172.31.0.0/16 and
/// 192.168.0.0/16, written as the blocks that contain them.
pub const ENGINE_DEFAULT_POOLS: [&str; 2] = ["172.16.0.0/12", "192.168.0.0/16"];

/// Blocks a pool may lie in: the ones the sidecar refuses to connect to.
const NON_PUBLIC: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "198.18.0.0/15",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("`{0}`: expected an IPv4 subnet such as {DEFAULT_POOL}")]
    Syntax(String),
    #[error("`{given}`: the address has bits set past /{prefix} (did you mean {aligned}?)")]
    Unaligned {
        given: String,
        prefix: u8,
        aligned: Subnet,
    },
    #[error("{0}: a pool must be /{SLOT_PREFIX} or larger (each network takes a /{SLOT_PREFIX})")]
    TooSmall(Subnet),
    #[error(
        "{0}: a pool must lie inside a private (10/8, 172.16/12, 192.168/16), shared (100.64/10) or benchmarking (198.18/15) range, which the sidecar never connects to"
    )]
    Public(Subnet),
}

/// An IPv4 subnet, aligned to its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    base: u32,
    prefix: u8,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl Subnet {
    /// The subnet of `prefix` bits at `addr`, which must be aligned.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Subnet, PoolError> {
        let given = format!("{addr}/{prefix}");
        if prefix > 32 {
            return Err(PoolError::Syntax(given));
        }
        let bits = u32::from(addr);
        let aligned = Subnet {
            base: bits & mask(prefix),
            prefix,
        };
        if aligned.base != bits {
            return Err(PoolError::Unaligned {
                given,
                prefix,
                aligned,
            });
        }
        Ok(aligned)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn last(&self) -> u32 {
        self.base | !mask(self.prefix)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }

    pub fn contains(&self, other: &Subnet) -> bool {
        self.base <= other.base && other.last() <= self.last()
    }

    /// The first host address, which the engine gives the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    pub fn addresses(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = PoolError;

    fn from_str(s: &str) -> Result<Subnet, PoolError> {
        let syntax = || PoolError::Syntax(s.to_string());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        // Digits only: `u8::from_str` would take "+24".
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        Subnet::new(addr, prefix)
    }
}

impl serde::Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The range bottle takes run networks from, cut into [`SLOT_PREFIX`] slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    range: Subnet,
}

impl Pool {
    pub fn parse(s: &str) -> Result<Pool, PoolError> {
        let range: Subnet = s.parse()?;
        if range.prefix > SLOT_PREFIX {
            return Err(PoolError::TooSmall(range));
        }
        let inside = NON_PUBLIC
            .iter()
            .filter_map(|b| b.parse::<Subnet>().ok())
            .any(|b| b.contains(&range));
        if !inside {
            return Err(PoolError::Public(range));
        }
        Ok(Pool { range })
    }

    pub fn default_pool() -> Pool {
        Pool::parse(DEFAULT_POOL).expect("the default pool is valid")
    }

    pub fn range(&self) -> Subnet {
        self.range
    }

    /// How many run networks the pool holds when nothing else uses it.
    pub fn slots(&self) -> u32 {
        1u32 << (SLOT_PREFIX - self.range.prefix)
    }

    fn slot(&self, i: u32) -> Subnet {
        Subnet {
            base: self.range.base + (i << (32 - u32::from(SLOT_PREFIX))),
            prefix: SLOT_PREFIX,
        }
    }

    /// Free slots, starting at slot `start` (mod the slot count) and
    /// wrapping once: those that overlap no `taken` subnet. Runs that start
    /// together begin at different places (the runner derives `start` from
    /// its random run id), so they rarely race for the same slot.
    pub fn candidates<'a>(
        &'a self,
        taken: &'a [Subnet],
        start: u32,
    ) -> impl Iterator<Item = Subnet> + 'a {
        let n = self.slots();
        (0..n)
            .map(move |k| self.slot((start % n + k) % n))
            .filter(move |s| !taken.iter().any(|t| t.overlaps(s)))
    }

    /// How many slots are free of `taken`.
    pub fn free(&self, taken: &[Subnet]) -> u32 {
        // Only the subnets inside or around the pool matter; checking each
        // slot against those keeps this cheap for a /15 and many networks.
        let relevant: Vec<Subnet> = taken
            .iter()
            .copied()
            .filter(|t| t.overlaps(&self.range))
            .collect();
        self.candidates(&relevant, 0).count() as u32
    }

    /// The engine's default pools this pool overlaps (allowed, as every
    /// network the engine already made is skipped, but worth a warning:
    /// bottles then compete with compose projects for addresses).
    pub fn engine_overlaps(&self) -> Vec<Subnet> {
        ENGINE_DEFAULT_POOLS
            .iter()
            .filter_map(|b| b.parse::<Subnet>().ok())
            .filter(|b| b.overlaps(&self.range))
            .collect()
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.range.fmt(f)
    }
}

/// The destinations of the host's IPv4 routes, from `/proc/net/route`,
/// except default routes (they make no address local). Unreadable lines are
/// skipped.
pub fn parse_routes(text: &str) -> Vec<Subnet> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // The kernel prints the network-order bytes read as a host-order
        // number: on little-endian machines "0102A8C0" is 192.168.2.1.
        let (Ok(dest), Ok(mask)) = (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
        else {
            continue;
        };
        let dest = u32::from_be(dest);
        let mask = u32::from_be(mask);
        if mask == 0 || mask.leading_ones() + mask.trailing_zeros() != 32 {
            continue;
        }
        let prefix = mask.leading_ones() as u8;
        out.push(Subnet {
            base: dest & mask,
            prefix,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Subnet {
        x.parse().unwrap()
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!(s("198.18.0.0/15").to_string(), "198.18.0.0/15");
        assert!(matches!(
            "198.18.0.1/28".parse::<Subnet>(),
            Err(PoolError::Unaligned { .. })
        ));
        for bad in [
            "",
            "198.18.0.0",
            "198.18.0.0/",
            "198.18.0.0/33",
            "x/8",
            "10.0.0.0/+8",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
        assert!(matches!(
            Pool::parse("10.1.2.0/29"),
            Err(PoolError::TooSmall(_))
        ));
        assert!(matches!(
            Pool::parse("8.8.0.0/16"),
            Err(PoolError::Public(_))
        ));
        // Straddling a private block and public space is public.
        assert!(matches!(
            Pool::parse("10.0.0.0/7"),
            Err(PoolError::Public(_))
        ));
        assert!(Pool::parse("10.213.0.0/16").is_ok());
        assert!(Pool::parse("100.64.0.0/10").is_ok());
    }

    #[test]
    fn default_pool_avoids_the_engine_pools() {
        let p = Pool::default_pool();
        assert_eq!(p.slots(), 8192);
        assert!(p.engine_overlaps().is_empty());
        assert_eq!(
            Pool::parse("172.20.0.0/16").unwrap().engine_overlaps(),
            vec![s("172.16.0.0/12")]
        );
    }

    #[test]
    fn candidates_skip_taken_and_wrap() {
        let p = Pool::parse("10.9.0.0/26").unwrap(); // 4 slots
        let taken = [s("10.9.0.16/28"), s("10.9.0.52/30")];
        let got: Vec<String> = p.candidates(&taken, 1).map(|c| c.to_string()).collect();
        assert_eq!(got, vec!["10.9.0.32/28", "10.9.0.0/28"]);
        assert_eq!(p.free(&taken), 2);
        // A route covering the whole pool leaves nothing.
        assert_eq!(p.free(&[s("10.0.0.0/8")]), 0);
        assert_eq!(p.free(&[]), 4);
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        assert!(s("10.0.0.0/28").overlaps(&s("10.0.0.8/29")));
        assert!(s("10.0.0.8/29").overlaps(&s("10.0.0.0/28")));
        assert!(!s("10.0.0.0/28").overlaps(&s("10.0.0.16/28")));
        assert!(s("0.0.0.0/0").overlaps(&s("255.255.255.240/28")));
        assert_eq!(s("198.18.0.16/28").gateway(), Ipv4Addr::new(198, 18, 0, 17));
    }

    #[test]
    fn routes_from_proc() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
tun0\t000012C6\t00000000\t0001\t0\t0\t0\t0000FEFF\t0\t0\t0\n\
bad\tzz\n";
        // The hex is host-order; this test data is little-endian.
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_routes(text),
                vec![s("172.17.0.0/16"), s("192.0.2.0/24"), s("198.18.0.0/15")]
            );
            let p = Pool::default_pool();
            assert_eq!(p.free(&parse_routes(text)), 0);
        }
    }
}
