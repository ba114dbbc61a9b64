//! `?n=&last=` paging of the tag and catalog listings, and the `Link` header that points the
//! client at the next page.

use shoal_api::Page;
use shoal_api::wire::encode;
use shoal_core::ErrorCode;
use shoal_registry_server::{Query, RegistryError};

/// What page the client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageRequest {
    /// At most this many entries; the build-index's default when absent.
    pub n: Option<usize>,
    /// Entries sorting after this one.
    pub last: Option<String>,
}

impl PageRequest {
    /// Reads `n` and `last`; empty values count as absent.
    pub fn from_query(query: &Query) -> Result<PageRequest, RegistryError> {
        let n = match query.get("n").filter(|n| !n.is_empty()) {
            None => None,
            // The spec has no code for a bad page size (distribution's PAGINATION_NUMBER_INVALID
            // is not in it); SIZE_INVALID is the closest 400.
            Some(n) => Some(n.parse().map_err(|_| {
                RegistryError::new(
                    ErrorCode::SizeInvalid,
                    format!("query parameter n must be a non-negative integer, got {n:?}"),
                )
            })?),
        };
        let last = query
            .get("last")
            .filter(|last| !last.is_empty())
            .map(str::to_owned);
        Ok(PageRequest { n, last })
    }

    /// The `Link` header for the page after `page` on `path`, when more entries remain. The next
    /// page asks for as many entries as this one did (or as this page held).
    pub fn next_link(&self, path: &str, page: &Page) -> Option<String> {
        let next_last = page.next_last.as_deref()?;
        let n = self.n.unwrap_or(page.items.len());
        Some(format!(
            "<{path}?n={n}&last={}>; rel=\"next\"",
            encode(next_last)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(items: &[&str], next_last: Option<&str>) -> Page {
        Page {
            items: items.iter().map(|i| i.to_string()).collect(),
            next_last: next_last.map(str::to_owned),
        }
    }

    #[test]
    fn n_and_last_are_read_and_empty_values_ignored() {
        let request = PageRequest::from_query(&Query::parse(Some("n=2&last=v1.0"))).unwrap();
        assert_eq!(request.n, Some(2));
        assert_eq!(request.last.as_deref(), Some("v1.0"));
        let request = PageRequest::from_query(&Query::parse(Some("n=&last="))).unwrap();
        assert_eq!(request, PageRequest::default());
    }

    #[test]
    fn bad_page_sizes_are_rejected() {
        for bad in ["n=-1", "n=ten", "n=1.5"] {
            let error = PageRequest::from_query(&Query::parse(Some(bad))).unwrap_err();
            assert_eq!(error.code(), ErrorCode::SizeInvalid, "{bad}");
        }
    }

    #[test]
    fn link_points_at_the_next_page_on_the_v2_path() {
        let request = PageRequest {
            n: Some(2),
            last: None,
        };
        assert_eq!(
            request
                .next_link(
                    "/v2/library/ubuntu/tags/list",
                    &page(&["a", "b"], Some("b"))
                )
                .as_deref(),
            Some("</v2/library/ubuntu/tags/list?n=2&last=b>; rel=\"next\"")
        );
        // Repository names in the catalog cursor keep their slash encoded inside the query.
        let request = PageRequest::default();
        assert_eq!(
            request
                .next_link("/v2/_catalog", &page(&["lib/a", "lib/b"], Some("lib/b")))
                .as_deref(),
            Some("</v2/_catalog?n=2&last=lib%2Fb>; rel=\"next\"")
        );
    }

    #[test]
    fn last_page_has_no_link() {
        let request = PageRequest::default();
        assert_eq!(request.next_link("/v2/_catalog", &page(&["a"], None)), None);
    }
}
