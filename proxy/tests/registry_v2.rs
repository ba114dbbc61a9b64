//! The proxy's Registry V2 surface over real HTTP, in process, against test doubles of the origin
//! and build-index (`fakes`). Request shapes follow the client traces in
//! /work/shared/reference/client-traces (skopeo push, docker chunked push, pulls).

mod fakes;

use std::net::SocketAddr;
use std::time::Duration;

use fakes::{FakeBuildIndex, FakeOrigin};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use shoal_core::Digest;
use shoal_proxy::{Listeners, ProxyConfig};
use shoal_service::CancellationToken;
use tokio::net::TcpListener;

struct Cluster {
    origin: FakeOrigin,
    index: FakeBuildIndex,
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    proxy: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The proxy's preheat job files.
    _jobs: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let (origin, origin_addr) = FakeOrigin::start().await;
        let (index, index_addr) = FakeBuildIndex::start().await;
        Self::start_with(origin, origin_addr, index, index_addr).await
    }

    async fn start_with(
        origin: FakeOrigin,
        origin_addr: SocketAddr,
        index: FakeBuildIndex,
        index_addr: SocketAddr,
    ) -> Cluster {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let jobs = tempfile::tempdir().unwrap();
        let mut config = ProxyConfig {
            origins: vec![origin_addr.to_string()].into(),
            build_index: shoal_core::Addresses::one(index_addr.to_string()),
            ..ProxyConfig::default()
        };
        config.preheat.state_dir = jobs.path().to_owned();
        let shutdown = CancellationToken::new();
        let listeners = Listeners { http: listener };
        let proxy = tokio::spawn(shoal_proxy::run(config, listeners, shutdown.clone()));
        let http = shoal_service::client::builder().build().unwrap();
        Cluster {
            origin,
            index,
            base,
            http,
            shutdown,
            proxy,
            _jobs: jobs,
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    async fn send(&self, method: Method, path: &str) -> Response {
        self.request(method, path).send().await.unwrap()
    }

    /// skopeo's shape: POST, one PATCH with Content-Length, PUT ?digest= with an empty body.
    async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::of(bytes);
        let started = self
            .send(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .await;
        assert_eq!(started.status(), StatusCode::ACCEPTED);
        let location = header(&started, "location");
        let patched = self
            .request(Method::PATCH, &location)
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), StatusCode::ACCEPTED);
        let committed = self
            .request(Method::PUT, &format!("{location}?digest={digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(committed.status(), StatusCode::CREATED);
        digest
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.proxy.await.unwrap().unwrap();
    }
}

fn header(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing {name} header"))
        .to_str()
        .unwrap()
        .to_owned()
}

async fn error_code(response: Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["errors"][0]["code"].as_str().unwrap().to_owned()
}

fn image_manifest(config: (&Digest, usize), layers: &[(&Digest, usize)]) -> Vec<u8> {
    let descriptor = |(digest, size): (&Digest, usize), media_type: &str| json!({ "mediaType": media_type, "digest": digest.to_string(), "size": size });
    let layers: Vec<Value> = layers
        .iter()
        .map(|layer| descriptor(*layer, "application/vnd.oci.image.layer.v1.tar"))
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor(config, "application/vnd.oci.image.config.v1+json"),
        "layers": layers,
    }))
    .unwrap()
}

