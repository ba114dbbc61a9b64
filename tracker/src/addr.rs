//! Peer addresses as the tracker accepts them: a `host:port` that other peers can dial, where
//! the host is an IPv4 address, a bracketed IPv6 address or a DNS name, and the port is not 0.
//! The tracker hands these strings to every downloader, so anything else is refused up front.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A DNS name (at most 253 bytes) plus `:` and a five-digit port.
pub const MAX_ADDR_LEN: usize = MAX_NAME_LEN + 6;

/// Longest DNS name and label (RFC 1035).
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Checks that `addr` is a dialable `host:port`; the error says why not, quoting at most the
/// first 64 characters.
pub fn check(addr: &str) -> Result<(), String> {
    let shown = || addr.chars().take(64).collect::<String>();
    if addr.len() > MAX_ADDR_LEN {
        return Err(format!("longer than {MAX_ADDR_LEN} bytes"));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{:?} is not host:port", shown()));
    };
    // `u16::from_str` also takes a leading `+`; a port is digits only.
    let port = Some(port)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u16>().ok());
    if !matches!(port, Some(1..)) {
        return Err(format!("{:?} has no valid port (1-65535)", shown()));
    }
    check_host(host).map_err(|reason| format!("{:?}: {reason}", shown()))
}

fn check_host(host: &str) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("the host is empty");
    }
    if let Some(inner) = host.strip_prefix('[') {
        let ip = inner
            .strip_suffix(']')
            .and_then(|inner| inner.parse::<Ipv6Addr>().ok())
            .ok_or("the host is not a bracketed IPv6 address")?;
        return check_ip(IpAddr::V6(ip));
    }
    if host.contains(':') {
        return Err("an IPv6 host must be in brackets");
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return check_ip(IpAddr::V4(ip));
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err("the host is not a valid IPv4 address");
    }
    check_name(host)
}

/// Addresses nobody can dial: "any" and group addresses.
fn check_ip(ip: IpAddr) -> Result<(), &'static str> {
    if ip.is_unspecified() {
        return Err("an unspecified address (0.0.0.0, ::) cannot be dialled");
    }
    if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Err("a multicast or broadcast address cannot be dialled");
    }
    Ok(())
}

/// A DNS name: dot-separated labels of letters, digits, `-` (not first or last) and `_`, with
/// one trailing dot allowed.
fn check_name(name: &str) -> Result<(), &'static str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() > MAX_NAME_LEN {
        return Err("the host name is longer than 253 bytes");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return Err("the host name has an empty or over-long label");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a host name label starts or ends with '-'");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("the host name has characters other than letters, digits, '-', '_', '.'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn peer_addresses_must_be_dialable_host_ports() {
        for good in [
            "127.0.0.1:16001",
            "10.1.2.3:1",
            "agent-3.example:1",
            "agent-3.example.:65535",
            "node_7.cluster.local:16001",
            "localhost:16001",
            "[::1]:16001",
            "[2001:db8::7]:16001",
        ] {
            assert!(check(good).is_ok(), "{good}: {:?}", check(good));
        }
        for bad in [
            "",
            "host",
            ":16001",
            "host:",
            "host:0",
            "host:00",
            "host:+1",
            "host:http",
            "h:99999",
            "ho st:1",
            "host\n:1",
            "host/x:1",
            "-host:1",
            "host-:1",
            "a..b:1",
            ".:1",
            "0.0.0.0:16001",
            "[::]:16001",
            "224.0.0.1:16001",
            "255.255.255.255:16001",
            "[ff02::1]:16001",
            "999.1.1.1:16001",
            "1.2.3:16001",
            "::1:16001",
            "[::1:16001",
            "[fe80::1%eth0]:16001",
            "[nothex]:1",
        ] {
            assert!(check(bad).is_err(), "{bad:?} was accepted");
        }
        let label = "a".repeat(63);
        assert!(check(&format!("{label}.{label}:1")).is_ok());
        assert!(
            check(&format!("{}:1", "a".repeat(64))).is_err(),
            "label over 63"
        );
        let long = [label.as_str(); 4].join(".");
        assert!(
            check(&format!("{long}:1")).is_err(),
            "over the length limit"
        );
    }

    #[test]
    fn errors_quote_a_bounded_prefix() {
        let error = check(&format!("{}:0", "x".repeat(200))).expect_err("port 0");
        assert!(error.len() < 120, "{error}");
    }

    fn dialable_ip() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<Ipv4Addr>().prop_map(IpAddr::V4),
            any::<Ipv6Addr>().prop_map(IpAddr::V6),
        ]
        .prop_filter("dialable", |ip| check_ip(*ip).is_ok())
        .prop_map(|ip| match ip {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        })
    }

    const DNS_NAME: &str =
        "[a-z0-9_]([a-z0-9_-]{0,20}[a-z0-9_])?(\\.[a-z0-9_]([a-z0-9_-]{0,20}[a-z0-9_])?){0,4}\\.?";

    proptest! {
        #[test]
        fn dialable_host_ports_are_accepted(
            host in prop_oneof![dialable_ip(), DNS_NAME.prop_filter("not an IPv4 lookalike", |name| {
                !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            })],
            port in 1u16..,
        ) {
            let addr = format!("{host}:{port}");
            prop_assert_eq!(check(&addr), Ok(()), "{}", addr);
        }

        #[test]
        fn accepted_addresses_have_a_port_and_a_bounded_length(addr in "\\PC{0,80}") {
            match check(&addr) {
                Ok(()) => {
                    let (host, port) = addr.rsplit_once(':').expect("host:port");
                    prop_assert!(!host.is_empty());
                    prop_assert!(port.parse::<u16>().is_ok_and(|port| port > 0));
                    prop_assert!(addr.len() <= MAX_ADDR_LEN);
                }
                Err(reason) => {
                    // At most the first 64 characters are quoted, whatever the input's length.
                    let quoted: String = addr.chars().take(64).collect();
                    prop_assert!(reason.len() <= format!("{quoted:?}").len() + 100, "{}", reason);
                }
            }
        }
    }
}
