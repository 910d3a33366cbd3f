//! The paymaster end to end on Anvil: zero-ETH accounts created and run with sponsored gas
//! through settled's own bundler (with and without the stub → estimate → data flow), caps
//! under concurrency, expiry enforced by the EntryPoint, exact accounting against the chain,
//! clear errors for bad input with nothing reserved, and the operator's CLI.

use std::time::Duration;

use alloy::{
    primitives::{Address, Bytes, U256},
    providers::{Provider, ext::AnvilApi},
    rpc::types::{Filter, TransactionRequest},
    signers::local::PrivateKeySigner,
    sol_types::{SolCall, SolError, SolEvent},
};
use serde_json::{Value, json};
use settled_contracts::{
    EntryPointVersion, MockUSDC, PackedUserOperation, UserOperation, rpc_codes as codes, v07, v08,
};
use settled_paymaster::{AllowedCall, SponsorshipPolicy};
use settled_tests::{
    PAYMASTER_SIGNER_ACCOUNT, SettledProcess, TestNode, TestResult,
    rpc::{
        RpcAnswer, address, apply_paymaster_data as apply_data, apply_paymaster_stub as apply_stub,
        call_url, quantity, send_at, wait_for_receipt_at, with_estimated_limits,
    },
    unestimated_op,
};

const APPROVE: [u8; 4] = [0x09, 0x5e, 0xa7, 0xb3];
const SPENDER: Address = Address::repeat_byte(0x55);

/// A policy sponsoring USDC `approve` only, with `configure` applied.
fn approve_policy(
    node_usdc: Address,
    configure: impl FnOnce(&mut SponsorshipPolicy),
) -> SponsorshipPolicy {
    let mut policy = SponsorshipPolicy {
        sponsor_name: Some("settled tests".into()),
        allowed_calls: vec![AllowedCall { target: node_usdc, selectors: vec![APPROVE.into()] }],
        ..SponsorshipPolicy::unlimited("approvals")
    };
    configure(&mut policy);
    policy
}

/// A node whose paymaster serves `policies` (set over the admin RPC, as an operator would).
async fn node_with(
    policies: impl FnOnce(Address) -> Vec<SponsorshipPolicy>,
) -> TestResult<TestNode> {
    let node = TestNode::spawn_with(Default::default(), |config| {
        config.paymaster.validity_secs = 120;
    })
    .await?;
    for policy in policies(node.chain().deployment().usdc) {
        let set = call(&node, "paymaster_setPolicy", json!([policy])).await?;
        assert_eq!(set, Ok(json!(true)));
    }
    Ok(node)
}

async fn call(node: &TestNode, method: &str, params: Value) -> TestResult<RpcAnswer> {
    call_url(&node.node()?.rpc_url(), method, params).await
}

/// `account.execute(usdc, 0, approve(SPENDER, amount))` for `version`'s SimpleAccount.
fn approve_call(version: EntryPointVersion, usdc: Address, amount: u64) -> Bytes {
    let approve =
        MockUSDC::approveCall { spender: SPENDER, value: U256::from(amount) }.abi_encode().into();
    match version {
        EntryPointVersion::V07 => {
            v07::SimpleAccount::executeCall { dest: usdc, value: U256::ZERO, func: approve }
                .abi_encode()
        }
        EntryPointVersion::V08 => {
            v08::SimpleAccount::executeCall { target: usdc, value: U256::ZERO, data: approve }
                .abi_encode()
        }
    }
    .into()
}

/// A brand-new owner's SimpleAccount creation op that approves `amount` USDC, unestimated.
async fn creation_op(
    node: &TestNode,
    version: EntryPointVersion,
    amount: u64,
) -> TestResult<(PrivateKeySigner, PackedUserOperation)> {
    let chain = node.chain();
    let owner = PrivateKeySigner::random();
    let (sender, init_code) = chain.simple_account(version, owner.address()).await?;
    let call_data = approve_call(version, chain.deployment().usdc, amount);
    Ok((owner, unestimated_op(sender, 0, init_code, call_data)))
}

