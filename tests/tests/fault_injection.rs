//! Fault injection (#20): `settled run` (the binary) is killed with SIGKILL at randomized moments
//! of a flow, restarted on the same datadir, and the flow is finished; then the chain is the
//! judge: nothing the node acknowledged is lost, nothing is sent twice.
//!
//! Kill moments come from a seeded generator: `SETTLED_FAULT_SEED=<n>` replays a run; each test
//! prints its seed and its kill points. Areas: (a) an op from acceptance through bundling to
//! inclusion, (b) a billing operator call retried with the same idempotency key, (c) a
//! settlement round (withdrawals, batch, blob commit), (d) a paymaster sponsorship (reservation,
//! signature) of an op then mined.

use std::time::Duration;

use alloy::{
    primitives::{Address, B256, U256, keccak256},
    providers::Provider,
    rpc::types::Filter,
    signers::local::PrivateKeySigner,
    sol_types::SolEvent,
};
use serde_json::{Value, json};
use settled_contracts::{AnvilOptions, EntryPointVersion};
use settled_tests::{
    BUNDLER_ACCOUNT, SettledProcess, TestChain, TestResult,
    rpc::{call_url, creation_op, send_at, with_estimated_limits},
    unestimated_op,
};

/// Kill points per area (the issue asks for at least 20).
const ROUNDS: usize = 20;

