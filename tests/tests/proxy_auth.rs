//! Push and pull authentication on the proxy (`auth:` in its config), with the real clients:
//! docker logs in, and docker, skopeo and podman push and pull byte-identical images, against
//! an htpasswd file and against a token server issuing ES256 JWTs. Without credentials the
//! proxy answers 401 with the challenge that makes the clients log in; a wrong password, a
//! pull-only token and an expired token store nothing.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use shoal_client::Image;
use shoal_tests::images::{generate, image_spec, layout_blobs, layout_manifest_digest};
use shoal_tests::token_server::{TokenServer, TokenUser, now};
use shoal_tests::tools::{
    DockerImages, Podman, docker, docker_image_id, ensure_docker_daemon_shares_our_loopback, skopeo,
};
use shoal_tests::{Cluster, ClusterOptions};

const MIB: u64 = 1 << 20;
const SERVICE: &str = "shoal-proxy-test";
const ISSUER: &str = "shoal-proxy-test-issuer";

/// A user name and password.
#[derive(Clone, Copy)]
struct Login<'a> {
    user: &'a str,
    password: &'a str,
}

impl Login<'_> {
    fn creds(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }
}

/// The token server's users: one who may push, one who may only pull.
const WRITER: Login = Login {
    user: "writer",
    password: "correct horse",
};
const READER: Login = Login {
    user: "reader",
    password: "battery staple",
};

/// A token server issuing push and pull to [`WRITER`], pull only to [`READER`].
async fn token_server() -> Result<TokenServer> {
    TokenServer::start(
        ISSUER,
        SERVICE,
        vec![
            TokenUser::new(WRITER.user, WRITER.password, &["pull", "push"]),
            TokenUser::new(READER.user, READER.password, &["pull"]),
        ],
    )
    .await
}

async fn cluster_with_auth(auth: Value) -> Result<Cluster> {
    Cluster::start(ClusterOptions {
        proxy_overrides: json!({ "auth": auth }),
        ..ClusterOptions::default()
    })
    .await
}

fn htpasswd_line(login: Login) -> Result<String> {
    // The minimum cost: the test checks the protocol, not the hash's strength.
    let hash =
        bcrypt::hash_with_result(login.password, 4)?.format_for_version(bcrypt::Version::TwoY);
    Ok(format!("{}:{hash}\n", login.user))
}

async fn test_image(work: &Path, seed: u64) -> Result<Image> {
    generate(
        &work.join("image"),
        image_spec(vec![3 * MIB, 150_000], seed, "v1"),
    )
    .await
}

/// skopeo pushes `image` with `login` and pulls it back: the same manifest and blobs.
async fn skopeo_round_trip(
    registry: &str,
    login: Login<'_>,
    image: &Image,
    work: &Path,
) -> Result<()> {
    let remote = format!("docker://{registry}/auth/skopeo:v1");
    skopeo([
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &login.creds(),
        &format!("oci:{}:v1", image.dir.display()),
        &remote,
    ])
    .await?;
    let pulled = work.join("skopeo-pulled");
    skopeo([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--src-creds",
        &login.creds(),
        &remote,
        &format!("oci:{}:v1", pulled.display()),
    ])
    .await?;
    ensure!(layout_manifest_digest(&pulled)? == image.manifest_digest);
    ensure!(layout_blobs(&pulled)? == layout_blobs(&image.dir)?);
    Ok(())
}

/// `docker login`, then docker pushes `image` and pulls it back with the same image id.
async fn docker_round_trip(
    registry: &str,
    login: Login<'_>,
    image: &Image,
    work: &Path,
) -> Result<()> {
    docker(["info"])
        .await
        .context("the Docker daemon must be running")?;
    ensure_docker_daemon_shares_our_loopback()?;
    // The client's own config dir: the login stays out of the machine's ~/.docker.
    let config = work.join("docker-config");
    std::fs::create_dir_all(&config)?;
    let config = config.display().to_string();
    docker([
        "--config",
        &config,
        "login",
        "--username",
        login.user,
        "--password",
        login.password,
        registry,
    ])
    .await?;

    let unique = format!(
        "{}-{}",
        std::process::id(),
        registry.replace([':', '.'], "-")
    );
    let local = format!("shoal-test/auth-load:{unique}");
    let remote = format!("{registry}/auth/docker:{unique}");
    let mut cleanup = DockerImages(vec![local.clone()]);
    let archive = work.join("image.tar");
    skopeo([
        "copy",
        &format!("oci:{}:v1", image.dir.display()),
        &format!("docker-archive:{}:{local}", archive.display()),
    ])
    .await?;
    docker(["load", "--input", &archive.display().to_string()]).await?;
    cleanup.0.push(remote.clone());
    docker(["tag", &local, &remote]).await?;
    docker(["--config", &config, "push", &remote]).await?;
    docker(["rmi", &local, &remote]).await?;
    docker(["--config", &config, "pull", &remote]).await?;
    let pulled = docker_image_id(&remote).await?;
    ensure!(
        pulled == image.config.0.to_string(),
        "docker pulled image id {pulled}, expected {}",
        image.config.0
    );
    Ok(())
}

