//! The send store in PostgreSQL, shared by every node: a claim is one `INSERT … ON CONFLICT DO
//! NOTHING`, an intent's commit runs in the transaction fenced by the signer's lease (the lease
//! row locked, holder and epoch checked) and locks the call's record and the nonce's row, and a
//! claim is a dead node's when its owner holds no live `node:` lease.

use alloy::primitives::{Address, B256, Bytes};
use sqlx::{Postgres, Row as _, Transaction, postgres::PgRow};

use crate::postgres::PgStore;
use crate::sends::{
    CallRecord, CallRef, Fence, Intent, QueuedCall, SendStore, SendStoreError, StoreFuture, merged,
    store_error,
};

/// The liveness lease of a node's process `owner`: its claims are alive while it is held.
pub fn liveness_lease(owner: &str) -> String {
    format!("node:{owner}")
}

fn record_of(row: &PgRow) -> Result<CallRecord, SendStoreError> {
    let params = b256(row.try_get("params").map_err(store_error)?)?;
    let state: String = row.try_get("state").map_err(store_error)?;
    Ok(match state.as_str() {
        "claimed" => CallRecord::Claimed {
            params,
            owner: row
                .try_get::<Option<String>, _>("owner")
                .map_err(store_error)?
                .unwrap_or_default(),
        },
        "queued" => CallRecord::Queued {
            params,
            owner: owner_of(row)?,
            request: row.try_get("request").map_err(store_error)?,
        },
        "refused" => CallRecord::Refused {
            params,
            owner: owner_of(row)?,
            reason: row
                .try_get::<Option<String>, _>("reason")
                .map_err(store_error)?
                .unwrap_or_default(),
        },
        "sent" => CallRecord::Sent {
            params,
            transaction: b256(row.try_get("transaction").map_err(store_error)?)?,
            raw: Bytes::from(row.try_get::<Vec<u8>, _>("raw").map_err(store_error)?),
        },
        _ => CallRecord::Done { params, receipt: row.try_get("receipt").map_err(store_error)? },
    })
}

fn owner_of(row: &PgRow) -> Result<String, SendStoreError> {
    Ok(row.try_get::<Option<String>, _>("owner").map_err(store_error)?.unwrap_or_default())
}

fn b256(bytes: Vec<u8>) -> Result<B256, SendStoreError> {
    B256::try_from(bytes.as_slice()).map_err(store_error)
}

fn nonce_i64(nonce: u64) -> Result<i64, SendStoreError> {
    i64::try_from(nonce).map_err(store_error)
}

fn intent_of(row: &PgRow) -> Result<Intent, SendStoreError> {
    let signer: Vec<u8> = row.try_get("signer").map_err(store_error)?;
    let nonce: i64 = row.try_get("nonce").map_err(store_error)?;
    let hashes: Vec<Vec<u8>> = row.try_get("hashes").map_err(store_error)?;
    Ok(Intent {
        signer: Address::try_from(signer.as_slice()).map_err(store_error)?,
        nonce: u64::try_from(nonce).map_err(store_error)?,
        carries: row.try_get("carries").map_err(store_error)?,
        raw: Bytes::from(row.try_get::<Vec<u8>, _>("raw").map_err(store_error)?),
        hashes: hashes.into_iter().map(b256).collect::<Result<_, _>>()?,
    })
}

const CALL_COLUMNS: &str = "params, state, owner, transaction, raw, receipt, request, reason";

