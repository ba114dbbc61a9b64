//! The registry notification envelope (`{"events": [...]}`) as the CNCF distribution registry
//! sends it (`events.v1+json`, `events.v2+json`) and as Harbor's Kraken preheat driver sends it
//! (plain JSON with capitalised keys: `Events`, `Action`, `Target`, `MediaType`, …), and which of
//! its events ask for a preheat.

use serde::Deserialize;
use shoal_core::{Digest, MediaType, Name};

/// Content types a notification may arrive with (parameters such as `charset` aside).
pub const CONTENT_TYPES: [&str; 3] = [
    "application/vnd.docker.distribution.events.v1+json",
    "application/vnd.docker.distribution.events.v2+json",
    "application/json",
];

/// Whether a `Content-Type` value is one a notification may carry.
pub fn accepts_content_type(value: &str) -> bool {
    let essence = value.split_once(';').map_or(value, |(essence, _)| essence);
    CONTENT_TYPES
        .iter()
        .any(|accepted| accepted.eq_ignore_ascii_case(essence.trim()))
}

// Unknown fields (id, timestamp, request, actor, source, references, …) are ignored: senders
// add fields over time and only the target matters here.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(alias = "Events")]
    events: Vec<Event>,
}

#[derive(Debug, Deserialize)]
struct Event {
    #[serde(alias = "Action")]
    action: String,
    #[serde(alias = "Target")]
    target: Option<Target>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    #[serde(alias = "MediaType")]
    media_type: Option<String>,
    #[serde(alias = "Repository")]
    repository: Option<String>,
    #[serde(alias = "Digest")]
    digest: Option<String>,
}

/// A manifest push to preheat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestPush {
    pub repository: Name,
    pub digest: Digest,
}

/// What one event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Preheat(ManifestPush),
    /// Not a manifest push (a pull, a blob push, a delete, an unknown media type).
    Ignore,
}

/// Why a notification body was refused; the message names the event and field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotificationError {
    #[error("body is not a notification envelope: {0}")]
    Envelope(String),
    #[error("event {index}: field `target` is missing")]
    MissingTarget { index: usize },
    #[error("event {index}: field `target.{field}` is missing")]
    MissingField { index: usize, field: &'static str },
    #[error("event {index}: field `target.{field}` is invalid: {reason}")]
    InvalidField {
        index: usize,
        field: &'static str,
        reason: String,
    },
}

/// Parses a notification body into one action per event. Every event is checked before any is
/// acted on, so a refused body starts nothing.
pub fn parse(body: &[u8]) -> Result<Vec<Action>, NotificationError> {
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|error| NotificationError::Envelope(error.to_string()))?;
    envelope
        .events
        .into_iter()
        .enumerate()
        .map(|(index, event)| classify(index, event))
        .collect()
}

