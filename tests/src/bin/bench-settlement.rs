//! Benchmark of settlement (issue #7).
//!
//! 1. Batch build time for N streams (default 100,000 and 1,000,000): each stream's record
//!    (leaf encoding and double keccak), the Merkle tree, the compact payloads split into blobs,
//!    and every blob's KZG commitment and proof. Records per blob, blobs, blob gas per record.
//! 2. On Anvil: a commit of one full blob (`SettlementAnchor.commit` in a type-3 transaction):
//!    transaction gas and execution gas per record, blob gas per record.
//! 3. On Anvil: `StreamVault.withdrawBatch` of 100 streams after 10 minutes of accrual: gas per
//!    stream (the transaction's gas / 100).
//!
//! Run: `cargo run --release -p settled-tests --bin bench-settlement [-- N...]`.

use std::time::Instant;

use alloy::{
    network::EthereumWallet,
    primitives::{Address, B256, U256, aliases::U48},
    providers::{ProviderBuilder, ext::AnvilApi},
};
use settled_contracts::{MockUSDC, SettlementAnchor, StreamVault};
use settled_node::{
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

async fn commit_gas(per_blob: usize) -> TestResult {
    let chain = TestChain::spawn().await?;
    let operator = chain.signer(3)?;
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(operator))
        .connect_http(chain.anvil().endpoint().parse()?);
    let anchor = SettlementAnchor::new(chain.deployment().settlement_anchor, &provider);
    let context = context(1);
    let records: Vec<_> = (1..=per_blob as u64).map(record).collect();
    let tree = MerkleTree::new(records.iter().map(|r| r.leaf(&context)).collect());
    let sidecar = sidecar(&encode_payload(&context, &records)?)?;
    let total: u128 = records.iter().map(|r| r.amount).sum();
    let receipt = anchor
        .commit(
            U256::from(1),
            tree.root(),
            records.len() as u32,
            total,
            U48::from(context.period_start),
            U48::from(context.period_end),
        )
        .sidecar(sidecar)
        .send()
        .await?
        .get_receipt()
        .await?;
    let gas = receipt.gas_used;
    println!(
        "commit of a full blob ({} records): {gas} gas in the transaction = {:.1} gas per record; blob gas {} = {:.1} per record",
        records.len(),
        gas as f64 / records.len() as f64,
        receipt.blob_gas_used.unwrap_or_default(),
        receipt.blob_gas_used.unwrap_or_default() as f64 / records.len() as f64,
    );
    Ok(())
}

async fn batch_withdraw_gas() -> TestResult {
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
    Ok(())
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
    batch_withdraw_gas().await?;
    Ok(())
}
