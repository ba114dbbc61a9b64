//! A one-machine Shoal cluster of real binaries on loopback ports: one origin (or a ring of
//! several), build-index and proxy, plus (for peer-to-peer tests) a tracker and N agents, each
//! with its own config file and log file in a per-cluster temp dir. Tests kill, terminate and
//! restart components through it and read their `/metrics`; dropping it kills every process it
//! started.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shoal_tls::generate::Authority;
use shoal_tls::{Role, TlsConfig};
use tempfile::TempDir;

use crate::binaries;
use crate::configs;
use crate::ports::free_loopback_addr_list;
use crate::process::{POLL_INTERVAL, Process, ProcessSpec, Stopped, wait_until_answers_via};

/// A debug build starts in well under a second; the margin covers a loaded 2-core CI machine.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// Time a component gets to finish in-flight work and exit after SIGTERM: its servers' drain,
/// then up to `shoal_service::shutdown::DRAIN_DEADLINE` (10 s) for its background tasks.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(25);
/// How many sets of ports [`Cluster::start`] tries before giving up.
const PORT_ATTEMPTS: u32 = 3;
/// Writing back a few small blobs to a local filesystem backend takes milliseconds.
const WRITEBACK_DEADLINE: Duration = Duration::from_secs(30);

/// A process a [`Cluster`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// Origin 0, the only one of a single-origin cluster.
    Origin,
    /// Origin `i` (from 1) of a ring: use [`Component::origin`], which maps 0 to `Origin`.
    OriginN(usize),
    /// Build-index 0, the only one unless [`ClusterOptions::build_indexes`] asks for more.
    BuildIndex,
    /// Build-index replica `i` (from 1): use [`Component::build_index`].
    BuildIndexN(usize),
    Proxy,
    /// Tracker 0, the only one unless [`ClusterOptions::trackers`] asks for more.
    Tracker,
    /// Tracker `i` (from 1): use [`Component::tracker`], which maps 0 to `Tracker`.
    TrackerN(usize),
    /// Agent `i`, counted from 0.
    Agent(usize),
}

impl Component {
    /// The components every cluster runs, in start order.
    pub const FOUNDATION: [Component; 3] =
        [Component::Origin, Component::BuildIndex, Component::Proxy];

    /// Origin `i` (counted from 0) of the cluster.
    pub fn origin(i: usize) -> Component {
        match i {
            0 => Component::Origin,
            i => Component::OriginN(i),
        }
    }

    /// Build-index replica `i` (counted from 0) of the cluster.
    pub fn build_index(i: usize) -> Component {
        match i {
            0 => Component::BuildIndex,
            i => Component::BuildIndexN(i),
        }
    }

    /// Tracker `i` (counted from 0) of the cluster.
    pub fn tracker(i: usize) -> Component {
        match i {
            0 => Component::Tracker,
            i => Component::TrackerN(i),
        }
    }

    /// The role its certificate names under mutual TLS.
    pub fn role(self) -> Role {
        match self {
            Component::Origin | Component::OriginN(_) => Role::Origin,
            Component::BuildIndex | Component::BuildIndexN(_) => Role::BuildIndex,
            Component::Proxy => Role::Proxy,
            Component::Tracker | Component::TrackerN(_) => Role::Tracker,
            Component::Agent(_) => Role::Agent,
        }
    }

