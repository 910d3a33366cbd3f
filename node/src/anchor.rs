//! The settlement anchor chain: the streams' chain (through the operator's own sender, one
//! nonce sequence), or another chain — an L1 that takes blobs, when the streams live on an L2
//! that does not — with its own endpoint, key and sender.

use std::sync::Arc;

use alloy::{
    providers::{DynProvider, Provider},
    signers::local::PrivateKeySigner,
};
use settled_contracts::{ChainKind, Deployment, TransactionSender};
use settled_settlement::{AnchorChain, AnchorMode};
use tracing::info;

use crate::{NodeConfig, NodeError, paymaster::load_key};

/// Where settlement batches are committed, checked: the anchor contract is there, and a blob
/// chain takes blobs.
pub(crate) async fn anchor_chain(
    config: &NodeConfig,
    deployment: &Deployment,
    operator: &Arc<TransactionSender>,
    operator_key: &PrivateKeySigner,
) -> Result<AnchorChain, NodeError> {
    let settings = &config.anchor;
    let anchor = deployment.settlement_anchor;
    let Some(url) = settings.rpc_url.as_deref() else {
        let kind = config.chain.kind.unwrap_or_default();
        if settings.mode == AnchorMode::Blob && kind != ChainKind::Ethereum {
            return Err(refused(
                "(the streams' chain)",
                format!(
                    "an {kind} chain takes no blob transactions: anchor on an L1 with \
                     --settlement.anchor-rpc-url, or use --settlement.anchor-mode calldata"
                ),
            ));
        }
        let chain_id = deployment.chain_id;
        return Ok(AnchorChain { sender: operator.clone(), anchor, chain_id, mode: settings.mode });
    };
    let provider = crate::connect(url, config.chain.connect_timeout).await?;
    let chain_id = provider.get_chain_id().await.map_err(|e| refused(url, e.to_string()))?;
    check_anchor_chain(&provider, url, anchor, chain_id, settings.mode).await?;
    let key = load_key(settings.key.as_ref(), settings.key_file.as_deref(), "anchor key")?
        .unwrap_or_else(|| operator_key.clone());
    let sender = Arc::new(TransactionSender::new(provider, key));
    info!(
        chain_id,
        %anchor,
        committer = %sender.address(),
        mode = settings.mode.as_str(),
        "settlement anchors on its own chain"
    );
    Ok(AnchorChain { sender, anchor, chain_id, mode: settings.mode })
}

/// The anchor contract has code on the anchor chain, and in blob mode the chain prices blobs.
async fn check_anchor_chain(
    provider: &DynProvider,
    url: &str,
    anchor: alloy::primitives::Address,
    chain_id: u64,
    mode: AnchorMode,
) -> Result<(), NodeError> {
    let code = provider.get_code_at(anchor).await.map_err(|e| refused(url, e.to_string()))?;
    if code.is_empty() {
        return Err(refused(
            url,
            format!(
                "no SettlementAnchor at {anchor} on chain {chain_id}: deploy it there with \
                 `settled deploy --rpc-url {url} --only settlement-anchor --send`"
            ),
        ));
    }
    if mode == AnchorMode::Blob && provider.get_blob_base_fee().await.is_err() {
        return Err(refused(
            url,
            "the chain does not price blobs (eth_blobBaseFee fails): use \
             --settlement.anchor-mode calldata"
                .into(),
        ));
    }
    Ok(())
}

fn refused(url: &str, reason: String) -> NodeError {
    NodeError::Anchor { url: url.into(), reason }
}
