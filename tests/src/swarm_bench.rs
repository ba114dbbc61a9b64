//! The swarm benchmark: N agents on N shaped hosts of a [`Netbed`] pull one image at once through
//! a real client (skopeo, run inside each agent's namespace), then the same N pulls go to the
//! CNCF registry (`docker-registry`) placed on the origin's host behind the same link. Reports
//! completion times, origin egress and backend reads; [`SwarmReport::markdown`] and
//! [`crate::svg_plot`] turn them into docs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::future::try_join_all;
use nix::sys::resource::{UsageWho, getrusage};
use serde_json::{Value, json};
use shoal_client::{Image, ImageSpec, RegistryClient};
use tempfile::TempDir;

use crate::cluster::{get_text, sum_metric};
use crate::images::generate;
use crate::netbed::{Host, Netbed, Rate};
use crate::process::{Process, ProcessSpec, wait_until_ready};
use crate::procfs;
use crate::swarm::ensure_same_layout;
use crate::tools::require;

/// Release binaries start in milliseconds; debug ones on a loaded 2-core machine take longer.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// Every pull gets this on top of its worst-case transfer time.
const PULL_SLACK: Duration = Duration::from_secs(120);
const REPO: &str = "bench/swarm";
const TAG: &str = "v1";
const AGENT_PORT: u16 = 16000;
const AGENT_PEER_PORT: u16 = 16001;
const TRACKER_PORT: u16 = 15003;
const BUILD_INDEX_PORT: u16 = 15004;
const PROXY_PORT: u16 = 15000;
const ORIGIN_PORT: u16 = 15100;
const ORIGIN_PEER_PORT: u16 = 15101;
const REGISTRY_PORT: u16 = 5000;

/// What to measure.
#[derive(Debug, Clone)]
pub struct SwarmParams {
    pub agents: usize,
    /// Total layer bytes, split evenly over `layers`.
    pub image_bytes: u64,
    pub layers: usize,
    pub agent_rate: Rate,
    /// The origin's host link, shared by the origin and (for the baseline) the registry.
    pub origin_rate: Rate,
    /// Links of the tracker, build-index and proxy hosts.
    pub service_rate: Rate,
    /// Where `shoal-origin`, `shoal-agent`, … are (target/release for benchmarks).
    pub binaries: PathBuf,
    /// `RUST_LOG` for the components.
    pub rust_log: String,
    /// Agents fetch pieces over the piece stream (`p2p.piece_stream`) instead of gRPC.
    pub piece_stream: bool,
}

/// One set of N concurrent pulls.
#[derive(Debug, Clone)]
pub struct PullRun {
    /// Each agent's time from starting skopeo to its exit with the image complete, by agent.
    pub times: Vec<Duration>,
    /// Share of the machine's CPU time (all cores) that was busy while the pulls ran: near 1.0
    /// means the run measured this machine's CPU, not the links.
    pub cpu_busy: f64,
    /// Who spent the machine's CPU while the pulls ran.
    pub cpu: CpuSpent,
}

/// CPU seconds (user + system) spent while one set of pulls ran, by who spent them.
#[derive(Debug, Clone, Copy)]
pub struct CpuSpent {
    /// The registry's processes: every Shoal component, or docker-registry.
    pub servers: f64,
    /// The skopeo clients.
    pub clients: f64,
    /// The whole machine's busy time; what the two above leave is the kernel's work charged to
    /// no process (network soft interrupts, writeback, page reclaim) and this benchmark itself.
    pub machine: f64,
}

impl PullRun {
    /// The nearest-rank `q` quantile (0 < q ≤ 1) of the completion times.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.times.clone();
        sorted.sort();
        let rank = (q * sorted.len() as f64).ceil() as usize;
        sorted
            .get(rank.clamp(1, sorted.len().max(1)) - 1)
            .copied()
            .unwrap_or_default()
    }

    pub fn max(&self) -> Duration {
        self.times.iter().max().copied().unwrap_or_default()
    }
}

