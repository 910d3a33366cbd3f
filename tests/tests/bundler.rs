//! The bundler over JSON-RPC, as a wallet SDK uses it: estimate, sign, send, wait for the
//! receipt, look the op up — for both EntryPoints — plus manual bundling through the debug
//! namespace, persistence across a restart, and the ERC-7769 error codes of bad input.

use std::time::Duration;

use alloy::{
    primitives::{Address, B256, Bytes, U256},
    providers::{Provider, ext::AnvilApi},
    signers::local::PrivateKeySigner,
};
use serde_json::{Value, json};
use settled_bundler::{UserOperation, codes};
use settled_contracts::{EntryPointVersion, MockUSDC, PackedUserOperation};
use settled_tests::{
    SettledProcess, TestChain, TestNode, TestResult,
    rpc::{call_url, send_at, wait_for_receipt_at, with_estimated_limits},
    unestimated_op, usdc_transfer,
};

const ETH: u128 = 1_000_000_000_000_000_000;

/// A JSON-RPC call to the node; the result, or the error's code and message.
async fn call(
    node: &TestNode,
    method: &str,
    params: Value,
) -> TestResult<Result<Value, (i64, String)>> {
    call_url(&node.node()?.rpc_url(), method, params).await
}

/// A funded SimpleAccount (ETH for prefund, USDC to move) and an op that creates it and
/// transfers USDC, estimated through the node and signed.
async fn funded_op(
    node: &TestNode,
    version: EntryPointVersion,
    owner: &PrivateKeySigner,
) -> TestResult<PackedUserOperation> {
    funded_op_at(&node.node()?.rpc_url(), node.chain(), version, owner).await
}

async fn funded_op_at(
    url: &str,
    chain: &TestChain,
    version: EntryPointVersion,
    owner: &PrivateKeySigner,
) -> TestResult<PackedUserOperation> {
    let provider = chain.provider();
    let usdc = chain.deployment().usdc;
    let (sender, init_code) = chain.simple_account(version, owner.address()).await?;
    let fund = alloy::rpc::types::TransactionRequest::default().to(sender).value(U256::from(ETH));
    provider.send_transaction(fund).await?.get_receipt().await?;
    MockUSDC::new(usdc, provider)
        .mint(sender, U256::from(1_000_000u64))
        .send()
        .await?
        .get_receipt()
        .await?;
    let call_data = usdc_transfer(version, usdc, Address::repeat_byte(0x55), 1_000);
    let op = unestimated_op(sender, 0, init_code, call_data);
    let mut op = with_estimated_limits(url, version, op).await?;
    op.signature = chain.sign_op(version, owner, &op).await?;
    Ok(op)
}

async fn send(
    node: &TestNode,
    version: EntryPointVersion,
    op: &PackedUserOperation,
) -> TestResult<Result<Value, (i64, String)>> {
    send_at(&node.node()?.rpc_url(), version, op).await
}

async fn wait_for_receipt(node: &TestNode, hash: B256) -> TestResult<Value> {
    wait_for_receipt_at(&node.node()?.rpc_url(), hash).await
}

