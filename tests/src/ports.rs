//! Free loopback ports for the components a test starts.

use std::net::{SocketAddr, TcpListener};

use anyhow::{Context, Result};

/// A loopback address whose port was free a moment ago: bind port 0, read the port the kernel
/// picked, release it. Something else may take the port before the component binds it; callers
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
pub fn free_loopback_addr_list(n: usize) -> Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0"))
        .collect::<Result<Vec<_>>>()?;
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr().context("reading the bound address"))
        .collect::<Result<Vec<_>>>()?;
    Ok(addrs)
}
