//! The operator key on a shared store: one node leads it (its lease) and signs every billing
//! call; a node that does not lead queues its calls for the leader and waits. On taking over,
//! the leader first sends the previous leader's unfinished intents again — the same bytes at
//! the same nonces — so nothing is issued twice under a new nonce and no nonce is left a gap.

use std::time::Duration;

use alloy::{providers::Provider, rpc::types::TransactionRequest};
use settled_contracts::{Refusal, SendError};
use settled_store::{CallRecord, CallRef, Fence, Intent, LeaseKeeper, LeaseStore, QueuedCall};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::BillingError;
use crate::operator::{Broadcast, Operator, OperatorReceipt, internal, vault_error};

/// How often a queued call's record, and the queue, are looked at.
const QUEUE_POLL: Duration = Duration::from_millis(50);
/// How often the leader looks at its unfinished intents again.
const RECOVERY_EVERY: Duration = Duration::from_secs(10);
/// How long a call waits for the leader before answering "retry" (the record stays queued).
const QUEUE_WAIT: Duration = Duration::from_secs(30);

impl Operator {
    /// Waits until the leader has signed queued call `id`, then until it is mined.
    pub(crate) async fn await_leader(
        &self,
        id: alloy::primitives::B256,
        params: alloy::primitives::B256,
    ) -> Result<OperatorReceipt, BillingError> {
        let deadline = tokio::time::Instant::now() + QUEUE_WAIT;
        loop {
            match self.sends.store.call(id).await.map_err(internal)? {
                Some(CallRecord::Queued { .. } | CallRecord::Claimed { .. }) => {}
                Some(CallRecord::Sent { transaction, raw, .. }) => {
                    return self.mined(id, params, transaction, &raw).await;
                }
                Some(CallRecord::Done { receipt, .. }) => {
                    return serde_json::from_value(receipt).map_err(internal);
                }
                Some(CallRecord::Refused { owner, reason, .. }) => {
                    self.sends.store.release_claim(id, &owner).await.map_err(internal)?;
                    return Err(BillingError::InvalidParams(reason));
                }
                None => {
                    return Err(BillingError::Busy(
                        "the queued call's claim was freed (its node stopped); retry".into(),
                    ));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BillingError::Busy(
                    "queued for the node that leads the operator key; retry with the same \
                     idempotencyKey"
                        .into(),
                ));
            }
            tokio::time::sleep(QUEUE_POLL).await;
        }
    }

    /// Leads the operator key whenever this node holds its lease, until `cancel`: publishes
    /// the fence on `fence`, sends the previous leader's unfinished intents again, then signs
    /// the calls other nodes queue; steps down (fence `None`) the moment the lease is lost.
    pub async fn lead<S: LeaseStore>(
        &self,
        keeper: LeaseKeeper<S>,
        fence: watch::Sender<Option<Fence>>,
        cancel: CancellationToken,
    ) {
        while let Some(leadership) = keeper.lead(&cancel).await {
            let Some(lease) = leadership.lease() else { continue };
            let epoch = lease.epoch;
            let current = Fence::Lease(lease);
            match self.recover_intents(&current).await {
                Ok((resent, bumped)) => info!(epoch, resent, bumped, "leading the operator key"),
                Err(error) => warn!(epoch, %error, "sending the previous leader's intents again"),
            }
            fence.send_replace(Some(current.clone()));
            self.serve_queue(&current, &leadership.lost).await;
            fence.send_replace(None);
            if !cancel.is_cancelled() {
                warn!(epoch, "lost the operator key's lease: no longer signing");
            }
        }
    }

