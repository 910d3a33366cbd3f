//! The billing RPC's write side: the node, as each stream's operator, pauses, resumes, lowers
//! the rate, withdraws to the payee and closes — on behalf of an API key whose scope covers the
//! stream. Every call carries an idempotency key: a retry with the same key and parameters
//! returns the first call's result and never sends twice; the same key with other parameters is
//! refused.
//!
//! The idempotency record lives in the send store (`settled-store`: this node's sled, or the
//! PostgreSQL several nodes share). It is claimed before anything is signed, then holds the
//! signed transaction — committed with its send intent, durably, under the operator key's
//! fence, before it is broadcast — and finally the result, so a retry after a kill -9 at any
//! instant, on any node, finds the transaction (and sends the same bytes again if the chain
//! never had them) instead of sending another. A claim left by a process that died before
//! signing is freed: nothing of it reached the chain. A node that does not lead the operator
//! key queues its calls for the one that does (`leader.rs`).

use std::sync::Arc;

use alloy::{
    primitives::{Address, B256, Bytes, U256, aliases::U96, keccak256},
    providers::Provider,
    rpc::types::TransactionRequest,
};
use jsonrpsee::{Extensions, RpcModule, types::Params};
use serde::{Deserialize, Serialize};
use settled_contracts::StreamVault;

use settled_contracts::{SendError, TransactionSender};
use settled_store::{CallRecord, CallRef, Fence, Intent, Sends};

use crate::BillingError;

use super::{
    index::StreamId,
    rpc::{Billing, decimal},
};

/// What a mutating call did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorReceipt {
    /// The transaction.
    pub transaction_hash: B256,
    /// Its block.
    pub block_number: u64,
}

/// The operator: its signer, the vault, the idempotency records and send intents.
pub struct Operator {
    /// Sends as the operator (shared with the settlement scheduler: one nonce sequence).
    pub(crate) sender: Arc<TransactionSender>,
    pub(crate) address: Address,
    vault: Address,
    pub(crate) sends: Sends,
}

pub(crate) fn internal(e: impl std::fmt::Display) -> BillingError {
    BillingError::Internal(e.to_string())
}

impl Operator {
    /// The operator signing through `sender`, acting on `vault`, its calls and intents in
    /// `sends`.
    pub fn new(sender: Arc<TransactionSender>, vault: Address, sends: Sends) -> Self {
        let address = sender.address();
        Self { sender, address, vault, sends }
    }

    /// The record id of (API key, idempotency key).
    fn record_id(key_name: &str, idempotency_key: &str) -> Result<B256, BillingError> {
        if idempotency_key.is_empty() || idempotency_key.len() > 128 {
            return Err(BillingError::InvalidParams(
                "idempotencyKey must be 1 to 128 characters".into(),
            ));
        }
        Ok(keccak256([key_name.as_bytes(), b"\0", idempotency_key.as_bytes()].concat()))
    }

    /// The earlier call's result under this key, if there was one (checked before anything
    /// else, so a retry of a call that changed the stream is answered, not refused).
    pub(crate) async fn replay(
        &self,
        id: B256,
        params: B256,
    ) -> Result<Option<OperatorReceipt>, BillingError> {
        let Some(existing) = self.sends.store.call(id).await.map_err(internal)? else {
            return Ok(None);
        };
        self.answer(id, params, existing).await
    }