/// `podman login`, then podman pulls what skopeo pushed, pushes it to another repository and
/// pulls that back with the same image id.
async fn podman_round_trip(
    registry: &str,
    login: Login<'_>,
    image: &Image,
    work: &Path,
) -> Result<()> {
    let podman = Podman::new(&work.join("podman"))?;
    let authfile = work.join("podman-auth.json").display().to_string();
    podman
        .run([
            "login",
            "--tls-verify=false",
            "--authfile",
            &authfile,
            "--username",
            login.user,
            "--password",
            login.password,
            registry,
        ])
        .await?;
    let source = format!("{registry}/auth/skopeo:v1");
    let copy = format!("{registry}/auth/podman:v1");
    let with_auth = ["--tls-verify=false", "--authfile", &authfile];
    podman
        .run(["pull"].iter().chain(&with_auth).chain([&source.as_str()]))
        .await?;
    podman
        .run(
            ["push"]
                .iter()
                .chain(&with_auth)
                .chain([&source.as_str(), &copy.as_str()]),
        )
        .await?;
    podman.run(["rmi", "--all", "--force"]).await?;
    podman
        .run(["pull"].iter().chain(&with_auth).chain([&copy.as_str()]))
        .await?;
    let id = podman
        .run(["image", "inspect", "--format", "{{.Id}}", &copy])
        .await?
        .stdout
        .trim()
        .to_owned();
    ensure!(id == image.config.0.hex(), "podman pulled image id {id}");
    Ok(())
}

/// `GET /v2/` without credentials: 401 UNAUTHORIZED and the challenge.
async fn challenge(registry: &str) -> Result<String> {
    let response = reqwest::get(format!("http://{registry}/v2/")).await?;
    ensure!(
        response.status() == StatusCode::UNAUTHORIZED,
        "{}",
        response.status()
    );
    let challenge = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .context("no WWW-Authenticate on the 401")?
        .to_str()?
        .to_owned();
    let body: Value = response.json().await?;
    ensure!(body["errors"][0]["code"] == "UNAUTHORIZED", "{body}");
    Ok(challenge)
}

/// Whether the proxy holds any of `image`'s blobs or the manifest under `repository:v1`, asked
/// with `authorization`.
async fn stored_anything(
    registry: &str,
    authorization: &str,
    repository: &str,
    image: &Image,
) -> Result<bool> {
    let client = reqwest::Client::new();
    let mut urls: Vec<String> = image
        .layers
        .iter()
        .map(|(digest, _)| format!("http://{registry}/v2/{repository}/blobs/{digest}"))
        .collect();
    urls.push(format!("http://{registry}/v2/{repository}/manifests/v1"));
    for url in urls {
        let status = client
            .head(&url)
            .header(AUTHORIZATION, authorization)
            .send()
            .await?
            .status();
        match status {
            StatusCode::NOT_FOUND => {}
            StatusCode::OK => return Ok(true),
            other => bail!("HEAD {url}: {other}"),
        }
    }
    Ok(false)
}

fn basic(login: Login) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(login.creds())
    )
}

#[tokio::test]
async fn htpasswd_logins_push_and_pull_with_docker_skopeo_and_podman() -> Result<()> {
    let work = tempfile::tempdir()?;
    let admin = Login {
        user: "admin",
        password: "correct horse",
    };
    let reader = Login {
        user: "reader",
        password: "battery staple",
    };
    let htpasswd = work.path().join("htpasswd");
    std::fs::write(&htpasswd, htpasswd_line(admin)? + &htpasswd_line(reader)?)?;
    let cluster = cluster_with_auth(json!({
        "htpasswd": {"path": htpasswd.display().to_string(), "realm": "shoal-test"},
        "groups": {"writers": ["admin"]},
        "rules": [{"repository": "auth/.*", "push": ["@writers"]}],
    }))
    .await?;
    let registry = cluster.proxy_addr().to_string();
    ensure!(challenge(&registry).await? == "Basic realm=\"shoal-test\"");

    let image = test_image(work.path(), 0x5e0_a001).await?;
    // A wrong password is refused and stores nothing.
    let wrong = Login {
        user: "admin",
        password: "wrong",
    };
    let refused = skopeo_round_trip(&registry, wrong, &image, work.path()).await;
    ensure!(refused.is_err(), "a push with a wrong password succeeded");
    ensure!(!stored_anything(&registry, &basic(admin), "auth/skopeo", &image).await?);
    // A user the rule does not let push is denied, even with the right password.
    let denied = skopeo_round_trip(&registry, reader, &image, work.path()).await;
    let message = format!("{:#}", denied.expect_err("reader pushed"));
    ensure!(message.contains("denied"), "{message}");
    ensure!(!stored_anything(&registry, &basic(admin), "auth/skopeo", &image).await?);

    skopeo_round_trip(&registry, admin, &image, work.path()).await?;
    podman_round_trip(&registry, admin, &image, work.path()).await?;
    docker_round_trip(&registry, admin, &image, work.path()).await?;
    // Readers pull.
    ensure!(stored_anything(&registry, &basic(reader), "auth/podman", &image).await?);
    Ok(())
}