    /// Signs and sends the calls other nodes queued, until `lost` fires; every
    /// [`RECOVERY_EVERY`] looks at the unfinished intents again (one the chain dropped as
    /// underpriced is bumped, one whose nonce was used is finished).
    async fn serve_queue(&self, fence: &Fence, lost: &CancellationToken) {
        let mut recovered = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = lost.cancelled() => return,
                _ = tokio::time::sleep(QUEUE_POLL) => {}
            }
            if recovered.elapsed() >= RECOVERY_EVERY {
                recovered = tokio::time::Instant::now();
                if let Err(error) = self.recover_intents(fence).await {
                    warn!(%error, "looking at the unfinished intents");
                }
            }
            let queued = match self.sends.store.queued().await {
                Ok(queued) => queued,
                Err(error) => {
                    warn!(%error, "reading the queued billing calls");
                    continue;
                }
            };
            for call in queued {
                if lost.is_cancelled() {
                    return;
                }
                self.sign_queued(fence, call).await;
            }
        }
    }

    /// Signs one queued call under its caller's claim; records why when the node refuses it.
    async fn sign_queued(&self, fence: &Fence, call: QueuedCall) {
        let (id, owner) = (call.id, call.owner.as_str());
        let refuse = |reason: String| async move {
            if let Err(error) = self.sends.store.refuse(id, owner, &reason).await {
                warn!(%id, %error, "recording a refused billing call");
            }
        };
        let tx: TransactionRequest = match serde_json::from_value(call.request) {
            Ok(tx) => tx,
            Err(e) => return refuse(format!("unreadable queued transaction: {e}")).await,
        };
        match self.sign_record_send(fence, CallRef { id, owner }, tx).await {
            Ok(_) => {}
            Err((SendError::Refused(e), Broadcast::No)) => {
                let reason = vault_error(&e).unwrap_or_else(|| e.to_string());
                refuse(format!("the vault refuses: {reason}")).await;
            }
            // Recorded: the caller's wait (or its retry) sends the same bytes again.
            Err((error, Broadcast::Unknown)) => warn!(%id, %error, "broadcasting a queued call"),
            // The lease or the claim is gone, or the chain is unreachable: nothing was sent.
            Err((error, Broadcast::No)) => warn!(%id, %error, "signing a queued call"),
        }
    }

    /// Sends the operator key's unfinished intents again — the same bytes, so each is mined at
    /// most once, or, when the node refuses them as underpriced, a fee bump of the same nonce
    /// and calldata committed under `fence` first; those whose nonce is used already are
    /// finished. How many were sent again, and how many of those bumped.
    pub async fn recover_intents(&self, fence: &Fence) -> Result<(usize, usize), BillingError> {
        let unfinished = self.sends.store.unfinished(self.address).await.map_err(internal)?;
        let provider = self.sender.provider();
        let used = provider.get_transaction_count(self.address).latest().await.map_err(internal)?;
        let (mut resent, mut bumped) = (0, 0);
        for intent in unfinished {
            if intent.nonce < used {
                self.sends.store.finish(self.address, intent.nonce).await.map_err(internal)?;
                continue;
            }
            match self.sender.broadcast_raw(&intent.raw).await {
                Ok(()) => {}
                Err(e) if e.refusal() == Some(Refusal::Underpriced) => {
                    match self.bump(fence, &intent).await {
                        Ok(()) => bumped += 1,
                        // A blob commit (settlement re-prices its own) or a lost lease: the
                        // others are still looked at.
                        Err(error) => warn!(nonce = intent.nonce, %error, "not fee-bumped"),
                    }
                }
                // Known already, or its nonce was used meanwhile.
                Err(e) if e.refused_by_node() => {}
                Err(e) => return Err(internal(e)),
            }
            resent += 1;
        }
        Ok((resent, bumped))
    }

    /// Re-signs `intent` at its nonce with its calldata and higher fees, commits the new version
    /// under `fence`, then sends it.
    async fn bump(&self, fence: &Fence, intent: &Intent) -> Result<(), BillingError> {
        let (sent, raw) = self.sender.sign_replacement(&intent.raw).await.map_err(internal)?;
        let bumped = Intent { raw: raw.clone(), hashes: vec![sent.hash], ..intent.clone() };
        self.sends.store.commit_intent(fence, &bumped, None).await.map_err(internal)?;
        info!(nonce = intent.nonce, hash = %sent.hash, "fee-bumped a previous leader's intent");
        self.sender.broadcast_raw(&raw).await.map_err(internal)
    }
}
