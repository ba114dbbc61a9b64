//! Loading a component's YAML config file into its typed config struct.
//!
//! Every component has one config struct tree, and every struct in it follows one convention:
//!
//! ```
//! #[derive(serde::Deserialize, Default)]
//! #[serde(default, deny_unknown_fields)]
//! struct OriginConfig {
//!     #[serde(with = "humantime_serde")]
//!     upload_timeout: std::time::Duration,
//!     chunk: shoal_service::ByteSize,
//! }
//!
//! let config: OriginConfig =
//!     shoal_service::config::parse("upload_timeout: 30s\nchunk: 4MiB\n", "example").unwrap();
//! assert_eq!(config.chunk, shoal_service::ByteSize::mib(4));
//! ```
//!
//! `default` makes every field optional (an empty file runs with embedded defaults) and
//! `deny_unknown_fields` turns a typo into an error instead of a silently ignored setting.
//! Durations use `#[serde(with = "humantime_serde")]` (`30s`, `5m`) and sizes use
//! [`bytesize::ByteSize`] (`4MiB`). Errors name the field by its full path
//! (`backend.filesystem.root`), so an operator can find the line to fix.

use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why a config file could not be turned into a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The YAML is malformed or does not match the config struct; `field` is the path of the
    /// offending field (`.` when the problem is the document itself).
    #[error("config {source_name}: field `{field}`: {message}")]
    Invalid {
        source_name: String,
        field: String,
        message: String,
    },
}

/// Reads the config at `path`, or returns the embedded defaults when there is no file.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let yaml = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&yaml, &path.display().to_string())
}

/// Parses `yaml` (named `source` in errors, usually the file path). A document that is empty or
/// holds only comments yields `T::default()`.
pub fn parse<T: DeserializeOwned + Default>(yaml: &str, source: &str) -> Result<T, ConfigError> {
    // Parsing to a `Value` first tells an empty document (null) apart from a real one; a null
    // document would otherwise fail to deserialize into a struct.
    let document: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(yaml).map_err(|error| ConfigError::Invalid {
            source_name: source.to_owned(),
            field: ".".to_owned(),
            message: error.to_string(),
        })?;
    if document.is_null() {
        return Ok(T::default());
    }
    // Deserialize from the text rather than the `Value` so that messages keep line and column.
    let deserializer = serde_yaml_ng::Deserializer::from_str(yaml);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(deserializer, &mut track);
    // Enums with data are written as one-key maps (`backend: {filesystem: {root: …}}`), the form
    // operators expect, rather than serde_yaml_ng's default of YAML tags (`!filesystem`).
    serde_yaml_ng::with::singleton_map_recursive::deserialize(tracked).map_err(|error| {
        let field = track.path().to_string();
        let message = error.to_string();
        ConfigError::Invalid {
            source_name: source.to_owned(),
            message: strip_yaml_path(&message, &field).to_owned(),
            field,
        }
    })
}

/// serde_yaml_ng starts nested messages with its own (sometimes partial) path, such as
/// `backend.filesystem: unknown field ...`; the error already names the full field, so the
/// repeated path is cut off.
fn strip_yaml_path<'m>(message: &'m str, field: &str) -> &'m str {
    let ancestors = field
        .char_indices()
        .filter(|&(_, c)| c == '.' || c == '[')
        .map(|(end, _)| &field[..end])
        .chain(std::iter::once(field));
    ancestors
        .filter_map(|path| message.strip_prefix(path)?.strip_prefix(": "))
        .min_by_key(|rest| rest.len())
        .unwrap_or(message)
}

