//! The chain head as simulations see it: one [`BlockState`] per head block, shared by every
//! simulation at that block and carried into the next one as a successor view, so repeated
//! validations read each account and slot once.

use std::sync::RwLock;

use alloy::{
    eips::BlockId,
    providers::{DynProvider, Provider},
};

use crate::{
    error::SimError,
    fork::{AccountReads, BlockState, ForkError},
    validation::BlockContext,
};

/// The latest block's state and context, cached per block number.
#[derive(Debug)]
pub struct ChainHead {
    provider: DynProvider,
    reads: AccountReads,
    latest: RwLock<Option<(BlockState, BlockContext)>>,
}

impl ChainHead {
    /// A head over `provider`'s chain, reading accounts with `reads`.
    pub fn new(provider: DynProvider, reads: AccountReads) -> Self {
        Self { provider, reads, latest: RwLock::new(None) }
    }

    /// The state and context of the current head block (a successor view of the last one).
    pub async fn latest(&self) -> Result<(BlockState, BlockContext), SimError> {
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
