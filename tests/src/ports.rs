//! Free loopback ports for the components a test starts.

use std::net::{SocketAddr, TcpListener};

use anyhow::{Context, Result};

/// A loopback address whose port was free a moment ago: bind it, read it, release it. Something else may take the port before the component binds it; callers
/// that start servers retry on a clash (see `Cluster::start`).
pub fn free_loopback_addr() -> Result<SocketAddr> {
    Ok(free_loopback_addrs::<1>()?[0])
}

/// `N` distinct free loopback addresses: every port stays bound until all are picked, so the
/// kernel cannot hand out the same one twice.
pub fn free_loopback_addrs<const N: usize>() -> Result<[SocketAddr; N]> {
    free_loopback_addr_list(N)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("picked the wrong number of ports"))
}

/// `n` distinct free loopback addresses, for a number of components known only at run time.
///
/// Picked at random below the kernel's ephemeral range (32768-60999 by default): a component
/// restarted on its port must find it free, and an outgoing connection of any process on the
/// machine can take an ephemeral port in between, which a random pick below that range cannot
/// be.
pub fn free_loopback_addr_list(n: usize) -> Result<Vec<SocketAddr>> {
    const PORTS: std::ops::Range<u16> = 20_000..32_768;
    const ATTEMPTS: usize = 10_000;
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..ATTEMPTS {
        if listeners.len() == n {
            break;
        }
        // Taken (by another test, or by a listener picked just before): try another.
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", rand::random_range(PORTS))) {
            listeners.push(listener);
        }
    }
    anyhow::ensure!(
        listeners.len() == n,
        "found {} of {n} free loopback ports in {PORTS:?}",
        listeners.len()
    );
    listeners
        .iter()
        .map(|l| l.local_addr().context("reading the bound address"))
        .collect()
}
