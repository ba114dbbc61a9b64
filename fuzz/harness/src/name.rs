//! Repository names, tags and manifest references (`Name`, `Tag`, `Reference`).

use shoal_core::{Digest, Name, Reference, Tag};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = Name::parse(text) {
        assert_eq!(name.as_str(), text);
        assert!(!text.starts_with('/') && !text.ends_with('/') && !text.contains("//"));
        assert!(
            !text
                .split('/')
                .any(|component| component == ".." || component == ".")
        );
    }
    let tag = Tag::parse(text);
    if let Ok(tag) = &tag {
        assert_eq!(tag.as_str(), text);
    }
    match Reference::parse(text) {
        Ok(Reference::Tag(parsed)) => assert_eq!(Some(parsed), tag.ok()),
        Ok(Reference::Digest(digest)) => assert_eq!(Ok(digest), Digest::parse(text)),
        Err(_) => assert!(tag.is_err()),
    }
}
