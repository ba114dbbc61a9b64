//! Certificates for TLS listeners under test: a CA and a server certificate for 127.0.0.1 and
//! localhost signed by it, and readiness polling over HTTPS with a client trusting that CA.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::process::{POLL_INTERVAL, Process};

/// A generated CA and server certificate as PEM files: `tls.crt`, `tls.key`, and the CA alone
/// in `ca/ca.crt` (the layout of a containers-image cert dir, which trusts every `*.crt`).
pub struct TestCerts {
    dir: PathBuf,
    ca_pem: String,
}

impl TestCerts {
    /// Generates a fresh CA and server certificate into `dir`.
    pub fn generate(dir: &Path) -> Result<TestCerts> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca_params.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(["127.0.0.1".to_owned(), "localhost".to_owned()])?
            .signed_by(&key, &issuer)?;
        std::fs::create_dir_all(dir.join("ca"))?;
        std::fs::write(dir.join("ca/ca.crt"), &ca_pem)?;
        std::fs::write(dir.join("tls.crt"), cert.pem())?;
        std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
        Ok(TestCerts {
            dir: dir.to_owned(),
            ca_pem,
        })
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    /// A directory holding only the CA, for skopeo's `--dest-cert-dir` / `--src-cert-dir`.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    /// A client trusting only the CA.
    pub fn client(&self) -> Result<reqwest::ClientBuilder> {
        Ok(shoal_service::client::builder()
            .timeout(Duration::from_secs(5))
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?]))
    }

    /// Polls `url` (https) until it answers 200, failing early (with the log tail) when `process`
    /// exits and late when `deadline` passes.
    pub async fn wait_until_ready(
        &self,
        process: &mut Process,
        url: &str,
        deadline: Duration,
    ) -> Result<()> {
        // HTTP/1.1: on shutdown the server closes an idle HTTP/1.1 connection by itself, while
        // HTTP/2 waits for the client to answer its GOAWAY ping, which a test blocked in
        // `Process::terminate` on a single-threaded runtime never does.
        let http = self.client()?.http1_only().build()?;
        let start = Instant::now();
        loop {
            if let Some(status) = process.try_exit_status()? {
                bail!(
                    "{} exited with {status} while starting\n{}",
                    process.spec().name,
                    process.log_tail()
                );
            }
            if let Ok(response) = http.get(url).send().await
                && response.status() == 200
            {
                return Ok(());
            }
            if start.elapsed() > deadline {
                bail!(
                    "{} did not answer 200 on {url} within {deadline:?}\n{}",
                    process.spec().name,
                    process.log_tail()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}