impl PgStore {
    /// The intent's nonce row (locked), merged with `intent`, written under `epoch`.
    async fn put_intent(
        tx: &mut Transaction<'static, Postgres>,
        intent: &Intent,
        epoch: i64,
    ) -> Result<(), SendStoreError> {
        let existing = sqlx::query(
            "SELECT signer, nonce, carries, raw, hashes FROM settled_intents \
             WHERE signer = $1 AND nonce = $2 FOR UPDATE",
        )
        .bind(intent.signer.as_slice())
        .bind(nonce_i64(intent.nonce)?)
        .fetch_optional(&mut **tx)
        .await
        .map_err(store_error)?;
        let existing = existing.as_ref().map(intent_of).transpose()?;
        let kept = merged(existing, intent)?;
        let hashes: Vec<Vec<u8>> = kept.hashes.iter().map(|h| h.to_vec()).collect();
        sqlx::query(
            "INSERT INTO settled_intents (signer, nonce, carries, raw, hashes, epoch) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (signer, nonce) DO UPDATE SET \
             raw = EXCLUDED.raw, hashes = EXCLUDED.hashes, epoch = EXCLUDED.epoch",
        )
        .bind(kept.signer.as_slice())
        .bind(nonce_i64(kept.nonce)?)
        .bind(&kept.carries)
        .bind(kept.raw.as_ref())
        .bind(hashes)
        .bind(epoch)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    /// Turns `call`'s claim into `Sent` with `intent`'s latest version, in `tx`.
    async fn mark_sent(
        tx: &mut Transaction<'static, Postgres>,
        call: CallRef<'_>,
        intent: &Intent,
    ) -> Result<(), SendStoreError> {
        let transaction = intent.hashes.last().copied().unwrap_or_default();
        let updated = sqlx::query(
            "UPDATE settled_calls SET state = 'sent', transaction = $3, raw = $4, \
             request = NULL, updated_at = now() \
             WHERE id = $1 AND state IN ('claimed', 'queued') AND owner = $2",
        )
        .bind(call.id.as_slice())
        .bind(call.owner)
        .bind(transaction.as_slice())
        .bind(intent.raw.as_ref())
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
        if updated.rows_affected() == 0 {
            return Err(SendStoreError::NotClaimed(call.id));
        }
        Ok(())
    }
}

impl SendStore for PgStore {
    fn claim<'a>(
        &'a self,
        id: B256,
        params: B256,
        owner: &'a str,
    ) -> StoreFuture<'a, Option<CallRecord>> {
        Box::pin(async move {
            let claimed = sqlx::query(
                "INSERT INTO settled_calls (id, params, state, owner) VALUES ($1, $2, 'claimed', $3) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(id.as_slice())
            .bind(params.as_slice())
            .bind(owner)
            .execute(self.pool())
            .await
            .map_err(store_error)?;
            if claimed.rows_affected() == 1 {
                return Ok(None);
            }
            // Taken by a concurrent call (or a record freed since: claim again).
            match self.call(id).await? {
                Some(record) => Ok(Some(record)),
                None => Box::pin(self.claim(id, params, owner)).await,
            }
        })
    }

