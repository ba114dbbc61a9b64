//! `shoal devcluster`: every component as a child process on loopback with embedded defaults
//! (plain HTTP; with `--tls`, mutual TLS between them, see `certs`).
//!
//! SIGTERM and SIGINT are caught from the first line of [`run`], before any child starts, so
//! whenever one arrives (starting, demo, running) every child started so far is stopped and
//! waited for before this process exits: the default action would kill it and orphan them.

mod certs;
mod children;
mod demo;
pub(crate) mod layout;

use std::path::PathBuf;

use anyhow::Context;

use children::Children;
use layout::Layout;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for configs, logs, stores and the filesystem backend; reused across runs.
    #[arg(long, default_value = "shoal-data/devcluster")]
    data: PathBuf,
    /// How many agents to start (agent i serves its registry on 127.0.0.1:16000+10·i).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=100))]
    agents: u16,
    /// How many origins form the ring (origin i serves on 127.0.0.1:15100+10·i); each blob is
    /// replicated to up to 3 of them and a push is acknowledged once 2 hold it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=9))]
    origins: u16,
    /// Directory holding the component binaries (default: the directory of this `shoal` binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Generate a small image, push it through the proxy and pull it back through the proxy and
    /// every agent, with progress.
    #[arg(long)]
    demo: bool,
    /// Run the demo, stop the cluster and exit (0 when the demo succeeded). For scripts and CI.
    #[arg(long)]
    demo_once: bool,
    /// Mutual TLS between every component: a new CA and a certificate per component under
    /// DATA/tls/ at each start; every listener but the agents' registries serves HTTPS.
    #[arg(long)]
    tls: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let stop = shoal_service::shutdown::on_signals();
    let bin_dir = match args.bin_dir {
        Some(dir) => dir,
        None => std::env::current_exe()
            .context("locating the shoal binary")?
            .parent()
            .context("the shoal binary has no parent directory")?
            .to_path_buf(),
    };
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    let data = args
        .data
        .canonicalize()
        .with_context(|| format!("resolving {}", args.data.display()))?;
    let layout = Layout {
        origins: args.origins,
        tls: args.tls,
        ..Layout::new(&data, args.agents)
    };

    println!("starting the Shoal devcluster in {}", data.display());
    // Every child lives in `cluster` from the moment it is spawned, so cancelling the start
    // below (on a signal) leaves nothing behind that `stop` does not reach.
    let mut cluster = Children::default();
    let started = tokio::select! {
        started = cluster.start(&layout, &bin_dir) => started,
        () = stop.cancelled() => {
            println!("stopping while starting");
            cluster.stop().await;
            return Ok(());
        }
    };
    if let Err(e) = started {
        cluster.stop().await;
        return Err(e);
    }
    print_table(&cluster, &layout);

    let outcome = if args.demo || args.demo_once {
        tokio::select! {
            outcome = demo::run(&layout) => outcome,
            () = stop.cancelled() => {
                println!("stopping during the demo");
                cluster.stop().await;
                return Ok(());
            }
        }
    } else {
        Ok(())
    };
    if let Err(e) = &outcome {
        eprintln!("demo failed: {e:#}");
    }
    if args.demo_once || outcome.is_err() {
        cluster.stop().await;
        return outcome;
    }

    println!("cluster running; Ctrl-C or SIGTERM stops it");
    let mut watch = tokio::time::interval(std::time::Duration::from_secs(1));
    let exited = loop {
        tokio::select! {
            () = stop.cancelled() => break None,
            _ = watch.tick() => if let Some(gone) = cluster.exited() { break Some(gone) },
        }
    };
    println!("stopping");
    cluster.stop().await;
    match exited {
        Some((name, status)) => anyhow::bail!("{name} exited unexpectedly ({status})"),
        None => Ok(()),
    }
}

fn print_table(cluster: &Children, layout: &Layout) {
    println!("{:<14} {:<23} log", "component", "address");
    for running in cluster.running() {
        println!(
            "{:<14} {:<23} {}",
            running.component.name,
            running.component.url,
            running.log.display()
        );
    }
    let trust = if layout.tls {
        println!("CA:    {} (new at every start)", layout.ca_file().display());
        format!("--dest-cert-dir {}", layout.ca_dir().display())
    } else {
        "--dest-tls-verify=false".to_owned()
    };
    println!(
        "push:  skopeo copy {trust} oci:DIR:TAG docker://{}/REPO:TAG",
        layout::PROXY
    );
    println!("pull:  docker pull {}/REPO:TAG", layout::PROXY);
}
