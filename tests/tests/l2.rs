//! settled on an OP-stack L2: an Anvil with the `GasPriceOracle` and `L1Block` predeploys (from
//! the pinned `@eth-optimism/contracts-bedrock` package) and Base's fee scalars. The node detects
//! the chain's kind; estimates carry the L1 data fee in preVerificationGas; an op short of it is
//! refused by the bundler and by the paymaster; a bundle that would cost more than it earns is
//! not sent.

use alloy::{
    primitives::{Address, U256},
    providers::Provider,
    signers::local::PrivateKeySigner,
};
use serde_json::{Value, json};
use settled_contracts::{EntryPointVersion, MockUSDC, PackedUserOperation, UserOperation};
use settled_paymaster::SponsorshipPolicy;
use settled_sim::{op_transaction_bytes, with_incompressible_signature};
use settled_tests::{
    TestChain, TestNode, TestResult,
    op_stack::{L1FeeParams, install_op_predeploys, oracle_l1_fee, set_l1_fees},
    rpc::{
        apply_paymaster_data, apply_paymaster_stub, call_url, send_at, wait_for_receipt_at,
        with_estimated_limits,
    },
    unestimated_op, usdc_transfer,
};

const GWEI: u128 = 1_000_000_000;
/// What the tests' ops pay per gas: cap and tip alike, so the price is exact at any base fee.
const OP_PRICE: u128 = 2 * GWEI;
/// An expensive L1 moment (1,000 gwei), so the L1 fee is thousands of gas at `OP_PRICE`.
const L1_BASE_FEE: u128 = 1_000 * GWEI;

/// An op-stack chain with settled's contracts and a node on it (manual bundling).
async fn l2_node() -> TestResult<TestNode> {
    let chain = TestChain::spawn().await?;
    install_op_predeploys(chain.provider(), L1FeeParams::base(L1_BASE_FEE)).await?;
    TestNode::spawn_on(chain, |config| {
        config.bundler.mode = settled_bundler::BundlingMode::Manual;
    })
    .await
}

/// A funded SimpleAccount's creation op moving USDC, priced at `OP_PRICE`, not yet estimated.
async fn priced_op(
    node: &TestNode,
    version: EntryPointVersion,
    owner: &PrivateKeySigner,
    fund: bool,
) -> TestResult<PackedUserOperation> {
    let chain = node.chain();
    let (sender, init_code) = chain.simple_account(version, owner.address()).await?;
    if fund {
        let value = U256::from(10u128.pow(18));
        let tx = alloy::rpc::types::TransactionRequest::default().to(sender).value(value);
        chain.provider().send_transaction(tx).await?.get_receipt().await?;
    }
    let usdc = chain.deployment().usdc;
    let token = MockUSDC::new(usdc, chain.provider());
    token.mint(sender, U256::from(1_000_000u64)).send().await?.get_receipt().await?;
    let call_data = usdc_transfer(version, usdc, Address::repeat_byte(0x55), 1_000);
    let mut op = unestimated_op(sender, 0, init_code, call_data);
    op.set_fees(OP_PRICE, OP_PRICE);
    Ok(op)
}

/// Sets the L1 fee parameters and mines a block the node then simulates at (as on a real L2,
/// where `L1Block` changes with each block).
async fn set_fees(node: &TestNode, params: L1FeeParams) -> TestResult {
    let provider = node.chain().provider();
    set_l1_fees(provider, params).await?;
    let _: Value = provider.raw_request("evm_mine".into(), ()).await?;
    let head = provider.get_block_number().await?;
    node.wait_for_head(head, std::time::Duration::from_secs(10)).await
}

fn pvg(op: &PackedUserOperation) -> u64 {
    op.preVerificationGas.to()
}

