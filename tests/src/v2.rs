//! Small helpers for raw Registry V2 requests in tests: a client that shows responses exactly as
//! sent (no redirects followed), error-code extraction, upload sessions and monolithic pushes.

use anyhow::{Context, Result, ensure};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Response, StatusCode, Url};
use shoal_core::Digest;

/// An HTTP client that does not follow redirects, so tests see the registry's own answers.
pub fn http() -> reqwest::Client {
    shoal_service::client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("building the test HTTP client")
}

/// Status and first Registry V2 error code of a response (consumes it).
pub async fn status_and_code(response: Response) -> (StatusCode, Option<String>) {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let code = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned));
    (status, code)
}

/// Asserts that `response` is the Registry V2 error `code` with `status`.
pub async fn expect_error(response: Response, status: u16, code: &str) -> Result<()> {
    let url = response.url().clone();
    let (actual_status, actual_code) = status_and_code(response).await;
    ensure!(
        actual_status.as_u16() == status && actual_code.as_deref() == Some(code),
        "{url}: expected {status} {code}, got {actual_status} {actual_code:?}"
    );
    Ok(())
}

/// A registry reached through the test client.
#[derive(Debug, Clone)]
pub struct Registry {
    pub http: reqwest::Client,
    pub base: Url,
}

impl Registry {
    pub fn new(base: &str) -> Result<Registry> {
        Ok(Registry {
            http: http(),
            base: Url::parse(base).with_context(|| format!("registry URL {base:?}"))?,
        })
    }

    /// `base` + `path` (path without the leading slash, e.g. `v2/repo/tags/list`).
    pub fn url(&self, path: &str) -> Url {
        self.base
            .join(path)
            .expect("test paths are valid URL paths")
    }

    /// The absolute form of a response's `Location`.
    pub fn location(&self, response: &Response) -> Result<Url> {
        let value = response
            .headers()
            .get(LOCATION)
            .with_context(|| format!("{}: no Location header", response.url()))?
            .to_str()
            .context("Location is not text")?;
        response
            .url()
            .join(value)
            .with_context(|| format!("bad Location {value:?}"))
    }

    /// `POST /v2/<repo>/blobs/uploads/`, expecting 202; returns the session URL.
    pub async fn start_upload(&self, repo: &str) -> Result<Url> {
        let response = self
            .http
            .post(self.url(&format!("v2/{repo}/blobs/uploads/")))
            .header(CONTENT_LENGTH, 0)
            .send()
            .await?;
        ensure!(
            response.status() == StatusCode::ACCEPTED,
            "starting an upload: {}",
            response.status()
        );
        self.location(&response)
    }

    /// Pushes `bytes` as one blob (POST, then PUT `?digest=` with the body); returns its digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        let mut url = self.start_upload(repo).await?;
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let response = self
            .http
            .put(url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await?;
        ensure!(
            response.status() == StatusCode::CREATED,
            "committing blob {digest}: {}",
            response.status()
        );
        Ok(digest)
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with `media_type`, expecting 201.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Response> {
        let response = self
            .http
            .put(self.url(&format!("v2/{repo}/manifests/{reference}")))
            .header(CONTENT_TYPE, media_type)
            .body(bytes.to_vec())
            .send()
            .await?;
        ensure!(
            response.status() == StatusCode::CREATED,
            "PUT manifest {repo}:{reference}: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        Ok(response)
    }
}

/// A header's value as text ("" when absent or not text).
pub fn header<'a>(response: &'a Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}