/// The path a wallet takes: estimate, sign, send, receipt, lookup — v0.7 and v0.8, auto mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_estimate_receipt_lookup() -> TestResult {
    let node = TestNode::spawn().await?;
    let chain_id = node.chain().provider().get_chain_id().await?;
    let entry_points = call(&node, "eth_supportedEntryPoints", json!([])).await?;
    assert_eq!(
        entry_points.map_err(|e| format!("{e:?}"))?,
        json!([
            EntryPointVersion::V08.canonical_address().to_checksum(None),
            EntryPointVersion::V07.canonical_address().to_checksum(None)
        ]),
        "EIP-55 checksummed, as the reference bundler answers"
    );
    let prices = call(&node, "settled_getUserOperationGasPrice", json!([])).await?;
    let prices = prices.map_err(|e| format!("{e:?}"))?;
    // permissionless' Pimlico client asks under Pimlico's name; the answer has the same shape.
    let pimlico = call(&node, "pimlico_getUserOperationGasPrice", json!([])).await?;
    let pimlico = pimlico.map_err(|e| format!("{e:?}"))?;
    for level in ["slow", "standard", "fast"] {
        for field in ["maxFeePerGas", "maxPriorityFeePerGas"] {
            assert!(pimlico[level][field].is_string(), "pimlico {level}.{field}: {pimlico}");
        }
    }
    let fee = |level: &str, field: &str| -> TestResult<U256> {
        Ok(serde_json::from_value(prices[level][field].clone())?)
    };
    assert!(fee("slow", "maxPriorityFeePerGas")? <= fee("standard", "maxPriorityFeePerGas")?);
    assert!(fee("standard", "maxPriorityFeePerGas")? <= fee("fast", "maxPriorityFeePerGas")?);
    let base_fee = node
        .chain()
        .provider()
        .get_block_by_number(Default::default())
        .await?
        .and_then(|b| b.header.base_fee_per_gas)
        .unwrap_or_default();
    assert!(fee("slow", "maxFeePerGas")? >= U256::from(base_fee));
    for version in EntryPointVersion::ALL {
        let owner = PrivateKeySigner::random();
        let op = funded_op(&node, version, &owner).await?;
        let hash: B256 = serde_json::from_value(
            send(&node, version, &op).await?.map_err(|e| format!("{version:?} send: {e:?}"))?,
        )?;
        assert_eq!(hash, op.hash(version, chain_id, None), "{version:?}: userOpHash");

        let receipt = wait_for_receipt(&node, hash).await?;
        assert_eq!(receipt["success"], json!(true), "{version:?}: {receipt}");
        assert_eq!(receipt["sender"], json!(op.sender));
        assert_eq!(receipt["entryPoint"], json!(version.canonical_address().to_checksum(None)));
        let bundle = &receipt["receipt"];
        assert_eq!(bundle["status"], json!("0x1"));
        // The op's own logs: the USDC transfer among them, no other op's.
        let logs = receipt["logs"].as_array().cloned().unwrap_or_default();
        assert!(
            logs.iter().any(|l| l["address"] == json!(node.chain().deployment().usdc)),
            "{version:?}: no USDC Transfer log in {logs:?}"
        );

        let found = call(&node, "eth_getUserOperationByHash", json!([hash])).await?;
        let found = found.map_err(|e| format!("{e:?}"))?;
        assert_eq!(found["transactionHash"], bundle["transactionHash"]);
        assert_eq!(found["userOperation"]["sender"], json!(op.sender));
        assert_eq!(found["entryPoint"], json!(version.canonical_address().to_checksum(None)));
    }
    Ok(())
}

/// Manual mode: ops wait in the mempool until `debug_bundler_sendBundleNow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_bundling_through_the_debug_namespace() -> TestResult {
    let node = TestNode::spawn().await?;
    let version = EntryPointVersion::V07;
    let mode = call(&node, "debug_bundler_setBundlingMode", json!(["manual"])).await?;
    assert_eq!(mode.map_err(|e| format!("{e:?}"))?, json!("ok"));

    let owner = PrivateKeySigner::random();
    let op = funded_op(&node, version, &owner).await?;
    let hash = send(&node, version, &op).await?.map_err(|e| format!("{e:?}"))?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pending = call(&node, "eth_getUserOperationByHash", json!([hash])).await?;
    let pending = pending.map_err(|e| format!("{e:?}"))?;
    assert_eq!(pending["blockNumber"], Value::Null, "manual mode bundled by itself");
    let dump =
        call(&node, "debug_bundler_dumpMempool", json!([version.canonical_address()])).await?;
    assert_eq!(dump.map_err(|e| format!("{e:?}"))?.as_array().map(Vec::len), Some(1));

    let tx = call(&node, "debug_bundler_sendBundleNow", json!([])).await?;
    let tx = tx.map_err(|e| format!("{e:?}"))?;
    assert!(tx.is_string(), "{tx}");
    let receipt = wait_for_receipt(&node, serde_json::from_value(hash)?).await?;
    assert_eq!(receipt["receipt"]["transactionHash"], tx);
    let dump =
        call(&node, "debug_bundler_dumpMempool", json!([version.canonical_address()])).await?;
    assert_eq!(dump.map_err(|e| format!("{e:?}"))?, json!([]));
    // Nothing to bundle: `0x`, empty data (the suite wants a truthy result).
    let nothing = call(&node, "debug_bundler_sendBundleNow", json!([])).await?;
    assert_eq!(nothing.map_err(|e| format!("{e:?}"))?, json!("0x"));

    // debug_bundler_addUserOps skips validation; the op is still validated before bundling.
    let owner = PrivateKeySigner::random();
    let added = funded_op(&node, version, &owner).await?;
    let ops = json!([[UserOperation::unpack(&added, None)], version.canonical_address()]);
    let result = call(&node, "debug_bundler_addUserOps", ops).await?;
    assert_eq!(result.map_err(|e| format!("{e:?}"))?, json!("ok"));
    let dump =
        call(&node, "debug_bundler_dumpMempool", json!([version.canonical_address()])).await?;
    assert_eq!(dump.map_err(|e| format!("{e:?}"))?[0]["sender"], json!(added.sender));
    let tx = call(&node, "debug_bundler_sendBundleNow", json!([])).await?;
    assert!(tx.map_err(|e| format!("{e:?}"))?.is_string());

    // Operators see it in Prometheus, each metric with its help line.
    let metrics = node.metrics().await?;
    for name in [
        "settled_bundler_ops_accepted_total",
        "settled_bundler_bundles_sent_total",
        "settled_bundler_bundles_mined_total",
        "settled_bundler_ops_mined_total",
        "settled_bundler_validation_seconds",
    ] {
        assert!(metrics.contains(&format!("# HELP {name}")), "{name} missing:\n{metrics}");
    }
    Ok(())
}