/// `pm_<method>` for `op` on `version`'s EntryPoint with `context`.
async fn pm(
    node: &TestNode,
    method: &str,
    version: EntryPointVersion,
    op: &PackedUserOperation,
    context: Value,
) -> TestResult<RpcAnswer> {
    let chain_id = format!("{:#x}", node.chain().provider().get_chain_id().await?);
    call(
        node,
        &format!("pm_{method}"),
        json!([UserOperation::unpack(op, None), version.canonical_address(), chain_id, context]),
    )
    .await
}

fn context(policy: &str) -> Value {
    json!({ "policyId": policy })
}

/// The paymaster's admin status.
async fn status(node: &TestNode) -> TestResult<Value> {
    Ok(call(node, "paymaster_status", json!([])).await?.map_err(|e| format!("status: {e:?}"))?)
}

/// Sum of `actualGasCost` of every `UserOperationEvent` naming `paymaster`, from the chain.
async fn chain_spend(node: &TestNode, version: EntryPointVersion) -> TestResult<(usize, U256)> {
    let paymaster = node.chain().deployment().paymaster(version);
    let filter = Filter::new()
        .address(version.canonical_address())
        .event_signature(v07::EntryPoint::UserOperationEvent::SIGNATURE_HASH)
        .topic3(paymaster.into_word())
        .from_block(0);
    let logs = node.chain().provider().get_logs(&filter).await?;
    let mut total = U256::ZERO;
    for log in &logs {
        total += v07::EntryPoint::UserOperationEvent::decode_log_data(log.data())?.actualGasCost;
    }
    Ok((logs.len(), total))
}

