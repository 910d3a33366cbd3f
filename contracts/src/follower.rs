//! The one chain follower of a settled node: it walks the canonical chain block by block, hands
//! every subscriber each new block with the logs of the contracts it watches, and tells them
//! when blocks they have seen were reorged out.
//!
//! It polls (`eth_blockNumber`, `eth_getBlockByNumber`, `eth_getLogs` by block hash) rather than
//! subscribing, so it works over plain HTTP against any node, and a missed notification can
//! never make it skip a block: every block number is visited in order.
//!
//! Consumers ([`ChainFollower::consumer`]) get every event through their own bounded channel and
//! the follower waits for the slowest one, so none can fall behind and lose blocks; each keeps
//! a durable [`ChainCursor`], and a restarted node resumes after the lowest of them
//! ([`FollowerConfig::start_after`]), not at the deployment block. Observers
//! ([`ChainFollower::subscribe`]: metrics, tests) may lag and be told so.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use alloy::{
    eips::BlockNumberOrTag,
    primitives::{Address, B256},
    providers::{DynProvider, Provider},
    rpc::types::{Filter, Log},
    transports::TransportError,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How the follower polls and how deep a reorg it can unwind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerConfig {
    /// Time between polls for a new head.
    pub poll_interval: Duration,
    /// How many recent blocks are remembered to detect and unwind reorgs.
    pub reorg_depth: u64,
    /// Contracts whose logs are delivered with each block (none: no logs are fetched).
    pub addresses: Vec<Address>,
    /// First block to deliver; `None` starts at the current head.
    pub start_block: Option<u64>,
    /// Resume right after this block (the lowest consumer cursor), overriding `start_block`:
    /// its hash is the parent the next block must name, so a reorg while the node was down
    /// is reported like any other.
    pub start_after: Option<BlockRef>,
    /// Capacity of the event channel; a subscriber that falls further behind is told it lagged.
    pub channel_capacity: usize,
}

impl Default for FollowerConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(1_000),
            reorg_depth: 64,
            addresses: Vec::new(),
            start_block: None,
            start_after: None,
            channel_capacity: 4_096,
        }
    }
}

/// A block by number and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockRef {
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: B256,
}

/// A block that joined the canonical chain.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBlock {
    /// The block.
    pub block: BlockRef,
    /// Its parent's hash.
    pub parent_hash: B256,
    /// Block timestamp (seconds).
    pub timestamp: u64,
    /// Logs emitted in it by the watched contracts, in log-index order.
    pub logs: Vec<Log>,
}

/// Blocks that left the canonical chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reorg {
    /// The newest block still canonical; blocks after it will be delivered again.
    pub ancestor: BlockRef,
    /// Blocks delivered earlier that are no longer canonical, newest first.
    pub removed: Vec<BlockRef>,
    /// True when the reorg went deeper than `reorg_depth`: some removed blocks are unknown.
    pub deeper_than_tracked: bool,
}

/// What the follower tells its subscribers, in chain order.
#[derive(Debug, Clone)]
pub enum ChainEvent {
    /// A new canonical block.
    Block(Arc<NewBlock>),
    /// Earlier blocks were reorged out; new blocks from `ancestor + 1` follow.
    Reorg(Arc<Reorg>),
}

/// When the follower last heard from the chain, and the chain's head then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainContact {
    /// The last successful `eth_blockNumber`.
    pub at: std::time::Instant,
    /// The chain's head at that moment (blocks delivered may trail it while catching up).
    pub chain_head: u64,
}

/// A consumer's events: every one, in order (the follower waits while the channel is full).
pub type ChainEvents = mpsc::Receiver<ChainEvent>;

/// Events a consumer's channel holds before the follower waits for it.
const CONSUMER_CHANNEL: usize = 256;

/// A follower that has not started yet: register consumers and subscribe first, then
/// [`ChainFollower::spawn`], so none misses the first block.
#[derive(Debug)]
pub struct ChainFollower {
    provider: DynProvider,
    config: FollowerConfig,
    events: broadcast::Sender<ChainEvent>,
    consumers: Vec<mpsc::Sender<ChainEvent>>,
    head: watch::Sender<Option<BlockRef>>,
    contact: watch::Sender<Option<ChainContact>>,
}

