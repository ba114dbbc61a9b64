//! `shoal-registry-server`: the Registry V2 server layer the proxy and the agent share. One
//! [`router`] parses every `/v2/…` request into an [`Endpoint`], dispatches it to the
//! component's [`RegistryBackend`], shapes the spec's responses (blob and manifest headers,
//! `Range`, the API version header) and turns every failure into a [`RegistryError`] body. The
//! components implement only what differs: where bytes come from and which operations they
//! serve; the rest answer 405 UNSUPPORTED from here. With an [`Auth`] ([`router_with_auth`]),
//! every request is authenticated and checked against the repository's access first.

pub mod auth;
mod backend;
mod endpoint;
mod error;
mod query;
mod responses;
mod server;

pub use auth::{Auth, AuthConfig};
pub use backend::{RegistryBackend, StoredManifest};
pub use endpoint::Endpoint;
pub use error::RegistryError;
pub use query::Query;
pub use server::{router, router_with_auth};

#[cfg(test)]
mod tests;