/// Waits until the node's ledger has settled `ops` sponsored ops; the settled wei.
async fn settled(node: &TestNode, ops: u64) -> TestResult<U256> {
    for _ in 0..100 {
        let status = status(node).await?;
        let totals = &status["ledger"]["totals"];
        if totals["settledOps"].as_u64() == Some(ops) {
            return Ok(serde_json::from_value(totals["settledWei"].clone())?);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("ledger did not settle {ops} ops: {}", status(node).await?).into())
}

/// Both flows a wallet may take, for both EntryPoints: fixed limits then `pm_getPaymasterData`,
/// and stub → estimate → data; every op creates a zero-ETH account and approves USDC through
/// settled's bundler, and the ledger's spend equals the chain's `actualGasCost` to the wei.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_eth_accounts_are_created_and_run_with_sponsored_gas() -> TestResult {
    let node = node_with(|usdc| vec![approve_policy(usdc, |_| {})]).await?;
    let url = node.node()?.rpc_url();
    let chain = node.chain();
    let usdc = MockUSDC::new(chain.deployment().usdc, chain.provider());
    let mut sponsored = 0;
    for version in EntryPointVersion::ALL {
        for estimate in [false, true] {
            let (owner, mut op) = creation_op(&node, version, 1_000 + sponsored).await?;
            let stub = pm(&node, "getPaymasterStubData", version, &op, context("approvals"))
                .await?
                .map_err(|e| format!("stub: {e:?}"))?;
            assert_eq!(stub["isFinal"], json!(false));
            assert_eq!(stub["sponsor"]["name"], json!("settled tests"));
            apply_stub(&mut op, &stub)?;
            if estimate {
                op = with_estimated_limits(&url, version, op).await?;
                // The stub's limits are realistic: they cover what validation and postOp need
                // (the estimate keeps the stub's postOp limit), without gross excess.
                let (verification, post_op) = op.paymaster_gas_limits().ok_or("no paymaster")?;
                let stub_verification = quantity(&stub["paymasterVerificationGasLimit"])?;
                assert_eq!(post_op, quantity(&stub["paymasterPostOpGasLimit"])?);
                assert!(
                    verification <= stub_verification && stub_verification <= 3 * verification,
                    "stub {stub_verification} vs estimated {verification}"
                );
            } else {
                op.set_account_gas_limits(400_000, 100_000);
                op.preVerificationGas = U256::from(100_000);
                // As ERC-7677 has it: the op reaches the paymaster unsigned.
                op.signature = Bytes::new();
            }
            let signed = pm(&node, "getPaymasterData", version, &op, context("approvals"))
                .await?
                .map_err(|e| format!("data ({version:?}, estimate {estimate}): {e:?}"))?;
            apply_data(&mut op, &signed)?;
            op.signature = chain.sign_op(version, &owner, &op).await?;

            let hash = send_at(&url, version, &op).await?.map_err(|e| format!("send: {e:?}"))?;
            let hash = serde_json::from_value(hash)?;
            let receipt = wait_for_receipt_at(&url, hash).await?;
            assert_eq!(receipt["success"], json!(true), "{receipt}");
            assert_eq!(address(&receipt["paymaster"])?, chain.deployment().paymaster(version));
            let balance = chain.provider().get_balance(op.sender).await?;
            assert_eq!(balance, U256::ZERO, "the account never held ETH");
            assert!(!chain.provider().get_code_at(op.sender).await?.is_empty(), "account created");
            let allowance = usdc.allowance(op.sender, SPENDER).call().await?;
            assert_eq!(allowance, U256::from(1_000 + sponsored), "the sponsored call ran");
            sponsored += 1;
        }
    }

    let settled_wei = settled(&node, sponsored).await?;
    let mut chain_wei = U256::ZERO;
    let mut chain_ops = 0;
    for version in EntryPointVersion::ALL {
        let (ops, wei) = chain_spend(&node, version).await?;
        chain_ops += ops;
        chain_wei += wei;
    }
    assert_eq!(chain_ops as u64, sponsored);
    assert_eq!(settled_wei, chain_wei, "the ledger's spend is the chain's actualGasCost sum");
    let status = status(&node).await?;
    assert_eq!(status["ledger"]["openReservations"], json!(0));
    assert_eq!(status["ledger"]["totals"]["unreservedOps"], json!(0));
    let signer = chain.account(PAYMASTER_SIGNER_ACCOUNT)?;
    assert_eq!(address(&status["signer"])?, signer);
    assert_eq!(status["accounts"][0]["staked"], json!(true));

    // Names only: in-process nodes of parallel tests share one recorder.
    let metrics = node.metrics().await?;
    for name in [
        "settled_paymaster_signatures_total ",
        "settled_paymaster_sponsored_ops_total ",
        "settled_paymaster_deposit_wei{entry_point=",
        "settled_paymaster_reservations_open ",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    node.shutdown().await
}

/// A cap of N ops per customer, 100 concurrent requests from 100 senders: exactly N signatures,
/// every other request told which cap it hit; a sender cap refuses the second op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_under_concurrency() -> TestResult {
    const CAP: u64 = 7;
    let node = node_with(|usdc| {
        vec![
            approve_policy(usdc, |p| {
                p.id = "per-customer".into();
                p.max_ops_per_customer = Some(CAP);
            }),
            approve_policy(usdc, |p| {
                p.id = "per-sender".into();
                p.max_ops_per_sender = Some(1);
            }),
        ]
    })
    .await?;
    let version = EntryPointVersion::V08;
    let mut ops = Vec::new();
    for _ in 0..100 {
        let (_, mut op) = creation_op(&node, version, 1).await?;
        op.set_account_gas_limits(400_000, 100_000);
        op.preVerificationGas = U256::from(100_000);
        let mut data = node.chain().deployment().paymaster(version).to_vec();
        data.extend_from_slice(settled_contracts::pack_u128s(60_000, 40_000).as_slice());
        op.paymasterAndData = data.into();
        ops.push(op);
    }
    let context = json!({ "policyId": "per-customer", "customer": "acme" });
    let url = node.node()?.rpc_url();
    let chain_id = format!("{:#x}", node.chain().provider().get_chain_id().await?);
    let mut requests = tokio::task::JoinSet::new();
    for op in &ops {
        let params = json!([
            UserOperation::unpack(op, None),
            version.canonical_address(),
            chain_id,
            context
        ]);
        let url = url.clone();
        requests.spawn(async move {
            call_url(&url, "pm_getPaymasterData", params).await.map_err(|e| e.to_string())
        });
    }
    let answers = requests.join_all().await;
    assert_eq!(answers.len(), 100);
    let mut granted = 0;
    for answer in answers {
        match answer? {
            Ok(_) => granted += 1,
            Err((code, message)) => {
                assert_eq!(code, i64::from(codes::REJECTED_BY_PAYMASTER), "{message}");
                assert!(message.contains("maxOpsPerCustomer"), "{message}");
            }
        }
    }
    assert_eq!(granted, CAP, "exactly the cap's worth of signatures");
    let status = status(&node).await?;
    assert_eq!(status["ledger"]["openReservations"], json!(CAP));
    let usage = call(&node, "paymaster_usage", json!(["per-customer", null, "acme"])).await?;
    assert_eq!(usage.map_err(|e| format!("{e:?}"))?["customer"]["ops"], json!(CAP));

    let op = &ops[0];
    assert!(
        pm(&node, "getPaymasterData", version, op, json!({ "policyId": "per-sender" }))
            .await?
            .is_ok()
    );
    let second =
        pm(&node, "getPaymasterData", version, op, json!({ "policyId": "per-sender" })).await?;
    let (code, message) = second.err().ok_or("a second op for the sender was sponsored")?;
    assert_eq!(code, i64::from(codes::REJECTED_BY_PAYMASTER));
    assert!(message.contains("maxOpsPerSender"), "{message}");
    node.shutdown().await
}

