//! A multi-host test bed on one machine: every host is a network namespace with one veth link to
//! a bridge, each link shaped by `tc tbf` on both ends (so upload and download are both capped).
//!
//! The bridge lives in a namespace of its own, not in the root namespace: with `br_netfilter`
//! loaded, bridged frames in the root namespace pass through its iptables FORWARD chain, which a
//! Docker Engine sets to DROP. The root namespace reaches the hosts over one unshaped control
//! veth, so the harness can push images, probe readiness and scrape `/metrics` directly.
//!
//! Everything is named after a per-run prefix and removed when the [`Netbed`] is dropped (also
//! on panic or early return): processes still inside its namespaces (by PID, from
//! `ip netns pids`), the namespaces (which deletes their veths) and the root's control veth.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail, ensure};

/// Hosts get addresses in `10.213.K.0/24`, a private range nothing on these machines uses;
/// `K` differs per bed so concurrent runs never share a subnet.
const SUBNET_PREFIX: [u8; 2] = [10, 213];
/// The root namespace's address on the control link is `.1`; hosts count up from here.
const FIRST_HOST_OCTET: u8 = 2;
/// tbf needs a bucket of at least one burst at the link rate; 256 KiB keeps 1 Gbit/s links at
/// full speed (measured) without letting a 100 Mbit/s link burst for long.
const TBF_BURST: &str = "256kb";
/// How long a packet may wait in the tbf queue before it is dropped.
const TBF_LATENCY: &str = "20ms";

/// Beds created by this process so far, part of the name prefix.
static BEDS: AtomicU32 = AtomicU32::new(0);

/// A link rate in bits per second, as `tc` understands it (`100mbit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub bits_per_second: u64,
}

impl Rate {
    pub const fn mbit(mbit: u64) -> Rate {
        Rate {
            bits_per_second: mbit * 1_000_000,
        }
    }

    pub fn bytes_per_second(self) -> f64 {
        self.bits_per_second as f64 / 8.0
    }

    fn tc(self) -> String {
        format!("{}bit", self.bits_per_second)
    }
}

impl std::str::FromStr for Rate {
    type Err = anyhow::Error;

    /// `100mbit`, `1gbit`, `500kbit` or a plain number of bits per second.
    fn from_str(text: &str) -> Result<Rate> {
        let lower = text.trim().to_ascii_lowercase();
        let (number, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
            Some(at) => lower.split_at(at),
            None => (lower.as_str(), ""),
        };
        let multiplier = match unit {
            "" | "bit" => 1,
            "kbit" => 1_000,
            "mbit" => 1_000_000,
            "gbit" => 1_000_000_000,
            other => bail!("unknown rate unit {other:?} in {text:?} (use kbit, mbit or gbit)"),
        };
        let number: u64 = number
            .parse()
            .with_context(|| format!("{text:?} is not a rate like 100mbit"))?;
        ensure!(number > 0, "a link rate must be positive: {text:?}");
        Ok(Rate {
            bits_per_second: number * multiplier,
        })
    }
}

/// One host of the bed: a namespace with one shaped link.
#[derive(Debug, Clone)]
pub struct Host {
    /// The role it was created for (`origin`, `agent-3`), for messages.
    pub role: String,
    pub netns: String,
    pub addr: Ipv4Addr,
    pub rate: Rate,
}

impl Host {
    /// A command that runs `program` inside this host's namespace (`ip netns exec` execs the
    /// program itself, so the child's PID is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]).arg(program);
        command
    }

    /// The same as [`Host::command`] for async callers.
    pub fn tokio_command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        tokio::process::Command::from(self.command(program))
    }
}

/// The bed: a switch namespace with a bridge, the root's control link, and the hosts.
#[derive(Debug)]
pub struct Netbed {
    prefix: String,
    switch: String,
    control_veth: String,
    subnet: u8,
    hosts: Vec<Host>,
    /// Namespaces created so far, removed on drop even when creation failed half-way.
    created: Vec<String>,
    control_created: bool,
}

impl Netbed {
    /// Creates the switch namespace, its bridge and the control link. Fails loudly (never skips)
    /// when network namespaces cannot be created: the bed needs root and iproute2.
    pub fn create() -> Result<Netbed> {
        ensure!(
            effective_uid()? == 0,
            "the network test bed needs root (ip netns, veth, tc)"
        );
        crate::tools::require("ip");
        crate::tools::require("tc");
        let id = (std::process::id() & 0xffff) * 16 + BEDS.fetch_add(1, Ordering::Relaxed) % 16;
        let prefix = format!("shoal-{id:x}");
        let subnet = free_subnet(id)?;
        let mut bed = Netbed {
            switch: format!("{prefix}-sw"),
            control_veth: format!("sb{id:x}c"),
            prefix,
            subnet,
            hosts: Vec::new(),
            created: Vec::new(),
            control_created: false,
        };
        bed.add_netns(&bed.switch.clone())?;
        ip(&["-n", &bed.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bed.switch, "link", "set", "br0", "up"])?;
        ip(&[
            "link",
            "add",
            &bed.control_veth,
            "type",
            "veth",
            "peer",
            "name",
            "ctl",
            "netns",
            &bed.switch,
        ])?;
        bed.control_created = true;
        ip(&[
            "-n",
            &bed.switch,
            "link",
            "set",
            "ctl",
            "master",
            "br0",
            "up",
        ])?;
        let control_addr = format!("{}/24", bed.addr(1));
        ip(&["addr", "add", &control_addr, "dev", &bed.control_veth])?;
        ip(&["link", "set", &bed.control_veth, "up"])?;
        Ok(bed)
    }

