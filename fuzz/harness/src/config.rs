//! Every component's config file as `shoal_service::config::parse` reads it, then the
//! component's own `validate`.

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
    let source = "fuzz.yaml";
    // `validate` is each component's own check of what serde cannot express.
    match component % 5 {
        0 => {
            if let Ok(config) = parse::<ProxyConfig>(yaml, source) {
                let _ = config.validate();
            }
        }
        1 => {
            if let Ok(config) = parse::<OriginConfig>(yaml, source) {
                let _ = config.validate();
            }
        }
        2 => {
            if let Ok(config) = parse::<BuildIndexConfig>(yaml, source) {
                let _ = config.validate();
            }
        }
        3 => {
            if let Ok(config) = parse::<TrackerConfig>(yaml, source) {
                let _ = config.validate();
            }
        }
        _ => {
            if let Ok(config) = parse::<AgentConfig>(yaml, source) {
                let _ = config.validate();
            }
        }
    }
}
