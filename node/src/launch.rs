//! Wiring: connect to the chain, open storage, start the chain follower, the RPC server and the
//! metrics endpoint, and stop them all together.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use alloy::{
    providers::{DynProvider, Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
};
use jsonrpsee::{RpcModule, server::ServerHandle};
use settled_bundler::Bundler;
use settled_config::{ChainSource, NodeConfig};
use settled_contracts::{
    BlockRef, ChainEvent, ChainFollower, ChainKind, Deployment, EntryPointVersion, FollowerHandle,
    LocalAnvil, TransactionSender,
};
use settled_paymaster::{Paymaster, PaymasterConfig, PaymasterSigner, paymaster_module};
use settled_server::Pages;
use settled_server::{CriticalTasks, HealthLimits, TaskFailure, node_module, serve, serve_metrics};
use settled_settlement::{SettlementChain, Settler, register_billing, settlement_module};
use settled_store::Sends;
use settled_streams::{Opener, Operator, StreamIndex, api_keys, billing_module};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    customer::customer_pages,
    dev::{self, DevKeys},
    error::NodeError,
    metrics::{self, names},
    paymaster::{check_paymaster_signer, load_key, paymaster_signer, policies},
    storage::{ChainIdentity, OnOtherChain, Storage},
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
    tasks: CriticalTasks,
    storage: Storage,
    anvil: Option<LocalAnvil>,
    components: Components,
}

