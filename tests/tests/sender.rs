//! The one transaction sender on a real chain: where a sent transaction stands (mined, pending,
//! dropped by the node, replaced at its nonce), and the node's refusals typed.

use alloy::{
    primitives::{Address, U256},
    providers::ext::AnvilApi,
    rpc::types::TransactionRequest,
};
use settled_contracts::{Inclusion, Refusal, TransactionSender};
use settled_tests::{TestChain, TestResult};

/// A dev account no other test of this file sends from.
const ACCOUNT: usize = 7;

fn transfer(to: u8, wei: u64) -> TransactionRequest {
    TransactionRequest::default().to(Address::repeat_byte(to)).value(U256::from(wei))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inclusion_tells_pending_dropped_replaced_and_mined() -> TestResult {
    let chain = TestChain::spawn().await?;
    let provider = chain.provider().clone();
    let sender = TransactionSender::new(provider.clone(), chain.signer(ACCOUNT)?);
    provider.anvil_set_auto_mine(false).await?;

    let first = sender.send(transfer(0x11, 1)).await?;
    assert_eq!(sender.inclusion(&first).await?, Inclusion::Pending);
    provider.anvil_drop_transaction(first.hash).await?;
    assert_eq!(sender.inclusion(&first).await?, Inclusion::Dropped, "its nonce is still free");

    // Another transaction takes the nonce: the dropped one can never be mined now.
    let other = sender.send(transfer(0x22, 2)).await?;
    assert_eq!(other.nonce, first.nonce, "the nonce comes from the node's pending count");
    provider.anvil_mine(Some(1), None).await?;
    assert_eq!(sender.inclusion(&first).await?, Inclusion::Replaced);
    match sender.inclusion(&other).await? {
        Inclusion::Mined(receipt) => assert!(receipt.status()),
        stands => return Err(format!("expected mined, got {stands:?}").into()),
    }

    // The node's refusal of a replacement that does not outbid is typed, not matched by text.
    let pending = sender.send(transfer(0x33, 3)).await?;
    let same_fees = transfer(0x44, 4)
        .nonce(pending.nonce)
        .gas_limit(21_000)
        .max_fee_per_gas(pending.max_fee_per_gas)
        .max_priority_fee_per_gas(pending.max_priority_fee_per_gas);
    let refused = sender.send_exact(same_fees).await.err().ok_or("a same-fee replacement")?;
    assert_eq!(refused.refusal(), Some(Refusal::Underpriced), "{refused}");
    let reused = transfer(0x55, 5)
        .nonce(first.nonce)
        .gas_limit(21_000)
        .max_fee_per_gas(pending.max_fee_per_gas * 2)
        .max_priority_fee_per_gas(pending.max_priority_fee_per_gas * 2);
    let refused = sender.send_exact(reused).await.err().ok_or("a used nonce")?;
    assert_eq!(refused.refusal(), Some(Refusal::NonceTooLow), "{refused}");
    Ok(())
}
