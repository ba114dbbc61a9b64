//! Every component's config file as `shoal_service::config::parse` reads it, then the
//! component's own `validate`.

use serde::de::DeserializeOwned;
use shoal_agent::AgentConfig;
use shoal_build_index::BuildIndexConfig;
use shoal_origin::OriginConfig;
use shoal_proxy::ProxyConfig;
use shoal_service::config::parse;
use shoal_tracker::TrackerConfig;

/// The first byte picks the component; the rest is the YAML.
pub fn run(data: &[u8]) {
    let Some((component, yaml)) = crate::selector(data) else {
        return;
    };
    let Ok(yaml) = std::str::from_utf8(yaml) else {
        return;
    };
    match component % 5 {
        0 => parse_and_validate(yaml, ProxyConfig::validate),
        1 => parse_and_validate(yaml, OriginConfig::validate),
        2 => parse_and_validate(yaml, BuildIndexConfig::validate),
        3 => parse_and_validate(yaml, TrackerConfig::validate),
        _ => parse_and_validate(yaml, AgentConfig::validate),
    }
}

/// `validate` is each component's check of what serde cannot express.
fn parse_and_validate<T: DeserializeOwned + Default, E>(
    yaml: &str,
    validate: fn(&T) -> Result<(), E>,
) {
    if let Ok(config) = parse::<T>(yaml, "fuzz.yaml") {
        let _ = validate(&config);
    }
}
