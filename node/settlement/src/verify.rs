//! Checking a settlement receipt from scratch against any JSON-RPC endpoints of its chains — the
//! streams' chain and the anchor chain (the same one unless settlement anchors on an L1) —
//! trusting nothing the node said but the receipt's bytes. Every check must pass for the
//! receipt to be valid; the first failure is the answer.
//!
//! 1. The endpoints serve the receipt's chains.
//! 2. `encoded` decodes, and says what `record` and `context` say.
//! 3. `leaf` is `keccak256(keccak256(encoded))`, and `proof` takes it to `root`.
//! 4. The anchor holds that batch under that operator, with that root and data hash.
//! 5. `SettlementAnchor.verify` on chain agrees.
//! 6. The commit transaction called the anchor, succeeded, and carried that blob (blob mode)
//!    or records whose keccak256 is that hash (calldata mode).
//! 7. The stream in the vault has the record's payer, payee and token.

use alloy::{
    consensus::Transaction as _,
    primitives::{Address, U256, keccak256},
    providers::{DynProvider, Provider},
    sol_types::SolCall,
};
use serde::{Deserialize, Serialize};
use settled_contracts::{SettlementAnchor, StreamVault};

use super::{AnchorMode, SettlementRecord, leaf_of, scheduler::SettlementReceipt, verify_proof};

/// Why a receipt is not valid (or could not be checked).
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The receipt contradicts itself or the chain.
    #[error("invalid receipt: {0}")]
    Invalid(String),
    /// The endpoint failed; nothing was concluded.
    #[error("could not check against the chain: {0}")]
    Chain(String),
}

/// A valid receipt's facts, as checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedReceipt {
    /// Always true (an invalid receipt is an error).
    pub valid: bool,
    /// The checks that passed, in order.
    pub checks: Vec<String>,
    /// The stream.
    pub stream_id: u64,
    /// The batch.
    pub batch_id: u64,
    /// The amount paid to the payee in the period.
    pub amount: String,
    /// The commit's block.
    pub block_number: Option<u64>,
}

fn invalid(message: impl Into<String>) -> ReceiptError {
    ReceiptError::Invalid(message.into())
}

fn chain(e: impl std::fmt::Display) -> ReceiptError {
    ReceiptError::Chain(e.to_string())
}

/// Checks `receipt` against `streams` (the streams' chain) and `anchor` (the anchor chain; the
/// same endpoint when the receipt anchors on the streams' chain). See the module's list.
pub async fn verify_receipt(
    streams: &DynProvider,
    anchor: &DynProvider,
    receipt: &SettlementReceipt,
) -> Result<VerifiedReceipt, ReceiptError> {
    let mut checks = Vec::new();
    let context = &receipt.context;
    for (provider, expected, what) in
        [(streams, context.chain_id, "streams'"), (anchor, receipt.anchor_chain_id, "anchor")]
    {
        let chain_id = provider.get_chain_id().await.map_err(chain)?;
        if chain_id != expected {
            return Err(invalid(format!(
                "the receipt's {what} chain is {expected}, the endpoint serves {chain_id}"
            )));
        }
        checks.push(format!("{what} chain {chain_id}"));
    }

    let (decoded, decoded_context) = SettlementRecord::decode(&receipt.encoded)
        .map_err(|e| invalid(format!("encoded record: {e}")))?;
    if decoded != receipt.record || decoded_context != *context {
        return Err(invalid("the encoded record says something else than the receipt"));
    }
    checks.push("the encoded record matches".into());

    let leaf = leaf_of(&receipt.encoded);
    if leaf != receipt.leaf {
        return Err(invalid("leaf is not keccak256(keccak256(encoded))"));
    }
    if !verify_proof(leaf, &receipt.proof, receipt.root) {
        return Err(invalid("the proof does not lead to the root"));
    }
    checks.push("the proof leads to the root".into());

    check_anchor(anchor, receipt).await?;
    checks.push("the anchor holds this root and data hash".into());
    checks.push("SettlementAnchor.verify accepts the record".into());
    let block_number = match receipt.transaction_hash {
        Some(hash) => {
            let block = check_commit_transaction(anchor, receipt, hash).await?;
            let carried = match receipt.anchor_mode {
                AnchorMode::Blob => "the blob",
                AnchorMode::Calldata => "the records in calldata",
            };
            checks.push(format!("transaction {hash} committed it with {carried}"));
            block
        }
        None => None,
    };

    let stream = StreamVault::new(context.vault, streams)
        .getStream(U256::from(receipt.record.stream_id))
        .call()
        .await
        .map_err(|e| invalid(format!("stream {} in the vault: {e}", receipt.record.stream_id)))?;
    let parties: (Address, Address, Address) = (stream.payer, stream.payee, stream.token);
    if parties != (receipt.record.payer, receipt.record.payee, receipt.record.token) {
        return Err(invalid("the vault's stream has another payer, payee or token"));
    }
    checks.push("the vault's stream has this payer, payee and token".into());

    Ok(VerifiedReceipt {
        valid: true,
        checks,
        stream_id: receipt.record.stream_id,
        batch_id: context.batch_id,
        amount: receipt.record.amount.to_string(),
        block_number,
    })
}

