//! Paginated lists: a repository's `tags/list` and the registry's `_catalog`, page by page
//! through `Link: <…>; rel="next"`.

use reqwest::header::LINK;
use reqwest::{Method, StatusCode, Url};
use shoal_core::Name;

use crate::RegistryClient;
use crate::auth::Scope;
use crate::error::{Error, unexpected};

/// Page size asked of `tags/list` and `_catalog` (the CNCF registry's default maximum).
const PAGE_SIZE: usize = 1000;

impl RegistryClient {
    /// Every tag of `repo`; `None` when the registry does not know the repository.
    pub async fn tags(&self, repo: &Name) -> Result<Option<Vec<String>>, Error> {
        let first = self.url(&format!("{repo}/tags/list?n={PAGE_SIZE}"))?;
        self.paginate(&Scope::repository(repo.as_str(), "pull"), first, "tags")
            .await
    }

    /// Every repository of the registry (empty when it serves no catalog).
    pub async fn catalog(&self) -> Result<Vec<String>, Error> {
        let first = self.url(&format!("_catalog?n={PAGE_SIZE}"))?;
        Ok(self
            .paginate(&Scope::catalog(), first, "repositories")
            .await?
            .unwrap_or_default())
    }

    /// Every entry of field `field` over all pages; `None` on 404.
    async fn paginate(
        &self,
        scope: &Scope,
        first: Url,
        field: &str,
    ) -> Result<Option<Vec<String>>, Error> {
        let mut entries = Vec::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            let response = self.send(Method::GET, &url, scope, |r| r).await?;
            match response.status() {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => return Ok(None),
                _ => return Err(unexpected(Method::GET, &url, response).await),
            }
            next = response
                .headers()
                .get_all(LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(next_link)
                .map(|target| {
                    url.join(&target).map_err(|e| Error::BadResponse {
                        context: format!("GET {url}"),
                        reason: format!("Link target {target:?}: {e}"),
                    })
                })
                .transpose()?;
            let page: serde_json::Value =
                response.json().await.map_err(|source| Error::Transport {
                    method: Method::GET,
                    url: url.to_string(),
                    source,
                })?;
            if let Some(items) = page.get(field).and_then(|v| v.as_array()) {
                entries.extend(items.iter().filter_map(|v| v.as_str().map(str::to_owned)));
            }
        }
        Ok(Some(entries))
    }
}

/// The target of `rel="next"` in a `Link` header.
fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|link| {
        let (target, params) = link.split_once(';')?;
        params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"))
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_are_found_among_others() {
        assert_eq!(
            next_link(r#"</v2/_catalog?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/_catalog?last=b&n=2")
        );
        assert_eq!(
            next_link(r#"<https://x/prev>; rel="prev", <https://x/next>; rel="next""#).as_deref(),
            Some("https://x/next")
        );
        assert_eq!(next_link(r#"<https://x/prev>; rel="prev""#), None);
    }
}