/// The components a node runs (each when its configuration and keys allow).
#[derive(Debug, Default)]
struct Components {
    bundler: Option<Bundler>,
    paymaster: Option<Paymaster>,
    streams: Option<Arc<StreamIndex>>,
    settlement: Option<Arc<Settler>>,
    /// The customer page (with the stream index).
    pages: Option<Arc<dyn Pages>>,
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

/// What every component starts from: the chain, its contracts, the database, the follower it
/// registers on, and the supervised task set it runs in.
struct Wiring {
    config: NodeConfig,
    provider: DynProvider,
    deployment: Deployment,
    storage: Storage,
    /// Each consumer's durable cursor: the follower resumes after the lowest.
    cursors: Vec<(&'static str, Option<BlockRef>)>,
    tasks: CriticalTasks,
    cancel: CancellationToken,
    /// The node's URL for customer links, known once the server is bound.
    public_url: Arc<std::sync::OnceLock<String>>,
    /// The store shared with other nodes, if any.
    shared: Option<crate::shared::SharedStore>,
}

/// The chain as `launch` found or started it.
struct OpenedChain {
    anvil: Option<LocalAnvil>,
    rpc_url: String,
    provider: DynProvider,
    deployment: Deployment,
    dev_keys: DevKeys,
}

/// Starts a node on `source` with `config`; it runs until `cancel` fires.
pub async fn launch(
    config: NodeConfig,
    source: ChainSource,
    cancel: CancellationToken,
) -> Result<NodeHandle, NodeError> {
    let started = std::time::Instant::now();
    settled_server::raise_open_file_limit();
    let mut config = config;
    let (chain, storage) = open_chain(&mut config, source).await?;
    let metrics_handle = metrics::install()?;
    metrics::set_info(config.chain.kind.unwrap_or_default());
    let watched = chain.deployment.contracts().iter().map(|(_, address)| *address).collect();
    let mut follower = ChainFollower::new(
        chain.provider.clone(),
        config.follower(chain.deployment.start_block, watched),
    );
    let tasks = CriticalTasks::new(cancel.clone());
    let shared = crate::shared::open(&config, &tasks, &cancel).await?;
    let mut wiring = Wiring {
        config,
        provider: chain.provider,
        deployment: chain.deployment,
        storage,
        cursors: Vec::new(),
        tasks,
        cancel: cancel.clone(),
        public_url: Arc::new(std::sync::OnceLock::new()),
        shared,
    };
    let dev_keys = chain.dev_keys;
    let components = Components {
        bundler: start_bundler(&mut wiring, &mut follower, dev_keys.bundler).await?,
        paymaster: start_paymaster(&mut wiring, &mut follower, dev_keys.paymaster).await?,
        streams: start_stream_index(&mut wiring, &mut follower).await?,
        settlement: None,
        pages: None,
    };
    let (follower, module, components) =
        start_follower_and_billing(&wiring, follower, components, dev_keys.operator).await?;
    let Wiring { config, deployment, storage, tasks, public_url, .. } = wiring;
    let (rpc_addr, server) = serve(&config.rpc, module, components.pages.clone()).await?;
    let origin = config.billing.public_url.clone().unwrap_or_else(|| format!("http://{rpc_addr}"));
    let _ = public_url.set(origin);
    let metrics_addr = match config.metrics {
        Some(addr) => {
            let (bound, serving) = serve_metrics(addr, metrics_handle, cancel.clone()).await?;
            tasks.spawn_loop("metrics", serving);
            Some(bound)
        }
        None => None,
    };
    info!(
        rpc = %rpc_addr,
        metrics = ?metrics_addr,
        chain_id = deployment.chain_id,
        chain = %chain.rpc_url,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "settled ready"
    );
    Ok(NodeHandle {
        rpc_addr,
        metrics_addr,
        chain_rpc_url: chain.rpc_url,
        deployment,
        cancel,
        server,
        follower,
        tasks,
        storage,
        anvil: chain.anvil,
        components,
    })
}

/// Connects to (or, for `settled dev`, starts) the chain, checks the contracts and opens the
/// datadir bound to that chain.
async fn open_chain(
    config: &mut NodeConfig,
    source: ChainSource,
) -> Result<(OpenedChain, Storage), NodeError> {
    // dev's own Anvil is a new chain at every start: its old data is dead, so it starts clean.
    let is_dev = matches!(source, ChainSource::Dev(_));
    let on_other_chain = match &source {
        ChainSource::Dev(dev) if dev.attach.is_none() => OnOtherChain::StartClean,
        _ => OnOtherChain::Refuse,
    };
    let mut chain = match source {
        ChainSource::Dev(dev_config) => {
            let chain = dev::prepare(config, &dev_config).await?;
            if config.paymaster.policies.is_empty() && config.paymaster.policies_file.is_none() {
                let policy = crate::paymaster::dev_policy();
                // A wallet that names no policy is sponsored under dev's only one.
                config.paymaster.default_policy.get_or_insert_with(|| policy.id.clone());
                config.paymaster.policies.push(policy);
            }
            OpenedChain {
                anvil: chain.anvil,
                rpc_url: chain.rpc_url,
                provider: chain.provider,
                deployment: chain.deployment,
                dev_keys: chain.keys,
            }
        }
        ChainSource::Remote { rpc_url, deployment } => {
            let deployment = Deployment::load(&deployment)?;
            let provider = connect(&rpc_url, config.chain.connect_timeout).await?;
            OpenedChain { anvil: None, rpc_url, provider, deployment, dev_keys: DevKeys::default() }
        }
    };
    chain.deployment.verify(&chain.provider).await?;
    chain_kind(config, &chain).await?;
    let genesis = genesis_hash(&chain.provider, &chain.rpc_url).await?;
    let identity = ChainIdentity { chain_id: chain.deployment.chain_id, genesis };
    let storage = Storage::open(&config.datadir, identity, on_other_chain).await?;
    if is_dev {
        // `settled dev`: its deployment file, now that this process holds the datadir, and a
        // billing key when none is configured (kept across restarts in the datadir).
        if on_other_chain == OnOtherChain::Refuse {
            // Attached to a chain the datadir knows: its contracts were deployed before.
            dev::keep_start_block(&config.datadir, &mut chain.deployment);
        }
        dev::save(&config.datadir, &chain.deployment)?;
        if config.billing.api_keys.is_empty() && config.billing.api_keys_file.is_none() {
            config.billing.api_keys.push(dev::billing_key(&config.datadir)?);
        }
    }
    Ok((chain, storage))
}

/// The chain's kind: as configured, or detected from its predeploys; logged.
async fn chain_kind(config: &mut NodeConfig, chain: &OpenedChain) -> Result<ChainKind, NodeError> {
    let how = if config.chain.kind.is_some() { "configured" } else { "detected" };
    let kind = match config.chain.kind {
        Some(kind) => kind,
        None => ChainKind::detect(&chain.provider).await.map_err(|e| NodeError::Unreachable {
            url: chain.rpc_url.clone(),
            reason: format!("reading the chain's predeploys to detect its kind: {e}"),
        })?,
    };
    config.chain.kind = Some(kind);
    info!(chain_kind = %kind, how, l1_data_fee = kind.has_l1_data_fee(), "chain kind");
    Ok(kind)
}

/// The bundler, when enabled and keyed: its chain consumer and its loop.
async fn start_bundler(
    wiring: &mut Wiring,
    follower: &mut ChainFollower,
    dev_key: Option<PrivateKeySigner>,
) -> Result<Option<Bundler>, NodeError> {
    let config = &wiring.config;
    if !config.roles.bundler {
        return Ok(None);
    }
    let Some(signer) = bundler_signer(config, dev_key)? else {
        if config.bundler.enabled {
            warn!("bundler disabled: no key (--bundler.key-file or SETTLED_BUNDLER_KEY)");
        }
        return Ok(None);
    };
    if !config.bundler.enabled {
        return Ok(None);
    }
    let mut settings = config.bundler.bundler_config();
    settings.chain = config.chain.kind.unwrap_or_default();
    let (provider, db) = (wiring.provider.clone(), wiring.storage.db());
    let bundler = match &wiring.shared {
        None => Bundler::new(settings, provider, signer, db).await?,
        Some(shared) => {
            let (store, leader) =
                shared.bundler_key(signer.address(), &wiring.tasks, &wiring.cancel);
            Bundler::with_store(settings, provider, signer, db, store, leader).await?
        }
    };
    wiring.cursors.push(("bundler", bundler.chain_cursor()?));
    let events = follower.consumer();
    wiring.tasks.spawn("bundler", bundler.clone().run(events, wiring.cancel.clone()));
    info!(address = %bundler.address(), mode = ?config.bundler.mode, "bundler running");
    Ok(Some(bundler))
}

/// The paymaster, when enabled and keyed: its chain consumer and its loop.
async fn start_paymaster(
    wiring: &mut Wiring,
    follower: &mut ChainFollower,
    dev_key: Option<PrivateKeySigner>,
) -> Result<Option<Paymaster>, NodeError> {
    let config = &wiring.config;
    if !config.roles.paymaster {
        return Ok(None);
    }
    let Some(key) = paymaster_signer(config, dev_key)? else {
        if config.paymaster.enabled {
            warn!("paymaster disabled: no key (--paymaster.key-file or SETTLED_PAYMASTER_KEY)");
        }
        return Ok(None);
    };
    if !config.paymaster.enabled {
        return Ok(None);
    }
    let deployment = &wiring.deployment;
    let settings = PaymasterConfig {
        paymasters: EntryPointVersion::ALL.iter().map(|v| (*v, deployment.paymaster(*v))).collect(),
        validity_secs: config.paymaster.validity_secs,
        daily_budget: config.paymaster.daily_budget_wei,
        low_deposit_wei: config.paymaster.low_deposit_wei,
        policies: policies(config)?,
        rules: config.bundler.params.rules(),
        default_policy: config.paymaster.default_policy.clone(),
        chain: config.chain.kind.unwrap_or_default(),
        l1_fee_tolerance_percent: config.bundler.l1_fee_tolerance_percent,
        fixed_policies: wiring.shared.is_some(),
        ..Default::default()
    };
    let signer = PaymasterSigner::new(key);
    check_paymaster_signer(&wiring.provider, deployment, signer.address()).await;
    let (provider, db) = (wiring.provider.clone(), wiring.storage.db());
    let paymaster = match &wiring.shared {
        // Every node reserves against the one ledger, so caps hold across them.
        Some(shared) => {
            Paymaster::with_ledger(settings, provider, signer, db, shared.ledger()).await?
        }
        None => Paymaster::new(settings, provider, signer, db).await?,
    };
    wiring.cursors.push(("paymaster", paymaster.chain_cursor()?));
    let events = follower.consumer();
    wiring.tasks.spawn("paymaster", paymaster.clone().run(events, wiring.cancel.clone()));
    info!(signer = %paymaster.signer(), "paymaster running");
    Ok(Some(paymaster))
}

/// The stream index, when the deployment has a `StreamVault`: its chain consumer and its loop.
async fn start_stream_index(
    wiring: &mut Wiring,
    follower: &mut ChainFollower,
) -> Result<Option<Arc<StreamIndex>>, NodeError> {
    if wiring.deployment.stream_vault.is_zero() || !wiring.config.roles.billing {
        return Ok(None);
    }
    let (vault, depth) = (wiring.deployment.stream_vault, wiring.config.chain.reorg_depth);
    let thresholds = wiring.config.billing.alerts;
    if let Some(shared) = &wiring.shared {
        // One node writes the shared index from its own follower of the vault; none feeds it
        // from the node's follower.
        let follow = wiring.config.follower(wiring.deployment.start_block, vec![vault]);
        let leader = settled_streams::IndexWriter { provider: wiring.provider.clone(), follow };
        let index = shared
            .stream_index(vault, depth, thresholds, leader, &wiring.tasks, &wiring.cancel)
            .await?;
        index.announce().await;
        return Ok(Some(index));
    }
    let index = StreamIndex::open(wiring.storage.db(), vault, depth, thresholds).await?;
    index.announce().await;
    let index = Arc::new(index);
    let cursor = index.cursor().await?.map(|c| BlockRef { number: c.number, hash: c.hash });
    wiring.cursors.push(("stream index", cursor));
    let events = follower.consumer();
    wiring.tasks.spawn("stream index", index.clone().run(events, wiring.cancel.clone()));
    Ok(Some(index))
}

/// Starts the follower after the consumers' lowest cursor, then builds the RPC module: the
/// node's own methods, the bundler's, the paymaster's and the billing namespaces.
async fn start_follower_and_billing(
    wiring: &Wiring,
    mut follower: ChainFollower,
    mut components: Components,
    operator_key: Option<PrivateKeySigner>,
) -> Result<(FollowerHandle, RpcModule<()>, Components), NodeError> {
    let config = &wiring.config;
    follower.resume_after(resume_point(&wiring.cursors));
    let (follower, follow) = follower.into_task(wiring.cancel.child_token());
    wiring.tasks.spawn_loop("chain follower", follow);
    let observer = follower.subscribe();
    wiring.tasks.spawn_loop("chain metrics", record_chain_metrics(observer, wiring.cancel.clone()));
    let limits = HealthLimits {
        // Ten polls missed, and at least 10 s: one slow answer is not an outage.
        stale_after: (config.chain.poll_interval * 10).max(Duration::from_secs(10)),
        max_lag_blocks: config.chain.reorg_depth,
    };
    let chain_id = wiring.deployment.chain_id;
    let dependencies = wiring.shared.iter().map(|s| s.health()).collect();
    let mut module = node_module(chain_id, &follower, limits, wiring.tasks.clone(), dependencies)?;
    if let Some(bundler) = &components.bundler {
        merge(&mut module, settled_bundler::bundler_module(bundler.clone(), config.rpc.debug)?)?;
    }
    if let Some(paymaster) = &components.paymaster {
        merge(&mut module, paymaster_module(paymaster.clone(), config.rpc.admin)?)?;
    }
    if let Some(index) = components.streams.clone() {
        let heads = follower.head_watch();
        let (billing, settler, customer) =
            start_billing(wiring, &components, index, operator_key, heads).await?;
        merge(&mut module, billing)?;
        components.settlement = settler;
        components.pages = Some(customer);
    }
    Ok((follower, module, components))
}

fn merge<T: Send + Sync + 'static>(
    module: &mut RpcModule<()>,
    other: RpcModule<T>,
) -> Result<(), NodeError> {
    module.merge(other).map_err(|e| settled_server::ServerError::Register(e.to_string()).into())
}

/// The billing namespaces over the stream index: the operator's calls when it has a key,
/// `stream_open` when the bundler and paymaster run too, settlement when the deployment has an
/// anchor.
async fn start_billing(
    wiring: &Wiring,
    components: &Components,
    index: Arc<StreamIndex>,
    operator_key: Option<PrivateKeySigner>,
    heads: tokio::sync::watch::Receiver<Option<BlockRef>>,
) -> Result<(RpcModule<()>, Option<Arc<Settler>>, Arc<dyn Pages>), NodeError> {
    let (config, deployment) = (&wiring.config, &wiring.deployment);
    let billing = &config.billing;
    let keys = api_keys(&billing.api_keys, billing.api_keys_file.as_deref()).map_err(|reason| {
        NodeError::ApiKeys { path: billing.api_keys_file.clone().unwrap_or_default(), reason }
    })?;
    let key = load_key(
        billing.operator_key.as_ref(),
        billing.operator_key_file.as_deref(),
        "operator key",
    )?
    .or(operator_key);
    let Some(key) = key else {
        let (mut streams, billing) = billing_module(index, keys, None, None);
        let public_url = wiring.public_url.clone();
        let pages = customer_pages(config, &mut streams, billing, None, public_url)?;
        return Ok((streams, None, pages));
    };
    // One sender for everything signed with the operator key: one nonce sequence.
    let sender = TransactionSender::new(wiring.provider.clone(), key.clone()).with_heads(heads);
    let vault = deployment.stream_vault;
    let (operator, sender, fence) = match &wiring.shared {
        Some(shared) => {
            let key = shared.operator(sender, vault, &wiring.tasks, &wiring.cancel);
            (key.operator, key.sender, Some(key.fence))
        }
        None => {
            let sender = Arc::new(sender);
            let sends =
                Sends::embedded(wiring.storage.db()).map_err(|e| wiring.storage_error(e))?;
            (Arc::new(Operator::new(sender.clone(), vault, sends)), sender, None)
        }
    };
    let opener = start_opener(wiring, components, &operator)?;
    let mut module = RpcModule::new(());
    let mut settler = None;
    if !deployment.settlement_anchor.is_zero() && config.roles.settlement {
        let anchor = crate::anchor::anchor_chain(config, deployment, &sender, &key).await?;
        let chain = SettlementChain {
            sender,
            vault: deployment.stream_vault,
            chain_id: deployment.chain_id,
            kind: config.chain.kind.unwrap_or_default(),
            anchor,
            currencies: currencies(config, deployment),
            seller: config.billing.seller.clone(),
        };
        let started = match (&wiring.shared, fence) {
            // Rounds on the operator key's leader, state shared by every node.
            (Some(shared), Some(fence)) => {
                let store = shared.settlement();
                let settler =
                    Settler::with_store(chain, index.clone(), store, fence, config.settlement);
                let relay = shared.order_alert_relay(settler.order_alert_sender(), &wiring.cancel);
                wiring.tasks.spawn_loop("PO alert relay", relay);
                settler
            }
            _ => Settler::new(chain, index.clone(), wiring.storage.db(), config.settlement)
                .map_err(|e| wiring.storage_error(e))?,
        };
        let started = Arc::new(started);
        merge(&mut module, settlement_module(started.clone(), config.rpc.admin))?;
        if config.settlement.enabled {
            let cancel = wiring.cancel.clone();
            wiring.tasks.spawn_loop("settlement", started.clone().run(cancel));
            info!(interval_secs = config.settlement.interval.as_secs(), "settlement running");
        }
        settler = Some(started);
    }
    let (mut streams, billing) = billing_module(index, keys, Some(operator), opener);
    if let Some(settler) = &settler {
        register_billing(&mut streams, billing.clone(), settler.clone());
    }
    let public_url = wiring.public_url.clone();
    let pages = customer_pages(config, &mut streams, billing, settler.clone(), public_url)?;
    merge(&mut module, streams)?;
    Ok((module, settler, pages))
}

/// Each token's currency: the configured ones, and the deployment's USDC as USD unless set.
fn currencies(
    config: &NodeConfig,
    deployment: &Deployment,
) -> std::collections::BTreeMap<alloy::primitives::Address, settled_settlement::TokenCurrency> {
    let mut currencies: std::collections::BTreeMap<_, _> =
        config.billing.currencies.iter().cloned().collect();
    currencies
        .entry(deployment.usdc)
        .or_insert_with(|| settled_settlement::TokenCurrency { code: "USD".into(), decimals: 6 });
    currencies
}

/// `stream_open` prepares sponsored ops: it needs the bundler, the paymaster and an operator.
fn start_opener(
    wiring: &Wiring,
    components: &Components,
    operator: &Arc<Operator>,
) -> Result<Option<Arc<Opener>>, NodeError> {
    let (Some(bundler), Some(paymaster)) = (&components.bundler, &components.paymaster) else {
        return Ok(None);
    };
    let deployment = &wiring.deployment;
    let records =
        wiring.storage.db().open_tree("streams.open").map_err(|e| wiring.storage_error(e))?;
    Ok(Some(Arc::new(Opener {
        provider: wiring.provider.clone(),
        bundler: bundler.clone(),
        paymaster: paymaster.clone(),
        paymasters: EntryPointVersion::ALL.iter().map(|v| (*v, deployment.paymaster(*v))).collect(),
        vault: deployment.stream_vault,
        operator: operator.clone(),
        chain_id: deployment.chain_id,
        records,
    })))
}

impl Wiring {
    fn storage_error(&self, e: impl std::fmt::Display) -> NodeError {
        NodeError::Storage { path: self.config.datadir.clone(), reason: e.to_string() }
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
        self.components.bundler.as_ref()
    }

