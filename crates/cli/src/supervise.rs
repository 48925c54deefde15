//! The background tasks a process cannot live without (the inbox worker, the projector).
//!
//! Each runs until shutdown; one that ends before (it panicked, or returned) leaves a process
//! that still answers health checks while nothing is applied or projected. So the first one
//! to end takes the process down with a non-zero exit status, and whatever supervises it
//! (systemd, Docker's restart policy, Kubernetes) starts a whole one again.

use tokio::task::{JoinError, JoinHandle, JoinSet};

/// Named background tasks.
#[derive(Debug, Default)]
pub(crate) struct BackgroundTasks {
    running: JoinSet<(&'static str, Result<(), JoinError>)>,
}

impl BackgroundTasks {
    pub(crate) fn add(&mut self, name: &'static str, task: JoinHandle<()>) {
        self.running.spawn(async move { (name, task.await) });
    }

    /// Waits for the first task to end and says which and how. Never returns while every
    /// task runs (nor at all when there are none).
    pub(crate) async fn first_to_end(&mut self) -> anyhow::Error {
        let Some(ended) = self.running.join_next().await else {
            return std::future::pending().await;
        };
        match ended {
            Ok((name, Ok(()))) => anyhow::anyhow!("the {name} stopped unexpectedly"),
            Ok((name, Err(failure))) => anyhow::anyhow!("the {name} failed: {}", describe(failure)),
            Err(failure) => anyhow::anyhow!("a background task failed: {}", describe(failure)),
        }
    }

    /// Waits for every task to finish (after shutdown was requested).
    pub(crate) async fn finish(mut self) {
        while let Some(ended) = self.running.join_next().await {
            if let Ok((name, Err(failure))) = ended {
                tracing::error!(task = name, failure = %describe(failure), "background task failed during shutdown");
            }
        }
    }
}

fn describe(failure: JoinError) -> String {
    if !failure.is_panic() {
        return failure.to_string();
    }
    let payload = failure.into_panic();
    format!(
        "panicked: {}",
        subledger_server::panic_message(payload.as_ref())
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_first_task_to_end_is_named_with_its_panic() {
        let mut tasks = BackgroundTasks::default();
        tasks.add("projector", tokio::spawn(std::future::pending()));
        tasks.add(
            "inbox worker",
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                panic!("a row could not be decided");
            }),
        );
        let failure = tasks.first_to_end().await.to_string();
        assert_eq!(
            failure,
            "the inbox worker failed: panicked: a row could not be decided"
        );
    }

    #[tokio::test]
    async fn a_task_that_returns_early_is_a_failure_too() {
        let mut tasks = BackgroundTasks::default();
        tasks.add("projector", tokio::spawn(async {}));
        assert_eq!(
            tasks.first_to_end().await.to_string(),
            "the projector stopped unexpectedly"
        );
    }

    #[tokio::test]
    async fn while_every_task_runs_nothing_is_reported() {
        let mut tasks = BackgroundTasks::default();
        tasks.add("projector", tokio::spawn(std::future::pending()));
        let waited = tokio::time::timeout(Duration::from_millis(50), tasks.first_to_end()).await;
        assert!(waited.is_err());
    }
}