    /// The unique name prefix of everything this bed creates.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Adds a host named `role` whose link runs at `rate` in both directions.
    pub fn add_host(&mut self, role: &str, rate: Rate) -> Result<Host> {
        let index = self.hosts.len();
        let octet = u8::try_from(index + usize::from(FIRST_HOST_OCTET))
            .ok()
            .filter(|octet| *octet < 255)
            .context("a bed holds at most 252 hosts")?;
        let host = Host {
            role: role.to_owned(),
            netns: format!("{}-{role}", self.prefix),
            addr: self.addr(octet),
            rate,
        };
        let port = format!("p{index}");
        self.add_netns(&host.netns)?;
        ip(&[
            "link",
            "add",
            &port,
            "netns",
            &self.switch,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &host.netns,
        ])?;
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ])?;
        let cidr = format!("{}/24", host.addr);
        ip(&["-n", &host.netns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &host.netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &host.netns, "link", "set", "lo", "up"])?;
        // Shaping the switch end caps what the host receives, the host end what it sends.
        shape(&self.switch, &port, rate)?;
        shape(&host.netns, "eth0", rate)?;
        self.hosts.push(host.clone());
        Ok(host)
    }

    fn addr(&self, octet: u8) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET_PREFIX[0], SUBNET_PREFIX[1], self.subnet, octet)
    }

    fn add_netns(&mut self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_owned());
        Ok(())
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        // Hosts first, the switch last: reverse creation order.
        for netns in self.created.drain(..).rev() {
            if let Err(e) = kill_netns_processes(&netns) {
                errors.push(format!("{e:#}"));
            }
            if let Err(e) = ip(&["netns", "del", &netns]) {
                errors.push(format!("{e:#}"));
            }
        }
        // Usually gone with its peer in the switch namespace; delete it if it is not.
        if self.control_created
            && link_exists(&self.control_veth)
            && let Err(e) = ip(&["link", "del", &self.control_veth])
        {
            errors.push(format!("{e:#}"));
        }
        self.control_created = false;
        errors
    }
}

impl Drop for Netbed {
    fn drop(&mut self) {
        for error in self.teardown() {
            eprintln!("netbed {} teardown: {error}", self.prefix);
        }
    }
}

/// The names of the namespaces on this machine that start with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let listing = output(Command::new("ip").args(["netns", "list"]))?;
    Ok(listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

/// A `10.213.K.0/24` no interface on this machine has an address in, starting from a `K`
/// derived from `seed`.
fn free_subnet(seed: u32) -> Result<u8> {
    let addresses = output(Command::new("ip").args(["-4", "-o", "addr", "show"]))?;
    let routes = output(Command::new("ip").args(["-4", "route", "show"]))?;
    let start = seed % 250;
    for step in 0..250 {
        let k = u8::try_from((start + step) % 250 + 1).context("subnet octet")?;
        let needle = format!(" {}.{}.{k}.", SUBNET_PREFIX[0], SUBNET_PREFIX[1]);
        let route = format!("{}.{}.{k}.0/24", SUBNET_PREFIX[0], SUBNET_PREFIX[1]);
        if !addresses.contains(&needle) && !routes.contains(&route) {
            return Ok(k);
        }
    }
    bail!("every 10.213.K.0/24 subnet is in use on this machine")
}

fn shape(netns: &str, dev: &str, rate: Rate) -> Result<()> {
    run(Command::new("tc").args([
        "-n",
        netns,
        "qdisc",
        "replace",
        "dev",
        dev,
        "root",
        "tbf",
        "rate",
        &rate.tc(),
        "burst",
        TBF_BURST,
        "latency",
        TBF_LATENCY,
    ]))
}

/// SIGKILLs every process still inside `netns`. The namespace carries this run's unique
/// prefix, so each of them was started by this bed's user.
fn kill_netns_processes(netns: &str) -> Result<()> {
    let pids = output(Command::new("ip").args(["netns", "pids", netns]))?;
    for pid in pids
        .lines()
        .filter_map(|line| line.trim().parse::<i32>().ok())
    {
        // The process may have exited since the listing; that is the goal anyway.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    Ok(())
}

/// This process's effective user id, from `/proc/self/status` (`Uid: real effective …`).
fn effective_uid() -> Result<u32> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .context("/proc/self/status has no effective Uid")
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

fn run(command: &mut Command) -> Result<()> {
    output(command).map(drop)
}

/// Runs a short setup command, failing with its command line and stderr unless it exits 0.
fn output(command: &mut Command) -> Result<String> {
    let line = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{line}`"))?;
    ensure!(
        out.status.success(),
        "`{line}` failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units() {
        assert_eq!("100mbit".parse::<Rate>().ok(), Some(Rate::mbit(100)));
        assert_eq!("1gbit".parse::<Rate>().ok(), Some(Rate::mbit(1000)));
        assert_eq!(
            "2500".parse::<Rate>().ok().map(|r| r.bits_per_second),
            Some(2500)
        );
        assert!("100mb".parse::<Rate>().is_err());
        assert!("0mbit".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
    }
}
