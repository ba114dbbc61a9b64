//! Admission by role under mutual TLS: a listener's routes are open to the component roles
//! that have business there (origins take uploads only from proxies and other origins), and
//! refuse everyone else with 403 `DENIED` (gRPC: `PERMISSION_DENIED`). On a listener without
//! client certificates every caller is [`Caller::Unchecked`] and passes, as before. And
//! admission by source address ([`with_source_allow_list`]), for the agent's node-local registry.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, StatusCode};
use shoal_core::{Cidr, ErrorCode, error_body};
use shoal_tls::{Caller, Roles};

/// Who may call: `read` for GET and HEAD, `write` for every other method.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub read: Roles,
    pub write: Roles,
}

impl Access {
    /// The same roles for every method.
    pub const fn only(roles: Roles) -> Access {
        Access {
            read: roles,
            write: roles,
        }
    }
}

/// Wraps every route `app` has so far in the role check (add `/health` and `/metrics` after,
/// so probes and scrapers need no certificate).
pub fn with_access(app: Router, access: Access) -> Router {
    app.layer(middleware::from_fn(move |request: Request, next: Next| {
        admit(access, request, next)
    }))
}

async fn admit(access: Access, request: Request, next: Next) -> Response {
    // Only a request that did not come through `serve_with` lacks the extension (a router
    // called in process); every listener sets it.
    let caller = request
        .extensions()
        .get::<Caller>()
        .copied()
        .unwrap_or(Caller::Unchecked);
    let needed = if matches!(*request.method(), Method::GET | Method::HEAD) {
        access.read
    } else {
        access.write
    };
    if caller.admitted(needed) {
        return next.run(request).await;
    }
    let message = format!("this endpoint admits {needed}; the caller has {caller}");
    tracing::debug!(method = %request.method(), path = request.uri().path(), %message, "refused");
    let grpc = request
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        grpc_denied(&message)
    } else {
        denied_json(&message)
    }
}

/// Wraps every route `app` has so far so that only clients whose address lies in one of
/// `allowed` reach them; others get 403 `DENIED`. Empty: everyone (add `/health` and
/// `/metrics` after, so probes and scrapers from elsewhere still work).
pub fn with_source_allow_list(app: Router, allowed: &[Cidr]) -> Router {
    if allowed.is_empty() {
        return app;
    }
    let allowed: Arc<[Cidr]> = allowed.into();
    app.layer(middleware::from_fn(move |request: Request, next: Next| {
        let allowed = Arc::clone(&allowed);
        async move {
            let source = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip());
            if source.is_some_and(|ip| allowed.iter().any(|block| block.contains(ip))) {
                return next.run(request).await;
            }
            let shown = source.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
            tracing::debug!(source = %shown, path = request.uri().path(), "refused: not on the allow list");
            denied_json(&format!("{shown} may not use this listener"))
        }
    }))
}

fn denied_json(message: &str) -> Response {
    let mut response = Response::new(Body::from(error_body(ErrorCode::Denied, message, None)));
    *response.status_mut() = StatusCode::FORBIDDEN;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A trailers-only gRPC answer: status 7, PERMISSION_DENIED.
fn grpc_denied(message: &str) -> Response {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static("7"));
    if let Ok(value) = HeaderValue::from_str(&message.replace(['\r', '\n'], " ")) {
        headers.insert("grpc-message", value);
    }
    response
}
