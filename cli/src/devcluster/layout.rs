//! The devcluster's fixed addresses and the config file each component gets.
//!
//! Ports are fixed (DESIGN.md, "The local cluster") so scripts and docs can rely on them.
//! Under `--tls` every component's config gains a `tls:` section (its certificate under
//! `<data>/tls/<component>/`, with the cluster CA: mutual TLS) and names the others' HTTP
//! listeners `https://host:port`; gRPC addresses (tracker, peers) stay `host:port`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use shoal_tls::{Role, TlsConfig};

pub const PROXY: SocketAddr = addr(15000);
pub const BUILD_INDEX: SocketAddr = addr(15004);
/// Origin `i` listens on `ORIGIN_BASE + 10·i` and seeds on the next port (its gRPC peer service).
pub const ORIGIN_BASE: u16 = 15100;
/// The tracker the agents announce to.
pub const TRACKER: SocketAddr = addr(15003);
/// Agent `i` serves its registry on `AGENT_BASE + 10·i` and its gRPC peer service on the next port.
pub const AGENT_BASE: u16 = 16000;

const fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port)
}

pub fn origin(i: u16) -> SocketAddr {
    addr(ORIGIN_BASE + 10 * i)
}

/// Origin `i`'s gRPC peer (seeding) address.
pub fn origin_peer(i: u16) -> SocketAddr {
    addr(ORIGIN_BASE + 10 * i + 1)
}

/// Agent `i`'s Registry V2 address.
pub fn agent(i: u16) -> SocketAddr {
    addr(AGENT_BASE + 10 * i)
}

/// Agent `i`'s gRPC peer address.
pub fn agent_peer(i: u16) -> SocketAddr {
    addr(AGENT_BASE + 10 * i + 1)
}

/// One component to start: its binary, config file contents and the address whose `/health` says it is up.
#[derive(Debug, Clone)]
pub struct Component {
    pub name: String,
    pub binary: &'static str,
    /// The role its certificate names under `--tls`.
    pub role: Role,
    pub addr: SocketAddr,
    /// The base URL of the listener on `addr` (`https://` where it serves TLS).
    pub url: String,
    pub config: String,
}

/// Everything the cluster keeps under its data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub data: PathBuf,
    /// How many agents run (agent `i` on [`agent`]`(i)`).
    pub agents: u16,
    /// How many origins form the ring (origin `i` on [`origin`]`(i)`).
    pub origins: u16,
    /// Mutual TLS between every component, and HTTPS on every listener but the agents' registries.
    pub tls: bool,
}

impl Layout {
    pub fn new(data: &Path, agents: u16) -> Self {
        Self {
            data: data.to_path_buf(),
            agents,
            origins: 1,
            tls: false,
        }
    }

    pub fn config_dir(&self) -> PathBuf {
        self.data.join("config")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.data.join("logs")
    }

    /// The shared backend: the filesystem stand-in for the bucket or registry a real cluster writes back to.
    pub fn backend_dir(&self) -> PathBuf {
        self.data.join("backend")
    }

    /// Under `--tls`: the CA and every component's certificate, one directory each.
    pub fn tls_dir(&self) -> PathBuf {
        self.data.join("tls")
    }

    /// A directory holding only the CA certificate (`ca.crt`), for skopeo's `--dest-cert-dir`.
    pub fn ca_dir(&self) -> PathBuf {
        self.tls_dir().join("ca")
    }

    /// The CA certificate clients trust under `--tls`.
    pub fn ca_file(&self) -> PathBuf {
        self.ca_dir().join("ca.crt")
    }

    /// Where the component called `name` finds its `tls.crt`, `tls.key` and `ca.crt`.
    pub fn component_tls_dir(&self, name: &str) -> PathBuf {
        self.tls_dir().join(name)
    }

    /// The base URL of a listener that serves TLS under `--tls`.
    pub fn url(&self, addr: SocketAddr) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    /// How a config names another component's HTTP listener: plain configs keep the bare
    /// `host:port` (plain HTTP); under `--tls` it must say `https://`.
    fn internal(&self, addr: SocketAddr) -> String {
        if self.tls {
            self.url(addr)
        } else {
            addr.to_string()
        }
    }

    /// The `tls:` section of `name`'s config under `--tls`, or nothing.
    fn tls_section(&self, name: &str) -> String {
        if !self.tls {
            return String::new();
        }
        let tls = TlsConfig::in_dir(&self.component_tls_dir(name));
        let mut section = format!(
            "tls:\n  cert: {}\n  key: {}\n",
            yaml_path(&tls.cert),
            yaml_path(&tls.key)
        );
        if let Some(ca) = &tls.ca {
            section += &format!("  ca: {}\n", yaml_path(ca));
        }
        section
    }

