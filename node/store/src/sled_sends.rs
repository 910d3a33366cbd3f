//! The send store in sled: one process owns the database file (sled locks it), so a claim of
//! another process is a dead one's, and the file lock is the fence. Every step is one sled
//! transaction, flushed before it returns.

use alloy::primitives::{Address, B256};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::sends::{
    CallRecord, CallRef, Fence, Intent, QueuedCall, SendStore, SendStoreError, StoreFuture, merged,
    store_error,
};

/// Billing calls and send intents in sled trees.
#[derive(Debug, Clone)]
pub struct SledSends {
    calls: sled::Tree,
    intents: sled::Tree,
    /// This process's claims' owner.
    owner: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct IntentRow {
    intent: Intent,
    finished: bool,
}

fn intent_key(signer: Address, nonce: u64) -> Vec<u8> {
    [signer.as_slice(), &nonce.to_be_bytes()].concat()
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, SendStoreError> {
    serde_json::from_slice(bytes).map_err(store_error)
}

fn encode(value: &impl Serialize) -> Result<Vec<u8>, SendStoreError> {
    serde_json::to_vec(value).map_err(store_error)
}

/// A transaction's own refusal, or sled's failure.
fn unwrap_tx<T>(result: Result<T, TransactionError<SendStoreError>>) -> Result<T, SendStoreError> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => store_error(e),
    })
}

fn abort(e: SendStoreError) -> ConflictableTransactionError<SendStoreError> {
    ConflictableTransactionError::Abort(e)
}

impl SledSends {
    /// The store in `db` (trees `streams.idempotency` and `sends.intents`); this process's
    /// claims are made as `owner` (unique per process start).
    pub fn open(db: &sled::Db, owner: impl Into<String>) -> Result<Self, SendStoreError> {
        Ok(Self {
            calls: db.open_tree("streams.idempotency").map_err(store_error)?,
            intents: db.open_tree("sends.intents").map_err(store_error)?,
            owner: owner.into(),
        })
    }

    /// Waits until every write so far is on disk (a blocking flush on a blocking thread:
    /// concurrent `flush_async` calls can hang in sled 0.34).
    async fn durable(&self) -> Result<(), SendStoreError> {
        let (calls, intents) = (self.calls.clone(), self.intents.clone());
        tokio::task::spawn_blocking(move || calls.flush().and_then(|_| intents.flush()))
            .await
            .map_err(store_error)?
            .map(drop)
            .map_err(store_error)
    }

    fn record(&self, id: B256) -> Result<Option<CallRecord>, SendStoreError> {
        self.calls.get(id).map_err(store_error)?.map(|v| decode(&v)).transpose()
    }

    /// Removes `id` if it holds exactly `record`.
    fn remove_if(&self, id: B256, record: &CallRecord) -> Result<bool, SendStoreError> {
        let Some(current) = self.calls.get(id).map_err(store_error)? else { return Ok(false) };
        if decode::<CallRecord>(&current)? != *record {
            return Ok(false);
        }
        let swapped = self
            .calls
            .compare_and_swap(id, Some(current), None as Option<&[u8]>)
            .map_err(store_error)?;
        Ok(swapped.is_ok())
    }

    fn commit(&self, intent: &Intent, call: Option<CallRef<'_>>) -> Result<(), SendStoreError> {
        let key = intent_key(intent.signer, intent.nonce);
        let result = (&self.calls, &self.intents).transaction(|(calls, intents)| {
            let existing = match intents.get(&key)? {
                Some(row) => Some(decode::<IntentRow>(&row).map_err(abort)?.intent),
                None => None,
            };
            let kept = merged(existing, intent).map_err(abort)?;
            if let Some(call) = call {
                let record = match calls.get(call.id)? {
                    Some(value) => decode::<CallRecord>(&value).map_err(abort)?,
                    None => return Err(abort(SendStoreError::NotClaimed(call.id))),
                };
                if !record.claimed_by(call.owner) {
                    return Err(abort(SendStoreError::NotClaimed(call.id)));
                }
                let params = record.params();
                let transaction = intent.hashes.last().copied().unwrap_or_default();
                let sent = CallRecord::Sent { params, transaction, raw: intent.raw.clone() };
                calls.insert(call.id.as_slice(), encode(&sent).map_err(abort)?)?;
            }
            let row = IntentRow { intent: kept, finished: false };
            intents.insert(key.as_slice(), encode(&row).map_err(abort)?)?;
            Ok(())
        });
        unwrap_tx(result)
    }
}

