//! Preheat into agents (`preheat.agents`): which agents fetch an image, and the request that
//! makes one fetch it (`POST /preheat` on the agent's HTTP listener, answered once every blob
//! is in its cache), which carries `preheat.secret` (agents refuse it without their own, equal
//! `preheat.secret`).
//!
//! Agents are ranked by rendezvous hashing of (manifest digest, agent address) over the healthy
//! agents: each image lands on its own agents, so preheats spread over the fleet, and the same
//! image always ranks the same agents first.

use serde_json::{Value, json};
use shoal_core::{Digest, Name, rendezvous};
use shoal_membership::{Membership, MembershipError, MembershipMetrics};
use shoal_service::{CancellationToken, SharedSecret, TaskTracker};

use crate::config::PreheatAgentsConfig;

/// Longest error message kept from an agent's answer.
const MAX_MESSAGE: usize = 512;

/// The agents preheats go to, with their health checks.
#[derive(Debug, Clone)]
pub struct Agents {
    config: PreheatAgentsConfig,
    members: Membership,
    http: reqwest::Client,
    /// Sent with every request (`preheat.secret`, required by config validation when agents
    /// preheat).
    secret: Option<SharedSecret>,
}

/// Why an agent did not preheat an image.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent {agent}: {source}")]
    Transport {
        agent: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("agent {agent} answered {status}: {message}")]
    Refused {
        agent: String,
        status: u16,
        message: String,
    },
}

impl Agents {
    /// Starts following `config.members`; `None` when agent preheat is off.
    pub async fn start(
        config: &PreheatAgentsConfig,
        secret: Option<SharedSecret>,
        http: reqwest::Client,
        metrics: &MembershipMetrics,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Option<Agents>, MembershipError> {
        if !config.enabled() {
            return Ok(None);
        }
        let members = Membership::start(
            "agents",
            &config.members,
            http.clone(),
            metrics,
            shutdown,
            tasks,
        )
        .await?;
        Ok(Some(Agents {
            config: config.clone(),
            members,
            http,
            secret,
        }))
    }

    /// The agents that preheat the image of `manifest`, best ranked first; empty when no agent
    /// is healthy.
    pub fn select(&self, manifest: &Digest) -> Vec<String> {
        let snapshot = self.members.snapshot();
        let healthy: Vec<&String> = snapshot.healthy().collect();
        choose(manifest, &healthy, self.config.wanted(healthy.len()))
    }

    pub fn concurrency(&self) -> usize {
        self.config.concurrency
    }

    /// Asks `agent` to fetch every blob of the image (`manifest` in repository `name`) into its
    /// cache; returns once it holds them.
    pub async fn preheat(
        &self,
        agent: &str,
        name: &Name,
        manifest: &Digest,
    ) -> Result<(), AgentError> {
        let transport = |source| AgentError::Transport {
            agent: agent.to_owned(),
            source,
        };
        let mut request = self
            .http
            .post(format!(
                "{}/preheat",
                shoal_http_client::base_url(agent, false)
            ))
            .timeout(self.config.timeout)
            .json(&json!({ "repository": name.as_str(), "digest": manifest.to_string() }));
        if let Some(secret) = &self.secret
            && let Ok(value) = secret.bearer()
        {
            request = request.header(secret.header(), value);
        }
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.bytes().await.map_err(transport)?;
        Err(AgentError::Refused {
            agent: agent.to_owned(),
            status: status.as_u16(),
            message: error_message(&body),
        })
    }
}

/// The first `wanted` of `healthy` in rendezvous order for `manifest`.
pub fn choose(manifest: &Digest, healthy: &[&String], wanted: usize) -> Vec<String> {
    rendezvous::owners(manifest, healthy, wanted)
        .into_iter()
        .map(|agent| (*agent).clone())
        .collect()
}

/// The agent's `{"error": "…"}`, or the start of whatever else it sent.
fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = match parsed.as_ref().and_then(|v| v["error"].as_str()) {
        Some(message) => message.to_owned(),
        None => String::from_utf8_lossy(body).into_owned(),
    };
    message.chars().take(MAX_MESSAGE).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn agents(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:16000")).collect()
    }

    #[test]
    fn the_same_image_picks_the_same_agents_in_any_member_order() {
        let members = agents(5);
        let digest = Digest::of(b"manifest");
        let healthy: Vec<&String> = members.iter().collect();
        let chosen = choose(&digest, &healthy, 2);
        assert_eq!(chosen.len(), 2);
        assert_ne!(chosen[0], chosen[1]);
        let reversed: Vec<&String> = members.iter().rev().collect();
        assert_eq!(choose(&digest, &reversed, 2), chosen);
        // Asking for more keeps the first choices: a larger count only adds agents.
        assert_eq!(choose(&digest, &healthy, 3)[..2], chosen[..]);
        // An agent that is not chosen leaving the fleet changes nothing.
        let unchosen = members.iter().find(|m| !chosen.contains(m)).unwrap();
        let fewer: Vec<&String> = members.iter().filter(|m| *m != unchosen).collect();
        assert_eq!(choose(&digest, &fewer, 2), chosen);
        assert_eq!(
            choose(&digest, &healthy, 9).len(),
            5,
            "capped at the members"
        );
        assert!(choose(&digest, &[], 2).is_empty());
    }

    #[test]
    fn different_images_spread_over_the_agents() {
        let members = agents(4);
        let healthy: Vec<&String> = members.iter().collect();
        let mut picks: HashMap<String, usize> = HashMap::new();
        for i in 0..400u32 {
            for agent in choose(&Digest::of(&i.to_be_bytes()), &healthy, 1) {
                *picks.entry(agent).or_default() += 1;
            }
        }
        assert_eq!(picks.len(), 4, "every agent gets images: {picks:?}");
        assert!(picks.values().all(|&n| n > 50), "{picks:?}");
    }

    #[test]
    fn agent_errors_keep_the_message() {
        assert_eq!(
            error_message(br#"{"error": "manifest x is unknown"}"#),
            "manifest x is unknown"
        );
        assert_eq!(error_message(b"plain text"), "plain text");
        assert_eq!(error_message(&[b'x'; 2000]).len(), MAX_MESSAGE);
    }
}
