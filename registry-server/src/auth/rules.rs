//! Per-repository access rules, like Harbor's public and private projects: the first rule
//! whose regex matches the whole repository name says whether anonymous callers may pull and
//! which users or groups may pull, push and delete. A repository no rule matches gets the
//! defaults of a rule that names only its pattern: every authenticated user may do everything,
//! anonymous callers nothing (distribution's htpasswd behaviour).

use std::collections::{BTreeMap, HashSet};

use regex::Regex;
use serde::Deserialize;

use super::AuthError;
use super::scope::Action;

/// One entry of `auth.rules`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A regex over the whole repository name (`prod/.*`).
    pub repository: String,
    /// Callers without credentials may pull (a public project).
    #[serde(default)]
    pub anonymous_pull: bool,
    /// Who may pull, push and delete: user names, `@group` for a group of `auth.groups`, `*`
    /// for every authenticated user. `pull` and `push` default to `["*"]`, `delete` to `push`.
    /// With `auth.token` these are not allowed: the token's `access` claim decides.
    pub pull: Option<Vec<String>>,
    pub push: Option<Vec<String>>,
    pub delete: Option<Vec<String>>,
}

/// Who a rule lets do an action.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Principal {
    /// `*`: every authenticated user.
    Anyone,
    User(String),
    Group(String),
}

impl Principal {
    fn parse(text: &str) -> Principal {
        match text {
            "*" => Principal::Anyone,
            _ => match text.strip_prefix('@') {
                Some(group) => Principal::Group(group.to_owned()),
                None => Principal::User(text.to_owned()),
            },
        }
    }
}

#[derive(Debug)]
struct Rule {
    pattern: Regex,
    anonymous_pull: bool,
    pull: Vec<Principal>,
    push: Vec<Principal>,
    delete: Vec<Principal>,
}

impl Rule {
    fn principals(&self, action: Action) -> &[Principal] {
        match action {
            Action::Pull => &self.pull,
            Action::Push => &self.push,
            Action::Delete => &self.delete,
        }
    }
}

/// The compiled `auth.rules` and `auth.groups`.
#[derive(Debug)]
pub(crate) struct Rules {
    rules: Vec<Rule>,
    fallback: Rule,
    /// group → its members.
    groups: BTreeMap<String, HashSet<String>>,
}

