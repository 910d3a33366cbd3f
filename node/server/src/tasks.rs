//! Supervised critical tasks (after reth's `TaskManager::spawn_critical`): the node's long-running
//! components by name. Any of them ending before the node was asked to stop — returning, failing
//! or panicking — cancels the whole node, and `settled` exits non-zero naming the task: a node
//! whose bundler loop died must not keep accepting ops that would never be bundled.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex},
};

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::error;

/// The first critical task that ended on its own, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    /// The task's name (`bundler`, `stream index`, ...).
    pub task: &'static str,
    /// What ended it.
    pub reason: String,
}

/// A component's state as `/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TaskState {
    /// Working.
    Running,
    /// Ended after the node was asked to stop.
    Stopped,
    /// Ended on its own: the node is stopping because of it.
    Failed,
}

#[derive(Debug, Default)]
struct Board {
    states: BTreeMap<&'static str, TaskState>,
    failure: Option<TaskFailure>,
}

/// The node's critical tasks, sharing its cancellation token.
#[derive(Debug, Clone)]
pub struct CriticalTasks {
    cancel: CancellationToken,
    board: Arc<Mutex<Board>>,
    handles: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl CriticalTasks {
    /// Tasks that stop when `cancel` fires, and fire it when one of them ends early.
    pub fn new(cancel: CancellationToken) -> Self {
        Self { cancel, board: Arc::default(), handles: Arc::default() }
    }

    /// Runs `task` under `name`. It is expected to run until the node's token is cancelled;
    /// ending any other way (an `Err`, a panic, or simply returning) stops the node.
    pub fn spawn<F, E>(&self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.set(name, TaskState::Running);
        let inner = tokio::spawn(task);
        let (cancel, board) = (self.cancel.clone(), self.board.clone());
        let supervisor = tokio::spawn(async move {
            let reason = match inner.await {
                Ok(Ok(())) if cancel.is_cancelled() => None,
                Ok(Ok(())) => Some("it ended while the node was running".to_owned()),
                Ok(Err(err)) => Some(err.to_string()),
                Err(join) if join.is_panic() => Some(format!("it panicked: {join}")),
                Err(join) => Some(join.to_string()),
            };
            let Ok(mut board) = board.lock() else { return };
            match reason {
                None => {
                    board.states.insert(name, TaskState::Stopped);
                }
                Some(reason) => {
                    error!(task = name, %reason, "a critical task stopped: stopping the node");
                    board.states.insert(name, TaskState::Failed);
                    board.failure.get_or_insert(TaskFailure { task: name, reason });
                    drop(board);
                    cancel.cancel();
                }
            }
        });
        if let Ok(mut handles) = self.handles.lock() {
            handles.push(supervisor);
        }
    }

    /// Runs `task` (which ends only when cancelled) under `name`.
    pub fn spawn_loop<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, async move {
            task.await;
            Ok::<(), std::convert::Infallible>(())
        });
    }

    /// Each task's state, by name.
    pub fn states(&self) -> BTreeMap<&'static str, TaskState> {
        self.board.lock().map(|b| b.states.clone()).unwrap_or_default()
    }

    fn set(&self, name: &'static str, state: TaskState) {
        if let Ok(mut board) = self.board.lock() {
            board.states.insert(name, state);
        }
    }

    /// Waits for every task to end (after the token fired); the first failure, if any.
    pub async fn join(&self) -> Option<TaskFailure> {
        let handles = self.handles.lock().map(|mut h| std::mem::take(&mut *h)).unwrap_or_default();
        for handle in handles {
            let _ = handle.await;
        }
        self.board.lock().ok().and_then(|b| b.failure.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that fails cancels the node and is named; the others stop cleanly.
    #[tokio::test]
    async fn a_failing_task_stops_the_node_and_is_named() {
        let cancel = CancellationToken::new();
        let tasks = CriticalTasks::new(cancel.clone());
        let token = cancel.clone();
        tasks.spawn_loop("follower", async move { token.cancelled().await });
        tasks.spawn("bundler", async { Err::<(), _>("the chain channel closed") });
        tokio::time::timeout(std::time::Duration::from_secs(5), cancel.cancelled())
            .await
            .expect("the failure cancels the node");
        let failure = tasks.join().await;
        assert_eq!(
            failure,
            Some(TaskFailure { task: "bundler", reason: "the chain channel closed".into() })
        );
        let states = tasks.states();
        assert_eq!(states["bundler"], TaskState::Failed);
        assert_eq!(states["follower"], TaskState::Stopped);
    }

    /// Returning early and panicking are failures too; ending after cancellation is not.
    #[tokio::test]
    async fn early_returns_and_panics_are_failures() {
        for (name, task) in [
            ("returns", Box::pin(async {}) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>),
            ("panics", Box::pin(async { panic!("boom") })),
        ] {
            let cancel = CancellationToken::new();
            let tasks = CriticalTasks::new(cancel.clone());
            tasks.spawn_loop(name, task);
            let failure = tasks.join().await.expect("a failure");
            assert_eq!(failure.task, name);
            assert!(cancel.is_cancelled());
        }
        let cancel = CancellationToken::new();
        let tasks = CriticalTasks::new(cancel.clone());
        cancel.cancel();
        tasks.spawn_loop("after stop", async {});
        assert_eq!(tasks.join().await, None);
        assert_eq!(tasks.states()["after stop"], TaskState::Stopped);
    }
}
