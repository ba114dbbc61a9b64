//! Turning SIGTERM / SIGINT into a [`CancellationToken`] that the whole component watches.

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGTERM or SIGINT (the signal is logged).
///
/// The handlers are registered before this returns, so a signal arriving right after the call
/// is not lost (and does not kill the process). Must be called inside a tokio runtime.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let terminate = register(SignalKind::terminate(), "SIGTERM");
    let interrupt = register(SignalKind::interrupt(), "SIGINT");
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            // Someone else cancelled the token: nothing left to watch for.
            () = cancel.cancelled() => {}
            name = first_signal(terminate, interrupt) => {
                tracing::info!(signal = name, "shutdown requested");
                cancel.cancel();
            }
        }
    });
    token
}

fn register(kind: SignalKind, name: &'static str) -> Option<(Signal, &'static str)> {
    match signal(kind) {
        Ok(stream) => Some((stream, name)),
        Err(error) => {
            tracing::warn!(%error, signal = name, "cannot watch signal");
            None
        }
    }
}

async fn first_signal(
    a: Option<(Signal, &'static str)>,
    b: Option<(Signal, &'static str)>,
) -> &'static str {
    tokio::select! {
        name = wait(a) => name,
        name = wait(b) => name,
    }
}

/// Resolves with the signal's name when it arrives; never resolves for a signal we could not
/// register (or whose stream ended).
async fn wait(registered: Option<(Signal, &'static str)>) -> &'static str {
    if let Some((mut stream, name)) = registered
        && stream.recv().await.is_some()
    {
        return name;
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn sigterm_cancels_the_token() {
        let token = on_signals();
        assert!(!token.is_cancelled());
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(10), token.cancelled())
            .await
            .expect("token cancelled after SIGTERM");
    }
}
