//! Push and pull authentication of the Registry V2 API, after the Docker Registry token spec as
//! distribution and Harbor implement it. [`Auth`] is built once from an [`AuthConfig`]
//! (htpasswd users with HTTP Basic, or bearer tokens from a token server) and asked by the
//! router before every request: who the caller is ([`Auth::authenticate`]) and whether they may
//! do what the endpoint needs ([`Auth::permits`]). A refusal is a 401 `UNAUTHORIZED` with the
//! `WWW-Authenticate` challenge that makes docker, skopeo and podman log in, or a 403 `DENIED`
//! for a caller who logged in and lacks the action.

mod htpasswd;
mod rules;
mod scope;
mod token;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use serde::Deserialize;
use shoal_core::ErrorCode;
use shoal_service::tls::FileWatch;

use crate::error::RegistryError;

pub use rules::RuleConfig;
pub use scope::{Action, Required, Scheme, Scope};
pub use token::{AccessEntry, Grant, TokenError};

use htpasswd::Htpasswd;
use rules::Rules;
use token::TokenVerifier;

/// `auth:`: how callers authenticate (exactly one of `htpasswd` and `token`) and what they may
/// do per repository.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub htpasswd: Option<HtpasswdConfig>,
    pub token: Option<TokenConfig>,
    /// With `htpasswd`: group → its users, for `@group` in the rules.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Per-repository access, first match wins (see [`RuleConfig`]).
    pub rules: Vec<RuleConfig>,
}

/// `auth.htpasswd`: users from an htpasswd file of bcrypt hashes (`htpasswd -B`), HTTP Basic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HtpasswdConfig {
    /// The file; read at start.
    pub path: PathBuf,
    /// The realm named in the Basic challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
}

fn default_realm() -> String {
    "shoal".to_owned()
}

/// `auth.token`: JWT bearer tokens from a token server (Harbor, docker_auth, distribution's
/// token spec).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The token server's URL, sent to clients in the challenge.
    pub realm: String,
    /// This registry's name: the challenge's `service` and the tokens' required `aud`.
    pub service: String,
    /// The tokens' required `iss`.
    pub issuer: String,
    /// PEM certificates whose keys may sign tokens; read at start. Exactly one of this and
    /// `jwks`.
    #[serde(default)]
    pub root_cert_bundle: Option<PathBuf>,
    /// A JSON Web Key Set file (`{"keys": [...]}`, EC or RSA keys) whose keys may sign tokens,
    /// chosen by the token's `kid` when the keys name one; read at start.
    #[serde(default)]
    pub jwks: Option<PathBuf>,
}

impl TokenConfig {
    /// The key file and its config field: the root bundle or the JWKS.
    fn keys(&self) -> Result<(&'static str, &PathBuf), AuthError> {
        match (&self.root_cert_bundle, &self.jwks) {
            (Some(bundle), None) => Ok(("auth.token.root_cert_bundle", bundle)),
            (None, Some(jwks)) => Ok(("auth.token.jwks", jwks)),
            _ => Err(AuthError::Invalid {
                field: "auth.token".to_owned(),
                reason: "set exactly one of `root_cert_bundle` and `jwks`".to_owned(),
            }),
        }
    }
}

/// Why the auth config could not be loaded; names the field.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("config field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
    #[error("config field `{field}`: reading {path}: {source}")]
    Read {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Who made a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No credentials.
    Anonymous,
    /// A user of the htpasswd file, password checked.
    User(String),
    /// A verified bearer token.
    Token(Arc<Grant>),
}

#[derive(Debug)]
enum Mode {
    Htpasswd(Arc<Htpasswd>),
    Token(TokenVerifier),
}

/// The loaded auth config: credentials, the challenge scheme and the rules.
#[derive(Debug)]
pub struct Auth {
    /// The users or signing keys, replaced when their file changes.
    mode: RwLock<Arc<Mode>>,
    scheme: Scheme,
    rules: Rules,
    /// Present when loaded from a file ([`Auth::load`]).
    reload: Option<Reload>,
}

/// The htpasswd or key file behind [`Auth::mode`], read again when it changes.
#[derive(Debug)]
struct Reload {
    config: AuthConfig,
    field: &'static str,
    path: PathBuf,
    watch: FileWatch,
}

