//! The node's own methods — `eth_chainId`, `web3_clientVersion`, `system_health` (`GET
//! /health`) and `system_ready` (`GET /ready`) — and what health reports: the chain's contact,
//! the lag, each component's task.

use std::sync::Arc;

use alloy::primitives::U64;
use jsonrpsee::{RpcModule, types::ErrorObjectOwned};
use serde::Serialize;
use settled_contracts::{BlockRef, ChainContact, FollowerHandle};
use tokio::sync::watch;

use crate::{
    ServerError,
    tasks::{CriticalTasks, TaskState},
};

/// The node's identification in `web3_clientVersion`.
pub const CLIENT_VERSION: &str = concat!("settled/v", env!("CARGO_PKG_VERSION"));

/// `system_ready`'s error while the node is degraded: the server is up, the chain is not
/// (JSON-RPC's server-error range; `GET /ready` answers it with a non-2xx status).
pub const NOT_READY: i32 = -32050;

/// What `system_health` (`GET /health`, liveness: answered while the node serves) and
/// `system_ready` (`GET /ready`, readiness: an error, so not 2xx, unless `ok`) report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    /// `ok`, or `degraded` with the reasons in `problems`.
    status: &'static str,
    chain_id: u64,
    /// The newest block the node has processed.
    head_block: Option<u64>,
    /// The chain's head at the last contact.
    chain_head: Option<u64>,
    /// Seconds since the node last heard from the chain.
    last_chain_contact_secs: Option<u64>,
    /// Each component (supervised task) and its state.
    components: std::collections::BTreeMap<&'static str, TaskState>,
    problems: Vec<String>,
}

/// When the node counts as degraded.
#[derive(Debug, Clone, Copy)]
pub struct HealthLimits {
    /// No answer from the chain for this long.
    pub stale_after: std::time::Duration,
    /// Processed blocks trail the chain's head by more than this.
    pub max_lag_blocks: u64,
}

struct NodeInfo {
    chain_id: u64,
    head: watch::Receiver<Option<BlockRef>>,
    contact: watch::Receiver<Option<ChainContact>>,
    limits: HealthLimits,
    tasks: CriticalTasks,
    dependencies: Vec<Dependency>,
}

/// A service the node depends on besides the chain (the shared store): its current problem,
/// if it has one, makes the node not ready.
pub type Dependency = watch::Receiver<Option<String>>;

impl NodeInfo {
    fn health(&self) -> Health {
        let head_block = self.head.borrow().map(|b| b.number);
        let contact = *self.contact.borrow();
        let age = contact.map(|c| c.at.elapsed());
        let mut problems = Vec::new();
        match age {
            None => problems.push("the chain has not answered yet".to_owned()),
            Some(age) if age > self.limits.stale_after => {
                problems.push(format!("no answer from the chain for {} s", age.as_secs()))
            }
            Some(_) => {}
        }
        if let (Some(chain), Some(head)) = (contact.map(|c| c.chain_head), head_block)
            && chain.saturating_sub(head) > self.limits.max_lag_blocks
        {
            problems.push(format!("{} blocks behind the chain", chain - head));
        }
        problems.extend(self.dependencies.iter().filter_map(|d| d.borrow().clone()));
        let components = self.tasks.states();
        for (task, state) in &components {
            if *state != TaskState::Running {
                problems.push(format!("the {task} task has stopped"));
            }
        }
        Health {
            status: if problems.is_empty() { "ok" } else { "degraded" },
            chain_id: self.chain_id,
            head_block,
            chain_head: contact.map(|c| c.chain_head),
            last_chain_contact_secs: age.map(|a| a.as_secs()),
            components,
            problems,
        }
    }
}

/// The node's own methods: `eth_chainId`, `web3_clientVersion`, `system_health`,
/// `system_ready` (degraded while any of `dependencies` reports a problem).
pub fn node_module(
    chain_id: u64,
    follower: &FollowerHandle,
    limits: HealthLimits,
    tasks: CriticalTasks,
    dependencies: Vec<Dependency>,
) -> Result<RpcModule<()>, ServerError> {
    let info = Arc::new(NodeInfo {
        chain_id,
        head: follower.head_watch(),
        contact: follower.contact_watch(),
        limits,
        tasks,
        dependencies,
    });
    let mut module = RpcModule::new(());
    let register = |e: jsonrpsee::core::RegisterMethodError| ServerError::Register(e.to_string());

    let chain = info.clone();
    module
        .register_method("eth_chainId", move |_, _, _| {
            Ok::<_, ErrorObjectOwned>(U64::from(chain.chain_id))
        })
        .map_err(register)?;
    module.register_method("web3_clientVersion", |_, _, _| CLIENT_VERSION).map_err(register)?;
    let live = info.clone();
    module
        .register_method("system_health", move |_, _, _| Ok::<_, ErrorObjectOwned>(live.health()))
        .map_err(register)?;
    module
        .register_method("system_ready", move |_, _, _| {
            let health = info.health();
            if health.status == "ok" {
                return Ok(health);
            }
            let data = serde_json::to_value(&health).ok();
            Err(ErrorObjectOwned::owned(NOT_READY, "not ready", data))
        })
        .map_err(register)?;
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(contact: Option<ChainContact>, tasks: CriticalTasks) -> NodeInfo {
        let head = BlockRef { number: 10, hash: Default::default() };
        NodeInfo {
            chain_id: 1,
            head: watch::channel(Some(head)).1,
            contact: watch::channel(contact).1,
            limits: HealthLimits {
                stale_after: std::time::Duration::from_secs(10),
                max_lag_blocks: 64,
            },
            tasks,
            dependencies: Vec::new(),
        }
    }

    /// Health is ok with a fresh contact and every task running; each problem is named.
    #[tokio::test]
    async fn health_names_each_problem() {
        let fresh = ChainContact { at: std::time::Instant::now(), chain_head: 12 };
        let tasks = CriticalTasks::new(tokio_util::sync::CancellationToken::new());
        tasks.spawn_loop("bundler", std::future::pending::<()>());
        assert_eq!(info(Some(fresh), tasks.clone()).health().status, "ok");

        tasks.spawn_loop("settlement", async {});
        while tasks.states()["settlement"] == TaskState::Running {
            tokio::task::yield_now().await;
        }
        let behind = ChainContact { at: std::time::Instant::now(), chain_head: 500 };
        let health = info(Some(behind), tasks).health();
        assert_eq!(health.status, "degraded");
        assert_eq!(
            health.problems,
            vec![
                "490 blocks behind the chain".to_owned(),
                "the settlement task has stopped".to_owned()
            ]
        );
        assert_eq!(
            info(None, CriticalTasks::new(Default::default())).health().problems,
            vec!["the chain has not answered yet".to_owned()]
        );

        // A dependency's problem makes the node not ready, and clears with it.
        let (report, problem) = watch::channel(Some("the shared store is unreachable".to_owned()));
        let mut node = info(Some(fresh), CriticalTasks::new(Default::default()));
        node.dependencies.push(problem);
        assert_eq!(node.health().problems, vec!["the shared store is unreachable".to_owned()]);
        report.send_replace(None);
        assert_eq!(node.health().status, "ok");
    }
}
