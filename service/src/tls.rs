//! TLS for listeners and cluster calls: `shoal-tls` (the `tls:` config section, certificate
//! reload, mutual TLS roles), re-exported for the components. Serving HTTPS is
//! [`crate::http::serve_tls`]'s job; [`crate::http::with_access`] admits callers by role.

pub use shoal_tls::*;

#[cfg(test)]
mod tests;