/// Everything one benchmark run measured.
#[derive(Debug, Clone)]
pub struct SwarmReport {
    pub params: SwarmParams,
    /// S: the bytes a client pulls (manifest, config and layers).
    pub image_bytes: u64,
    pub shoal: PullRun,
    /// Blob bytes the origin sent during Shoal's pulls (HTTP API plus gRPC pieces).
    pub origin_egress: f64,
    /// Of `origin_egress`, the piece bytes sent with `sendfile` over the piece stream.
    pub origin_zero_copy: f64,
    /// Blobs the origin pulled through from its backend during Shoal's pulls.
    pub backend_pullthroughs: f64,
    /// The agents' TCP during Shoal's pulls.
    pub shoal_tcp: TcpCounters,
    pub registry: PullRun,
    /// The order of the free pages this virtual machine reports to its host, when it does.
    pub page_reporting: Option<u32>,
}

/// Where the kernel says which free pages it hands back to a hypervisor (`virtio-balloon`'s free
/// page reporting, as in Firecracker): only pages freed in blocks of this order or larger.
const PAGE_REPORTING_ORDER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";
/// The buddy allocator's largest block order (`MAX_PAGE_ORDER`): a reporting order above it
/// reports nothing.
const MAX_PAGE_ORDER: u32 = 10;

/// The order of the free pages this machine reports to its host, `None` when it reports none.
/// Reported pages are faulted back in from the host on first use, so the page cache the pulls
/// write (agents and clients alike) costs several times its usual CPU: about a fifth of a
/// 20-agent run's CPU on the bed (docs/BENCHMARKS.md, 2026-12-04).
pub fn page_reporting() -> Option<u32> {
    reporting_order(&std::fs::read_to_string(PAGE_REPORTING_ORDER).ok()?)
}

fn reporting_order(parameter: &str) -> Option<u32> {
    // Unregistered, the parameter reads as -1 in an unsigned field (4294967295).
    parameter
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|&order| order <= MAX_PAGE_ORDER)
}

impl SwarmReport {
    /// S/B: the physical limit of one pull over an agent's link, in seconds.
    pub fn link_limit(&self) -> f64 {
        self.image_bytes as f64 / self.params.agent_rate.bytes_per_second()
    }

    /// Origin egress as a multiple of S.
    pub fn origin_copies(&self) -> f64 {
        self.origin_egress / self.image_bytes as f64
    }

    /// A Markdown section for docs/BENCHMARKS.md; `command` is how the run was started.
    pub fn markdown(&self, command: &str, date: &str, svg: Option<&str>) -> String {
        let p = &self.params;
        let limit = self.link_limit();
        let row = |name: &str, run: &PullRun| {
            let (p50, p90, max) = (run.quantile(0.5), run.quantile(0.9), run.max());
            format!(
                "| {name} | {:.1} s | {:.1} s | {:.1} s | {:.2}× | {:.2}× | {:.0} % | {:.1} / {:.1} / {:.1} s |\n",
                p50.as_secs_f64(),
                p90.as_secs_f64(),
                max.as_secs_f64(),
                p50.as_secs_f64() / limit,
                p90.as_secs_f64() / limit,
                run.cpu_busy * 100.0,
                run.cpu.servers,
                run.cpu.clients,
                run.cpu.machine,
            )
        };
        let speedup =
            |q: f64| self.registry.quantile(q).as_secs_f64() / self.shoal.quantile(q).as_secs_f64();
        let mut text = format!(
            "### {} agents, {:.0} MiB in {} layers, {} agent links, {} origin link ({date})\n\n\
             ```sh\n{command}\n```\n\n\
             S = {} bytes, B = {}, S/B = {limit:.1} s. Tracker, build-index and proxy hosts: {}.\n\n\
             | registry the agents' skopeo pulls from | p50 | p90 | max | p50 / (S/B) | p90 / (S/B) | machine CPU busy | CPU: servers / skopeo clients / machine |\n\
             |---|---|---|---|---|---|---|---|\n",
            p.agents,
            self.image_bytes as f64 / f64::from(1 << 20),
            p.layers,
            rate_text(p.agent_rate),
            rate_text(p.origin_rate),
            self.image_bytes,
            rate_text(p.agent_rate),
            rate_text(p.service_rate),
        );
        text.push_str(&row(
            "Shoal: each agent (p2p swarm, one origin)",
            &self.shoal,
        ));
        text.push_str(&row(
            "docker-registry on the origin's host (baseline)",
            &self.registry,
        ));
        text.push_str(&format!(
            "\nSpeedup against the central registry: p50 {:.2}×, p90 {:.2}×, max {:.2}×. \
             Origin egress during Shoal's pulls: {:.0} bytes = {:.2}× S. Backend reads: {} blobs \
             pulled through (the origin held the pushed blobs).\n",
            speedup(0.5),
            speedup(0.9),
            self.registry.max().as_secs_f64() / self.shoal.max().as_secs_f64(),
            self.origin_egress,
            self.origin_copies(),
            self.backend_pullthroughs,
        ));
        let tcp = &self.shoal_tcp;
        text.push_str(&format!(
            "\nThe agents' TCP during Shoal's pulls: {} segments sent, {} retransmitted, {} \
             retransmission timeouts (losses fast retransmit could not repair).\n",
            tcp.segments_sent, tcp.retransmitted, tcp.timeouts
        ));
        text.push_str(&if p.piece_stream {
            format!(
                "\nPieces over the piece stream (`p2p.piece_stream`): the origin sent {:.0} bytes \
                 with `sendfile`.\n",
                self.origin_zero_copy
            )
        } else {
            "\nPieces over gRPC (the default).\n".to_owned()
        });
        match self.page_reporting {
            Some(order) => text.push_str(&format!(
                "\nThis virtual machine reports free pages to its host (order {order}): the page \
                 cache the pulls write is faulted in from the host on first use, which costs CPU \
                 a node's recycled page cache does not.\n"
            )),
            None => text.push_str("\nFree page reporting: off.\n"),
        }
        if let Some(svg) = svg {
            text.push_str(&format!("\n![completion times]({svg})\n"));
        }
        text
    }
}

