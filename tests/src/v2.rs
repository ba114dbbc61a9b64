//! Small helpers for raw Registry V2 requests in tests: a client that shows responses exactly as
//! sent (no redirects followed), error-code extraction, upload sessions and monolithic pushes,
//! OCI 1.1 artifacts and their referrers lists.

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

impl Registry {
    /// Pushes an OCI 1.1 artifact of `artifact_type` (one blob of `payload`, annotated with its
    /// kind) whose `subject` is the image manifest `subject` (`subject_size` bytes), by digest;
    /// checks the `OCI-Subject` answer and returns the artifact's digest.
    pub async fn push_artifact(
        &self,
        repo: &str,
        artifact_type: &str,
        payload: &[u8],
        subject: Digest,
        subject_size: u64,
    ) -> Result<Digest> {
        const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
        let empty = self.push_blob(repo, b"{}").await?;
        let blob = self.push_blob(repo, payload).await?;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.to_string(), "size": 2},
            "layers": [{"mediaType": artifact_type, "digest": blob.to_string(), "size": payload.len()}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject.to_string(), "size": subject_size},
            "annotations": {"org.example.kind": artifact_type},
        }))?;
        let digest = Digest::of(&manifest);
        let response = self
            .put_manifest(repo, &digest.to_string(), OCI_MANIFEST, &manifest)
            .await?;
        ensure!(
            header(&response, "oci-subject") == subject.to_string(),
            "OCI-Subject {:?}",
            header(&response, "oci-subject")
        );
        Ok(digest)
    }

    /// The referrers of `subject` in `repo` (only those of `artifact_type` when given), their
    /// digests sorted, after checking the image index, the filter header and that each entry
    /// carries the annotation [`Registry::push_artifact`] gives it.
    pub async fn referrers(
        &self,
        repo: &str,
        subject: Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Digest>> {
        let mut url = self.url(&format!("v2/{repo}/referrers/{subject}"));
        if let Some(artifact_type) = artifact_type {
            url.query_pairs_mut()
                .append_pair("artifactType", artifact_type);
        }
        let response = self.http.get(url).send().await?;
        ensure!(
            response.status() == StatusCode::OK,
            "referrers: {}",
            response.status()
        );
        ensure!(header(&response, "content-type") == "application/vnd.oci.image.index.v1+json");
        let filtered = header(&response, "oci-filters-applied").to_owned();
        let expected = if artifact_type.is_some() {
            "artifactType"
        } else {
            ""
        };
        ensure!(filtered == expected, "OCI-Filters-Applied {filtered:?}");
        let index: serde_json::Value = response.json().await?;
        let mut digests = Vec::new();
        for entry in index["manifests"]
            .as_array()
            .context("no manifests array")?
        {
            let kind = entry["artifactType"].as_str().context("no artifactType")?;
            ensure!(entry["annotations"]["org.example.kind"] == kind, "{entry}");
            ensure!(artifact_type.is_none_or(|wanted| wanted == kind), "{entry}");
            digests.push(Digest::parse(
                entry["digest"].as_str().context("no digest")?,
            )?);
        }
        digests.sort();
        Ok(digests)
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

/// A small image of its own pushed by [`Registry::push_small_image`].
#[derive(Debug, Clone)]
pub struct SmallImage {
    pub manifest: Digest,
    pub layer: Digest,
    pub layer_size: u64,
}

impl Registry {
    /// Pushes an OCI image whose config and one layer are unique to `seed` as `repo:tag`.
    pub async fn push_small_image(&self, repo: &str, tag: &str, seed: &str) -> Result<SmallImage> {
        const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
        let config_bytes = format!("{{\"seed\":\"{seed}\"}}").into_bytes();
        let config = self.push_blob(repo, &config_bytes).await?;
        let layer_bytes = format!("layer of {seed}").repeat(64).into_bytes();
        let layer = self.push_blob(repo, &layer_bytes).await?;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_bytes.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": layer_bytes.len()}],
        }))?;
        self.put_manifest(repo, tag, OCI_MANIFEST, &manifest)
            .await?;
        Ok(SmallImage {
            manifest: Digest::of(&manifest),
            layer,
            layer_size: layer_bytes.len() as u64,
        })
    }
}
