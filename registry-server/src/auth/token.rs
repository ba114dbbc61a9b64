//! `auth.token`: bearer tokens of the Docker Registry token spec. A token is a JWT signed by the
//! token server with the key of one of the certificates in the root bundle, or one of the keys
//! of a JWKS (picked by `kid` when the keys have one) (ES256/384,
//! RS256/384/512, PS256/384/512), for `aud` = the service, from `iss` = the issuer, within
//! `nbf`..`exp` (60 s of clock skew allowed), and grants what its `access` claim lists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// The signature algorithms accepted: the token spec's ES256 and RS256 and their relatives.
/// HMAC is refused: a public certificate must never serve as a shared secret.
const ALGORITHMS: [Algorithm; 8] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Clock skew allowed on `exp` and `nbf`, as distribution allows.
const LEEWAY_SECS: u64 = 60;

/// Verified tokens remembered (until they expire) so a push does not check one signature per
/// request; beyond this many the memory is forgotten whole.
const VERIFIED_MAX: usize = 4096;

/// Why a token was refused; the text goes into the 401's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token signed with {0:?}, which is not accepted")]
    Algorithm(Algorithm),
    #[error("token signature matches no certificate of the root bundle")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token is for another service")]
    Audience,
    #[error("token is from another issuer")]
    Issuer,
    #[error("token lacks the `{0}` claim")]
    MissingClaim(String),
}

/// One entry of a token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub actions: Vec<String>,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Grant {
    /// The user the token was issued to.
    #[serde(default, rename = "sub")]
    pub subject: Option<String>,
    /// Defaulted here so a token without `exp` is refused by the validation, naming the claim.
    #[serde(default, rename = "exp")]
    pub expires: u64,
    #[serde(default)]
    pub access: Vec<AccessEntry>,
}

impl Grant {
    /// Whether the token grants `action` on the resource `kind:name` (`*` grants every action).
    pub fn allows(&self, kind: &str, name: &str, action: &str) -> bool {
        self.access.iter().any(|entry| {
            entry.kind == kind
                && entry.name == name
                && entry.actions.iter().any(|a| a == action || a == "*")
        })
    }
}

/// Checks tokens against the root bundle, the service and the issuer.
#[derive(Debug)]
pub(crate) struct TokenVerifier {
    service: String,
    issuer: String,
    /// Each key with its `kid` (JWKS keys may name one; bundle certificates do not).
    keys: Vec<(Option<String>, DecodingKey)>,
    /// sha256(token) → its grant.
    verified: Mutex<HashMap<[u8; 32], Arc<Grant>>>,
}

impl TokenVerifier {
    /// Reads the public key of every certificate in `bundle_pem`; an empty bundle or a
    /// certificate whose key is neither EC nor RSA is an error.
    pub(crate) fn new(service: &str, issuer: &str, bundle_pem: &str) -> Result<Self, String> {
        let blocks = pem::parse_many(bundle_pem).map_err(|e| format!("not PEM: {e}"))?;
        let mut keys = Vec::new();
        for (i, block) in blocks.iter().enumerate() {
            if block.tag() != "CERTIFICATE" {
                continue;
            }
            let one = pem::encode(block);
            let key = DecodingKey::from_ec_pem(one.as_bytes())
                .or_else(|_| DecodingKey::from_rsa_pem(one.as_bytes()))
                .map_err(|e| format!("certificate {}: no EC or RSA public key: {e}", i + 1))?;
            keys.push((None, key));
        }
        if keys.is_empty() {
            return Err("no CERTIFICATE in the bundle".to_owned());
        }
        Ok(Self::with_keys(service, issuer, keys))
    }