/// `100 Mbit/s` for a rate.
pub fn rate_text(rate: Rate) -> String {
    if rate.bits_per_second.is_multiple_of(1_000_000_000) {
        format!("{} Gbit/s", rate.bits_per_second / 1_000_000_000)
    } else {
        format!("{} Mbit/s", rate.bits_per_second as f64 / 1e6)
    }
}

/// The hosts of one run, with the processes on them (killed on drop; the caller keeps the
/// [`Netbed`] alive longer, so processes die before their namespaces are deleted).
struct Swarm {
    origin: Host,
    proxy: Host,
    agents: Vec<Host>,
    http: reqwest::Client,
    /// The PIDs of Shoal's components, whose CPU time a run of pulls through them counts.
    shoal: Vec<u32>,
    /// docker-registry's PID.
    registry: u32,
    _processes: Vec<Process>,
}

/// Runs the whole benchmark: bed, cluster, registry, image, both sets of pulls. Everything it
/// created is gone when it returns, with or without an error.
pub async fn run(params: &SwarmParams) -> Result<SwarmReport> {
    ensure!(params.agents > 0, "the benchmark needs at least one agent");
    ensure!(params.layers > 0, "the image needs at least one layer");
    require("skopeo");
    require("docker-registry");
    // Declaration order is teardown order in reverse: processes, then the bed, then the files.
    let work = tempfile::Builder::new()
        .prefix("shoal-swarm-bench-")
        .tempdir()
        .context("creating the work dir")?;
    let mut bed = Netbed::create()?;
    eprintln!("swarm bench: test bed {}", bed.prefix());
    let swarm = start(params, &mut bed, work.path()).await?;
    measure(params, &swarm, &work).await
}