/// Bad input gets the exact ERC-7769 code; nothing already accepted is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_gets_erc_7769_codes() -> TestResult {
    let node = TestNode::spawn().await?;
    let mode = call(&node, "debug_bundler_setBundlingMode", json!(["manual"])).await?;
    assert!(mode.is_ok());
    let version = EntryPointVersion::V07;
    let entry_point = version.canonical_address();
    let owner = PrivateKeySigner::random();
    let good = funded_op(&node, version, &owner).await?;
    let good_json = serde_json::to_value(UserOperation::unpack(&good, None))?;
    let code = |result: Result<Value, (i64, String)>| result.err().map(|(code, _)| code);

    // Malformed: bad hex, missing field, wrong length, unknown field, unsupported EntryPoint.
    let mut bad_hex = good_json.clone();
    bad_hex["callData"] = json!("0xzz");
    let mut missing = good_json.clone();
    missing.as_object_mut().map(|o| o.remove("sender"));
    let mut short_sender = good_json.clone();
    short_sender["sender"] = json!("0x1234");
    let mut unknown = good_json.clone();
    unknown["surprise"] = json!(1);
    let mut huge_gas = good_json.clone();
    huge_gas["callGasLimit"] = json!(format!("{:#x}", U256::MAX));
    let mut bad_factory = good_json.clone();
    bad_factory["factory"] = json!("0x1234");
    for (label, op, ep) in [
        ("bad hex", bad_hex, json!(entry_point)),
        ("missing sender", missing, json!(entry_point)),
        ("short sender", short_sender, json!(entry_point)),
        ("unknown field", unknown, json!(entry_point)),
        ("gas over 128 bits", huge_gas, json!(entry_point)),
        ("factory neither address nor 0x7702", bad_factory, json!(entry_point)),
        ("unsupported EntryPoint", good_json.clone(), json!(Address::repeat_byte(1))),
        ("EntryPoint not an address", good_json.clone(), json!("entrypoint")),
    ] {
        let result = call(&node, "eth_sendUserOperation", json!([op, ep])).await?;
        assert_eq!(code(result), Some(i64::from(codes::INVALID_PARAMS)), "{label}");
    }
    let result = call(&node, "eth_sendUserOperation", json!([])).await?;
    assert_eq!(code(result), Some(i64::from(codes::INVALID_PARAMS)), "no params");

    // Signed by someone else: -32507.
    let mut forged = good.clone();
    forged.signature = node.chain().sign_op(version, &PrivateKeySigner::random(), &forged).await?;
    assert_eq!(
        code(send(&node, version, &forged).await?),
        Some(i64::from(codes::INVALID_SIGNATURE))
    );

    // preVerificationGas below the requirement: -32602.
    let mut cheap = good.clone();
    cheap.preVerificationGas = U256::from(1_000);
    cheap.signature = node.chain().sign_op(version, &owner, &cheap).await?;
    assert_eq!(code(send(&node, version, &cheap).await?), Some(i64::from(codes::INVALID_PARAMS)));

    // A sender with no funds: the EntryPoint's AA21, -32500.
    let poor_owner = PrivateKeySigner::random();
    let (poor, init_code) = node.chain().simple_account(version, poor_owner.address()).await?;
    let mut unfunded = good.clone();
    unfunded.sender = poor;
    unfunded.initCode = init_code;
    // Another owner's initCode may have more non-zero bytes: keep preVerificationGas ample.
    unfunded.preVerificationGas += U256::from(1_000);
    unfunded.signature = node.chain().sign_op(version, &poor_owner, &unfunded).await?;
    match send(&node, version, &unfunded).await? {
        Err((code, message)) => {
            assert_eq!(code, i64::from(codes::REJECTED_BY_ENTRY_POINT));
            assert!(message.starts_with("AA21"), "{message}");
        }
        Ok(result) => return Err(format!("unfunded op accepted: {result}").into()),
    }

    // Estimating a call that reverts: -32521.
    let mut reverting = good.clone();
    reverting.callData =
        usdc_transfer(version, node.chain().deployment().usdc, Address::repeat_byte(1), u64::MAX);
    let result = call(
        &node,
        "eth_estimateUserOperationGas",
        json!([UserOperation::unpack(&reverting, None), entry_point]),
    )
    .await?;
    assert_eq!(code(result), Some(i64::from(codes::EXECUTION_REVERTED)));

    // The good op is accepted once; again: duplicate; same nonce, same fees: underpriced.
    let hash = send(&node, version, &good).await?.map_err(|e| format!("{e:?}"))?;
    assert_eq!(code(send(&node, version, &good).await?), Some(i64::from(codes::INVALID_PARAMS)));
    let mut same_fees = good.clone();
    same_fees.callData = Bytes::from_static(&[]);
    same_fees.set_account_gas_limits(good.verification_gas_limit(), 20_000);
    same_fees.signature = node.chain().sign_op(version, &owner, &same_fees).await?;
    match send(&node, version, &same_fees).await? {
        Err((code, message)) => {
            assert_eq!(code, i64::from(codes::INVALID_PARAMS));
            let expected = "Replacement UserOperation must have higher maxPriorityFeePerGas";
            assert!(message.contains(expected), "{message}");
        }
        Ok(result) => return Err(format!("underpriced replacement accepted: {result}").into()),
    }
    // None of that lost the accepted op.
    let dump = call(&node, "debug_bundler_dumpMempool", json!([entry_point])).await?;
    let dump = dump.map_err(|e| format!("{e:?}"))?;
    assert_eq!(dump.as_array().map(Vec::len), Some(1));
    assert_eq!(dump[0]["sender"], json!(good.sender));
    let tx = call(&node, "debug_bundler_sendBundleNow", json!([])).await?;
    assert!(tx.map_err(|e| format!("{e:?}"))?.is_string());
    let receipt = wait_for_receipt(&node, serde_json::from_value(hash)?).await?;
    assert_eq!(receipt["success"], json!(true));
    Ok(())
}