    /// What a call finding `existing` under its key answers: the earlier result, or `None`
    /// when the key is free again (a dead process's claim).
    async fn answer(
        &self,
        id: B256,
        params: B256,
        existing: CallRecord,
    ) -> Result<Option<OperatorReceipt>, BillingError> {
        if existing.params() != params {
            return Err(BillingError::InvalidParams(
                "idempotencyKey was already used with different parameters".into(),
            ));
        }
        match existing {
            CallRecord::Done { receipt, .. } => {
                serde_json::from_value(receipt).map(Some).map_err(internal)
            }
            CallRecord::Sent { transaction, raw, .. } => {
                if !raw.is_empty() {
                    self.sender.rebroadcast(&raw).await.map_err(internal)?;
                }
                self.mined(id, params, transaction, &raw).await.map(Some)
            }
            CallRecord::Claimed { owner, .. } if owner != self.sends.owner => {
                // A dead process's claim never broadcast (that needs a durable `Sent`); a live
                // one's (another node's call in flight) stays.
                match self.sends.store.release_dead_claim(id, &owner).await.map_err(internal)? {
                    true => Ok(None),
                    false => Err(in_progress()),
                }
            }
            CallRecord::Claimed { .. } => Err(in_progress()),
            // Waiting for the operator key's leader, whoever queued it.
            CallRecord::Queued { .. } => self.await_leader(id, params).await.map(Some),
            CallRecord::Refused { owner, reason, .. } => {
                // Nothing was sent: answer why and free the key.
                self.sends.store.release_claim(id, &owner).await.map_err(internal)?;
                Err(BillingError::InvalidParams(reason))
            }
        }
    }

    /// Claims the key, checks `tx` with `eth_call`, sends it, records its hash, waits for it.
    pub(crate) async fn send_once(
        &self,
        id: B256,
        params: B256,
        tx: TransactionRequest,
    ) -> Result<OperatorReceipt, BillingError> {
        let owner = self.sends.owner.as_str();
        if let Some(existing) = self.sends.store.claim(id, params, owner).await.map_err(internal)? {
            // A concurrent call with the same key got there first.
            return match self.answer(id, params, existing).await? {
                Some(receipt) => Ok(receipt),
                None => Err(BillingError::Busy("retry shortly".into())),
            };
        }
        // A call abandoned before it signed (its client went away and the server dropped it)
        // frees its key; past the durable `Sent`, the record stays for the retry.
        let _claim = ClaimGuard { sends: &self.sends, id };
        // A call the vault would refuse is answered now, with its reason, instead of being mined
        // as a reverted transaction.
        let tx = tx.from(self.address);
        if let Err(e) = self.sender.provider().call(tx.clone()).await {
            self.release(id).await;
            return Err(BillingError::InvalidParams(format!(
                "the vault refuses: {}",
                revert_reason(&e)
            )));
        }
        let Some(fence) = self.sends.current_fence() else {
            // Another node leads the operator key: it signs the call.
            let request = serde_json::to_value(&tx).map_err(internal)?;
            if !self.sends.store.queue(id, owner, request).await.map_err(internal)? {
                return Err(BillingError::Internal("the call's claim was taken over".into()));
            }
            return self.await_leader(id, params).await;
        };
        let call = CallRef { id, owner };
        let (transaction, raw) = match self.sign_record_send(&fence, call, tx).await {
            Ok(sent) => sent,
            Err((e, Broadcast::Unknown)) => {
                // The node may have it: the durable record lets a retry find it.
                return Err(BillingError::Internal(e.to_string()));
            }
            Err((SendError::Refused(e), Broadcast::No)) if vault_error(&e).is_some() => {
                // The estimate reverts: another call changed the stream since our check (two
                // resumes racing). Nothing was sent; say what the vault refuses, decoded.
                self.release(id).await;
                let reason = vault_error(&e).unwrap_or_default();
                return Err(BillingError::InvalidParams(format!("the vault refuses: {reason}")));
            }
            Err((e, Broadcast::No)) => {
                // Certainly not sent: the key is free for a retry.
                self.release(id).await;
                return Err(BillingError::Internal(e.to_string()));
            }
        };
        self.mined(id, params, transaction, &raw).await
    }

    /// Frees this call's claim (nothing of it was sent).
    async fn release(&self, id: B256) {
        if let Err(e) = self.sends.store.release_claim(id, &self.sends.owner).await {
            tracing::warn!(%id, error = %e, "freeing an idempotency claim");
        }
    }

