//! Address ranges in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or one address), for `proxy_from`: the
//! peers whose PROXY headers are believed.
//!
//! A peer on an IPv6 socket that came over IPv4 shows as an IPv4-mapped address (`::ffff:10.1.2.3`); it is
//! matched as the IPv4 address it is, so an operator writes the ranges as the balancers' addresses read.
//! A range with bits set past its prefix (`10.1.2.3/8`) is refused rather than silently widened: it is
//! most often a typo for a host or a narrower range.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// A range of addresses: the first `prefix` bits of `addr`. Debug-printed as written: `10.0.0.0/8`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the range; an IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(range), IpAddr::V4(ip)) => same_prefix(range.to_bits(), ip.to_bits(), self.prefix),
            (IpAddr::V6(range), IpAddr::V6(ip)) => same_prefix(range.to_bits(), ip.to_bits(), self.prefix),
            (IpAddr::V6(range), IpAddr::V4(ip)) => {
                same_prefix(range.to_bits(), ip.to_ipv6_mapped().to_bits(), self.prefix)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

/// Whether the first `prefix` bits of `a` and `b` are equal (`u32` or `u128`).
fn same_prefix<T>(a: T, b: T, prefix: u8) -> bool
where
    T: Copy + Eq + std::ops::BitXor<Output = T> + std::ops::Shr<u32, Output = T> + From<u8>,
{
    let bits = (std::mem::size_of::<T>() * 8) as u32;
    let host_bits = bits - u32::from(prefix);
    host_bits == bits || (a ^ b) >> host_bits == T::from(0)
}

/// Whether any of `ranges` contains `ip`.
pub(crate) fn any_contains(ranges: &[Cidr], ip: IpAddr) -> bool {
    ranges.iter().any(|range| range.contains(ip))
}

/// Why a range does not parse: the text and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseCidrError(String);

impl fmt::Display for ParseCidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseCidrError {}

const LIKE: &str = "write it like 10.0.0.0/8, 192.0.2.1 or 2001:db8::/32";

impl FromStr for Cidr {
    type Err = ParseCidrError;

    fn from_str(text: &str) -> Result<Cidr, ParseCidrError> {
        let fail = |why: String| Err(ParseCidrError(format!("{text:?} {why}")));
        let trimmed = text.trim();
        let (addr, prefix) = match trimmed.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (trimmed, None),
        };
        let Ok(addr) = addr.parse::<IpAddr>() else {
            return fail(format!("is not an address range ({addr:?} is not an IP address); {LIKE}"));
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return fail(format!(
                        "has prefix /{p}; an {} range's prefix is a number from 0 to {max}",
                        if addr.is_ipv4() { "IPv4" } else { "IPv6" }
                    ));
                }
            },
        };
        let network = network(addr, prefix);
        if network != addr {
            return fail(format!("has bits set past its /{prefix} prefix; did you mean {network}/{prefix}?"));
        }
        Ok(Cidr { addr, prefix })
    }
}

/// `addr` with every bit past `prefix` cleared.
fn network(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() & mask))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Cidr {
    /// A comma-separated list of ranges, as `--proxy-from` takes it: `10.0.0.0/8, 2001:db8::1`.
    pub fn parse_list(text: &str) -> Result<Vec<Cidr>, ParseCidrError> {
        text.split(',').map(str::parse).collect()
    }
}

