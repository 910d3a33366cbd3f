//! Benchmark of settlement (issue #7).
//!
//! 1. Batch build time for N streams (default 100,000 and 1,000,000): each stream's record
//!    (leaf encoding and double keccak), the Merkle tree, the compact payloads split into blobs,
//!    and every blob's KZG commitment and proof. Records per blob, blobs, blob gas per record.
//! 2. On Anvil: a commit of one full blob (`SettlementAnchor.commit` in a type-3 transaction):
//!    transaction gas and execution gas per record, blob gas per record.
//! 3. On Anvil: `StreamVault.withdrawBatch` of 100 streams after 10 minutes of accrual: gas per
//!    stream (the transaction's gas / 100).
//! 4. The settlement overhead per dollar settled, from the gas measured in 2–3 and calldata-mode
//!    commits of 100 and 1,000 records, at stated fee levels (see `overhead_table`).
//! 5. A node on Anvil operating 9,000 streams (one full blob's worth): the time of one settlement
//!    round (withdrawals, records, blob, commit), then `settlement_getReceipt` over HTTP for
//!    every stream: the first call (reads the batch, builds its tree), p50 and p99 of the rest,
//!    and receipts per second.
//!
//! Run: `cargo run --release -p settled-tests --bin bench-settlement [-- N...]`.

use std::time::Instant;

use alloy::{
    network::EthereumWallet,
    primitives::{Address, B256, U256, aliases::U48},
    providers::{ProviderBuilder, ext::AnvilApi},
};
use settled_contracts::{MockUSDC, SettlementAnchor, StreamVault};
use settled_settlement::{
    BLOB_GAS_PER_BLOB, BatchContext, MerkleTree, SettlementRecord, encode_payload, sidecar,
    split_into_blobs,
};
use settled_tests::{TestChain, TestResult};

/// A 10-minute period of a stream paying between 0.01 and 10 USDC/s for some days already.
fn record(id: u64) -> SettlementRecord {
    let per_second = 10_000 + (id * 7_919) % 10_000_000;
    SettlementRecord {
        stream_id: id,
        payer: Address::repeat_byte(0x11),
        payee: Address::repeat_byte(0x22),
        token: Address::repeat_byte(0x33),
        seconds_billed: 600,
        amount: u128::from(per_second * 600),
        cumulative_amount: u128::from(per_second * 600 * (1 + id % 500)),
        usage_digest: B256::ZERO,
    }
}

fn context(batch_id: u64) -> BatchContext {
    BatchContext {
        chain_id: 1,
        vault: Address::repeat_byte(0x5a),
        batch_id,
        period_start: 1_700_000_000,
        period_end: 1_700_000_600,
    }
}

fn build(n: u64) -> TestResult<usize> {
    let records: Vec<_> = (1..=n).map(record).collect();
    let started = Instant::now();
    let batches = split_into_blobs(context(1), records)?;
    let split = started.elapsed();
    let mut leaves_time = std::time::Duration::ZERO;
    let mut tree_time = std::time::Duration::ZERO;
    let mut kzg_time = std::time::Duration::ZERO;
    for (context, records) in &batches {
        let t = Instant::now();
        let leaves: Vec<_> = records.iter().map(|r| r.leaf(context)).collect();
        leaves_time += t.elapsed();
        let t = Instant::now();
        let tree = MerkleTree::new(leaves);
        std::hint::black_box(tree.root());
        tree_time += t.elapsed();
        let t = Instant::now();
        let payload = encode_payload(context, records)?;
        std::hint::black_box(sidecar(&payload)?);
        kzg_time += t.elapsed();
    }
    let total = started.elapsed();
    let per_blob = batches.first().map_or(0, |(_, r)| r.len());
    println!(
        "build {n} records: {:.2} s total = split {:.2} s + leaves {:.2} s + trees {:.2} s + payloads and KZG {:.2} s; {} blobs, {per_blob} records in a full blob, {:.1} blob gas per record",
        total.as_secs_f64(),
        split.as_secs_f64(),
        leaves_time.as_secs_f64(),
        tree_time.as_secs_f64(),
        kzg_time.as_secs_f64(),
        batches.len(),
        BLOB_GAS_PER_BLOB as f64 / per_blob as f64,
    );
    Ok(per_blob)
}