    /// Reads every key of the JSON Web Key Set `jwks`; an empty set, or a key that is neither
    /// EC nor RSA, is an error (an HMAC key must never verify tokens).
    pub(crate) fn from_jwks(service: &str, issuer: &str, jwks: &str) -> Result<Self, String> {
        let set: JwkSet = serde_json::from_str(jwks).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            if !matches!(
                jwk.algorithm,
                AlgorithmParameters::EllipticCurve(_) | AlgorithmParameters::RSA(_)
            ) {
                return Err(format!("key {}: neither EC nor RSA", i + 1));
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {}: {e}", i + 1))?;
            keys.push((jwk.common.key_id.clone(), key));
        }
        if keys.is_empty() {
            return Err("the key set holds no key".to_owned());
        }
        Ok(Self::with_keys(service, issuer, keys))
    }

    fn with_keys(service: &str, issuer: &str, keys: Vec<(Option<String>, DecodingKey)>) -> Self {
        TokenVerifier {
            service: service.to_owned(),
            issuer: issuer.to_owned(),
            keys,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// The grant of `token` if it is valid now.
    pub(crate) fn verify(&self, token: &str) -> Result<Arc<Grant>, TokenError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(grant) = self.remembered(&key) {
            return Ok(grant);
        }
        let grant = Arc::new(self.verify_uncached(token)?);
        let mut memory = self.verified.lock().expect("token memory lock");
        if memory.len() >= VERIFIED_MAX {
            memory.clear();
        }
        memory.insert(key, grant.clone());
        Ok(grant)
    }

    fn remembered(&self, key: &[u8; 32]) -> Option<Arc<Grant>> {
        let memory = self.verified.lock().expect("token memory lock");
        let grant = memory.get(key)?;
        // A remembered token still expires on time (without the leeway: it was valid once).
        (jsonwebtoken::get_current_timestamp() < grant.expires).then(|| grant.clone())
    }

    fn verify_uncached(&self, token: &str) -> Result<Grant, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| malformed(&e))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(TokenError::Algorithm(header.alg));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.service]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let family = header.alg.family();
        let mut refused = TokenError::Signature;
        // A token naming a `kid` is checked against that key alone when the keys name theirs.
        let named = header
            .kid
            .as_deref()
            .filter(|kid| self.keys.iter().any(|(id, _)| id.as_deref() == Some(kid)));
        let candidates = self
            .keys
            .iter()
            .filter(|(id, key)| {
                key.family() == family && (named.is_none() || id.as_deref() == named)
            })
            .map(|(_, key)| key);
        for key in candidates {
            match jsonwebtoken::decode::<Grant>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => match e.kind() {
                    // Another certificate of the bundle may have signed it.
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidAlgorithm => refused = TokenError::Signature,
                    ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                    ErrorKind::ImmatureSignature => return Err(TokenError::NotYetValid),
                    ErrorKind::InvalidAudience => return Err(TokenError::Audience),
                    ErrorKind::InvalidIssuer => return Err(TokenError::Issuer),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        return Err(TokenError::MissingClaim(claim.clone()));
                    }
                    _ => return Err(malformed(&e)),
                },
            }
        }
        Err(refused)
    }
}