/// A signature past its window: the bundler refuses the op (-32503) and the EntryPoint itself
/// rejects it (`AA32`); the expired reservation is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_signature_is_rejected_by_the_entry_point() -> TestResult {
    let node = node_with(|usdc| vec![approve_policy(usdc, |_| {})]).await?;
    let chain = node.chain();
    let version = EntryPointVersion::V07;
    let (owner, mut op) = creation_op(&node, version, 5).await?;
    let stub = pm(&node, "getPaymasterStubData", version, &op, context("approvals"))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    apply_stub(&mut op, &stub)?;
    op.set_account_gas_limits(400_000, 100_000);
    op.preVerificationGas = U256::from(100_000);
    let signed = pm(&node, "getPaymasterData", version, &op, context("approvals"))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    apply_data(&mut op, &signed)?;
    op.signature = chain.sign_op(version, &owner, &op).await?;
    assert_eq!(status(&node).await?["ledger"]["openReservations"], json!(1));

    // validity 120 s, release 60 s after expiry.
    chain.provider().anvil_increase_time(200).await?;
    chain.provider().anvil_mine(Some(1), None).await?;

    let refused = send_at(&node.node()?.rpc_url(), version, &op).await?;
    assert_eq!(refused.err().map(|e| e.0), Some(i64::from(codes::OUT_OF_TIME_RANGE)));

    let input: Bytes = v07::IEntryPoint::handleOpsCall {
        ops: vec![op.clone()],
        beneficiary: Address::repeat_byte(1),
    }
    .abi_encode()
    .into();
    let tx = TransactionRequest::default().to(version.canonical_address()).input(input.into());
    let error =
        chain.provider().call(tx).await.err().ok_or("handleOps accepted an expired sponsorship")?;
    let data = error.as_error_resp().and_then(|e| e.as_revert_data()).ok_or("no revert data")?;
    let failed = v07::IEntryPoint::FailedOp::abi_decode(&data)?;
    assert_eq!(failed.reason, "AA32 paymaster expired or not due");

    for _ in 0..50 {
        if status(&node).await?["ledger"]["openReservations"] == json!(0) {
            return node.shutdown().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the expired reservation was not released".into())
}

/// Malformed ops, wrong chain, unknown EntryPoint, missing or unknown context, another
/// paymaster, calls off the allowlist, an execution that reverts, tampered paymasterAndData:
/// each a clear error with its code, and no signature or reservation left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_reserves_nothing() -> TestResult {
    let node = node_with(|usdc| vec![approve_policy(usdc, |_| {})]).await?;
    let chain = node.chain();
    let version = EntryPointVersion::V08;
    let entry_point = version.canonical_address();
    let chain_id = format!("{:#x}", chain.provider().get_chain_id().await?);
    let (owner, mut good) = creation_op(&node, version, 9).await?;
    good.set_account_gas_limits(400_000, 100_000);
    good.preVerificationGas = U256::from(100_000);
    let mut data = chain.deployment().paymaster(version).to_vec();
    data.extend_from_slice(settled_contracts::pack_u128s(60_000, 40_000).as_slice());
    good.paymasterAndData = data.into();
    let good_json = serde_json::to_value(UserOperation::unpack(&good, None))?;

    let mut malformed = good_json.clone();
    malformed["sender"] = json!("0x1234");
    let mut other_paymaster = good_json.clone();
    other_paymaster["paymaster"] = json!(Address::repeat_byte(7));
    let mut off_list = good.clone();
    off_list.callData = settled_tests::usdc_transfer(version, chain.deployment().usdc, SPENDER, 1);
    let mut other_target = good.clone();
    other_target.callData = approve_call(version, Address::repeat_byte(0x77), 1);
    // transferFrom without an allowance reverts: allowed target, but the policy lists approve
    // only, so test the revert guard with a policy allowing any call.
    call(&node, "paymaster_setPolicy", json!([SponsorshipPolicy::unlimited("anything")]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    let mut reverting = good.clone();
    reverting.callData = settled_tests::usdc_transfer(version, chain.deployment().usdc, SPENDER, 1);

    let approvals = context("approvals");
    let invalid = i64::from(codes::INVALID_PARAMS);
    let cases: Vec<(&str, Value, i64, &str)> = vec![
        ("malformed op", json!([malformed, entry_point, chain_id, approvals]), invalid, ""),
        ("missing params", json!([good_json]), invalid, ""),
        (
            "wrong chain id",
            json!([good_json, entry_point, "0x1", approvals]),
            invalid,
            "unsupported chain",
        ),
        (
            "unknown EntryPoint",
            json!([good_json, Address::repeat_byte(3), chain_id, approvals]),
            invalid,
            "unsupported EntryPoint",
        ),
        (
            "missing context",
            json!([good_json, entry_point, chain_id]),
            invalid,
            "context must name a policy",
        ),
        (
            "null context",
            json!([good_json, entry_point, chain_id, null]),
            invalid,
            "context must name a policy",
        ),
        (
            "context without policy",
            json!([good_json, entry_point, chain_id, {}]),
            invalid,
            "policyId",
        ),
        (
            "unknown policy",
            json!([good_json, entry_point, chain_id, { "policyId": "nope" }]),
            invalid,
            "unknown policy",
        ),
        (
            "another paymaster",
            json!([other_paymaster, entry_point, chain_id, approvals]),
            invalid,
            "names paymaster",
        ),
        (
            "selector off the allowlist",
            json!([UserOperation::unpack(&off_list, None), entry_point, chain_id, approvals]),
            i64::from(codes::REJECTED_BY_PAYMASTER),
            "allowedCalls.selectors",
        ),
        (
            "target off the allowlist",
            json!([UserOperation::unpack(&other_target, None), entry_point, chain_id, approvals]),
            i64::from(codes::REJECTED_BY_PAYMASTER),
            "allowedCalls.target",
        ),
        (
            "execution reverts",
            json!([UserOperation::unpack(&reverting, None), entry_point, chain_id, { "policyId": "anything" }]),
            i64::from(codes::EXECUTION_REVERTED),
            "reverts",
        ),
    ];
    for method in ["pm_getPaymasterStubData", "pm_getPaymasterData"] {
        for (name, params, code, text) in &cases {
            if method == "pm_getPaymasterStubData" && *name == "execution reverts" {
                continue; // the guard runs when signing
            }
            let answer = call(&node, method, params.clone()).await?;
            let (got, message) = answer.err().ok_or(format!("{method}: {name} was accepted"))?;
            assert_eq!(got, *code, "{method}: {name}: {message}");
            assert!(
                message.contains(text),
                "{method}: {name}: {message:?} should mention {text:?}"
            );
        }
    }
    let status = status(&node).await?;
    assert_eq!(status["ledger"]["openReservations"], json!(0), "nothing reserved: {status}");

    // Tampered paymasterAndData: a real signature, one byte of the window changed.
    let signed = pm(&node, "getPaymasterData", version, &good, context("approvals"))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    apply_data(&mut good, &signed)?;
    let mut tampered = good.paymasterAndData.to_vec();
    tampered[57] ^= 1;
    good.paymasterAndData = tampered.into();
    good.signature = chain.sign_op(version, &owner, &good).await?;
    let refused = send_at(&node.node()?.rpc_url(), version, &good).await?;
    let (code, message) = refused.err().ok_or("a tampered sponsorship was accepted")?;
    assert_eq!(code, i64::from(codes::REJECTED_BY_PAYMASTER), "{message}");
    assert!(message.contains("AA34"), "{message}");
    node.shutdown().await
}

/// `settled paymaster status|deposit|withdraw` against the chain, as an operator runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cli_deposits_withdraws_and_reports() -> TestResult {
    let node = TestNode::spawn().await?;
    let chain = node.chain();
    let deployment = node.datadir().join("deployment.json");
    let binary = SettledProcess::binary()?;
    let owner_key = chain.signer(0)?.to_bytes().to_string();
    let run = |args: Vec<String>| {
        let binary = binary.clone();
        let endpoint = chain.anvil().endpoint();
        let deployment = deployment.clone();
        let key = owner_key.clone();
        async move {
            let output = tokio::process::Command::new(&binary)
                .arg("paymaster")
                .args(&args)
                .arg("--rpc-url")
                .arg(endpoint)
                .arg("--deployment")
                .arg(deployment)
                .env("SETTLED_PAYMASTER_OWNER_KEY", key)
                .output()
                .await?;
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            TestResult::Ok((output.status.success(), stdout, stderr))
        }
    };
    let deposit_of = |out: &str, index: usize| -> TestResult<U256> {
        let value: Value = serde_json::from_str(out)?;
        Ok(serde_json::from_value(value["paymasters"][index]["deposit"].clone())?)
    };

    let (ok, before, err) = run(vec!["status".into()]).await?;
    assert!(ok, "{err}");
    // `settled paymaster status | head -0`: a reader gone before the answer is no panic.
    let mut gone = tokio::process::Command::new(&binary)
        .args(["paymaster", "status", "--rpc-url", &chain.anvil().endpoint(), "--deployment"])
        .arg(&deployment)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    drop(gone.stdout.take());
    let output = gone.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && !stderr.contains("panicked"), "{stderr}");
    let report: Value = serde_json::from_str(&before)?;
    assert_eq!(
        address(&report["paymasters"][1]["signer"])?,
        chain.account(PAYMASTER_SIGNER_ACCOUNT)?
    );
    assert_eq!(report["paymasters"][1]["staked"], json!(true));

    let (ok, after, err) = run(vec![
        "deposit".into(),
        "--entry-point".into(),
        "0.8".into(),
        "--amount".into(),
        "1.5".into(),
    ])
    .await?;
    assert!(ok, "{err}");
    assert_eq!(
        deposit_of(&after, 1)? - deposit_of(&before, 1)?,
        U256::from(1_500_000_000_000_000_000u128)
    );

    let to = Address::repeat_byte(0x42);
    let withdraw = |flag: &str, value: String| {
        let args = ["withdraw", "--entry-point", "0.8", "--amount", "0.25", flag];
        let mut args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        args.push(value);
        run(args)
    };
    let (ok, _, err) = withdraw("--to", to.to_string()).await?;
    assert!(ok, "{err}");
    assert_eq!(chain.provider().get_balance(to).await?, U256::from(250_000_000_000_000_000u128));
    // Not the owner: the paymaster's own error, decoded (#16 item 7), not `custom error 0x…`.
    let (ok, _, err) = withdraw("--key", chain.signer(1)?.to_bytes().to_string()).await?;
    assert!(!ok && err.contains("OwnableUnauthorizedAccount"), "{err}");
    assert!(!err.contains("0x118cdaa7"), "{err}");

    let (ok, _, err) = run(vec![
        "deposit".into(),
        "--entry-point".into(),
        "0.9".into(),
        "--amount".into(),
        "1".into(),
    ])
    .await?;
    assert!(!ok && err.contains("not an EntryPoint version"), "{err}");
    let (ok, _, err) = run(vec![
        "deposit".into(),
        "--entry-point".into(),
        "0.7".into(),
        "--amount".into(),
        "0".into(),
    ])
    .await?;
    assert!(!ok && err.contains("must be positive"), "{err}");
    node.shutdown().await
}

