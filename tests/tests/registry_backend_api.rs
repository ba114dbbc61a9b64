//! The registry backend against a real CNCF registry (`docker-registry`): blobs (sha256 and
//! sha512), ranges, tags and listings round trip through the `Backend` API, anonymously, with
//! HTTP basic auth against an htpasswd file, and with bearer tokens from a token server the
//! registry trusts
//! (`shoal_tests::token_server`). Wrong credentials fail clearly and store nothing.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use axum::http::{StatusCode, header};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use shoal_backends::{
    Backend, BackendError, BackendRouter, ByteStream, RegistryBackend, RegistryConfig, blob_key,
    tag_key,
};
use shoal_core::{Algorithm, Digest, Name, Tag};
use shoal_tests::ReferenceRegistry;
use shoal_tests::reference_registry::RegistryAuth;
use shoal_tests::token_server::{TokenServer, TokenUser};

const USER: &str = "shoal";
const PASSWORD: &str = "correct horse";
const SERVICE: &str = "shoal-test-registry";
const ISSUER: &str = "shoal-test-issuer";

fn name(s: &str) -> Name {
    Name::parse(s).expect("name")
}

/// Deterministic bytes that differ at every offset a range test might pick.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 8) as u8)
        .collect()
}

/// `bytes` as a stream of uneven chunks, as a store file would send them.
fn body(bytes: &[u8]) -> ByteStream {
    let chunks: Vec<std::io::Result<Bytes>> = bytes
        .chunks(100_003)
        .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

async fn read(stream: Option<ByteStream>) -> Result<Vec<u8>> {
    let stream = stream.context("object absent")?;
    let chunks: Vec<Bytes> = stream.try_collect().await?;
    Ok(chunks.concat())
}

fn backend(url: &str, credentials: Option<(&str, &str)>) -> Result<BackendRouter> {
    let config = RegistryConfig {
        url: url.to_owned(),
        username: credentials.map(|(user, _)| user.to_owned()),
        password: credentials.map(|(_, password)| password.to_owned()),
        manifest_wait: Duration::from_secs(2),
        ..RegistryConfig::default()
    };
    let backend: Arc<dyn Backend> = Arc::new(RegistryBackend::new(&config)?);
    Ok(BackendRouter::single(backend))
}

/// An OCI image manifest over `config` and `layer` (both already stored).
fn oci_manifest(config: &[u8], layer: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": Digest::of(config).to_string(),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": Digest::of(layer).to_string(),
            "size": layer.len(),
        }],
    }))
    .expect("manifest json")
}

