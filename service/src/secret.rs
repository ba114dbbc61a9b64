//! The shared secret that guards operator endpoints (the proxy's preheat webhook and API, an
//! agent's preheat): sent in one header, bare or as `Bearer <secret>`, and compared in constant
//! time. One check, so every endpoint accepts exactly the same forms.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};

/// A configured secret and the header that carries it.
#[derive(Clone)]
pub struct SharedSecret {
    header: HeaderName,
    secret: String,
}

/// A request without the secret (or with another value).
#[derive(Debug, thiserror::Error)]
#[error("missing or wrong secret in the {header} header")]
pub struct WrongSecret {
    pub header: HeaderName,
}

impl SharedSecret {
    /// `None` when `secret` is empty (nothing configured); an error when `header` is not a
    /// header name.
    pub fn new(header: &str, secret: &str) -> Result<Option<SharedSecret>, http::Error> {
        let header = HeaderName::from_bytes(header.as_bytes())?;
        Ok((!secret.is_empty()).then(|| SharedSecret {
            header,
            secret: secret.to_owned(),
        }))
    }

    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The header value a caller sends: `Bearer <secret>`.
    pub fn bearer(&self) -> Result<HeaderValue, http::Error> {
        Ok(HeaderValue::try_from(format!("Bearer {}", self.secret))?)
    }

    /// Whether `headers` carry the secret.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), WrongSecret> {
        let sent = headers
            .get(&self.header)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        let bare = sent
            .strip_prefix(b"Bearer ")
            .or_else(|| sent.strip_prefix(b"bearer "))
            .unwrap_or(sent);
        if same_secret(bare, self.secret.as_bytes()) {
            Ok(())
        } else {
            Err(WrongSecret {
                header: self.header.clone(),
            })
        }
    }
}

/// Never prints the secret.
impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSecret")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right.
fn same_secret(sent: &[u8], secret: &[u8]) -> bool {
    sent.len() == secret.len()
        && sent
            .iter()
            .zip(secret)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_secret_is_accepted_bare_or_as_a_bearer_token_in_its_header_only() {
        assert!(SharedSecret::new("Authorization", "").unwrap().is_none());
        assert!(SharedSecret::new("not a header", "s").is_err());
        let secret = SharedSecret::new("X-Shoal-Secret", "s3cret")
            .unwrap()
            .unwrap();
        for accepted in ["s3cret", "Bearer s3cret", "bearer s3cret"] {
            assert!(
                secret
                    .check(&headers(&[("x-shoal-secret", accepted)]))
                    .is_ok()
            );
        }
        for refused in [
            vec![],
            vec![("x-shoal-secret", "wrong")],
            vec![("x-shoal-secret", "s3cre")],
            vec![("x-shoal-secret", "s3cret2")],
            vec![("authorization", "Bearer s3cret")],
        ] {
            let error = secret.check(&headers(&refused)).unwrap_err();
            assert_eq!(
                error.to_string(),
                "missing or wrong secret in the x-shoal-secret header"
            );
        }
        assert_eq!(secret.bearer().unwrap(), "Bearer s3cret");
        assert!(!format!("{secret:?}").contains("s3cret"));
    }
}
