//! The writer of a shared index: for as long as this node holds the index's lease, term after
//! term, it follows the vault from the shared cursor and applies every block under the lease.

use std::{sync::Arc, time::Duration};

use settled_store::{Fence, LeaseKeeper, PgStore};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{IndexError, StreamIndex};

/// How the shared index's writer follows the chain.
#[derive(Debug, Clone)]
pub struct IndexWriter {
    /// The chain.
    pub provider: alloy::providers::DynProvider,
    /// The follower's settings (its start and addresses are the writer's own).
    pub follow: settled_contracts::FollowerConfig,
}

impl IndexWriter {
    /// Writes `index` while this node holds `keeper`'s lease, publishing the lease in `fence`
    /// (which fences the store's writes). A block that fails (the store away, the lease lost)
    /// ends the term's follower; the next resumes from the shared cursor, so none is skipped or
    /// applied twice. A block that does not apply to the index (the mirror and the vault
    /// disagree), or does not follow its cursor (a reorg deeper than the undo records kept),
    /// ends this with the error: the node stops.
    pub async fn write(
        self,
        keeper: LeaseKeeper<PgStore>,
        fence: watch::Sender<Option<Fence>>,
        index: Arc<StreamIndex>,
        cancel: CancellationToken,
    ) -> Result<(), IndexError> {
        while let Some(leadership) = keeper.lead(&cancel).await {
            let Some(lease) = leadership.lease() else { continue };
            fence.send_replace(Some(Fence::Lease(lease)));
            let ended = self.term(&index, &leadership.lost).await;
            fence.send_replace(None);
            ended?;
        }
        Ok(())
    }

    /// Follows until `term` ends, again after each block that failed.
    async fn term(
        &self,
        index: &Arc<StreamIndex>,
        term: &CancellationToken,
    ) -> Result<(), IndexError> {
        loop {
            let (provider, follow) = (self.provider.clone(), self.follow.clone());
            match index.clone().follow_term(provider, follow, term.clone()).await {
                Ok(()) if term.is_cancelled() => return Ok(()),
                // Past a hole or against the vault: no retry can fix it.
                Err(e @ (IndexError::Diverged { .. } | IndexError::Gap { .. })) => return Err(e),
                Ok(()) => warn!("stream index: the follower stopped; following again"),
                Err(e) => {
                    warn!(%e, "stream index: a block failed; resuming from the shared cursor in 1 s")
                }
            }
            tokio::select! {
                _ = term.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
