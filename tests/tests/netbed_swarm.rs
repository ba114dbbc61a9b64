//! The swarm benchmark's smoke run: three agents on three shaped network-namespace hosts pull a
//! 16 MiB image with skopeo through Shoal and then from docker-registry on the origin's host.
//! It proves the test bed works end to end (every pull complete and verified, the origin's
//! egress counted) and that it tears down every namespace it created. Needs root and iproute2,
//! like CI; without them it fails rather than skips. Timings are reported, never asserted.

use anyhow::{Result, ensure};
use shoal_tests::netbed::{Netbed, Rate, namespaces_with_prefix};
use shoal_tests::swarm_bench::{self, SwarmParams};
use shoal_tests::{binaries, svg_plot};

use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const AGENTS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shaped_agents_pull_through_shoal_and_the_registry_and_the_bed_is_removed()
-> Result<()> {
    let binaries = binaries::path("shoal-agent")
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let params = SwarmParams {
        agents: AGENTS,
        image_bytes: 16 * MIB,
        layers: 2,
        agent_rate: Rate::mbit(200),
        origin_rate: Rate::mbit(200),
        service_rate: Rate::mbit(1000),
        binaries,
        rust_log: "warn".to_owned(),
        // Over the bed's links the piece stream is exercised nowhere else; gRPC (the default)
        // is, by every other peer-to-peer test.
        piece_stream: true,
    };
    let report = swarm_bench::run(&params).await?;
    eprintln!("{}", report.markdown("(smoke test)", "now", None));

    ensure!(report.shoal.times.len() == AGENTS && report.registry.times.len() == AGENTS);
    ensure!(report.image_bytes >= 16 * MIB);
    // Every agent pulled all of it; at least one copy of every piece had to leave the origin,
    // and three full copies would mean no sharing at all was needed to account for it.
    ensure!(
        report.origin_egress >= 16.0 * MIB as f64,
        "the origin reports {} bytes served for a {}-byte image",
        report.origin_egress,
        report.image_bytes
    );
    // Each agent's namespace counts its own TCP; the pulls sent through them.
    ensure!(
        report.shoal_tcp.segments_sent > 0,
        "no TCP segments counted in the agents' namespaces: {:?}",
        report.shoal_tcp
    );
    ensure!(
        report.origin_zero_copy > 0.0,
        "the origin sent no piece with sendfile over the piece stream"
    );
    let svg = svg_plot::completion_chart(
        "smoke",
        &[svg_plot::Series {
            label: "Shoal",
            times: &report.shoal.times,
        }],
        report.link_limit(),
    );
    ensure!(svg.contains("<polyline"));
    Ok(())
}

#[test]
fn a_dropped_bed_leaves_no_namespace_or_process_behind() -> Result<()> {
    let mut bed = Netbed::create()?;
    let prefix = bed.prefix().to_owned();
    let host = bed.add_host("h", Rate::mbit(100))?;
    // A process inside the namespace that would outlive it if teardown missed it.
    let mut sleeper = Sleeper(host.command("sleep").arg("600").spawn()?);
    ensure!(
        namespaces_with_prefix(&prefix)?.len() == 2,
        "switch and host namespaces exist"
    );
    // `ip netns exec` enters the namespace and then execs; until it has, the process is not
    // in the namespace yet and no teardown could see it there.
    let pid = sleeper.0.id();
    let entered = Instant::now();
    while !netns_pids(&host.netns)?.contains(&pid) {
        ensure!(
            entered.elapsed() < Duration::from_secs(10),
            "the sleeper never showed up in {}",
            host.netns
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(bed);
    ensure!(
        namespaces_with_prefix(&prefix)?.is_empty(),
        "namespaces left behind: {:?}",
        namespaces_with_prefix(&prefix)?
    );
    let killed = Instant::now();
    let status = loop {
        if let Some(status) = sleeper.0.try_wait()? {
            break status;
        }
        ensure!(
            killed.elapsed() < Duration::from_secs(10),
            "the process in the namespace is still running after teardown"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    ensure!(
        !status.success(),
        "the process in the namespace was killed, not left to finish"
    );
    Ok(())
}

/// Kills its child when dropped, so a failing assertion never leaves `sleep 600` behind.
struct Sleeper(std::process::Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn netns_pids(netns: &str) -> Result<Vec<u32>> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", netns])
        .output()?;
    ensure!(out.status.success(), "ip netns pids {netns} failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect())
}