async fn measure(params: &SwarmParams, swarm: &Swarm, work: &TempDir) -> Result<SwarmReport> {
    let per_layer = params.image_bytes / params.layers as u64;
    let image = generate(
        &work.path().join("image"),
        ImageSpec {
            layers: vec![per_layer; params.layers],
            seed: 0x53a_f006,
            tag: TAG.to_owned(),
        },
    )
    .await?;
    let image_bytes =
        image.blobs().map(|(_, size)| size).sum::<u64>() + image.manifest_bytes.len() as u64;
    let registry = SocketAddr::new(swarm.origin.addr.into(), REGISTRY_PORT);
    let proxy = SocketAddr::new(swarm.proxy.addr.into(), PROXY_PORT);
    let page_reporting = page_reporting();
    if let Some(order) = page_reporting {
        eprintln!(
            "swarm bench: this machine reports free pages of order {order} and up to its host \
             (page cache costs more CPU on first use; see docs/BENCHMARKS.md)"
        );
    }
    eprintln!("swarm bench: pushing {image_bytes} bytes to the proxy and to docker-registry");
    push(&image, proxy).await?;
    push(&image, registry).await?;

    // Pull at most this long: N full copies through the narrower of the two links, plus slack.
    let bottleneck = params
        .origin_rate
        .bits_per_second
        .min(params.agent_rate.bits_per_second);
    let deadline = PULL_SLACK
        + Duration::from_secs_f64(
            3.0 * params.agents as f64 * image_bytes as f64 * 8.0 / bottleneck as f64,
        );
    let origin_http = SocketAddr::new(swarm.origin.addr.into(), ORIGIN_PORT);
    let before = origin_counters(&swarm.http, origin_http).await?;
    let tcp_before = TcpCounters::of(&swarm.agents).await?;
    eprintln!("swarm bench: {} pulls through the agents", params.agents);
    let shoal = pulls(swarm, &image, work.path(), deadline, &swarm.shoal, |i| {
        SocketAddr::new(swarm.agents[i].addr.into(), AGENT_PORT)
    })
    .await?;
    let origin = origin_counters(&swarm.http, origin_http)
        .await?
        .since(&before);
    let shoal_tcp = TcpCounters::of(&swarm.agents).await?.since(tcp_before);
    eprintln!(
        "swarm bench: Shoal p50 {:.1?}, p90 {:.1?}, max {:.1?}, CPU {:.1} s in Shoal, {:.1} s in \
         skopeo, {:.1} s on the machine; origin egress {:.0} bytes \
         ({:.0} over HTTP, {:.0} as pieces; {:.0} elsewhere answers); agents' TCP: {} segments \
         sent, {} retransmitted, {} retransmission timeouts",
        shoal.quantile(0.5),
        shoal.quantile(0.9),
        shoal.max(),
        shoal.cpu.servers,
        shoal.cpu.clients,
        shoal.cpu.machine,
        origin.egress(),
        origin.http_bytes,
        origin.piece_bytes,
        origin.elsewhere,
        shoal_tcp.segments_sent,
        shoal_tcp.retransmitted,
        shoal_tcp.timeouts,
    );
    for agent in &swarm.agents {
        let at = SocketAddr::new(agent.addr.into(), AGENT_PORT);
        eprintln!(
            "swarm bench: {}: {}",
            agent.role,
            agent_counters(&swarm.http, at).await?
        );
    }
    eprintln!("swarm bench: {} pulls from docker-registry", params.agents);
    let baseline = pulls(
        swarm,
        &image,
        work.path(),
        deadline,
        &[swarm.registry],
        |_| registry,
    )
    .await?;
    Ok(SwarmReport {
        params: params.clone(),
        image_bytes,
        shoal,
        origin_egress: origin.egress(),
        origin_zero_copy: origin.zero_copy,
        backend_pullthroughs: origin.pullthroughs,
        shoal_tcp,
        registry: baseline,
        page_reporting,
    })
}