/// Every blob, range, tag, listing and delete operation through `router`; returns the manifest
/// it tagged `v1`.
async fn round_trip(router: &BackendRouter, repo: &str) -> Result<Vec<u8>> {
    let name = name(repo);
    let scoped = router.route(Some(&name))?;

    // A blob of several chunks, streamed in; then whole and ranged reads.
    let layer = pattern(3 * 1024 * 1024 + 17, 1);
    let layer_key = blob_key(&Digest::of(&layer));
    ensure!(scoped.stat(&layer_key).await?.is_none());
    scoped
        .put(&layer_key, body(&layer), Some(layer.len() as u64))
        .await?;
    ensure!(scoped.stat(&layer_key).await? == Some(layer.len() as u64));
    ensure!(read(scoped.get(&layer_key, None).await?).await? == layer);
    ensure!(
        read(scoped.get(&layer_key, Some(1000..2_000_123)).await?).await? == layer[1000..2_000_123]
    );
    let len = layer.len() as u64;
    ensure!(
        read(scoped.get(&layer_key, Some(len - 5..len)).await?).await? == layer[layer.len() - 5..]
    );
    ensure!(
        read(scoped.get(&layer_key, Some(len..len + 10)).await?)
            .await?
            .is_empty()
    );
    ensure!(
        matches!(
            scoped.get(&layer_key, Some(len + 1..len + 10)).await,
            Err(BackendError::RangeNotSatisfiable { .. })
        ),
        "a range past the end must be refused"
    );
    // Without a repository the registry cannot be asked: absent.
    let unscoped = router.locate(None, &layer_key).await?;
    ensure!(unscoped.is_none(), "a blob was found without a repository");

    // A manifest written back as a blob, then a tag pointing at it.
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_key = blob_key(&Digest::of(config));
    scoped.put(&config_key, body(config), None).await?;
    let manifest = oci_manifest(config, &layer);
    let manifest_digest = Digest::of(&manifest);
    scoped
        .put(
            &blob_key(&manifest_digest),
            body(&manifest),
            Some(manifest.len() as u64),
        )
        .await?;
    let tag = Tag::parse("v1")?;
    let key = tag_key(&name, &tag);
    let text = manifest_digest.to_string();
    scoped
        .put(&key, body(text.as_bytes()), Some(text.len() as u64))
        .await?;
    ensure!(scoped.stat(&key).await? == Some(text.len() as u64));
    ensure!(read(scoped.get(&key, None).await?).await? == text.as_bytes());
    // Tags need no scope: their keys name the repository.
    ensure!(read(router.route(None)?.get(&key, None).await?).await? == text.as_bytes());
    let prefix = format!("repositories/{repo}/_tags/");
    ensure!(scoped.list(&prefix).await? == std::slice::from_ref(&key));
    let all = router
        .backends()
        .next()
        .context("one backend")?
        .list("repositories/")
        .await?;
    ensure!(
        all.contains(&key),
        "the catalog listing lacks {key}: {all:?}"
    );

    // A tag whose manifest never arrives fails after the wait, naming what is missing.
    let ghost = Digest::of(b"no such manifest").to_string();
    let ghost_key = tag_key(&name, &Tag::parse("ghost")?);
    let err = scoped
        .put(&ghost_key, body(ghost.as_bytes()), None)
        .await
        .expect_err("a tag of a missing manifest");
    ensure!(err.to_string().contains("still missing"), "{err}");

    // A body shorter than promised stores nothing.
    let short = pattern(1000, 9);
    let short_key = blob_key(&Digest::of(&short));
    let err = scoped
        .put(&short_key, body(&short[..500]), Some(1000))
        .await
        .expect_err("short body");
    ensure!(
        matches!(err, BackendError::LengthMismatch { actual: 500, .. }),
        "{err}"
    );
    ensure!(scoped.stat(&short_key).await?.is_none());

    // Deletes: blobs go (deletes are enabled), tags cannot on distribution 2.x.
    ensure!(scoped.delete(&layer_key).await?);
    ensure!(scoped.stat(&layer_key).await?.is_none());
    ensure!(!scoped.delete(&layer_key).await?);
    ensure!(matches!(
        scoped.delete(&key).await,
        Err(BackendError::Unsupported { .. })
    ));
    Ok(manifest)
}

