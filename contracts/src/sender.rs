//! The transaction sender: every transaction the node signs with one key goes through one
//! [`TransactionSender`] — for the operator key: billing calls, relayed `openFor`s, settlement
//! withdrawals and commits — so they share one nonce sequence and one gas policy. A node's
//! refusal is typed ([`Refusal`]) from its error, for every sender of the node alike (the
//! bundler's submissions included).
//!
//! * Nonces: taken from the node's pending count under one lock, so concurrent senders never
//!   reuse a nonce, and a transaction the node dropped leaves no gap behind it (a local counter
//!   would keep counting past it and every later transaction would wait forever).
//! * Gas: the estimate runs against one second of state; a stream's debt keeps accruing until
//!   the transaction is mined, and a payee whose debt was zero at the estimate may be paid in
//!   the block, a transfer the estimate never saw. The limit therefore has headroom:
//!   a fifth more plus [`ACCRUAL_HEADROOM`]. Unused gas is not charged.
//! * Re-pricing: [`TransactionSender::resend`] sends the same nonce again with every fee at
//!   least doubled (the replacement rule of geth's blob pool; 10% would do for the others) and
//!   at least the market's.

use alloy::{
    eips::eip2718::Encodable2718,
    network::{EthereumWallet, NetworkTransactionBuilder, TransactionBuilder},
    primitives::{Address, B256, Bytes},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::TransactionRequest,
    signers::local::PrivateKeySigner,
    transports::TransportError,
};

/// Gas beyond the estimate for an ERC-20 transfer the estimate did not see: a balance slot
/// written from zero (22,100), the `Transfer` log (~1,800) and the call (~2,600 cold), rounded up.
pub const ACCRUAL_HEADROOM: u64 = 30_000;

/// The gas limit for an estimate: a fifth more plus [`ACCRUAL_HEADROOM`].
pub fn gas_limit_for(estimate: u64) -> u64 {
    estimate.saturating_add(estimate / 5).saturating_add(ACCRUAL_HEADROOM)
}

/// A transaction sent, with what a replacement must outbid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentTransaction {
    /// Its hash.
    pub hash: B256,
    /// Its nonce.
    pub nonce: u64,
    /// EIP-1559 fee cap (wei per gas).
    // Quantities as hex strings, as in Ethereum JSON: serde_json cannot buffer a `u128`, which
    // an internally tagged enum holding this type needs.
    #[serde(with = "alloy::serde::quantity")]
    pub max_fee_per_gas: u128,
    /// EIP-1559 tip (wei per gas).
    #[serde(with = "alloy::serde::quantity")]
    pub max_priority_fee_per_gas: u128,
    /// EIP-4844 blob fee cap (wei per blob gas), for a type-3 transaction.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "alloy::serde::quantity::opt"
    )]
    pub max_fee_per_blob_gas: Option<u128>,
}

impl SentTransaction {
    /// What `tx` will be sent with (its hash is known once the node has it).
    fn before_sending(tx: &TransactionRequest) -> Self {
        Self {
            hash: B256::ZERO,
            nonce: tx.nonce.unwrap_or_default(),
            max_fee_per_gas: tx.max_fee_per_gas.unwrap_or_default(),
            max_priority_fee_per_gas: tx.max_priority_fee_per_gas.unwrap_or_default(),
            max_fee_per_blob_gas: tx.max_fee_per_blob_gas,
        }
    }
}

/// What a node's refusal of a transaction means for its sender (geth's, reth's and Anvil's
/// wording; anything else is [`Refusal::Other`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The nonce is used already: an earlier transaction at it was mined.
    NonceTooLow,
    /// The fees are too low: under the base fee, or a replacement that does not outbid.
    Underpriced,
    /// The node has this very transaction already.
    AlreadyKnown,
    /// The sender cannot pay for it.
    InsufficientFunds,
    /// Any other refusal (a revert in the estimate, a limit of the node).
    Other,
}