/// The op's L1 data fee as the oracle prices its bundle of one.
async fn l1_fee_of(
    node: &TestNode,
    version: EntryPointVersion,
    op: &PackedUserOperation,
) -> TestResult<u128> {
    let chain_id = node.chain().provider().get_chain_id().await?;
    let tx = op_transaction_bytes(op, version.canonical_address(), chain_id);
    oracle_l1_fee(node.chain().provider(), &tx).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_l1_data_fee_is_estimated_enforced_and_bundles_pay_their_way() -> TestResult {
    let node = l2_node().await?;
    let url = node.node()?.rpc_url();
    let metrics = node.metrics().await?;
    assert!(metrics.contains("chain_kind=\"op-stack\""), "settled_info names the kind");
    let version = EntryPointVersion::V07;

    // Estimated with and without an L1 fee: the difference is the L1 part, which pays the
    // oracle's fee for the signed op within +5%.
    let owner = PrivateKeySigner::random();
    let op = priced_op(&node, version, &owner, true).await?;
    let with_fee = with_estimated_limits(&url, version, op.clone()).await?;
    set_fees(&node, L1FeeParams { blob_base_fee: 0, ..L1FeeParams::base(0) }).await?;
    let without_fee = with_estimated_limits(&url, version, op.clone()).await?;
    set_fees(&node, L1FeeParams::base(L1_BASE_FEE)).await?;
    let l1_gas = pvg(&with_fee) - pvg(&without_fee);
    let mut signed = with_fee.clone();
    signed.signature = node.chain().sign_op(version, &owner, &signed).await?;
    let fee = l1_fee_of(&node, version, &signed).await?;
    let paid = u128::from(l1_gas) * OP_PRICE;
    println!("L1 fee {fee} wei; preVerificationGas carries {l1_gas} gas = {paid} wei");
    assert!(fee > 0 && l1_gas > 1_000, "a visible L1 fee: {fee} wei, {l1_gas} gas");
    assert!(paid >= fee, "the estimate pays the fee: {paid} < {fee}");
    assert!(paid * 100 <= fee * 105, "within +5%: {paid} vs {fee}");

    // Short of its L1 fee by half: refused, saying how much is needed.
    let mut short = with_fee.clone();
    short.preVerificationGas = U256::from(pvg(&without_fee) + l1_gas / 2);
    short.signature = node.chain().sign_op(version, &owner, &short).await?;
    let refused = send_at(&url, version, &short).await?.err().ok_or("short op accepted")?;
    assert_eq!(refused.0, -32602, "{refused:?}");
    assert!(refused.1.contains("L1 data fee") && refused.1.contains("needed"), "{}", refused.1);

    // Paid in full: accepted. While L1 is 200 times dearer (the op overpays its L2 gas: it pays 2 gwei, a bundle less) the bundle would lose money and is
    // not sent; once it is back, the bundle goes out and the op is mined.
    let hash = send_at(&url, version, &signed).await?.map_err(|e| format!("{e:?}"))?;
    set_fees(&node, L1FeeParams::base(L1_BASE_FEE * 200)).await?;
    let nothing = call_url(&url, "debug_bundler_sendBundleNow", json!([])).await?;
    assert_eq!(nothing.map_err(|e| format!("{e:?}"))?, json!("0x"), "unprofitable bundle sent");
    let metrics = node.metrics().await?;
    assert!(
        metrics.lines().any(|l| l.starts_with("settled_bundler_bundles_unprofitable_total 1")),
        "counted"
    );
    set_fees(&node, L1FeeParams::base(L1_BASE_FEE)).await?;
    let tx = call_url(&url, "debug_bundler_sendBundleNow", json!([])).await?;
    assert!(tx.map_err(|e| format!("{e:?}"))?.is_string());
    let receipt = wait_for_receipt_at(&url, serde_json::from_value(hash)?).await?;
    assert_eq!(receipt["success"], json!(true), "{receipt}");
    Ok(())
}

/// The paymaster refuses to sign an op whose preVerificationGas leaves out the L1 fee, and the
/// worst case it reserves for an estimated op includes the fee.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paymaster_reserves_the_l1_data_fee() -> TestResult {
    let node = l2_node().await?;
    let url = node.node()?.rpc_url();
    let version = EntryPointVersion::V08;
    let policy = SponsorshipPolicy::unlimited("everything");
    let set = call_url(&url, "paymaster_setPolicy", json!([policy])).await?;
    set.map_err(|e| format!("{e:?}"))?;
    let chain_id = node.chain().provider().get_chain_id().await?;
    let params = |op: &PackedUserOperation| {
        json!([
            UserOperation::unpack(op, None),
            version.canonical_address(),
            format!("{chain_id:#x}"),
            { "policyId": "everything" },
        ])
    };

    let owner = PrivateKeySigner::random();
    let mut op = priced_op(&node, version, &owner, false).await?;
    let stub = call_url(&url, "pm_getPaymasterStubData", params(&op)).await?;
    apply_paymaster_stub(&mut op, &stub.map_err(|e| format!("{e:?}"))?)?;
    let op = with_estimated_limits(&url, version, op).await?;
    let fee = l1_fee_of(&node, version, &with_incompressible_signature(&op)).await?;

    let mut short = op.clone();
    let l1_gas = u64::try_from(fee.div_ceil(OP_PRICE))?;
    short.preVerificationGas = U256::from(pvg(&op) - l1_gas);
    let refused = call_url(&url, "pm_getPaymasterData", params(&short)).await?;
    let refused = refused.err().ok_or("sponsored an op short of its L1 fee")?;
    assert_eq!(refused.0, -32602, "{refused:?}");
    assert!(refused.1.contains("L1 data fee"), "{}", refused.1);

    let signed = call_url(&url, "pm_getPaymasterData", params(&op)).await?;
    let signed: Value = signed.map_err(|e| format!("{e:?}"))?;
    let mut sponsored = op.clone();
    apply_paymaster_data(&mut sponsored, &signed)?;
    let status = call_url(&url, "paymaster_status", json!([])).await?;
    let status = status.map_err(|e| format!("{e:?}"))?;
    let reserved: U256 = serde_json::from_value(status["ledger"]["openWei"].clone())?;
    let l2_only = op.max_cost() - U256::from(u128::from(l1_gas) * op.max_fee_per_gas());
    println!("reserved {reserved} wei; without the L1 fee {l2_only}; L1 fee {fee}");
    assert_eq!(reserved, op.max_cost(), "the op's worst case");
    assert!(reserved >= l2_only + U256::from(fee), "the reservation includes the L1 fee");
    Ok(())
}
