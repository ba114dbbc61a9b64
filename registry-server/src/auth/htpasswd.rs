//! `auth.htpasswd`: users and bcrypt hashes from an htpasswd file (`htpasswd -B`), checked
//! against HTTP Basic credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// A bcrypt check costs tens of milliseconds by design, and a push sends the credentials with
/// every request (dozens per image), so a verified pair is remembered for this long. Only a
/// hash of the pair is kept, never the password.
const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Verified pairs remembered at most; the memory is forgotten whole beyond it.
const VERIFIED_MAX: usize = 4096;

/// The users of an htpasswd file.
#[derive(Debug)]
pub(crate) struct Htpasswd {
    /// user → bcrypt hash.
    users: HashMap<String, String>,
    /// sha256(user NUL password) → when it was verified.
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Htpasswd {
    /// Parses `user:hash` lines; blank lines and `#` comments are skipped. Only bcrypt hashes
    /// (`$2y$`, `$2b$`, `$2a$`) are accepted, as in distribution: the error names the line.
    pub(crate) fn parse(text: &str) -> Result<Htpasswd, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let number = i + 1;
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("line {number}: expected `user:bcrypt-hash`"));
            };
            if user.is_empty() {
                return Err(format!("line {number}: empty user name"));
            }
            if !["$2y$", "$2b$", "$2a$"]
                .iter()
                .any(|prefix| hash.starts_with(prefix))
            {
                return Err(format!(
                    "line {number}: user `{user}` has no bcrypt hash (create it with `htpasswd -B`)"
                ));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(Htpasswd {
            users,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `password` is `user`'s. The bcrypt check runs off the async runtime.
    pub(crate) async fn check(self: &Arc<Self>, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user).cloned() else {
            return false;
        };
        let key = pair_key(user, password);
        if self.recently_verified(&key) {
            return true;
        }
        let password = password.to_owned();
        let verified = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .is_ok_and(|result| result.unwrap_or(false));
        if verified {
            let mut memory = self.verified.lock().expect("htpasswd memory lock");
            if memory.len() >= VERIFIED_MAX {
                memory.clear();
            }
            memory.insert(key, Instant::now());
        }
        verified
    }

    fn recently_verified(&self, key: &[u8; 32]) -> bool {
        let memory = self.verified.lock().expect("htpasswd memory lock");
        memory
            .get(key)
            .is_some_and(|at| at.elapsed() < VERIFIED_TTL)
    }
}

fn pair_key(user: &str, password: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(user.as_bytes());
    hasher.update([0]);
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(user: &str, password: &str) -> String {
        let hash = bcrypt::hash_with_result(password, 4)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        format!("{user}:{hash}\n")
    }

    #[tokio::test]
    async fn right_passwords_pass_and_wrong_ones_fail() {
        let text = format!(
            "# users\n\n{}{}",
            line("alice", "a-pass"),
            line("bob", "b-pass")
        );
        let file = Arc::new(Htpasswd::parse(&text).unwrap());
        assert!(file.check("alice", "a-pass").await);
        // Again, from the memory of verified pairs.
        assert!(file.check("alice", "a-pass").await);
        assert!(file.check("bob", "b-pass").await);
        assert!(!file.check("alice", "b-pass").await);
        assert!(!file.check("alice", "").await);
        assert!(!file.check("carol", "a-pass").await);
    }

    #[test]
    fn non_bcrypt_and_malformed_lines_are_refused_by_line() {
        for (text, expected) in [
            (
                "alice:$apr1$abc$def\n",
                "line 1: user `alice` has no bcrypt",
            ),
            ("\nno-colon\n", "line 2: expected"),
            (":$2y$04$abc\n", "line 1: empty user"),
        ] {
            let error = Htpasswd::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