impl Refusal {
    /// The refusal `error` is, if the node answered with one (`None`: a transport failure, after
    /// which the transaction may have reached the node).
    pub fn of(error: &TransportError) -> Option<Self> {
        let message = error.as_error_resp()?.message.to_ascii_lowercase();
        let has = |words: &[&str]| words.iter().any(|w| message.contains(w));
        Some(if has(&["nonce too low", "nonce has already been used"]) {
            Self::NonceTooLow
        } else if has(&["underpriced", "base fee", "max fee per gas less than", "fee too low"]) {
            Self::Underpriced
        } else if has(&["already known", "already imported", "known transaction"]) {
            Self::AlreadyKnown
        } else if has(&["insufficient funds"]) {
            Self::InsufficientFunds
        } else {
            Self::Other
        })
    }
}

/// Where a sent transaction stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inclusion {
    /// Mined, with its receipt.
    Mined(Box<alloy::rpc::types::TransactionReceipt>),
    /// In the node's pool, not mined yet.
    Pending,
    /// Its nonce was used by another transaction (a replacement, or one sent by another holder
    /// of the key): it will never be mined.
    Replaced,
    /// The node no longer has it and its nonce is still free: it must be sent again.
    Dropped,
}

/// Why a transaction was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The node refused to estimate it: it would revert, or the operator cannot pay.
    #[error("the node refuses the transaction: {0}")]
    Refused(TransportError),
    /// Fees, nonce or the send itself.
    #[error("sending the transaction: {0}")]
    Transport(#[from] TransportError),
    /// The transaction could not be signed.
    #[error("signing the transaction: {0}")]
    Signing(String),
    /// The caller could not record the signed transaction; nothing was broadcast.
    #[error("recording the transaction before sending it: {0}")]
    Record(String),
}

impl SendError {
    /// The node's refusal, typed, if the node answered with one.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Self::Refused(e) | Self::Transport(e) => Refusal::of(e),
            Self::Signing(_) | Self::Record(_) => None,
        }
    }

    /// Whether the node answered with a refusal (so the transaction is certainly not in its
    /// pool), as opposed to a transport failure after which it may be.
    pub fn refused_by_node(&self) -> bool {
        match self {
            Self::Refused(_) | Self::Signing(_) | Self::Record(_) => true,
            Self::Transport(e) => e.as_error_resp().is_some(),
        }
    }
}

/// A transaction signed at the sender's next nonce, not yet broadcast: the caller records
/// `raw` durably, then [`TransactionSender::broadcast`]s it. Holds the nonce lock meanwhile.
pub struct Signed<'a> {
    _nonce: tokio::sync::MutexGuard<'a, ()>,
    /// What was signed.
    pub sent: SentTransaction,
    /// The signed transaction, EIP-2718 encoded.
    pub raw: Bytes,
}

/// A boxed future of a [`SendJournal`].
pub type JournalFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;

/// Where a sender records each transaction it signs before broadcasting it (a shared store's
/// send intents, fenced by the signer's lease): a refusal stops the send, so a node that lost
/// the key's lease sends nothing.
pub trait SendJournal: Send + Sync + std::fmt::Debug {
    /// Records `raw` (hash `hash`), `signer`'s transaction at `nonce` carrying `carries`.
    fn record<'a>(
        &'a self,
        signer: Address,
        nonce: u64,
        carries: String,
        raw: &'a Bytes,
        hash: B256,
    ) -> JournalFuture<'a>;

    /// The latest of `signer`'s recorded transactions carrying `carries`: its nonce and raw
    /// bytes (a previous holder of the key may have signed the very payload a new one is about
    /// to send).
    fn recorded<'a>(&'a self, signer: Address, carries: String) -> RecordedFuture<'a>;
}

/// A boxed future of [`SendJournal::recorded`].
pub type RecordedFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<(u64, Bytes)>, String>> + Send + 'a>,
>;

