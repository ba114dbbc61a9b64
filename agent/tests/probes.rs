//! The agent's probes over real sockets: `/readyz` answers 200 while its tracker and build-index
//! answer their `/health`, and 503 naming the tracker once the tracker is gone, while `/livez`
//! stays 200 throughout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use axum::routing::get;
use shoal_agent::{AgentConfig, Listeners};
use shoal_core::Addresses;
use shoal_service::CancellationToken;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(30);

/// A stand-in dependency that answers `GET /health` only.
async fn health_server() -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/health", get(|| async { "ok" }));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

/// Polls `url` until it answers `status`, returning the body.
async fn wait_for(http: &reqwest::Client, url: &str, status: u16) -> Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(response) = http.get(url).send().await
            && response.status().as_u16() == status
        {
            return Ok(response.text().await?);
        }
        if start.elapsed() > DEADLINE {
            bail!("{url} did not answer {status} within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn readyz_follows_the_trackers_and_livez_stays_up() -> Result<()> {
    let (tracker, tracker_task) = health_server().await?;
    let (other_tracker, other_tracker_task) = health_server().await?;
    let (build_index, build_index_task) = health_server().await?;
    let dir = tempfile::tempdir()?;
    let config = AgentConfig {
        data_dir: dir.path().to_path_buf(),
        tracker: Addresses::new(vec![tracker.to_string(), other_tracker.to_string()])
            .map_err(anyhow::Error::msg)?,
        build_index: Addresses::one(build_index.to_string()),
        ..AgentConfig::default()
    };
    let listeners = Listeners {
        http: TcpListener::bind("127.0.0.1:0").await?,
        peer: TcpListener::bind("127.0.0.1:0").await?,
    };
    let base = format!("http://{}", listeners.http.local_addr()?);
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(shoal_agent::run(config, listeners, shutdown.clone()));
    let http = shoal_service::client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;

    ensure!(wait_for(&http, &format!("{base}/readyz"), 200).await? == r#"{"ready":true}"#);
    ensure!(http.get(format!("{base}/livez")).send().await?.status() == 200);

    // One tracker goes away: the agent goes on with the other, so it stays ready (asked again
    // once the last answer is no longer reused).
    tracker_task.abort();
    tokio::time::sleep(shoal_service::ready::REUSE + Duration::from_millis(100)).await;
    let still = http.get(format!("{base}/readyz")).send().await?;
    ensure!(still.status() == 200, "{}", still.text().await?);

    // Both trackers go away: not ready (naming them), still alive.
    other_tracker_task.abort();
    let reason: serde_json::Value =
        serde_json::from_str(&wait_for(&http, &format!("{base}/readyz"), 503).await?)?;
    ensure!(reason["ready"] == false, "{reason}");
    ensure!(reason["failed"]["tracker"].is_string(), "{reason}");
    ensure!(reason["failed"].get("build-index").is_none(), "{reason}");
    ensure!(http.get(format!("{base}/livez")).send().await?.status() == 200);

    shutdown.cancel();
    build_index_task.abort();
    tokio::time::timeout(DEADLINE, agent).await???;
    Ok(())
}