/// Creates the hosts and starts tracker, build-index, proxy, origin (with the registry beside
/// it) and the agents, each inside its host's namespace.
async fn start(params: &SwarmParams, bed: &mut Netbed, work: &Path) -> Result<Swarm> {
    let tracker = bed.add_host("tracker", params.service_rate)?;
    let index = bed.add_host("index", params.service_rate)?;
    let proxy = bed.add_host("proxy", params.service_rate)?;
    let origin = bed.add_host("origin", params.origin_rate)?;
    let agents = (0..params.agents)
        .map(|i| bed.add_host(&format!("a{i}"), params.agent_rate))
        .collect::<Result<Vec<_>>>()?;
    let at = |host: &Host, port: u16| SocketAddr::new(host.addr.into(), port).to_string();
    let backend = work.join("backend");
    let launcher = Launcher { params, work };
    let mut processes = Vec::new();

    let config = json!({
        "listen": at(&origin, ORIGIN_PORT),
        "peer_listen": at(&origin, ORIGIN_PEER_PORT),
        "data_dir": work.join("origin"),
        "backend": {"filesystem": {"root": backend}},
    });
    processes.push(
        launcher
            .component(&origin, "shoal-origin", config, ORIGIN_PORT)
            .await?,
    );
    let config = json!({
        "listen": at(&index, BUILD_INDEX_PORT),
        "origins": [at(&origin, ORIGIN_PORT)],
        "backend": {"filesystem": {"root": backend}},
    });
    processes.push(
        launcher
            .component(&index, "shoal-build-index", config, BUILD_INDEX_PORT)
            .await?,
    );
    let config = json!({
        "listen": at(&proxy, PROXY_PORT),
        "origins": [at(&origin, ORIGIN_PORT)],
        "build_index": at(&index, BUILD_INDEX_PORT),
        "preheat": {"state_dir": path(&work.join("proxy-preheat"))},
    });
    processes.push(
        launcher
            .component(&proxy, "shoal-proxy", config, PROXY_PORT)
            .await?,
    );
    let config = json!({
        "listen": at(&tracker, TRACKER_PORT),
        "origins": [{"http": at(&origin, ORIGIN_PORT), "peer": at(&origin, ORIGIN_PEER_PORT)}],
    });
    processes.push(
        launcher
            .component(&tracker, "shoal-tracker", config, TRACKER_PORT)
            .await?,
    );
    for (i, agent) in agents.iter().enumerate() {
        let config = json!({
            "listen": at(agent, AGENT_PORT),
            "peer_listen": at(agent, AGENT_PEER_PORT),
            "peer_id": format!("agent-{i}"),
            "data_dir": work.join(format!("agent-{i}")),
            "tracker": at(&tracker, TRACKER_PORT),
            "build_index": at(&index, BUILD_INDEX_PORT),
            "p2p": {"piece_stream": launcher.params.piece_stream},
        });
        processes.push(
            launcher
                .component(agent, "shoal-agent", config, AGENT_PORT)
                .await?,
        );
    }
    let shoal = processes
        .iter()
        .map(|p| p.pid().context("a component exited during start-up"))
        .collect::<Result<Vec<_>>>()?;
    let registry = launcher.registry(&origin).await?;
    let registry_pid = registry
        .pid()
        .context("docker-registry exited during start-up")?;
    processes.push(registry);
    Ok(Swarm {
        origin,
        proxy,
        agents,
        http: shoal_service::client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the metrics client")?,
        shoal,
        registry: registry_pid,
        _processes: processes,
    })
}

/// Starts processes inside hosts' namespaces with files under the run's work dir.
struct Launcher<'a> {
    params: &'a SwarmParams,
    work: &'a Path,
}

impl Launcher<'_> {
    /// Starts `binary` with `config` on `host` and waits for its `/health` on `port`.
    async fn component(
        &self,
        host: &Host,
        binary: &str,
        config: Value,
        port: u16,
    ) -> Result<Process> {
        let program = self.params.binaries.join(binary);
        ensure!(
            program.is_file(),
            "{} not found: build the binaries first (cargo build --release --bins)",
            program.display()
        );
        let file = self.work.join(format!("{}.yaml", host.role));
        std::fs::write(&file, serde_yaml_ng::to_string(&config)?)
            .with_context(|| format!("writing {}", file.display()))?;
        let url = format!("http://{}:{port}/health", host.addr);
        self.spawn(
            host,
            program,
            vec!["--config".to_owned(), path(&file)],
            &url,
        )
        .await
    }

    /// Starts `docker-registry` on `host` (the origin's), storage in the work dir.
    async fn registry(&self, host: &Host) -> Result<Process> {
        let file = self.work.join("registry.yaml");
        let config = json!({
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {
                "filesystem": {"rootdirectory": self.work.join("registry")},
                "delete": {"enabled": true},
            },
            "http": {"addr": format!("{}:{REGISTRY_PORT}", host.addr)},
        });
        std::fs::write(&file, serde_yaml_ng::to_string(&config)?)
            .with_context(|| format!("writing {}", file.display()))?;
        let url = format!("http://{}:{REGISTRY_PORT}/v2/", host.addr);
        self.spawn(
            host,
            require("docker-registry"),
            vec!["serve".to_owned(), path(&file)],
            &url,
        )
        .await
    }

    async fn spawn(
        &self,
        host: &Host,
        program: PathBuf,
        args: Vec<String>,
        ready: &str,
    ) -> Result<Process> {
        let name = format!(
            "{}@{}",
            program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            host.role
        );
        let mut full = vec![
            "netns".to_owned(),
            "exec".to_owned(),
            host.netns.clone(),
            path(&program),
        ];
        full.extend(args);
        let mut process = Process::spawn(ProcessSpec {
            name,
            program: require("ip"),
            args: full,
            env: vec![("RUST_LOG".to_owned(), self.params.rust_log.clone())],
            log: self.work.join(format!("{}.log", host.role)),
        })?;
        wait_until_ready(&mut process, ready, STARTUP_DEADLINE).await?;
        Ok(process)
    }
}

