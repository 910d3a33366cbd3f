//! Leases in sled: one process, so the store's clock is the node's. What the embedded default
//! (one node) uses, with the same semantics as PostgreSQL's.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::lease::{Lease, LeaseError, LeaseStore, deadline_of};

#[derive(Debug, Serialize, Deserialize)]
struct Row {
    holder: String,
    epoch: u64,
    expires_ms: u128,
}

/// Leases in a sled tree.
#[derive(Debug)]
pub struct SledLeases {
    tree: sled::Tree,
    /// Acquire and renew read then write: one at a time.
    lock: Mutex<()>,
}

fn store(e: impl std::fmt::Display) -> LeaseError {
    LeaseError::Store(e.to_string())
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default()
}

impl SledLeases {
    /// The leases in `db` (tree `leases`).
    pub fn open(db: &sled::Db) -> Result<Self, LeaseError> {
        Ok(Self { tree: db.open_tree("leases").map_err(store)?, lock: Mutex::new(()) })
    }

    fn row(&self, name: &str) -> Result<Option<Row>, LeaseError> {
        let value = self.tree.get(name).map_err(store)?;
        value.map(|v| serde_json::from_slice(&v).map_err(store)).transpose()
    }

    fn put(&self, name: &str, row: &Row) -> Result<(), LeaseError> {
        self.tree.insert(name, serde_json::to_vec(row).map_err(store)?).map_err(store)?;
        self.tree.flush().map_err(store)?;
        Ok(())
    }

    fn current(&self, lease: &Lease) -> Result<Option<Row>, LeaseError> {
        let row = self.row(&lease.name)?;
        Ok(row.filter(|r| {
            r.holder == lease.holder && r.epoch == lease.epoch && r.expires_ms > now_ms()
        }))
    }
}

impl LeaseStore for SledLeases {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError> {
        let sent = Instant::now();
        let _guard = self.lock.lock().map_err(store)?;
        let now = now_ms();
        let row = self.row(name)?;
        if row.as_ref().is_some_and(|r| r.expires_ms > now && r.holder != holder) {
            return Ok(None);
        }
        let epoch = row.map_or(1, |r| r.epoch + 1);
        let expires_ms = now + ttl.as_millis();
        self.put(name, &Row { holder: holder.into(), epoch, expires_ms })?;
        let deadline = deadline_of(sent, ttl);
        Ok(Some(Lease { name: name.into(), holder: holder.into(), epoch, deadline }))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LeaseError> {
        let sent = Instant::now();
        let _guard = self.lock.lock().map_err(store)?;
        let mut row = self.current(lease)?.ok_or_else(|| LeaseError::lost(lease))?;
        row.expires_ms = now_ms() + ttl.as_millis();
        self.put(&lease.name, &row)?;
        Ok(Lease { deadline: deadline_of(sent, ttl), ..lease.clone() })
    }

    async fn check(&self, lease: &Lease) -> Result<(), LeaseError> {
        self.current(lease)?.map(|_| ()).ok_or_else(|| LeaseError::lost(lease))
    }

    async fn release(&self, lease: &Lease) -> Result<(), LeaseError> {
        let _guard = self.lock.lock().map_err(store)?;
        if let Some(mut row) = self.current(lease)? {
            row.expires_ms = 0;
            self.put(&lease.name, &row)?;
        }
        Ok(())
    }
}