impl SendStore for SledSends {
    fn claim<'a>(
        &'a self,
        id: B256,
        params: B256,
        owner: &'a str,
    ) -> StoreFuture<'a, Option<CallRecord>> {
        Box::pin(async move {
            let claim = encode(&CallRecord::Claimed { params, owner: owner.into() })?;
            let swapped = self
                .calls
                .compare_and_swap(id, None as Option<&[u8]>, Some(claim))
                .map_err(store_error)?;
            match swapped {
                Ok(()) => {
                    self.durable().await?;
                    Ok(None)
                }
                Err(existing) => existing.current.map(|v| decode(&v)).transpose(),
            }
        })
    }

    fn call(&self, id: B256) -> StoreFuture<'_, Option<CallRecord>> {
        Box::pin(async move { self.record(id) })
    }

    fn release_claim<'a>(&'a self, id: B256, owner: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let Some(record) = self.record(id)? else { return Ok(false) };
            let own = match &record {
                CallRecord::Claimed { owner: o, .. } | CallRecord::Refused { owner: o, .. } => {
                    o == owner
                }
                _ => false,
            };
            if !own {
                return Ok(false);
            }
            self.remove_if(id, &record)
        })
    }

    fn release_dead_claim<'a>(&'a self, id: B256, owner: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            // One process per database: every owner but this process is dead.
            if owner == self.owner {
                return Ok(false);
            }
            let Some(record @ CallRecord::Claimed { .. }) = self.record(id)? else {
                return Ok(false);
            };
            match &record {
                CallRecord::Claimed { owner: claimant, .. } if claimant == owner => {
                    self.remove_if(id, &record)
                }
                _ => Ok(false),
            }
        })
    }

    fn queue<'a>(
        &'a self,
        id: B256,
        owner: &'a str,
        request: serde_json::Value,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let Some(record @ CallRecord::Claimed { .. }) = self.record(id)? else {
                return Ok(false);
            };
            if !record.claimed_by(owner) {
                return Ok(false);
            }
            let queued =
                CallRecord::Queued { params: record.params(), owner: owner.into(), request };
            let swapped = self
                .calls
                .compare_and_swap(id, Some(encode(&record)?), Some(encode(&queued)?))
                .map_err(store_error)?;
            self.durable().await?;
            Ok(swapped.is_ok())
        })
    }

    fn queued(&self) -> StoreFuture<'_, Vec<QueuedCall>> {
        // In key order: one node holds the fence and never queues.
        Box::pin(async move {
            let mut found = Vec::new();
            for entry in self.calls.iter() {
                let (key, value) = entry.map_err(store_error)?;
                if let CallRecord::Queued { owner, request, .. } = decode(&value)? {
                    let id = B256::try_from(key.as_ref()).map_err(store_error)?;
                    found.push(QueuedCall { id, owner, request });
                }
            }
            Ok(found)
        })
    }

    fn refuse<'a>(&'a self, id: B256, owner: &'a str, reason: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let Some(record) = self.record(id)? else { return Ok(()) };
            if !record.claimed_by(owner) {
                return Ok(());
            }
            let refused = CallRecord::Refused {
                params: record.params(),
                owner: owner.into(),
                reason: reason.into(),
            };
            let _ = self
                .calls
                .compare_and_swap(id, Some(encode(&record)?), Some(encode(&refused)?))
                .map_err(store_error)?;
            self.durable().await
        })
    }

    fn complete(&self, id: B256, params: B256, receipt: serde_json::Value) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let done = encode(&CallRecord::Done { params, receipt })?;
            self.calls.insert(id, done).map_err(store_error)?;
            self.durable().await
        })
    }

    fn commit_intent<'a>(
        &'a self,
        fence: &'a Fence,
        intent: &'a Intent,
        call: Option<CallRef<'a>>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            // The database file is this process's: any fence admits the write (a lease on the
            // embedded store was taken from this process's own lease tree).
            let _ = fence;
            self.commit(intent, call)?;
            self.durable().await
        })
    }

    fn intent(&self, signer: Address, nonce: u64) -> StoreFuture<'_, Option<Intent>> {
        Box::pin(async move {
            let value = self.intents.get(intent_key(signer, nonce)).map_err(store_error)?;
            Ok(value.map(|v| decode::<IntentRow>(&v)).transpose()?.map(|row| row.intent))
        })
    }

    fn intent_carrying<'a>(
        &'a self,
        signer: Address,
        carries: &'a str,
    ) -> StoreFuture<'a, Option<Intent>> {
        Box::pin(async move {
            for entry in self.intents.scan_prefix(signer.as_slice()).rev() {
                let (_, value) = entry.map_err(store_error)?;
                let row: IntentRow = decode(&value)?;
                if row.intent.carries == carries {
                    return Ok(Some(row.intent));
                }
            }
            Ok(None)
        })
    }

    fn unfinished(&self, signer: Address) -> StoreFuture<'_, Vec<Intent>> {
        Box::pin(async move {
            let mut found = Vec::new();
            for entry in self.intents.scan_prefix(signer.as_slice()) {
                let (_, value) = entry.map_err(store_error)?;
                let row: IntentRow = decode(&value)?;
                if !row.finished {
                    found.push(row.intent);
                }
            }
            Ok(found)
        })
    }

    fn finish(&self, signer: Address, nonce: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let key = intent_key(signer, nonce);
            let Some(value) = self.intents.get(&key).map_err(store_error)? else {
                return Ok(());
            };
            let mut row: IntentRow = decode(&value)?;
            row.finished = true;
            self.intents.insert(key, encode(&row)?).map_err(store_error)?;
            self.durable().await
        })
    }
}