/// An accepted op survives `kill -9` of the node: after a restart on the same datadir it is in
/// the mempool again and gets bundled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_ops_survive_kill_9() -> TestResult {
    let chain = TestChain::spawn().await?;
    let datadir = tempfile::tempdir()?;
    let version = EntryPointVersion::V08;
    let entry_point = version.canonical_address();

    let first = SettledProcess::start(&chain, datadir.path()).await?;
    let owner = PrivateKeySigner::random();
    let op = funded_op_at(first.rpc_url(), &chain, version, &owner).await?;
    let hash = send_at(first.rpc_url(), version, &op).await?.map_err(|e| format!("{e:?}"))?;
    first.kill()?;

    let second = SettledProcess::start(&chain, datadir.path()).await?;
    let dump =
        call_url(second.rpc_url(), "debug_bundler_dumpMempool", json!([entry_point])).await?;
    let dump = dump.map_err(|e| format!("{e:?}"))?;
    assert_eq!(dump.as_array().map(Vec::len), Some(1), "the op was lost: {dump}");
    assert_eq!(dump[0]["sender"], json!(op.sender));
    let tx = call_url(second.rpc_url(), "debug_bundler_sendBundleNow", json!([])).await?;
    assert!(tx.map_err(|e| format!("{e:?}"))?.is_string());
    let receipt = wait_for_receipt_at(second.rpc_url(), serde_json::from_value(hash)?).await?;
    assert_eq!(receipt["success"], json!(true));
    Ok(())
}

/// A v0.8 op from an EOA that delegates to Simple7702Account in the same op (`eip7702Auth`):
/// estimated and sent over JSON-RPC, bundled in a type-4 transaction, mined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eip7702_op_through_the_bundler() -> TestResult {
    use alloy::signers::Signer;

    let node = TestNode::spawn().await?;
    let chain = node.chain();
    let provider = chain.provider();
    let version = EntryPointVersion::V08;
    let delegate = chain.deployment().simple_7702_account_v08;
    let usdc = chain.deployment().usdc;
    let eoa = PrivateKeySigner::random();
    let fund =
        alloy::rpc::types::TransactionRequest::default().to(eoa.address()).value(U256::from(ETH));
    provider.send_transaction(fund).await?.get_receipt().await?;
    MockUSDC::new(usdc, provider)
        .mint(eoa.address(), U256::from(1_000u64))
        .send()
        .await?
        .get_receipt()
        .await?;

    let authorization = chain.authorize(&eoa, delegate).await?;
    let call_data = usdc_transfer(version, usdc, Address::repeat_byte(0x56), 10);
    let marker = settled_contracts::EIP7702_INIT_CODE_MARKER.to_vec().into();
    let mut op = unestimated_op(eoa.address(), 0, marker, call_data);
    let json_op = |op: &PackedUserOperation| UserOperation::unpack(op, Some(authorization.clone()));
    assert_eq!(
        serde_json::to_value(json_op(&op))?["factory"],
        json!("0x7702"),
        "ERC-7769 spells the marker 0x7702"
    );
    let estimate = call(
        &node,
        "eth_estimateUserOperationGas",
        json!([json_op(&op), version.canonical_address()]),
    )
    .await?
    .map_err(|e| format!("estimate: {e:?}"))?;
    let gas = |name: &str| -> TestResult<u128> {
        Ok(serde_json::from_value::<U256>(estimate[name].clone())?.to())
    };
    op.set_account_gas_limits(gas("verificationGasLimit")?, gas("callGasLimit")?);
    op.preVerificationGas = U256::from(gas("preVerificationGas")?);
    let hash = chain.op_hash_delegated(&op, delegate).await?;
    op.signature = eoa.sign_hash(&hash).await?.as_bytes().to_vec().into();

    let sent =
        call(&node, "eth_sendUserOperation", json!([json_op(&op), version.canonical_address()]))
            .await?
            .map_err(|e| format!("send: {e:?}"))?;
    assert_eq!(sent, json!(hash));
    let receipt = wait_for_receipt(&node, hash).await?;
    assert_eq!(receipt["success"], json!(true), "{receipt}");
    assert_eq!(receipt["receipt"]["type"], json!("0x4"), "a type-4 bundle");
    let code = provider.get_code_at(eoa.address()).await?;
    assert_eq!(&code[..3], &[0xef, 0x01, 0x00]);
    Ok(())
}

