//! `--tls`: the devcluster's CA and a certificate per component naming its role, written where
//! the layout's configs point, and HTTP clients that trust that CA.
//!
//! A fresh CA is issued at every start: keeping one would mean storing its private key and
//! loading it back, for little gain on a local cluster. `<data>/tls/ca/ca.crt` keeps its path,
//! so clients pointed at the directory (skopeo's `--dest-cert-dir`) need nothing new.

use anyhow::Context;
use shoal_tls::generate::Authority;

use super::layout::Layout;

/// Replaces whatever `<data>/tls` held with a new CA and a certificate for every component.
pub fn generate(layout: &Layout) -> anyhow::Result<()> {
    let root = layout.tls_dir();
    if root.exists() {
        // Certificates of an earlier CA (or of agents no longer started) must not linger.
        std::fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
    }
    let authority = Authority::new().context("generating the devcluster CA")?;
    let ca_dir = layout.ca_dir();
    std::fs::create_dir_all(&ca_dir).with_context(|| format!("creating {}", ca_dir.display()))?;
    std::fs::write(layout.ca_file(), authority.ca_pem())
        .with_context(|| format!("writing the CA into {}", ca_dir.display()))?;
    for component in layout.components() {
        let dir = layout.component_tls_dir(&component.name);
        authority.write(&dir, component.role).with_context(|| {
            format!(
                "writing {}'s certificate into {}",
                component.name,
                dir.display()
            )
        })?;
    }
    Ok(())
}

/// A client builder for the devcluster's listeners: under `--tls` it trusts the devcluster's
/// CA only, and presents no certificate (health checks and registry clients need none).
pub fn client(layout: &Layout) -> anyhow::Result<reqwest::ClientBuilder> {
    let builder = shoal_service::client::builder();
    if !layout.tls {
        return Ok(builder);
    }
    let path = layout.ca_file();
    let pem = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let ca = reqwest::Certificate::from_pem(&pem)
        .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
    Ok(builder.tls_certs_only([ca]))
}