    /// The components in start order: dependencies first so each finds the others ready.
    pub fn components(&self) -> Vec<Component> {
        let backend = yaml_path(&self.backend_dir());
        let ring = (0..self.origins)
            .map(|i| format!("\"{}\"", self.internal(origin(i))))
            .collect::<Vec<_>>()
            .join(", ");
        let tracker_origins: String = (0..self.origins)
            .map(|i| {
                format!(
                    "  - {{http: \"{}\", peer: \"{}\"}}\n",
                    self.internal(origin(i)),
                    origin_peer(i)
                )
            })
            .collect();
        let build_index = self.internal(BUILD_INDEX);
        let mut components: Vec<Component> = (0..self.origins)
            .map(|i| self.origin_component(i, &ring, &backend))
            .collect();
        components.extend([
            Component {
                name: "build-index".into(),
                binary: "shoal-build-index",
                role: Role::BuildIndex,
                addr: BUILD_INDEX,
                url: self.url(BUILD_INDEX),
                config: format!(
                    "listen: {BUILD_INDEX}\norigins: [{ring}]\nbackend:\n  filesystem:\n    root: {backend}\n\
                     pending_dir: {}\n{}",
                    yaml_path(&self.data.join("build-index-pending")),
                    self.tls_section("build-index")
                ),
            },
            Component {
                name: "proxy".into(),
                binary: "shoal-proxy",
                role: Role::Proxy,
                addr: PROXY,
                url: self.url(PROXY),
                config: format!(
                    "listen: {PROXY}\norigins: [{ring}]\nbuild_index: \"{build_index}\"\n\
                     preheat:\n  state_dir: {}\n{}",
                    yaml_path(&self.data.join("proxy-preheat")),
                    self.tls_section("proxy")
                ),
            },
            Component {
                name: "tracker".into(),
                binary: "shoal-tracker",
                role: Role::Tracker,
                addr: TRACKER,
                url: self.url(TRACKER),
                config: format!(
                    "listen: {TRACKER}\norigins:\n{tracker_origins}{}",
                    self.tls_section("tracker")
                ),
            },
        ]);
        components.extend((0..self.agents).map(|i| self.agent_component(i, &build_index)));
        components
    }

    /// Origin `i`: its own store, the shared backend, and the whole ring to replicate over.
    fn origin_component(&self, i: u16, ring: &str, backend: &str) -> Component {
        let (listen, peer) = (origin(i), origin_peer(i));
        let name = format!("origin-{i}");
        Component {
            binary: "shoal-origin",
            role: Role::Origin,
            addr: listen,
            url: self.url(listen),
            config: format!(
                "listen: {listen}\npeer_listen: {peer}\ndata_dir: {}\nbackend:\n  filesystem:\n    root: {backend}\n\
                 cluster:\n  origins: [{ring}]\n  advertise: \"{}\"\n{}",
                yaml_path(&self.data.join(&name)),
                self.internal(listen),
                self.tls_section(&name)
            ),
            name,
        }
    }

    /// Agent `i`: its own cache directory, the shared tracker and build-index. Its registry
    /// listener stays plain HTTP (its callers are the node's runtimes); `tls:` covers its peer
    /// listener and its calls out.
    fn agent_component(&self, i: u16, build_index: &str) -> Component {
        let (listen, peer) = (agent(i), agent_peer(i));
        let name = format!("agent-{i}");
        Component {
            binary: "shoal-agent",
            role: Role::Agent,
            addr: listen,
            url: format!("http://{listen}"),
            config: format!(
                "listen: {listen}\npeer_listen: {peer}\ndata_dir: {}\ntracker: \"{TRACKER}\"\n\
                 build_index: \"{build_index}\"\n{}",
                yaml_path(&self.data.join(&name)),
                self.tls_section(&name)
            ),
            name,
        }
    }
}