    pub fn binary(self) -> &'static str {
        match self {
            Component::Origin | Component::OriginN(_) => "shoal-origin",
            Component::BuildIndex | Component::BuildIndexN(_) => "shoal-build-index",
            Component::Proxy => "shoal-proxy",
            Component::Tracker | Component::TrackerN(_) => "shoal-tracker",
            Component::Agent(_) => "shoal-agent",
        }
    }

    /// A name unique within the cluster (agents get their index), for files and messages.
    pub fn name(self) -> String {
        match self {
            Component::Agent(i) => format!("shoal-agent-{i}"),
            Component::OriginN(i) => format!("shoal-origin-{i}"),
            Component::TrackerN(i) => format!("shoal-tracker-{i}"),
            Component::BuildIndexN(i) => format!("shoal-build-index-{i}"),
            other => other.binary().to_owned(),
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Knobs for [`Cluster::start`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `RUST_LOG` for every component.
    pub rust_log: String,
    /// How many agents to start. With any, the cluster also runs a tracker and the origin seeds
    /// its blobs over its gRPC peer port.
    pub agents: usize,
    /// How many origins to start (at least 1). With more than one they form a ring (R = the
    /// ring size up to 3, W = 2) sharing the backend, and every component lists them all.
    pub origins: usize,
    /// The `backend:` of every origin and the build-index, e.g. `{"s3": {…}}`; `Null` is a
    /// filesystem backend under the cluster dir ([`Cluster::backend_dir`]).
    pub backend: Value,
    /// The build-index's `backend:` (its tag store) when it differs from `backend`; `Null` is
    /// `backend`. A filesystem value keeps tag pushes working while the blob backend is down.
    pub build_index_backend: Value,
    /// Deep-merged over every origin's config, e.g. `{"p2p": {"egress_rate": "20MiB"}}`.
    pub origin_overrides: Value,
    /// Deep-merged over the build-index's config, e.g. `{"replication": {…}}`.
    pub build_index_overrides: Value,
    /// Deep-merged over the proxy's config, e.g. `{"auth": {…}}`.
    pub proxy_overrides: Value,
    /// How many build-index replicas to run (at least 1), sharing the tag backend; the proxy
    /// and every agent list them all.
    pub build_indexes: usize,
    /// How many trackers a peer-to-peer cluster runs (each with its own memory store); every
    /// agent lists them all.
    pub trackers: usize,
    /// Deep-merged over every tracker's config.
    pub tracker_overrides: Value,
    /// Deep-merged over every agent's config.
    pub agent_overrides: Value,
    /// Deep-merged over one agent's config (after `agent_overrides`), by agent index.
    pub agent_overrides_by_index: BTreeMap<usize, Value>,
    /// Mutual TLS everywhere: a fresh CA in the cluster dir issues each component a certificate
    /// naming its role (`<dir>/tls/<component>/`), every internal address is `https://`, and
    /// the proxy serves HTTPS ([`Cluster::proxy_url`], [`Cluster::ca_dir`]). Agents' registry
    /// listeners stay plain HTTP.
    pub tls: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            rust_log: "info".to_owned(),
            agents: 0,
            origins: 1,
            backend: Value::Null,
            build_index_backend: Value::Null,
            origin_overrides: Value::Null,
            build_index_overrides: Value::Null,
            proxy_overrides: Value::Null,
            build_indexes: 1,
            trackers: 1,
            tracker_overrides: Value::Null,
            agent_overrides: Value::Null,
            agent_overrides_by_index: BTreeMap::new(),
            tls: false,
        }
    }
}

impl ClusterOptions {
    /// A peer-to-peer cluster: tracker, build-index, proxy, one seeding origin and `agents` agents.
    pub fn with_agents(agents: usize) -> ClusterOptions {
        ClusterOptions {
            agents,
            ..ClusterOptions::default()
        }
    }
}

/// One component's fixed address, launch spec and (while it runs) process.
struct Node {
    /// The HTTP address: `/health`, `/metrics` and the component's API.
    addr: SocketAddr,
    /// The gRPC `Peer` address (seeding origin, agents).
    peer_addr: Option<SocketAddr>,
    spec: ProcessSpec,
    process: Option<Process>,
}

/// A running cluster. Every component has a fixed address and config for the cluster's
/// lifetime, so a restarted component comes back where it was, with its data.
pub struct Cluster {
    /// Keyed and started in this order: the tracker before the origin that announces to it,
    /// agents last.
    nodes: BTreeMap<Component, Node>,
    order: Vec<Component>,
    /// Health checks and `/metrics` reads (trusting the cluster CA under TLS).
    http: reqwest::Client,
    tls: bool,
    /// The cluster CA under [`ClusterOptions::tls`], for issuing replacement certificates.
    authority: Option<Authority>,
    // Declared last so it is removed after the processes using it are gone.
    dir: TempDir,
}