/// A sponsored op reorged out: its settlement is undone (the reservation is open again), and
/// when it is mined again the ledger settles it once, still equal to the chain to the wei.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorged_sponsorship_is_reopened_and_settled_once() -> TestResult {
    let node = node_with(|usdc| vec![approve_policy(usdc, |_| {})]).await?;
    let url = node.node()?.rpc_url();
    let chain = node.chain();
    let version = EntryPointVersion::V08;
    assert!(call(&node, "debug_bundler_setBundlingMode", json!(["manual"])).await?.is_ok());
    let (owner, mut op) = creation_op(&node, version, 3).await?;
    let stub = pm(&node, "getPaymasterStubData", version, &op, context("approvals"))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    apply_stub(&mut op, &stub)?;
    op = with_estimated_limits(&url, version, op).await?;
    let signed = pm(&node, "getPaymasterData", version, &op, context("approvals"))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    apply_data(&mut op, &signed)?;
    op.signature = chain.sign_op(version, &owner, &op).await?;
    let hash =
        serde_json::from_value(send_at(&url, version, &op).await?.map_err(|e| format!("{e:?}"))?)?;
    call(&node, "debug_bundler_sendBundleNow", json!([])).await?.map_err(|e| format!("{e:?}"))?;
    wait_for_receipt_at(&url, hash).await?;
    let first = settled(&node, 1).await?;

    chain.provider().raw_request::<_, ()>("anvil_reorg".into(), (1u64, Vec::<()>::new())).await?;
    settled(&node, 0).await?;
    assert_eq!(status(&node).await?["ledger"]["openReservations"], json!(1), "reopened");

    for _ in 0..100 {
        let sent = call(&node, "debug_bundler_sendBundleNow", json!([]))
            .await?
            .map_err(|e| format!("{e:?}"))?;
        if sent.as_str().is_some_and(|hash| hash != "0x") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_receipt_at(&url, hash).await?;
    let again = settled(&node, 1).await?;
    let (ops, chain_wei) = chain_spend(&node, version).await?;
    assert_eq!(ops, 1, "one event on the canonical chain");
    assert_eq!(again, chain_wei, "settled once, to the wei");
    assert!(first > U256::ZERO);
    node.shutdown().await
}

