//! A billing call's idempotency survives kill -9 (#20, item 1): `settled` (the binary) is
//! killed with SIGKILL at a spread of moments during `stream_withdraw` (before signing, between
//! broadcast and inclusion, after the answer) on a chain with 1 s blocks, restarts on the same
//! data directory, and the retry with the same idempotency key answers one transaction: the
//! operator sent exactly one for the key.

use std::time::Duration;

use alloy::{
    primitives::{U256, aliases::U96, keccak256},
    providers::Provider,
};
use serde_json::{Value, json};
use settled_contracts::AnvilOptions;
use settled_contracts::StreamVault;
use settled_tests::{SettledProcess, TestChain, TestResult};

const TOKEN: &str = "crash-test-token";

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
async fn start(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_key_after_kill_9_sends_once() -> TestResult {
    let chain =
        TestChain::spawn_with(AnvilOptions { block_time: Some(1), ..Default::default() }).await?;
    let provider = chain.provider();
    let deployment = chain.deployment();
    let (payer, payee, operator) = (chain.account(3)?, chain.account(4)?, chain.account(5)?);
    chain.fund_payer(payer, U256::from(10u128.pow(15))).await?;
    let vault = StreamVault::new(deployment.stream_vault, provider);
    let rate = U96::from(10u128.pow(18)); // one base unit per second
    let open =
        vault.open(payee, deployment.usdc, rate, operator, U96::ZERO, U96::ZERO, 10u128.pow(10));
    open.from(payer).send().await?.get_receipt().await?;
    let id = (vault.nextStreamId().call().await? - U256::from(1)).to_string();

    let datadir = tempfile::tempdir()?;
    let keys = datadir.path().join("api-keys.toml");
    let entry =
        format!("[[keys]]\nname = \"vendor\"\nkeccak256 = \"{}\"\nall = true\n", keccak256(TOKEN));
    std::fs::write(&keys, entry)?;
    let keys = keys.to_string_lossy().into_owned();
    let args = ["--billing.api-keys-file", keys.as_str(), "--settlement.disable"];
    let env = [("SETTLED_BILLING_OPERATOR_KEY", chain.signer(5)?.to_bytes().to_string())];
    // Kill points spread over a call that waits about a block for its receipt.
    for (round, kill_after_ms) in
        [0u64, 40, 90, 150, 250, 400, 600, 900, 1_300, 2_500].into_iter().enumerate()
    {
        let key = format!("w-{round}");
        let params = json!([{ "streamId": id, "idempotencyKey": key, "amount": "1" }]);
        let node = start(&chain, datadir.path(), &args, &env, &id).await?;
        let sent_before = provider.get_transaction_count(operator).await?;
        let url = node.rpc_url().to_owned();
        let call = tokio::spawn({
            let params = params.clone();
            async move { billing(&url, "stream_withdraw", params).await.map_err(|e| e.to_string()) }
        });
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        node.kill()?; // no shutdown, no flush
        let _interrupted = call.await;

        let node = start(&chain, datadir.path(), &args, &env, &id).await?;
        let mut retry = billing(node.rpc_url(), "stream_withdraw", params.clone()).await?;
        // A claim of this very process still in flight answers -32004; a retry later settles.
        for _ in 0..30 {
            if retry.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            retry = billing(node.rpc_url(), "stream_withdraw", params.clone()).await?;
        }
        let retry = retry.map_err(|e| format!("kill after {kill_after_ms} ms: retry {e:?}"))?;
        let sent = provider.get_transaction_count(operator).await? - sent_before;
        assert_eq!(sent, 1, "kill after {kill_after_ms} ms: {sent} transactions for one key");
        let again = billing(node.rpc_url(), "stream_withdraw", params).await?;
        assert_eq!(again.ok(), Some(retry), "kill after {kill_after_ms} ms: one answer per key");
        node.kill()?;
    }
    Ok(())
}