#[tokio::test]
async fn skopeo_shaped_push_then_pull_round_trips() {
    let cluster = Cluster::start().await;
    let repo = "test/viaproxy";

    let base = cluster.send(Method::GET, "/v2/").await;
    assert_eq!(base.status(), StatusCode::OK);
    assert_eq!(
        header(&base, "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(base.text().await.unwrap(), "{}");

    let layer: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer_digest = Digest::of(&layer);
    let missing = cluster
        .send(Method::HEAD, &format!("/v2/{repo}/blobs/{layer_digest}"))
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(cluster.push_blob(repo, &layer).await, layer_digest);
    let config_digest = cluster.push_blob(repo, config).await;
    assert_eq!(cluster.origin.blob(&layer_digest).unwrap(), layer);

    let head = cluster
        .send(Method::HEAD, &format!("/v2/{repo}/blobs/{layer_digest}"))
        .await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "content-length"), layer.len().to_string());
    assert_eq!(
        header(&head, "docker-content-digest"),
        layer_digest.to_string()
    );

    let manifest = image_manifest(
        (&config_digest, config.len()),
        &[(&layer_digest, layer.len())],
    );
    let manifest_digest = Digest::of(&manifest);
    let pushed = cluster
        .request(Method::PUT, &format!("/v2/{repo}/manifests/v1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), StatusCode::CREATED);
    assert_eq!(
        header(&pushed, "location"),
        format!("/v2/{repo}/manifests/{manifest_digest}")
    );
    assert_eq!(
        cluster.index.tag(repo, "v1"),
        Some(manifest_digest.to_string())
    );

    // docker's pull: HEAD by tag for the digest, then GET by digest.
    let head = cluster
        .send(Method::HEAD, &format!("/v2/{repo}/manifests/v1"))
        .await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        header(&head, "docker-content-digest"),
        manifest_digest.to_string()
    );
    assert_eq!(
        header(&head, "content-type"),
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(header(&head, "content-length"), manifest.len().to_string());
    assert!(head.bytes().await.unwrap().is_empty());
    let got = cluster
        .send(
            Method::GET,
            &format!("/v2/{repo}/manifests/{manifest_digest}"),
        )
        .await;
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap(), manifest);

    let blob = cluster
        .send(Method::GET, &format!("/v2/{repo}/blobs/{layer_digest}"))
        .await;
    assert_eq!(blob.status(), StatusCode::OK);
    assert_eq!(header(&blob, "content-type"), "application/octet-stream");
    assert_eq!(blob.bytes().await.unwrap(), layer);

    let tags: Value = cluster
        .send(Method::GET, &format!("/v2/{repo}/tags/list"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags, json!({ "name": repo, "tags": ["v1"] }));
    let catalog: Value = cluster
        .send(Method::GET, "/v2/_catalog")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(catalog, json!({ "repositories": [repo] }));

    let metrics = cluster
        .send(Method::GET, "/metrics")
        .await
        .text()
        .await
        .unwrap();
    let expected_in = layer.len() + config.len();
    assert!(
        metrics.contains(&format!("shoal_proxy_blob_bytes_in_total {expected_in}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "shoal_proxy_blob_bytes_out_total {}\n",
            layer.len()
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("shoal_proxy_manifests_put_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("route=\"blob_get\""), "{metrics}");
    cluster.stop().await;
}

#[tokio::test]
async fn ranges_are_served_and_unsatisfiable_ones_name_the_length() {
    let cluster = Cluster::start().await;
    let digest = cluster.origin.insert(b"0123456789");
    let path = format!("/v2/r/blobs/{digest}");
    let partial = cluster
        .request(Method::GET, &path)
        .header("range", "bytes=2-5")
        .send()
        .await
        .unwrap();
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&partial, "content-range"), "bytes 2-5/10");
    assert_eq!(header(&partial, "accept-ranges"), "bytes");
    assert_eq!(partial.bytes().await.unwrap(), "2345");

    let past_end = cluster
        .request(Method::GET, &path)
        .header("range", "bytes=10-")
        .send()
        .await
        .unwrap();
    assert_eq!(past_end.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&past_end, "content-range"), "bytes */10");
    assert_eq!(error_code(past_end).await, "RANGE_INVALID");

    // A malformed Range is refused, as the distribution registry does.
    let malformed = cluster
        .request(Method::GET, &path)
        .header("range", "bytes=5-2")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(error_code(malformed).await, "RANGE_INVALID");
    cluster.stop().await;
}

#[tokio::test]
async fn docker_shaped_chunked_patches_and_offsets() {
    let cluster = Cluster::start().await;
    let started = cluster
        .send(Method::POST, "/v2/test/docker/blobs/uploads/")
        .await;
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&started, "range"), "0-0");
    assert_eq!(header(&started, "content-length"), "0");
    let location = header(&started, "location");
    let uuid = header(&started, "docker-upload-uuid");
    assert_eq!(location, format!("/v2/test/docker/blobs/uploads/{uuid}"));

    // Transfer-Encoding: chunked, no Content-Length, as docker sends it.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(b"hello ".to_vec()), Ok(b"world".to_vec())];
    let patched = cluster
        .request(Method::PATCH, &location)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&patched, "range"), "0-10");

    let out_of_order = cluster
        .request(Method::PATCH, &location)
        .header("content-range", "5-7")
        .header("content-length", "3")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(out_of_order.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(error_code(out_of_order).await, "RANGE_INVALID");

    let wrong_length = cluster
        .request(Method::PATCH, &location)
        .header("content-range", "11-20")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_length.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(error_code(wrong_length).await, "RANGE_INVALID");

    let in_order = cluster
        .request(Method::PATCH, &location)
        .header("content-range", "11-11")
        .body("!")
        .send()
        .await
        .unwrap();
    assert_eq!(in_order.status(), StatusCode::ACCEPTED);

    let status = cluster.send(Method::GET, &location).await;
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&status, "range"), "0-11");
    assert_eq!(header(&status, "docker-upload-uuid"), uuid);

    // The final chunk may come with the commit.
    let digest = Digest::of(b"hello world!?");
    let committed = cluster
        .request(Method::PUT, &format!("{location}?digest={digest}"))
        .body("?")
        .send()
        .await
        .unwrap();
    assert_eq!(committed.status(), StatusCode::CREATED);
    assert_eq!(
        header(&committed, "docker-content-digest"),
        digest.to_string()
    );
    assert_eq!(
        header(&committed, "location"),
        format!("/v2/test/docker/blobs/{digest}")
    );
    assert_eq!(cluster.origin.blob(&digest).unwrap(), "hello world!?");

    let gone = cluster.send(Method::GET, &location).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(gone).await, "BLOB_UPLOAD_UNKNOWN");
    cluster.stop().await;
}

