//! What must be durable around a chain send, in one store per deployment: the billing calls'
//! idempotency records (claim → sent → done) and the send intents (nonce, signed raw
//! transaction, what it carries), committed under the signer's lease before the broadcast.
//!
//! A billing call claims its key ([`SendStore::claim`]); the signed transaction is committed as
//! an intent and, in the same atomic step, the call's record becomes `Sent` with the raw bytes
//! ([`SendStore::commit_intent`]); once mined the record is `Done`. A retry — on any node, after a
//! kill -9 at any instant — finds the record and sends the same bytes again, never another
//! transaction. A new leader of the signing key finds the unfinished intents and re-broadcasts
//! or fee-bumps them at their nonces; one nonce carries one payload, forever.

use std::future::Future;
use std::pin::Pin;

use alloy::primitives::{Address, B256, Bytes};
use serde::{Deserialize, Serialize};

use crate::lease::{Lease, LeaseError};

/// A boxed future, so the store is usable as `dyn SendStore` (the node picks the backend at
/// start).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SendStoreError>> + Send + 'a>>;

/// A billing call's record under its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CallRecord {
    /// Claimed by a call of `owner` (a node's process) that has not signed yet.
    Claimed {
        /// The hash of the call's parameters (a key is bound to them).
        params: B256,
        /// Who claimed it: a node's process id (see [`SendStore::release_dead_claim`]).
        #[serde(default)]
        owner: String,
    },
    /// Claimed by `owner`, whose node does not hold the signer's lease: waiting for the leader
    /// to sign `request` (a transaction request, as JSON).
    Queued {
        /// The call's parameters' hash.
        params: B256,
        /// Who claimed it.
        owner: String,
        /// What to sign.
        request: serde_json::Value,
    },
    /// The leader could not sign the queued call (the node refuses its transaction): nothing
    /// was sent; the caller answers `reason` and frees the key.
    Refused {
        /// The call's parameters' hash.
        params: B256,
        /// Who claimed it.
        owner: String,
        /// Why.
        reason: String,
    },
    /// Signed and committed (`raw` durable before the broadcast), not yet known mined.
    Sent {
        /// The call's parameters' hash.
        params: B256,
        /// The transaction's hash.
        transaction: B256,
        /// The signed transaction, to send again.
        #[serde(default)]
        raw: Bytes,
    },
    /// Mined; `receipt` is what the call answered.
    Done {
        /// The call's parameters' hash.
        params: B256,
        /// The call's answer.
        receipt: serde_json::Value,
    },
}

impl CallRecord {
    /// The parameters' hash the key is bound to.
    pub fn params(&self) -> B256 {
        match self {
            Self::Claimed { params, .. }
            | Self::Queued { params, .. }
            | Self::Refused { params, .. }
            | Self::Sent { params, .. }
            | Self::Done { params, .. } => *params,
        }
    }
}

impl CallRecord {
    /// Whether `owner` holds this record's claim, not yet signed (claimed or queued).
    pub fn claimed_by(&self, owner: &str) -> bool {
        match self {
            Self::Claimed { owner: o, .. } | Self::Queued { owner: o, .. } => o == owner,
            _ => false,
        }
    }
}

/// A queued call: its record, its claimant, what to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedCall {
    /// The idempotency record.
    pub id: B256,
    /// Its claimant.
    pub owner: String,
    /// The transaction request to sign, as JSON.
    pub request: serde_json::Value,
}

/// A signed transaction committed before its broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    /// The signing key's address.
    pub signer: Address,
    /// Its nonce: one payload per nonce.
    pub nonce: u64,
    /// What it carries (`stream_pause 7`, `settlement batch 3`): a fee bump must carry the same.
    pub carries: String,
    /// The latest signed version (a fee bump replaces it).
    pub raw: Bytes,
    /// Every version's hash, oldest first: any of them may be the one mined.
    pub hashes: Vec<B256>,
}