    fn call(&self, id: B256) -> StoreFuture<'_, Option<CallRecord>> {
        Box::pin(async move {
            let row =
                sqlx::query(&format!("SELECT {CALL_COLUMNS} FROM settled_calls WHERE id = $1"))
                    .bind(id.as_slice())
                    .fetch_optional(self.pool())
                    .await
                    .map_err(store_error)?;
            row.as_ref().map(record_of).transpose()
        })
    }

    fn release_claim<'a>(&'a self, id: B256, owner: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let removed = sqlx::query(
                "DELETE FROM settled_calls WHERE id = $1 AND state IN ('claimed', 'refused') \
                 AND owner = $2",
            )
            .bind(id.as_slice())
            .bind(owner)
            .execute(self.pool())
            .await
            .map_err(store_error)?;
            Ok(removed.rows_affected() == 1)
        })
    }

    fn release_dead_claim<'a>(&'a self, id: B256, owner: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let removed = sqlx::query(
                "DELETE FROM settled_calls WHERE id = $1 AND state = 'claimed' AND owner = $2 \
                 AND NOT EXISTS (SELECT 1 FROM settled_leases WHERE name = $3 AND holder = $2 \
                 AND expires_at > now())",
            )
            .bind(id.as_slice())
            .bind(owner)
            .bind(liveness_lease(owner))
            .execute(self.pool())
            .await
            .map_err(store_error)?;
            Ok(removed.rows_affected() == 1)
        })
    }

    fn queue<'a>(
        &'a self,
        id: B256,
        owner: &'a str,
        request: serde_json::Value,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let queued = sqlx::query(
                "UPDATE settled_calls SET state = 'queued', request = $3, queued_at = now(), \
                 updated_at = now() WHERE id = $1 AND state = 'claimed' AND owner = $2",
            )
            .bind(id.as_slice())
            .bind(owner)
            .bind(request)
            .execute(self.pool())
            .await
            .map_err(store_error)?;
            Ok(queued.rows_affected() == 1)
        })
    }

    fn queued(&self) -> StoreFuture<'_, Vec<QueuedCall>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT id, owner, request FROM settled_calls WHERE state = 'queued' \
                 ORDER BY queued_at, id",
            )
            .fetch_all(self.pool())
            .await
            .map_err(store_error)?;
            rows.iter()
                .map(|row| {
                    Ok(QueuedCall {
                        id: b256(row.try_get("id").map_err(store_error)?)?,
                        owner: owner_of(row)?,
                        request: row.try_get("request").map_err(store_error)?,
                    })
                })
                .collect()
        })
    }

    fn refuse<'a>(&'a self, id: B256, owner: &'a str, reason: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE settled_calls SET state = 'refused', reason = $3, request = NULL, \
                 updated_at = now() WHERE id = $1 AND state IN ('claimed', 'queued') AND owner = $2",
            )
            .bind(id.as_slice())
            .bind(owner)
            .bind(reason)
            .execute(self.pool())
            .await
            .map_err(store_error)?;
            Ok(())
        })
    }

    fn complete(&self, id: B256, params: B256, receipt: serde_json::Value) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO settled_calls (id, params, state, receipt) VALUES ($1, $2, 'done', $3) \
                 ON CONFLICT (id) DO UPDATE SET state = 'done', receipt = EXCLUDED.receipt, \
                 owner = NULL, raw = NULL, updated_at = now()",
            )
            .bind(id.as_slice())
            .bind(params.as_slice())
            .bind(receipt)
            .execute(self.pool())
            .await
            .map_err(store_error)?;
            Ok(())
        })
    }

    fn commit_intent<'a>(
        &'a self,
        fence: &'a Fence,
        intent: &'a Intent,
        call: Option<CallRef<'a>>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let Fence::Lease(lease) = fence else { return Err(SendStoreError::Unfenced) };
            let mut tx = self.fenced(lease).await?;
            let epoch = i64::try_from(lease.epoch).map_err(store_error)?;
            Self::put_intent(&mut tx, intent, epoch).await?;
            if let Some(call) = call {
                Self::mark_sent(&mut tx, call, intent).await?;
            }
            tx.commit().await.map_err(store_error)
        })
    }

    fn intent(&self, signer: Address, nonce: u64) -> StoreFuture<'_, Option<Intent>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT signer, nonce, carries, raw, hashes FROM settled_intents \
                 WHERE signer = $1 AND nonce = $2",
            )
            .bind(signer.as_slice())
            .bind(nonce_i64(nonce)?)
            .fetch_optional(self.pool())
            .await
            .map_err(store_error)?;
            row.as_ref().map(intent_of).transpose()
        })
    }

    fn intent_carrying<'a>(
        &'a self,
        signer: Address,
        carries: &'a str,
    ) -> StoreFuture<'a, Option<Intent>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT signer, nonce, carries, raw, hashes FROM settled_intents \
                 WHERE signer = $1 AND carries = $2 ORDER BY nonce DESC LIMIT 1",
            )
            .bind(signer.as_slice())
            .bind(carries)
            .fetch_optional(self.pool())
            .await
            .map_err(store_error)?;
            row.as_ref().map(intent_of).transpose()
        })
    }

    fn unfinished(&self, signer: Address) -> StoreFuture<'_, Vec<Intent>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT signer, nonce, carries, raw, hashes FROM settled_intents \
                 WHERE signer = $1 AND NOT finished ORDER BY nonce",
            )
            .bind(signer.as_slice())
            .fetch_all(self.pool())
            .await
            .map_err(store_error)?;
            rows.iter().map(intent_of).collect()
        })
    }

    fn finish(&self, signer: Address, nonce: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE settled_intents SET finished = true WHERE signer = $1 AND nonce = $2",
            )
            .bind(signer.as_slice())
            .bind(nonce_i64(nonce)?)
            .execute(self.pool())
            .await
            .map_err(store_error)?;
            Ok(())
        })
    }
}
