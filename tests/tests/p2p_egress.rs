//! The global egress limit holds for a whole large transfer: the only seeder, limited to
//! 20 MiB/s, cannot deliver a 200 MiB blob in much under 10 s. A lower bound only, so a slow,
//! noisy machine cannot make it fail.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde_json::json;
use shoal_tests::images::{generate, image_spec};
use shoal_tests::swarm::{fetch_blob, push};
use shoal_tests::{Cluster, ClusterOptions};

const MIB: u64 = 1 << 20;
/// 200 MiB at 20 MiB/s is 10 s; one second of slack covers a limiter's initial burst.
const MIN_TRANSFER: Duration = Duration::from_secs(9);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeder_limited_to_20_mib_per_second_takes_at_least_9_s_for_200_mib() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        origin_overrides: json!({"p2p": {"egress_rate": "20MiB"}}),
        ..ClusterOptions::with_agents(1)
    })
    .await?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![200 * MIB], 0x5e0_0305, "v1"),
    )
    .await?;
    push(&cluster, &image, "limits/egress", "v1").await?;
    let (layer, length) = image.layers[0];
    ensure!(length >= 200 * MIB);

    let start = Instant::now();
    let (digest, got) = fetch_blob(&cluster.agent_url(0), "limits/egress", &layer).await?;
    let took = start.elapsed();
    ensure!(
        digest == layer && got == length,
        "the agent served {got} bytes hashing to {digest}, expected {length} bytes of {layer}"
    );
    eprintln!("{length} bytes through a 20 MiB/s seeder in {took:?}");
    ensure!(
        took >= MIN_TRANSFER,
        "{length} bytes arrived in {took:?} from a seeder limited to 20 MiB/s: the egress limit \
         did not hold (expected at least {MIN_TRANSFER:?})"
    );
    Ok(())
}