    /// Signs `tx`, commits it as an intent with the call's record `Sent` (durable, under the
    /// operator's fence), then broadcasts it. An error says whether it may have reached the node.
    pub(crate) async fn sign_record_send(
        &self,
        fence: &Fence,
        call: CallRef<'_>,
        tx: TransactionRequest,
    ) -> Result<(B256, Bytes), (SendError, Broadcast)> {
        let not_sent = |e: SendError| (e, Broadcast::No);
        let id = call.id;
        let signed = self.sender.sign(tx).await.map_err(not_sent)?;
        let (transaction, raw) = (signed.sent.hash, signed.raw.clone());
        let intent = Intent {
            signer: self.address,
            nonce: signed.sent.nonce,
            carries: format!("billing call {id}"),
            raw: raw.clone(),
            hashes: vec![transaction],
        };
        self.sends
            .store
            .commit_intent(fence, &intent, Some(call))
            .await
            .map_err(|e| not_sent(SendError::Record(e.to_string())))?;
        match self.sender.broadcast(signed).await {
            Ok(_) => Ok((transaction, raw)),
            // The leader's look at its unfinished intents sent these very bytes first.
            Err(e) if e.refusal() == Some(settled_contracts::Refusal::AlreadyKnown) => {
                Ok((transaction, raw))
            }
            Err(e) if e.refused_by_node() => Err((e, Broadcast::No)),
            Err(e) => Err((e, Broadcast::Unknown)),
        }
    }

    pub(crate) async fn mined(
        &self,
        id: B256,
        params: B256,
        transaction: B256,
        raw: &Bytes,
    ) -> Result<OperatorReceipt, BillingError> {
        let receipt = self.receipt_of_any_version(transaction, raw).await?;
        let transaction = receipt.transaction_hash;
        if let Some(nonce) = nonce_of(raw) {
            self.sends.store.finish(self.address, nonce).await.map_err(internal)?;
        }
        if !receipt.status() {
            // Another call changed the stream between our check and inclusion (two resumes
            // racing): say what the vault refused, as the check would have.
            let reason = self.refusal(transaction, receipt.block_number).await;
            return Err(BillingError::InvalidParams(format!(
                "transaction {transaction} reverted: the vault refuses: {reason}"
            )));
        }
        let result = OperatorReceipt {
            transaction_hash: transaction,
            block_number: receipt.block_number.unwrap_or_default(),
        };
        let answer = serde_json::to_value(&result).map_err(internal)?;
        self.sends.store.complete(id, params, answer).await.map_err(internal)?;
        Ok(result)
    }
}

impl Operator {
    /// The receipt of whichever version of the call's transaction is mined, within a minute: a
    /// new leader may fee-bump an underpriced one at the same nonce meanwhile, so the versions
    /// are read again every two seconds.
    async fn receipt_of_any_version(
        &self,
        transaction: B256,
        raw: &Bytes,
    ) -> Result<alloy::rpc::types::TransactionReceipt, BillingError> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let mut hashes = vec![transaction];
            if let Some(nonce) = nonce_of(raw)
                && let Some(intent) =
                    self.sends.store.intent(self.address, nonce).await.map_err(internal)?
            {
                hashes.extend(intent.hashes.into_iter().filter(|h| *h != transaction));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let within = left.min(std::time::Duration::from_secs(2));
            if let Some(receipt) =
                self.sender.wait_mined(&hashes, within).await.map_err(internal)?
            {
                return Ok(receipt);
            }
            if left <= within {
                return Err(BillingError::Busy(format!(
                    "transaction {transaction} not mined yet; retry later"
                )));
            }
        }
    }
}

/// The nonce of a signed transaction (none for an empty or undecodable one: a record from
/// before raw transactions were kept).
fn nonce_of(raw: &Bytes) -> Option<u64> {
    use alloy::consensus::Transaction as _;
    use alloy::eips::eip2718::Decodable2718 as _;
    let envelope = alloy::consensus::TxEnvelope::decode_2718(&mut raw.as_ref()).ok()?;
    Some(envelope.nonce())
}

fn in_progress() -> BillingError {
    BillingError::Busy("a call with this idempotencyKey is in progress; retry shortly".into())
}

/// Frees a `Claimed` record when its call ends without replacing it: the call was dropped
/// before anything was signed, so nothing of it can reach the chain. (A `Sent` or `Done`
/// written since is left alone: only the owner's claim is freed.)
struct ClaimGuard<'a> {
    sends: &'a Sends,
    id: B256,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        let (store, owner, id) = (self.sends.store.clone(), self.sends.owner.clone(), self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { store.release_claim(id, &owner).await });
        }
    }
}

