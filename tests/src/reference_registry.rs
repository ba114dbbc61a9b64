//! The CNCF distribution registry (`docker-registry serve`) as a reference: the same tests run
//! against it tell a Shoal bug apart from a test or client bug.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::ports::free_loopback_addr;
use crate::process::{Process, ProcessSpec, wait_until_answers, wait_until_ready};
use crate::tools::require;

const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

/// A running `docker-registry` with filesystem storage in a temp dir.
pub struct ReferenceRegistry {
    process: Process,
    addr: SocketAddr,
    // Declared last so it is removed after the process is gone.
    dir: TempDir,
}

/// How a [`ReferenceRegistry`] authenticates its clients.
#[derive(Debug, Clone, Default)]
pub enum RegistryAuth {
    /// Anyone may push and pull.
    #[default]
    Anonymous,
    /// HTTP basic against an htpasswd file with these lines (`user:<bcrypt hash>`).
    Htpasswd(String),
    /// Bearer tokens from `realm`, JWTs signed by the key of `root_cert_pem` (a self-signed
    /// certificate the registry trusts) for `service`, issued by `issuer`.
    Token {
        realm: String,
        service: String,
        issuer: String,
        root_cert_pem: String,
    },
}

impl ReferenceRegistry {
    pub async fn start() -> Result<ReferenceRegistry> {
        Self::start_with(RegistryAuth::Anonymous).await
    }

    /// A registry that authenticates clients as `auth` says.
    pub async fn start_with(auth: RegistryAuth) -> Result<ReferenceRegistry> {
        Self::start_configured(auth, "").await
    }

    /// A registry whose config also holds `extra`: top-level YAML sections such as
    /// `notifications:`.
    pub async fn start_configured(auth: RegistryAuth, extra: &str) -> Result<ReferenceRegistry> {
        let program = require("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("shoal-reference-registry-")
            .tempdir()
            .context("creating the registry temp dir")?;
        let addr = free_loopback_addr()?;
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("storage");
        let quoted = |path: &Path| serde_json::Value::String(path.display().to_string());
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let auth_section = match &auth {
            RegistryAuth::Anonymous => String::new(),
            RegistryAuth::Htpasswd(lines) => format!(
                "auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
                quoted(&write("htpasswd", lines)?)
            ),
            RegistryAuth::Token {
                realm,
                service,
                issuer,
                root_cert_pem,
            } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    \
                 issuer: {issuer}\n    rootcertbundle: {}\n",
                quoted(&write("token-root.pem", root_cert_pem)?)
            ),
        };
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n\
                 {auth_section}{extra}",
                quoted(&storage)
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let process = Process::spawn(ProcessSpec {
            name: "docker-registry".to_owned(),
            program,
            args: vec!["serve".to_owned(), config.display().to_string()],
            env: Vec::new(),
            log: dir.path().join("registry.log"),
        })?;
        let mut registry = ReferenceRegistry { process, addr, dir };
        let url = format!("{}/v2/", registry.url());
        match auth {
            RegistryAuth::Anonymous => {
                wait_until_ready(&mut registry.process, &url, STARTUP_DEADLINE).await?;
            }
            // `/v2/` answers 401 until a client authenticates: that answer means ready.
            _ => {
                wait_until_answers(
                    &mut registry.process,
                    &url,
                    reqwest::StatusCode::UNAUTHORIZED,
                    STARTUP_DEADLINE,
                )
                .await?
            }
        }
        Ok(registry)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the registry stores its data.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The requests served so far, from the registry's access log (written at every log level):
    /// method, path with query, status.
    pub fn requests(&self) -> Result<Vec<(String, String, u16)>> {
        let path = self.dir.path().join("registry.log");
        let log = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        // `… "GET /v2/x/blobs/sha256:… HTTP/1.1" 200 157 "" "agent"`
        Ok(log
            .lines()
            .filter_map(|line| {
                let (_, request) = line.split_once(" \"")?;
                let (request, rest) = request.split_once("\" ")?;
                let mut words = request.split(' ');
                let (method, path) = (words.next()?, words.next()?);
                let status = rest.split(' ').next()?.parse().ok()?;
                Some((method.to_owned(), path.to_owned(), status))
            })
            .collect())
    }
}