impl Cluster {
    /// Writes every config into a fresh temp dir and starts the components one by one, each
    /// only once the previous one answers `/health`.
    pub async fn start(options: ClusterOptions) -> Result<Cluster> {
        let mut attempt = 1;
        loop {
            match Self::start_on_fresh_ports(&options).await {
                // A port picked as free can be taken (by any outgoing connection) before the
                // component binds it; new ports fix that, anything else is a real failure.
                Err(e) if attempt < PORT_ATTEMPTS && format!("{e:#}").contains("in use") => {
                    eprintln!("cluster start attempt {attempt} hit a port clash, retrying: {e:#}");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_on_fresh_ports(options: &ClusterOptions) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-cluster-")
            .tempdir()
            .context("creating the cluster temp dir")?;
        let p2p = options.agents > 0;
        let origins = options.origins.max(1);
        let mut ports = free_loopback_addr_list(
            1 + options.build_indexes.max(1)
                + 2 * origins
                + if p2p {
                    options.trackers.max(1) + 2 * options.agents
                } else {
                    0
                },
        )?
        .into_iter();
        let mut next_port = || ports.next().context("ran out of picked ports");
        let build_indexes = (0..options.build_indexes.max(1))
            .map(|_| next_port())
            .collect::<Result<Vec<_>>>()?;
        let proxy = next_port()?;
        // Every origin serves its peer port; only p2p clusters have anyone to seed.
        let origin_addrs = (0..origins)
            .map(|_| Ok((next_port()?, next_port()?)))
            .collect::<Result<Vec<(SocketAddr, SocketAddr)>>>()?;
        let origin_https: Vec<SocketAddr> = origin_addrs.iter().map(|(http, _)| *http).collect();
        let trackers = if p2p {
            (0..options.trackers.max(1))
                .map(|_| next_port())
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let backend_root = dir.path().join("backend");
        std::fs::create_dir_all(&backend_root)
            .with_context(|| format!("creating {}", backend_root.display()))?;
        let backend = match &options.backend {
            Value::Null => configs::filesystem_backend(&backend_root),
            configured => configured.clone(),
        };
        let tag_backend = match &options.build_index_backend {
            Value::Null => backend.clone(),
            configured => configured.clone(),
        };

        // (component, HTTP address, peer address, config)
        let mut planned = Vec::new();
        for (i, &tracker) in trackers.iter().enumerate() {
            let mut config = configs::tracker(tracker, &origin_addrs);
            configs::merge(&mut config, options.tracker_overrides.clone());
            planned.push((Component::tracker(i), tracker, None, config));
        }
        for (i, &(http, peer)) in origin_addrs.iter().enumerate() {
            let data = origin_data_dir(dir.path(), i);
            std::fs::create_dir_all(&data)
                .with_context(|| format!("creating {}", data.display()))?;
            let mut config = configs::origin(http, peer, &data, &backend);
            if origins > 1 {
                configs::merge(&mut config, configs::origin_ring(&origin_https, http));
            }
            configs::merge(&mut config, options.origin_overrides.clone());
            let peer_addr = p2p.then_some(peer);
            planned.push((Component::origin(i), http, peer_addr, config));
        }
        for (i, &build_index) in build_indexes.iter().enumerate() {
            let pending = match i {
                0 => dir.path().join("build-index-pending"),
                i => dir.path().join(format!("build-index-{i}-pending")),
            };
            let mut config =
                configs::build_index(build_index, &origin_https, &tag_backend, &pending);
            configs::merge(&mut config, options.build_index_overrides.clone());
            planned.push((Component::build_index(i), build_index, None, config));
        }
        planned.extend([(Component::Proxy, proxy, None, {
            let mut config = configs::proxy(proxy, &origin_https, &build_indexes);
            // Preheat job files, kept across a restart of the proxy like any data dir.
            let state_dir = dir.path().join("proxy-preheat");
            configs::merge(
                &mut config,
                json!({"preheat": {"state_dir": state_dir.display().to_string()}}),
            );
            configs::merge(&mut config, options.proxy_overrides.clone());
            config
        })]);
        if !trackers.is_empty() {
            for i in 0..options.agents {
                let (listen, peer) = (next_port()?, next_port()?);
                let data = dir.path().join(format!("agent-{i}-data"));
                let mut config = configs::agent(listen, peer, &trackers, &build_indexes, &data);
                configs::merge(&mut config, options.agent_overrides.clone());
                if let Some(overrides) = options.agent_overrides_by_index.get(&i) {
                    configs::merge(&mut config, overrides.clone());
                }
                planned.push((Component::Agent(i), listen, Some(peer), config));
            }
        }

        let tls_root = dir.path().join("tls");
        let authority = if options.tls {
            let authority = Authority::new().context("generating the cluster CA")?;
            std::fs::create_dir_all(tls_root.join("ca"))?;
            std::fs::write(tls_root.join("ca/ca.crt"), authority.ca_pem())?;
            for (component, _, _, config) in &mut planned {
                let tls = authority.write(&tls_root.join(component.name()), component.role())?;
                let https = |addr: &SocketAddr| format!("https://{addr}");
                configs::merge(
                    config,
                    configs::tls_overrides(*component, &tls, &origin_addrs, &build_indexes, https),
                );
            }
            Some(authority)
        } else {
            None
        };
        let http =
            match &authority {
                Some(authority) => shoal_service::client::builder().tls_certs_only([
                    reqwest::Certificate::from_pem(authority.ca_pem().as_bytes())?,
                ]),
                None => shoal_service::client::builder(),
            }
            .timeout(Duration::from_secs(5))
            .build()?;

        let mut nodes = BTreeMap::new();
        let mut order = Vec::new();
        for (component, addr, peer_addr, config) in planned {
            let path = dir.path().join(format!("{}.yaml", component.name()));
            std::fs::write(&path, configs::to_yaml(&config)?)
                .with_context(|| format!("writing {}", path.display()))?;
            let spec = ProcessSpec {
                name: component.name(),
                program: binaries::path(component.binary()),
                args: vec!["--config".to_owned(), path.display().to_string()],
                env: vec![("RUST_LOG".to_owned(), options.rust_log.clone())],
                log: dir.path().join(format!("{}.log", component.name())),
            };
            order.push(component);
            nodes.insert(
                component,
                Node {
                    addr,
                    peer_addr,
                    spec,
                    process: None,
                },
            );
        }

        let mut cluster = Cluster {
            nodes,
            order,
            http,
            tls: options.tls,
            authority,
            dir,
        };
        for component in cluster.order.clone() {
            cluster.launch(component).await?;
        }
        Ok(cluster)
    }

    /// Every component of this cluster, in start order.
    pub fn components(&self) -> Vec<Component> {
        self.order.clone()
    }

    /// How many origins the cluster runs.
    pub fn origin_count(&self) -> usize {
        self.order
            .iter()
            .filter(|c| matches!(c, Component::Origin | Component::OriginN(_)))
            .count()
    }

    /// How many agents the cluster runs.
    pub fn agent_count(&self) -> usize {
        self.order
            .iter()
            .filter(|c| matches!(c, Component::Agent(_)))
            .count()
    }

    fn node(&self, component: Component) -> &Node {
        // Tests name components of the cluster they configured; anything else is a test bug.
        self.nodes
            .get(&component)
            .unwrap_or_else(|| panic!("this cluster runs no {component}"))
    }

    /// The component's HTTP address (`/health`, `/metrics` and its API).
    pub fn addr(&self, component: Component) -> SocketAddr {
        self.node(component).addr
    }

    /// The component's gRPC `Peer` address (the seeding origin and agents only).
    pub fn peer_addr(&self, component: Component) -> Option<SocketAddr> {
        self.node(component).peer_addr
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.addr(Component::Proxy)
    }

    /// The PID of `component`'s process while it runs (for `/proc/<pid>/…`).
    pub fn pid(&self, component: Component) -> Option<u32> {
        self.nodes[&component].process.as_ref()?.pid()
    }

    pub fn origin_addr(&self) -> SocketAddr {
        self.addr(Component::Origin)
    }

    /// Origin `i`'s HTTP address (its internal blob API).
    pub fn origin_addr_at(&self, i: usize) -> SocketAddr {
        self.addr(Component::origin(i))
    }

    pub fn build_index_addr(&self) -> SocketAddr {
        self.addr(Component::BuildIndex)
    }

    /// `http://<proxy>` (`https://` under [`ClusterOptions::tls`]), the registry base URL.
    pub fn proxy_url(&self) -> String {
        format!("{}://{}", self.scheme(Component::Proxy), self.proxy_addr())
    }

    /// Under [`ClusterOptions::tls`], a directory holding only the CA (`ca.crt`), for skopeo's
    /// `--dest-cert-dir` / `--src-cert-dir`.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("tls/ca")
    }

    /// The `tls:` files (`tls.crt`, `tls.key`, `ca.crt`) `component` runs with under
    /// [`ClusterOptions::tls`].
    pub fn tls_dir(&self, component: Component) -> PathBuf {
        self.dir.path().join("tls").join(component.name())
    }

    /// The `tls:` config `component` runs with under [`ClusterOptions::tls`]: its certificate
    /// as a client identity, for tests that call components as one of them.
    pub fn tls_config(&self, component: Component) -> TlsConfig {
        TlsConfig::in_dir(&self.tls_dir(component))
    }

    /// Issues `component` a new certificate of the cluster CA and swaps it into the files it
    /// runs with (each file replaced by a rename, as a Kubernetes Secret volume does); returns
    /// the new certificate (PEM). Only under [`ClusterOptions::tls`].
    pub fn rotate_certificate(&self, component: Component) -> Result<String> {
        let authority = self
            .authority
            .as_ref()
            .context("this cluster runs without TLS")?;
        let issued = authority.issue(Some(component.role()), &["127.0.0.1", "localhost"])?;
        let dir = self.tls_dir(component);
        for (name, pem) in [("tls.crt", &issued.cert_pem), ("tls.key", &issued.key_pem)] {
            let staged = dir.join(format!(".{name}.new"));
            std::fs::write(&staged, pem)?;
            std::fs::rename(&staged, dir.join(name))?;
        }
        Ok(issued.cert_pem)
    }

    /// The scheme of `component`'s HTTP listener.
    fn scheme(&self, component: Component) -> &'static str {
        if self.tls && !matches!(component, Component::Agent(_)) {
            "https"
        } else {
            "http"
        }
    }

    /// `http://<agent i>`, the agent's Registry V2 read API.
    pub fn agent_url(&self, i: usize) -> String {
        format!("http://{}", self.addr(Component::Agent(i)))
    }

    /// The cluster's temp dir (configs, logs, data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The origin's `data_dir` (origin 0's in a ring).
    pub fn origin_data_dir(&self) -> PathBuf {
        origin_data_dir(self.dir.path(), 0)
    }

    /// Origin `i`'s `data_dir`.
    pub fn origin_data_dir_at(&self, i: usize) -> PathBuf {
        origin_data_dir(self.dir.path(), i)
    }

    /// Agent `i`'s `data_dir` (its blob cache and partial downloads).
    pub fn agent_data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("agent-{i}-data"))
    }

