//! Wiring: connect to the chain, open storage, start the chain follower, the RPC server and the
//! metrics endpoint, and stop them all together.

use std::{net::SocketAddr, time::Duration};

use alloy::{
    providers::{DynProvider, Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
};
use jsonrpsee::server::ServerHandle;
use settled_bundler::{Bundler, BundlerConfig};
use settled_contracts::{
    BlockRef, ChainEvent, ChainFollower, Deployment, EntryPointVersion, FollowerHandle, LocalAnvil,
    SponsorPaymaster,
};
use settled_paymaster::{Paymaster, PaymasterConfig, PaymasterSigner, paymaster_module};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::{ChainSource, NodeConfig},
    dev::{self, DevKeys},
    error::NodeError,
    metrics::{self, names},
    paymaster::{load_key, paymaster_signer, policies},
    rpc,
    sender::TransactionSender,
    settlement::{SettlementChain, Settler, settlement_module},
    storage::{ChainIdentity, OnOtherChain, Storage},
    streams::{Opener, Operator, StreamIndex, api_keys, billing_module},
};

/// A running node. Dropping it does not stop it: cancel its token (or call
/// [`NodeHandle::shutdown`]) and await [`NodeHandle::stopped`].
#[derive(Debug)]
pub struct NodeHandle {
    rpc_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    chain_rpc_url: String,
    deployment: Deployment,
    cancel: CancellationToken,
    server: ServerHandle,
    follower: FollowerHandle,
    tasks: Vec<JoinHandle<()>>,
    storage: Storage,
    anvil: Option<LocalAnvil>,
    bundler: Option<Bundler>,
    paymaster: Option<Paymaster>,
    streams: Option<std::sync::Arc<StreamIndex>>,
    settlement: Option<std::sync::Arc<Settler>>,
}

/// The bundler's key: the configured one (environment or file), else the dev chain's.
fn bundler_signer(
    config: &NodeConfig,
    dev_key: Option<PrivateKeySigner>,
) -> Result<Option<PrivateKeySigner>, NodeError> {
    let settings = &config.bundler;
    Ok(load_key(settings.key.as_ref(), settings.key_file.as_deref(), "bundler key")?.or(dev_key))
}

/// Connects to an Ethereum JSON-RPC endpoint and checks that it answers within `timeout`.
pub async fn connect(url: &str, timeout: Duration) -> Result<DynProvider, NodeError> {
    let parsed: alloy::transports::http::reqwest::Url = url
        .parse()
        .map_err(|e| NodeError::InvalidUrl { url: url.into(), reason: format!("{e}") })?;
    let provider = ProviderBuilder::new().connect_http(parsed).erased();
    let unreachable = |reason: String| NodeError::Unreachable { url: url.into(), reason };
    match tokio::time::timeout(timeout, provider.get_chain_id()).await {
        Ok(Ok(_)) => Ok(provider),
        Ok(Err(err)) => Err(unreachable(root_cause(&err))),
        Err(_) => Err(unreachable(format!("no answer within {timeout:?}"))),
    }
}

/// The hash of the chain's block 0: with the chain id, what a datadir is bound to.
async fn genesis_hash(
    provider: &DynProvider,
    url: &str,
) -> Result<alloy::primitives::B256, NodeError> {
    let unreachable = |reason: String| NodeError::Unreachable { url: url.into(), reason };
    let block = provider
        .get_block_by_number(alloy::eips::BlockNumberOrTag::Number(0))
        .await
        .map_err(|e| unreachable(root_cause(&e)))?
        .ok_or_else(|| unreachable("the endpoint has no block 0".into()))?;
    Ok(block.header.hash)
}

