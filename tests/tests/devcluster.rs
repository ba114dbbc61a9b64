//! `shoal devcluster --demo-once`: the README's first command, end to end on the fixed ports,
//! with the default two agents pulling the demo image, in plain HTTP and with `--tls` (mutual
//! TLS between every component); and a devcluster stopped by SIGTERM while its components
//! start leaves no child behind.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shoal_tests::binaries;
use shoal_tests::cluster::sum_metric;
use shoal_tests::process::POLL_INTERVAL;
use shoal_tests::procfs::{self, ProcessId};

/// Both tests use the devcluster's fixed ports, so they take turns (nextest also runs this binary's
/// tests in one group; this covers plain `cargo test`).
static FIXED_PORTS: Mutex<()> = Mutex::new(());

/// A debug build on 2 cores generating, pushing and pulling ~32 MiB stays far below this.
const DEADLINE: Duration = Duration::from_secs(300);

/// Runs `shoal devcluster --demo-once` with `args` on `data` and checks it succeeded: its
/// stdout and stderr.
fn demo_once(data: &Path, args: &[&str]) -> (String, String) {
    // Whatever fails below, no component outlives this run.
    let _orphans = Orphans {
        known: Vec::new(),
        data,
    };
    let mut child = Command::new(binaries::path("shoal"))
        .args(["devcluster", "--demo-once", "--data"])
        .arg(data)
        .args(args)
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
    (stdout, stderr)
}

/// Every component of the default devcluster stopped cleanly and freed its fixed ports.
fn assert_stopped_everything(stderr: &str) {
    for name in [
        "agent-1",
        "agent-0",
        "tracker",
        "proxy",
        "build-index",
        "origin-0",
    ] {
        assert!(
            stderr.contains(&format!("stopped {name}")),
            "{name} not stopped cleanly:\n{stderr}"
        );
    }
    for port in [
        15000, 15003, 15004, 15100, 15101, 16000, 16001, 16010, 16011,
    ] {
        std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} still taken after devcluster exit: {e}"));
    }
}

#[test]
fn devcluster_demo_pushes_pulls_verifies_and_stops_everything() {
    let _turn = FIXED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let data = tempfile::tempdir().expect("tempdir");
    let (stdout, stderr) = demo_once(data.path(), &[]);

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
    assert!(!stdout.contains("https://"), "{stdout}");
    assert_stopped_everything(&stderr);
    // The pushed tag persisted in the filesystem backend under the data directory.
    assert!(
        data.path()
            .join("backend/repositories/shoal/demo/_tags/latest")
            .is_file()
    );
}

#[test]
fn devcluster_tls_demo_runs_every_link_over_mutual_tls() {
    let _turn = FIXED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let data = tempfile::tempdir().expect("tempdir");
    let (stdout, stderr) = demo_once(data.path(), &["--tls"]);

    let data = data.path().canonicalize().expect("data dir");
    let push_hint = format!(
        "push:  skopeo copy --dest-cert-dir {} oci:DIR:TAG docker://127.0.0.1:15000/REPO:TAG",
        data.join("tls/ca").display()
    );
    for line in [
        "origin-0       https://127.0.0.1:15100",
        "build-index    https://127.0.0.1:15004",
        "proxy          https://127.0.0.1:15000",
        "tracker        https://127.0.0.1:15003",
        // The node's registry listener stays plain HTTP.
        "agent-0        http://127.0.0.1:16000",
        "agent-1        http://127.0.0.1:16010",
        &push_hint,
        "demo: pushing shoal/demo:latest to the proxy at https://127.0.0.1:15000",
        "demo: OK via proxy: shoal/demo:latest = sha256:",
        "demo: OK via agent-0: shoal/demo:latest = sha256:",
        "demo: OK via agent-1: shoal/demo:latest = sha256:",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // The agents' pulls went through the tracker, the origin's seeder and the build-index, all
    // of which ran with the CA and their own role certificate.
    for name in [
        "origin-0",
        "build-index",
        "proxy",
        "tracker",
        "agent-0",
        "agent-1",
    ] {
        let dir = data.join("tls").join(name);
        let config = std::fs::read_to_string(data.join(format!("config/{name}.yaml")))
            .expect("component config");
        assert!(
            config.contains(&format!("  ca: \"{}\"", dir.join("ca.crt").display())),
            "{name}:\n{config}"
        );
        for file in ["tls.crt", "tls.key", "ca.crt"] {
            assert!(dir.join(file).is_file(), "{name} has no {file}");
        }
    }
    assert_stopped_everything(&stderr);
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

/// SIGKILLs, on drop, the processes a devcluster under test started that are still alive (its
/// children, found by PID or by the test's data dir on their command line), so a failing test
/// does not leave servers holding the fixed ports.
struct Orphans<'a> {
    known: Vec<ProcessId>,
    data: &'a Path,
}

impl Orphans<'_> {
    fn alive(&self) -> Vec<ProcessId> {
        let mut alive: Vec<ProcessId> = self
            .known
            .iter()
            .copied()
            .filter(|p| procfs::is_alive(*p))
            .collect();
        for process in procfs::processes_mentioning(self.data) {
            if !alive.contains(&process) {
                alive.push(process);
            }
        }
        alive
    }
}