/// The anchor holds the receipt's batch as the receipt says (root, blob, period), and its own
/// `verify` accepts the record with the proof.
async fn check_anchor(
    provider: &DynProvider,
    receipt: &SettlementReceipt,
) -> Result<(), ReceiptError> {
    let context = &receipt.context;
    let anchor = SettlementAnchor::new(receipt.anchor, provider);
    let batch_id = U256::from(context.batch_id);
    let committed = anchor.getBatch(receipt.operator, batch_id).call().await.map_err(chain)?;
    if committed.root.is_zero() {
        return Err(invalid(format!(
            "batch {} of {} is not committed at {}",
            context.batch_id, receipt.operator, receipt.anchor
        )));
    }
    if committed.root != receipt.root {
        return Err(invalid("the anchor holds another root for this batch"));
    }
    if committed.blobHash != receipt.blob_versioned_hash {
        return Err(invalid("the anchor holds another data hash for this batch"));
    }
    if committed.periodStart.to::<u64>() != context.period_start
        || committed.periodEnd.to::<u64>() != context.period_end
    {
        return Err(invalid("the anchor holds another period for this batch"));
    }

    let verified = anchor
        .verify(receipt.operator, batch_id, receipt.encoded.clone(), receipt.proof.clone())
        .call()
        .await
        .map_err(chain)?;
    if !verified {
        return Err(invalid("SettlementAnchor.verify refuses the record"));
    }
    Ok(())
}

/// The commit transaction `hash` called the anchor, carried the blob and succeeded; its block.
async fn check_commit_transaction(
    provider: &DynProvider,
    receipt: &SettlementReceipt,
    hash: alloy::primitives::B256,
) -> Result<Option<u64>, ReceiptError> {
    let tx = provider
        .get_transaction_by_hash(hash)
        .await
        .map_err(chain)?
        .ok_or_else(|| invalid(format!("no transaction {hash}")))?;
    if tx.to() != Some(receipt.anchor) {
        return Err(invalid("the commit transaction did not call the anchor"));
    }
    let carried = match receipt.anchor_mode {
        AnchorMode::Blob => tx
            .blob_versioned_hashes()
            .is_some_and(|hashes| hashes.contains(&receipt.blob_versioned_hash)),
        AnchorMode::Calldata => SettlementAnchor::commitCalldataCall::abi_decode(tx.input())
            .is_ok_and(|call| {
                call.root == receipt.root && keccak256(&call.records) == receipt.blob_versioned_hash
            }),
    };
    if !carried {
        return Err(invalid("the commit transaction did not carry the batch's data"));
    }
    let mined = provider
        .get_transaction_receipt(hash)
        .await
        .map_err(chain)?
        .ok_or_else(|| invalid(format!("transaction {hash} is not mined")))?;
    if !mined.status() {
        return Err(invalid("the commit transaction reverted"));
    }
    Ok(mined.block_number)
}
