//! Request plumbing shared by the internal API clients: error mapping, bounded body reads.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::{RequestBuilder, Response};

use crate::cluster::PROBE_AFTER;
use crate::error::ApiError;

pub(crate) async fn send_to(service: &str, req: RequestBuilder) -> Result<Response, ApiError> {
    req.send().await.map_err(|source| ApiError::Transport {
        service: service.into(),
        source,
    })
}

/// Resolves once `probe` (a health probe of one server) fails, probing every [`PROBE_AFTER`]:
/// what a request to that server is raced against, so that a hung server (a stopped process,
/// whose kernel still accepts connections) fails it within seconds, while a live one keeps it
/// however long it takes.
pub(crate) async fn stops_answering<F, Fut>(mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        tokio::time::sleep(PROBE_AFTER).await;
        if !probe().await {
            return;
        }
    }
}

/// Passes successful responses through; turns error statuses into `ApiError::Remote` with the server's code.
pub(crate) async fn check_from(service: &str, resp: Response) -> Result<Response, ApiError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    // Error bodies are small JSON; anything else is reported verbatim (truncated).
    let text = match read_limited(service, resp, 64 * 1024).await {
        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
        Err(_) => String::new(),
    };
    let parsed: Option<crate::wire::ErrorBody> = serde_json::from_str(&text).ok();
    Err(ApiError::Remote {
        service: service.into(),
        status: status.as_u16(),
        code: parsed.as_ref().map(|b| b.code),
        message: parsed
            .map(|b| b.message)
            .unwrap_or_else(|| text.chars().take(200).collect()),
    })
}

/// Reads a whole response body, failing once it exceeds `limit` bytes.
pub(crate) async fn read_limited(
    service: &str,
    resp: Response,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let mut buf = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| ApiError::Transport {
            service: service.into(),
            source,
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge {
                service: service.into(),
                limit,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