/// Logging settings shared by every component (`log:` in each config file).
#[derive(Deserialize, Serialize, Default, Clone, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Deserialize, Serialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytesize::ByteSize;

    use super::*;

    #[derive(Deserialize, Default, Debug, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Config {
        log: LogConfig,
        backend: Backend,
        #[serde(with = "humantime_serde")]
        timeout: Duration,
        chunk: ByteSize,
    }

    #[derive(Deserialize, Default, Debug, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Backend {
        filesystem: Filesystem,
    }

    #[derive(Deserialize, Default, Debug, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Filesystem {
        root: PathBuf,
        replicas: u32,
    }

    fn invalid(yaml: &str) -> (String, String, String) {
        match parse::<Config>(yaml, "/etc/shoal/origin.yaml") {
            Err(error @ ConfigError::Invalid { .. }) => {
                let text = error.to_string();
                let ConfigError::Invalid { field, message, .. } = error else {
                    unreachable!("matched above")
                };
                (field, message, text)
            }
            other => panic!("expected ConfigError::Invalid, got {other:?}"),
        }
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "snake_case", deny_unknown_fields)]
    enum Store {
        Filesystem { root: PathBuf },
        Http { url: String },
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct WithEnum {
        store: Store,
    }

    impl Default for WithEnum {
        fn default() -> Self {
            Self {
                store: Store::Http { url: "x".into() },
            }
        }
    }

    #[test]
    fn enums_with_data_are_one_key_maps() {
        let config: WithEnum = parse("store:\n  filesystem:\n    root: /data\n", "t").unwrap();
        assert_eq!(
            config.store,
            Store::Filesystem {
                root: PathBuf::from("/data")
            }
        );
        let error = parse::<WithEnum>("store:\n  filesystem:\n    roo: /data\n", "t")
            .unwrap_err()
            .to_string();
        assert!(error.contains("`store.filesystem.roo`"), "{error}");
        assert!(error.contains("unknown field `roo`"), "{error}");
        let error = parse::<WithEnum>("store:\n  ftp: {}\n", "t")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown variant `ftp`"), "{error}");
    }

    #[test]
    fn empty_and_comment_only_documents_give_defaults() {
        assert_eq!(parse::<Config>("", "t").unwrap(), Config::default());
        assert_eq!(
            parse::<Config>("# nothing set\n\n# yet\n", "t").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn missing_path_gives_defaults() {
        assert_eq!(load::<Config>(None).unwrap(), Config::default());
    }

    #[test]
    fn nested_fields_durations_and_sizes_parse() {
        let yaml = "log:\n  format: json\nbackend:\n  filesystem:\n    root: /var/lib/shoal\n\
                    timeout: 1m 30s\nchunk: 4MiB\n";
        let config: Config = parse(yaml, "t").unwrap();
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(
            config.backend.filesystem.root,
            PathBuf::from("/var/lib/shoal")
        );
        // Fields left out keep their defaults.
        assert_eq!(config.backend.filesystem.replicas, 0);
        assert_eq!(config.timeout, Duration::from_secs(90));
        assert_eq!(config.chunk, ByteSize::mib(4));
    }

    #[test]
    fn unknown_nested_field_names_its_full_path() {
        let (field, message, text) = invalid("backend:\n  filesystem:\n    roo: /x\n");
        assert_eq!(field, "backend.filesystem.roo");
        assert!(message.starts_with("unknown field `roo`"), "{message}");
        assert!(
            text.starts_with(
                "config /etc/shoal/origin.yaml: field `backend.filesystem.roo`: unknown field `roo`"
            ),
            "{text}"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let (field, message, _) = invalid("backend:\n  filesystem:\n    replicas: many\n");
        assert_eq!(field, "backend.filesystem.replicas");
        assert!(message.starts_with("invalid type"), "{message}");
    }

    #[test]
    fn bad_duration_and_size_name_the_field() {
        assert_eq!(invalid("timeout: soon\n").0, "timeout");
        assert_eq!(invalid("chunk: 4 furlongs\n").0, "chunk");
        assert_eq!(invalid("log:\n  format: xml\n").0, "log.format");
    }

    #[test]
    fn malformed_yaml_is_reported_against_the_document() {
        let (field, _, text) = invalid("backend: [unclosed\n");
        assert_eq!(field, ".");
        assert!(
            text.starts_with("config /etc/shoal/origin.yaml: "),
            "{text}"
        );
    }

    #[test]
    fn file_is_read_and_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("origin.yaml");
        std::fs::write(&path, "chunk: 1KiB\n").unwrap();
        let config: Config = load(Some(&path)).unwrap();
        assert_eq!(config.chunk, ByteSize::kib(1));

        std::fs::write(&path, "chunky: 1KiB\n").unwrap();
        let error = load::<Config>(Some(&path)).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("config {}: field `chunky`", path.display())),
            "{error}"
        );
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let path = Path::new("/nonexistent/shoal/config.yaml");
        match load::<Config>(Some(path)) {
            Err(error @ ConfigError::Read { .. }) => {
                assert!(error.to_string().contains("/nonexistent/shoal/config.yaml"));
            }
            other => panic!("expected ConfigError::Read, got {other:?}"),
        }
    }

    #[derive(Deserialize, Default, Debug)]
    #[serde(default, deny_unknown_fields)]
    struct Peers {
        tracker: Option<shoal_core::Addresses>,
    }

    #[test]
    fn an_unusable_address_list_is_refused_naming_its_field() {
        let many: Peers = parse("tracker: [a:1, b:2]\n", "t").unwrap();
        assert_eq!(many.tracker.unwrap().as_slice(), ["a:1", "b:2"]);
        let error = parse::<Peers>("tracker: []\n", "t")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("tracker") && error.contains("empty list"),
            "{error}"
        );
    }
}
