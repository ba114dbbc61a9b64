//! The proxy's preheat inputs: a registry's notification envelope (`POST
//! /registry/notifications`, its body and its `Content-Type`) and the image of `POST /preheat`.

use shoal_proxy::fuzzing::{Image, notification};

pub fn run(data: &[u8]) {
    if let Ok(actions) = notification::parse(data) {
        for action in actions {
            if let notification::Action::Preheat(push) = action {
                assert!(!push.repository.as_str().is_empty());
            }
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = notification::accepts_content_type(text);
    if let Ok(image) = Image::parse(text) {
        // Jobs are stored with the image as it displays and parsed again after a restart.
        assert_eq!(Image::parse(&image.to_string()), Ok(image));
    }
}