/// Gas of a commit of `n` records: in a blob (`commit`), or in calldata (`commitCalldata`);
/// `(transaction gas, blob gas)`.
async fn commit_gas_of(n: usize, calldata: bool) -> TestResult<(u64, u64)> {
    let chain = TestChain::spawn().await?;
    let operator = chain.signer(3)?;
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(operator))
        .connect_http(chain.anvil().endpoint().parse()?);
    let anchor = SettlementAnchor::new(chain.deployment().settlement_anchor, &provider);
    let context = context(1);
    let records: Vec<_> = (1..=n as u64).map(record).collect();
    let tree = MerkleTree::new(records.iter().map(|r| r.leaf(&context)).collect());
    let payload = encode_payload(&context, &records)?;
    let total: u128 = records.iter().map(|r| r.amount).sum();
    let (start, end) = (U48::from(context.period_start), U48::from(context.period_end));
    let (id, count) = (U256::from(1), records.len() as u32);
    let receipt = if calldata {
        let call = anchor.commitCalldata(id, tree.root(), count, total, start, end, payload.into());
        call.send().await?.get_receipt().await?
    } else {
        let call = anchor.commit(id, tree.root(), count, total, start, end);
        call.sidecar(sidecar(&payload)?).send().await?.get_receipt().await?
    };
    Ok((receipt.gas_used, receipt.blob_gas_used.unwrap_or_default()))
}

/// The settlement overhead per dollar settled (the KPI: < 0.8%) from measured gas, at stated
/// fee levels: Base at 0.005 gwei, L1 at 1 gwei, blobs at the 1-wei floor, ETH at $3,000, each
/// stream paying $100 a month; per streams per batch and settlement interval, for both anchor
/// modes. The L2 withdrawal's L1 data fee (about 0.04 gwei per calldata byte at these levels,
/// ~32 bytes per stream) is under 2e-9 ETH per stream and left out.
async fn overhead_table(withdraw_gas_per_stream: f64) -> TestResult {
    const L2_GWEI: f64 = 0.005;
    const L1_GWEI: f64 = 1.0;
    const ETH_USD: f64 = 3_000.0;
    const REVENUE_PER_SECOND: f64 = 100.0 / (30.0 * 86_400.0);
    let (blob_gas, blob_blob_gas) = commit_gas_of(1_000, false).await?;
    let (calldata_100, _) = commit_gas_of(100, true).await?;
    let (calldata_1000, _) = commit_gas_of(1_000, true).await?;
    let per_record = (calldata_1000 - calldata_100) as f64 / 900.0;
    println!(
        "commit gas: blob mode {blob_gas} (+{blob_blob_gas} blob gas at 1 wei), any count up to a \
         full blob; calldata mode 100 records {calldata_100}, 1,000 records {calldata_1000} \
         ({per_record:.0} gas per record)"
    );
    println!(
        "overhead per $ settled (L2 0.005 gwei, L1 1 gwei, blob 1 wei, ETH $3,000, $100/month per stream)"
    );
    println!("| streams per batch | interval | blob mode | calldata mode |");
    println!("| ---: | ---: | ---: | ---: |");
    let usd = |gas: f64, gwei: f64| gas * gwei * 1e-9 * ETH_USD;
    for streams in [10usize, 100, 1_000, 9_000] {
        for interval in [600u64, 3_600, 86_400] {
            let revenue = streams as f64 * REVENUE_PER_SECOND * interval as f64;
            let withdrawals = usd(withdraw_gas_per_stream * streams as f64, L2_GWEI);
            let blob = withdrawals + usd(blob_gas as f64, L1_GWEI);
            let calldata_gas = calldata_100 as f64 + per_record * (streams as f64 - 100.0);
            let calldata = withdrawals + usd(calldata_gas.max(21_000.0), L1_GWEI);
            println!(
                "| {streams} | {interval} s | {:.3}% | {:.3}% |",
                100.0 * blob / revenue,
                100.0 * calldata / revenue
            );
        }
    }
    Ok(())
}

async fn commit_gas(per_blob: usize) -> TestResult {
    let (gas, blob_gas) = commit_gas_of(per_blob, false).await?;
    println!(
        "commit of a full blob ({per_blob} records): {gas} gas in the transaction = {:.1} gas per record; blob gas {blob_gas} = {:.1} per record",
        gas as f64 / per_blob as f64,
        blob_gas as f64 / per_blob as f64,
    );
    Ok(())
}

async fn batch_withdraw_gas() -> TestResult<f64> {
    let chain = TestChain::spawn().await?;
    let provider = chain.provider();
    let deployment = chain.deployment();
    let (payer, payee, operator) = (chain.account(3)?, chain.account(4)?, chain.account(5)?);
    chain.fund_payer(payer, U256::from(10u128.pow(15))).await?;
    // The payee already holds USDC, as a vendor's treasury does.
    let usdc = MockUSDC::new(deployment.usdc, provider);
    usdc.mint(payee, U256::from(1)).send().await?.get_receipt().await?;
    let vault = StreamVault::new(deployment.stream_vault, provider);
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(chain.open_stream(payer, payee, operator, 10u128.pow(18), 1_000_000_000).await?);
    }
    provider.anvil_increase_time(600).await?;
    let receipt = vault.withdrawBatch(ids).from(operator).send().await?.get_receipt().await?;
    println!(
        "withdrawBatch of 100 streams (one payee, one token) after 10 minutes: {} gas in the transaction = {:.0} gas per stream",
        receipt.gas_used,
        receipt.gas_used as f64 / 100.0
    );
    Ok(receipt.gas_used as f64 / 100.0)
}

