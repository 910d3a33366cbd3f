//! The chain head as simulations see it: one [`BlockState`] per head block, shared by every
//! simulation at that block and carried into the next one as a successor view, so repeated
//! validations read each account and slot once.

use std::{
    sync::{
        RwLock,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use alloy::{
    eips::BlockId,
    providers::{DynProvider, Provider},
};

use crate::{
    error::SimError,
    fork::{AccountReads, BlockState, ForkError},
    validation::BlockContext,
};

/// How long the head waits for an automining node's pool to drain.
const POOL_DRAIN_LIMIT: Duration = Duration::from_millis(250);
const POOL_DRAIN_POLL: Duration = Duration::from_millis(5);
/// [`ChainHead::automine`]'s states.
const AUTOMINE_UNKNOWN: u8 = 0;
const AUTOMINE_ON: u8 = 1;
const AUTOMINE_OFF: u8 = 2;

/// The latest block's state and context, cached per block number.
#[derive(Debug)]
pub struct ChainHead {
    provider: DynProvider,
    reads: AccountReads,
    latest: RwLock<Option<(BlockState, BlockContext)>>,
    /// Whether the node mines each transaction on arrival, after answering (Anvil's automine).
    automine: AtomicU8,
}

impl ChainHead {
    /// A head over `provider`'s chain, reading accounts with `reads`.
    pub fn new(provider: DynProvider, reads: AccountReads) -> Self {
        Self {
            provider,
            reads,
            latest: RwLock::new(None),
            automine: AtomicU8::new(AUTOMINE_UNKNOWN),
        }
    }

    /// On an automining dev node (Anvil), `eth_sendTransaction` answers before the block is
    /// mined: a wallet that funds an account and sends its op at once would be validated against
    /// the block before the funding (measured: 47 of 100 calls on Anvil 1.7.1). There, wait
    /// (at most [`POOL_DRAIN_LIMIT`]) for the pool's pending transactions to be mined. Other
    /// nodes do not answer `anvil_getAutomine`, and nothing changes for them.
    async fn settle_pool(&self) {
        let mut state = self.automine.load(Ordering::Relaxed);
        if state == AUTOMINE_UNKNOWN {
            let on: bool =
                self.provider.raw_request("anvil_getAutomine".into(), ()).await.unwrap_or(false);
            state = if on { AUTOMINE_ON } else { AUTOMINE_OFF };
            self.automine.store(state, Ordering::Relaxed);
        }
        if state != AUTOMINE_ON {
            return;
        }
        let deadline = tokio::time::Instant::now() + POOL_DRAIN_LIMIT;
        while tokio::time::Instant::now() < deadline {
            let status: Result<serde_json::Value, _> =
                self.provider.raw_request("txpool_status".into(), ()).await;
            let pending = status.ok().and_then(|s| match &s["pending"] {
                serde_json::Value::String(hex) => {
                    u64::from_str_radix(hex.trim_start_matches("0x"), 16).ok()
                }
                other => other.as_u64(),
            });
            if pending.unwrap_or(0) == 0 {
                return;
            }
            tokio::time::sleep(POOL_DRAIN_POLL).await;
        }
    }

    /// The state and context of the current head block (a successor view of the last one).
    pub async fn latest(&self) -> Result<(BlockState, BlockContext), SimError> {
        self.settle_pool().await;
        let number =
            self.provider.get_block_number().await.map_err(|e| ForkError(e.to_string()))?;
        let previous = self.latest.read().ok().and_then(|latest| latest.clone());
        if let Some((state, context)) = &previous
            && context.number == number
        {
            return Ok((state.clone(), *context));
        }
        let block = BlockId::number(number);
        let context = BlockContext::fetch(&self.provider, block).await?;
        let state = match previous {
            Some((state, _)) => state.successor(block),
            None => BlockState::with_account_reads(
                self.provider.clone(),
                block,
                tokio::runtime::Handle::current(),
                self.reads,
            ),
        };
        if let Ok(mut latest) = self.latest.write() {
            *latest = Some((state.clone(), context));
        }
        Ok((state, context))
    }

    /// Forgets the cached state (after a reorg: the successor chain no longer holds).
    pub fn reset(&self) {
        if let Ok(mut latest) = self.latest.write() {
            *latest = None;
        }
    }
}
