//! A real DNS server for membership tests: dnsmasq on a loopback port answering from one hosts
//! file, reloaded with SIGHUP and killed on drop.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub struct Dnsmasq {
    child: Child,
    port: u16,
    hosts: PathBuf,
}

impl Dnsmasq {
    pub fn start(dir: &Path, hosts: &str) -> Dnsmasq {
        let path = dir.join("hosts");
        std::fs::write(&path, hosts).expect("write hosts");
        // dnsmasq binds TCP and UDP on its port; another test may take the TCP side of a port
        // that was free over UDP, and dnsmasq then exits, so a lost race is retried on a new port.
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("dnsmasq")
                .args([
                    "--no-daemon",
                    "--keep-in-foreground",
                    &format!("--port={port}"),
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--conf-file=/dev/null",
                    "--pid-file=",
                    // Keep root's rights so the hosts file in a private temp dir stays readable.
                    "--user=root",
                    &format!("--addn-hosts={}", path.display()),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("dnsmasq is installed (scripts/install-deps)");
            // Listening once its UDP port can no longer be bound.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if UdpSocket::bind(("127.0.0.1", port)).is_err() {
                    return Dnsmasq {
                        child,
                        port,
                        hosts: path,
                    };
                }
                if let Some(status) = child.try_wait().expect("poll dnsmasq") {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = pipe.read_to_string(&mut stderr);
                    }
                    failures.push(format!("port {port}: {status}: {}", stderr.trim()));
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    failures.push(format!("port {port}: not listening after 10 s"));
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("dnsmasq did not start listening: {failures:?}");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Rewrites the records and has dnsmasq reload them.
    pub fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).expect("write hosts");
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        kill(pid, Signal::SIGHUP).expect("SIGHUP dnsmasq");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free over both TCP and UDP at the time of asking.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
        let port = udp.local_addr().expect("local address").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