#[tokio::test]
async fn token_logins_push_and_pull_and_refuse_pull_only_and_expired_tokens() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (writer, reader) = (WRITER, READER);
    let tokens = token_server().await?;
    let bundle = work.path().join("token-root.pem");
    std::fs::write(&bundle, tokens.cert_pem())?;
    let cluster = cluster_with_auth(json!({
        "token": {"realm": tokens.realm(), "service": SERVICE, "issuer": ISSUER,
                  "root_cert_bundle": bundle.display().to_string()},
    }))
    .await?;
    let registry = cluster.proxy_addr().to_string();
    let expected = format!("Bearer realm=\"{}\",service=\"{SERVICE}\"", tokens.realm());
    ensure!(challenge(&registry).await? == expected);

    let image = test_image(work.path(), 0x5e0_a002).await?;
    // A pull-only token: the push is refused with DENIED and stores nothing.
    let denied = skopeo_round_trip(&registry, reader, &image, work.path()).await;
    let message = format!("{:#}", denied.expect_err("a pull-only token pushed"));
    ensure!(message.contains("denied"), "{message}");
    let pull_only = tokens.sign(
        reader.user,
        json!([{"type": "repository", "name": "auth/skopeo", "actions": ["pull"]}]),
        now() - 10,
        now() + 300,
    )?;
    let response = reqwest::Client::new()
        .post(format!("http://{registry}/v2/auth/skopeo/blobs/uploads/"))
        .bearer_auth(&pull_only)
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::FORBIDDEN,
        "{}",
        response.status()
    );
    let body: Value = response.json().await?;
    ensure!(body["errors"][0]["code"] == "DENIED", "{body}");
    ensure!(
        !stored_anything(
            &registry,
            &format!("Bearer {pull_only}"),
            "auth/skopeo",
            &image
        )
        .await?
    );

    // An expired token is refused, and the client is told to get another.
    let expired = tokens.sign(
        writer.user,
        json!([{"type": "repository", "name": "auth/skopeo", "actions": ["pull", "push"]}]),
        now() - 7200,
        now() - 3600,
    )?;
    let response = reqwest::Client::new()
        .post(format!("http://{registry}/v2/auth/skopeo/blobs/uploads/"))
        .bearer_auth(&expired)
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::UNAUTHORIZED,
        "{}",
        response.status()
    );
    let challenge = response.headers()[WWW_AUTHENTICATE].to_str()?.to_owned();
    ensure!(
        challenge
            == format!(
                "{expected},scope=\"repository:auth/skopeo:pull,push\",error=\"invalid_token\""
            ),
        "{challenge}"
    );

    skopeo_round_trip(&registry, writer, &image, work.path()).await?;
    podman_round_trip(&registry, writer, &image, work.path()).await?;
    docker_round_trip(&registry, writer, &image, work.path()).await?;
    ensure!(tokens.requests_for("repository:auth/skopeo:pull,push") > 0);
    Ok(())
}

/// The same token server's key given as a JWKS (`auth.token.jwks`) instead of a certificate:
/// its tokens push and pull, a pull-only token cannot push.
#[tokio::test]
async fn a_jwks_of_the_token_servers_key_verifies_its_tokens() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (writer, reader) = (WRITER, READER);
    let tokens = token_server().await?;
    let jwks = work.path().join("jwks.json");
    std::fs::write(&jwks, tokens.jwks("token-key-1").to_string())?;
    let cluster = cluster_with_auth(json!({
        "token": {"realm": tokens.realm(), "service": SERVICE, "issuer": ISSUER,
                  "jwks": jwks.display().to_string()},
    }))
    .await?;
    let registry = cluster.proxy_addr().to_string();
    let image = test_image(work.path(), 0x5e0_a0f1).await?;
    let denied = skopeo_round_trip(&registry, reader, &image, work.path()).await;
    let message = format!("{:#}", denied.expect_err("a pull-only token pushed"));
    ensure!(message.contains("denied"), "{message}");
    skopeo_round_trip(&registry, writer, &image, work.path()).await?;
    Ok(())
}

#[tokio::test]
async fn without_auth_the_proxy_stays_open() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let response = reqwest::get(format!("http://{}/v2/", cluster.proxy_addr())).await?;
    ensure!(response.status() == StatusCode::OK);
    ensure!(response.headers().get(WWW_AUTHENTICATE).is_none());
    Ok(())
}
