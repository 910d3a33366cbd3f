//! Several nodes on one PostgreSQL (`--storage.url`): each node keeps a liveness lease (its
//! billing calls' claims are alive while it is held), the node holding the operator key's
//! lease signs every billing call — its own and those the other nodes queue — and every node's
//! paymaster reserves against the one shared ledger. Settlement's state is shared too: every
//! node answers receipts, invoices and POs, and the operator key's leader runs the rounds, each
//! write fenced by its lease and each send committed as an intent first. So is the bundler's:
//! every node indexes mined ops and answers lookups, the bundler key's leader holds the pool,
//! bundles, and judges the ops the other nodes hand it. And the stream index's: one node writes
//! it under its lease, every node reads it.

use std::{sync::Arc, time::Duration};

use alloy::primitives::Address;
use settled_config::NodeConfig;
use settled_contracts::TransactionSender;
use settled_server::CriticalTasks;
use settled_store::{LeaseKeeper, PgStore, Sends, liveness_lease, process_owner};
use settled_streams::{Operator, PgIndex, StreamIndex};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::NodeError;

/// This node's handle on the shared store.
#[derive(Debug, Clone)]
pub(crate) struct SharedStore {
    store: PgStore,
    /// This process, as the store knows it (claims, lease holder).
    owner: String,
    lease_ttl: Duration,
    /// The store's current problem, if any (readiness).
    problem: tokio::sync::watch::Receiver<Option<String>>,
}

/// Connects to the shared store when one is configured, after refusing the roles that cannot
/// share it; keeps this node's liveness lease (a critical task).
pub(crate) async fn open(
    config: &NodeConfig,
    tasks: &CriticalTasks,
    cancel: &CancellationToken,
) -> Result<Option<SharedStore>, NodeError> {
    let Some(settings) = &config.shared_store else { return Ok(None) };
    refuse_unshared_roles(config)?;
    let timeout = config.chain.connect_timeout;
    let store = PgStore::connect(&settings.url, timeout)
        .await
        .map_err(|e| NodeError::SharedStore(e.to_string()))?;
    let (report, problem) = tokio::sync::watch::channel(None);
    tasks.spawn_loop("shared store probe", probe(store.clone(), report, cancel.clone()));
    tasks.spawn_loop("shared store retention", forget_old(store.clone(), cancel.clone()));
    let owner = process_owner();
    let shared = SharedStore { store, owner, lease_ttl: settings.lease_ttl, problem };
    info!(owner = %shared.owner, lease_ms = settings.lease_ttl.as_millis() as u64, "on the shared store");
    // Alive before the first claim: a claim of an owner without its liveness lease is freed.
    let keeper = shared.keeper(liveness_lease(&shared.owner));
    let first = tokio::time::timeout(timeout, keeper.lead(cancel)).await;
    let Ok(Some(first)) = first else {
        return Err(NodeError::SharedStore(format!("no liveness lease within {timeout:?}")));
    };
    tasks.spawn_loop("node liveness", keep_alive(keeper, first, cancel.clone()));
    Ok(Some(shared))
}

fn refuse_unshared_roles(config: &NodeConfig) -> Result<(), NodeError> {
    let refuse = |role, why| Err(NodeError::NotShared { role, why });
    if config.roles.settlement && config.anchor.rpc_url.is_some() {
        let why = "an intent names its signer and nonce, not its chain";
        return refuse("settlement on a separate anchor chain", why);
    }
    Ok(())
}

