//! The Docker Registry token spec's vocabulary: the actions an endpoint needs, scopes
//! (`repository:team/app:pull,push`) and the `WWW-Authenticate` challenge a 401 carries, which
//! tells docker, skopeo and podman how to log in and which scope to ask a token for.

use std::fmt;

use shoal_core::Name;

use crate::endpoint::Endpoint;

/// What a request does to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
}

/// One scope of a token request or an `access` claim: a resource type (`repository`,
/// `registry`), its name and the actions asked for or granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Scope {
    /// Parses `TYPE:NAME:ACTION[,ACTION…]`. The name may itself hold colons (a registry host
    /// with a port), so the type ends at the first colon and the actions start after the last.
    pub fn parse(text: &str) -> Option<Scope> {
        let (kind, rest) = text.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() {
            return None;
        }
        let actions = actions
            .split(',')
            .filter(|action| !action.is_empty())
            .map(str::to_owned)
            .collect();
        Some(Scope {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions,
        })
    }

    /// Parses a token request's `scope` parameter: scopes separated by spaces.
    pub fn parse_list(text: &str) -> Vec<Scope> {
        text.split(' ').filter_map(Scope::parse).collect()
    }

    fn repository(name: &Name, actions: &[Action]) -> Scope {
        Scope {
            kind: "repository".to_owned(),
            name: name.to_string(),
            actions: actions.iter().map(|a| a.as_str().to_owned()).collect(),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// The access a request needs before it reaches the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Required {
    /// `/v2/`: any valid credentials (how clients check a login).
    Login,
    /// `/v2/_catalog`: the token spec's `registry:catalog:*`.
    Catalog,
    /// An action on one repository.
    Repository { name: Name, action: Action },
}

impl Required {
    /// What `endpoint` needs, as distribution decides it: reads pull, uploads and manifest
    /// puts push, manifest deletes delete.
    pub fn of(endpoint: &Endpoint) -> Required {
        let (name, action) = match endpoint {
            Endpoint::Base => return Required::Login,
            Endpoint::Catalog => return Required::Catalog,
            Endpoint::ListTags { name }
            | Endpoint::GetManifest { name, .. }
            | Endpoint::HeadManifest { name, .. }
            | Endpoint::GetBlob { name, .. }
            | Endpoint::HeadBlob { name, .. }
            | Endpoint::Referrers { name, .. } => (name, Action::Pull),
            Endpoint::PutManifest { name, .. }
            | Endpoint::StartUpload { name }
            | Endpoint::PatchUpload { name, .. }
            | Endpoint::CommitUpload { name, .. }
            | Endpoint::UploadStatus { name, .. }
            | Endpoint::CancelUpload { name, .. } => (name, Action::Push),
            Endpoint::DeleteManifest { name, .. } | Endpoint::DeleteBlob { name, .. } => {
                (name, Action::Delete)
            }
        };
        Required::Repository {
            name: name.clone(),
            action,
        }
    }

    /// The scope a client should ask a token for. A push asks `pull,push`, as docker and
    /// distribution do: a client that pushes also reads the repository (blob checks, mounts).
    pub fn scope(&self) -> Option<Scope> {
        match self {
            Required::Login => None,
            Required::Catalog => Some(Scope {
                kind: "registry".to_owned(),
                name: "catalog".to_owned(),
                actions: vec!["*".to_owned()],
            }),
            Required::Repository { name, action } => Some(match action {
                Action::Push => Scope::repository(name, &[Action::Pull, Action::Push]),
                other => Scope::repository(name, &[*other]),
            }),
        }
    }
}

/// How the registry wants callers to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// HTTP Basic against the htpasswd file.
    Basic { realm: String },
    /// Bearer tokens from the token server at `realm`, issued for `service`.
    Bearer { realm: String, service: String },
}

impl Scheme {
    /// The `WWW-Authenticate` value of a 401: `Basic realm="…"`, or
    /// `Bearer realm="…",service="…",scope="…"` (RFC 6750), with `error="invalid_token"` when
    /// the token sent was refused.
    pub fn challenge(&self, scope: Option<&Scope>, invalid_token: bool) -> String {
        match self {
            Scheme::Basic { realm } => format!("Basic realm={}", quote(realm)),
            Scheme::Bearer { realm, service } => {
                let mut text = format!("Bearer realm={},service={}", quote(realm), quote(service));
                if let Some(scope) = scope {
                    text.push_str(&format!(",scope={}", quote(&scope.to_string())));
                }
                if invalid_token {
                    text.push_str(",error=\"invalid_token\"");
                }
                text
            }
        }
    }
}

