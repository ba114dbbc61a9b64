//! Errors in logs: displayed, with their causes. Some errors' Display hides the cause
//! (`tonic::transport::Error` displays just "transport error"), and `?error` prints Rust debug
//! text, so a log line uses `error = %chain(&error)`.

use std::error::Error;
use std::fmt;

/// Displays `error` and its sources joined by ": ". A source whose text the message before it
/// already ends with (thiserror's `"...: {source}"`) is not repeated.
pub fn chain<'e>(error: &'e (dyn Error + 'e)) -> Chain<'e> {
    Chain(error)
}

/// See [`chain`].
#[derive(Clone, Copy)]
pub struct Chain<'e>(&'e (dyn Error + 'e));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut next = self.0.source();
        while let Some(source) = next {
            let text = source.to_string();
            if !shown.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            next = source.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("connection refused")]
        Refused,
    }

    /// Like tonic's transport error: the cause is only a source.
    #[derive(Debug, thiserror::Error)]
    #[error("transport error")]
    struct Opaque(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("connecting to 127.0.0.1:9")]
    struct Middle(#[source] Inner);

    /// thiserror's usual form: the message embeds its source.
    #[derive(Debug, thiserror::Error)]
    #[error("reading the tag: {0}")]
    struct Embeds(#[source] Inner);

    #[test]
    fn shows_every_cause_once() {
        let opaque = Opaque(Middle(Inner::Refused));
        assert_eq!(
            chain(&opaque).to_string(),
            "transport error: connecting to 127.0.0.1:9: connection refused"
        );
        let embeds = Embeds(Inner::Refused);
        assert_eq!(
            chain(&embeds).to_string(),
            "reading the tag: connection refused"
        );
        assert_eq!(chain(&Inner::Refused).to_string(), "connection refused");
    }
}