/// The innermost error message: "connection refused" rather than a chain of wrappers.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Where the follower resumes: after the lowest consumer cursor, so every consumer sees every
/// block since its own cursor (blocks mined while the node was down included); `None` (the
/// deployment's start block) while any consumer has none.
fn resume_point(cursors: &[(&str, Option<BlockRef>)]) -> Option<BlockRef> {
    let mut lowest: Option<BlockRef> = None;
    for (consumer, cursor) in cursors {
        let Some(cursor) = cursor else {
            info!(consumer, "a consumer without a chain cursor: following from the deployment");
            return None;
        };
        if lowest.is_none_or(|l| cursor.number < l.number) {
            lowest = Some(*cursor);
        }
    }
    if let Some(block) = lowest {
        info!(after = block.number, "resuming the chain after the consumers' lowest cursor");
    }
    lowest
}

/// Starts a node on `source` with `config`; it runs until `cancel` fires.
pub async fn launch(
    config: NodeConfig,
    source: ChainSource,
    cancel: CancellationToken,
) -> Result<NodeHandle, NodeError> {
    let started = std::time::Instant::now();
    crate::listener::raise_open_file_limit();
    let mut config = config;
    // dev's own Anvil is a new chain at every start: its old data is dead, so it starts clean.
    let is_dev = matches!(source, ChainSource::Dev(_));
    let on_other_chain = match &source {
        ChainSource::Dev(dev) if dev.attach.is_none() => OnOtherChain::StartClean,
        _ => OnOtherChain::Refuse,
    };
    let (anvil, chain_rpc_url, provider, mut deployment, dev_keys) = match source {
        ChainSource::Dev(dev_config) => {
            let chain = dev::prepare(&config, &dev_config).await?;
            if config.paymaster.policies.is_empty() && config.paymaster.policies_file.is_none() {
                let policy = crate::paymaster::dev_policy();
                // A wallet that names no policy is sponsored under dev's only one.
                config.paymaster.default_policy.get_or_insert_with(|| policy.id.clone());
                config.paymaster.policies.push(policy);
            }
            (chain.anvil, chain.rpc_url, chain.provider, chain.deployment, chain.keys)
        }
        ChainSource::Remote { rpc_url, deployment } => {
            let deployment = Deployment::load(&deployment)?;
            let provider = connect(&rpc_url, config.chain.connect_timeout).await?;
            (None, rpc_url, provider, deployment, DevKeys::default())
        }
    };
    deployment.verify(&provider).await?;
    let chain_id = deployment.chain_id;
    let identity =
        ChainIdentity { chain_id, genesis: genesis_hash(&provider, &chain_rpc_url).await? };
    let storage = Storage::open(&config.datadir, identity, on_other_chain).await?;
    if is_dev {
        // `settled dev`: its deployment file, now that this process holds the datadir, and a
        // billing key when none is configured (kept across restarts in the datadir).
        if on_other_chain == OnOtherChain::Refuse {
            // Attached to a chain the datadir knows: its contracts were deployed before.
            dev::keep_start_block(&config.datadir, &mut deployment);
        }
        dev::save(&config.datadir, &deployment)?;
        if config.billing.api_keys.is_empty() && config.billing.api_keys_file.is_none() {
            config.billing.api_keys.push(dev::billing_key(&config.datadir)?);
        }
    }

    let metrics_handle = metrics::install()?;
    ::metrics::gauge!(names::INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    ::metrics::gauge!(names::START_TIME).set(now.as_secs_f64());

    let watched = deployment.contracts().iter().map(|(_, address)| *address).collect();
    let mut follower =
        ChainFollower::new(provider.clone(), config.follower(deployment.start_block, watched));
    // Each consumer's durable cursor: the follower resumes after the lowest.
    let mut cursors: Vec<(&str, Option<BlockRef>)> = Vec::new();
    let mut tasks = vec![tokio::spawn(record_chain_metrics(follower.subscribe(), cancel.clone()))];
    // The tasks health watches: one that ends leaves the node serving but not working.
    let watched = rpc::TaskWatch::default();

    let bundler = match bundler_signer(&config, dev_keys.bundler)? {
        Some(signer) if config.bundler.enabled => {
            let settings = BundlerConfig {
                beneficiary: config.bundler.beneficiary,
                mode: config.bundler.mode,
                auto_interval: config.bundler.interval,
                max_bundle_gas: config.bundler.max_bundle_gas,
                max_bundle_ops: config.bundler.max_bundle_ops,
                reputation: config.bundler.reputation.clone(),
                fee_bump_after_blocks: config.bundler.fee_bump_after_blocks,
                max_fee_per_gas: config.bundler.max_fee_per_gas,
                entry_points: config.bundler.entry_points.clone(),
                params: config.bundler.params,
                ..Default::default()
            };
            let bundler = Bundler::new(settings, provider.clone(), signer, storage.db()).await?;
            cursors.push(("bundler", bundler.chain_cursor()?));
            let task = tokio::spawn(bundler.clone().run(follower.consumer(), cancel.clone()));
            watched.add("bundler", &task);
            tasks.push(task);
            info!(address = %bundler.address(), mode = ?config.bundler.mode, "bundler running");
            Some(bundler)
        }
        None if config.bundler.enabled => {
            warn!("bundler disabled: no key (--bundler.key-file or SETTLED_BUNDLER_KEY)");
            None
        }
        _ => None,
    };
    let paymaster = match paymaster_signer(&config, dev_keys.paymaster)? {
        Some(key) if config.paymaster.enabled => {
            let settings = PaymasterConfig {
                paymasters: EntryPointVersion::ALL
                    .iter()
                    .map(|v| (*v, deployment.paymaster(*v)))
                    .collect(),
                validity_secs: config.paymaster.validity_secs,
                daily_budget: config.paymaster.daily_budget_wei,
                low_deposit_wei: config.paymaster.low_deposit_wei,
                policies: policies(&config)?,
                rules: config.bundler.params.rules(),
                default_policy: config.paymaster.default_policy.clone(),
                ..Default::default()
            };
            let signer = PaymasterSigner::new(key);
            check_paymaster_signer(&provider, &deployment, signer.address()).await;
            let paymaster =
                Paymaster::new(settings, provider.clone(), signer, storage.db()).await?;
            cursors.push(("paymaster", paymaster.chain_cursor()?));
            let task = tokio::spawn(paymaster.clone().run(follower.consumer(), cancel.clone()));
            watched.add("paymaster", &task);
            tasks.push(task);
            info!(signer = %paymaster.signer(), "paymaster running");
            Some(paymaster)
        }
        None if config.paymaster.enabled => {
            warn!("paymaster disabled: no key (--paymaster.key-file or SETTLED_PAYMASTER_KEY)");
            None
        }
        _ => None,
    };
    let streams = if deployment.stream_vault.is_zero() {
        None
    } else {
        let db = storage.db().clone();
        let (vault, depth) = (deployment.stream_vault, config.chain.reorg_depth);
        let thresholds = config.billing.alerts;
        let index =
            tokio::task::spawn_blocking(move || StreamIndex::open(&db, vault, depth, thresholds))
                .await
                .map_err(|e| NodeError::Storage {
                    path: config.datadir.clone(),
                    reason: e.to_string(),
                })??;
        index.announce();
        let index = std::sync::Arc::new(index);
        let cursor = index.cursor()?.map(|c| BlockRef { number: c.number, hash: c.hash });
        cursors.push(("stream index", cursor));
        let task = tokio::spawn(index.clone().run(follower.consumer(), cancel.clone()));
        watched.add("stream index", &task);
        tasks.push(task);
        Some(index)
    };
    follower.resume_after(resume_point(&cursors));
    let follower = follower.spawn(cancel.child_token());

    let limits = rpc::HealthLimits {
        // Ten polls missed, and at least 10 s: one slow answer is not an outage.
        stale_after: (config.chain.poll_interval * 10).max(Duration::from_secs(10)),
        max_lag_blocks: config.chain.reorg_depth,
    };
    watched.add("chain follower", follower.task());
    let mut module = rpc::node_module(chain_id, &follower, limits, watched.clone())?;
    let merge = |e: jsonrpsee::core::RegisterMethodError| NodeError::Metrics(e.to_string());
    if let Some(bundler) = &bundler {
        module
            .merge(settled_bundler::bundler_module(bundler.clone(), config.rpc.debug)?)
            .map_err(merge)?;
    }
    if let Some(paymaster) = &paymaster {
        module.merge(paymaster_module(paymaster.clone(), config.rpc.admin)?).map_err(merge)?;
    }
    let mut settlement = None;
    if let Some(index) = &streams {
        let keys = api_keys(&config.billing.api_keys, config.billing.api_keys_file.as_deref())
            .map_err(|reason| NodeError::ApiKeys {
                path: config.billing.api_keys_file.clone().unwrap_or_default(),
                reason,
            })?;
        let billing = &config.billing;
        let key = load_key(
            billing.operator_key.as_ref(),
            billing.operator_key_file.as_deref(),
            "operator key",
        )?
        .or(dev_keys.operator);
        let operator = match key {
            Some(key) => {
                // One sender for everything signed with the operator key: one nonce sequence.
                let sender = std::sync::Arc::new(TransactionSender::new(provider.clone(), key));
                let operator =
                    Operator::new(sender, deployment.stream_vault, storage.db()).map_err(|e| {
                        NodeError::Storage { path: config.datadir.clone(), reason: e.to_string() }
                    })?;
                Some(std::sync::Arc::new(operator))
            }
            None => None,
        };
        // stream_open prepares sponsored ops: it needs the bundler, the paymaster and an operator.
        let opener = match (&bundler, &paymaster, &operator) {
            (Some(bundler), Some(paymaster), Some(operator)) => {
                let records = storage.db().open_tree("streams.open").map_err(|e| {
                    NodeError::Storage { path: config.datadir.clone(), reason: e.to_string() }
                })?;
                Some(std::sync::Arc::new(Opener {
                    provider: provider.clone(),
                    bundler: bundler.clone(),
                    paymaster: paymaster.clone(),
                    paymasters: EntryPointVersion::ALL
                        .iter()
                        .map(|v| (*v, deployment.paymaster(*v)))
                        .collect(),
                    vault: deployment.stream_vault,
                    operator: operator.clone(),
                    chain_id,
                    records,
                }))
            }
            _ => None,
        };
        // Settlement: the operator's streams, batched and committed under its address.
        if let (Some(operator), false) = (&operator, deployment.settlement_anchor.is_zero()) {
            let chain = SettlementChain {
                sender: operator.sender.clone(),
                vault: deployment.stream_vault,
                anchor: deployment.settlement_anchor,
                chain_id,
            };
            let settler =
                Settler::new(chain, index.clone(), storage.db(), config.settlement).map_err(
                    |e| NodeError::Storage { path: config.datadir.clone(), reason: e.to_string() },
                )?;
            let settler = std::sync::Arc::new(settler);
            let admin = config.rpc.admin;
            module.merge(settlement_module(settler.clone(), admin)).map_err(merge)?;
            if config.settlement.enabled {
                let task = tokio::spawn(settler.clone().run(cancel.clone()));
                watched.add("settlement", &task);
                tasks.push(task);
                info!(interval_secs = config.settlement.interval.as_secs(), "settlement running");
            }
            settlement = Some(settler);
        }
        let invoices = settlement.clone();
        module
            .merge(billing_module(index.clone(), keys, operator, opener, invoices))
            .map_err(merge)?;
    }

    let (rpc_addr, server) = rpc::serve(&config.rpc, module).await?;

    let metrics_addr = match config.metrics {
        Some(addr) => {
            let (bound, task) = metrics::serve(addr, metrics_handle, cancel.clone()).await?;
            tasks.push(task);
            Some(bound)
        }
        None => None,
    };

    info!(
        rpc = %rpc_addr,
        metrics = ?metrics_addr,
        chain_id,
        chain = %chain_rpc_url,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "settled ready"
    );
    Ok(NodeHandle {
        rpc_addr,
        metrics_addr,
        chain_rpc_url,
        deployment,
        cancel,
        server,
        follower,
        tasks,
        storage,
        anvil,
        bundler,
        paymaster,
        streams,
        settlement,
    })
}

/// Warns when the paymaster contracts accept another signer than our key: every sponsorship
/// would then fail the EntryPoint's check (the denial-of-wallet guard refuses to hand them out).
async fn check_paymaster_signer(
    provider: &DynProvider,
    deployment: &Deployment,
    ours: alloy::primitives::Address,
) {
    for version in EntryPointVersion::ALL {
        let address = deployment.paymaster(version);
        match SponsorPaymaster::new(address, provider).signer().call().await {
            Ok(accepted) if accepted == ours => {}
            Ok(accepted) => warn!(
                paymaster = %address,
                %accepted,
                key = %ours,
                "the paymaster contract accepts another signer than this node's key: sponsorships will be refused"
            ),
            Err(error) => {
                warn!(paymaster = %address, %error, "could not read the paymaster's signer")
            }
        }
    }
}

async fn record_chain_metrics(
    mut events: tokio::sync::broadcast::Receiver<ChainEvent>,
    cancel: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(ChainEvent::Block(block)) => {
                ::metrics::gauge!(names::CHAIN_HEAD).set(block.block.number as f64);
            }
            Ok(ChainEvent::Reorg(reorg)) => {
                ::metrics::counter!(names::CHAIN_REORGS).increment(1);
                ::metrics::counter!(names::CHAIN_REORGED_BLOCKS)
                    .increment(reorg.removed.len() as u64);
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                warn!(missed = n, "metrics fell behind the chain follower");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl NodeHandle {
    /// Where the JSON-RPC server listens.
    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc_addr
    }

    /// `http://` URL of the JSON-RPC server.
    pub fn rpc_url(&self) -> String {
        format!("http://{}", self.rpc_addr)
    }

    /// Where `/metrics` is served, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The chain's RPC endpoint the node uses.
    pub fn chain_rpc_url(&self) -> &str {
        &self.chain_rpc_url
    }

    /// The contracts the node serves.
    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// The chain follower, for components that subscribe to it.
    pub fn follower(&self) -> &FollowerHandle {
        &self.follower
    }

    /// The bundler, when it runs.
    pub fn bundler(&self) -> Option<&Bundler> {
        self.bundler.as_ref()
    }

    /// The stream index, when the deployment has a `StreamVault`.
    pub fn streams(&self) -> Option<&StreamIndex> {
        self.streams.as_deref()
    }

    /// The settlement scheduler, when the node has an operator key.
    pub fn settler(&self) -> Option<&Settler> {
        self.settlement.as_deref()
    }

    /// The paymaster, when it runs.
    pub fn paymaster(&self) -> Option<&Paymaster> {
        self.paymaster.as_ref()
    }

    /// The Anvil started by `settled dev`, if any.
    pub fn anvil(&self) -> Option<&LocalAnvil> {
        self.anvil.as_ref()
    }

    /// Asks every component to stop.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// Waits for the cancellation token, then stops the server, the follower and the tasks, and
    /// flushes the database. Anvil (if started by the node) is killed last.
    pub async fn stopped(self) -> Result<(), NodeError> {
        self.cancel.cancelled().await;
        if self.server.stop().is_ok() {
            self.server.stopped().await;
        }
        self.follower.join().await;
        for task in self.tasks {
            if let Err(err) = task.await {
                warn!(%err, "a node task ended abnormally");
            }
        }
        self.storage.flush().await?;
        // Every chain client goes before Anvil does: a provider still alive (alloy polls the head
        // for receipt waits) would log a failed poll of the dead Anvil at every shutdown.
        drop((self.bundler, self.paymaster, self.streams, self.settlement));
        tokio::task::yield_now().await;
        drop(self.anvil);
        info!("settled stopped");
        Ok(())
    }
}