fn classify(index: usize, event: Event) -> Result<Action, NotificationError> {
    if !event.action.eq_ignore_ascii_case("push") {
        return Ok(Action::Ignore);
    }
    let target = event
        .target
        .ok_or(NotificationError::MissingTarget { index })?;
    let missing = |field| NotificationError::MissingField { index, field };
    let media_type = target.media_type.ok_or_else(|| missing("mediaType"))?;
    if MediaType::parse(&media_type).is_none() {
        return Ok(Action::Ignore);
    }
    let repository = target.repository.ok_or_else(|| missing("repository"))?;
    let repository = Name::parse(&repository).map_err(|error| NotificationError::InvalidField {
        index,
        field: "repository",
        reason: error.to_string(),
    })?;
    let digest = target.digest.ok_or_else(|| missing("digest"))?;
    let digest = Digest::parse(&digest).map_err(|error| NotificationError::InvalidField {
        index,
        field: "digest",
        reason: error.to_string(),
    })?;
    Ok(Action::Preheat(ManifestPush { repository, digest }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// The bodies of the real notifications in the shared reference samples, in file order.
    fn samples() -> Vec<Value> {
        let text = include_str!("testdata/notification-samples.jsonl");
        text.lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap()["body"].clone())
            .collect()
    }

    fn parse_value(body: &Value) -> Result<Vec<Action>, NotificationError> {
        parse(&serde_json::to_vec(body).unwrap())
    }

    #[test]
    fn only_the_manifest_push_of_the_samples_is_preheated() {
        let actions: Vec<Vec<Action>> = samples().iter().map(|b| parse_value(b).unwrap()).collect();
        let expected_push = Action::Preheat(ManifestPush {
            repository: Name::parse("test/raw").unwrap(),
            digest: Digest::parse(
                "sha256:b8523438609eb6aa1b8834c3a935ddf84bdb18b4bae9a013bb3b92c5a00600aa",
            )
            .unwrap(),
        });
        // Blob push, manifest push, manifest pull, blob pull, manifest pull, mount, delete.
        assert_eq!(actions[1], [expected_push]);
        for (i, events) in actions.iter().enumerate().filter(|(i, _)| *i != 1) {
            assert_eq!(events, &[Action::Ignore], "sample {i}");
        }
    }

    #[test]
    fn harbor_capitalised_keys_are_understood() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let body = json!({"Events": [{
            "Id": "1", "TimeStamp": 1700000000, "Action": "push",
            "Target": {"MediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "Digest": digest, "Repository": "library/app", "Tag": "v1",
                       "Url": "http://harbor.example/v2/library/app/manifests/v1"}
        }]});
        assert_eq!(
            parse_value(&body).unwrap(),
            [Action::Preheat(ManifestPush {
                repository: Name::parse("library/app").unwrap(),
                digest: Digest::parse(&digest).unwrap(),
            })]
        );
    }

    #[test]
    fn indexes_and_lists_are_preheated_other_media_types_ignored() {
        let event = |media_type: &str| {
            json!({"events": [{"action": "push", "target": {
                "mediaType": media_type, "repository": "a/b",
                "digest": format!("sha256:{}", "0".repeat(64))}}]})
        };
        for manifest in [
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.index.v1+json",
        ] {
            assert!(matches!(
                parse_value(&event(manifest)).unwrap()[..],
                [Action::Preheat(_)]
            ));
        }
        for other in [
            "application/octet-stream",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "text/plain",
        ] {
            assert_eq!(parse_value(&event(other)).unwrap(), [Action::Ignore]);
        }
    }

    #[test]
    fn malformed_bodies_name_what_is_wrong() {
        let cases = [
            (json!({"event": []}), "missing field `events`"),
            (
                json!({"events": [{"target": {}}]}),
                "missing field `action`",
            ),
            (
                json!({"events": [{"action": "push"}]}),
                "event 0: field `target`",
            ),
            (
                json!({"events": [{"action": "pull"}, {"action": "push", "target": {"repository": "a"}}]}),
                "event 1: field `target.mediaType` is missing",
            ),
            (
                json!({"events": [{"action": "push", "target": {
                    "mediaType": "application/vnd.oci.image.index.v1+json", "repository": "a"}}]}),
                "field `target.digest` is missing",
            ),
            (
                json!({"events": [{"action": "push", "target": {
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "repository": "UPPER", "digest": "sha256:00"}}]}),
                "field `target.repository` is invalid",
            ),
            (
                json!({"events": [{"action": "push", "target": {
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "repository": "a/b", "digest": "sha256:00"}}]}),
                "field `target.digest` is invalid",
            ),
        ];
        for (body, expected) in cases {
            let error = parse_value(&body).unwrap_err().to_string();
            assert!(error.contains(expected), "{body}: {error}");
        }
        let error = parse(b"{not json").unwrap_err().to_string();
        assert!(error.contains("not a notification envelope"), "{error}");
    }

    #[test]
    fn content_types_of_every_sender_are_accepted() {
        for accepted in [
            "application/vnd.docker.distribution.events.v1+json",
            "application/vnd.docker.distribution.events.v2+json",
            "application/json; charset=utf-8",
            "Application/JSON",
        ] {
            assert!(accepts_content_type(accepted), "{accepted}");
        }
        for refused in ["text/plain", "application/x-www-form-urlencoded", ""] {
            assert!(!accepts_content_type(refused), "{refused}");
        }
    }

    /// One event: (action, media type, repository, digest bytes, Harbor's capitalised keys).
    fn event() -> impl Strategy<Value = (String, String, String, [u8; 32], bool)> {
        (
            prop_oneof![Just("push"), Just("PUSH"), Just("pull"), Just("delete")],
            prop_oneof![
                Just("application/vnd.docker.distribution.manifest.v2+json"),
                Just("application/vnd.docker.distribution.manifest.list.v2+json"),
                Just("application/vnd.oci.image.manifest.v1+json"),
                Just("application/vnd.oci.image.index.v1+json"),
                Just("application/octet-stream"),
            ],
            "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
            any::<[u8; 32]>(),
            any::<bool>(),
        )
            .prop_map(|(action, media_type, repository, digest, harbor)| {
                (
                    action.to_owned(),
                    media_type.to_owned(),
                    repository,
                    digest,
                    harbor,
                )
            })
    }

    proptest! {
        #[test]
        fn manifest_pushes_and_only_they_are_preheated(events in proptest::collection::vec(event(), 0..6)) {
            let body: Vec<Value> = events
                .iter()
                .map(|(action, media_type, repository, digest, harbor)| {
                    let digest = Digest::from_bytes(*digest).to_string();
                    if *harbor {
                        json!({"Action": action, "Target": {"MediaType": media_type, "Repository": repository, "Digest": digest}})
                    } else {
                        json!({"action": action, "target": {"mediaType": media_type, "repository": repository, "digest": digest}})
                    }
                })
                .collect();
            let actions = parse_value(&json!({ "events": body })).expect("a well-formed envelope");
            prop_assert_eq!(actions.len(), events.len());
            for ((action, media_type, repository, digest, _), parsed) in events.iter().zip(actions) {
                let expected = if action.eq_ignore_ascii_case("push") && MediaType::parse(media_type).is_some() {
                    Action::Preheat(ManifestPush {
                        repository: Name::parse(repository).expect("generated names are valid"),
                        digest: Digest::from_bytes(*digest),
                    })
                } else {
                    Action::Ignore
                };
                prop_assert_eq!(parsed, expected);
            }
        }

        #[test]
        fn arbitrary_bodies_parse_or_fail_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&body);
        }
    }
}