    /// The filesystem backend root shared by the origins and the build-index (unused when
    /// [`ClusterOptions::backend`] names another backend).
    pub fn backend_dir(&self) -> PathBuf {
        self.dir.path().join("backend")
    }

    /// The config file `component` runs with.
    pub fn config_path(&self, component: Component) -> PathBuf {
        PathBuf::from(&self.node(component).spec.args[1])
    }

    /// `component`'s `/metrics` text.
    pub async fn metrics_text(&self, component: Component) -> Result<String> {
        let url = format!(
            "{}://{}/metrics",
            self.scheme(component),
            self.addr(component)
        );
        get_text(&self.http, &url).await
    }

    /// The value of metric `name` in `component`'s `/metrics` (first sample without labels or
    /// with any labels), `None` when it is not exported.
    pub async fn metric(&self, component: Component, name: &str) -> Result<Option<f64>> {
        Ok(parse_metric(&self.metrics_text(component).await?, name))
    }

    /// The sum of every sample of metric `name` whose labels include each `key="value"` of
    /// `labels` (all samples for `&[]`); 0 when none is exported yet, as for a counter that was
    /// never touched.
    pub async fn metric_sum(
        &self,
        component: Component,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<f64> {
        Ok(sum_metric(
            &self.metrics_text(component).await?,
            name,
            labels,
        ))
    }

    /// [`Cluster::metric_sum`] over every agent.
    pub async fn agents_metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let mut total = 0.0;
        for i in 0..self.agent_count() {
            total += self.metric_sum(Component::Agent(i), name, labels).await?;
        }
        Ok(total)
    }

