//! Load generator for the bundler (issue #4): N deployed, funded SimpleAccounts (distinct senders;
//! deployed up front, since ERC-7562 limits an unstaked factory to 10 pending ops), each sending
//! one signed op over HTTP from C concurrent clients to an in-process node on Anvil with
//! one-second blocks. Prints accepted ops/s, p50/p99 `eth_sendUserOperation` latency,
//! and how many blocks each op waited from acceptance to inclusion.
//!
//! Run: `cargo run --release -p settled-tests --bin bench-bundler [-- OPS [CLIENTS [RATE]]]`
//! (defaults 1,000 ops, 4 clients, back to back; RATE ops/s paces the sends instead).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use alloy::{
    primitives::{B256, Bytes, U256},
    providers::{Provider, ext::AnvilApi},
    signers::{SignerSync, local::PrivateKeySigner},
};
use serde_json::{Value, json};
use settled_bundler::UserOperation;
use settled_contracts::{AnvilOptions, EntryPointVersion, PackedUserOperation, pack_u128s};
use settled_tests::{TestNode, TestResult, percentile};

/// One `eth_sendUserOperation`: its latency, and the op's hash with the head when accepted, or
/// the error.
type Sent = (Duration, Option<(B256, u64)>, Option<String>);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> TestResult {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1_000);
    let clients: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(4);
    // Optional offered load (ops/s): ops are sent on schedule (open loop) instead of back to back.
    let rate: Option<f64> = args.next().map(|s| s.parse()).transpose()?;
    let version = EntryPointVersion::V07;
    let anvil = AnvilOptions { block_time: Some(1), ..Default::default() };
    let node = TestNode::spawn_with(anvil, |config| {
        config.bundler.max_bundle_gas = 28_000_000;
        config.bundler.max_bundle_ops = 1_000;
    })
    .await?;
    let chain = node.chain();
    let provider = chain.provider().clone();
    let chain_id = provider.get_chain_id().await?;
    let base_fee = provider
        .get_block_by_number(Default::default())
        .await?
        .and_then(|b| b.header.base_fee_per_gas)
        .unwrap_or(1_000_000_000);

    // Prepare: N owners, their accounts deployed through the factory and funded, ops signed.
    let prepared = Instant::now();
    let factory = settled_contracts::v07::SimpleAccountFactory::new(
        chain.deployment().simple_account_factory_v07,
        &provider,
    );
    let mut owners = Vec::with_capacity(total);
    let mut last = None;
    for _ in 0..total {
        let owner = PrivateKeySigner::random();
        last = Some(factory.createAccount(owner.address(), U256::ZERO).send().await?);
        owners.push(owner);
    }
    if let Some(pending) = last {
        pending.get_receipt().await?;
    }
    // Gas limits as a wallet gets them: estimated once through the node (every op has the same
    // shape), so bundles are packed by realistic limits rather than guesses.
    let template = |sender| PackedUserOperation {
        sender,
        nonce: U256::ZERO,
        initCode: Bytes::new(),
        callData: Bytes::new(),
        accountGasLimits: pack_u128s(0, 0),
        preVerificationGas: U256::ZERO,
        gasFees: pack_u128s(1_000_000_000, u128::from(base_fee) * 4 + 1_000_000_000),
        paymasterAndData: Bytes::new(),
        signature: settled_tests::stub_signature(),
    };
    let mut senders = Vec::with_capacity(total);
    for owner in &owners {
        let (sender, _) = chain.simple_account(version, owner.address()).await?;
        provider.anvil_set_balance(sender, U256::from(10u128.pow(18))).await?;
        senders.push(sender);
    }
    let first = senders.first().copied().ok_or("no ops")?;
    let limits = node
        .node()?
        .bundler()
        .ok_or("bundler disabled")?
        .estimate(UserOperation::unpack(&template(first), None), version.canonical_address(), None)
        .await?;
    // preVerificationGas prices the op's bytes (a zero byte costs less): the first sender's
    // figure plus 12 gas for each of another sender's 20 address bytes that may be non-zero.
    let limits = settled_sim::GasEstimate {
        pre_verification_gas: limits.pre_verification_gas + 20 * 12,
        ..limits
    };
    let mut ops = Vec::with_capacity(total);
    for (owner, sender) in owners.iter().zip(senders) {
        let mut op = limits.apply(&template(sender));
        let hash = op.hash(version, chain_id, None);
        op.signature = owner.sign_message_sync(hash.as_slice())?.as_bytes().to_vec().into();
        ops.push(UserOperation::unpack(&op, None));
    }
    println!(
        "bench-bundler: {total} ops from deployed SimpleAccounts (v0.7, distinct senders, ECDSA), {clients} HTTP clients, {}, Anvil 1 s blocks; prepared in {:?}\n  limits per op (estimated): verification {} call {} preVerification {}",
        rate.map_or("back to back".to_string(), |r| format!("offered {r} ops/s")),
        prepared.elapsed(),
        limits.verification_gas_limit,
        limits.call_gas_limit,
        limits.pre_verification_gas
    );

    // The chain head, sampled every 10 ms in the background, to date each acceptance.
    let head = Arc::new(AtomicU64::new(provider.get_block_number().await?));
    let sampler = {
        let (head, provider) = (head.clone(), provider.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(number) = provider.get_block_number().await {
                    head.store(number, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let url = node.node()?.rpc_url();
    let entry_point = version.canonical_address();
    let queue =
        Arc::new(tokio::sync::Mutex::new(ops.into_iter().enumerate().rev().collect::<Vec<_>>()));
    let started = Instant::now();
    let mut workers = Vec::new();
    let start = tokio::time::Instant::now();
    for _ in 0..clients {
        let (queue, url, head) = (queue.clone(), url.clone(), head.clone());
        workers.push(tokio::spawn(async move {
            let http = alloy::transports::http::reqwest::Client::new();
            let mut results: Vec<Sent> = Vec::new();
            loop {
                let Some((index, op)) = queue.lock().await.pop() else { break };
                if let Some(rate) = rate {
                    let due = start + Duration::from_secs_f64(index as f64 / rate);
                    tokio::time::sleep_until(due).await;
                }
                let body = json!({
                    "jsonrpc": "2.0", "id": 1, "method": "eth_sendUserOperation",
                    "params": [op, entry_point],
                });
                let sent = Instant::now();
                let response: Result<Value, _> = match http.post(&url).json(&body).send().await {
                    Ok(response) => response.json().await,
                    Err(error) => Err(error),
                };
                let latency = sent.elapsed();
                let at = head.load(Ordering::Relaxed);
                match response {
                    Ok(value) => match serde_json::from_value::<B256>(value["result"].clone()) {
                        Ok(hash) => results.push((latency, Some((hash, at)), None)),
                        Err(_) => results.push((latency, None, Some(value["error"].to_string()))),
                    },
                    Err(error) => results.push((latency, None, Some(error.to_string()))),
                }
            }
            results
        }));
    }
    let mut latencies = Vec::new();
    let mut accepted = Vec::new();
    let mut errors = Vec::new();
    for worker in workers {
        for (latency, ok, error) in worker.await? {
            latencies.push(latency);
            if let Some(ok) = ok {
                accepted.push(ok);
            }
            if let Some(error) = error {
                errors.push(error);
            }
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();

    // Inclusion: wait for every accepted op's receipt.
    let http = alloy::transports::http::reqwest::Client::new();
    let mut waits = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (hash, at) in &accepted {
        loop {
            let body = json!({
                "jsonrpc": "2.0", "id": 1, "method": "eth_getUserOperationReceipt", "params": [hash],
            });
            let receipt: Value = http.post(&url).json(&body).send().await?.json().await?;
            let block = receipt["result"]["receipt"]["blockNumber"]
                .as_str()
                .map(|b| u64::from_str_radix(b.trim_start_matches("0x"), 16).unwrap_or_default());
            if let Some(block) = block {
                waits.push(block.saturating_sub(*at));
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    sampler.abort();
    waits.sort();

    println!(
        "  accepted {} of {total} in {elapsed:?}: {:.0} ops/s",
        accepted.len(),
        accepted.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  eth_sendUserOperation latency p50 {:?}  p99 {:?}  max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    let next_block = waits.iter().filter(|w| **w <= 1).count();
    println!(
        "  mined {} of {}: blocks from acceptance to inclusion p50 {}  p99 {}  max {}; in the next block: {:.1}%",
        waits.len(),
        accepted.len(),
        percentile(&waits, 0.5),
        percentile(&waits, 0.99),
        percentile(&waits, 1.0),
        100.0 * next_block as f64 / accepted.len().max(1) as f64
    );
    if let Some(error) = errors.first() {
        println!("  {} rejected, e.g. {error}", errors.len());
    }
    Ok(())
}
