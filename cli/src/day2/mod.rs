//! The day-2 commands (`status`, `preheat`, `cache`, `swarm`): the components' addresses, and
//! one way to call them that turns a component that does not answer into one line naming it and
//! its address.

pub mod cache;
pub mod preheat;
pub mod status;
pub mod swarm;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::devcluster::layout;

/// A component that does not answer within this long is reported as down.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the components are: the devcluster's fixed addresses unless a `--targets` file or a
/// flag says otherwise (flags win over the file).
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// YAML file with `proxy`, `build_index`, `origins`, `tracker` and `agents` (`host:port` or
    /// `http(s)://host:port`); fields left out keep the devcluster's addresses.
    #[arg(long, value_name = "FILE")]
    targets: Option<PathBuf>,
    /// The proxy [default: 127.0.0.1:15000].
    #[arg(long)]
    proxy: Option<String>,
    /// The build-index [default: 127.0.0.1:15004].
    #[arg(long)]
    build_index: Option<String>,
    /// An origin; repeat for each [default: 127.0.0.1:15100].
    #[arg(long = "origin")]
    origins: Vec<String>,
    /// The tracker [default: 127.0.0.1:15003].
    #[arg(long)]
    tracker: Option<String>,
    /// An agent; repeat for each [default: 127.0.0.1:16000].
    #[arg(long = "agent")]
    agents: Vec<String>,
}

/// The `--targets` file, and the addresses the commands use. In the file, `null` (or `[]`)
/// leaves a component out: a cluster without a tracker, say.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Targets {
    pub proxy: Option<String>,
    pub build_index: Option<String>,
    pub origins: Vec<String>,
    pub tracker: Option<String>,
    pub agents: Vec<String>,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            proxy: Some(layout::PROXY.to_string()),
            build_index: Some(layout::BUILD_INDEX.to_string()),
            origins: vec![layout::origin(0).to_string()],
            tracker: Some(layout::TRACKER.to_string()),
            agents: vec![layout::agent(0).to_string()],
        }
    }
}

impl Targets {
    /// The endpoint of a component the command needs, or an error saying how to give it.
    pub fn endpoint(address: Option<&String>, component: &'static str) -> anyhow::Result<Endpoint> {
        let addr = address.ok_or_else(|| {
            anyhow!("no {component} address: pass --{component} HOST:PORT (or set it in --targets)")
        })?;
        Endpoint::new(component, addr)
    }
}

impl TargetArgs {
    pub fn resolve(&self) -> anyhow::Result<Targets> {
        let mut targets: Targets = shoal_service::config::load(self.targets.as_deref())?;
        let set = |value: &Option<String>, field: &mut Option<String>| {
            if value.is_some() {
                field.clone_from(value);
            }
        };
        set(&self.proxy, &mut targets.proxy);
        set(&self.build_index, &mut targets.build_index);
        set(&self.tracker, &mut targets.tracker);
        if !self.origins.is_empty() {
            targets.origins.clone_from(&self.origins);
        }
        if !self.agents.is_empty() {
            targets.agents.clone_from(&self.agents);
        }
        Ok(targets)
    }
}

/// One component's HTTP API.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// What the component is (`proxy`, `agent`, …), for messages.
    pub component: &'static str,
    /// Base URL without a trailing slash.
    pub base: String,
    http: reqwest::Client,
}

impl Endpoint {
    pub fn new(component: &'static str, addr: &str) -> anyhow::Result<Endpoint> {
        let http = shoal_service::client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Endpoint {
            component,
            base: shoal_http_client::base_url(addr, false),
            http,
        })
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Sends `request`; a component that cannot be reached is one line naming it.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))
    }

    /// `GET path`, expecting 200 and a JSON body of type `T`.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = self.send(self.request(reqwest::Method::GET, path)).await?;
        self.json(path, response).await
    }

    /// A 2xx answer's JSON body, or the error the component answered with.
    pub async fn json<T: DeserializeOwned>(
        &self,
        path: &str,
        response: reqwest::Response,
    ) -> anyhow::Result<T> {
        let response = self.success(path, response).await?;
        response
            .json()
            .await
            .with_context(|| format!("{} at {}: reading {path}", self.component, self.base))
    }

    /// `response` when it is a success, else an error with the status and the message the
    /// component sent (`{"error": …}`, a Registry V2 error body, or the text).
    pub async fn success(
        &self,
        path: &str,
        response: reqwest::Response,
    ) -> anyhow::Result<reqwest::Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(anyhow!(
            "{} at {} answered {path} with {status}: {}",
            self.component,
            self.base,
            error_message(&body)
        ))
    }

    /// Why `error` means the component did not answer, in one line.
    pub fn unreachable(&self, error: &reqwest::Error) -> anyhow::Error {
        let why = if error.is_connect() {
            innermost(error)
        } else if error.is_timeout() {
            format!("no answer within {REQUEST_TIMEOUT:?}")
        } else {
            innermost(error)
        };
        anyhow!("{} at {} is down: {why}", self.component, self.base)
    }
}

/// The deepest cause's text (`Connection refused (os error 111)` rather than reqwest's
/// `error sending request for url …`).
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// The message of an error body: `{"error": …}`, a Registry V2 `{"errors": [{"message"}]}`, or
/// the text itself.
fn error_message(body: &str) -> String {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.trim().to_owned();
    };
    if let Some(message) = json["error"].as_str() {
        return message.to_owned();
    }
    if let Some(message) = json["errors"][0]["message"].as_str() {
        return message.to_owned();
    }
    body.trim().to_owned()
}

/// A digest argument (`sha256:…`), for clap.
pub fn parse_digest(text: &str) -> Result<shoal_core::Digest, String> {
    shoal_core::Digest::parse(text).map_err(|e| e.to_string())
}

/// `bytes` for people (`12.3 MiB`).
pub fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("targets.yaml");
        std::fs::write(&file, "proxy: p:1\norigins: [o:1, o:2]\n").unwrap();
        let args = TargetArgs {
            targets: Some(file.clone()),
            proxy: None,
            build_index: Some("b:9".into()),
            origins: Vec::new(),
            tracker: None,
            agents: vec!["a:1".into()],
        };
        let targets = args.resolve().unwrap();
        assert_eq!(targets.proxy.as_deref(), Some("p:1"));
        assert_eq!(targets.build_index.as_deref(), Some("b:9"));
        assert_eq!(targets.origins, ["o:1", "o:2"]);
        assert_eq!(targets.tracker, Targets::default().tracker);
        assert_eq!(targets.agents, ["a:1"]);

        std::fs::write(&file, "tracker: null\nagents: []\n").unwrap();
        let targets = TargetArgs {
            agents: Vec::new(),
            ..args.clone()
        }
        .resolve()
        .unwrap();
        assert_eq!((targets.tracker, targets.agents), (None, Vec::new()));

        std::fs::write(&file, "proxies: p:1\n").unwrap();
        let error = args.resolve().unwrap_err().to_string();
        assert!(error.contains("proxies"), "{error}");
    }

    #[test]
    fn error_bodies_give_their_message() {
        assert_eq!(error_message(r#"{"error":"no peer"}"#), "no peer");
        assert_eq!(
            error_message(r#"{"errors":[{"code":"DENIED","message":"secret"}]}"#),
            "secret"
        );
        assert_eq!(error_message("plain\n"), "plain");
    }
}