async fn push(image: &Image, registry: SocketAddr) -> Result<()> {
    let pushed = RegistryClient::new(&format!("http://{registry}"))?
        .push_image(image, REPO, TAG, |_| {})
        .await
        .with_context(|| format!("pushing {REPO}:{TAG} to {registry}"))?;
    ensure!(
        pushed == image.manifest_digest,
        "{registry} acknowledged {pushed}, expected {}",
        image.manifest_digest
    );
    Ok(())
}

/// Every agent host pulls the image at once with skopeo from `source(i)`, served by the
/// processes `servers`; each layout is checked against the pushed image and then removed (N
/// copies of a large image add up).
async fn pulls(
    swarm: &Swarm,
    image: &Image,
    work: &Path,
    deadline: Duration,
    servers: &[u32],
    source: impl Fn(usize) -> SocketAddr,
) -> Result<PullRun> {
    let runs = swarm.agents.iter().enumerate().map(|(i, host)| {
        let from = source(i);
        let dest = work.join(format!("pulled-{i}"));
        async move {
            let mut command = host.tokio_command(require("skopeo"));
            command.args([
                "copy".to_owned(),
                "--quiet".to_owned(),
                "--preserve-digests".to_owned(),
                "--src-tls-verify=false".to_owned(),
                format!("docker://{from}/{REPO}:{TAG}"),
                format!("oci:{}:{TAG}", path(&dest)),
            ]);
            let started = Instant::now();
            // Not `tools::run_command`: its fixed deadline is shorter than N copies through a
            // slow central registry take.
            command
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            let child = command
                .spawn()
                .with_context(|| format!("{}: spawning skopeo", host.role))?;
            let out = tokio::time::timeout(deadline, child.wait_with_output())
                .await
                .with_context(|| {
                    format!("{}: skopeo did not finish within {deadline:?}", host.role)
                })?
                .with_context(|| format!("{}: waiting for skopeo", host.role))?;
            ensure!(
                out.status.success(),
                "{} pulling from {from}: skopeo failed with {}: {}",
                host.role,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            eprintln!(
                "swarm bench: {} done in {:.1?}",
                host.role,
                started.elapsed()
            );
            Ok::<_, anyhow::Error>((started.elapsed(), dest))
        }
    });
    let cpu_before = cpu_times()?;
    let servers_before = servers_ticks(servers)?;
    let clients_before = children_cpu()?;
    let done = try_join_all(runs).await?;
    let cpu_after = cpu_times()?;
    let hz = procfs::ticks_per_second();
    let cpu = CpuSpent {
        servers: servers_ticks(servers)?.saturating_sub(servers_before) as f64 / hz,
        // Only the skopeo processes exit (and are reaped) while the pulls run.
        clients: children_cpu()? - clients_before,
        machine: cpu_after.busy.saturating_sub(cpu_before.busy) as f64 / hz,
    };
    let cpu_busy = cpu_after.busy_since(cpu_before);
    let mut times = Vec::with_capacity(done.len());
    for (elapsed, dest) in done {
        ensure_same_layout(image, &dest)?;
        std::fs::remove_dir_all(&dest).with_context(|| format!("removing {}", dest.display()))?;
        times.push(elapsed);
    }
    Ok(PullRun {
        times,
        cpu_busy,
        cpu,
    })
}

/// The CPU ticks the processes `pids` have used so far; an error if one has exited.
fn servers_ticks(pids: &[u32]) -> Result<u64> {
    pids.iter()
        .map(|&pid| procfs::cpu_ticks(pid).with_context(|| format!("process {pid} is gone")))
        .sum()
}

/// CPU seconds (user + system) of this process's children that have exited and been reaped.
fn children_cpu() -> Result<f64> {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage(RUSAGE_CHILDREN)")?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
}

/// The machine's CPU time so far, in clock ticks: (busy, total) over all cores.
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    /// The busy share of the time between `earlier` and this reading.
    pub fn busy_since(self, earlier: CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// Reads the aggregate `cpu` line of /proc/stat; idle and iowait are the time not busy.
pub fn cpu_times() -> Result<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_cpu_line(&stat).context("no aggregate cpu line in /proc/stat")
}

fn parse_cpu_line(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice].
    let counted = &fields[..fields.len().min(8)];
    let total: u64 = counted.iter().sum();
    let idle = counted.get(3)? + counted.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// What the origin served, by route, and what it pulled through from the backend.
#[derive(Debug, Clone, Copy, Default)]
struct OriginCounters {
    /// Blob bytes served over HTTP (whole-blob GETs).
    http_bytes: f64,
    /// Piece bytes served over the peer protocol.
    piece_bytes: f64,
    /// Of `piece_bytes`, those sent with `sendfile` over the piece stream.
    zero_copy: f64,
    /// "Get it elsewhere" answers (super-seeding).
    elsewhere: f64,
    /// Blobs pulled through from the backend.
    pullthroughs: f64,
}

impl OriginCounters {
    fn egress(&self) -> f64 {
        self.http_bytes + self.piece_bytes
    }

    fn since(&self, before: &OriginCounters) -> OriginCounters {
        OriginCounters {
            http_bytes: self.http_bytes - before.http_bytes,
            piece_bytes: self.piece_bytes - before.piece_bytes,
            zero_copy: self.zero_copy - before.zero_copy,
            elsewhere: self.elsewhere - before.elsewhere,
            pullthroughs: self.pullthroughs - before.pullthroughs,
        }
    }
}

async fn origin_counters(http: &reqwest::Client, origin: SocketAddr) -> Result<OriginCounters> {
    let text = get_text(http, &format!("http://{origin}/metrics")).await?;
    Ok(OriginCounters {
        http_bytes: sum_metric(&text, "origin_blob_bytes_served_total", &[]),
        piece_bytes: sum_metric(&text, "p2p_bytes_served_total", &[]),
        zero_copy: sum_metric(&text, "p2p_bytes_served_zero_copy_total", &[]),
        elsewhere: sum_metric(&text, "p2p_elsewhere_answered_total", &[]),
        pullthroughs: sum_metric(&text, "origin_pullthrough_total", &[]),
    })
}

/// What an agent's downloads met, for the log: where its bytes came from and the answers that
/// held it up.
async fn agent_counters(http: &reqwest::Client, agent: SocketAddr) -> Result<String> {
    let text = get_text(http, &format!("http://{agent}/metrics")).await?;
    let mib = |from| sum_metric(&text, "p2p_bytes_received_total", &[("from", from)]) / 1048576.0;
    Ok(format!(
        "{:.1} MiB from the origin, {:.1} MiB from agents, {:.1} MiB served ({:.1} MiB with \
         sendfile), {} pieces over the piece stream; {} busy and {} elsewhere answers received, \
         {} peers blacklisted",
        mib("origin"),
        mib("agent"),
        sum_metric(&text, "p2p_bytes_served_total", &[]) / 1048576.0,
        sum_metric(&text, "p2p_bytes_served_zero_copy_total", &[]) / 1048576.0,
        sum_metric(&text, "p2p_stream_pieces_received_total", &[]),
        sum_metric(&text, "p2p_busy_received_total", &[]),
        sum_metric(&text, "p2p_elsewhere_received_total", &[]),
        sum_metric(&text, "p2p_peers_blacklisted_total", &[]),
    ))
}

/// TCP counters summed over hosts' namespaces (each namespace counts its own): how lossy the
/// shaped links were for the pulls, and how the losses were repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    pub segments_sent: u64,
    pub retransmitted: u64,
    /// Retransmission timeouts: losses that waited at least 200 ms.
    pub timeouts: u64,
}

