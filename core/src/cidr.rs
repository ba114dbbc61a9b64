//! Address blocks in config (`10.0.0.0/8`, `fd00::/8`, or one address): who may name a client,
//! who may reach a listener.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// An address block written `10.0.0.0/8`, `fd00::/8`, or a single address (`10.0.0.7`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The block of addresses sharing the first `prefix` bits of `network` (capped at the
    /// address length).
    pub fn new(network: IpAddr, prefix: u8) -> Cidr {
        let bits = if network.is_ipv4() { 32 } else { 128 };
        Cidr {
            network,
            prefix: prefix.min(bits),
        }
    }

    /// Whether `addr` lies in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, addr.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(addr)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(addr) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(addr)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(addr) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let invalid = || format!("{text:?} is not an address or CIDR block (10.0.0.0/8, fd00::/8)");
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| invalid())?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(invalid)?,
            None => bits,
        };
        Ok(Cidr::new(network, prefix))
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(text: String) -> Result<Cidr, String> {
        text.parse()
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> String {
        format!("{}/{}", cidr.network, cidr.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_single_addresses_parse_and_match() {
        let block: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(block.contains("10.1.200.3".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(
            block.contains("::ffff:10.1.0.9".parse().unwrap()),
            "IPv4-mapped"
        );
        let one: Cidr = "fd00::7".parse().unwrap();
        assert!(one.contains("fd00::7".parse().unwrap()));
        assert!(!one.contains("fd00::8".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        assert_eq!(String::from(block), "10.1.0.0/16");
    }

    #[test]
    fn bad_blocks_are_refused() {
        for text in ["10.0.0.0/33", "fd00::/129", "10.0.0", "host/8", ""] {
            assert!(text.parse::<Cidr>().is_err(), "{text}");
        }
    }
}