/// A reorg that takes a bundle out of the chain puts its ops back in the mempool; they are
/// bundled again and mined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorged_ops_return_to_the_mempool() -> TestResult {
    let node = TestNode::spawn().await?;
    let version = EntryPointVersion::V07;
    let entry_point = version.canonical_address();
    assert!(call(&node, "debug_bundler_setBundlingMode", json!(["manual"])).await?.is_ok());
    let owner = PrivateKeySigner::random();
    let op = funded_op(&node, version, &owner).await?;
    let hash: B256 =
        serde_json::from_value(send(&node, version, &op).await?.map_err(|e| format!("{e:?}"))?)?;
    let first_tx = call(&node, "debug_bundler_sendBundleNow", json!([]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    wait_for_receipt(&node, hash).await?;

    // Replace the bundle's block with an empty one.
    let provider = node.chain().provider();
    let mined_at = provider.get_block_number().await?;
    provider.raw_request::<_, ()>("anvil_reorg".into(), (1u64, Vec::<()>::new())).await?;
    let mut back = false;
    for _ in 0..100 {
        let dump = call(&node, "debug_bundler_dumpMempool", json!([entry_point])).await?;
        if dump.map_err(|e| format!("{e:?}"))?.as_array().is_some_and(|ops| ops.len() == 1) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the reorged op did not return to the mempool (bundle was at block {mined_at})");
    let gone = call(&node, "eth_getUserOperationReceipt", json!([hash])).await?;
    assert_eq!(gone.map_err(|e| format!("{e:?}"))?, Value::Null, "receipt of a reorged-out op");

    let second_tx = call(&node, "debug_bundler_sendBundleNow", json!([]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    assert!(second_tx.is_string());
    let receipt = wait_for_receipt(&node, hash).await?;
    assert_eq!(receipt["success"], json!(true));
    assert_ne!(receipt["receipt"]["transactionHash"], first_tx, "mined again, in a new bundle");
    Ok(())
}

async fn sponsored_creation_op(
    node: &TestNode,
    version: EntryPointVersion,
    paymaster: Address,
) -> TestResult<PackedUserOperation> {
    let owner = PrivateKeySigner::random();
    let url = node.node()?.rpc_url();
    settled_tests::rpc::sponsored_creation_op(&url, node.chain(), version, paymaster, &owner).await
}

async fn reputation_of(
    node: &TestNode,
    version: EntryPointVersion,
    address: Address,
) -> TestResult<Value> {
    settled_tests::rpc::reputation_at(&node.node()?.rpc_url(), version, address).await
}

/// ERC-7562 reputation over the debug namespace: a throttled paymaster gets four ops into the
/// mempool and no more (GREP-020), a banned one none, and banning it empties the pool of its ops
/// (GREP-010); cleared, it is served again, and a mined op counts as seen and included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reputation_throttles_and_bans_a_paymaster() -> TestResult {
    use settled_tests::testing_contracts::{RuleBreakingPaymaster, RuleTarget};

    let node = TestNode::spawn().await?;
    let version = EntryPointVersion::V07;
    let entry_point = version.canonical_address();
    let provider = node.chain().provider().clone();
    let ok = |r: Result<Value, (i64, String)>| r.map_err(|e| format!("{e:?}"));
    ok(call(&node, "debug_bundler_setBundlingMode", json!(["manual"])).await?)?;
    let target = RuleTarget::deploy(&provider).await?;
    let paymaster =
        RuleBreakingPaymaster::deploy(&provider, entry_point, *target.address()).await?;
    paymaster.deposit().value(U256::from(ETH)).send().await?.get_receipt().await?;
    // Staked: it reads its own storage (ERC-7562 allows that only to a staked paymaster).
    paymaster.stake(86_400).value(U256::from(ETH)).send().await?.get_receipt().await?;
    let paymaster = *paymaster.address();

    // Throttled: opsSeen / 10 = 11 > opsIncluded + THROTTLING_SLACK (10).
    let throttled = json!([{ "address": paymaster, "opsSeen": "0x6e", "opsIncluded": "0x0" }]);
    ok(call(&node, "debug_bundler_setReputation", json!([throttled, entry_point])).await?)?;
    assert_eq!(reputation_of(&node, version, paymaster).await?["status"], "throttled");
    for _ in 0..settled_bundler::THROTTLED_ENTITY_MEMPOOL_COUNT {
        let op = sponsored_creation_op(&node, version, paymaster).await?;
        ok(send(&node, version, &op).await?)?;
    }
    let fifth = sponsored_creation_op(&node, version, paymaster).await?;
    let refused = send(&node, version, &fifth).await?.err().ok_or("a fifth op was accepted")?;
    assert_eq!(refused.0, i64::from(codes::THROTTLED_OR_BANNED), "{refused:?}");
    assert!(refused.1.contains("throttled"), "{refused:?}");

    // GREP-020: ops with a throttled entity stay at most THROTTLED_ENTITY_LIVE_BLOCKS blocks.
    let live = settled_bundler::THROTTLED_ENTITY_LIVE_BLOCKS;
    node.chain().provider().anvil_mine(Some(live + 2), None).await?;
    let head = node.chain().provider().get_block_number().await?;
    node.wait_for_head(head, Duration::from_secs(10)).await?;
    let mut dump = Value::Null;
    for _ in 0..50 {
        dump = ok(call(&node, "debug_bundler_dumpMempool", json!([entry_point])).await?)?;
        if dump == json!([]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dump, json!([]), "throttled ops outlived their residency");
    let again = sponsored_creation_op(&node, version, paymaster).await?;
    ok(send(&node, version, &again).await?)?;

    // Banned (opsSeen / 10 = 100 > 0 + BAN_SLACK): its ops leave the pool, new ones are refused.
    let banned = json!([{ "address": paymaster, "opsSeen": "0x3e8", "opsIncluded": "0x0" }]);
    ok(call(&node, "debug_bundler_setReputation", json!([banned, entry_point])).await?)?;
    let dump = ok(call(&node, "debug_bundler_dumpMempool", json!([entry_point])).await?)?;
    assert_eq!(dump, json!([]), "GREP-010: a banned paymaster's ops are removed");
    let refused = send(&node, version, &fifth).await?.err().ok_or("a banned paymaster's op")?;
    assert_eq!(refused.0, i64::from(codes::THROTTLED_OR_BANNED));
    assert!(refused.1.contains("banned"), "{refused:?}");

    // Cleared, it is served; once mined, the op counts as seen and included for each entity.
    ok(call(&node, "debug_bundler_clearReputation", json!([])).await?)?;
    let hash = ok(send(&node, version, &fifth).await?)?;
    let factory =
        reputation_of(&node, version, node.chain().deployment().simple_account_factory_v07).await?;
    assert_eq!(factory["opsSeen"], "0x1", "{factory}");
    ok(call(&node, "debug_bundler_sendBundleNow", json!([])).await?)?;
    wait_for_receipt(&node, serde_json::from_value(hash)?).await?;
    let entry = reputation_of(&node, version, paymaster).await?;
    assert_eq!(
        (&entry["opsSeen"], &entry["opsIncluded"], &entry["status"]),
        (&json!("0x1"), &json!("0x1"), &json!("ok"))
    );

    // Its stake, as the EntryPoint has it; and an address with none.
    let stake =
        ok(call(&node, "debug_bundler_getStakeStatus", json!([paymaster, entry_point])).await?)?;
    assert_eq!(stake["isStaked"], true, "{stake}");
    assert_eq!(stake["stakeInfo"]["addr"], json!(paymaster));
    assert_eq!(stake["stakeInfo"]["stake"], json!(ETH.to_string()), "decimal strings");
    assert_eq!(stake["stakeInfo"]["unstakeDelaySec"], "86400");
    let none =
        ok(call(&node, "debug_bundler_getStakeStatus", json!([target.address(), entry_point]))
            .await?)?;
    assert_eq!((&none["isStaked"], &none["stakeInfo"]["stake"]), (&json!(false), &json!("0")));
    // clearState forgets reputation too.
    ok(call(&node, "debug_bundler_clearState", json!([])).await?)?;
    assert_eq!(reputation_of(&node, version, paymaster).await?, Value::Null);
    Ok(())
}

/// The operator's block list bans an entity whatever its record: an account creation through a
/// blocked factory gets -32504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocklisted_factory_is_refused() -> TestResult {
    let probe = TestChain::spawn().await?;
    let factory = probe.deployment().simple_account_factory_v07;
    drop(probe);
    let node = TestNode::spawn_with(Default::default(), |config| {
        config.bundler.reputation.blocklist.insert(factory);
    })
    .await?;
    assert_eq!(node.chain().deployment().simple_account_factory_v07, factory, "deterministic");
    let version = EntryPointVersion::V07;
    let owner = PrivateKeySigner::random();
    let op = funded_op(&node, version, &owner).await?;
    let refused = send(&node, version, &op).await?.err().ok_or("a blocked factory's op")?;
    assert_eq!(refused.0, i64::from(codes::THROTTLED_OR_BANNED), "{refused:?}");
    assert!(refused.1.contains(&format!("factory {factory}")), "{refused:?}");
    Ok(())
}

/// A bundle stuck below the base fee is replaced with higher fees after
/// `fee_bump_after_blocks` blocks and mined: with Anvil mining only on demand, the bundle enters
/// its pool, then the next blocks' base fee jumps to 1,000 gwei.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_bundle_is_replaced_with_higher_fees() -> TestResult {
    use alloy::consensus::Transaction as _;

    let node = TestNode::spawn_with(Default::default(), |config| {
        config.bundler.mode = settled_bundler::BundlingMode::Manual;
        config.bundler.fee_bump_after_blocks = 2;
    })
    .await?;
    let version = EntryPointVersion::V07;
    let owner = PrivateKeySigner::random();
    let op = funded_op(&node, version, &owner).await?;
    let hash: B256 =
        serde_json::from_value(send(&node, version, &op).await?.map_err(|e| format!("{e:?}"))?)?;

    let provider = node.chain().provider().clone();
    let bundler = node.chain().account(settled_tests::BUNDLER_ACCOUNT)?;
    let nonce = provider.get_transaction_count(bundler).await?;
    provider.anvil_set_auto_mine(false).await?;
    let url = node.node()?.rpc_url();
    let bundling = tokio::spawn(async move {
        call_url(&url, "debug_bundler_sendBundleNow", json!([])).await.map_err(|e| e.to_string())
    });
    // The bundle is in Anvil's pool; the blocks that follow cost more than it pays.
    for _ in 0..100 {
        if provider.get_transaction_count(bundler).pending().await? > nonce {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spike: u128 = 1_000_000_000_000; // 1,000 gwei
    provider.anvil_set_next_block_base_fee_per_gas(spike).await?;
    let mut receipt = None;
    for _ in 0..30 {
        provider.anvil_mine(Some(1), None).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Ok(Value::Object(found)) =
            call(&node, "eth_getUserOperationReceipt", json!([hash])).await?
        {
            receipt = Some(Value::Object(found));
            break;
        }
    }
    let receipt = receipt.ok_or("the stuck bundle was never replaced and mined")?;
    let tx = bundling.await?.map_err(|e| format!("{e:?}"))?.map_err(|e| format!("{e:?}"))?;
    assert_eq!(receipt["receipt"]["transactionHash"], tx);
    let tx: B256 = serde_json::from_value(tx)?;
    let mined = provider.get_transaction_by_hash(tx).await?.ok_or("no bundle transaction")?;
    assert!(
        mined.max_fee_per_gas() > spike / 2,
        "the replacement pays the raised base fee: {}",
        mined.max_fee_per_gas()
    );
    let metrics = node.metrics().await?;
    let replaced = metrics
        .lines()
        .find_map(|l| l.strip_prefix("settled_bundler_bundles_replaced_total "))
        .ok_or("no replacement counted")?;
    assert!(replaced.trim().parse::<f64>()? >= 1.0, "{replaced}");
    Ok(())
}

/// The mempool rules over RPC: an unstaked sender gets SAME_SENDER_MEMPOOL_COUNT ops in (one per
/// nonce key, each valid at the head) and no more; a replacement raising both fees by 10% takes
/// its op's place; an unstaked factory serves SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT pending
/// creations. Oversized requests and batches get JSON-RPC errors; nothing accepted is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mempool_rules_and_limits_over_rpc() -> TestResult {
    let node = TestNode::spawn_with(Default::default(), |config| {
        config.bundler.mode = settled_bundler::BundlingMode::Manual;
        config.rpc.max_request_bytes = 256 * 1024;
        config.rpc.max_batch_len = 10;
    })
    .await?;
    let version = EntryPointVersion::V07;
    let entry_point = version.canonical_address();
    let ok = |r: Result<Value, (i64, String)>| r.map_err(|e| format!("{e:?}"));
    // A deployed, funded account.
    let owner = PrivateKeySigner::random();
    let creation = funded_op(&node, version, &owner).await?;
    let created = ok(send(&node, version, &creation).await?)?;
    ok(call(&node, "debug_bundler_sendBundleNow", json!([])).await?)?;
    wait_for_receipt(&node, serde_json::from_value(created)?).await?;

    // Ops under nonce keys 1..=5 (sequence 0 each), limits estimated once.
    let usdc = node.chain().deployment().usdc;
    let call_data = usdc_transfer(version, usdc, Address::repeat_byte(0x55), 1);
    let keyed = |key: u64| {
        let mut op = unestimated_op(creation.sender, 0, Bytes::new(), call_data.clone());
        op.nonce = U256::from(key) << 64;
        op
    };
    let url = node.node()?.rpc_url();
    let estimated = with_estimated_limits(&url, version, keyed(1)).await?;
    let mut ops = Vec::new();
    for key in 1..=settled_bundler::SAME_SENDER_MEMPOOL_COUNT as u64 + 1 {
        let mut op = estimated.clone();
        op.nonce = keyed(key).nonce;
        op.signature = node.chain().sign_op(version, &owner, &op).await?;
        ops.push(op);
    }
    let (last, allowed) = ops.split_last().ok_or("no ops")?;
    let mut hashes = Vec::new();
    for op in allowed {
        hashes.push(ok(send(&node, version, op).await?)?);
    }
    let refused = send(&node, version, last).await?.err().ok_or("a fifth op was accepted")?;
    // UREP-010: an unstaked sender's limit is lifted by a stake (-32505, ERC-7769).
    assert_eq!(refused.0, i64::from(codes::STAKE_TOO_LOW), "{refused:?}");
    assert!(refused.1.contains("already has 4"), "{refused:?}");
    assert!(refused.1.contains("stake sender"), "{refused:?}");

    // A replacement with both fees 10% higher takes the first op's place.
    let mut replacement = allowed[0].clone();
    let (priority, max) = (replacement.max_priority_fee_per_gas(), replacement.max_fee_per_gas());
    replacement.set_fees(priority + priority / 10, max + max / 10);
    replacement.signature = node.chain().sign_op(version, &owner, &replacement).await?;
    let replaced_by = ok(send(&node, version, &replacement).await?)?;
    assert_ne!(replaced_by, hashes[0]);
    let old = ok(call(&node, "eth_getUserOperationByHash", json!([hashes[0]])).await?)?;
    assert_eq!(old, Value::Null, "the replaced op is gone");
    let dump = ok(call(&node, "debug_bundler_dumpMempool", json!([entry_point])).await?)?;
    assert_eq!(dump.as_array().map(Vec::len), Some(allowed.len()));

    // Too big a body, too long a batch: JSON-RPC errors, not a crash.
    let client = alloy::transports::http::reqwest::Client::new();
    let huge = json!({ "jsonrpc": "2.0", "id": 1, "method": "eth_chainId",
        "params": ["0x".to_string() + &"ab".repeat(200 * 1024)] });
    // The server answers 413 from the Content-Length alone and may close before the client has
    // written the whole body: either way it refused, and kept serving (below).
    match client.post(&url).json(&huge).send().await {
        Ok(response) => assert_eq!(response.status().as_u16(), 413, "request too big"),
        Err(error) => assert!(error.is_request(), "{error}"),
    }
    let batch: Vec<Value> = (0..11)
        .map(|id| json!({ "jsonrpc": "2.0", "id": id, "method": "eth_chainId", "params": [] }))
        .collect();
    let response: Value = client.post(&url).json(&batch).send().await?.json().await?;
    let code = response["error"]["code"].as_i64().ok_or(format!("no batch error: {response}"))?;
    assert!(code < 0 && response["error"]["message"].as_str().is_some(), "{response}");
    let within: Vec<Value> = batch.into_iter().take(10).collect();
    let response: Value = client.post(&url).json(&within).send().await?.json().await?;
    assert_eq!(response.as_array().map(Vec::len), Some(10), "a batch within the limit");
    let dump = ok(call(&node, "debug_bundler_dumpMempool", json!([entry_point])).await?)?;
    assert_eq!(dump.as_array().map(Vec::len), Some(allowed.len()), "nothing accepted was lost");

    // The unstaked factory: SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT account creations, then -32505.
    let limit = settled_bundler::SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT;
    for created in 0..=limit {
        let op = funded_op(&node, version, &PrivateKeySigner::random()).await?;
        match send(&node, version, &op).await? {
            Ok(_) if created < limit => {}
            Err((code, message)) if created == limit => {
                assert_eq!(code, i64::from(codes::STAKE_TOO_LOW), "{message}");
                assert!(message.contains("unstaked factory"), "{message}");
            }
            other => return Err(format!("creation #{created}: {other:?}").into()),
        }
    }
    Ok(())
}