impl Auth {
    /// Reads the htpasswd file or the root bundle `config` names and compiles the rules.
    pub fn load(config: &AuthConfig) -> Result<Auth, AuthError> {
        let read = |field, path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| AuthError::Read {
                field,
                path: path.clone(),
                source,
            })
        };
        let source = match (&config.htpasswd, &config.token) {
            (Some(htpasswd), None) => Some(("auth.htpasswd.path", &htpasswd.path)),
            (None, Some(token)) => Some(token.keys()?),
            _ => None,
        };
        let Some((field, path)) = source else {
            return Auth::from_text(config, "");
        };
        // Watched from before the read, so a change during it is seen at the next look.
        let watch = FileWatch::new([path.clone()]);
        let mut auth = Auth::from_text(config, &read(field, path)?)?;
        auth.reload = Some(Reload {
            config: config.clone(),
            field,
            path: path.clone(),
            watch,
        });
        Ok(auth)
    }

    /// The users or keys now: read again first when their file changed (looked at no more
    /// than once a second). A changed file that does not load keeps the previous contents in
    /// use, with a warning, until it changes again.
    fn mode(&self) -> Arc<Mode> {
        if let Some(reload) = &self.reload
            && reload.watch.changed()
        {
            self.reload(reload);
        }
        Arc::clone(&self.mode.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn reload(&self, reload: &Reload) {
        let loaded = std::fs::read_to_string(&reload.path)
            .map_err(|e| e.to_string())
            .and_then(|text| Self::mode_of(&reload.config, &text).map_err(|e| e.to_string()));
        match loaded {
            Ok((mode, _)) => {
                tracing::info!(file = %reload.path.display(), "auth file reloaded");
                *self.mode.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(mode);
            }
            Err(error) => tracing::warn!(
                field = reload.field,
                file = %reload.path.display(),
                %error,
                "auth file changed but does not load; keeping the previous one"
            ),
        }
    }

    /// Looks at the file now, whatever the interval: for tests.
    #[cfg(test)]
    fn check_file_now(&self) {
        if let Some(reload) = &self.reload
            && reload.watch.changed_now()
        {
            self.reload(reload);
        }
    }

    /// [`Auth::load`] with the file `config` names already read as `text`.
    fn from_text(config: &AuthConfig, text: &str) -> Result<Auth, AuthError> {
        let (mode, scheme) = Self::mode_of(config, text)?;
        Self::check_rules_fit(config, &mode)?;
        let rules = Rules::new(&config.rules, &config.groups)?;
        Ok(Auth {
            mode: RwLock::new(Arc::new(mode)),
            scheme,
            rules,
            reload: None,
        })
    }

    /// The users or keys of `text`, the file `config` names, and the challenge scheme.
    fn mode_of(config: &AuthConfig, text: &str) -> Result<(Mode, Scheme), AuthError> {
        let invalid = |field: &str, reason: String| AuthError::Invalid {
            field: field.to_owned(),
            reason,
        };
        Ok(match (&config.htpasswd, &config.token) {
            (Some(htpasswd), None) => (
                Mode::Htpasswd(Arc::new(
                    Htpasswd::parse(text).map_err(|e| invalid("auth.htpasswd.path", e))?,
                )),
                Scheme::Basic {
                    realm: htpasswd.realm.clone(),
                },
            ),
            (None, Some(token)) => {
                for (field, value) in [
                    ("auth.token.realm", &token.realm),
                    ("auth.token.service", &token.service),
                    ("auth.token.issuer", &token.issuer),
                ] {
                    if value.is_empty() {
                        return Err(invalid(field, "must not be empty".to_owned()));
                    }
                }
                let (field, _) = token.keys()?;
                let verifier = if token.jwks.is_some() {
                    TokenVerifier::from_jwks(&token.service, &token.issuer, text)
                } else {
                    TokenVerifier::new(&token.service, &token.issuer, text)
                }
                .map_err(|e| invalid(field, e))?;
                (
                    Mode::Token(verifier),
                    Scheme::Bearer {
                        realm: token.realm.clone(),
                        service: token.service.clone(),
                    },
                )
            }
            _ => {
                return Err(invalid(
                    "auth",
                    "set exactly one of `htpasswd` and `token`".to_owned(),
                ));
            }
        })
    }

    /// With tokens, the token server decides who may push: rules may only open pulls.
    fn check_rules_fit(config: &AuthConfig, mode: &Mode) -> Result<(), AuthError> {
        let invalid = |field: &str, reason: String| AuthError::Invalid {
            field: field.to_owned(),
            reason,
        };
        if matches!(mode, Mode::Token(_)) {
            if !config.groups.is_empty() {
                return Err(invalid(
                    "auth.groups",
                    "only with `auth.htpasswd`: with `auth.token` the token server decides"
                        .to_owned(),
                ));
            }
            for (i, rule) in config.rules.iter().enumerate() {
                for (name, list) in [
                    ("pull", &rule.pull),
                    ("push", &rule.push),
                    ("delete", &rule.delete),
                ] {
                    if list.is_some() {
                        return Err(invalid(
                            &format!("auth.rules[{i}].{name}"),
                            "only with `auth.htpasswd`: with `auth.token` the token's \
                             `access` claim decides"
                                .to_owned(),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Who sent `headers`: anonymous without an `Authorization` header; a 401 with the
    /// challenge for credentials that are wrong, expired or of the other scheme.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        required: &Required,
    ) -> Result<Caller, RegistryError> {
        let Some(value) = headers.get(AUTHORIZATION) else {
            return Ok(Caller::Anonymous);
        };
        let value = value.to_str().unwrap_or("");
        let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
        let credentials = credentials.trim();
        match &*self.mode() {
            Mode::Htpasswd(file) if scheme.eq_ignore_ascii_case("basic") => {
                let decoded = STANDARD
                    .decode(credentials)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok());
                if let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':'))
                    && file.check(user, password).await
                {
                    return Ok(Caller::User(user.to_owned()));
                }
                Err(self.unauthorized(required, "invalid username or password", false))
            }
            Mode::Token(verifier) if scheme.eq_ignore_ascii_case("bearer") => verifier
                .verify(credentials)
                .map(Caller::Token)
                .map_err(|e| self.unauthorized(required, &e.to_string(), true)),
            _ => Err(self.unauthorized(
                required,
                &format!("expected {} credentials", self.scheme_name()),
                false,
            )),
        }
    }

    /// Whether `caller` may do what `required` says.
    pub fn permits(&self, caller: &Caller, required: &Required) -> bool {
        match (caller, required) {
            (Caller::Anonymous, Required::Repository { name, action }) => {
                self.rules.anonymous_may(name.as_str(), *action)
            }
            (Caller::Anonymous, Required::Login | Required::Catalog) => false,
            (Caller::User(_), Required::Login | Required::Catalog) => true,
            (Caller::User(user), Required::Repository { name, action }) => {
                self.rules.user_may(user, name.as_str(), *action)
            }
            (Caller::Token(_), Required::Login) => true,
            (Caller::Token(grant), Required::Catalog) => grant.allows("registry", "catalog", "*"),
            (Caller::Token(grant), Required::Repository { name, action }) => {
                self.rules.anonymous_may(name.as_str(), *action)
                    || grant.allows("repository", name.as_str(), action.as_str())
            }
        }
    }

    /// The refusal of `required` to `caller`: a challenge for anonymous callers, who may log
    /// in; `DENIED` for one who did.
    pub fn refusal(&self, caller: &Caller, required: &Required) -> RegistryError {
        let what = match required.scope() {
            Some(scope) => format!("access to {scope}"),
            None => "access".to_owned(),
        };
        match caller {
            Caller::Anonymous => self.unauthorized(
                required,
                &format!("authentication required for {what}"),
                false,
            ),
            Caller::User(user) => RegistryError::new(
                ErrorCode::Denied,
                format!("requested {what} is denied to user {user}"),
            ),
            Caller::Token(grant) => RegistryError::new(
                ErrorCode::Denied,
                format!(
                    "requested {what} is not granted by the token{}",
                    grant
                        .subject
                        .as_deref()
                        .map(|s| format!(" of {s}"))
                        .unwrap_or_default()
                ),
            ),
        }
    }

    fn unauthorized(
        &self,
        required: &Required,
        message: &str,
        invalid_token: bool,
    ) -> RegistryError {
        let challenge = self
            .scheme
            .challenge(required.scope().as_ref(), invalid_token);
        RegistryError::new(ErrorCode::Unauthorized, message).with_challenge(challenge)
    }

    fn scheme_name(&self) -> &'static str {
        match self.scheme {
            Scheme::Basic { .. } => "Basic",
            Scheme::Bearer { .. } => "Bearer",
        }
    }
}

#[cfg(test)]
mod tests;
