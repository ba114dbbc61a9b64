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
    config: Option<TlsConfig>,
    /// Its listeners' TLS; `None`: plain HTTP.
    pub server: Option<ServerTls>,
}

impl ComponentTls {
    pub fn load(config: Option<&TlsConfig>) -> Result<ComponentTls, TlsError> {
        Ok(ComponentTls {
            server: config.map(TlsConfig::server).transpose()?,
            config: config.cloned(),
        })
    }

    /// A client builder for calls to components of the `servers` roles: mutual TLS with
    /// `tls.ca`, otherwise as the URLs say.
    pub fn client(&self, servers: Roles) -> Result<reqwest::ClientBuilder, TlsError> {
        crate::client::cluster_builder(self.config.as_ref(), servers)
    }

    /// The config, for parts that build their own connections (the p2p engine).
    pub fn config(&self) -> Option<&TlsConfig> {
        self.config.as_ref()
    }
}
