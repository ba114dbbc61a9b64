//! `shoal-bench-certs DIR`: a fresh CA and a certificate for each role, on 127.0.0.1 and
//! localhost, in `DIR/<role>/` (`tls.crt`, `tls.key`, `ca.crt`), issued as `shoal devcluster
//! --tls` issues them (`shoal_tls::generate`). For `TLS=1 bench/agent-pull.sh`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use shoal_tls::Role;
use shoal_tls::generate::Authority;

#[derive(Debug, Parser)]
struct Args {
    /// Directory the roles' directories are written into.
    dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let authority = Authority::new().context("generating a CA")?;
    for role in Role::ALL {
        let dir = args.dir.join(role.as_str());
        authority
            .write(&dir, role)
            .with_context(|| format!("writing the {role} certificate into {}", dir.display()))?;
    }
    Ok(())
}
