//! Paging of sorted listings (tags of a repository, the repository catalog): the `n` and `last`
//! query parameters and the `Link: <…>; rel="next"` header that points at the following page.

use serde::Deserialize;
use shoal_api::wire::encode;

use crate::error::Error;

/// Largest page served, whatever `n` asks for: keeps one response to a few hundred KiB of JSON.
pub const MAX_PAGE: usize = 10_000;

/// The raw `?n=&last=` query. An empty value counts as absent, so templated URLs still work.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    pub n: Option<String>,
    pub last: Option<String>,
}

/// A validated page request: at most `n` entries strictly after `last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    n: usize,
    last: Option<String>,
}

/// One page of a listing and, when more entries remain, the `last` value of the next request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<String>,
    pub next_last: Option<String>,
}

impl PageRequest {
    /// `n` must be a non-negative integer; values above [`MAX_PAGE`] are lowered to it. `last` is any
    /// string: entries are compared to it lexically, so it need not exist.
    pub fn parse(query: PageQuery) -> Result<PageRequest, Error> {
        let n = match query.n.as_deref().filter(|n| !n.is_empty()) {
            None => MAX_PAGE,
            Some(text) => text
                .parse::<usize>()
                .map_err(|_| {
                    let echo: String = text.chars().take(40).collect();
                    Error::PageInvalid(format!("n must be a non-negative integer, got {echo:?}"))
                })?
                .min(MAX_PAGE),
        };
        let last = query.last.filter(|last| !last.is_empty());
        Ok(PageRequest { n, last })
    }

    /// The page of `sorted` this request selects.
    pub fn apply(&self, sorted: Vec<String>) -> Page {
        let start = match &self.last {
            Some(last) => sorted.partition_point(|item| item.as_str() <= last.as_str()),
            None => 0,
        };
        let remaining = sorted.len() - start;
        let items: Vec<String> = sorted.into_iter().skip(start).take(self.n).collect();
        // n=0 asks for nothing; a next link would then point at the same empty page forever.
        let next_last = if remaining > items.len() && !items.is_empty() {
            items.last().cloned()
        } else {
            None
        };
        Page { items, next_last }
    }

    /// The `Link` header value for the page after `next_last`, on the listing at `path`.
    pub fn next_link(&self, path: &str, next_last: &str) -> String {
        format!(
            "<{path}?n={}&last={}>; rel=\"next\"",
            self.n,
            encode(next_last)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(n: Option<&str>, last: Option<&str>) -> Result<PageRequest, Error> {
        PageRequest::parse(PageQuery {
            n: n.map(str::to_owned),
            last: last.map(str::to_owned),
        })
    }

    fn items(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_parameters_return_everything() {
        let page = request(None, None).unwrap().apply(items(&["a", "b", "c"]));
        assert_eq!(page.items, items(&["a", "b", "c"]));
        assert_eq!(page.next_last, None);
    }

    #[test]
    fn n_limits_and_reports_where_to_continue() {
        let req = request(Some("2"), None).unwrap();
        let page = req.apply(items(&["a", "b", "c"]));
        assert_eq!(page.items, items(&["a", "b"]));
        assert_eq!(page.next_last.as_deref(), Some("b"));
        assert_eq!(
            req.next_link("/v1/repositories", "lib/b"),
            "</v1/repositories?n=2&last=lib%2Fb>; rel=\"next\""
        );
    }

    #[test]
    fn last_is_exclusive_and_need_not_exist() {
        let all = items(&["a", "b", "d"]);
        let page = request(Some("1"), Some("b")).unwrap().apply(all.clone());
        assert_eq!(page.items, items(&["d"]));
        assert_eq!(page.next_last, None);
        let page = request(None, Some("c")).unwrap().apply(all.clone());
        assert_eq!(page.items, items(&["d"]));
        let page = request(None, Some("z")).unwrap().apply(all);
        assert!(page.items.is_empty());
    }

    #[test]
    fn an_exact_fit_has_no_next_page() {
        let page = request(Some("2"), None).unwrap().apply(items(&["a", "b"]));
        assert_eq!(page.next_last, None);
    }

    #[test]
    fn zero_returns_an_empty_page_without_a_link() {
        let page = request(Some("0"), None).unwrap().apply(items(&["a"]));
        assert!(page.items.is_empty());
        assert_eq!(page.next_last, None);
    }

    #[test]
    fn n_is_capped_and_empty_values_are_absent() {
        assert_eq!(request(Some("99999999"), None).unwrap().n, MAX_PAGE);
        assert_eq!(
            request(Some(""), Some("")).unwrap(),
            request(None, None).unwrap()
        );
    }

    #[test]
    fn malformed_n_is_refused() {
        for bad in ["-1", "abc", "1.5", "99999999999999999999999"] {
            assert!(
                matches!(request(Some(bad), None), Err(Error::PageInvalid(_))),
                "{bad}"
            );
        }
    }
}
