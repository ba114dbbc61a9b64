//! Turning SIGTERM / SIGINT into a [`CancellationToken`] that the whole component watches, and
//! draining a component's background tasks (a [`TaskTracker`]) once its servers have stopped.

use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a component waits for its background tasks after its servers stopped. Tasks that
/// watch the token end within milliseconds; this bounds the ones finishing a step first (a
/// write-back or replication upload in flight). Kept well inside the deploy manifests' grace
/// periods (30 s and more, which also cover the servers' own drain) so that the orchestrator
/// never has to SIGKILL; whatever is cut here is redone from its durable queue after a restart.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Returns a token cancelled on the first SIGTERM or SIGINT (the signal is logged).
///
/// The handlers are registered before this returns, so a signal arriving right after the call
/// is not lost (and does not kill the process). Must be called inside a tokio runtime.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let terminate = register(SignalKind::terminate(), "SIGTERM");
    let interrupt = register(SignalKind::interrupt(), "SIGINT");
    let cancel = token.clone();
    // Untracked: it ends as soon as the token is cancelled, before any drain begins.
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

/// Closes `tasks` and waits for every task on it until `deadline`. Returns `true` when all ended;
/// otherwise logs how many `component` abandons (they are dropped with the runtime when the
/// caller returns) and returns `false`.
pub async fn drain(tasks: &TaskTracker, deadline: Duration, component: &str) -> bool {
    tasks.close();
    if tasks.is_empty() {
        return true;
    }
    tracing::info!(
        component,
        running = tasks.len(),
        ?deadline,
        "waiting for background tasks"
    );
    match tokio::time::timeout(deadline, tasks.wait()).await {
        Ok(()) => {
            tracing::info!(component, "background tasks finished");
            true
        }
        Err(_) => {
            tracing::warn!(
                component,
                abandoned = tasks.len(),
                ?deadline,
                "background tasks still running at the shutdown deadline: abandoning them (queued work resumes after a restart)"
            );
            false
        }
    }
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

    #[tokio::test]
    async fn drain_waits_for_tasks_that_end_in_time() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};

        let tasks = TaskTracker::new();
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            flag.store(true, Ordering::SeqCst);
        });
        assert!(drain(&tasks, Duration::from_secs(60), "test").await);
        assert!(
            finished.load(Ordering::SeqCst),
            "drain returned before the task ended"
        );
        assert!(tasks.is_closed() && tasks.is_empty());
    }

    #[tokio::test]
    async fn drain_gives_up_on_a_task_at_the_deadline() {
        let tasks = TaskTracker::new();
        tasks.spawn(std::future::pending::<()>());
        assert!(!drain(&tasks, Duration::from_millis(50), "test").await);
        assert_eq!(tasks.len(), 1);
    }
}