/// A wallet that names no policy (no context, `{}`, a customer only) is sponsored under the
/// configured default policy; Pimlico's `sponsorshipPolicyId` names a policy too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_policy_use_the_default_policy() -> TestResult {
    let node = TestNode::spawn_with(Default::default(), |config| {
        config.paymaster.default_policy = Some("approvals".into());
    })
    .await?;
    let policy = approve_policy(node.chain().deployment().usdc, |_| {});
    assert_eq!(call(&node, "paymaster_setPolicy", json!([policy])).await?, Ok(json!(true)));
    let version = EntryPointVersion::V07;
    let (_, op) = creation_op(&node, version, 9).await?;
    let paymaster = json!(node.chain().deployment().paymaster(version));
    for context in [
        Value::Null,
        json!({}),
        json!({ "customer": "acme" }),
        json!({ "sponsorshipPolicyId": "approvals" }),
    ] {
        let stub = pm(&node, "getPaymasterStubData", version, &op, context.clone()).await?;
        let stub = stub.map_err(|e| format!("{context}: {e:?}"))?;
        assert_eq!(stub["paymaster"], paymaster, "{context}");
    }
    let unknown = pm(&node, "getPaymasterStubData", version, &op, context("nope")).await?;
    assert_eq!(unknown.err().map(|e| e.0), Some(i64::from(codes::INVALID_PARAMS)));
    node.shutdown().await
}