impl TcpCounters {
    async fn of(hosts: &[Host]) -> Result<TcpCounters> {
        let mut sum = TcpCounters::default();
        for host in hosts {
            let output = host
                .tokio_command("cat")
                .args(["/proc/net/snmp", "/proc/net/netstat"])
                .output()
                .await
                .with_context(|| format!("{}: reading its TCP counters", host.role))?;
            ensure!(
                output.status.success(),
                "{}: cat /proc/net/snmp /proc/net/netstat failed",
                host.role
            );
            let counters = TcpCounters::parse(&String::from_utf8_lossy(&output.stdout))
                .with_context(|| format!("{}: TCP counters missing", host.role))?;
            sum.segments_sent += counters.segments_sent;
            sum.retransmitted += counters.retransmitted;
            sum.timeouts += counters.timeouts;
        }
        Ok(sum)
    }

    /// From `/proc/net/snmp` and `/proc/net/netstat`: each group is a line of names, then a line
    /// of values, both opening with the group's name.
    fn parse(text: &str) -> Option<TcpCounters> {
        let counter = |group: &str, name: &str| {
            let mut lines = text.lines().filter(|line| line.starts_with(group));
            let names = lines.next()?.split_whitespace();
            let values = lines.next()?.split_whitespace();
            names
                .zip(values)
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.parse().ok())
        };
        Some(TcpCounters {
            segments_sent: counter("Tcp:", "OutSegs")?,
            retransmitted: counter("Tcp:", "RetransSegs")?,
            timeouts: counter("TcpExt:", "TCPTimeouts")?,
        })
    }

    fn since(self, before: TcpCounters) -> TcpCounters {
        TcpCounters {
            segments_sent: self.segments_sent.saturating_sub(before.segments_sent),
            retransmitted: self.retransmitted.saturating_sub(before.retransmitted),
            timeouts: self.timeouts.saturating_sub(before.timeouts),
        }
    }
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_busy_counts_everything_but_idle_and_iowait() {
        let before = parse_cpu_line("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        let after = parse_cpu_line("cpu  400 0 150 900 50 0 0 0 0 0\n").unwrap();
        // 400 ticks busy (300 user + 100 system) of 500 elapsed.
        assert!((after.busy_since(before) - 0.8).abs() < 1e-9);
        assert!(parse_cpu_line("cpu0 1 2 3 4\n").is_none());
        assert!(parse_cpu_line("cpu  1 x 3 4\n").is_none());
    }

    #[test]
    fn tcp_counters_are_read_by_name_from_both_files() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm OutSegs RetransSegs\nTcp: 1 6000 150\n\
                    TcpExt: SyncookiesSent TCPTimeouts\nTcpExt: 0 14\n";
        assert_eq!(
            TcpCounters::parse(text),
            Some(TcpCounters {
                segments_sent: 6000,
                retransmitted: 150,
                timeouts: 14,
            })
        );
        assert_eq!(TcpCounters::parse("Tcp: OutSegs\nTcp: 5\n"), None);
        let later = TcpCounters {
            segments_sent: 7000,
            retransmitted: 160,
            timeouts: 20,
        };
        let before = TcpCounters::parse(text).unwrap();
        assert_eq!(later.since(before).timeouts, 6);
    }

    #[test]
    fn free_page_reporting_is_on_only_for_an_order_the_allocator_has() {
        assert_eq!(reporting_order("9\n"), Some(9));
        assert_eq!(reporting_order("10"), Some(10));
        // No device registered, or switched off by an order above the largest.
        assert_eq!(reporting_order("4294967295\n"), None);
        assert_eq!(reporting_order("11\n"), None);
        assert_eq!(reporting_order("on"), None);
    }
}