/// An RFC 9110 quoted string.
fn quote(value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use shoal_core::{Digest, Reference, Tag};

    use super::*;

    fn name(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    #[test]
    fn scopes_parse_and_print_back() {
        let scope = Scope::parse("repository:team/app:pull,push").unwrap();
        assert_eq!(scope.kind, "repository");
        assert_eq!(scope.name, "team/app");
        assert_eq!(scope.actions, ["pull", "push"]);
        assert_eq!(scope.to_string(), "repository:team/app:pull,push");

        // A name with a port keeps its colon; the actions start after the last one.
        let scope = Scope::parse("repository:localhost:5000/app:pull").unwrap();
        assert_eq!(scope.name, "localhost:5000/app");
        assert_eq!(scope.actions, ["pull"]);

        let scope = Scope::parse("registry:catalog:*").unwrap();
        assert_eq!(
            (scope.kind.as_str(), scope.actions),
            ("registry", vec!["*".to_owned()])
        );
        assert_eq!(
            Scope::parse("repository:app:").unwrap().actions,
            Vec::<String>::new()
        );
    }

    #[test]
    fn malformed_scopes_are_none() {
        for text in [
            "",
            "repository",
            "repository:app",
            ":app:pull",
            "repository::pull",
        ] {
            assert_eq!(Scope::parse(text), None, "{text:?}");
        }
        let list = Scope::parse_list("repository:a:pull  repository:b:pull,push garbage");
        let names: Vec<_> = list.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn endpoints_need_the_actions_distribution_asks_for() {
        let app = name("team/app");
        let tag = Reference::Tag(Tag::parse("v1").unwrap());
        let digest = Digest::of(b"x");
        let cases = [
            (Endpoint::Base, None),
            (Endpoint::Catalog, Some("registry:catalog:*")),
            (
                Endpoint::GetManifest {
                    name: app.clone(),
                    reference: tag.clone(),
                },
                Some("repository:team/app:pull"),
            ),
            (
                Endpoint::HeadBlob {
                    name: app.clone(),
                    digest,
                },
                Some("repository:team/app:pull"),
            ),
            (
                Endpoint::StartUpload { name: app.clone() },
                Some("repository:team/app:pull,push"),
            ),
            (
                Endpoint::PutManifest {
                    name: app.clone(),
                    reference: tag.clone(),
                },
                Some("repository:team/app:pull,push"),
            ),
            (
                Endpoint::DeleteManifest {
                    name: app,
                    reference: tag,
                },
                Some("repository:team/app:delete"),
            ),
        ];
        for (endpoint, scope) in cases {
            let required = Required::of(&endpoint);
            assert_eq!(
                required.scope().map(|s| s.to_string()).as_deref(),
                scope,
                "{endpoint:?}"
            );
        }
    }

    #[test]
    fn challenges_carry_realm_service_and_scope() {
        let basic = Scheme::Basic {
            realm: "shoal".to_owned(),
        };
        assert_eq!(basic.challenge(None, false), "Basic realm=\"shoal\"");

        let bearer = Scheme::Bearer {
            realm: "https://auth.example.com/token".to_owned(),
            service: "shoal-registry".to_owned(),
        };
        assert_eq!(
            bearer.challenge(None, false),
            "Bearer realm=\"https://auth.example.com/token\",service=\"shoal-registry\""
        );
        let scope = Required::Repository {
            name: name("team/app"),
            action: Action::Push,
        }
        .scope();
        assert_eq!(
            bearer.challenge(scope.as_ref(), true),
            "Bearer realm=\"https://auth.example.com/token\",service=\"shoal-registry\",\
             scope=\"repository:team/app:pull,push\",error=\"invalid_token\""
        );
        let odd = Scheme::Basic {
            realm: "a \"quoted\" \\ realm".to_owned(),
        };
        assert_eq!(
            odd.challenge(None, false),
            "Basic realm=\"a \\\"quoted\\\" \\\\ realm\""
        );
    }
}
