//! The devcluster's fixed addresses and the config file each component gets.
//!
//! Ports are fixed (DESIGN.md, "The local cluster") so scripts and docs can rely on them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    pub addr: SocketAddr,
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
}

impl Layout {
    pub fn new(data: &Path, agents: u16) -> Self {
        Self {
            data: data.to_path_buf(),
            agents,
            origins: 1,
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

    /// The components in start order: dependencies first so each finds the others ready.
    pub fn components(&self) -> Vec<Component> {
        let backend = yaml_path(&self.backend_dir());
        let ring = (0..self.origins)
            .map(|i| format!("\"{}\"", origin(i)))
            .collect::<Vec<_>>()
            .join(", ");
        let tracker_origins: String = (0..self.origins)
            .map(|i| {
                format!(
                    "  - {{http: \"{}\", peer: \"{}\"}}\n",
                    origin(i),
                    origin_peer(i)
                )
            })
            .collect();
        let mut components: Vec<Component> = (0..self.origins)
            .map(|i| self.origin_component(i, &ring, &backend))
            .collect();
        components.extend([
            Component {
                name: "build-index".into(),
                binary: "shoal-build-index",
                addr: BUILD_INDEX,
                config: format!(
                    "listen: {BUILD_INDEX}\norigins: [{ring}]\nbackend:\n  filesystem:\n    root: {backend}\n\
                     pending_dir: {}\n",
                    yaml_path(&self.data.join("build-index-pending"))
                ),
            },
            Component {
                name: "proxy".into(),
                binary: "shoal-proxy",
                addr: PROXY,
                config: format!(
                    "listen: {PROXY}\norigins: [{ring}]\nbuild_index: \"{BUILD_INDEX}\"\n\
                     preheat:\n  state_dir: {}\n",
                    yaml_path(&self.data.join("proxy-preheat"))
                ),
            },
            Component {
                name: "tracker".into(),
                binary: "shoal-tracker",
                addr: TRACKER,
                config: format!("listen: {TRACKER}\norigins:\n{tracker_origins}"),
            },
        ]);
        components.extend((0..self.agents).map(|i| self.agent_component(i)));
        components
    }

    /// Origin `i`: its own store, the shared backend, and the whole ring to replicate over.
    fn origin_component(&self, i: u16, ring: &str, backend: &str) -> Component {
        let (listen, peer) = (origin(i), origin_peer(i));
        Component {
            name: format!("origin-{i}"),
            binary: "shoal-origin",
            addr: listen,
            config: format!(
                "listen: {listen}\npeer_listen: {peer}\ndata_dir: {}\nbackend:\n  filesystem:\n    root: {backend}\n\
                 cluster:\n  origins: [{ring}]\n  advertise: \"{listen}\"\n",
                yaml_path(&self.data.join(format!("origin-{i}")))
            ),
        }
    }

    /// Agent `i`: its own cache directory, the shared tracker and build-index.
    fn agent_component(&self, i: u16) -> Component {
        let (listen, peer) = (agent(i), agent_peer(i));
        Component {
            name: format!("agent-{i}"),
            binary: "shoal-agent",
            addr: listen,
            config: format!(
                "listen: {listen}\npeer_listen: {peer}\ndata_dir: {}\ntracker: \"{TRACKER}\"\n\
                 build_index: \"{BUILD_INDEX}\"\n",
                yaml_path(&self.data.join(format!("agent-{i}")))
            ),
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
