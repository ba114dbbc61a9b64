//! `GET /admin/status`: what `shoal status` shows of an origin, as JSON: its ring (this origin's
//! entry, every member and whether its health checks pass), the write-back backlog and the
//! replica pushes still queued. Read-only, so under mutual TLS any cluster role may ask.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;

use crate::Origin;

pub(crate) fn router(origin: Arc<Origin>) -> Router {
    Router::new()
        .route("/admin/status", get(status))
        .with_state(origin)
}

#[derive(Serialize)]
struct Status {
    /// `null` for a lone origin.
    ring: Option<Ring>,
    writeback: WriteBack,
}

#[derive(Serialize)]
struct Ring {
    advertise: String,
    members: Vec<Member>,
    replica_pushes_pending: usize,
}

#[derive(Serialize)]
struct Member {
    addr: String,
    healthy: bool,
}

#[derive(Serialize)]
struct WriteBack {
    /// Blobs not yet in the backend.
    pending: usize,
    oldest_age_seconds: Option<f64>,
    completed: u64,
    failures: u64,
}

async fn status(State(origin): State<Arc<Origin>>) -> Json<Status> {
    let ring = origin.ring.as_ref().map(|ring| {
        let (advertise, members, pushes) = ring.status();
        Ring {
            advertise: advertise.to_owned(),
            members: members
                .into_iter()
                .map(|(addr, healthy)| Member { addr, healthy })
                .collect(),
            replica_pushes_pending: pushes,
        }
    });
    let stats = origin.writeback.stats();
    Json(Status {
        ring,
        writeback: WriteBack {
            pending: stats.depth,
            oldest_age_seconds: stats.oldest_age.map(|age| age.as_secs_f64()),
            completed: stats.completed,
            failures: stats.failures,
        },
    })
}
