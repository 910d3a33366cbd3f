//! Leadership: a node runs a role's work only while it holds the role's lease. It waits for the
//! lease, then renews it every third of its time to live; when a renewal is refused, or the
//! local deadline passes without one (a stalled process, an unreachable store), leadership is
//! lost: `lost` is cancelled and the work must stop, and every write it still attempts is
//! refused by the fence.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::lease::{Lease, LeaseError, LeaseStore};

/// Acquires and keeps one lease for this node.
#[derive(Debug)]
pub struct LeaseKeeper<S> {
    store: Arc<S>,
    name: String,
    holder: String,
    ttl: Duration,
}

/// This node leads the role: fence writes with [`Leadership::lease`]; stop when `lost` fires.
#[derive(Debug)]
pub struct Leadership {
    current: Arc<Mutex<Lease>>,
    /// Cancelled when the lease is lost (or given up).
    pub lost: CancellationToken,
    acquired: Instant,
}

impl Leadership {
    /// The lease as last renewed (its epoch fences writes).
    pub fn lease(&self) -> Option<Lease> {
        self.current.lock().ok().map(|l| l.clone())
    }

    /// When it was acquired.
    pub fn acquired(&self) -> Instant {
        self.acquired
    }
}

impl<S: LeaseStore> LeaseKeeper<S> {
    /// A keeper of lease `name` for `holder` (this node's id), `ttl` long.
    pub fn new(
        store: Arc<S>,
        name: impl Into<String>,
        holder: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        Self { store, name: name.into(), holder: holder.into(), ttl }
    }

    /// Waits until this node holds the lease (trying every quarter of its time to live; store
    /// errors are retried), then keeps it renewed in the background. `None` when `cancel` fires
    /// first.
    pub async fn lead(&self, cancel: &CancellationToken) -> Option<Leadership> {
        let lease = loop {
            match self.store.acquire(&self.name, &self.holder, self.ttl).await {
                Ok(Some(lease)) => break lease,
                Ok(None) => {}
                Err(error) => {
                    warn!(lease = %self.name, %error, "lease store unreachable; retrying")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(self.ttl / 4) => {}
            }
        };
        info!(lease = %self.name, holder = %self.holder, epoch = lease.epoch, "leading");
        let current = Arc::new(Mutex::new(lease.clone()));
        let lost = cancel.child_token();
        tokio::spawn(keep(self.store.clone(), lease, self.ttl, current.clone(), lost.clone()));
        Some(Leadership { current, lost, acquired: Instant::now() })
    }
}

/// Renews `lease` until it is lost or `lost` is cancelled (then gives it up); cancels `lost`.
async fn keep<S: LeaseStore>(
    store: Arc<S>,
    mut lease: Lease,
    ttl: Duration,
    current: Arc<Mutex<Lease>>,
    lost: CancellationToken,
) {
    let every = ttl / 3;
    let mut next = Instant::now() + every;
    loop {
        tokio::select! {
            _ = lost.cancelled() => {
                // Stepping down (shutdown): free the role at once for another node.
                let _ = store.release(&lease).await;
                return;
            }
            _ = tokio::time::sleep_until(next.min(lease.deadline)) => {}
        }
        if !lease.is_live() {
            warn!(lease = %lease.name, epoch = lease.epoch, "lease deadline passed without renewal: stepping down");
            break;
        }
        let left = lease.deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, store.renew(&lease, ttl)).await {
            Ok(Ok(renewed)) => {
                lease = renewed;
                if let Ok(mut shared) = current.lock() {
                    *shared = lease.clone();
                }
                next = Instant::now() + every;
            }
            Ok(Err(LeaseError::Lost { .. })) => {
                warn!(lease = %lease.name, epoch = lease.epoch, "lease taken over: stepping down");
                break;
            }
            // Unreachable store: retry until the deadline, then step down (fail closed).
            Ok(Err(error)) => {
                warn!(lease = %lease.name, %error, "lease renewal failed; retrying");
                next = Instant::now() + (every / 4).max(Duration::from_millis(50));
            }
            Err(_) => {}
        }
    }
    lost.cancel();
}