/// `n` kill delays in `0..max_ms`, from the seed in `SETTLED_FAULT_SEED` or the clock; printed.
fn kill_points(area: &str, n: usize, max_ms: u64) -> Vec<u64> {
    let seed = std::env::var("SETTLED_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        .max(1);
    let mut state = seed;
    let points: Vec<u64> = (0..n)
        .map(|_| {
            // xorshift64: enough to spread kill moments, replayable from the seed.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % max_ms
        })
        .collect();
    eprintln!("{area}: SETTLED_FAULT_SEED={seed} kill points (ms) {points:?}");
    points
}

/// The transactions `address` has sent (its nonce).
async fn sent(chain: &TestChain, address: Address) -> TestResult<u64> {
    Ok(chain.provider().get_transaction_count(address).await?)
}

/// How many times the EntryPoint emitted `UserOperationEvent` for `hash`.
async fn inclusions(
    chain: &TestChain,
    version: EntryPointVersion,
    hash: B256,
) -> TestResult<usize> {
    let filter = Filter::new()
        .address(version.canonical_address())
        .event_signature(settled_contracts::v07::EntryPoint::UserOperationEvent::SIGNATURE_HASH)
        .topic1(hash)
        .from_block(0);
    Ok(chain.provider().get_logs(&filter).await?.len())
}

/// Bundles until `hash` has a receipt (the node may have lost nothing and sent it already).
async fn until_included(url: &str, hash: B256) -> TestResult<Value> {
    for attempt in 0..40 {
        let receipt = call_url(url, "eth_getUserOperationReceipt", json!([hash])).await?;
        match receipt {
            Ok(Value::Null) => {}
            Ok(receipt) => return Ok(receipt),
            Err(e) => return Err(format!("receipt: {e:?}").into()),
        }
        if attempt % 4 == 0 {
            let _ = call_url(url, "debug_bundler_sendBundleNow", json!([])).await?;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("op {hash} not included within 10 s").into())
}

/// (a) An op from acceptance through bundling to inclusion. Odd rounds kill while
/// `eth_sendUserOperation` is answered (the op may or may not be accepted: the wallet sends it
/// again); even rounds once it was acknowledged, while the bundle is built, sent or mined
/// (1 s blocks). After the restart the op is included exactly once, by exactly one bundle
/// transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_survive_kill_9_from_acceptance_to_inclusion() -> TestResult {
    let chain =
        TestChain::spawn_with(AnvilOptions { block_time: Some(1), ..Default::default() }).await?;
    let datadir = tempfile::tempdir()?;
    let version = EntryPointVersion::V08;
    let bundler = chain.account(BUNDLER_ACCOUNT)?;
    let (mut lost, mut duplicated) = (0, 0);
    for (round, delay) in kill_points("ops", ROUNDS, 1_500).into_iter().enumerate() {
        let node = SettledProcess::start(&chain, datadir.path()).await?;
        let op = creation_op(&chain, node.rpc_url(), version, 0).await?;
        let hash = chain.op_hash(version, &op).await?;
        let bundles_before = sent(&chain, bundler).await?;
        let url = node.rpc_url().to_owned();
        let acknowledged = if round % 2 == 1 {
            let sending = tokio::spawn({
                let (url, op) = (url.clone(), op.clone());
                async move { send_at(&url, version, &op).await.map_err(|e| e.to_string()) }
            });
            tokio::time::sleep(Duration::from_millis(delay % 300)).await;
            node.kill()?;
            matches!(sending.await, Ok(Ok(Ok(_))))
        } else {
            send_at(&url, version, &op).await?.map_err(|e| format!("send: {e:?}"))?;
            let bundling = tokio::spawn(async move {
                call_url(&url, "debug_bundler_sendBundleNow", json!([]))
                    .await
                    .map_err(|e| e.to_string())
            });
            tokio::time::sleep(Duration::from_millis(delay)).await;
            node.kill()?;
            let _interrupted = bundling.await;
            true
        };

        let node = SettledProcess::start(&chain, datadir.path()).await?;
        // The wallet that got no answer sends again; one that did need not.
        let resent = send_at(node.rpc_url(), version, &op).await?;
        let receipt = until_included(node.rpc_url(), hash).await;
        match &receipt {
            Ok(receipt) => assert_eq!(receipt["success"], json!(true), "round {round}: {receipt}"),
            Err(e) if acknowledged => {
                lost += 1;
                eprintln!(
                    "round {round} (kill after {delay} ms): acknowledged op lost: {e}; resend: {resent:?}"
                );
            }
            Err(e) => return Err(format!("round {round}: {e}").into()),
        }
        let included = inclusions(&chain, version, hash).await?;
        let bundles = sent(&chain, bundler).await? - bundles_before;
        if included > 1 || bundles > 1 {
            duplicated += 1;
            eprintln!(
                "round {round} (kill after {delay} ms): included {included}x by {bundles} bundle transactions"
            );
        }
        node.kill()?;
    }
    eprintln!("ops: {ROUNDS} kill points, lost = {lost}, duplicated = {duplicated}");
    assert_eq!((lost, duplicated), (0, 0));
    Ok(())
}

const TOKEN: &str = "fault-injection-token";

/// A `stream_*` call with the billing token; the result or the error's code and message.
async fn billing(
    url: &str,
    method: &str,
    params: Value,
) -> TestResult<Result<Value, (i64, String)>> {
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    let client = alloy::transports::http::reqwest::Client::new();
    let response: Value =
        client.post(url).bearer_auth(TOKEN).json(&body).send().await?.json().await?;
    Ok(match response.get("error") {
        Some(e) => Err((e["code"].as_i64().unwrap_or_default(), e["message"].to_string())),
        None => Ok(response["result"].clone()),
    })
}

/// Starts the node and waits until its index has stream `id`.
async fn start_operator(
    chain: &TestChain,
    datadir: &std::path::Path,
    args: &[&str],
    env: &[(&str, String)],
    id: &str,
) -> TestResult<SettledProcess> {
    let node = SettledProcess::start_with(chain, datadir, args, env).await?;
    for _ in 0..100 {
        if billing(node.rpc_url(), "stream_get", json!([id])).await?.is_ok() {
            return Ok(node);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("stream {id} not indexed; see {}", datadir.join("settled.log").display()).into())
}

/// A chain with 1 s blocks and one USDC stream from Anvil account 3 to account 4 at `rate`
/// (18-decimal units per second) with `deposit`, operated by account 5: the chain, the stream's
/// id, the block it opened in and the payee's USDC balance then.
async fn operated_stream(rate: u128, deposit: u128) -> TestResult<(TestChain, U256, u64, U256)> {
    let chain =
        TestChain::spawn_with(AnvilOptions { block_time: Some(1), ..Default::default() }).await?;
    let (payer, payee, operator) = (chain.account(3)?, chain.account(4)?, chain.account(5)?);
    chain.fund_payer(payer, U256::from(10u128.pow(15))).await?;
    let id = chain.open_stream(payer, payee, operator, rate, deposit).await?;
    let opened = chain.provider().get_block_number().await?;
    let usdc = settled_contracts::MockUSDC::new(chain.deployment().usdc, chain.provider());
    let paid_before = usdc.balanceOf(payee).call().await?;
    Ok((chain, id, opened, paid_before))
}

/// (b) A billing operator call (`stream_withdraw`) killed at a random moment (before signing,
/// between broadcast and inclusion on 1 s blocks, after the answer), then retried with the same
/// idempotency key after the restart: one transaction per key, one answer per key, and the
/// payee received exactly what the calls asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_calls_survive_kill_9_with_retries() -> TestResult {
    let (chain, id, _, paid_before) = operated_stream(10u128.pow(18), 10u128.pow(10)).await?;
    let id = id.to_string(); // one base unit per second
    let (payee, operator) = (chain.account(4)?, chain.account(5)?);
    let usdc = settled_contracts::MockUSDC::new(chain.deployment().usdc, chain.provider());

    let datadir = tempfile::tempdir()?;
    let keys = datadir.path().join("api-keys.toml");
    let entry =
        format!("[[keys]]\nname = \"vendor\"\nkeccak256 = \"{}\"\nall = true\n", keccak256(TOKEN));
    std::fs::write(&keys, entry)?;
    let keys = keys.to_string_lossy().into_owned();
    let args = ["--billing.api-keys-file", keys.as_str(), "--settlement.disable"];
    let env = [("SETTLED_BILLING_OPERATOR_KEY", chain.signer(5)?.to_bytes().to_string())];
    let (mut lost, mut duplicated) = (0, 0);
    for (round, delay) in kill_points("operator", ROUNDS, 2_500).into_iter().enumerate() {
        let key = format!("w-{round}");
        let params = json!([{ "streamId": id, "idempotencyKey": key, "amount": "1" }]);
        let node = start_operator(&chain, datadir.path(), &args, &env, &id).await?;
        let sent_before = sent(&chain, operator).await?;
        let url = node.rpc_url().to_owned();
        let call = tokio::spawn({
            let params = params.clone();
            async move { billing(&url, "stream_withdraw", params).await.map_err(|e| e.to_string()) }
        });
        tokio::time::sleep(Duration::from_millis(delay)).await;
        node.kill()?; // no shutdown, no flush
        let first = call.await;

        let node = start_operator(&chain, datadir.path(), &args, &env, &id).await?;
        let mut retry = billing(node.rpc_url(), "stream_withdraw", params.clone()).await?;
        // A claim of this very process still in flight answers -32004; a retry later settles.
        for _ in 0..30 {
            if retry.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            retry = billing(node.rpc_url(), "stream_withdraw", params.clone()).await?;
        }
        let retry = retry.map_err(|e| format!("kill after {delay} ms: retry {e:?}"))?;
        if let Ok(Ok(Ok(answer))) = &first
            && *answer != retry
        {
            lost += 1; // the first answer named a transaction the retry does not
            eprintln!("round {round}: first answer {answer} but retry {retry}");
        }
        let sent = sent(&chain, operator).await? - sent_before;
        if sent != 1 {
            duplicated += usize::from(sent > 1);
            lost += usize::from(sent == 0);
            eprintln!("round {round} (kill after {delay} ms): {sent} transactions for one key");
        }
        let again = billing(node.rpc_url(), "stream_withdraw", params).await?;
        assert_eq!(again.ok(), Some(retry), "kill after {delay} ms: one answer per key");
        node.kill()?;
    }
    let withdrawn = usdc.balanceOf(payee).call().await? - paid_before;
    eprintln!(
        "operator: {ROUNDS} kill points, lost = {lost}, duplicated = {duplicated}, paid {withdrawn}"
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(withdrawn, U256::from(ROUNDS), "the payee got one base unit per key, to the unit");
    Ok(())
}

/// Every transaction `from` sent in blocks `from_block..=head`, with whether it succeeded.
async fn transactions_of(
    chain: &TestChain,
    from: Address,
    from_block: u64,
) -> TestResult<Vec<(B256, bool)>> {
    let provider = chain.provider();
    let head = provider.get_block_number().await?;
    let mut found = Vec::new();
    for number in from_block..=head {
        let Some(receipts) = provider.get_block_receipts(number.into()).await? else { continue };
        for receipt in receipts.iter().filter(|r| r.from == from) {
            found.push((receipt.transaction_hash, receipt.status()));
        }
    }
    Ok(found)
}

/// (c) A settlement round (`settlement_runNow`: batched withdrawals, the batch stored, its
/// blob commit) killed at a random moment on 1 s blocks, then run again after the restart until
/// the period is committed. The chain judges: every batch id committed once, no operator
/// transaction reverted (a repeated withdrawal or commit would), and what the anchor's commits
/// say was paid is what the payee received, to the base unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_rounds_survive_kill_9() -> TestResult {
    // 1,000 base units per second.
    let (chain, _, opened, paid_before) =
        operated_stream(10u128.pow(18) * 1_000, 10u128.pow(12)).await?;
    let (provider, deployment) = (chain.provider(), chain.deployment());
    let (payee, operator) = (chain.account(4)?, chain.account(5)?);
    let usdc = settled_contracts::MockUSDC::new(deployment.usdc, provider);
    let first_block = opened;

    let datadir = tempfile::tempdir()?;
    let args = ["--rpc.admin", "--settlement.interval-secs", "3600"];
    let env = [("SETTLED_BILLING_OPERATOR_KEY", chain.signer(5)?.to_bytes().to_string())];
    let mut acknowledged = Vec::new();
    for (round, delay) in kill_points("settlement", ROUNDS, 2_500).into_iter().enumerate() {
        let node = SettledProcess::start_with(&chain, datadir.path(), &args, &env).await?;
        let url = node.rpc_url().to_owned();
        let running = tokio::spawn(async move {
            call_url(&url, "settlement_runNow", json!([])).await.map_err(|e| e.to_string())
        });
        tokio::time::sleep(Duration::from_millis(delay)).await;
        node.kill()?;
        if let Ok(Ok(Ok(answer))) = running.await {
            acknowledged.extend(answer["committed"].as_array().cloned().unwrap_or_default());
        }
        // Restarted, the node finishes what it began (and settles the new debt too).
        let node = SettledProcess::start_with(&chain, datadir.path(), &args, &env).await?;
        let answer = call_url(node.rpc_url(), "settlement_runNow", json!([])).await?;
        let answer = answer.map_err(|e| format!("round {round} (kill after {delay} ms): {e:?}"))?;
        assert_eq!(answer["waiting"], json!([]), "round {round}: {answer}");
        acknowledged.extend(answer["committed"].as_array().cloned().unwrap_or_default());
        node.kill()?;
    }

    let anchor = settled_contracts::SettlementAnchor::new(deployment.settlement_anchor, provider);
    let commits =
        anchor.BatchCommitted_filter().topic1(operator).from_block(first_block).query().await?;
    let mut ids: Vec<u64> = commits.iter().map(|(e, _)| e.batchId.to::<u64>()).collect();
    ids.sort_unstable();
    let unique = ids.windows(2).all(|w| w[0] != w[1]);
    let committed_total: u128 = commits.iter().map(|(e, _)| e.totalAmount).sum();
    let received = usdc.balanceOf(payee).call().await? - paid_before;
    let reverted = transactions_of(&chain, operator, first_block)
        .await?
        .into_iter()
        .filter(|(_, ok)| !ok)
        .count();
    let lost =
        acknowledged.iter().filter(|id| !ids.contains(&id.as_u64().unwrap_or_default())).count();
    let duplicated = usize::from(!unique) + reverted;
    eprintln!(
        "settlement: {ROUNDS} kill points, {} batches committed, lost = {lost}, duplicated = \
         {duplicated}, anchored {committed_total} = paid {received}",
        ids.len()
    );
    assert_eq!((lost, duplicated), (0, 0), "batch ids {ids:?}");
    assert_eq!(U256::from(committed_total), received, "the anchor's totals are what was paid");
    assert!(received > U256::ZERO);
    Ok(())
}

/// (d) `pm_getPaymasterData` (reserve → sign → guard → persist) killed at a random moment; after
/// the restart the wallet asks again, signs and sends the op, which is bundled and mined. The
/// ledger then equals the chain to the wei: every sponsored op settled at its `actualGasCost`,
/// none unreserved, and every reservation the node acknowledged before a kill is still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sponsorships_survive_kill_9() -> TestResult {
    let chain = TestChain::spawn().await?;
    let datadir = tempfile::tempdir()?;
    let version = EntryPointVersion::V08;
    let paymaster = chain.deployment().paymaster(version);
    let chain_id = chain.provider().get_chain_id().await?;
    let first_block = chain.provider().get_block_number().await?;
    let mut acknowledged_unused = 0u64;
    for (round, delay) in kill_points("paymaster", ROUNDS, 60).into_iter().enumerate() {
        let node =
            SettledProcess::start_sponsoring(&chain, datadir.path(), &["--rpc.admin"]).await?;
        let owner = PrivateKeySigner::random();
        let (sender, init_code) = chain.simple_account(version, owner.address()).await?;
        let unsponsored = unestimated_op(sender, 0, init_code, Default::default());
        let params = |op: &settled_contracts::PackedUserOperation| {
            json!([
                settled_contracts::UserOperation::unpack(op, None),
                version.canonical_address(),
                format!("{chain_id:#x}"),
                { "policyId": "default" },
            ])
        };
        // The wallet's first two steps (stub data, estimate), then the signed data, killed.
        let mut op = unsponsored.clone();
        let stub = call_url(node.rpc_url(), "pm_getPaymasterStubData", params(&op))
            .await?
            .map_err(|e| format!("stub: {e:?}"))?;
        settled_tests::rpc::apply_paymaster_stub(&mut op, &stub)?;
        let op = with_estimated_limits(node.rpc_url(), version, op).await?;
        let params = params(&op);
        let url = node.rpc_url().to_owned();
        let asking = tokio::spawn(async move {
            call_url(&url, "pm_getPaymasterData", params).await.map_err(|e| e.to_string())
        });
        tokio::time::sleep(Duration::from_millis(delay)).await;
        node.kill()?;
        if matches!(asking.await, Ok(Ok(Ok(_)))) {
            acknowledged_unused += 1;
        }

        let node =
            SettledProcess::start_sponsoring(&chain, datadir.path(), &["--rpc.admin"]).await?;
        let mut op =
            settled_tests::rpc::sponsor(node.rpc_url(), chain_id, version, unsponsored, "default")
                .await
                .map_err(|e| format!("round {round} (kill after {delay} ms): {e}"))?;
        op.signature = chain.sign_op(version, &owner, &op).await?;
        let hash = chain.op_hash(version, &op).await?;
        send_at(node.rpc_url(), version, &op).await?.map_err(|e| format!("send: {e:?}"))?;
        let receipt = until_included(node.rpc_url(), hash).await?;
        assert_eq!(receipt["success"], json!(true), "round {round}: {receipt}");
        node.kill()?;
    }

    // The chain's account of what the paymaster paid.
    let filter = Filter::new()
        .address(version.canonical_address())
        .event_signature(settled_contracts::v07::EntryPoint::UserOperationEvent::SIGNATURE_HASH)
        .topic3(paymaster)
        .from_block(first_block);
    let mut paid = U256::ZERO;
    let logs = chain.provider().get_logs(&filter).await?;
    for log in &logs {
        paid += log
            .log_decode::<settled_contracts::v07::EntryPoint::UserOperationEvent>()?
            .inner
            .actualGasCost;
    }
    let node = SettledProcess::start_sponsoring(&chain, datadir.path(), &["--rpc.admin"]).await?;
    let mut status = Value::Null;
    for _ in 0..50 {
        status = call_url(node.rpc_url(), "paymaster_status", json!([]))
            .await?
            .map_err(|e| format!("{e:?}"))?;
        if status["ledger"]["totals"]["settledOps"] == json!(logs.len()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ledger = &status["ledger"];
    let settled: U256 = serde_json::from_value(ledger["totals"]["settledWei"].clone())?;
    let open = ledger["openReservations"].as_u64().unwrap_or_default();
    let lost = usize::from(open < acknowledged_unused) + ROUNDS.saturating_sub(logs.len());
    let duplicated = logs.len().saturating_sub(ROUNDS);
    eprintln!(
        "paymaster: {ROUNDS} kill points, lost = {lost}, duplicated = {duplicated}, ledger {settled} \
         wei = chain {paid} wei, {open} reservations held ({acknowledged_unused} acknowledged before a kill)"
    );
    assert_eq!((lost, duplicated), (0, 0), "{status}");
    assert_eq!(settled, paid, "the ledger equals the chain to the wei: {status}");
    assert_eq!(ledger["totals"]["unreservedOps"], json!(0), "{status}");
    Ok(())
}