#[tokio::test]
async fn bad_commits_are_digest_invalid_and_cancel_discards() {
    let cluster = Cluster::start().await;
    for query in ["", "?digest=sha256:zz", "?digest=md5:abc"] {
        let started = cluster.send(Method::POST, "/v2/r/blobs/uploads/").await;
        let location = header(&started, "location");
        let response = cluster
            .request(Method::PUT, &format!("{location}{query}"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(error_code(response).await, "DIGEST_INVALID");
        // A failed commit closed the session.
        let closed = cluster.send(Method::DELETE, &location).await;
        assert_eq!(closed.status(), StatusCode::NOT_FOUND);
        assert_eq!(error_code(closed).await, "BLOB_UPLOAD_UNKNOWN");
    }
    assert_eq!(cluster.origin.upload_count(), 0);

    let started = cluster.send(Method::POST, "/v2/r/blobs/uploads/").await;
    let location = header(&started, "location");
    let mismatch = cluster
        .request(
            Method::PUT,
            &format!("{location}?digest={}", Digest::of(b"y")),
        )
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(mismatch.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(mismatch).await, "DIGEST_INVALID");

    for foreign in ["/v2/r/blobs/uploads/nope", "/v2/r/blobs/uploads/7-u1"] {
        let unknown = cluster.send(Method::PATCH, foreign).await;
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND, "{foreign}");
        assert_eq!(error_code(unknown).await, "BLOB_UPLOAD_UNKNOWN");
    }
    cluster.stop().await;
}

#[tokio::test]
async fn mounts_and_monolithic_pushes() {
    let cluster = Cluster::start().await;
    let present = cluster.origin.insert(b"shared layer");
    let mounted = cluster
        .send(
            Method::POST,
            &format!(
                "/v2/test/b/blobs/uploads/?from=test%2Fa&mount={}",
                present.to_string().replace(':', "%3A")
            ),
        )
        .await;
    assert_eq!(mounted.status(), StatusCode::CREATED);
    assert_eq!(
        header(&mounted, "location"),
        format!("/v2/test/b/blobs/{present}")
    );
    assert_eq!(
        header(&mounted, "docker-content-digest"),
        present.to_string()
    );

    let absent = Digest::of(b"not here");
    for query in [
        format!("from=test/a&mount={absent}"),
        format!("from=BAD&mount={present}"),
        "from=test/a&mount=garbage".to_owned(),
    ] {
        let fallback = cluster
            .send(Method::POST, &format!("/v2/test/b/blobs/uploads/?{query}"))
            .await;
        assert_eq!(fallback.status(), StatusCode::ACCEPTED, "{query}");
        assert!(header(&fallback, "location").starts_with("/v2/test/b/blobs/uploads/"));
    }

    let body = b"monolithic";
    let digest = Digest::of(body);
    let stored = cluster
        .request(
            Method::POST,
            &format!("/v2/test/b/blobs/uploads/?digest={digest}"),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::CREATED);
    assert_eq!(cluster.origin.blob(&digest).unwrap(), body.as_slice());
    let wrong = cluster
        .request(
            Method::POST,
            &format!("/v2/test/b/blobs/uploads/?digest={absent}"),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(wrong).await, "DIGEST_INVALID");
    cluster.stop().await;
}

#[tokio::test]
async fn manifests_are_validated_before_anything_is_stored() {
    let cluster = Cluster::start().await;
    let config = cluster.origin.insert(b"{}");
    let layer = cluster.origin.insert(b"layer");
    let missing = Digest::of(b"missing");
    let put = |path: String, body: Vec<u8>| {
        cluster
            .request(Method::PUT, &path)
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(body)
            .send()
    };

    let dangling = image_manifest((&config, 2), &[(&layer, 5), (&missing, 7)]);
    let response = put("/v2/r/manifests/t".into(), dangling.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(body["errors"][0]["detail"]["digest"], missing.to_string());
    assert!(cluster.origin.blob(&Digest::of(&dangling)).is_none());
    assert_eq!(cluster.index.tag("r", "t"), None);

    let wrong_size = image_manifest((&config, 2), &[(&layer, 6)]);
    let response = put("/v2/r/manifests/t".into(), wrong_size).await.unwrap();
    assert_eq!(error_code(response).await, "MANIFEST_INVALID");

    let response = put("/v2/r/manifests/t".into(), b"{not json".to_vec())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "MANIFEST_INVALID");

    let good = image_manifest((&config, 2), &[(&layer, 5)]);
    let other = Digest::of(b"other");
    let response = put(format!("/v2/r/manifests/{other}"), good.clone())
        .await
        .unwrap();
    assert_eq!(error_code(response).await, "DIGEST_INVALID");
    let by_digest = Digest::of(&good);
    let response = put(format!("/v2/r/manifests/{by_digest}"), good)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(cluster.index.tag("r", "t"), None);

    // A layer is no manifest, even when asked for by digest.
    let response = cluster
        .send(Method::GET, &format!("/v2/r/manifests/{layer}"))
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "MANIFEST_UNKNOWN");
    cluster.stop().await;
}