/// A call's part in an intent's commit: the record `id`, claimed by `owner`, becomes `Sent`.
#[derive(Debug, Clone, Copy)]
pub struct CallRef<'a> {
    /// The idempotency record.
    pub id: B256,
    /// Its claimant (must still hold the claim).
    pub owner: &'a str,
}

/// What entitles a writer to commit intents for a signing key.
#[derive(Debug, Clone)]
pub enum Fence {
    /// The store is this process's alone (sled: the database file is locked by one process).
    Exclusive,
    /// The signer's lease, checked in the commit's own transaction.
    Lease(Lease),
}

/// Why a send-store step was refused.
#[derive(Debug, thiserror::Error)]
pub enum SendStoreError {
    /// The fence no longer holds: nothing was written.
    #[error(transparent)]
    Lost(#[from] LeaseError),
    /// The call's record is not (or no longer) the owner's claim: nothing was written, and the
    /// transaction must not be broadcast.
    #[error("idempotency record {0} is not this call's claim any more")]
    NotClaimed(B256),
    /// The nonce carries another payload already: nothing was written.
    #[error("nonce {nonce} of {signer} carries {existing:?} already")]
    NonceTaken {
        /// The signer.
        signer: Address,
        /// The nonce.
        nonce: u64,
        /// What it carries.
        existing: String,
    },
    /// The fence does not fit the store (an exclusive fence on a shared store).
    #[error("a shared store needs a lease to fence its writes")]
    Unfenced,
    /// The store failed or could not be reached: fail closed.
    #[error("send store: {0}")]
    Store(String),
}

/// The store of billing calls and send intents. Each method is one atomic, durable step.
pub trait SendStore: Send + Sync + std::fmt::Debug {
    /// Claims `id` for a call with `params` by `owner`: `None` when claimed now, else the
    /// record already there (whatever its parameters: the caller compares them).
    fn claim<'a>(
        &'a self,
        id: B256,
        params: B256,
        owner: &'a str,
    ) -> StoreFuture<'a, Option<CallRecord>>;

    /// The record under `id`.
    fn call(&self, id: B256) -> StoreFuture<'_, Option<CallRecord>>;

    /// Frees `id` if it is still `owner`'s claim or refusal (the call ended before signing).
    /// Whether it was.
    fn release_claim<'a>(&'a self, id: B256, owner: &'a str) -> StoreFuture<'a, bool>;

    /// Frees `id` if it is a claim of `owner` and `owner` is no longer alive (a process that
    /// died before signing: nothing of its call reached the chain). Whether it was freed.
    fn release_dead_claim<'a>(&'a self, id: B256, owner: &'a str) -> StoreFuture<'a, bool>;

    /// Hands `owner`'s claim of `id` to the signer's leader: `request` waits to be signed.
    /// Whether the claim was still `owner`'s.
    fn queue<'a>(
        &'a self,
        id: B256,
        owner: &'a str,
        request: serde_json::Value,
    ) -> StoreFuture<'a, bool>;

    /// The queued calls, oldest first.
    fn queued(&self) -> StoreFuture<'_, Vec<QueuedCall>>;

    /// The leader could not sign queued `id` of `owner`: nothing was sent, `reason` says why.
    fn refuse<'a>(&'a self, id: B256, owner: &'a str, reason: &'a str) -> StoreFuture<'a, ()>;

    /// Marks `id` done with the call's answer.
    fn complete(&self, id: B256, params: B256, receipt: serde_json::Value) -> StoreFuture<'_, ()>;

    /// Commits `intent` under `fence` before it is broadcast — and, with `call`, turns that
    /// call's claim into `Sent` in the same step. A nonce already carrying the same payload
    /// takes the new version (a fee bump); another payload is [`SendStoreError::NonceTaken`].
    fn commit_intent<'a>(
        &'a self,
        fence: &'a Fence,
        intent: &'a Intent,
        call: Option<CallRef<'a>>,
    ) -> StoreFuture<'a, ()>;

    /// The signer's intent at `nonce`, finished or not.
    fn intent(&self, signer: Address, nonce: u64) -> StoreFuture<'_, Option<Intent>>;

    /// The signer's latest intent carrying `carries` (by nonce), finished or not.
    fn intent_carrying<'a>(
        &'a self,
        signer: Address,
        carries: &'a str,
    ) -> StoreFuture<'a, Option<Intent>>;

    /// The signer's intents not yet finished, by nonce.
    fn unfinished(&self, signer: Address) -> StoreFuture<'_, Vec<Intent>>;

    /// Marks the signer's intent at `nonce` finished (mined, or its nonce used).
    fn finish(&self, signer: Address, nonce: u64) -> StoreFuture<'_, ()>;
}