impl Rules {
    /// Compiles `rules`; an invalid regex or an unknown `@group` is an error naming the rule.
    pub(crate) fn new(
        rules: &[RuleConfig],
        groups: &BTreeMap<String, Vec<String>>,
    ) -> Result<Rules, AuthError> {
        let groups: BTreeMap<String, HashSet<String>> = groups
            .iter()
            .map(|(group, users)| (group.clone(), users.iter().cloned().collect()))
            .collect();
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let field = |name: &str| format!("auth.rules[{i}].{name}");
                // Anchored: the rule names whole repositories, as tag replication's rules do.
                let pattern = Regex::new(&format!("^(?:{})$", rule.repository)).map_err(|e| {
                    AuthError::Invalid {
                        field: field("repository"),
                        reason: e.to_string(),
                    }
                })?;
                let list = |name: &str, given: Option<&Vec<String>>, default: &[Principal]| {
                    let Some(given) = given else {
                        return Ok(default.to_vec());
                    };
                    given
                        .iter()
                        .map(|text| match Principal::parse(text) {
                            Principal::Group(group) if !groups.contains_key(&group) => {
                                Err(AuthError::Invalid {
                                    field: field(name),
                                    reason: format!("group `{group}` is not in auth.groups"),
                                })
                            }
                            principal => Ok(principal),
                        })
                        .collect::<Result<Vec<_>, _>>()
                };
                let pull = list("pull", rule.pull.as_ref(), &[Principal::Anyone])?;
                let push = list("push", rule.push.as_ref(), &[Principal::Anyone])?;
                let delete = list("delete", rule.delete.as_ref(), &push)?;
                Ok(Rule {
                    pattern,
                    anonymous_pull: rule.anonymous_pull,
                    pull,
                    push,
                    delete,
                })
            })
            .collect::<Result<Vec<_>, AuthError>>()?;
        Ok(Rules {
            rules: compiled,
            fallback: Rule {
                pattern: Regex::new("").expect("the empty regex compiles"),
                anonymous_pull: false,
                pull: vec![Principal::Anyone],
                push: vec![Principal::Anyone],
                delete: vec![Principal::Anyone],
            },
            groups,
        })
    }

    fn rule_for(&self, repository: &str) -> &Rule {
        self.rules
            .iter()
            .find(|rule| rule.pattern.is_match(repository))
            .unwrap_or(&self.fallback)
    }

    /// Whether a caller without credentials may do `action` on `repository`.
    pub(crate) fn anonymous_may(&self, repository: &str, action: Action) -> bool {
        action == Action::Pull && self.rule_for(repository).anonymous_pull
    }

    /// Whether the authenticated `user` may do `action` on `repository`.
    pub(crate) fn user_may(&self, user: &str, repository: &str, action: Action) -> bool {
        self.anonymous_may(repository, action)
            || self.rule_for(repository).principals(action).iter().any(
                |principal| match principal {
                    Principal::Anyone => true,
                    Principal::User(name) => name == user,
                    Principal::Group(group) => self
                        .groups
                        .get(group)
                        .is_some_and(|members| members.contains(user)),
                },
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(repository: &str) -> RuleConfig {
        RuleConfig {
            repository: repository.to_owned(),
            anonymous_pull: false,
            pull: None,
            push: None,
            delete: None,
        }
    }

    fn strings(items: &[&str]) -> Option<Vec<String>> {
        Some(items.iter().map(|s| (*s).to_owned()).collect())
    }

    fn rules() -> Rules {
        let groups = BTreeMap::from([("ci".to_owned(), vec!["jenkins".to_owned()])]);
        Rules::new(
            &[
                RuleConfig {
                    anonymous_pull: true,
                    push: strings(&["@ci", "alice"]),
                    ..rule("public/.*")
                },
                RuleConfig {
                    pull: strings(&["@ci", "bob"]),
                    push: strings(&["@ci"]),
                    delete: strings(&["alice"]),
                    ..rule("prod/.*")
                },
            ],
            &groups,
        )
        .unwrap()
    }

    #[test]
    fn public_repositories_allow_anonymous_pulls_only() {
        let rules = rules();
        assert!(rules.anonymous_may("public/app", Action::Pull));
        assert!(!rules.anonymous_may("public/app", Action::Push));
        assert!(!rules.anonymous_may("public/app", Action::Delete));
        assert!(!rules.anonymous_may("prod/app", Action::Pull));
        assert!(!rules.anonymous_may("other/app", Action::Pull));
        // The regex names the whole repository.
        assert!(!rules.anonymous_may("not-public/app", Action::Pull));
        assert!(!rules.anonymous_may("x/public/app", Action::Pull));
    }

    #[test]
    fn users_and_groups_are_matched_per_action() {
        let rules = rules();
        // Public: anyone authenticated pulls (anonymous could), ci and alice push, delete
        // follows push.
        assert!(rules.user_may("carol", "public/app", Action::Pull));
        assert!(rules.user_may("jenkins", "public/app", Action::Push));
        assert!(rules.user_may("alice", "public/app", Action::Push));
        assert!(!rules.user_may("carol", "public/app", Action::Push));
        assert!(rules.user_may("alice", "public/app", Action::Delete));
        assert!(!rules.user_may("carol", "public/app", Action::Delete));
        // Private: only the listed pull; delete is its own list.
        assert!(rules.user_may("bob", "prod/app", Action::Pull));
        assert!(rules.user_may("jenkins", "prod/app", Action::Pull));
        assert!(!rules.user_may("carol", "prod/app", Action::Pull));
        assert!(!rules.user_may("bob", "prod/app", Action::Push));
        assert!(!rules.user_may("jenkins", "prod/app", Action::Delete));
        assert!(rules.user_may("alice", "prod/app", Action::Delete));
        // No rule: every authenticated user may do everything.
        for action in [Action::Pull, Action::Push, Action::Delete] {
            assert!(rules.user_may("carol", "other/app", action));
        }
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let rules = Rules::new(
            &[
                RuleConfig {
                    anonymous_pull: true,
                    ..rule("team/public-.*")
                },
                RuleConfig {
                    push: Some(vec![]),
                    ..rule("team/.*")
                },
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        assert!(rules.anonymous_may("team/public-app", Action::Pull));
        assert!(rules.user_may("anyone", "team/public-app", Action::Push));
        assert!(!rules.anonymous_may("team/app", Action::Pull));
        assert!(!rules.user_may("anyone", "team/app", Action::Push));
        assert!(!rules.user_may("anyone", "team/app", Action::Delete));
    }

    #[test]
    fn bad_patterns_and_unknown_groups_name_the_rule() {
        let error = Rules::new(&[rule("a"), rule("(")], &BTreeMap::new()).unwrap_err();
        assert!(
            error.to_string().contains("auth.rules[1].repository"),
            "{error}"
        );
        let error = Rules::new(
            &[RuleConfig {
                push: strings(&["@nobody"]),
                ..rule("a")
            }],
            &BTreeMap::new(),
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("auth.rules[0].push") && message.contains("nobody"),
            "{message}"
        );
    }
}