    /// Waits until the write-back queue of every running origin is empty, i.e. every committed
    /// blob has reached the backend and its queue marker is gone, so the disk is quiet.
    pub async fn wait_for_writeback(&self) -> Result<()> {
        self.wait_for_writeback_within(WRITEBACK_DEADLINE).await
    }

    /// [`Cluster::wait_for_writeback`] with a deadline of the caller's choice (a backend that
    /// just came back is retried with backoff).
    pub async fn wait_for_writeback_within(&self, deadline: Duration) -> Result<()> {
        const METRIC: &str = "origin_writeback_queue_depth";
        let start = Instant::now();
        let origins: Vec<Component> = self
            .order
            .iter()
            .copied()
            .filter(|c| matches!(c, Component::Origin | Component::OriginN(_)))
            .filter(|c| self.node(*c).process.is_some())
            .collect();
        for origin in origins {
            loop {
                match self.metric(origin, METRIC).await? {
                    Some(0.0) => break,
                    Some(_) => {}
                    None => bail!("{origin} does not export {METRIC}"),
                }
                if start.elapsed() > deadline {
                    bail!(
                        "{origin}'s write-back queue did not drain within {deadline:?}\n{}",
                        self.log_tails()
                    );
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
        Ok(())
    }

    /// The process of `component` while it is running (started, not killed or terminated).
    fn process(&mut self, component: Component) -> Option<&mut Process> {
        self.nodes
            .get_mut(&component)
            .and_then(|node| node.process.as_mut())
    }

    /// Takes the process of `component` out of the cluster, to stop it.
    fn take_process(&mut self, component: Component) -> Option<Process> {
        self.nodes
            .get_mut(&component)
            .and_then(|node| node.process.take())
    }

    /// Whether `component` was started and has not been killed, terminated or seen exiting.
    pub fn is_running(&mut self, component: Component) -> Result<bool> {
        match self.process(component) {
            Some(process) => Ok(process.try_exit_status()?.is_none()),
            None => Ok(false),
        }
    }

    /// Stops `components` with SIGSTOP (hung: their sockets stay open and unanswered) until
    /// the returned guard is dropped.
    pub fn hang(&self, components: impl IntoIterator<Item = Component>) -> Result<Stopped> {
        let pids = components
            .into_iter()
            .map(|component| {
                self.pid(component)
                    .with_context(|| format!("{component} is not running"))
            })
            .collect::<Result<Vec<u32>>>()?;
        Stopped::stop(pids)
    }

    /// SIGKILL `component` and reap it.
    pub fn kill(&mut self, component: Component) -> Result<()> {
        match self.take_process(component) {
            Some(mut process) => process.kill(),
            None => Ok(()),
        }
    }

    /// SIGTERM `component` without waiting; [`Cluster::wait_exit`] then collects its status.
    pub fn send_sigterm(&mut self, component: Component) -> Result<()> {
        match self.process(component) {
            Some(process) => process.send_sigterm(),
            None => bail!("{component} is not running"),
        }
    }

    /// Waits up to `deadline` for `component` to exit and returns its status; kills it and fails
    /// when it does not exit in time.
    pub fn wait_exit(&mut self, component: Component, deadline: Duration) -> Result<ExitStatus> {
        match self.take_process(component) {
            Some(mut process) => process.wait_exit(deadline),
            None => bail!("{component} is not running"),
        }
    }

    /// The file `component` logs to (appended across restarts).
    pub fn log_path(&self, component: Component) -> PathBuf {
        self.node(component).spec.log.clone()
    }

    /// SIGTERM `component` and wait (bounded) for its exit status.
    pub fn terminate(&mut self, component: Component) -> Result<ExitStatus> {
        match self.take_process(component) {
            Some(mut process) => process.terminate(SHUTDOWN_DEADLINE),
            None => bail!("{component} is not running"),
        }
    }

    /// Starts `component` again (after [`Cluster::kill`] or [`Cluster::terminate`]) with the
    /// same address, config and data; kills it first if it is still running.
    pub async fn restart(&mut self, component: Component) -> Result<()> {
        self.kill(component)?;
        self.launch(component).await
    }

    /// SIGKILL every component.
    pub fn stop_all(&mut self) -> Result<()> {
        for component in self.components() {
            self.kill(component)?;
        }
        Ok(())
    }

    /// The tail of every component's log, for failure messages.
    pub fn log_tails(&self) -> String {
        self.order
            .iter()
            .map(|component| {
                let spec = &self.node(*component).spec;
                format!(
                    "----- {} log ({}) -----\n{}",
                    spec.name,
                    spec.log.display(),
                    crate::process::tail(&spec.log)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn launch(&mut self, component: Component) -> Result<()> {
        let scheme = self.scheme(component);
        let node = self
            .nodes
            .get_mut(&component)
            .with_context(|| format!("this cluster runs no {component}"))?;
        let url = format!("{scheme}://{}/health", node.addr);
        let process = node.process.insert(Process::spawn(node.spec.clone())?);
        wait_until_answers_via(&self.http, process, &url, StatusCode::OK, STARTUP_DEADLINE).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Test runners show a test's output only when it fails, and a test returning `Err` is
        // not panicking here, so the logs are always printed: they surface exactly on failure.
        eprintln!(
            "cluster in {}:\n{}",
            self.dir.path().display(),
            self.log_tails()
        );
        // Each `Process` kills and reaps its child when dropped.
        for node in self.nodes.values_mut() {
            drop(node.process.take());
        }
    }
}

/// Origin `i`'s `data_dir` under the cluster dir (origin 0 keeps the single-origin name).
fn origin_data_dir(dir: &Path, i: usize) -> PathBuf {
    match i {
        0 => dir.join("origin-data"),
        i => dir.join(format!("origin-{i}-data")),
    }
}

/// The first sample of metric `name` in Prometheus text (a namespace prefix such as `shoal_` is
/// allowed before the name).
fn parse_metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name || metric.ends_with(&format!("_{name}")))
                .then(|| value.parse().ok())
                .flatten()
        })
}

/// The body of a successful GET of `url`, as text.
pub async fn get_text(http: &reqwest::Client, url: &str) -> Result<String> {
    http.get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("GET {url}"))?
        .text()
        .await
        .with_context(|| format!("reading {url}"))
}

/// The sum of the samples of metric `name` (namespace prefix allowed, as in [`parse_metric`])
/// whose label set contains every `key="value"` of `labels`.
pub fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let named = metric == name || metric.ends_with(&format!("_{name}"));
            let series_labels: Vec<&str> = label_text.split(',').collect();
            let labelled = labels
                .iter()
                .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"").as_str()));
            (named && labelled)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_found_by_name_with_or_without_a_prefix() {
        let text = "# HELP origin_writeback_queue_depth Blobs waiting\n\
                    # TYPE origin_writeback_queue_depth gauge\n\
                    origin_writeback_queue_depth 3\n\
                    shoal_requests_total{route=\"x\"} 7\n";
        assert_eq!(
            parse_metric(text, "origin_writeback_queue_depth"),
            Some(3.0)
        );
        assert_eq!(parse_metric(text, "requests_total"), Some(7.0));
        assert_eq!(parse_metric(text, "absent_metric"), None);
    }

    #[test]
    fn labelled_samples_are_summed_by_label_filter() {
        let text = "# TYPE shoal_p2p_bytes_received counter\n\
                    shoal_p2p_bytes_received_total{from=\"agent\"} 10\n\
                    shoal_p2p_bytes_received_total{from=\"origin\"} 5\n\
                    shoal_p2p_bytes_received_other_total 100\n";
        let name = "p2p_bytes_received_total";
        assert_eq!(sum_metric(text, name, &[("from", "agent")]), 10.0);
        assert_eq!(sum_metric(text, name, &[]), 15.0);
        assert_eq!(sum_metric(text, name, &[("from", "tracker")]), 0.0);
        assert_eq!(sum_metric(text, "absent_total", &[]), 0.0);
    }
}