/// A path as a double-quoted YAML scalar, so spaces and colons survive.
fn yaml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_follow_the_design() {
        assert_eq!(PROXY.port(), 15000);
        assert_eq!(BUILD_INDEX.port(), 15004);
        assert_eq!(origin(0).port(), 15100);
        assert_eq!(origin(2).port(), 15120);
        assert_eq!(
            (origin_peer(0).port(), origin_peer(2).port()),
            (15101, 15121)
        );
        assert_eq!(TRACKER.port(), 15003);
        assert_eq!((agent(0).port(), agent_peer(0).port()), (16000, 16001));
        assert_eq!((agent(3).port(), agent_peer(3).port()), (16030, 16031));
    }

    #[test]
    fn every_agent_gets_its_own_ports_and_cache() {
        let components = Layout::new(Path::new("/d"), 2).components();
        let agents: Vec<_> = components
            .iter()
            .filter(|c| c.binary == "shoal-agent")
            .collect();
        assert_eq!(agents.len(), 2);
        assert_eq!(agents[1].name, "agent-1");
        assert!(agents[1].config.contains("listen: 127.0.0.1:16010\n"));
        assert!(agents[1].config.contains("peer_listen: 127.0.0.1:16011\n"));
        assert!(agents[1].config.contains("data_dir: \"/d/agent-1\""));
        assert!(agents[0].config.contains("tracker: \"127.0.0.1:15003\""));
    }

    #[test]
    fn every_component_knows_the_whole_origin_ring() {
        let layout = Layout {
            origins: 3,
            ..Layout::new(Path::new("/tmp/dc"), 0)
        };
        let components = layout.components();
        let ring = "[\"127.0.0.1:15100\", \"127.0.0.1:15110\", \"127.0.0.1:15120\"]";
        for (i, origin) in components[..3].iter().enumerate() {
            assert_eq!(origin.name, format!("origin-{i}"));
            assert!(
                origin.config.contains(&format!("  origins: {ring}\n")),
                "{}",
                origin.config
            );
            assert!(
                origin
                    .config
                    .contains(&format!("advertise: \"127.0.0.1:151{i}0\""))
            );
        }
        for name in ["build-index", "proxy"] {
            let component = components.iter().find(|c| c.name == name).unwrap();
            assert!(
                component.config.contains(&format!("origins: {ring}\n")),
                "{name}"
            );
        }
        let tracker = components.iter().find(|c| c.name == "tracker").unwrap();
        assert!(
            tracker
                .config
                .contains("{http: \"127.0.0.1:15120\", peer: \"127.0.0.1:15121\"}")
        );
    }

    #[test]
    fn the_tracker_hands_out_the_origin_on_its_peer_port() {
        let components = Layout::new(Path::new("/d"), 0).components();
        let origin = &components[0];
        assert!(origin.config.contains("peer_listen: 127.0.0.1:15101\n"));
        let tracker = components
            .iter()
            .find(|c| c.binary == "shoal-tracker")
            .expect("a tracker");
        assert_eq!(tracker.addr, TRACKER);
        assert!(
            tracker
                .config
                .contains("- {http: \"127.0.0.1:15100\", peer: \"127.0.0.1:15101\"}")
        );
    }

    #[test]
    fn tls_configs_name_https_addresses_and_each_components_certificate() {
        let layout = Layout {
            origins: 2,
            tls: true,
            ..Layout::new(Path::new("/d"), 1)
        };
        let components = layout.components();
        let ring = "[\"https://127.0.0.1:15100\", \"https://127.0.0.1:15110\"]";
        let config = |name: &str| {
            let component = components.iter().find(|c| c.name == name).expect(name);
            component.config.as_str()
        };
        for component in &components {
            let dir = format!("/d/tls/{}", component.name);
            let section = format!(
                "tls:\n  cert: \"{dir}/tls.crt\"\n  key: \"{dir}/tls.key\"\n  ca: \"{dir}/ca.crt\"\n"
            );
            assert!(component.config.contains(&section), "{}", component.config);
        }
        assert!(config("origin-1").contains(&format!("  origins: {ring}\n")));
        assert!(config("origin-1").contains("  advertise: \"https://127.0.0.1:15110\"\n"));
        assert!(config("build-index").contains(&format!("origins: {ring}\n")));
        assert!(config("proxy").contains(&format!("origins: {ring}\n")));
        assert!(config("proxy").contains("build_index: \"https://127.0.0.1:15004\"\n"));
        // gRPC addresses stay host:port: TLS there follows from `tls.ca`.
        assert!(
            config("tracker")
                .contains("- {http: \"https://127.0.0.1:15110\", peer: \"127.0.0.1:15111\"}\n")
        );
        assert!(config("agent-0").contains("tracker: \"127.0.0.1:15003\"\n"));
        assert!(config("agent-0").contains("build_index: \"https://127.0.0.1:15004\"\n"));

        let urls: Vec<(&str, &str)> = components
            .iter()
            .map(|c| (c.name.as_str(), c.url.as_str()))
            .collect();
        assert_eq!(
            urls,
            [
                ("origin-0", "https://127.0.0.1:15100"),
                ("origin-1", "https://127.0.0.1:15110"),
                ("build-index", "https://127.0.0.1:15004"),
                ("proxy", "https://127.0.0.1:15000"),
                ("tracker", "https://127.0.0.1:15003"),
                // The node's registry listener stays plain HTTP.
                ("agent-0", "http://127.0.0.1:16000"),
            ]
        );
        let roles: Vec<Role> = components.iter().map(|c| c.role).collect();
        assert_eq!(
            roles,
            [
                Role::Origin,
                Role::Origin,
                Role::BuildIndex,
                Role::Proxy,
                Role::Tracker,
                Role::Agent
            ]
        );
    }

    #[test]
    fn without_tls_configs_stay_plain_http() {
        for component in Layout::new(Path::new("/d"), 1).components() {
            assert!(!component.config.contains("tls:"), "{}", component.config);
            assert!(!component.config.contains("https"), "{}", component.config);
            assert!(component.url.starts_with("http://"), "{}", component.url);
        }
    }

    #[test]
    fn configs_share_one_backend() {
        let layout = Layout::new(Path::new("/tmp/with space"), 0);
        let components = layout.components();
        let backend = "\"/tmp/with space/backend\"";
        assert!(components[0].config.contains(backend));
        assert!(components[1].config.contains(backend));
        assert!(
            components[2]
                .config
                .contains("build_index: \"127.0.0.1:15004\"")
        );
    }
}