/// `ranges` as a log line shows them: `10.0.0.0/8, ::1/128`, or `every peer` for `None`.
pub(crate) fn describe(ranges: Option<&[Cidr]>) -> String {
    match ranges {
        Some(ranges) => ranges.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        None => "every peer".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_ranges_and_hosts() {
        let range = cidr("10.0.0.0/8");
        assert!(range.contains(ip("10.255.1.2")));
        assert!(!range.contains(ip("11.0.0.1")));
        let host = cidr(" 192.0.2.1 ");
        assert_eq!(host.to_string(), "192.0.2.1/32");
        assert!(host.contains(ip("192.0.2.1")) && !host.contains(ip("192.0.2.2")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!cidr("0.0.0.0/0").contains(ip("2001:db8::1")), "an IPv4 range holds no IPv6 peer");
    }

    #[test]
    fn ipv6_ranges_and_mapped_peers() {
        let range = cidr("2001:db8::/32");
        assert!(range.contains(ip("2001:db8:ffff::1")));
        assert!(!range.contains(ip("2001:db9::1")));
        assert!(cidr("::/0").contains(ip("::1")));
        // A peer that came over IPv4 to an IPv6 socket matches IPv4 ranges, and IPv6 ranges of mapped form.
        assert!(cidr("127.0.0.0/8").contains(ip("::ffff:127.0.0.5")));
        assert!(!cidr("10.0.0.0/8").contains(ip("::ffff:127.0.0.5")));
        assert!(cidr("::ffff:0:0/96").contains(ip("127.0.0.5")));
    }

    #[test]
    fn bad_ranges_say_why() {
        let why = |text: &str| text.parse::<Cidr>().unwrap_err().to_string();
        assert_eq!(
            why("10.0.0.0/33"),
            "\"10.0.0.0/33\" has prefix /33; an IPv4 range's prefix is a number from 0 to 32"
        );
        assert!(why("::/129").contains("an IPv6 range's prefix is a number from 0 to 128"));
        assert!(why("10.0.0.0/+8").contains("has prefix /+8"));
        assert!(why("10.0.0.0/").contains("has prefix /;"));
        assert_eq!(
            why("10.1.2.3/8"),
            "\"10.1.2.3/8\" has bits set past its /8 prefix; did you mean 10.0.0.0/8?"
        );
        assert!(why("example.com").contains("is not an IP address); write it like 10.0.0.0/8"));
        assert!(why("").contains("is not an IP address"));
    }

    #[test]
    fn lists_are_comma_separated() {
        assert_eq!(Cidr::parse_list("10.0.0.0/8, ::1").unwrap(), [cidr("10.0.0.0/8"), cidr("::1/128")]);
        assert!(Cidr::parse_list("10.0.0.0/8,").unwrap_err().to_string().starts_with("\"\" is not"));
        assert!(any_contains(&Cidr::parse_list("192.0.2.0/24,127.0.0.1").unwrap(), ip("127.0.0.1")));
        assert!(!any_contains(&[], ip("127.0.0.1")));
    }

    mod properties {
        use proptest::{collection::vec, prelude::*};

        use super::*;

        /// A valid range: an address with its host bits cleared, and its prefix.
        fn range() -> impl Strategy<Value = Cidr> {
            prop_oneof![
                (any::<u32>(), 0..=32_u8).prop_map(|(bits, prefix)| {
                    let addr = network(IpAddr::V4(Ipv4Addr::from_bits(bits)), prefix);
                    Cidr { addr, prefix }
                }),
                (any::<u128>(), 0..=128_u8).prop_map(|(bits, prefix)| {
                    let addr = network(IpAddr::V6(Ipv6Addr::from_bits(bits)), prefix);
                    Cidr { addr, prefix }
                }),
            ]
        }

        proptest! {
            #[test]
            fn random_text_never_panics(text in "[0-9a-fA-F:./ ,+-]{0,60}", any_text in any::<String>()) {
                for text in [text, any_text] {
                    if let Err(e) = text.parse::<Cidr>() {
                        let start = format!("{text:?} ");
                        prop_assert!(e.to_string().starts_with(&start));
                    }
                    let _ = Cidr::parse_list(&text);
                }
            }

            /// A range reads back from how it is written, and so does a list of them however it is spaced.
            #[test]
            fn ranges_read_back_as_written(ranges in vec(range(), 1..5), spaces in vec(0..3_usize, 5)) {
                for range in &ranges {
                    prop_assert_eq!(range.to_string().parse::<Cidr>(), Ok(*range));
                }
                let text: Vec<String> =
                    ranges.iter().zip(&spaces).map(|(r, &n)| format!("{}{r}{}", " ".repeat(n), " ".repeat(n))).collect();
                prop_assert_eq!(Cidr::parse_list(&text.join(",")), Ok(ranges));
            }

            /// An address is in a range exactly when its first `prefix` bits are the range's, and an IPv4
            /// address is in the same ranges whether it comes as itself or IPv4-mapped.
            #[test]
            fn contains_compares_the_prefix_bits(range in range(), v4 in any::<u32>(), v6 in any::<u128>()) {
                let v4 = Ipv4Addr::from_bits(v4);
                let v6 = Ipv6Addr::from_bits(v6);
                let in_prefix = |addr: IpAddr| network(addr, range.prefix) == range.addr;
                prop_assert!(range.contains(range.addr));
                match range.addr {
                    IpAddr::V4(_) => {
                        prop_assert_eq!(range.contains(v4.into()), in_prefix(v4.into()));
                        prop_assert_eq!(range.contains(v4.to_ipv6_mapped().into()), in_prefix(v4.into()));
                    }
                    IpAddr::V6(_) => {
                        prop_assert_eq!(range.contains(v6.into()), in_prefix(v6.into()));
                        let mapped = v4.to_ipv6_mapped();
                        prop_assert_eq!(range.contains(v4.into()), in_prefix(mapped.into()));
                    }
                }
            }
        }
    }
}