/// What a transaction carries, for its journal entry: its recipient and calldata's hash (a
/// re-priced version carries the same).
pub fn carries_of(tx: &TransactionRequest) -> String {
    let to = tx.to.and_then(|kind| kind.to().copied()).unwrap_or_default();
    let input = tx.input.input().cloned().unwrap_or_default();
    format!("call {to} {}", alloy::primitives::keccak256(&input))
}

/// Signs and sends the operator's transactions (see the module docs).
#[derive(Debug)]
pub struct TransactionSender {
    provider: DynProvider,
    wallet: EthereumWallet,
    address: Address,
    /// Held from the nonce read until the node has the transaction.
    nonce_lock: tokio::sync::Mutex<()>,
    /// The chain follower's head, when the sender follows one: receipts are looked for at each
    /// new block instead of on a timer.
    heads: Option<tokio::sync::watch::Receiver<Option<crate::BlockRef>>>,
    /// Where each transaction is recorded before it is sent, if anywhere.
    journal: Option<std::sync::Arc<dyn SendJournal>>,
}

impl TransactionSender {
    /// A sender signing with `signer` over `provider`.
    pub fn new(provider: DynProvider, signer: PrivateKeySigner) -> Self {
        let address = signer.address();
        let wallet = EthereumWallet::from(signer);
        let provider =
            ProviderBuilder::new().wallet(wallet.clone()).connect_provider(provider).erased();
        let nonce_lock = tokio::sync::Mutex::new(());
        Self { provider, wallet, address, nonce_lock, heads: None, journal: None }
    }

    /// The transaction recorded in the journal carrying what `tx` carries (its recipient and
    /// calldata), as sent: another holder of the key signed this payload already, and it is to
    /// be followed or re-priced at its nonce, never sent again at another. `None` without a
    /// journal, or when none carries it.
    pub async fn recorded(
        &self,
        tx: &TransactionRequest,
    ) -> Result<Option<SentTransaction>, SendError> {
        use alloy::consensus::{Transaction as _, TxEnvelope};
        use alloy::eips::eip2718::Decodable2718 as _;
        let Some(journal) = &self.journal else { return Ok(None) };
        let found =
            journal.recorded(self.address, carries_of(tx)).await.map_err(SendError::Record)?;
        let Some((nonce, raw)) = found else { return Ok(None) };
        let envelope = TxEnvelope::decode_2718(&mut raw.as_ref())
            .map_err(|e| SendError::Record(e.to_string()))?;
        Ok(Some(SentTransaction {
            hash: *envelope.tx_hash(),
            nonce,
            max_fee_per_gas: envelope.max_fee_per_gas(),
            max_priority_fee_per_gas: envelope.max_priority_fee_per_gas().unwrap_or_default(),
            max_fee_per_blob_gas: envelope.max_fee_per_blob_gas(),
        }))
    }