#[tokio::test]
async fn anonymous_registry_round_trip() -> Result<()> {
    let registry = ReferenceRegistry::start().await?;
    let router = backend(&registry.url(), None)?;
    let manifest = round_trip(&router, "team/anon").await?;
    // The registry itself serves the tag, with the manifest's own bytes and digest.
    let http = shoal_tests::v2::Registry::new(&registry.url())?;
    let response = http
        .http
        .get(http.url("v2/team/anon/manifests/v1"))
        .header(header::ACCEPT, "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await?;
    ensure!(response.status() == StatusCode::OK, "{}", response.status());
    let served_digest = shoal_tests::v2::header(&response, "docker-content-digest").to_owned();
    ensure!(served_digest == Digest::of(&manifest).to_string());
    ensure!(response.bytes().await? == manifest);

    // A manifest pushed to the registry as a manifest (never as a blob) reads back as a blob
    // through the manifests endpoint, also by range.
    let config = br#"{"architecture":"arm64","os":"linux"}"#;
    let layer = pattern(4096, 3);
    http.push_blob("team/direct", config).await?;
    http.push_blob("team/direct", &layer).await?;
    let manifest = oci_manifest(config, &layer);
    http.put_manifest(
        "team/direct",
        "v9",
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    )
    .await?;
    let scoped = router.route(Some(&name("team/direct")))?;
    let key = blob_key(&Digest::of(&manifest));
    ensure!(scoped.stat(&key).await? == Some(manifest.len() as u64));
    ensure!(read(scoped.get(&key, None).await?).await? == manifest);
    ensure!(read(scoped.get(&key, Some(10..20)).await?).await? == manifest[10..20]);
    Ok(())
}

fn htpasswd_line(user: &str, password: &str) -> Result<String> {
    // The minimum cost: the test checks the protocol, not the hash's strength.
    let hash = bcrypt::hash_with_result(password, 4)?.format_for_version(bcrypt::Version::TwoY);
    Ok(format!("{user}:{hash}\n"))
}

#[tokio::test]
async fn basic_auth_round_trip_and_wrong_password_stores_nothing() -> Result<()> {
    let registry =
        ReferenceRegistry::start_with(RegistryAuth::Htpasswd(htpasswd_line(USER, PASSWORD)?))
            .await?;
    let router = backend(&registry.url(), Some((USER, PASSWORD)))?;
    round_trip(&router, "team/basic").await?;

    let blob = pattern(10_000, 5);
    let key = blob_key(&Digest::of(&blob));
    let repo = name("team/basic");
    for (label, wrong) in [
        (
            "wrong password",
            backend(&registry.url(), Some((USER, "battery staple")))?,
        ),
        ("no credentials", backend(&registry.url(), None)?),
    ] {
        let err = wrong
            .route(Some(&repo))?
            .put(&key, body(&blob), Some(blob.len() as u64))
            .await
            .expect_err(label);
        let message = err.to_string();
        ensure!(
            message.contains("refused access") && message.contains("401"),
            "{label}: unclear error: {message}"
        );
    }
    ensure!(
        router.route(Some(&repo))?.stat(&key).await?.is_none(),
        "a refused put stored the blob"
    );
    Ok(())
}

#[tokio::test]
async fn bearer_token_round_trip_caches_tokens_per_scope() -> Result<()> {
    let tokens = TokenServer::start(
        ISSUER,
        SERVICE,
        vec![TokenUser::new(USER, PASSWORD, &["*"])],
    )
    .await?;
    let registry = ReferenceRegistry::start_with(RegistryAuth::Token {
        realm: tokens.realm(),
        service: SERVICE.to_owned(),
        issuer: ISSUER.to_owned(),
        root_cert_pem: tokens.cert_pem().to_owned(),
    })
    .await?;
    let router = backend(&registry.url(), Some((USER, PASSWORD)))?;
    round_trip(&router, "team/bearer").await?;
    ensure!(tokens.requests_for("registry:catalog:*") == 1);

    // Repeated reads of one repository reuse its cached pull token.
    let scoped = router.route(Some(&name("team/cached")))?;
    let absent = blob_key(&Digest::of(b"absent"));
    for _ in 0..5 {
        ensure!(scoped.stat(&absent).await?.is_none());
    }
    ensure!(
        tokens.requests_for("repository:team/cached:pull") == 1,
        "repeated reads asked for new tokens"
    );

    // A wrong password is refused by the token server; nothing is stored.
    let blob = pattern(5_000, 7);
    let key = blob_key(&Digest::of(&blob));
    let wrong = backend(&registry.url(), Some((USER, "battery staple")))?;
    let err = wrong
        .route(Some(&name("team/bearer")))?
        .put(&key, body(&blob), None)
        .await
        .expect_err("wrong password");
    ensure!(
        err.to_string()
            .contains("refused the configured credentials"),
        "{err}"
    );
    ensure!(
        router
            .route(Some(&name("team/bearer")))?
            .stat(&key)
            .await?
            .is_none()
    );
    Ok(())
}

#[tokio::test]
async fn a_sha512_blob_round_trips_through_the_registry_backend() -> Result<()> {
    let registry = ReferenceRegistry::start().await?;
    let router = backend(&registry.url(), None)?;
    let scoped = router.route(Some(&name("team/long")))?;
    let layer = pattern(600_000, 5);
    let key = blob_key(&Algorithm::Sha512.digest(&layer));
    ensure!(key.starts_with("blobs/sha512/"), "{key}");
    ensure!(scoped.stat(&key).await?.is_none());
    scoped
        .put(&key, body(&layer), Some(layer.len() as u64))
        .await?;
    ensure!(scoped.stat(&key).await? == Some(layer.len() as u64));
    ensure!(read(scoped.get(&key, None).await?).await? == layer);
    ensure!(read(scoped.get(&key, Some(1000..2000)).await?).await? == layer[1000..2000]);
    Ok(())
}