pub(crate) fn store_error(e: impl std::fmt::Display) -> SendStoreError {
    SendStoreError::Store(e.to_string())
}

/// The version of `intent` to keep when `existing` is at its nonce already: the same payload
/// takes the new raw and adds its hash; another payload is refused.
pub(crate) fn merged(existing: Option<Intent>, intent: &Intent) -> Result<Intent, SendStoreError> {
    let Some(mut kept) = existing else { return Ok(intent.clone()) };
    if kept.carries != intent.carries {
        return Err(SendStoreError::NonceTaken {
            signer: intent.signer,
            nonce: intent.nonce,
            existing: kept.carries,
        });
    }
    for hash in &intent.hashes {
        if !kept.hashes.contains(hash) {
            kept.hashes.push(*hash);
        }
    }
    kept.raw = intent.raw.clone();
    Ok(kept)
}

/// One signer's handle on the send store: the store, this process's claim owner, and the fence
/// its writes carry (`None` while this node does not hold the signer's lease).
#[derive(Debug, Clone)]
pub struct Sends {
    /// The store.
    pub store: std::sync::Arc<dyn SendStore>,
    /// This process's claims' owner.
    pub owner: String,
    /// The current fence.
    pub fence: tokio::sync::watch::Receiver<Option<Fence>>,
}

impl Sends {
    /// The embedded store in `db`, this process's alone.
    pub fn embedded(db: &sled::Db) -> Result<Self, SendStoreError> {
        let owner = process_owner();
        let store = crate::SledSends::open(db, owner.clone())?;
        let (_, fence) = tokio::sync::watch::channel(Some(Fence::Exclusive));
        Ok(Self { store: std::sync::Arc::new(store), owner, fence })
    }

    /// The fence to commit under now, if this node may send.
    pub fn current_fence(&self) -> Option<Fence> {
        self.fence.borrow().clone()
    }
}

/// Records each transaction the signer's sender signs as an intent under the current fence
/// (settlement's withdrawals and commits on a shared store): no lease, no send.
impl settled_contracts::SendJournal for Sends {
    fn record<'a>(
        &'a self,
        signer: Address,
        nonce: u64,
        carries: String,
        raw: &'a Bytes,
        hash: B256,
    ) -> settled_contracts::JournalFuture<'a> {
        Box::pin(async move {
            let fence = self
                .current_fence()
                .ok_or_else(|| "this node does not hold the signer's lease".to_string())?;
            let intent = Intent { signer, nonce, carries, raw: raw.clone(), hashes: vec![hash] };
            self.store.commit_intent(&fence, &intent, None).await.map_err(|e| e.to_string())
        })
    }

    fn recorded<'a>(
        &'a self,
        signer: Address,
        carries: String,
    ) -> settled_contracts::RecordedFuture<'a> {
        Box::pin(async move {
            let found = self.store.intent_carrying(signer, &carries).await;
            Ok(found.map_err(|e| e.to_string())?.map(|intent| (intent.nonce, intent.raw)))
        })
    }
}

/// A name for this process, unique across nodes and restarts: the host, the process id and the
/// start time in nanoseconds.
pub fn process_owner() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}/{}/{nanos}", host.trim(), std::process::id())
}