/// A running follower.
#[derive(Debug)]
pub struct FollowerHandle {
    events: broadcast::Sender<ChainEvent>,
    head: watch::Receiver<Option<BlockRef>>,
    contact: watch::Receiver<Option<ChainContact>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ChainFollower {
    /// A follower of `provider`'s chain.
    pub fn new(provider: DynProvider, config: FollowerConfig) -> Self {
        let (events, _) = broadcast::channel(config.channel_capacity.max(1));
        let (head, _) = watch::channel(None);
        let (contact, _) = watch::channel(None);
        Self { provider, config, events, consumers: Vec::new(), head, contact }
    }

    /// Resume right after `block` (the lowest consumer cursor) instead of at the configured
    /// start block; `None` keeps the configuration's.
    pub fn resume_after(&mut self, block: Option<BlockRef>) {
        if block.is_some() {
            self.config.start_after = block;
        }
    }

    /// A lossless receiver of every event from the first block on: the follower does not go
    /// on until this consumer has room, so a slow consumer slows the follower, never skips.
    pub fn consumer(&mut self) -> ChainEvents {
        let (sender, receiver) = mpsc::channel(CONSUMER_CHANNEL);
        self.consumers.push(sender);
        receiver
    }

    /// A receiver of events from the first block on that may lag (it is told how many it
    /// missed): for observers such as metrics.
    pub fn subscribe(&self) -> broadcast::Receiver<ChainEvent> {
        self.events.subscribe()
    }

    /// Starts following until `cancel` fires.
    pub fn spawn(self, cancel: CancellationToken) -> FollowerHandle {
        let events = self.events.clone();
        let head = self.head.subscribe();
        let contact = self.contact.subscribe();
        let task = tokio::spawn(self.run(cancel));
        FollowerHandle { events, head, contact, task: Some(task) }
    }

    /// Like [`ChainFollower::spawn`], but hands the follower's loop to the caller (to run it
    /// under its own supervision) instead of spawning it: the handle has no task to join.
    pub fn into_task(
        self,
        cancel: CancellationToken,
    ) -> (FollowerHandle, impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = FollowerHandle {
            events: self.events.clone(),
            head: self.head.subscribe(),
            contact: self.contact.subscribe(),
            task: None,
        };
        (handle, self.run(cancel))
    }

    async fn run(self, cancel: CancellationToken) {
        let mut state = FollowState {
            next: self.config.start_block,
            recent: VecDeque::new(),
            depth: self.config.reorg_depth.max(1) as usize,
        };
        if let Some(after) = self.config.start_after {
            state.next = Some(after.number + 1);
            state.remember(after);
        }
        info!(start = ?state.next, depth = state.depth, "chain follower started");
        loop {
            if let Err(err) = self.catch_up(&mut state, &cancel).await {
                warn!(%err, "chain follower: rpc error, retrying");
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
        info!("chain follower stopped");
    }

    /// Delivers every block up to the current head.
    async fn catch_up(
        &self,
        state: &mut FollowState,
        cancel: &CancellationToken,
    ) -> Result<(), TransportError> {
        let latest = self.provider.get_block_number().await?;
        self.contact
            .send_replace(Some(ChainContact { at: std::time::Instant::now(), chain_head: latest }));

        // A reorg that replaced our newest block (same height, or a shorter chain) shows only here:
        // no new block would carry a mismatching parent hash.
        if let Some(last) = state.recent.back().copied()
            && self.canonical_hash(last.number).await? != Some(last.hash)
        {
            self.report_reorg(state, cancel).await?;
        }

        let mut next = state.next.unwrap_or(latest);
        while next <= latest && !cancel.is_cancelled() {
            let Some(block) = self.provider.get_block_by_number(next.into()).await? else {
                break; // the node has not got it yet
            };
            let header = &block.header;
            let this = BlockRef { number: next, hash: header.hash };

            if let Some(prev) = state.recent.back()
                && prev.number + 1 == next
                && prev.hash != header.parent_hash
            {
                next = self.report_reorg(state, cancel).await?;
                continue;
            }

            let logs = if self.config.addresses.is_empty() {
                Vec::new()
            } else {
                let filter =
                    Filter::new().at_block_hash(this.hash).address(self.config.addresses.clone());
                self.provider.get_logs(&filter).await?
            };
            debug!(number = next, logs = logs.len(), "new block");
            let event = NewBlock {
                block: this,
                parent_hash: header.parent_hash,
                timestamp: header.timestamp,
                logs,
            };
            state.remember(this);
            self.head.send_replace(Some(this));
            if !self.deliver(ChainEvent::Block(Arc::new(event)), cancel).await {
                break;
            }
            next += 1;
            state.next = Some(next);
        }
        Ok(())
    }

    /// Hands `event` to every consumer (waiting for room) and observer; false if cancelled
    /// first. A consumer that has stopped is passed over: its task has ended.
    async fn deliver(&self, event: ChainEvent, cancel: &CancellationToken) -> bool {
        for consumer in &self.consumers {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = consumer.send(event.clone()) => {}
            }
        }
        let _ = self.events.send(event);
        true
    }

    /// Unwinds to the newest still-canonical block, tells subscribers, and returns the next block
    /// number to deliver.
    async fn report_reorg(
        &self,
        state: &mut FollowState,
        cancel: &CancellationToken,
    ) -> Result<u64, TransportError> {
        let reorg = self.unwind(state).await?;
        let next = reorg.ancestor.number + 1;
        state.next = Some(next);
        self.head.send_replace(Some(reorg.ancestor));
        warn!(
            ancestor = reorg.ancestor.number,
            removed = reorg.removed.len(),
            deep = reorg.deeper_than_tracked,
            "chain reorganisation"
        );
        self.deliver(ChainEvent::Reorg(Arc::new(reorg)), cancel).await;
        Ok(next)
    }

    /// The hash of the canonical block at `number`, if the chain is that long.
    async fn canonical_hash(&self, number: u64) -> Result<Option<B256>, TransportError> {
        let block = self.provider.get_block_by_number(BlockNumberOrTag::Number(number)).await?;
        Ok(block.map(|b| b.header.hash))
    }

    /// Drops remembered blocks until one is still canonical.
    async fn unwind(&self, state: &mut FollowState) -> Result<Reorg, TransportError> {
        let mut removed = Vec::new();
        while let Some(known) = state.recent.back().copied() {
            if self.canonical_hash(known.number).await? == Some(known.hash) {
                return Ok(Reorg { ancestor: known, removed, deeper_than_tracked: false });
            }
            removed.push(known);
            state.recent.pop_back();
        }
        // Everything we remembered is gone: resume right below the oldest removed block.
        let number = removed.last().map_or(0, |b| b.number.saturating_sub(1));
        let hash = self.canonical_hash(number).await?.unwrap_or_default();
        let ancestor = BlockRef { number, hash };
        state.recent.push_back(ancestor);
        Ok(Reorg { ancestor, removed, deeper_than_tracked: true })
    }
}

struct FollowState {
    next: Option<u64>,
    recent: VecDeque<BlockRef>,
    depth: usize,
}

impl FollowState {
    fn remember(&mut self, block: BlockRef) {
        self.recent.push_back(block);
        while self.recent.len() > self.depth {
            self.recent.pop_front();
        }
    }
}

impl FollowerHandle {
    /// A receiver of events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ChainEvent> {
        self.events.subscribe()
    }

    /// The newest block delivered so far.
    pub fn head(&self) -> Option<BlockRef> {
        *self.head.borrow()
    }

    /// A watch of the newest delivered block.
    pub fn head_watch(&self) -> watch::Receiver<Option<BlockRef>> {
        self.head.clone()
    }

    /// A watch of the follower's last contact with the chain (none before the first).
    pub fn contact_watch(&self) -> watch::Receiver<Option<ChainContact>> {
        self.contact.clone()
    }

    /// Waits for the follower task to end (after its cancellation token fired); at once for a
    /// handle from [`ChainFollower::into_task`], whose loop its caller runs.
    pub async fn join(self) {
        if let Some(task) = self.task
            && let Err(err) = task.await
        {
            warn!(%err, "chain follower task ended abnormally");
        }
    }
}
