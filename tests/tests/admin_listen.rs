//! Admin endpoints on their own listener (`admin_listen`): with it set, each component's day-2
//! routes (origin status, agent cache and download report, build-index GC and retention runs,
//! the tracker's swarm view) answer there and are gone from the data listener, whose own routes
//! stay; the day-2 CLI works against the admin addresses.

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use reqwest::{Method, StatusCode};
use serde_json::json;
use shoal_tests::cluster::Component;
use shoal_tests::ports::free_loopback_addrs;
use shoal_tests::tools::run_command;
use shoal_tests::{Cluster, ClusterOptions, binaries};

/// `method path` on `base`: its status, 404 for a gRPC answer (the tracker's data listener hands
/// unknown paths to its gRPC service, which answers them UNIMPLEMENTED with HTTP 200).
async fn status(
    http: &reqwest::Client,
    method: Method,
    base: &str,
    path: &str,
) -> Result<StatusCode> {
    let response = http.request(method, format!("{base}{path}")).send().await?;
    let grpc = response
        .headers()
        .get("content-type")
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    Ok(if grpc {
        StatusCode::NOT_FOUND
    } else {
        response.status()
    })
}

#[tokio::test]
async fn admin_routes_move_to_the_admin_listener() -> Result<()> {
    let admin = |addr: SocketAddr| json!({"admin_listen": addr.to_string()});
    // The cluster retries its own ports on a clash, not these: another test's component can
    // take one between the pick and the bind, so the admin ports are picked again then.
    let mut attempt = 1;
    let ([origin, agent, build_index, tracker], cluster) = loop {
        let ports: [SocketAddr; 4] = free_loopback_addrs()?;
        let [origin, agent, build_index, tracker] = ports;
        let started = Cluster::start(ClusterOptions {
            origin_overrides: admin(origin),
            agent_overrides: admin(agent),
            build_index_overrides: admin(build_index),
            tracker_overrides: admin(tracker),
            ..ClusterOptions::with_agents(1)
        })
        .await;
        match started {
            Err(e) if attempt < 3 && format!("{e:#}").contains("in use") => attempt += 1,
            started => break (ports, started?),
        }
    };
    let http = reqwest::Client::new();
    let url = |addr: SocketAddr| format!("http://{addr}");
    let data = |component| format!("http://{}", cluster.addr(component));

    // (component's data base, admin base, method, admin route, a data route that stays)
    let cases = [
        (
            data(Component::Origin),
            url(origin),
            Method::GET,
            "/admin/status",
            "/health",
        ),
        (
            data(Component::Agent(0)),
            url(agent),
            Method::GET,
            "/admin/cache",
            "/v2/",
        ),
        (
            data(Component::Agent(0)),
            url(agent),
            Method::GET,
            "/debug/downloads",
            "/v2/",
        ),
        (
            data(Component::BuildIndex),
            url(build_index),
            Method::POST,
            "/v1/gc?dry_run=true",
            "/v1/repositories",
        ),
        (
            data(Component::Tracker),
            url(tracker),
            Method::GET,
            "/v1/swarms",
            "/health",
        ),
        (
            data(Component::Tracker),
            url(tracker),
            Method::GET,
            "/ui",
            "/health",
        ),
    ];
    for (data_base, admin_base, method, route, data_route) in cases {
        let on_admin = status(&http, method.clone(), &admin_base, route).await?;
        ensure!(
            on_admin.is_success(),
            "{method} {route} on the admin listener: {on_admin}"
        );
        let on_data = status(&http, method.clone(), &data_base, route).await?;
        ensure!(
            on_data == StatusCode::NOT_FOUND || on_data == StatusCode::METHOD_NOT_ALLOWED,
            "{method} {route} still answers {on_data} on the data listener"
        );
        let kept = status(&http, Method::GET, &data_base, data_route).await?;
        ensure!(
            kept.is_success(),
            "GET {data_route} on the data listener: {kept}"
        );
        for probe in ["/livez", "/readyz"] {
            let answer = status(&http, Method::GET, &admin_base, probe).await?;
            ensure!(
                answer.is_success(),
                "GET {probe} on the admin listener: {answer}"
            );
        }
    }

    // The day-2 CLI against the admin addresses.
    let (origin, agent) = (origin.to_string(), agent.to_string());
    let (build_index, tracker) = (build_index.to_string(), tracker.to_string());
    let proxy = cluster.addr(Component::Proxy).to_string();
    for command in [
        vec!["cache", "ls", "--agent", &agent],
        vec![
            "status",
            "--proxy",
            &proxy,
            "--build-index",
            &build_index,
            "--origin",
            &origin,
            "--tracker",
            &tracker,
            "--agent",
            &agent,
        ],
    ] {
        let mut shoal = tokio::process::Command::new(binaries::path("shoal"));
        shoal.args(&command);
        run_command(shoal)
            .await
            .with_context(|| format!("shoal {command:?} against the admin listeners"))?;
    }
    Ok(())
}
