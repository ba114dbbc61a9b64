//! A Registry V2 request as the registry server routes it: the path (`parse_v2_path`), the
//! method (`Endpoint::from_route`) and the query string (`Query`, read for `digest`, `mount`,
//! `from`, `n` and `last`), plus the token request `scope` list.

use http::Method;
use shoal_core::{Digest, Name, V2Route, parse_v2_path};
use shoal_registry_server::auth::Scope;
use shoal_registry_server::{Endpoint, Query};

const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::PUT,
    Method::POST,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// The first byte picks the method; the rest is the request target, `path?query`.
pub fn run(data: &[u8]) {
    let Some((method, target)) = crate::selector(data) else {
        return;
    };
    let method = &METHODS[usize::from(method) % METHODS.len()];
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if let Ok(route) = parse_v2_path(path) {
        assert!(path.starts_with("/v2"));
        check_route(path, &route);
        if let Ok(endpoint) = Endpoint::from_route(route, method) {
            assert!(!endpoint.label().is_empty());
        }
    }
    let query = Query::parse(query);
    for name in ["digest", "mount", "from", "n", "last", "scope"] {
        if let Some(value) = query.get(name) {
            let _ = Digest::parse(value);
            let _ = Name::parse(value);
            let _ = value.parse::<usize>();
        }
    }
    for scope in Scope::parse_list(query.get("scope").unwrap_or(target)) {
        assert!(!scope.kind.is_empty() && !scope.name.is_empty());
    }
}

/// Every parsed parameter is a piece of the path itself.
fn check_route(path: &str, route: &V2Route) {
    match route {
        V2Route::TagsList { name } | V2Route::UploadStart { name } => {
            assert!(path.contains(name.as_str()))
        }
        V2Route::Manifest { name, reference } => {
            assert!(path.ends_with(&format!("{name}/manifests/{reference}")))
        }
        V2Route::Blob { name, digest } => {
            assert!(path.ends_with(&format!("{name}/blobs/{digest}")))
        }
        V2Route::Upload { name, id } => {
            assert!(path.ends_with(&format!("{name}/blobs/uploads/{id}")))
        }
        V2Route::Referrers { name, digest } => {
            assert!(path.ends_with(&format!("{name}/referrers/{digest}")))
        }
        V2Route::Base | V2Route::Catalog => {}
    }
}