/// Whether a failed send may have reached the node.
pub(crate) enum Broadcast {
    /// Certainly not.
    No,
    /// Perhaps (a transport failure during the broadcast).
    Unknown,
}

impl Operator {
    /// Why the vault reverted `transaction`: the same call replayed on the state of the block it
    /// was mined in, its revert decoded.
    async fn refusal(&self, transaction: B256, block: Option<u64>) -> String {
        let provider = self.sender.provider();
        let Ok(Some(tx)) = provider.get_transaction_by_hash(transaction).await else {
            return "reason unknown (transaction not found)".into();
        };
        use alloy::consensus::Transaction as _;
        let Some(to) = tx.inner.to() else { return "reason unknown (no recipient)".into() };
        let request = TransactionRequest::default()
            .from(self.address)
            .to(to)
            .input(tx.inner.input().clone().into());
        let call = provider.call(request);
        let call = match block {
            Some(number) => call.block(number.into()),
            None => call,
        };
        match call.await {
            Err(e) => revert_reason(&e),
            Ok(_) => "reason unknown (the call succeeds now)".into(),
        }
    }
}

/// A vault revert as its decoded error (`NotAllowed { .. }`), else the node's message.
fn revert_reason(e: &alloy::transports::TransportError) -> String {
    vault_error(e).unwrap_or_else(|| e.to_string())
}

/// The vault's own error in a node's answer, decoded, if that is what it is.
pub(crate) fn vault_error(e: &alloy::transports::TransportError) -> Option<String> {
    e.as_error_resp()
        .and_then(|payload| payload.as_decoded_interface_error::<StreamVault::StreamVaultErrors>())
        .map(|decoded| format!("{decoded:?}"))
}

/// The parameters of a mutating call: the stream, the idempotency key, and the action's own.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Mutation {
    stream_id: String,
    idempotency_key: String,
    /// `stream_adjustRate`: the new rate, decimal, scaled to 18 decimals.
    #[serde(default)]
    rate_per_second: Option<String>,
    /// `stream_withdraw`: base units (default: everything covered).
    #[serde(default)]
    amount: Option<String>,
}

/// Adds `stream_pause`, `stream_resume`, `stream_adjustRate`, `stream_withdraw` and
/// `stream_close` to `module`. Each takes one object: `{streamId, idempotencyKey, ...}`.
pub(crate) fn register_mutations(
    module: &mut RpcModule<()>,
    billing: Arc<Billing>,
    operator: Arc<Operator>,
) {
    for name in
        ["stream_pause", "stream_resume", "stream_adjustRate", "stream_withdraw", "stream_close"]
    {
        let (billing, operator) = (billing.clone(), operator.clone());
        // The names are distinct constants: registration cannot collide.
        let _ = module.register_async_method(name, move |params, _, extensions| {
            let (billing, operator) = (billing.clone(), operator.clone());
            async move { mutate(name, &billing, &operator, params, &extensions).await }
        });
    }
}

async fn mutate(
    name: &str,
    billing: &Billing,
    operator: &Operator,
    params: Params<'static>,
    extensions: &Extensions,
) -> Result<OperatorReceipt, BillingError> {
    let key = billing.key(extensions)?;
    let (mutation,): (Mutation,) = params.parse()?;
    let id: StreamId = mutation.stream_id.parse().map_err(|_| {
        BillingError::InvalidParams(format!(
            "stream id {:?} is not a decimal integer",
            mutation.stream_id
        ))
    })?;
    let state = billing.visible(key, id).await?;
    // The parameters the idempotency key is bound to: the method and everything it was given.
    let params_hash = keccak256(
        format!("{name}|{id}|{:?}|{:?}", mutation.rate_per_second, mutation.amount).as_bytes(),
    );
    let record = Operator::record_id(&key.name, &mutation.idempotency_key)?;
    if let Some(receipt) = operator.replay(record, params_hash).await? {
        return Ok(receipt);
    }
    if state.operator != operator.address {
        return Err(BillingError::Forbidden(format!(
            "stream {id} names operator {}, not this node ({})",
            state.operator, operator.address
        )));
    }
    if state.closed {
        return Err(BillingError::InvalidParams(format!("stream {id} is closed")));
    }
    let tx = mutation_transaction(name, id, &state, &mutation, billing.now().await?, operator)?;
    let receipt = operator.send_once(record, params_hash, tx).await?;
    // Read-your-writes: once the call returns, the index (and so stream_get and the next
    // mutation's checks) includes its block.
    billing.wait_for_block(receipt.block_number).await;
    Ok(receipt)
}

