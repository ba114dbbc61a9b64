//! The preheat endpoints. They answer with small JSON bodies (`{"error": "…"}` on failure), not
//! Registry V2 errors: their callers are registries' notification senders and operators.
//!
//! `preheat.secret` guards them all. Without one, the webhook and job status stay open (a
//! registry on a private network needs no secret to notify), but `POST /preheat` is refused with
//! 403: it would let anyone make the origins (and agents) fetch any image.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::BytesMut;
use futures::StreamExt;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::jobs::{Image, ImageRef, Source};
use super::notification::{self, Action};
use super::{EnqueueError, Preheater};

/// Largest notification or preheat request body. Distribution sends one event per request
/// (a few KiB with its references); Harbor batches a few.
const MAX_BODY: usize = 1024 * 1024;
/// How much of an oversized body is read (and dropped) so that its sender gets the 413.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// `POST /registry/notifications`, `POST /preheat` and `GET /preheat/{id}`.
pub fn router(preheater: Preheater) -> Router {
    Router::new()
        .route("/registry/notifications", post(notifications))
        .route("/preheat", post(create))
        .route("/preheat/{id}", get(status))
        .with_state(preheater)
}

fn failure(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn notifications(
    State(preheater): State<Preheater>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(response) = authorize(&preheater, &headers) {
        return response;
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !notification::accepts_content_type(content_type) {
        return failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {content_type:?} is not a notification envelope; expected one of {:?}",
                notification::CONTENT_TYPES
            ),
        );
    }
    let body = match read_body(&headers, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let actions = match notification::parse(&body) {
        Ok(actions) => actions,
        Err(error) => return failure(StatusCode::BAD_REQUEST, error.to_string()),
    };
    let mut ids = Vec::new();
    let mut ignored = 0;
    for action in actions {
        match action {
            Action::Ignore => {
                preheater.metrics.preheat_events_ignored.inc();
                ignored += 1;
            }
            Action::Preheat(push) => {
                let image = Image {
                    name: push.repository,
                    reference: ImageRef::Digest(push.digest),
                };
                match preheater.enqueue(image, Source::Webhook).await {
                    Ok(id) => ids.push(id),
                    // The registry sends the notification again later; jobs already queued
                    // from it run twice then, which is harmless.
                    Err(error) => return not_queued(error),
                }
            }
        }
    }
    axum::Json(json!({ "jobs": ids, "ignored": ignored })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    image: String,
}

/// `POST /preheat` with `{"image": "repo:tag"}` or `{"image": "repo@sha256:…"}`.
async fn create(State(preheater): State<Preheater>, headers: HeaderMap, body: Body) -> Response {
    if preheater.secret.is_none() {
        return failure(
            StatusCode::FORBIDDEN,
            "POST /preheat is off: it needs `preheat.secret` in the proxy's config",
        );
    }
    if let Err(response) = authorize(&preheater, &headers) {
        return response;
    }
    let body = match read_body(&headers, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request: CreateRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return failure(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"image\": \"repo:tag\" or \"repo@digest\"}}: {error}"),
            );
        }
    };
    let image = match Image::parse(&request.image) {
        Ok(image) => image,
        Err(reason) => {
            return failure(
                StatusCode::BAD_REQUEST,
                format!("image {:?}: {reason}", request.image),
            );
        }
    };
    match preheater.enqueue(image, Source::Api).await {
        Ok(id) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "id": id, "status": format!("/preheat/{id}") })),
        )
            .into_response(),
        Err(error) => not_queued(error),
    }
}

async fn status(
    State(preheater): State<Preheater>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&preheater, &headers) {
        return response;
    }
    match preheater.progress(&id) {
        Some(progress) => axum::Json(progress).into_response(),
        None => failure(
            StatusCode::NOT_FOUND,
            format!("no preheat job {id:?} (unknown, or forgotten after finishing)"),
        ),
    }
}