#[tokio::test]
async fn deleting_by_digest_removes_every_tag_pointing_at_it() {
    let cluster = Cluster::start().await;
    let config = cluster.origin.insert(b"{}");
    let manifest = image_manifest((&config, 2), &[]);
    let digest = Digest::of(&manifest);
    for tag in ["a", "b", "c"] {
        let response = cluster
            .request(Method::PUT, &format!("/v2/r/manifests/{tag}"))
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let other = image_manifest((&config, 2), &[(&cluster.origin.insert(b"l"), 1)]);
    let response = cluster
        .request(Method::PUT, "/v2/r/manifests/keep")
        .body(other)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    // Paging: two at a time, with a Link to the rest.
    let first = cluster.send(Method::GET, "/v2/r/tags/list?n=2").await;
    assert_eq!(
        header(&first, "link"),
        "</v2/r/tags/list?n=2&last=b>; rel=\"next\""
    );
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["tags"], json!(["a", "b"]));

    let untagged = cluster.send(Method::DELETE, "/v2/r/manifests/a").await;
    assert_eq!(untagged.status(), StatusCode::ACCEPTED);
    let again = cluster.send(Method::DELETE, "/v2/r/manifests/a").await;
    assert_eq!(error_code(again).await, "MANIFEST_UNKNOWN");

    let deleted = cluster
        .send(Method::DELETE, &format!("/v2/r/manifests/{digest}"))
        .await;
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    let gone = cluster
        .send(Method::GET, &format!("/v2/r/manifests/{digest}"))
        .await;
    assert_eq!(error_code(gone).await, "MANIFEST_UNKNOWN");
    let tags: Value = cluster
        .send(Method::GET, "/v2/r/tags/list")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!(["keep"]));

    let unknown = Digest::of(b"never pushed");
    let response = cluster
        .send(Method::DELETE, &format!("/v2/r/manifests/{unknown}"))
        .await;
    assert_eq!(error_code(response).await, "MANIFEST_UNKNOWN");
    let response = cluster.send(Method::GET, "/v2/nothing/tags/list").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "NAME_UNKNOWN");
    cluster.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_spec_errors_never_500() {
    let cluster = Cluster::start().await;
    let cases = [
        (Method::GET, "/v2/UPPER/tags/list", 400, "NAME_INVALID"),
        (Method::GET, "/v2/a//b/tags/list", 400, "NAME_INVALID"),
        (
            Method::GET,
            "/v2/r/blobs/sha256:1234",
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::HEAD,
            "/v2/r/manifests/sha256:XYZ",
            400,
            "DIGEST_INVALID",
        ),
        (Method::GET, "/v2/r/manifests/bad%20tag", 400, "TAG_INVALID"),
        (
            Method::POST,
            "/v2/r/blobs/uploads/?digest=garbage",
            400,
            "DIGEST_INVALID",
        ),
        (Method::GET, "/v2/r/tags/list?n=lots", 400, "SIZE_INVALID"),
        (
            Method::GET,
            "/v2/r/manifests/missing",
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            Method::DELETE,
            "/v2/r/blobs/sha256:1111111111111111111111111111111111111111111111111111111111111111",
            405,
            "UNSUPPORTED",
        ),
        (Method::POST, "/v2/", 405, "UNSUPPORTED"),
        (Method::GET, "/v2/nonsense", 404, "NAME_UNKNOWN"),
    ];
    for (method, path, status, code) in cases {
        let response = cluster.send(method.clone(), path).await;
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        assert_eq!(
            header(&response, "docker-distribution-api-version"),
            "registry/2.0",
            "{method} {path}"
        );
        if method == Method::HEAD {
            assert!(response.bytes().await.unwrap().is_empty());
        } else {
            assert_eq!(error_code(response).await, code, "{method} {path}");
        }
    }
    cluster.stop().await;
}

#[tokio::test]
async fn unreachable_upstreams_are_unavailable() {
    // Bind and drop to get ports nothing listens on.
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let cluster =
        Cluster::start_with(FakeOrigin::default(), dead, FakeBuildIndex::default(), dead).await;
    let digest = Digest::of(b"x");
    for (method, path) in [
        (Method::GET, format!("/v2/r/blobs/{digest}")),
        (Method::HEAD, format!("/v2/r/blobs/{digest}")),
        (Method::POST, "/v2/r/blobs/uploads/".to_owned()),
        (Method::GET, "/v2/r/manifests/latest".to_owned()),
        (Method::GET, "/v2/_catalog".to_owned()),
    ] {
        let response =
            tokio::time::timeout(Duration::from_secs(30), cluster.send(method.clone(), &path))
                .await
                .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}"
        );
        if method != Method::HEAD {
            assert_eq!(error_code(response).await, "UNAVAILABLE");
        }
    }
    cluster.stop().await;
}