/// The vault call of mutation `name` on stream `id` (in `state` at second `now`), checked
/// against the stream first so a call the vault would refuse is answered with the reason.
fn mutation_transaction(
    name: &str,
    id: StreamId,
    state: &super::accrual::StreamState,
    mutation: &Mutation,
    now: u64,
    operator: &Operator,
) -> Result<TransactionRequest, BillingError> {
    let vault = StreamVault::new(operator.vault, operator.sender.provider());
    let sid = U256::from(id);
    Ok(match name {
        "stream_pause" if state.paused => {
            return Err(BillingError::InvalidParams(format!("stream {id} is already paused")));
        }
        "stream_pause" => vault.pause(sid).into_transaction_request(),
        "stream_resume" if !state.paused => {
            return Err(BillingError::InvalidParams(format!("stream {id} is not paused")));
        }
        "stream_resume" => vault.resume(sid).into_transaction_request(),
        "stream_adjustRate" => {
            let text = mutation.rate_per_second.as_deref().ok_or_else(|| {
                BillingError::InvalidParams(
                    "ratePerSecond (decimal, scaled to 18) is required".into(),
                )
            })?;
            let rate = decimal("ratePerSecond", text)?;
            if rate.is_zero() {
                return Err(BillingError::InvalidParams(
                    "ratePerSecond must be positive (pause instead)".into(),
                ));
            }
            if rate > U256::from(state.rate_per_second) {
                return Err(BillingError::InvalidParams(
                    "the operator may only lower the rate: raising it needs the payer's signature"
                        .into(),
                ));
            }
            vault.adjustRate(sid, U96::from(rate)).into_transaction_request()
        }
        "stream_withdraw" => {
            let available = state.covered_debt(now);
            match mutation.amount.as_deref() {
                Some(text) => {
                    let amount = decimal("amount", text)?;
                    if amount.is_zero() || amount > U256::from(available) {
                        return Err(BillingError::InvalidParams(format!(
                            "amount {amount} must be between 1 and the {available} withdrawable"
                        )));
                    }
                    vault.withdraw(sid, amount.to::<u128>()).into_transaction_request()
                }
                // Everything covered when the transaction runs (more accrues until it is mined).
                None => vault.withdrawBatch(vec![sid]).into_transaction_request(),
            }
        }
        _ => vault.close(sid).into_transaction_request(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call dropped while it checks its transaction (say, its HTTP client went away) leaves
    /// no claim behind: a retry with the same key proceeds instead of answering -32004 forever.
    #[tokio::test]
    async fn an_abandoned_call_frees_its_key() -> Result<(), Box<dyn std::error::Error>> {
        // A chain endpoint that accepts connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", silent.local_addr()?);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        let provider = alloy::providers::ProviderBuilder::new().connect_http(url.parse()?).erased();
        let key = alloy::signers::local::PrivateKeySigner::random();
        let dir = tempfile::tempdir()?;
        let db = sled::open(dir.path())?;
        let sender = Arc::new(TransactionSender::new(provider, key));
        let operator = Operator::new(sender, Address::ZERO, Sends::embedded(&db)?);
        let (id, params) = (B256::repeat_byte(1), B256::repeat_byte(2));
        let call = operator.send_once(id, params, TransactionRequest::default());
        let abandoned = tokio::time::timeout(std::time::Duration::from_millis(200), call).await;
        assert!(abandoned.is_err(), "the call was still checking its transaction");
        // The claim is freed by a task the dropped call spawned.
        for _ in 0..100 {
            if operator.sends.store.call(id).await?.is_none() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(operator.sends.store.call(id).await?, None, "the key is free again");
        assert_eq!(operator.replay(id, params).await?, None);
        Ok(())
    }
}
