//! The node's stream math against `StreamVault` on Anvil: the same random sequences of
//! operations, by every role, at chosen block times; after each one the stored stream and every
//! view (debt, covered, uncovered, refundable, depletion time) equal the Rust mirror to the base
//! unit.

use alloy::{
    eips::BlockId,
    network::Ethereum,
    primitives::{U256, aliases::U96},
    providers::{PendingTransactionBuilder, Provider, ext::AnvilApi},
};
use settled_contracts::{MockUSDC, StreamVault};
use settled_streams::StreamState;
use settled_tests::{TestChain, TestResult};

/// Deterministic randomness without a dependency (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// Waits for the transaction; the block it landed in.
async fn confirm(pending: PendingTransactionBuilder<Ethereum>) -> TestResult<u64> {
    let receipt = pending.get_receipt().await?;
    if !receipt.status() {
        return Err(format!("transaction {} reverted", receipt.transaction_hash).into());
    }
    Ok(receipt.block_number.ok_or("receipt without a block")?)
}

/// Mines an empty block (at the time set for it); its number.
async fn mine<P: Provider>(provider: &P) -> TestResult<u64> {
    provider.anvil_mine(Some(1), None).await?;
    Ok(provider.get_block_number().await?)
}

/// The stored stream and every view at `block` (time `at`) against the mirror.
async fn compare<P: Provider>(
    vault: &StreamVault::StreamVaultInstance<P>,
    id: U256,
    mirror: &StreamState,
    block: u64,
    at: u64,
    step: &str,
) -> TestResult {
    let block = BlockId::number(block);
    let stored = vault.getStream(id).block(block).call().await?;
    assert_eq!(stored.balance, mirror.balance, "{step}: balance");
    assert_eq!(
        U256::from(stored.snapshotDebtScaled),
        mirror.snapshot_debt_scaled,
        "{step}: snapshot debt"
    );
    assert_eq!(u64::from(stored.snapshotTime), mirror.snapshot_time, "{step}: snapshot time");
    assert_eq!(stored.ratePerSecond.to::<u128>(), mirror.rate_per_second, "{step}: rate");
    let flags = (stored.flags & 1 != 0, stored.flags & 2 != 0);
    assert_eq!(flags, (mirror.paused, mirror.closed), "{step}: paused, closed");
    if mirror.max_total != 0 {
        // A capped stream stores what it may still pay.
        let remaining = mirror.max_total - mirror.withdrawn;
        assert_eq!(stored.remaining.to::<u128>(), remaining, "{step}: cap's remainder");
    }
    let debt = vault.totalDebt(id).block(block).call().await?;
    assert_eq!(debt, mirror.total_debt(at), "{step}: total debt");
    let covered = vault.coveredDebt(id).block(block).call().await?;
    assert_eq!(covered, U256::from(mirror.covered_debt(at)), "{step}: covered debt");
    let uncovered = vault.uncoveredDebt(id).block(block).call().await?;
    assert_eq!(uncovered, mirror.uncovered_debt(at), "{step}: uncovered debt");
    let refundable = vault.refundable(id).block(block).call().await?;
    assert_eq!(refundable, U256::from(mirror.refundable(at)), "{step}: refundable");
    let depletion = vault.depletionTime(id).block(block).call().await?;
    assert_eq!(depletion, U256::from(mirror.depletion_time(at)), "{step}: depletion time");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_mirror_equals_the_vault_to_the_base_unit() -> TestResult {
    let chain = TestChain::spawn().await?;
    let provider = chain.provider();
    let deployment = chain.deployment();
    let (payer, payee, operator) = (chain.account(3)?, chain.account(4)?, chain.account(5)?);
    let usdc = MockUSDC::new(deployment.usdc, provider);
    confirm(usdc.mint(payer, U256::from(10u128.pow(18))).send().await?).await?;
    confirm(usdc.approve(deployment.stream_vault, U256::MAX).from(payer).send().await?).await?;
    let vault = StreamVault::new(deployment.stream_vault, provider);

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut t =
        provider.get_block_by_number(Default::default()).await?.ok_or("no head")?.header.timestamp;
    let mut checked = 0;
    for round in 0..3 {
        // 1 USDC/s, then slow odd rates that leave fractions of a base unit most seconds.
        let rate: u128 = match round {
            0 => 1_000_000_000_000_000_000,
            _ => u128::from(rng.below(10_000_000_000_000)) + 1,
        };
        let deposit = u128::from(rng.below(1_000_000_000)) + 1;
        // The last stream is capped below its deposit, so the cap binds.
        let max_total = if round == 2 { deposit / 2 + 1 } else { 0 };
        t += 1;
        provider.anvil_set_next_block_timestamp(t).await?;
        let call = vault
            .open(
                payee,
                deployment.usdc,
                U96::from(rate),
                operator,
                U96::ZERO,
                U96::from(max_total),
                deposit,
            )
            .from(payer);
        let mut block = confirm(call.send().await?).await?;
        let id = vault.nextStreamId().call().await? - U256::from(1);
        let mut mirror =
            StreamState::opened(payer, payee, deployment.usdc, operator, 6, rate, 0, max_total, t)?;
        mirror.deposit(deposit)?;
        compare(&vault, id, &mirror, block, t, "open").await?;

        for step in 0..40 {
            t += 1 + rng.below(5_000);
            provider.anvil_set_next_block_timestamp(t).await?;
            let by_operator = rng.below(2) == 0;
            let name = match rng.below(7) {
                0 => {
                    let amount = u128::from(rng.below(100_000_000)) + 1;
                    block = confirm(vault.deposit(id, amount).from(payer).send().await?).await?;
                    mirror.deposit(amount)?;
                    "deposit"
                }
                1 => {
                    let available = mirror.covered_debt(t);
                    if available == 0 {
                        block = mine(provider).await?;
                        "wait"
                    } else {
                        let amount = u128::from(rng.below(u64::try_from(available)?)) + 1;
                        let from = if by_operator { operator } else { payee };
                        block =
                            confirm(vault.withdraw(id, amount).from(from).send().await?).await?;
                        mirror.withdraw(amount, t)?;
                        "withdraw"
                    }
                }
                2 => {
                    let available = mirror.refundable(t);
                    if available == 0 {
                        block = mine(provider).await?;
                        "wait"
                    } else {
                        let amount = u128::from(rng.below(u64::try_from(available)?)) + 1;
                        block = confirm(vault.refund(id, amount).from(payer).send().await?).await?;
                        mirror.refund(amount, t)?;
                        "refund"
                    }
                }
                3 => {
                    let from = if by_operator { operator } else { payer };
                    if mirror.paused {
                        block = confirm(vault.resume(id).from(from).send().await?).await?;
                        mirror.resume(t)?;
                        "resume"
                    } else {
                        block = confirm(vault.pause(id).from(from).send().await?).await?;
                        mirror.pause(t)?;
                        "pause"
                    }
                }
                4 => {
                    let rate = u128::from(rng.below(10_000_000_000_000)) + 1;
                    block =
                        confirm(vault.adjustRate(id, U96::from(rate)).from(payer).send().await?)
                            .await?;
                    mirror.adjust_rate(rate, t)?;
                    "adjust rate"
                }
                5 => {
                    let amount = mirror.covered_debt(t);
                    block =
                        confirm(vault.withdrawBatch(vec![id]).from(operator).send().await?).await?;
                    if amount > 0 {
                        mirror.withdraw(amount, t)?;
                    }
                    "batch withdraw"
                }
                _ => {
                    block = mine(provider).await?;
                    "wait"
                }
            };
            compare(&vault, id, &mirror, block, t, &format!("round {round} step {step} {name}"))
                .await?;
            checked += 1;
        }
        t += 1 + rng.below(5_000);
        provider.anvil_set_next_block_timestamp(t).await?;
        block = confirm(vault.close(id).from(operator).send().await?).await?;
        mirror.close(t)?;
        compare(&vault, id, &mirror, block, t, "close").await?;
    }
    assert_eq!(checked, 120);
    Ok(())
}

/// Waits until the node's stream index has applied `block`.
async fn indexed(node: &settled_tests::TestNode, block: u64) -> TestResult {
    let index = node.node()?.streams().ok_or("no stream index")?;
    for _ in 0..100 {
        if index.cursor().await?.is_some_and(|c| c.number >= block) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(format!("the stream index did not reach block {block}").into())
}

/// The node's index follows the vault's events: after each operation (and after a reorg that
/// removes one) the indexed stream equals the contract's, and its views at a later second equal
/// the contract's at that second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_indexes_streams_from_events_and_unwinds_reorgs() -> TestResult {
    let node = settled_tests::TestNode::spawn().await?;
    let chain = node.chain();
    let provider = chain.provider();
    let deployment = chain.deployment();
    let (payer, payee, operator) = (chain.account(3)?, chain.account(4)?, chain.account(5)?);
    let usdc = MockUSDC::new(deployment.usdc, provider);
    confirm(usdc.mint(payer, U256::from(10u128.pow(15))).send().await?).await?;
    confirm(usdc.approve(deployment.stream_vault, U256::MAX).from(payer).send().await?).await?;
    let vault = StreamVault::new(deployment.stream_vault, provider);
    let index = node.node()?.streams().ok_or("no stream index")?;

    let rate = 123_456_789_012u128; // slow and odd: fractions of a base unit accrue
    let open = vault
        .open(payee, deployment.usdc, U96::from(rate), operator, U96::ZERO, U96::ZERO, 5_000_000)
        .from(payer);
    let mut block = confirm(open.send().await?).await?;
    let id = vault.nextStreamId().call().await? - U256::from(1);
    for step in 0..6 {
        provider.anvil_increase_time(777).await?;
        block = match step {
            0 | 3 => confirm(vault.withdrawBatch(vec![id]).from(operator).send().await?).await?,
            1 => confirm(vault.pause(id).from(operator).send().await?).await?,
            2 => confirm(vault.resume(id).from(payer).send().await?).await?,
            4 => {
                confirm(vault.adjustRate(id, U96::from(rate / 3)).from(operator).send().await?)
                    .await?
            }
            _ => confirm(vault.refund(id, 1_000).from(payer).send().await?).await?,
        };
        indexed(&node, block).await?;
        let mirror = index.get(id.to::<u64>()).await?.ok_or("stream not indexed")?;
        let at =
            provider.get_block_by_number(block.into()).await?.ok_or("no block")?.header.timestamp;
        compare(&vault, id, &mirror, block, at, &format!("indexed step {step}")).await?;
    }

    // Reorg out the last operation: the index returns to the state before it.
    let before = {
        let parent = block - 1;
        vault.getStream(id).block(BlockId::number(parent)).call().await?
    };
    provider.raw_request::<_, ()>("anvil_reorg".into(), (1u64, Vec::<()>::new())).await?;
    let mut restored = false;
    for _ in 0..100 {
        let state = index.get(id.to::<u64>()).await?.ok_or("stream lost")?;
        if state.balance == before.balance.to::<u128>()
            && state.snapshot_time == u64::from(before.snapshotTime)
        {
            restored = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(restored, "the reorged-out refund was unwound");
    let head = provider.get_block_number().await?;
    indexed(&node, head).await?;
    let mirror = index.get(id.to::<u64>()).await?.ok_or("stream lost")?;
    let at = provider.get_block_by_number(head.into()).await?.ok_or("no block")?.header.timestamp;
    compare(&vault, id, &mirror, head, at, "after the reorg").await?;
    node.shutdown().await
}

/// The vendor's payee (dev account 4).
const PAYEE: alloy::primitives::Address =
    alloy::primitives::address!("0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65");

/// A node whose API key `vendor-token` sees [`PAYEE`]'s streams, operating them as dev account 5
/// (its key is Anvil's fixed mnemonic's), with `configure` applied after.
async fn vendor_node(
    configure: impl FnOnce(&mut settled_node::NodeConfig),
) -> TestResult<settled_tests::TestNode> {
    settled_tests::TestNode::spawn_operator(|config| {
        config.billing.api_keys = vec![settled_streams::ApiKey {
            name: "vendor".into(),
            keccak256: alloy::primitives::keccak256(b"vendor-token"),
            payees: vec![PAYEE],
            all: false,
        }];
        configure(config);
    })
    .await
}

/// A `stream_*` call with `token` as the bearer API key (none: no header).
async fn billing(
    node: &settled_tests::TestNode,
    token: Option<&str>,
    method: &str,
    params: serde_json::Value,
) -> TestResult<Result<serde_json::Value, (i64, String)>> {
    let body = serde_json::json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    let mut request =
        alloy::transports::http::reqwest::Client::new().post(node.node()?.rpc_url()).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response: serde_json::Value = request.send().await?.json().await?;
    Ok(match response.get("error") {
        Some(e) => Err((
            e["code"].as_i64().unwrap_or_default(),
            e["message"].as_str().unwrap_or_default().to_string(),
        )),
        None => Ok(response["result"].clone()),
    })
}

fn decimal(value: &serde_json::Value) -> TestResult<U256> {
    Ok(value.as_str().ok_or("not a decimal string")?.parse::<U256>()?)
}

/// The billing RPC's read side: API keys (missing, unknown, out of scope), exact balances now
/// and at a future second equal to the contract's at that second, pagination, bad input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_reads_exact_balances_behind_api_keys() -> TestResult {
    use settled_streams::{ApiKey, billing_codes as codes};
    // Anvil's dev account 4 (the mnemonic is fixed), the payee the vendor key may see.
    let payee = PAYEE;
    let keys = vec![
        ApiKey {
            name: "vendor".into(),
            keccak256: alloy::primitives::keccak256(b"vendor-token"),
            payees: vec![payee],
            all: false,
        },
        ApiKey {
            name: "other".into(),
            keccak256: alloy::primitives::keccak256(b"other-token"),
            payees: vec![alloy::primitives::Address::repeat_byte(9)],
            all: false,
        },
    ];
    let node = settled_tests::TestNode::spawn_with(Default::default(), |config| {
        config.billing.api_keys = keys;
    })
    .await?;
    let chain = node.chain();
    let provider = chain.provider();
    let deployment = chain.deployment();
    let (payer, operator) = (chain.account(3)?, chain.account(5)?);
    assert_eq!(chain.account(4)?, payee, "dev accounts are deterministic");
    let usdc = MockUSDC::new(deployment.usdc, provider);
    confirm(usdc.mint(payer, U256::from(10u128.pow(15))).send().await?).await?;
    confirm(usdc.approve(deployment.stream_vault, U256::MAX).from(payer).send().await?).await?;
    let vault = StreamVault::new(deployment.stream_vault, provider);
    let rate = 1_234_567_890_123u128;
    let mut ids = Vec::new();
    let mut block = 0;
    for deposit in [1_000_000u128, 2_000_000] {
        let open = vault
            .open(payee, deployment.usdc, U96::from(rate), operator, U96::ZERO, U96::ZERO, deposit)
            .from(payer);
        block = confirm(open.send().await?).await?;
        ids.push((vault.nextStreamId().call().await? - U256::from(1)).to::<u64>());
    }
    provider.anvil_increase_time(1_000).await?;
    block = mine(provider).await?.max(block);
    indexed(&node, block).await?;
    let id = ids[0].to_string();

    // Keys.
    for (token, code) in [
        (None, codes::UNAUTHORIZED),
        (Some("wrong"), codes::UNAUTHORIZED),
        (Some("other-token"), codes::FORBIDDEN),
    ] {
        let answer = billing(&node, token, "stream_get", serde_json::json!([id])).await?;
        assert_eq!(answer.err().map(|e| e.0), Some(i64::from(code)), "{token:?}");
    }

    // Now: equal to the contract at the indexed block.
    let view = billing(&node, Some("vendor-token"), "stream_get", serde_json::json!([id]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    let at_block = BlockId::number(block);
    let sid = U256::from(ids[0]);
    assert_eq!(decimal(&view["totalDebt"])?, vault.totalDebt(sid).block(at_block).call().await?);
    assert_eq!(
        decimal(&view["coveredDebt"])?,
        vault.coveredDebt(sid).block(at_block).call().await?
    );
    assert_eq!(decimal(&view["refundable"])?, vault.refundable(sid).block(at_block).call().await?);
    assert_eq!(view["rateScale"], serde_json::json!(18));
    assert_eq!(view["status"], serde_json::json!("active"));

    // A future second: computed by the node now, checked when the chain gets there.
    let now = provider.get_block_by_number(block.into()).await?.ok_or("no block")?.header.timestamp;
    let later = now + 86_400 * 3;
    let future =
        billing(&node, Some("vendor-token"), "stream_balanceAt", serde_json::json!([id, later]))
            .await?
            .map_err(|e| format!("{e:?}"))?;
    provider.anvil_set_next_block_timestamp(later).await?;
    let there = BlockId::number(mine(provider).await?);
    assert_eq!(decimal(&future["totalDebt"])?, vault.totalDebt(sid).block(there).call().await?);
    assert_eq!(decimal(&future["coveredDebt"])?, vault.coveredDebt(sid).block(there).call().await?);
    assert_eq!(
        decimal(&future["uncoveredDebt"])?,
        vault.uncoveredDebt(sid).block(there).call().await?
    );
    let depletion = vault.depletionTime(sid).block(at_block).call().await?;
    assert_eq!(view["depletionTime"].as_u64().map(U256::from), Some(depletion));

    // Pages of one.
    let first = billing(
        &node,
        Some("vendor-token"),
        "stream_list",
        serde_json::json!([{ "payee": payee, "limit": 1 }]),
    )
    .await?
    .map_err(|e| format!("{e:?}"))?;
    assert_eq!(first["streams"][0]["id"], serde_json::json!(ids[0].to_string()));
    let cursor = first["nextCursor"].clone();
    let second = billing(
        &node,
        Some("vendor-token"),
        "stream_list",
        serde_json::json!([{ "payee": payee, "limit": 1, "cursor": cursor }]),
    )
    .await?
    .map_err(|e| format!("{e:?}"))?;
    assert_eq!(second["streams"][0]["id"], serde_json::json!(ids[1].to_string()));
    assert_eq!(second["nextCursor"], serde_json::Value::Null);
    let hidden = billing(&node, Some("other-token"), "stream_list", serde_json::json!([]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(hidden["streams"], serde_json::json!([]), "out-of-scope streams are not listed");

    // Bad input.
    let invalid = i64::from(codes::INVALID_PARAMS);
    for (method, params) in [
        ("stream_get", serde_json::json!(["abc"])),
        ("stream_get", serde_json::json!(["999"])),
        ("stream_get", serde_json::json!([])),
        ("stream_balanceAt", serde_json::json!([id, now - 5_000])),
        ("stream_list", serde_json::json!([{ "limit": 0 }])),
        ("stream_list", serde_json::json!([{ "status": "sleeping" }])),
        ("stream_list", serde_json::json!([{ "surprise": 1 }])),
    ] {
        let answer = billing(&node, Some("vendor-token"), method, params.clone()).await?;
        assert_eq!(answer.err().map(|e| e.0), Some(invalid), "{method} {params}");
    }
    node.shutdown().await
}

/// The billing RPC's write side: the node, as the stream's operator, pauses, resumes, lowers the
/// rate, withdraws to the payee and closes; an idempotent retry returns the first result without
/// sending again, a reused key with other parameters is refused, and raising the rate is left to
/// the payer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_operates_streams_idempotently() -> TestResult {
    use serde_json::json;
    use settled_streams::billing_codes as codes;
    let payee = PAYEE;
    let node = vendor_node(|_| {}).await?;
    let chain = node.chain();
    let provider = chain.provider();
    let deployment = chain.deployment();
    let (payer, operator) = (chain.account(3)?, chain.account(5)?);
    let usdc = MockUSDC::new(deployment.usdc, provider);
    confirm(usdc.mint(payer, U256::from(10u128.pow(15))).send().await?).await?;
    confirm(usdc.approve(deployment.stream_vault, U256::MAX).from(payer).send().await?).await?;
    let vault = StreamVault::new(deployment.stream_vault, provider);
    let rate = 1_000_000_000_000_000_000u128; // 1 USDC/s
    let open = vault
        .open(payee, deployment.usdc, U96::from(rate), operator, U96::ZERO, U96::ZERO, 500_000_000)
        .from(payer);
    let block = confirm(open.send().await?).await?;
    indexed(&node, block).await?;
    let id = (vault.nextStreamId().call().await? - U256::from(1)).to::<u64>().to_string();
    let sid = U256::from(id.parse::<u64>()?);
    let token = Some("vendor-token");
    let call = |method: &'static str, params: serde_json::Value| {
        billing(&node, token, method, json!([params]))
    };

    let paused = call("stream_pause", json!({ "streamId": id, "idempotencyKey": "p-1" }))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    assert!(vault.getStream(sid).call().await?.flags & 1 != 0, "paused on chain");
    let head = provider.get_block_number().await?;
    let again = call("stream_pause", json!({ "streamId": id, "idempotencyKey": "p-1" }))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(again, paused, "a retry returns the first result");
    assert_eq!(provider.get_block_number().await?, head, "and sends nothing");
    let reused = call("stream_resume", json!({ "streamId": id, "idempotencyKey": "p-1" })).await?;
    assert_eq!(
        reused.err().map(|e| e.0),
        Some(i64::from(codes::INVALID_PARAMS)),
        "reused key, other params"
    );

    // Two resumes race (#20 item 8): both pass the vault's check while nothing is mined, both
    // are sent, one reverts on chain. Its caller learns why, decoded, not raw revert bytes.
    provider.anvil_set_auto_mine(false).await?;
    let mine_later = async {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        provider.anvil_mine(Some(1), None).await
    };
    let (first, second, mined) = tokio::join!(
        call("stream_resume", json!({ "streamId": id, "idempotencyKey": "r-1" })),
        call("stream_resume", json!({ "streamId": id, "idempotencyKey": "r-2" })),
        mine_later,
    );
    mined?;
    provider.anvil_set_auto_mine(true).await?;
    let (resumed, lost) = match (first?, second?) {
        (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
        other => return Err(format!("expected one winner and one loser: {other:?}").into()),
    };
    assert_eq!(lost.0, i64::from(codes::INVALID_PARAMS), "{lost:?}");
    assert!(lost.1.contains("StreamNotPaused"), "the loser's reason, decoded: {lost:?}");
    indexed(&node, resumed["blockNumber"].as_u64().ok_or("no block")?).await?;
    let raise = call(
        "stream_adjustRate",
        json!({ "streamId": id, "idempotencyKey": "a-1", "ratePerSecond": "2000000000000000000" }),
    )
    .await?;
    let (code, message) = raise.err().ok_or("the operator raised the rate")?;
    assert_eq!(code, i64::from(codes::INVALID_PARAMS));
    assert!(message.contains("payer"), "{message}");
    call(
        "stream_adjustRate",
        json!({ "streamId": id, "idempotencyKey": "a-2", "ratePerSecond": "500000000000000000" }),
    )
    .await?
    .map_err(|e| format!("{e:?}"))?;
    assert_eq!(vault.getStream(sid).call().await?.ratePerSecond.to::<u128>(), rate / 2);

    provider.anvil_increase_time(100).await?;
    let mined = mine(provider).await?;
    indexed(&node, mined).await?;
    let before = usdc.balanceOf(payee).call().await?;
    let withdrew = call("stream_withdraw", json!({ "streamId": id, "idempotencyKey": "w-1" }))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    let paid = usdc.balanceOf(payee).call().await? - before;
    assert!(paid > U256::ZERO, "the payee was paid what was covered");
    let at = BlockId::number(withdrew["blockNumber"].as_u64().ok_or("no block")?);
    assert_eq!(
        vault.coveredDebt(sid).block(at).call().await?,
        U256::ZERO,
        "everything covered was withdrawn"
    );
    let too_much = call(
        "stream_withdraw",
        json!({ "streamId": id, "idempotencyKey": "w-2", "amount": "999999999999" }),
    )
    .await?;
    assert_eq!(too_much.err().map(|e| e.0), Some(i64::from(codes::INVALID_PARAMS)));

    let closed = call("stream_close", json!({ "streamId": id, "idempotencyKey": "c-1" }))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    assert!(vault.getStream(sid).call().await?.flags & 2 != 0, "closed on chain");
    assert_eq!(
        call("stream_close", json!({ "streamId": id, "idempotencyKey": "c-1" }))
            .await?
            .map_err(|e| format!("{e:?}"))?,
        closed
    );
    indexed(&node, closed["blockNumber"].as_u64().ok_or("no block")?).await?;
    let view =
        billing(&node, token, "stream_get", json!([id])).await?.map_err(|e| format!("{e:?}"))?;
    assert_eq!(view["status"], json!("closed"));

    for (params, code) in [
        (json!({ "streamId": id, "idempotencyKey": "" }), codes::INVALID_PARAMS),
        (json!({ "streamId": "x", "idempotencyKey": "k" }), codes::INVALID_PARAMS),
        (json!({ "streamId": id }), codes::INVALID_PARAMS),
        (json!({ "streamId": id, "idempotencyKey": "z-1" }), codes::INVALID_PARAMS), // closed
    ] {
        let answer = call("stream_pause", params.clone()).await?;
        assert_eq!(answer.err().map(|e| e.0), Some(i64::from(code)), "{params}");
    }
    let anonymous =
        billing(&node, None, "stream_pause", json!([{ "streamId": id, "idempotencyKey": "n-1" }]))
            .await?;
    assert_eq!(anonymous.err().map(|e| e.0), Some(i64::from(codes::UNAUTHORIZED)));
    node.shutdown().await
}

/// `stream_open`: a zero-ETH customer's SimpleAccount (not yet deployed) opens a stream through
/// an op the node prepares — estimated by its bundler, sponsored by its paymaster — and sends
/// through the node's bundler; a retry with the same idempotency key gets the same op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_eth_customer_opens_a_stream_through_a_sponsored_op() -> TestResult {
    use serde_json::json;
    use settled_contracts::{EntryPointVersion, PackedUserOperation, UserOperation};
    use settled_paymaster::{AllowedCall, SponsorshipPolicy};
    let payee = PAYEE;
    let node = vendor_node(|_| {}).await?;
    let chain = node.chain();
    let provider = chain.provider();
    let deployment = chain.deployment();
    let url = node.node()?.rpc_url();
    let policy = SponsorshipPolicy {
        allowed_calls: vec![
            AllowedCall {
                target: deployment.usdc,
                selectors: vec![[0x09, 0x5e, 0xa7, 0xb3].into()],
            },
            AllowedCall { target: deployment.stream_vault, selectors: vec![] },
        ],
        ..SponsorshipPolicy::unlimited("streams")
    };
    settled_tests::rpc::call_url(&url, "paymaster_setPolicy", json!([policy]))
        .await?
        .map_err(|e| format!("{e:?}"))?;

    let version = EntryPointVersion::V08;
    let owner = alloy::signers::local::PrivateKeySigner::random();
    let (account, init_code) = chain.simple_account(version, owner.address()).await?;
    let usdc = MockUSDC::new(deployment.usdc, provider);
    confirm(usdc.mint(account, U256::from(50_000_000u64)).send().await?).await?;
    let request = json!({
        "payer": account,
        "payee": payee,
        "token": deployment.usdc,
        "ratePerSecond": "10000000000000000",
        "deposit": "30000000",
        "entryPoint": version.canonical_address(),
        "factory": alloy::primitives::Bytes::copy_from_slice(&init_code[..20]),
        "factoryData": alloy::primitives::Bytes::copy_from_slice(&init_code[20..]),
        "sponsorshipPolicy": "streams",
        "idempotencyKey": "open-1",
    });
    let prepared = billing(&node, Some("vendor-token"), "stream_open", json!([request]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    let again = billing(&node, Some("vendor-token"), "stream_open", json!([request]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(again, prepared, "a retry gets the same op");
    let mut changed = request.clone();
    changed["deposit"] = json!("1");
    let reused = billing(&node, Some("vendor-token"), "stream_open", json!([changed])).await?;
    assert_eq!(reused.err().map(|e| e.0), Some(-32602));

    // The wallet signs the prepared op and sends it; the node indexes its block.
    let sign_and_send = async |prepared: &serde_json::Value| -> TestResult {
        let op: UserOperation = serde_json::from_value(prepared["userOperation"].clone())?;
        let mut packed: PackedUserOperation = op.pack()?;
        packed.signature = chain.sign_op(version, &owner, &packed).await?;
        let hash = settled_tests::rpc::send_at(&url, version, &packed)
            .await?
            .map_err(|e| format!("send: {e:?}"))?;
        assert_eq!(hash, prepared["userOpHash"]);
        let receipt =
            settled_tests::rpc::wait_for_receipt_at(&url, serde_json::from_value(hash)?).await?;
        assert_eq!(receipt["success"], json!(true), "{receipt}");
        let block = receipt["receipt"]["blockNumber"].as_str().ok_or("no block")?;
        indexed(&node, u64::from_str_radix(block.trim_start_matches("0x"), 16)?).await
    };
    sign_and_send(&prepared).await?;
    assert_eq!(provider.get_balance(account).await?, U256::ZERO, "the customer never held ETH");
    let list = billing(&node, Some("vendor-token"), "stream_list", json!([{ "payer": account }]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    let stream = &list["streams"][0];
    assert_eq!(stream["balance"], json!("30000000"));
    assert_eq!(stream["ratePerSecond"], json!("10000000000000000"));
    assert_eq!(stream["status"], json!("active"));

    // The customer tops the stream up the same way, still without ETH.
    let top_up = json!({
        "streamId": stream["id"],
        "amount": "5000000",
        "entryPoint": version.canonical_address(),
        "sponsorshipPolicy": "streams",
        "idempotencyKey": "top-up-1",
    });
    let prepared = billing(&node, Some("vendor-token"), "stream_topUp", json!([top_up]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    sign_and_send(&prepared).await?;
    let view = billing(&node, Some("vendor-token"), "stream_get", json!([stream["id"]]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(view["balance"], json!("35000000"));
    assert_eq!(provider.get_balance(account).await?, U256::ZERO);
    node.shutdown().await
}

/// `stream_subscribe` over WebSocket: a key sees its streams' changes and the `lowBalance` and
/// `depleted` alerts as time passes; a missing key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depletion_alerts_arrive_over_websocket() -> TestResult {
    use jsonrpsee::{
        core::client::{Subscription, SubscriptionClientT},
        rpc_params,
        ws_client::{HeaderMap, HeaderValue, WsClientBuilder},
    };
    use settled_streams::{AlertThresholds, NoticeKind, StreamNotice};
    let payee = PAYEE;
    let node = vendor_node(|config| {
        config.billing.alerts = AlertThresholds { low_balance_secs: 60 };
    })
    .await?;
    let ws_url = format!("ws://{}", node.node()?.rpc_addr());
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Bearer vendor-token"));
    let client = WsClientBuilder::default().set_headers(headers).build(&ws_url).await?;
    let mut notices: Subscription<StreamNotice> =
        client.subscribe("stream_subscribe", rpc_params![], "stream_unsubscribe").await?;
    let anonymous = WsClientBuilder::default().build(&ws_url).await?;
    let refused: Result<Subscription<StreamNotice>, _> =
        anonymous.subscribe("stream_subscribe", rpc_params![], "stream_unsubscribe").await;
    assert!(refused.is_err(), "a subscription without a key is refused");

    let chain = node.chain();
    let provider = chain.provider();
    let deployment = chain.deployment();
    let (payer, operator) = (chain.account(3)?, chain.account(5)?);
    let usdc = MockUSDC::new(deployment.usdc, provider);
    confirm(usdc.mint(payer, U256::from(10u128.pow(12))).send().await?).await?;
    confirm(usdc.approve(deployment.stream_vault, U256::MAX).from(payer).send().await?).await?;
    let vault = StreamVault::new(deployment.stream_vault, provider);
    // 1 USDC/s with 100 USDC: 100 s of runway.
    let open = vault
        .open(
            payee,
            deployment.usdc,
            U96::from(10u128.pow(18)),
            operator,
            U96::ZERO,
            U96::ZERO,
            100_000_000,
        )
        .from(payer);
    confirm(open.send().await?).await?;

    let mut next = async || -> TestResult<StreamNotice> {
        let notice = tokio::time::timeout(std::time::Duration::from_secs(10), notices.next())
            .await?
            .ok_or("subscription ended")??;
        Ok(notice)
    };
    let opened = next().await?;
    assert_eq!(opened.kind, NoticeKind::Changed);
    assert_eq!(opened.stream.balance, "100000000");

    provider.anvil_increase_time(50).await?;
    mine(provider).await?;
    let low = next().await?;
    assert_eq!(low.kind, NoticeKind::LowBalance, "{low:?}");

    provider.anvil_increase_time(100).await?;
    mine(provider).await?;
    let depleted = next().await?;
    assert_eq!(depleted.kind, NoticeKind::Depleted, "{depleted:?}");
    assert_eq!(depleted.stream.covered_debt, "100000000");
    assert_ne!(depleted.stream.uncovered_debt, "0");
    node.shutdown().await
}

/// The whole story a billing backend runs, on one stream, in order: it opens a stream for a
/// zero-ETH customer SimpleAccount (v0.7) through a sponsored op; time moves; the node pauses and
/// resumes it (accrual stops, then restarts); the balance runs low, then out, and `lowBalance`
/// then `depleted` arrive over WebSocket; the customer tops up; the node withdraws to the payee; the
/// customer refunds the surplus and closes. After every step `stream_balanceAt` equals the
/// vault's views at that block to the base unit — and again at the end, for every earlier step,
/// from the node's history. Missing and unknown keys are refused; a retried open makes one
/// stream; every token moved is accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billing_backend_runs_a_stream_from_open_to_close() -> TestResult {
    use alloy::primitives::Bytes;
    use alloy::sol_types::SolCall;
    use jsonrpsee::{
        core::client::{Subscription, SubscriptionClientT},
        rpc_params,
        ws_client::{HeaderMap, HeaderValue, WsClientBuilder},
    };
    use serde_json::json;
    use settled_contracts::{EntryPointVersion, PackedUserOperation, UserOperation, v07};
    use settled_paymaster::{AllowedCall, SponsorshipPolicy};
    use settled_streams::{AlertThresholds, NoticeKind, StreamNotice, billing_codes as codes};
    use settled_tests::rpc::{call_url, send_at, sponsor, wait_for_receipt_at};
    const USDC: u128 = 1_000_000;
    let payee = PAYEE;
    let node = vendor_node(|config| {
        config.billing.alerts = AlertThresholds { low_balance_secs: 60 };
    })
    .await?;
    let chain = node.chain();
    let provider = chain.provider();
    let deployment = chain.deployment();
    let url = node.node()?.rpc_url().to_string();
    let chain_id = provider.get_chain_id().await?;
    let key = Some("vendor-token");
    let policy = SponsorshipPolicy {
        allowed_calls: vec![
            AllowedCall {
                target: deployment.usdc,
                selectors: vec![[0x09, 0x5e, 0xa7, 0xb3].into()],
            },
            AllowedCall { target: deployment.stream_vault, selectors: vec![] },
        ],
        ..SponsorshipPolicy::unlimited("streams")
    };
    call_url(&url, "paymaster_setPolicy", json!([policy])).await?.map_err(|e| format!("{e:?}"))?;

    // The backend listens for its streams' notices.
    let ws_url = format!("ws://{}", node.node()?.rpc_addr());
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Bearer vendor-token"));
    let client = WsClientBuilder::default().set_headers(headers).build(&ws_url).await?;
    let mut notices: Subscription<StreamNotice> =
        client.subscribe("stream_subscribe", rpc_params![], "stream_unsubscribe").await?;

    // A customer with USDC and no ETH, whose account does not exist yet.
    let version = EntryPointVersion::V07;
    let owner = alloy::signers::local::PrivateKeySigner::random();
    let (account, init_code) = chain.simple_account(version, owner.address()).await?;
    let usdc = MockUSDC::new(deployment.usdc, provider);
    let minted = U256::from(1_000 * USDC);
    confirm(usdc.mint(account, minted).send().await?).await?;
    let payee_before = usdc.balanceOf(payee).call().await?;
    let vault = StreamVault::new(deployment.stream_vault, provider);

    // The wallet signs a prepared or sponsored op and sends it; the node indexes its block.
    let sign_and_send = async |mut op: PackedUserOperation| -> TestResult<u64> {
        op.signature = chain.sign_op(version, &owner, &op).await?;
        let hash = send_at(&url, version, &op).await?.map_err(|e| format!("send: {e:?}"))?;
        let receipt = wait_for_receipt_at(&url, serde_json::from_value(hash)?).await?;
        assert_eq!(receipt["success"], json!(true), "{receipt}");
        let block = receipt["receipt"]["blockNumber"].as_str().ok_or("no block")?;
        let block = u64::from_str_radix(block.trim_start_matches("0x"), 16)?;
        indexed(&node, block).await?;
        Ok(block)
    };
    let prepared_op = |prepared: &serde_json::Value| -> TestResult<PackedUserOperation> {
        let op: UserOperation = serde_json::from_value(prepared["userOperation"].clone())?;
        Ok(op.pack()?)
    };
    // Every step's (block, second), checked again at the end from the node's history.
    let mut steps: Vec<(String, u64, u64)> = Vec::new();
    let check = async |id: U256, block: u64, step: &str| -> TestResult<(u64, serde_json::Value)> {
        indexed(&node, block).await?;
        let at =
            provider.get_block_by_number(block.into()).await?.ok_or("no block")?.header.timestamp;
        let view = billing(&node, key, "stream_balanceAt", json!([id.to_string(), at]))
            .await?
            .map_err(|e| format!("{step}: {e:?}"))?;
        let on_chain = BlockId::number(block);
        let stored = vault.getStream(id).block(on_chain).call().await?;
        assert_eq!(decimal(&view["balance"])?, U256::from(stored.balance), "{step}: balance");
        assert_eq!(
            decimal(&view["ratePerSecond"])?,
            stored.ratePerSecond.to::<U256>(),
            "{step}: rate"
        );
        for (field, value) in [
            ("totalDebt", vault.totalDebt(id).block(on_chain).call().await?),
            ("coveredDebt", vault.coveredDebt(id).block(on_chain).call().await?),
            ("uncoveredDebt", vault.uncoveredDebt(id).block(on_chain).call().await?),
            ("refundable", vault.refundable(id).block(on_chain).call().await?),
        ] {
            assert_eq!(decimal(&view[field])?, value, "{step}: {field}");
        }
        let depletion = vault.depletionTime(id).block(on_chain).call().await?;
        let never = U256::from(u64::from(u32::MAX) << 8 | 0xff); // type(uint40).max
        assert_eq!(
            view["depletionTime"].as_u64().map_or(never, U256::from),
            depletion,
            "{step}: depletion time"
        );
        Ok((at, view))
    };

    // Without a key, or with an unknown one, nothing is prepared.
    let open_request = json!({
        "payer": account,
        "payee": payee,
        "token": deployment.usdc,
        "ratePerSecond": (USDC * 10u128.pow(12)).to_string(), // 1 USDC/s
        "deposit": (100 * USDC).to_string(),
        "entryPoint": version.canonical_address(),
        "factory": Bytes::copy_from_slice(&init_code[..20]),
        "factoryData": Bytes::copy_from_slice(&init_code[20..]),
        "sponsorshipPolicy": "streams",
        "idempotencyKey": "story-open",
    });
    for token in [None, Some("not-a-key")] {
        let refused = billing(&node, token, "stream_open", json!([open_request])).await?;
        assert_eq!(refused.err().map(|e| e.0), Some(i64::from(codes::UNAUTHORIZED)));
    }

    // 1. Open: a retry returns the same op, sent once; one stream results.
    let prepared = billing(&node, key, "stream_open", json!([open_request]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    let retried = billing(&node, key, "stream_open", json!([open_request]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(retried, prepared);
    let block = sign_and_send(prepared_op(&prepared)?).await?;
    let after_mined = billing(&node, key, "stream_open", json!([open_request]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(after_mined, prepared, "a retry after inclusion still gets the first op");
    let list = billing(&node, key, "stream_list", json!([{ "payer": account }]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(list["streams"].as_array().map(Vec::len), Some(1), "one stream: {list}");
    let id_text = list["streams"][0]["id"].as_str().ok_or("no id")?.to_string();
    let id = U256::from(id_text.parse::<u64>()?);
    assert_eq!(provider.get_balance(account).await?, U256::ZERO, "the customer holds no ETH");
    let (at, _) = check(id, block, "opened").await?;
    steps.push(("opened".into(), block, at));

    // 2. Time passes: 30 s accrue.
    provider.anvil_increase_time(30).await?;
    let block = mine(provider).await?;
    let (at, _) = check(id, block, "30 s later").await?;
    steps.push(("30 s later".into(), block, at));

    // 3. The backend pauses (the customer stopped using the service): accrual stops.
    let operate = async |method: &str, params: serde_json::Value| -> TestResult<u64> {
        let receipt =
            billing(&node, key, method, json!([params])).await?.map_err(|e| format!("{e:?}"))?;
        let block = receipt["blockNumber"].as_u64().ok_or("no block")?;
        indexed(&node, block).await?;
        Ok(block)
    };
    let block =
        operate("stream_pause", json!({ "streamId": id_text, "idempotencyKey": "p" })).await?;
    let (paused_at, paused) = check(id, block, "paused").await?;
    steps.push(("paused".into(), block, paused_at));
    provider.anvil_increase_time(20).await?;
    let block = mine(provider).await?;
    let (at, still) = check(id, block, "20 s paused").await?;
    steps.push(("20 s paused".into(), block, at));
    assert_eq!(still["totalDebt"], paused["totalDebt"], "no accrual while paused");
    assert_eq!(still["status"], json!("paused"));

    // 4. Resumed: accrual restarts at 1 USDC/s; 20 s later less than the 60 s of runway the
    //    alert threshold asks for is left: lowBalance.
    let block =
        operate("stream_resume", json!({ "streamId": id_text, "idempotencyKey": "r" })).await?;
    let (resumed_at, resumed) = check(id, block, "resumed").await?;
    steps.push(("resumed".into(), block, resumed_at));
    provider.anvil_increase_time(20).await?;
    let block = mine(provider).await?;
    let (at, running) = check(id, block, "20 s after resuming").await?;
    steps.push(("20 s after resuming".into(), block, at));
    assert_eq!(
        decimal(&running["totalDebt"])? - decimal(&resumed["totalDebt"])?,
        U256::from(u128::from(at - resumed_at) * USDC),
        "accrual restarted at the rate"
    );

    let mut kinds = Vec::new();
    let mut until = async |kind: NoticeKind| -> TestResult {
        while kinds.last() != Some(&kind) {
            let notice = tokio::time::timeout(std::time::Duration::from_secs(10), notices.next())
                .await
                .map_err(|_| format!("no {kind:?} alert; notices so far: {kinds:?}"))?
                .ok_or("subscription ended")??;
            assert_eq!(notice.stream.id, id_text, "only this key's stream");
            kinds.push(notice.kind);
        }
        Ok(())
    };
    until(NoticeKind::LowBalance).await?;

    // 5. The balance runs out: depleted, over WebSocket.
    provider.anvil_increase_time(100).await?;
    let block = mine(provider).await?;
    let (at, depleted_view) = check(id, block, "depleted").await?;
    steps.push(("depleted".into(), block, at));
    assert_ne!(depleted_view["uncoveredDebt"], json!("0"));
    until(NoticeKind::Depleted).await?;

    // 6. The customer tops up, sponsored again: the uncovered debt is covered.
    let top_up = json!({
        "streamId": id_text,
        "amount": (200 * USDC).to_string(),
        "entryPoint": version.canonical_address(),
        "sponsorshipPolicy": "streams",
        "idempotencyKey": "story-top-up",
    });
    let prepared = billing(&node, key, "stream_topUp", json!([top_up]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    let block = sign_and_send(prepared_op(&prepared)?).await?;
    let (at, topped) = check(id, block, "topped up").await?;
    steps.push(("topped up".into(), block, at));
    assert_eq!(topped["uncoveredDebt"], json!("0"));

    // 7. The node withdraws everything covered to the payee.
    let block =
        operate("stream_withdraw", json!({ "streamId": id_text, "idempotencyKey": "w" })).await?;
    let (at, withdrawn) = check(id, block, "withdrawn").await?;
    steps.push(("withdrawn".into(), block, at));
    assert_eq!(
        usdc.balanceOf(payee).call().await? - payee_before,
        decimal(&withdrawn["withdrawn"])?,
        "the payee received exactly what the stream paid"
    );

    // 8. The customer refunds most of the surplus and closes, in one sponsored op of its own
    //    (60 s of margin: the op lands a few seconds later).
    let refund = (decimal(&withdrawn["refundable"])? - U256::from(60 * USDC)).to::<u128>();
    let calls = [
        StreamVault::refundCall { streamId: id, amount: refund }.abi_encode(),
        StreamVault::closeCall { streamId: id }.abi_encode(),
    ];
    let call_data: Bytes = v07::SimpleAccount::executeBatchCall {
        dest: vec![deployment.stream_vault; 2],
        value: vec![],
        func: calls.into_iter().map(Bytes::from).collect(),
    }
    .abi_encode()
    .into();
    let nonce = v07::IEntryPoint::new(version.canonical_address(), provider)
        .getNonce(account, alloy::primitives::aliases::U192::ZERO)
        .call()
        .await?;
    let op = settled_tests::unestimated_op(account, nonce.to(), Bytes::new(), call_data);
    let op = sponsor(&url, chain_id, version, op, "streams").await?;
    let block = sign_and_send(op).await?;
    let (at, closed) = check(id, block, "refunded and closed").await?;
    steps.push(("refunded and closed".into(), block, at));
    assert_eq!(closed["status"], json!("closed"));
    assert_eq!(closed["balance"], json!("0"));

    // Every token is accounted for: deposits = paid to the payee + refunded to the customer.
    let paid = usdc.balanceOf(payee).call().await? - payee_before;
    assert_eq!(paid, decimal(&closed["withdrawn"])?);
    let refunded = usdc.balanceOf(account).call().await? - (minted - U256::from(300 * USDC));
    assert_eq!(paid + refunded, U256::from(300 * USDC));
    assert!(refunded > U256::from(refund), "close refunded the rest of the surplus");
    assert_eq!(provider.get_balance(account).await?, U256::ZERO, "still no ETH");

    // Every earlier step again, from the node's history: still equal to the chain then. A
    // second is the state after its last block (Anvil may give two blocks the same second; the
    // later one is then checked as its own step).
    for (i, (step, block, at)) in steps.iter().enumerate() {
        if steps.get(i + 1).is_some_and(|(_, _, next)| next == at) {
            continue;
        }
        let (again, _) = check(id, *block, &format!("{step}, from history")).await?;
        assert_eq!(again, *at);
    }
    node.shutdown().await
}

/// `stream_open` with `signedTerms`: a customer with USDC, no ETH and no smart account signs the
/// terms `stream_openTerms` gives (EIP-712) and a permit of the deposit; the node sends
/// `openFor`, pays the gas, and answers with the stream. A retry is answered with the same
/// stream; tampered terms, a replayed nonce and a missing key are refused with nothing moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_with_only_tokens_opens_a_stream_by_signature() -> TestResult {
    use alloy::signers::SignerSync;
    use alloy_dyn_abi::TypedData;
    use serde_json::json;
    use settled_streams::billing_codes as codes;
    let payee = PAYEE;
    let node = vendor_node(|_| {}).await?;
    let chain = node.chain();
    let provider = chain.provider();
    let deployment = chain.deployment();
    let key = Some("vendor-token");
    let customer = alloy::signers::local::PrivateKeySigner::random();
    let usdc = MockUSDC::new(deployment.usdc, provider);
    confirm(usdc.mint(customer.address(), U256::from(500_000_000u64)).send().await?).await?;
    let vault = StreamVault::new(deployment.stream_vault, provider);

    let now =
        provider.get_block_by_number(Default::default()).await?.ok_or("no head")?.header.timestamp;
    let terms_request = json!({
        "payer": customer.address(),
        "payee": payee,
        "token": deployment.usdc,
        "ratePerSecond": "1000000000000000000",
        "deposit": "100000000",
        "deadline": now + 3_600,
    });
    let refused = billing(&node, None, "stream_openTerms", json!([terms_request])).await?;
    assert_eq!(refused.err().map(|e| e.0), Some(i64::from(codes::UNAUTHORIZED)));
    let answer = billing(&node, key, "stream_openTerms", json!([terms_request]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(answer["terms"]["operator"], json!(chain.account(5)?), "the node operates it");
    assert_eq!(answer["terms"]["nonce"], json!("0"));

    // What a wallet signs from the typed data is the digest the node gives, and the vault's.
    let digest = |name: &str| -> TestResult<alloy::primitives::B256> {
        Ok(serde_json::from_value(answer[name].clone())?)
    };
    for (typed, digest_name) in
        [("termsTypedData", "termsDigest"), ("permitTypedData", "permitDigest")]
    {
        let typed: TypedData = serde_json::from_value(answer[typed].clone())?;
        assert_eq!(typed.eip712_signing_hash()?, digest(digest_name)?, "{digest_name}");
    }
    let terms = StreamVault::OpenTerms {
        payee,
        token: deployment.usdc,
        ratePerSecond: U96::from(10u128.pow(18)),
        operator: chain.account(5)?,
        maxRate: U96::ZERO,
        maxTotal: U96::ZERO,
        amount: 100_000_000,
        nonce: U256::ZERO,
        deadline: U256::from(now + 3_600),
    };
    assert_eq!(vault.openTermsDigest(terms).call().await?, digest("termsDigest")?);

    let sign = |name: &str| -> TestResult<alloy::primitives::Bytes> {
        Ok(customer.sign_hash_sync(&digest(name)?)?.as_bytes().to_vec().into())
    };
    let mut request = terms_request.clone();
    let object = request.as_object_mut().ok_or("not an object")?;
    object.remove("deadline");
    object.insert("idempotencyKey".into(), json!("signed-1"));
    object.insert(
        "signedTerms".into(),
        json!({
            "nonce": "0",
            "deadline": now + 3_600,
            "signature": sign("termsDigest")?,
            "permitSignature": sign("permitDigest")?,
        }),
    );
    let opened = billing(&node, key, "stream_open", json!([request]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    let again = billing(&node, key, "stream_open", json!([request]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(again, opened, "a retry is answered with the same stream");
    let id = opened["streamId"].as_str().ok_or("no stream id")?;
    let view =
        billing(&node, key, "stream_get", json!([id])).await?.map_err(|e| format!("{e:?}"))?;
    assert_eq!(view["payer"], json!(customer.address()));
    assert_eq!(view["balance"], json!("100000000"));
    assert_eq!(usdc.balanceOf(customer.address()).call().await?, U256::from(400_000_000u64));
    assert_eq!(provider.get_balance(customer.address()).await?, U256::ZERO, "no ETH, ever");

    // Refused with the vault's reason, nothing sent: a replayed nonce, tampered terms.
    let mut replayed = request.clone();
    replayed["idempotencyKey"] = json!("signed-2");
    let mut tampered = replayed.clone();
    tampered["idempotencyKey"] = json!("signed-3");
    tampered["ratePerSecond"] = json!("2000000000000000000");
    tampered["signedTerms"]["nonce"] = json!("1");
    let before = provider.get_transaction_count(chain.account(5)?).await?;
    for (params, reason) in [(replayed, "WrongNonce"), (tampered, "BadTermsSignature")] {
        let answer = billing(&node, key, "stream_open", json!([params])).await?;
        let (code, message) = answer.err().ok_or(format!("{reason}: accepted"))?;
        assert_eq!(code, i64::from(codes::INVALID_PARAMS), "{message}");
        assert!(message.contains(reason), "{reason}: {message}");
    }
    assert_eq!(provider.get_transaction_count(chain.account(5)?).await?, before, "nothing sent");
    node.shutdown().await
}
