//! Leases in PostgreSQL, shared by every node: the row's `expires_at` is the server's clock, an
//! acquisition is one `INSERT … ON CONFLICT DO UPDATE … WHERE expired` (so two nodes racing for
//! a free lease cannot both win), and a fenced write runs in a transaction that first locks the
//! lease row and checks holder and epoch: a takeover's update waits for that transaction, and a
//! write under a stale epoch is never committed.

use std::time::Duration;

use sqlx::{
    PgPool, Postgres, Row as _, Transaction,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::time::Instant;

use crate::lease::{Lease, LeaseError, LeaseStore, deadline_of};

fn store(e: impl std::fmt::Display) -> LeaseError {
    LeaseError::Store(e.to_string())
}

/// A connection pool to the shared store, migrated.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

/// `ttl` as a PostgreSQL interval in microseconds (exact, no float).
fn micros(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host/db`, `?host=/socket/dir` for a unix socket) and
    /// applies the embedded migrations.
    pub async fn connect(url: &str, connect_timeout: Duration) -> Result<Self, LeaseError> {
        let options: PgConnectOptions = url.parse().map_err(store)?;
        // A stalled holder's fenced transaction keeps the lease row locked (a takeover waits
        // for it): the server ends it instead.
        let options = options.options([("idle_in_transaction_session_timeout", "10s")]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(connect_timeout)
            .connect_with(options)
            .await
            .map_err(store)?;
        sqlx::migrate!("./migrations").run(&pool).await.map_err(store)?;
        Ok(Self { pool })
    }

    /// Whether the store answers within `within`.
    pub async fn ping(&self, within: Duration) -> Result<(), LeaseError> {
        let query = sqlx::query("SELECT 1").execute(&self.pool);
        match tokio::time::timeout(within, query).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(store(e)),
            Err(_) => Err(LeaseError::Store(format!("no answer within {within:?}"))),
        }
    }

    /// The pool (for the component stores built on it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Begins a transaction fenced by `lease`: the lease row is locked and must still be the
    /// holder's at its epoch and unexpired, else [`LeaseError::Lost`]. Commit it to make the
    /// writes made in it count; a takeover waits for it.
    pub async fn fenced(
        &self,
        lease: &Lease,
    ) -> Result<Transaction<'static, Postgres>, LeaseError> {
        let mut tx = self.pool.begin().await.map_err(store)?;
        let row = sqlx::query(
            "SELECT 1 FROM settled_leases WHERE name = $1 AND holder = $2 AND epoch = $3 \
             AND expires_at > now() FOR UPDATE",
        )
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(epoch_i64(lease.epoch))
        .fetch_optional(&mut *tx)
        .await
        .map_err(store)?;
        match row {
            Some(_) => Ok(tx),
            None => Err(LeaseError::lost(lease)),
        }
    }
}

/// Why a write fenced by this node's current fence could not begin.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// This node holds no lease for the role (another node does, or the fence is not a lease):
    /// nothing may be written.
    #[error("{0}")]
    NotLeading(String),
    /// The store failed or could not be reached: fail closed.
    #[error("{0}")]
    Store(String),
}

impl PgStore {
    /// Begins a transaction fenced by the lease `fence` holds now ([`PgStore::fenced`]); a
    /// missing lease, or one no longer current, is [`FenceError::NotLeading`].
    pub async fn fenced_by(
        &self,
        fence: &tokio::sync::watch::Receiver<Option<crate::Fence>>,
    ) -> Result<Transaction<'static, Postgres>, FenceError> {
        let lease = match fence.borrow().clone() {
            Some(crate::Fence::Lease(lease)) => lease,
            Some(crate::Fence::Exclusive) => {
                return Err(FenceError::NotLeading("a shared store needs a lease".into()));
            }
            None => return Err(FenceError::NotLeading("another node holds its lease".into())),
        };
        self.fenced(&lease).await.map_err(|e| match e {
            LeaseError::Lost { .. } => FenceError::NotLeading(e.to_string()),
            LeaseError::Store(why) => FenceError::Store(why),
        })
    }
}

fn epoch_i64(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(i64::MAX)
}

impl LeaseStore for PgStore {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError> {
        let sent = Instant::now();
        let row = sqlx::query(
            "INSERT INTO settled_leases (name, holder, epoch, expires_at) \
             VALUES ($1, $2, 1, now() + $3::bigint * interval '1 microsecond') \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, \
               epoch = settled_leases.epoch + 1, expires_at = EXCLUDED.expires_at \
             WHERE settled_leases.expires_at <= now() OR settled_leases.holder = EXCLUDED.holder \
             RETURNING epoch",
        )
        .bind(name)
        .bind(holder)
        .bind(micros(ttl))
        .fetch_optional(&self.pool)
        .await
        .map_err(store)?;
        let Some(row) = row else { return Ok(None) };
        let epoch: i64 = row.try_get("epoch").map_err(store)?;
        Ok(Some(Lease {
            name: name.into(),
            holder: holder.into(),
            epoch: u64::try_from(epoch).map_err(store)?,
            deadline: deadline_of(sent, ttl),
        }))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LeaseError> {
        let sent = Instant::now();
        let renewed = sqlx::query(
            "UPDATE settled_leases SET expires_at = now() + $4::bigint * interval '1 microsecond' \
             WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()",
        )
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(epoch_i64(lease.epoch))
        .bind(micros(ttl))
        .execute(&self.pool)
        .await
        .map_err(store)?;
        if renewed.rows_affected() == 0 {
            return Err(LeaseError::lost(lease));
        }
        Ok(Lease { deadline: deadline_of(sent, ttl), ..lease.clone() })
    }

    async fn check(&self, lease: &Lease) -> Result<(), LeaseError> {
        let tx = self.fenced(lease).await?;
        tx.rollback().await.map_err(store)
    }

    async fn release(&self, lease: &Lease) -> Result<(), LeaseError> {
        sqlx::query(
            "UPDATE settled_leases SET expires_at = now() \
             WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()",
        )
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(epoch_i64(lease.epoch))
        .execute(&self.pool)
        .await
        .map_err(store)?;
        Ok(())
    }
}
