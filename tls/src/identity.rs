//! Who a mutual-TLS peer is: the component [`Role`]s its certificate names, and what an
//! endpoint makes of a caller ([`Caller`]).

use std::collections::BTreeMap;
use std::fmt;

use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Default identities are SPIFFE-style URIs in this trust domain: `spiffe://shoal/origin`.
const DEFAULT_PREFIX: &str = "spiffe://shoal/";

/// A Shoal component, as named by a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Proxy,
    Origin,
    BuildIndex,
    Tracker,
    Agent,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Proxy,
        Role::Origin,
        Role::BuildIndex,
        Role::Tracker,
        Role::Agent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Proxy => "proxy",
            Role::Origin => "origin",
            Role::BuildIndex => "build-index",
            Role::Tracker => "tracker",
            Role::Agent => "agent",
        }
    }

    /// The SAN URI a certificate for this role carries by default: `spiffe://shoal/<role>`.
    pub fn default_uri(self) -> String {
        format!("{DEFAULT_PREFIX}{}", self.as_str())
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of roles.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    pub const NONE: Roles = Roles(0);
    /// Every component role: any certificate naming one of them.
    pub const ANY: Roles = Roles(0b1_1111);

    pub const fn of(roles: &[Role]) -> Roles {
        let mut bits = 0;
        let mut i = 0;
        while i < roles.len() {
            bits |= 1 << (roles[i] as u8);
            i += 1;
        }
        Roles(bits)
    }

    pub fn insert(&mut self, role: Role) {
        self.0 |= role.bit();
    }

    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    pub fn intersects(self, other: Roles) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL
            .into_iter()
            .filter(move |role| self.contains(*role))
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.iter().map(Role::as_str).collect();
        f.write_str(&names.join(", "))
    }
}

/// Maps a certificate's subject alternative names to roles: `spiffe://shoal/<role>` URIs, plus
/// the names listed in `tls.identities` (a SAN URI or DNS name → role), for certificates issued
/// by an existing PKI (`spiffe://cluster.local/ns/shoal/sa/agent: agent`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identities {
    extra: BTreeMap<String, Role>,
}

impl Identities {
    pub fn new(extra: BTreeMap<String, Role>) -> Identities {
        Identities { extra }
    }

    /// The roles `cert` (DER) names; none when it cannot be parsed or names no role.
    pub fn roles_of(&self, cert: &CertificateDer<'_>) -> Roles {
        let mut roles = Roles::NONE;
        let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
            return roles;
        };
        let Ok(Some(names)) = parsed.subject_alternative_name() else {
            return roles;
        };
        for name in &names.value.general_names {
            let text = match name {
                GeneralName::URI(uri) => *uri,
                GeneralName::DNSName(dns) => *dns,
                _ => continue,
            };
            if let Some(role) = self.role_of_name(text) {
                roles.insert(role);
            }
        }
        roles
    }

    fn role_of_name(&self, name: &str) -> Option<Role> {
        if let Some(role) = self.extra.get(name) {
            return Some(*role);
        }
        let suffix = name.strip_prefix(DEFAULT_PREFIX)?;
        Role::ALL.into_iter().find(|role| role.as_str() == suffix)
    }
}

/// What a listener knows of the client behind a request (a request extension, set by the
/// server for every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The listener does not check client certificates (no `tls.ca`): every caller is admitted,
    /// as on a cluster without mutual TLS.
    Unchecked,
    /// Mutual TLS is on and the client presented no certificate.
    Anonymous,
    /// The client's certificate chains to the cluster CA and names these roles (possibly none).
    Verified(Roles),
}

impl Caller {
    /// Whether an endpoint open to `roles` admits this caller.
    pub fn admitted(self, roles: Roles) -> bool {
        match self {
            Caller::Unchecked => true,
            Caller::Anonymous => false,
            Caller::Verified(have) => have.intersects(roles),
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Unchecked => f.write_str("unchecked"),
            Caller::Anonymous => f.write_str("no client certificate"),
            Caller::Verified(roles) if roles.is_empty() => {
                f.write_str("a certificate naming no Shoal role")
            }
            Caller::Verified(roles) => write!(f, "role {roles}"),
        }
    }
}