    /// The same sender, recording each transaction [`Self::send`] and [`Self::resend`] sign in
    /// `journal` before sending it (signed here, sent as raw bytes).
    pub fn with_journal(mut self, journal: std::sync::Arc<dyn SendJournal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// The same sender, looking for receipts at each block of `heads` (a follower's head).
    pub fn with_heads(
        mut self,
        heads: tokio::sync::watch::Receiver<Option<crate::BlockRef>>,
    ) -> Self {
        self.heads = Some(heads);
        self
    }

    /// The receipt of the first of `hashes` mined within `within`, looked for at each new head
    /// (every 100 ms without a head to follow, and at least every second).
    pub async fn wait_mined(
        &self,
        hashes: &[B256],
        within: std::time::Duration,
    ) -> Result<Option<alloy::rpc::types::TransactionReceipt>, TransportError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut heads = self.heads.clone();
        loop {
            for hash in hashes {
                if let Some(receipt) = self.provider.get_transaction_receipt(*hash).await? {
                    return Ok(Some(receipt));
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let fallback = match heads {
                Some(_) => std::time::Duration::from_secs(1),
                None => std::time::Duration::from_millis(100),
            };
            let wake = (now + fallback).min(deadline);
            match heads.as_mut() {
                Some(heads) => {
                    let _ = tokio::time::timeout_at(wake, heads.changed()).await;
                }
                None => tokio::time::sleep_until(wake).await,
            }
        }
    }

    /// The signing provider (for reads and receipts; send through [`Self::send`]).
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// The operator's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// Sends `tx` (from the operator) at the next nonce, market fees unless `tx` sets them,
    /// and a gas limit with headroom.
    pub async fn send(&self, tx: TransactionRequest) -> Result<SentTransaction, SendError> {
        let _nonce = self.nonce_lock.lock().await;
        let nonce = self.provider.get_transaction_count(self.address).pending().await?;
        let mut tx = tx.from(self.address).nonce(nonce);
        if tx.max_fee_per_gas.is_none() || tx.max_priority_fee_per_gas.is_none() {
            let fees = self.provider.estimate_eip1559_fees().await?;
            tx.max_fee_per_gas.get_or_insert(fees.max_fee_per_gas);
            tx.max_priority_fee_per_gas.get_or_insert(fees.max_priority_fee_per_gas);
        }
        self.send_at(tx).await
    }

    /// Signs `tx` (from the operator) at the next nonce, market fees, a gas limit with headroom,
    /// without sending it: what must survive a crash is recorded by the caller first (a kill -9
    /// after the broadcast then finds the transaction instead of sending another).
    pub async fn sign(&self, tx: TransactionRequest) -> Result<Signed<'_>, SendError> {
        let nonce_guard = self.nonce_lock.lock().await;
        let nonce = self.provider.get_transaction_count(self.address).pending().await?;
        let chain_id = self.provider.get_chain_id().await?;
        let fees = self.provider.estimate_eip1559_fees().await?;
        let mut tx = tx
            .from(self.address)
            .nonce(nonce)
            .with_chain_id(chain_id)
            .max_fee_per_gas(fees.max_fee_per_gas)
            .max_priority_fee_per_gas(fees.max_priority_fee_per_gas);
        let estimate = self.provider.estimate_gas(tx.clone()).await.map_err(SendError::Refused)?;
        tx.set_gas_limit(gas_limit_for(estimate));
        let envelope =
            tx.build(&self.wallet).await.map_err(|e| SendError::Signing(e.to_string()))?;
        let sent = SentTransaction {
            hash: *envelope.tx_hash(),
            nonce,
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            max_fee_per_blob_gas: None,
        };
        Ok(Signed { _nonce: nonce_guard, sent, raw: envelope.encoded_2718().into() })
    }

    /// Sends a transaction [`Self::sign`] made (and its caller recorded); releases the nonce.
    pub async fn broadcast(&self, signed: Signed<'_>) -> Result<SentTransaction, SendError> {
        let _pending = self.provider.send_raw_transaction(&signed.raw).await?;
        Ok(signed.sent)
    }

    /// Signs and sends `tx` exactly as given: its nonce, fees and gas limit are the caller's
    /// (a bundle, whose gas revm measured and whose nonces the bundler pipelines).
    pub async fn send_exact(&self, tx: TransactionRequest) -> Result<SentTransaction, SendError> {
        let tx = tx.from(self.address);
        let sent = SentTransaction::before_sending(&tx);
        let pending = self.provider.send_transaction(tx).await?;
        Ok(SentTransaction { hash: *pending.tx_hash(), ..sent })
    }

    /// Signs `tx` exactly as given (nonce, fees and gas limit the caller's; the chain id
    /// filled in) without sending it: its hash and network bytes, which the caller records
    /// before [`Self::broadcast_raw`] (a bundle on a shared store).
    pub async fn sign_exact(&self, tx: TransactionRequest) -> Result<(B256, Bytes), SendError> {
        let mut tx = tx.from(self.address);
        if tx.chain_id.is_none() {
            tx.set_chain_id(self.provider.get_chain_id().await?);
        }
        let envelope =
            tx.build(&self.wallet).await.map_err(|e| SendError::Signing(e.to_string()))?;
        Ok((*envelope.tx_hash(), envelope.encoded_2718().into()))
    }

    /// Where `sent` stands: mined, pending, replaced by another transaction at its nonce, or
    /// dropped by the node.
    pub async fn inclusion(&self, sent: &SentTransaction) -> Result<Inclusion, TransportError> {
        if let Some(receipt) = self.provider.get_transaction_receipt(sent.hash).await? {
            return Ok(Inclusion::Mined(Box::new(receipt)));
        }
        if self.provider.get_transaction_by_hash(sent.hash).await?.is_some() {
            return Ok(Inclusion::Pending);
        }
        let mined_nonce = self.provider.get_transaction_count(self.address).latest().await?;
        Ok(if mined_nonce > sent.nonce { Inclusion::Replaced } else { Inclusion::Dropped })
    }

    /// Sends a recorded transaction again (after a restart): the node may never have had it.
    /// The same bytes, so it is mined at most once; "already known" and a nonce already used
    /// (it was mined) are not errors.
    pub async fn rebroadcast(&self, raw: &Bytes) -> Result<(), SendError> {
        match self.provider.send_raw_transaction(raw).await {
            Ok(_) => Ok(()),
            Err(e) if e.as_error_resp().is_some() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends `tx` again at `previous`'s nonce, outbidding it: every fee at least doubled and
    /// at least the market's. `tx` carries the blob fee cap it may pay, if it has blobs; the
    /// caller keeps it within its bound.
    pub async fn resend(
        &self,
        previous: &SentTransaction,
        tx: TransactionRequest,
    ) -> Result<SentTransaction, SendError> {
        let _nonce = self.nonce_lock.lock().await;
        let fees = self.provider.estimate_eip1559_fees().await?;
        let tip = fees.max_priority_fee_per_gas.max(previous.max_priority_fee_per_gas * 2).max(1);
        let cap = fees.max_fee_per_gas.max(previous.max_fee_per_gas * 2).max(tip);
        let tx = tx
            .from(self.address)
            .nonce(previous.nonce)
            .max_fee_per_gas(cap)
            .max_priority_fee_per_gas(tip);
        self.send_at(tx).await
    }

    /// Signs a replacement of recorded transaction `raw` (an EIP-1559 one): the same nonce,
    /// recipient, calldata, value and gas limit, every fee at least doubled and at least the
    /// market's — what a new holder of the key sends when the recorded bytes are underpriced,
    /// never another payload. Not broadcast: the caller records it first.
    pub async fn sign_replacement(
        &self,
        raw: &Bytes,
    ) -> Result<(SentTransaction, Bytes), SendError> {
        use alloy::consensus::{Transaction as _, TxEnvelope};
        use alloy::eips::eip2718::Decodable2718 as _;
        let signing = |e: String| SendError::Signing(e);
        let old = TxEnvelope::decode_2718(&mut raw.as_ref()).map_err(|e| signing(e.to_string()))?;
        // An EIP-1559 replacement of a blob transaction would carry its calldata without its
        // blobs: the one who holds the sidecar (settlement) re-prices those itself.
        if !old.is_eip1559() {
            return Err(signing(format!(
                "only an EIP-1559 transaction is re-priced here, not {:?}",
                old.tx_type()
            )));
        }
        let fees = self.provider.estimate_eip1559_fees().await?;
        let tip = fees
            .max_priority_fee_per_gas
            .max(old.max_priority_fee_per_gas().unwrap_or(0) * 2)
            .max(1);
        let cap = fees.max_fee_per_gas.max(old.max_fee_per_gas() * 2).max(tip);
        let mut tx = TransactionRequest::default()
            .from(self.address)
            .nonce(old.nonce())
            .input(old.input().clone().into())
            .value(old.value())
            .gas_limit(old.gas_limit())
            .max_fee_per_gas(cap)
            .max_priority_fee_per_gas(tip);
        if let Some(to) = old.to() {
            tx = tx.to(to);
        }
        if let Some(chain_id) = old.chain_id() {
            tx = tx.with_chain_id(chain_id);
        }
        let envelope = tx.build(&self.wallet).await.map_err(|e| signing(e.to_string()))?;
        let sent = SentTransaction {
            hash: *envelope.tx_hash(),
            nonce: old.nonce(),
            max_fee_per_gas: cap,
            max_priority_fee_per_gas: tip,
            max_fee_per_blob_gas: None,
        };
        Ok((sent, envelope.encoded_2718().into()))
    }

    /// Sends signed bytes; the node's refusal is typed in the error ([`SendError::refusal`]).
    pub async fn broadcast_raw(&self, raw: &Bytes) -> Result<(), SendError> {
        let _pending = self.provider.send_raw_transaction(raw).await?;
        Ok(())
    }

    async fn send_at(&self, mut tx: TransactionRequest) -> Result<SentTransaction, SendError> {
        let estimate = self.provider.estimate_gas(tx.clone()).await.map_err(|e| {
            if e.as_error_resp().is_some() {
                SendError::Refused(e)
            } else {
                SendError::Transport(e)
            }
        })?;
        tx.set_gas_limit(gas_limit_for(estimate));
        let sent = SentTransaction::before_sending(&tx);
        let Some(journal) = &self.journal else {
            let pending = self.provider.send_transaction(tx).await?;
            return Ok(SentTransaction { hash: *pending.tx_hash(), ..sent });
        };
        let carries = carries_of(&tx);
        let chain_id = self.provider.get_chain_id().await?;
        let envelope = tx
            .with_chain_id(chain_id)
            .build(&self.wallet)
            .await
            .map_err(|e| SendError::Signing(e.to_string()))?;
        let hash = *envelope.tx_hash();
        // A blob transaction encodes with its sidecar: the network form a node accepts.
        let raw: Bytes = envelope.encoded_2718().into();
        journal
            .record(self.address, sent.nonce, carries, &raw, hash)
            .await
            .map_err(SendError::Record)?;
        let _pending = self.provider.send_raw_transaction(&raw).await?;
        Ok(SentTransaction { hash, ..sent })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node refusals by their wording (geth, reth, Anvil); transport failures are none.
    #[test]
    fn refusals_are_typed() {
        let refusal = |message: &str| {
            let payload = serde_json::json!({ "code": -32000, "message": message });
            let payload = serde_json::from_value(payload).ok()?;
            Refusal::of(&TransportError::ErrorResp(payload))
        };
        for (message, expected) in [
            ("nonce too low: next nonce 5, tx nonce 4", Refusal::NonceTooLow),
            ("replacement transaction underpriced", Refusal::Underpriced),
            ("max fee per gas less than block base fee", Refusal::Underpriced),
            ("transaction underpriced", Refusal::Underpriced),
            ("already known", Refusal::AlreadyKnown),
            ("insufficient funds for gas * price + value", Refusal::InsufficientFunds),
            ("execution reverted", Refusal::Other),
        ] {
            assert_eq!(refusal(message), Some(expected), "{message}");
        }
        let transport = TransportError::local_usage_str("connection refused");
        assert_eq!(Refusal::of(&transport), None);
    }

    #[test]
    fn headroom_covers_a_transfer_the_estimate_did_not_see() {
        assert_eq!(gas_limit_for(0), ACCRUAL_HEADROOM);
        assert_eq!(gas_limit_for(100_000), 150_000);
        // A zero-to-nonzero balance write, cold, plus the log and the call.
        const { assert!(ACCRUAL_HEADROOM >= 22_100 + 1_800 + 2_600) };
        assert_eq!(gas_limit_for(u64::MAX), u64::MAX);
    }
}