    /// The stream index, when the deployment has a `StreamVault`.
    pub fn streams(&self) -> Option<&StreamIndex> {
        self.components.streams.as_deref()
    }

    /// The settlement scheduler, when the node has an operator key.
    pub fn settler(&self) -> Option<&Settler> {
        self.components.settlement.as_deref()
    }

    /// The paymaster, when it runs.
    pub fn paymaster(&self) -> Option<&Paymaster> {
        self.components.paymaster.as_ref()
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
    /// flushes the database. Anvil (if started by the node) is killed last. A critical task that
    /// ended on its own (and so stopped the node) is the error.
    pub async fn stopped(self) -> Result<(), NodeError> {
        self.cancel.cancelled().await;
        if self.server.stop().is_ok() {
            self.server.stopped().await;
        }
        self.follower.join().await;
        let failure = self.tasks.join().await;
        self.storage.flush().await?;
        // Every chain client goes before Anvil does: a provider still alive (alloy polls the head
        // for receipt waits) would log a failed poll of the dead Anvil at every shutdown.
        drop(self.components);
        tokio::task::yield_now().await;
        drop(self.anvil);
        match failure {
            Some(TaskFailure { task, reason }) => Err(NodeError::TaskFailed { task, reason }),
            None => {
                info!("settled stopped");
                Ok(())
            }
        }
    }
}
