//! TLS for listeners and cluster calls: `shoal-tls` (the `tls:` config section, certificate
//! reload, mutual TLS roles), re-exported for the components. Serving HTTPS is
//! [`crate::http::serve_tls`]'s job; [`crate::http::with_access`] admits callers by role;
//! [`ComponentTls`] is what a component loads at start.

pub use shoal_tls::*;

#[cfg(test)]
mod tests;

/// A component's `tls:` section, loaded once at start (a bad file stops it there, naming the
/// field): what its listeners serve, and how it calls the other components.
#[derive(Debug, Clone, Default)]
pub struct ComponentTls {
    loaded: Option<LoadedTls>,
    /// Its listeners' TLS; `None`: plain HTTP.
    pub server: Option<ServerTls>,
}

impl ComponentTls {
    pub fn load(config: Option<&TlsConfig>) -> Result<ComponentTls, TlsError> {
        let loaded = config.map(LoadedTls::load).transpose()?;
        Ok(ComponentTls {
            server: loaded.as_ref().map(LoadedTls::server).transpose()?,
            loaded,
        })
    }

    /// A client builder for calls to components of the `servers` roles: mutual TLS with
    /// `tls.ca`, otherwise as the URLs say.
    pub fn client(&self, servers: Roles) -> reqwest::ClientBuilder {
        crate::client::cluster_builder(self.loaded.as_ref(), servers)
    }

    /// The loaded files, for parts that build their own connections (the p2p engine).
    pub fn loaded(&self) -> Option<&LoadedTls> {
        self.loaded.as_ref()
    }
}