/// Asks the store every second whether it answers; reports its problem (not ready) until it
/// does again.
async fn probe(
    store: PgStore,
    report: tokio::sync::watch::Sender<Option<String>>,
    cancel: CancellationToken,
) {
    loop {
        let problem = store.ping(Duration::from_secs(2)).await.err();
        let problem = problem.map(|e| format!("the shared store does not answer: {e}"));
        if report.borrow().is_none() && problem.is_some() {
            warn!(problem = problem.as_deref().unwrap_or_default(), "shared store unreachable");
        }
        report.send_replace(problem);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Every ten minutes, deletes the notices and bundler submissions past their retention (every
/// node does: the deletes are idempotent); a failure waits for the next pass.
async fn forget_old(store: PgStore, cancel: CancellationToken) {
    loop {
        let (notices, submissions) =
            (settled_store::NOTICE_RETENTION, settled_store::SUBMISSION_RETENTION);
        match store.forget_old(notices, submissions).await {
            Ok(forgotten) if forgotten != Default::default() => {
                info!(?forgotten, "shared store: old notices and submissions deleted")
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "shared store retention; trying again later"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
    }
}

/// Holds the liveness lease (`first`, as taken) for as long as the node runs, taking it again
/// after an outage.
async fn keep_alive(
    keeper: LeaseKeeper<PgStore>,
    first: settled_store::Leadership,
    cancel: CancellationToken,
) {
    let mut held = Some(first);
    while let Some(leadership) = held.take() {
        leadership.lost.cancelled().await;
        if cancel.is_cancelled() {
            return;
        }
        warn!("liveness lease lost: this node's unsigned billing calls may be taken over");
        held = keeper.lead(&cancel).await;
    }
}

impl SharedStore {
    /// The paymaster's ledger, shared by every node.
    pub(crate) fn ledger(&self) -> Arc<dyn settled_paymaster::LedgerStore> {
        Arc::new(settled_store::PgLedger::new(self.store.clone()))
    }

    /// The store's problem, for readiness.
    pub(crate) fn health(&self) -> settled_server::Dependency {
        self.problem.clone()
    }

    fn keeper(&self, name: String) -> LeaseKeeper<PgStore> {
        LeaseKeeper::new(Arc::new(self.store.clone()), name, self.owner.clone(), self.lease_ttl)
    }

    /// The operator on the shared store: it signs only while this node leads the operator
    /// key (a critical task follows the lease), and queues its calls for the leader otherwise.
    /// Every other send of the key (settlement's) is committed as an intent under the lease
    /// before it is broadcast.
    pub(crate) fn operator(
        &self,
        sender: TransactionSender,
        vault: Address,
        tasks: &CriticalTasks,
        cancel: &CancellationToken,
    ) -> OperatorKey {
        let (fence_tx, fence) = tokio::sync::watch::channel(None);
        let store: Arc<dyn settled_store::SendStore> = Arc::new(self.store.clone());
        let sends = Sends { store, owner: self.owner.clone(), fence: fence.clone() };
        let keeper = self.keeper(format!("operator:{}", sender.address()));
        let sender = Arc::new(sender.with_journal(Arc::new(sends.clone())));
        let operator = Arc::new(Operator::new(sender.clone(), vault, sends));
        let (leader, cancel) = (operator.clone(), cancel.clone());
        tasks.spawn_loop("operator leader", async move {
            leader.lead(keeper, fence_tx, cancel).await;
        });
        OperatorKey { operator, sender, fence }
    }

    /// The bundler's state on the shared store, and this node's leadership of the bundler key
    /// (its lease epoch while it leads; a critical task follows the lease). The store's writes
    /// are fenced by the same lease.
    pub(crate) fn bundler_key(
        &self,
        address: Address,
        tasks: &CriticalTasks,
        cancel: &CancellationToken,
    ) -> (Arc<dyn settled_bundler::BundlerStore>, tokio::sync::watch::Receiver<Option<u64>>) {
        let (fence_tx, fence) = tokio::sync::watch::channel(None);
        let (leader_tx, leader) = tokio::sync::watch::channel(None);
        let keeper = self.keeper(format!("bundler:{address}"));
        let cancel = cancel.clone();
        tasks.spawn_loop("bundler leader", async move {
            while let Some(leadership) = keeper.lead(&cancel).await {
                let Some(lease) = leadership.lease() else { continue };
                let epoch = lease.epoch;
                // The fence first: the new leader's first writes (taking the pool over) need it.
                fence_tx.send_replace(Some(settled_store::Fence::Lease(lease)));
                leader_tx.send_replace(Some(epoch));
                leadership.lost.cancelled().await;
                leader_tx.send_replace(None);
                fence_tx.send_replace(None);
            }
        });
        (Arc::new(settled_store::PgBundler::new(self.store.clone(), fence)), leader)
    }

    /// The stream index on the shared store, read by this node; written by it while it holds
    /// the index's lease (`stream-index:<vault>`, a critical task follows it) from `leader`'s
    /// follower of the vault, resuming at the shared cursor. The notices its writer publishes
    /// reach this node's subscribers through a relay.
    pub(crate) async fn stream_index(
        &self,
        vault: Address,
        reorg_depth: u64,
        thresholds: settled_streams::AlertThresholds,
        leader: settled_streams::IndexWriter,
        tasks: &CriticalTasks,
        cancel: &CancellationToken,
    ) -> Result<Arc<StreamIndex>, NodeError> {
        let (fence_tx, fence) = tokio::sync::watch::channel(None);
        let store = PgIndex::new(self.store.clone(), vault, fence);
        let shared: Arc<dyn settled_streams::IndexStore> = Arc::new(store.clone());
        let index = Arc::new(StreamIndex::on_store(shared, vault, reorg_depth, thresholds).await?);
        tasks.spawn_loop("stream notice relay", store.relay(index.notice_sender(), cancel.clone()));
        let keeper = self.keeper(format!("stream-index:{vault}"));
        let writer = leader.write(keeper, fence_tx, index.clone(), cancel.clone());
        tasks.spawn("stream index writer", writer);
        Ok(index)
    }

    /// Relays the PO alerts the leader publishes to this node's subscribers.
    pub(crate) fn order_alert_relay(
        &self,
        to: tokio::sync::broadcast::Sender<settled_settlement::OrderAlert>,
        cancel: &CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        settled_settlement::PgSettlement::new(self.store.clone()).relay_alerts(to, cancel.clone())
    }

    /// Settlement's state, shared by every node.
    pub(crate) fn settlement(&self) -> Arc<dyn settled_settlement::SettlementStore> {
        Arc::new(settled_settlement::PgSettlement::new(self.store.clone()))
    }
}

/// The operator key on the shared store: its billing calls, its sender (journaled), and the
/// fence this node holds while it leads the key.
pub(crate) struct OperatorKey {
    pub(crate) operator: Arc<Operator>,
    pub(crate) sender: Arc<TransactionSender>,
    pub(crate) fence: tokio::sync::watch::Receiver<Option<settled_store::Fence>>,
}