async fn receipts(streams: u64) -> TestResult {
    use alloy::{primitives::aliases::U96, providers::Provider};
    let node = settled_tests::TestNode::spawn_operator(|_| {}).await?;
    let chain = node.chain();
    let provider = chain.provider();
    let deployment = chain.deployment();
    let (payer, payee, operator) = (chain.account(3)?, chain.account(4)?, chain.account(5)?);
    chain.fund_payer(payer, U256::from(10u128.pow(16))).await?;
    let vault = StreamVault::new(deployment.stream_vault, provider);
    // 200 opens per block (about 25M gas): a block per open would keep thousands of states in
    // Anvil's memory.
    provider.anvil_set_auto_mine(false).await?;
    let mut last = None;
    for i in 0..streams {
        let rate = U96::from(10u128.pow(15) * u128::from(1 + i % 1_000));
        let open =
            vault.open(payee, deployment.usdc, rate, operator, U96::ZERO, U96::ZERO, 10u128.pow(9));
        last = Some(open.from(payer).gas(300_000).send().await?);
        if i % 200 == 199 {
            provider.anvil_mine(Some(1), None).await?;
        }
    }
    loop {
        provider.anvil_mine(Some(1), None).await?;
        let pool: serde_json::Value = provider.raw_request("txpool_status".into(), ()).await?;
        if pool["pending"] == serde_json::json!("0x0") {
            break;
        }
    }
    provider.anvil_set_auto_mine(true).await?;
    let opened = last.ok_or("no streams")?.get_receipt().await?;
    if !opened.status() {
        return Err("an open reverted".into());
    }
    provider.anvil_increase_time(600).await?;
    provider.anvil_mine(Some(1), None).await?;
    let settler = node.node()?.settler().ok_or("no settler")?;
    let started = Instant::now();
    let round = settler.settle().await?;
    let round_time = started.elapsed();
    let batch = settler.batch(1).await?.ok_or("no batch 1")?;
    println!(
        "settlement round of {streams} streams on Anvil: {:.1} s ({} withdrawBatch transactions, {} batches, {} records in batch 1)",
        round_time.as_secs_f64(),
        round.withdrawals.len(),
        round.committed.len(),
        batch.records.len(),
    );
    let url = node.node()?.rpc_url().to_string();
    let mut times = Vec::with_capacity(batch.records.len());
    let started = Instant::now();
    // One client, one kept-alive connection: what is timed is the node's answer.
    let client = alloy::transports::http::reqwest::Client::new();
    for id in batch.records.iter().map(|r| r.stream_id) {
        let body = serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "settlement_getReceipt",
            "params": [id.to_string(), 1],
        });
        let t = Instant::now();
        let answer: serde_json::Value = client.post(&url).json(&body).send().await?.json().await?;
        times.push(t.elapsed());
        if answer["result"]["committed"] != serde_json::json!(true) {
            return Err(format!("no committed receipt for stream {id}: {answer}").into());
        }
    }
    let total = started.elapsed();
    let first_call = times.first().copied().unwrap_or_default();
    let mut rest = times[1.min(times.len())..].to_vec();
    rest.sort_unstable();
    let at =
        |q: f64| rest.get(((rest.len() as f64 - 1.0) * q) as usize).copied().unwrap_or_default();
    println!(
        "settlement_getReceipt of {} streams of batch 1 over HTTP: first {:.1} ms, then p50 {:.2} ms, p99 {:.2} ms; {:.0} receipts/s",
        times.len(),
        first_call.as_secs_f64() * 1e3,
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        times.len() as f64 / total.as_secs_f64(),
    );
    node.shutdown().await
}

#[tokio::main]
async fn main() -> TestResult {
    let sizes: Vec<u64> = std::env::args().skip(1).map(|s| s.parse()).collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() { vec![100_000, 1_000_000] } else { sizes };
    let mut per_blob = 0;
    for n in sizes {
        per_blob = build(n)?;
    }
    commit_gas(per_blob).await?;
    let withdraw_gas_per_stream = batch_withdraw_gas().await?;
    overhead_table(withdraw_gas_per_stream).await?;
    receipts(9_000).await?;
    Ok(())
}
