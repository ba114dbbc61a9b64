//! `validation.manifests.urls`: which external URLs a pushed manifest's non-distributable layers
//! may name, as the distribution registry's setting of the same name. Such layers (a descriptor
//! with `urls`, or a `…nondistributable…` / `…rootfs.foreign…` media type) need not be pushed:
//! clients fetch them from those URLs. Each URL must be `http` or `https` without a fragment,
//! match an `allow` pattern and no `deny` pattern (unanchored regexes, as in distribution); with
//! no `allow` pattern, a manifest naming any URL is refused.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Deserializer};
use serde_json::json;
use shoal_core::{ErrorCode, Manifest};
use shoal_registry_server::RegistryError;

/// `validation:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    pub manifests: ManifestValidation,
}

/// `validation.manifests:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManifestValidation {
    pub urls: UrlPolicy,
}

/// `validation.manifests.urls:`: `allow` and `deny` regex lists.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UrlPolicy {
    pub allow: Vec<Pattern>,
    pub deny: Vec<Pattern>,
}

/// A regex compiled when the config is read, so a bad one stops the proxy naming its field.
#[derive(Clone)]
pub struct Pattern(Regex);

impl Pattern {
    pub fn new(pattern: &str) -> Result<Pattern, regex::Error> {
        Regex::new(pattern).map(Pattern)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_str(), f)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pattern = String::deserialize(deserializer)?;
        Pattern::new(&pattern).map_err(serde::de::Error::custom)
    }
}

impl UrlPolicy {
    /// Refuses a manifest one of whose non-distributable layers names a URL the policy does not
    /// allow (MANIFEST_INVALID, the URL in the detail).
    pub fn check(&self, manifest: &Manifest) -> Result<(), RegistryError> {
        let layers = manifest.non_distributable_layers();
        for (layer, url) in layers.flat_map(|l| l.urls.iter().map(move |url| (l, url))) {
            if let Err(reason) = self.allows(url) {
                return Err(RegistryError::new(
                    ErrorCode::ManifestInvalid,
                    format!("layer {} names URL {url:?}: {reason}", layer.digest),
                )
                .with_detail(json!({ "digest": layer.digest.to_string(), "url": url })));
            }
        }
        Ok(())
    }

    fn allows(&self, url: &str) -> Result<(), &'static str> {
        let parsed = reqwest::Url::parse(url).map_err(|_| "not a URL")?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.fragment().is_some() {
            return Err("only http and https URLs without a fragment are allowed");
        }
        if !self.allow.iter().any(|p| p.0.is_match(url)) {
            return Err("no pattern of validation.manifests.urls.allow matches it");
        }
        if self.deny.iter().any(|p| p.0.is_match(url)) {
            return Err("a pattern of validation.manifests.urls.deny matches it");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use shoal_core::Digest;

    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> UrlPolicy {
        let patterns = |list: &[&str]| list.iter().map(|p| Pattern::new(p).unwrap()).collect();
        UrlPolicy {
            allow: patterns(allow),
            deny: patterns(deny),
        }
    }

    fn manifest_with_layer(media_type: &str, urls: &[&str]) -> Manifest {
        let config = Digest::of(b"config");
        let layer = Digest::of(b"layer");
        let urls = serde_json::to_string(urls).unwrap();
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"{config}"}},
            "layers":[{{"mediaType":"{media_type}","size":5,"digest":"{layer}","urls":{urls}}}]}}"#
        );
        Manifest::parse(body.as_bytes(), None).unwrap()
    }

    const FOREIGN: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

    #[test]
    fn urls_need_an_allow_pattern_and_no_deny_pattern() {
        let manifest = manifest_with_layer(FOREIGN, &["https://mirror.example/layer"]);
        let refused = UrlPolicy::default().check(&manifest).unwrap_err();
        assert_eq!(refused.code(), ErrorCode::ManifestInvalid);
        assert!(refused.to_string().contains("allow"), "{refused}");
        assert!(
            policy(&["^https://mirror\\.example/"], &[])
                .check(&manifest)
                .is_ok()
        );
        let denied = policy(&["^https://"], &["mirror"]).check(&manifest);
        assert!(denied.unwrap_err().to_string().contains("deny"));
    }

    #[test]
    fn only_http_urls_without_fragments_pass() {
        let open = policy(&[".*"], &[]);
        for url in [
            "ftp://mirror.example/x",
            "https://m.example/x#frag",
            "not a url",
        ] {
            let manifest = manifest_with_layer(FOREIGN, &[url]);
            assert!(open.check(&manifest).is_err(), "{url}");
        }
    }

    #[test]
    fn a_non_distributable_layer_without_urls_and_a_plain_layer_need_no_policy() {
        for media_type in [FOREIGN, "application/vnd.oci.image.layer.v1.tar"] {
            let manifest = manifest_with_layer(media_type, &[]);
            assert!(
                UrlPolicy::default().check(&manifest).is_ok(),
                "{media_type}"
            );
        }
    }

    #[test]
    fn bad_patterns_are_refused_when_the_config_is_read() {
        let parsed: Result<UrlPolicy, _> = serde_json::from_str(r#"{"allow":["("]}"#);
        assert!(parsed.is_err());
        let parsed: UrlPolicy = serde_json::from_str(r#"{"allow":["^https://"]}"#).unwrap();
        assert_eq!(parsed, policy(&["^https://"], &[]));
    }
}
