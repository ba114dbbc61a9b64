//! `shoal gc [--dry-run]`: asks the build-index for a garbage-collection run now and prints
//! what went (or, with `--dry-run`, what would go), with sizes, and what was kept and why.

use std::fmt::Write;

use anyhow::{Context, anyhow};
use shoal_api::BuildIndexClient;
use shoal_api::gc::GcReport;

use crate::day2::{TargetArgs, size};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Report what would be swept; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// The build-index runs the collection (`--build-index`, or `build_index` in `--targets`).
    #[command(flatten)]
    targets: TargetArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let build_index = args.targets.resolve()?.build_index.ok_or_else(|| {
        anyhow!("no build-index address: pass --build-index HOST:PORT (or set it in --targets)")
    })?;
    // A run reads every manifest and asks every origin about every unreferenced blob: no
    // overall timeout.
    let http = shoal_service::client::builder()
        .build()
        .context("building the HTTP client")?;
    let report = BuildIndexClient::new(http, &shoal_core::Addresses::one(build_index.clone()))
        .gc()
        .collect(args.dry_run)
        .await
        .with_context(|| format!("garbage collection on the build-index at {build_index}"))?;
    print!("{}", render(&report));
    Ok(())
}

/// The report as text: one line per blob, then the totals.
fn render(report: &GcReport) -> String {
    let verb = if report.dry_run {
        "would sweep"
    } else {
        "swept"
    };
    let mut out = String::new();
    for blob in &report.swept {
        let _ = writeln!(
            out,
            "{verb:<11} {}  {} ({} bytes)",
            blob.digest,
            size(blob.size),
            blob.size
        );
    }
    for blob in &report.kept {
        let _ = writeln!(out, "{:<11} {}  {}", "kept", blob.digest, blob.reason);
    }
    let _ = writeln!(
        out,
        "run {}{}: {} manifests and {} blobs marked, {} blobs found; {verb} {} blobs ({}), kept {} unreferenced",
        report.run,
        if report.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        },
        report.manifests,
        report.marked,
        report.found,
        report.swept.len(),
        size(report.bytes),
        report.kept.len(),
    );
    out
}

#[cfg(test)]
mod tests {
    use shoal_api::gc::{KeptBlob, SweptBlob};
    use shoal_core::Digest;

    use super::*;

    #[test]
    fn a_dry_run_report_says_would_and_sums_sizes() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let report = GcReport {
            run: "r1".into(),
            dry_run: true,
            manifests: 2,
            marked: 5,
            found: 7,
            swept: vec![SweptBlob {
                digest: a,
                size: 2048,
            }],
            kept: vec![KeptBlob {
                digest: b,
                reason: "touched 3s ago".into(),
            }],
            bytes: 2048,
        };
        let text = render(&report);
        assert!(
            text.contains(&format!("would sweep {a}  2.0 KiB (2048 bytes)")),
            "{text}"
        );
        assert!(
            text.contains(&format!("kept        {b}  touched 3s ago")),
            "{text}"
        );
        assert!(text.contains("dry run: nothing changed"), "{text}");
        assert!(
            text.contains("would sweep 1 blobs (2.0 KiB), kept 1"),
            "{text}"
        );
    }
}
