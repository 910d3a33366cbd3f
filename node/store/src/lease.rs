//! Leader leases with fencing. A lease names one role (`chain-follower:1`, `bundler:0xKEY`,
//! `settlement:0xOPERATOR`) and is held by one node at a time until it expires; its epoch rises
//! on every acquisition, so a write fenced by an older epoch is refused even if its node still
//! believes it leads (a paused process, a partition). The holder's own deadline is measured from
//! before each renewal was sent, so it always ends before the store's expiry.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// A held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The role.
    pub name: String,
    /// Who holds it (a node id).
    pub holder: String,
    /// Rises on every acquisition: the fence.
    pub epoch: u64,
    /// When the holder must consider it lost (local clock; before the store's expiry).
    pub deadline: Instant,
}

impl Lease {
    /// Whether the local deadline has not passed.
    pub fn is_live(&self) -> bool {
        Instant::now() < self.deadline
    }
}

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The lease is no longer this holder's at this epoch (expired and taken, or released).
    #[error("lease {name} lost: epoch {epoch} of {holder} is no longer current")]
    Lost {
        /// The role.
        name: String,
        /// The holder that lost it.
        holder: String,
        /// Its epoch.
        epoch: u64,
    },
    /// The store could not be reached or failed: the caller must fail closed.
    #[error("lease store: {0}")]
    Store(String),
}

impl LeaseError {
    pub(crate) fn lost(lease: &Lease) -> Self {
        Self::Lost { name: lease.name.clone(), holder: lease.holder.clone(), epoch: lease.epoch }
    }
}

/// Where leases live. Each method is one atomic step in the store.
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes `name` for `holder` for `ttl` if it is free or expired (or already `holder`'s),
    /// with the next epoch; `None` while another holder's lease is live.
    fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<Lease>, LeaseError>> + Send;

    /// Extends `lease` by `ttl` if it is still the holder's at its epoch and not expired.
    fn renew(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> impl Future<Output = Result<Lease, LeaseError>> + Send;

    /// Whether `lease` is still current (holder, epoch, not expired): the fence.
    fn check(&self, lease: &Lease) -> impl Future<Output = Result<(), LeaseError>> + Send;

    /// Gives `lease` up at once (a clean shutdown), if it is still current.
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<(), LeaseError>> + Send;
}

/// The deadline of a lease granted for `ttl` by a request sent at `sent`.
pub(crate) fn deadline_of(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl
}