fn malformed(error: &jsonwebtoken::errors::Error) -> TokenError {
    TokenError::Malformed(error.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};

    use super::*;

    pub(crate) const SERVICE: &str = "shoal-test";
    pub(crate) const ISSUER: &str = "test-issuer";

    /// A token server's signing key and its self-signed certificate (ES256).
    pub(crate) struct Issuer {
        pub(crate) cert_pem: String,
        key: EncodingKey,
    }

    impl Issuer {
        pub(crate) fn new() -> Issuer {
            let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let cert = rcgen::CertificateParams::new(vec![ISSUER.to_owned()])
                .unwrap()
                .self_signed(&key_pair)
                .unwrap();
            Issuer {
                cert_pem: cert.pem(),
                key: EncodingKey::from_ec_pem(key_pair.serialize_pem().as_bytes()).unwrap(),
            }
        }

        /// A token with `overrides` merged over valid claims granting `access`.
        pub(crate) fn token(&self, access: Value, overrides: Value) -> String {
            let now = jsonwebtoken::get_current_timestamp();
            let mut claims = json!({
                "iss": ISSUER, "sub": "alice", "aud": SERVICE, "exp": now + 300,
                "nbf": now - 10, "iat": now, "access": access,
            });
            for (k, v) in overrides.as_object().unwrap() {
                if v.is_null() {
                    claims.as_object_mut().unwrap().remove(k);
                } else {
                    claims[k] = v.clone();
                }
            }
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key).unwrap()
        }
    }

    fn pull(name: &str) -> Value {
        json!([{"type": "repository", "name": name, "actions": ["pull"]}])
    }

    #[test]
    fn a_valid_token_grants_its_access() {
        let issuer = Issuer::new();
        let verifier = TokenVerifier::new(SERVICE, ISSUER, &issuer.cert_pem).unwrap();
        let grant = verifier
            .verify(&issuer.token(pull("team/app"), json!({})))
            .unwrap();
        assert_eq!(grant.subject.as_deref(), Some("alice"));
        assert!(grant.allows("repository", "team/app", "pull"));
        assert!(!grant.allows("repository", "team/app", "push"));
        assert!(!grant.allows("repository", "team/other", "pull"));

        let all = json!([{"type": "repository", "name": "team/app", "actions": ["*"]},
                         {"type": "registry", "name": "catalog", "actions": ["*"]}]);
        let grant = verifier.verify(&issuer.token(all, json!({}))).unwrap();
        assert!(grant.allows("repository", "team/app", "delete"));
        assert!(grant.allows("registry", "catalog", "*"));
        // An audience list naming the service is accepted too; no access claim grants nothing.
        let grant = verifier
            .verify(&issuer.token(
                json!(null),
                json!({"aud": ["other", SERVICE], "access": null}),
            ))
            .unwrap();
        assert!(grant.access.is_empty());
    }

    #[test]
    fn invalid_tokens_are_refused_with_their_reason() {
        let issuer = Issuer::new();
        let verifier = TokenVerifier::new(SERVICE, ISSUER, &issuer.cert_pem).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let access = pull("team/app");
        let cases = [
            (json!({"exp": now - 3600}), TokenError::Expired),
            (json!({"nbf": now + 3600}), TokenError::NotYetValid),
            (json!({"aud": "another-service"}), TokenError::Audience),
            (json!({"iss": "another-issuer"}), TokenError::Issuer),
            (
                json!({"exp": null}),
                TokenError::MissingClaim("exp".to_owned()),
            ),
            (
                json!({"aud": null}),
                TokenError::MissingClaim("aud".to_owned()),
            ),
        ];
        for (overrides, expected) in cases {
            let token = issuer.token(access.clone(), overrides.clone());
            assert_eq!(
                verifier.verify(&token).unwrap_err(),
                expected,
                "{overrides}"
            );
        }

        // Signed by a key the bundle does not hold.
        let stranger = Issuer::new();
        let token = stranger.token(access.clone(), json!({}));
        assert_eq!(verifier.verify(&token).unwrap_err(), TokenError::Signature);

        // A payload altered after signing.
        let token = issuer.token(access.clone(), json!({}));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = issuer.token(
            json!([{"type": "repository", "name": "team/app",
                                          "actions": ["push"]}]),
            json!({}),
        );
        parts[1] = forged.split('.').nth(1).unwrap();
        assert_eq!(
            verifier.verify(&parts.join(".")).unwrap_err(),
            TokenError::Signature
        );

        // HMAC with the certificate as the secret, and garbage.
        let hmac = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"iss": ISSUER, "aud": SERVICE, "exp": now + 300}),
            &EncodingKey::from_secret(issuer.cert_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            verifier.verify(&hmac).unwrap_err(),
            TokenError::Algorithm(Algorithm::HS256)
        );
        assert!(matches!(
            verifier.verify("not.a.token").unwrap_err(),
            TokenError::Malformed(_)
        ));
    }

    #[test]
    fn any_certificate_of_the_bundle_may_sign() {
        let (first, second) = (Issuer::new(), Issuer::new());
        let bundle = format!("{}\n{}", first.cert_pem, second.cert_pem);
        let verifier = TokenVerifier::new(SERVICE, ISSUER, &bundle).unwrap();
        for issuer in [&first, &second] {
            let token = issuer.token(pull("a"), json!({}));
            assert!(verifier.verify(&token).is_ok());
        }
    }

    #[test]
    fn rs256_tokens_are_accepted() {
        // A 2048-bit RSA key and its self-signed certificate, made once with openssl for this
        // test (rcgen over ring cannot generate RSA keys).
        let key = include_str!("testdata/rsa-key.pem");
        let cert = include_str!("testdata/rsa-cert.pem");
        let verifier = TokenVerifier::new(SERVICE, ISSUER, cert).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let claims = json!({"iss": ISSUER, "aud": SERVICE, "exp": now + 300, "access": pull("a")});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(key.as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(
            verifier
                .verify(&token)
                .unwrap()
                .allows("repository", "a", "pull")
        );
    }

    /// `issuer`'s public key as a JWKS entry named `kid`.
    fn jwk(issuer: &Issuer, kid: &str) -> Value {
        let mut jwk = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&issuer.key, Algorithm::ES256).unwrap(),
        )
        .unwrap();
        jwk["kid"] = json!(kid);
        jwk
    }

    /// `issuer`'s token with `kid` in its header.
    fn token_with_kid(issuer: &Issuer, kid: &str) -> String {
        let claims: Value = {
            let token = issuer.token(pull("a"), json!({}));
            let payload = token.split('.').nth(1).unwrap();
            serde_json::from_slice(
                &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                    .unwrap(),
            )
            .unwrap()
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims, &issuer.key).unwrap()
    }

    #[test]
    fn jwks_keys_verify_tokens_chosen_by_kid() {
        let (first, second) = (Issuer::new(), Issuer::new());
        let jwks = json!({"keys": [jwk(&first, "one"), jwk(&second, "two")]}).to_string();
        let verifier = TokenVerifier::from_jwks(SERVICE, ISSUER, &jwks).unwrap();
        for (issuer, kid) in [(&first, "one"), (&second, "two")] {
            let grant = verifier.verify(&token_with_kid(issuer, kid)).unwrap();
            assert!(grant.allows("repository", "a", "pull"));
        }
        // Without a kid, any key of the set may have signed it.
        assert!(verifier.verify(&second.token(pull("a"), json!({}))).is_ok());
        // A kid naming another key of the set than the signer's is refused.
        assert_eq!(
            verifier.verify(&token_with_kid(&first, "two")).unwrap_err(),
            TokenError::Signature
        );
        let stranger = Issuer::new();
        assert_eq!(
            verifier
                .verify(&token_with_kid(&stranger, "one"))
                .unwrap_err(),
            TokenError::Signature
        );
    }

    #[test]
    fn key_sets_without_usable_keys_are_refused() {
        assert!(TokenVerifier::from_jwks(SERVICE, ISSUER, r#"{"keys": []}"#).is_err());
        assert!(TokenVerifier::from_jwks(SERVICE, ISSUER, "garbage").is_err());
        let hmac = r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]}"#;
        let error = TokenVerifier::from_jwks(SERVICE, ISSUER, hmac).unwrap_err();
        assert!(error.contains("neither EC nor RSA"), "{error}");
    }

    #[test]
    fn bundles_without_certificates_are_refused() {
        assert!(TokenVerifier::new(SERVICE, ISSUER, "").is_err());
        assert!(TokenVerifier::new(SERVICE, ISSUER, "garbage").is_err());
    }
}
