//! `shoal devcluster --demo-once`: the README's first command, end to end on the fixed ports,
//! with the default two agents pulling the demo image.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_tests::binaries;

/// Both tests use the devcluster's fixed ports, so they take turns (nextest also runs this binary's
/// tests in one group; this covers plain `cargo test`).
static FIXED_PORTS: Mutex<()> = Mutex::new(());

/// A debug build on 2 cores generating, pushing and pulling ~32 MiB stays far below this.
const DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn devcluster_demo_pushes_pulls_verifies_and_stops_everything() {
    let _turn = FIXED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(binaries::path("shoal"))
        .args(["devcluster", "--demo-once", "--data"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting shoal devcluster");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling shoal devcluster") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shoal devcluster --demo-once still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    assert!(
        status.success(),
        "exit {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    for line in [
        "origin-0       http://127.0.0.1:15100",
        "build-index    http://127.0.0.1:15004",
        "proxy          http://127.0.0.1:15000",
        "agent-0        http://127.0.0.1:16000",
        "agent-1        http://127.0.0.1:16010",
        "demo: OK via proxy: shoal/demo:latest = sha256:",
        "demo: OK via agent-0: shoal/demo:latest = sha256:",
        "demo: OK via agent-1: shoal/demo:latest = sha256:",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // Progress is printed per blob even without a terminal: config + 2 layers, pushed once and
    // pulled through the proxy and each agent.
    assert_eq!(stdout.matches(" bytes done").count(), 12, "{stdout}");
    assert_eq!(stdout.matches("pull agent-1 ").count(), 3, "{stdout}");
    for name in ["agent-1", "agent-0", "proxy", "build-index", "origin-0"] {
        assert!(
            stderr.contains(&format!("stopped {name}")),
            "{name} not stopped cleanly:\n{stderr}"
        );
    }
    // Every child is gone: the fixed ports are free again.
    for port in [15000, 15004, 15100, 16000, 16001, 16010, 16011] {
        std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} still taken after devcluster exit: {e}"));
    }
    // The pushed tag persisted in the filesystem backend under the data directory.
    assert!(
        data.path()
            .join("backend/repositories/shoal/demo/_tags/latest")
            .is_file()
    );
}

#[test]
fn devcluster_refuses_a_taken_port_with_a_clear_message() {
    let _turn = FIXED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let data = tempfile::tempdir().expect("tempdir");
    // Holding the build-index port makes the second component fail to start; the first must be stopped.
    let Ok(_holder) = std::net::TcpListener::bind(("127.0.0.1", 15004)) else {
        panic!("port 15004 is in use before the test started");
    };
    let output = Command::new(binaries::path("shoal"))
        .args(["devcluster", "--demo-once", "--data"])
        .arg(data.path())
        .output()
        .expect("running shoal devcluster");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("build-index needs 127.0.0.1:15004, which is in use"),
        "{stderr}"
    );
    assert!(stderr.contains("stopped origin-0"), "{stderr}");
    std::net::TcpListener::bind(("127.0.0.1", 15100)).expect("origin port freed");
}