fn not_queued(error: EnqueueError) -> Response {
    failure(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
}

/// Checks the shared secret when one is configured.
#[allow(clippy::result_large_err)]
fn authorize(preheater: &Preheater, headers: &HeaderMap) -> Result<(), Response> {
    match &preheater.secret {
        Some(secret) => secret
            .check(headers)
            .map_err(|wrong| failure(StatusCode::UNAUTHORIZED, wrong.to_string())),
        None => Ok(()),
    }
}

/// Reads at most [`MAX_BODY`] bytes; a larger body is refused with 413. The excess is read
/// and dropped (up to [`DRAIN_LIMIT`]) before answering: a client still sending when the answer
/// goes out would see a reset connection instead of the 413.
#[allow(clippy::result_large_err)]
async fn read_body(headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, Response> {
    let too_large = || {
        failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is larger than {MAX_BODY} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > DRAIN_LIMIT) {
        return Err(too_large());
    }
    let mut chunks = body.into_data_stream();
    let mut buffer = BytesMut::new();
    let mut total = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|error| {
            failure(
                StatusCode::BAD_REQUEST,
                format!("reading the body failed: {error}"),
            )
        })?;
        total += chunk.len() as u64;
        if total > DRAIN_LIMIT {
            return Err(too_large());
        }
        if total <= MAX_BODY as u64 {
            buffer.extend_from_slice(&chunk);
        }
    }
    if total > MAX_BODY as u64 {
        return Err(too_large());
    }
    Ok(buffer.freeze())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use shoal_service::{CancellationToken, MetricsBuilder, TaskTracker};

    use super::*;
    use crate::config::{PreheatConfig, ProxyConfig};
    use crate::metrics::ProxyMetrics;
    use crate::upstream::Upstreams;

    /// A preheat router served on loopback, whose origins and build-index are nowhere: jobs
    /// queue and fail, which is all these request-level tests need.
    struct Served {
        url: String,
        metrics: ProxyMetrics,
        shutdown: CancellationToken,
        _state: tempfile::TempDir,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    async fn serve(preheat: PreheatConfig) -> Served {
        let state = tempfile::tempdir().unwrap();
        let preheat = PreheatConfig {
            state_dir: state.path().to_owned(),
            ..preheat
        };
        let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let nowhere = nowhere.local_addr().unwrap().to_string();
        let config = ProxyConfig {
            origins: shoal_api::OriginsConfig::fixed([nowhere.clone()]),
            build_index: shoal_core::Addresses::one(nowhere),
            preheat,
            ..ProxyConfig::default()
        };
        let http = shoal_service::client::builder().build().unwrap();
        let (metrics, _) = ProxyMetrics::register(MetricsBuilder::new("proxy"));
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let preheater = Preheater::start(
            config.preheat.clone(),
            Arc::new(
                Upstreams::start(
                    http,
                    &config,
                    &shoal_membership::MembershipMetrics::default(),
                    shutdown.clone(),
                    &tasks,
                )
                .await
                .unwrap(),
            ),
            None,
            metrics.clone(),
            shutdown.clone(),
            &tasks,
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = router(preheater);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        Served {
            url,
            metrics,
            shutdown,
            _state: state,
        }
    }

    fn manifest_push() -> serde_json::Value {
        json!({"events": [{"action": "push", "target": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "repository": "team/app", "digest": format!("sha256:{}", "2".repeat(64))}}]})
    }

    async fn post_notification(
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{url}/registry/notifications"))
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    const SECRET: &str = "s3cret";

    async fn post_preheat(url: &str, authorization: Option<&str>) -> (u16, serde_json::Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{url}/preheat"))
            .json(&json!({"image": "team/app:v1"}));
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    const EVENTS_V1: (&str, &str) = (
        "content-type",
        "application/vnd.docker.distribution.events.v1+json",
    );

    #[tokio::test]
    async fn a_manifest_push_queues_a_job_whose_progress_is_reported() {
        let served = serve(PreheatConfig {
            attempts: 1,
            ..PreheatConfig::default()
        })
        .await;
        let body = serde_json::to_vec(&manifest_push()).unwrap();
        let (status, answer) = post_notification(&served.url, &[EVENTS_V1], body).await;
        assert_eq!(status, 200, "{answer}");
        let id = answer["jobs"][0].as_str().unwrap().to_owned();
        assert_eq!(served.metrics.preheat_jobs_queued.get(), 1);
        // Nothing answers at the origins' address, so the only attempt fails.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let progress: serde_json::Value = reqwest::get(format!("{}/preheat/{id}", served.url))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(progress["source"], "webhook");
            assert_eq!(
                progress["image"],
                format!("team/app@sha256:{}", "2".repeat(64))
            );
            if progress["state"] == "failed" {
                assert!(
                    progress["last_error"]
                        .as_str()
                        .unwrap()
                        .contains("reading manifest"),
                    "{progress}"
                );
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{progress}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(served.metrics.preheat_jobs_failed.get(), 1);
        let missing = reqwest::get(format!("{}/preheat/nope", served.url))
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
    }

    #[tokio::test]
    async fn a_finished_job_leaves_its_record_as_history_and_no_queue_marker() {
        let served = serve(PreheatConfig {
            attempts: 1,
            secret: SECRET.into(),
            ..PreheatConfig::default()
        })
        .await;
        let accepted: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/preheat", served.url))
            .bearer_auth(SECRET)
            .json(&json!({"image": "team/app:v1"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = accepted["id"].as_str().unwrap();
        let state = served._state.path();
        let marker = state.join("queue").join(format!("{id}.json"));
        let record = state.join(format!("{id}.json"));
        // Nothing answers at the build-index's address, so the only attempt fails.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while served.metrics.preheat_jobs_failed.get() == 0 {
            assert!(std::time::Instant::now() < deadline, "the job never failed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!marker.exists(), "the queue let go of the job");
        let kept: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        assert_eq!(kept["state"], "failed", "{kept}");
    }

    #[tokio::test]
    async fn bad_notifications_are_refused_with_a_reason() {
        let served = serve(PreheatConfig::default()).await;
        let cases = vec![
            (
                vec![EVENTS_V1],
                b"{not json".to_vec(),
                400,
                "not a notification",
            ),
            (
                vec![EVENTS_V1],
                b"{}".to_vec(),
                400,
                "missing field `events`",
            ),
            (
                vec![("content-type", "text/plain")],
                serde_json::to_vec(&manifest_push()).unwrap(),
                415,
                "Content-Type",
            ),
            (
                vec![EVENTS_V1],
                vec![b' '; MAX_BODY + 1],
                413,
                "larger than",
            ),
        ];
        for (headers, body, expected, message) in cases {
            let (status, answer) = post_notification(&served.url, &headers, body).await;
            assert_eq!(status, expected, "{answer}");
            assert!(
                answer["error"].as_str().unwrap().contains(message),
                "{answer}"
            );
        }
        assert_eq!(served.metrics.preheat_jobs_queued.get(), 0);
        // A pull is not refused, only ignored and counted.
        let pull = json!({"events": [{"action": "pull", "target": {}}]});
        let (status, answer) = post_notification(
            &served.url,
            &[EVENTS_V1],
            serde_json::to_vec(&pull).unwrap(),
        )
        .await;
        assert_eq!((status, answer["ignored"].as_u64()), (200, Some(1)));
        assert_eq!(served.metrics.preheat_events_ignored.get(), 1);
    }

    #[tokio::test]
    async fn the_shared_secret_is_required_when_configured() {
        let served = serve(PreheatConfig {
            secret: "s3cret".into(),
            secret_header: "X-Shoal-Secret".into(),
            ..PreheatConfig::default()
        })
        .await;
        let body = || serde_json::to_vec(&manifest_push()).unwrap();
        for headers in [
            vec![EVENTS_V1],
            vec![EVENTS_V1, ("x-shoal-secret", "wrong")],
            vec![EVENTS_V1, ("x-shoal-secret", "s3cre")],
            vec![EVENTS_V1, ("authorization", "Bearer s3cret")],
        ] {
            let (status, answer) = post_notification(&served.url, &headers, body()).await;
            assert_eq!(status, 401, "{headers:?}: {answer}");
        }
        for secret in ["s3cret", "Bearer s3cret"] {
            let headers = [EVENTS_V1, ("x-shoal-secret", secret)];
            let (status, answer) = post_notification(&served.url, &headers, body()).await;
            assert_eq!(status, 200, "{secret}: {answer}");
        }
    }

    #[tokio::test]
    async fn the_preheat_api_takes_image_references() {
        let served = serve(PreheatConfig {
            secret: SECRET.into(),
            ..PreheatConfig::default()
        })
        .await;
        let client = reqwest::Client::new();
        let post = |body: serde_json::Value| {
            client
                .post(format!("{}/preheat", served.url))
                .bearer_auth(SECRET)
                .json(&body)
                .send()
        };
        let accepted = post(json!({"image": "team/app:v1"})).await.unwrap();
        assert_eq!(accepted.status(), 202);
        let answer: serde_json::Value = accepted.json().await.unwrap();
        let id = answer["id"].as_str().unwrap();
        let status_url = format!("{}/preheat/{id}", served.url);
        let unauthorized = client.get(&status_url).send().await.unwrap();
        assert_eq!(unauthorized.status(), 401, "status needs the secret too");
        let progress: serde_json::Value = client
            .get(&status_url)
            .bearer_auth(SECRET)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(progress["image"], "team/app:v1");
        assert_eq!(progress["source"], "api");
        for bad in [
            json!({"image": "UPPER:v1"}),
            json!({"img": "a:b"}),
            json!([1]),
        ] {
            let refused = post(bad.clone()).await.unwrap();
            assert_eq!(refused.status(), 400, "{bad}");
        }
    }

    #[tokio::test]
    async fn the_preheat_api_needs_the_secret_and_is_off_without_one() {
        let open = serve(PreheatConfig::default()).await;
        let (status, answer) = post_preheat(&open.url, Some("Bearer anything")).await;
        assert_eq!(status, 403, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("preheat.secret"),
            "{answer}"
        );

        let served = serve(PreheatConfig {
            secret: SECRET.into(),
            ..PreheatConfig::default()
        })
        .await;
        for refused in [
            None,
            Some("Bearer wrong"),
            Some("s3cre"),
            Some("Basic s3cret"),
        ] {
            let (status, answer) = post_preheat(&served.url, refused).await;
            assert_eq!(status, 401, "{refused:?}: {answer}");
        }
        assert_eq!(served.metrics.preheat_jobs_queued.get(), 0);
        for accepted in ["Bearer s3cret", "s3cret"] {
            let (status, answer) = post_preheat(&served.url, Some(accepted)).await;
            assert_eq!(status, 202, "{accepted}: {answer}");
        }
    }

    #[tokio::test]
    async fn a_flood_of_api_jobs_leaves_the_webhook_its_own_room() {
        let served = serve(PreheatConfig {
            secret: SECRET.into(),
            queue: 4,
            api_queue: 4,
            ..PreheatConfig::default()
        })
        .await;
        let bearer = format!("Bearer {SECRET}");
        let mut refused = 0;
        for _ in 0..40 {
            let (status, answer) = post_preheat(&served.url, Some(&bearer)).await;
            match status {
                202 => {}
                503 => refused += 1,
                other => panic!("{other}: {answer}"),
            }
        }
        // Jobs against nowhere keep failing and waiting for retries, so none finishes meanwhile.
        assert_eq!(refused, 36, "api jobs are bounded by preheat.api_queue");
        let headers = [EVENTS_V1, ("authorization", bearer.as_str())];
        for _ in 0..4 {
            let body = serde_json::to_vec(&manifest_push()).unwrap();
            let (status, answer) = post_notification(&served.url, &headers, body).await;
            assert_eq!(status, 200, "the webhook still queues: {answer}");
        }
        let body = serde_json::to_vec(&manifest_push()).unwrap();
        let (status, answer) = post_notification(&served.url, &headers, body).await;
        assert_eq!(status, 503, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("webhook"),
            "{answer}"
        );
    }
}