impl Drop for Orphans<'_> {
    fn drop(&mut self) {
        for process in self.alive() {
            let pid = i32::try_from(process.pid).expect("PID in range");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

#[test]
fn sigterm_while_components_start_leaves_no_child_process() {
    let _turn = FIXED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let data = tempfile::tempdir().expect("tempdir");
    let mut devcluster = Command::new(binaries::path("shoal"))
        .args(["devcluster", "--data"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting shoal devcluster");
    let started = Instant::now();
    let mut orphans = Orphans {
        known: Vec::new(),
        data: data.path(),
    };

    // Half a second in, with at least one component spawned: the others are still starting.
    let deadline = started + Duration::from_secs(60);
    loop {
        orphans.known = procfs::children_of(devcluster.id());
        if !orphans.known.is_empty() && started.elapsed() >= Duration::from_millis(500) {
            break;
        }
        if let Some(status) = devcluster.try_wait().expect("polling shoal devcluster") {
            panic!("shoal devcluster exited with {status} before starting a component");
        }
        assert!(
            Instant::now() < deadline,
            "shoal devcluster started no component within 60 s"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
    let pid = i32::try_from(devcluster.id()).expect("PID in range");
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("sending SIGTERM to shoal devcluster");
    eprintln!(
        "SIGTERM after {:?} with {} component(s) spawned",
        started.elapsed(),
        orphans.known.len()
    );

    // Stopping waits for each component in turn (each drains for at most 10 s).
    let stop_deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = devcluster.try_wait().expect("polling shoal devcluster") {
            break status;
        }
        assert!(
            Instant::now() < stop_deadline,
            "shoal devcluster still running 120 s after SIGTERM"
        );
        std::thread::sleep(POLL_INTERVAL);
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    let _ = devcluster
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout);
    let _ = devcluster
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);

    let gone_deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive = orphans.alive();
        if alive.is_empty() {
            break;
        }
        assert!(
            Instant::now() < gone_deadline,
            "children of shoal devcluster still alive after it exited with {status}: {alive:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
    assert!(
        status.success(),
        "shoal devcluster did not stop cleanly on SIGTERM: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

/// `shoal devcluster --demo` ends with a table per agent of where the image's pieces came from;
/// while the cluster still runs, each row matches that agent's own byte and piece counters, and
/// the swarm view it names answers.
#[test]
fn the_demos_closing_table_matches_the_agents_metrics() {
    let _turn = FIXED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let data = tempfile::tempdir().expect("tempdir");
    let stderr_path = data.path().join("devcluster.stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut devcluster = Command::new(binaries::path("shoal"))
        .args(["devcluster", "--demo", "--data"])
        .arg(data.path().join("cluster"))
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("starting shoal devcluster");
    let _orphans = Orphans {
        known: Vec::new(),
        data: data.path(),
    };
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = devcluster.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while !seen
        .last()
        .is_some_and(|l: &String| l.starts_with("demo: the swarm view: "))
    {
        match lines.recv_timeout(POLL_INTERVAL) {
            Ok(line) => seen.push(line),
            Err(_) => {
                if let Some(status) = devcluster.try_wait().expect("polling") {
                    panic!(
                        "shoal devcluster exited with {status}:\n{}",
                        seen.join("\n")
                    );
                }
                assert!(Instant::now() < deadline, "no table:\n{}", seen.join("\n"));
            }
        }
    }
    assert_eq!(
        seen.last().map(String::as_str),
        Some("demo: the swarm view: http://127.0.0.1:15003/ui")
    );
    let rows: Vec<Vec<&str>> = seen
        .iter()
        .filter(|l| l.starts_with("demo: agent-"))
        .map(|l| l.split_whitespace().skip(1).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{}", seen.join("\n"));
    eprintln!("{}", seen.join("\n"));

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let get = |url: String| {
        runtime.block_on(async {
            let http = shoal_service::client::builder().build().expect("client");
            let response = http.get(&url).send().await.expect(&url);
            (response.status(), response.text().await.expect(&url))
        })
    };
    let (status, page) = get("http://127.0.0.1:15003/ui".into());
    assert!(
        status.is_success() && page.contains("Shoal swarms"),
        "{status}"
    );
    let mut from_peers = 0;
    for (i, row) in rows.iter().enumerate() {
        let number = |column: usize| -> f64 { row[column].parse().expect(row[column]) };
        let (_, metrics) = get(format!("http://127.0.0.1:{}/metrics", 16000 + 10 * i));
        let metric = |name, labels: &[(&str, &str)]| sum_metric(&metrics, name, labels);
        assert_eq!(row[0], format!("agent-{i}"));
        assert_eq!(
            number(1) + number(2),
            metric("shoal_p2p_pieces_received_total", &[]),
            "{row:?}"
        );
        assert_eq!(
            number(3),
            metric("shoal_p2p_bytes_received_total", &[("from", "agent")]),
            "{row:?}"
        );
        assert_eq!(
            number(4),
            metric("shoal_p2p_bytes_received_total", &[("from", "origin")]),
            "{row:?}"
        );
        from_peers += row[1].parse::<u64>().expect("pieces");
    }
    // The second agent pulls after the first: it finds pieces on its peer.
    assert!(from_peers > 0, "{}", seen.join("\n"));

    let pid = i32::try_from(devcluster.id()).expect("PID in range");
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM");
    let stop_deadline = Instant::now() + Duration::from_secs(120);
    while devcluster.try_wait().expect("polling").is_none() {
        assert!(
            Instant::now() < stop_deadline,
            "still running after SIGTERM"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
    reader.join().expect("stdout reader");
    assert_stopped_everything(&std::fs::read_to_string(&stderr_path).expect("stderr"));
}
