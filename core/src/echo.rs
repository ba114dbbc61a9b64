//! Safe echoing of untrusted input inside error messages.

/// Inputs echoed back in error messages are cut to this many characters, so a hostile
/// multi-megabyte path or header cannot blow up logs or error bodies.
const MAX_ECHO_CHARS: usize = 80;

/// `s` cut to [`MAX_ECHO_CHARS`] characters, with `…` marking the cut.
pub(crate) fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_ECHO_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_unchanged() {
        assert_eq!(truncate("sha256:abc"), "sha256:abc");
    }

    #[test]
    fn long_input_is_cut_on_a_char_boundary() {
        let long = "é".repeat(200);
        let cut = truncate(&long);
        assert_eq!(cut.chars().count(), MAX_ECHO_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
