//! Benchmark of the paymaster (issue #5).
//!
//! 1. Signatures per second in-process: the policy check, the ledger's atomic reservation (sled)
//!    and the ECDSA signature over the sponsorship hash — what a sponsorship costs without the
//!    simulation guard — on 1 and 2 threads.
//! 2. `pm_getPaymasterData` over HTTP against an in-process node on Anvil, with the
//!    denial-of-wallet guard (revm validation + execution) on: C concurrent clients, N requests
//!    for N distinct new accounts; throughput and latency p50/p99.
//!
//! Run: `cargo run --release -p settled-tests --bin bench-paymaster [-- N [CLIENTS]]`
//! (defaults 2,000 requests, 4 clients).

use std::time::{Duration, Instant};

use alloy::{
    primitives::{Address, Bytes, U256},
    providers::Provider,
    signers::local::PrivateKeySigner,
    sol_types::SolCall,
};
use serde_json::json;
use settled_contracts::{
    EntryPointVersion, MockUSDC, PackedUserOperation, UserOperation, pack_u128s, v07,
};
use settled_paymaster::{
    Ledger, PaymasterSigner, ReservationRequest, SponsorshipPolicy, SponsorshipTerms, max_cost,
};
use settled_tests::{TestNode, TestResult, percentile, rpc::call_url, unestimated_op};

fn sample_op(sender: Address) -> PackedUserOperation {
    let approve =
        MockUSDC::approveCall { spender: Address::repeat_byte(0x55), value: U256::from(1) };
    let call = v07::SimpleAccount::executeCall {
        dest: Address::repeat_byte(0xaa),
        value: U256::ZERO,
        func: approve.abi_encode().into(),
    };
    let mut data = Address::repeat_byte(0x99).to_vec();
    data.extend_from_slice(pack_u128s(60_000, 40_000).as_slice());
    // Built directly (not with `unestimated_op`, whose stub signature costs a key generation).
    PackedUserOperation {
        sender,
        nonce: U256::ZERO,
        initCode: Bytes::new(),
        callData: call.abi_encode().into(),
        accountGasLimits: pack_u128s(100_000, 100_000),
        preVerificationGas: U256::from(60_000),
        gasFees: pack_u128s(1_000_000_000, 20_000_000_000),
        paymasterAndData: data.into(),
        signature: Bytes::from(vec![0x5a; 65]),
    }
}

/// Time spent in each step of a sponsorship.
#[derive(Default)]
struct Steps {
    check: Duration,
    reserve: Duration,
    sign: Duration,
}

/// Policy check + reservation + signature, `count` times on this thread.
fn sign_loop(
    ledger: &Ledger,
    signer: &PaymasterSigner,
    policy: &SponsorshipPolicy,
    count: u64,
    seed: u8,
) -> TestResult<Steps> {
    let mut steps = Steps::default();
    for i in 0..count {
        let mut sender = [seed; 20];
        sender[12..].copy_from_slice(&i.to_be_bytes());
        let op = sample_op(Address::from(sender));
        let started = Instant::now();
        policy.check(&op)?;
        let checked = Instant::now();
        let request = ReservationRequest {
            policy,
            customer: "bench",
            sender: op.sender,
            entry_point: EntryPointVersion::V07.canonical_address(),
            max_cost: max_cost(&op),
            now: 1_000_000,
            valid_until: 1_000_300,
            daily_budget: None,
        };
        let reservation = ledger.reserve(&request)?.map_err(|r| r.to_string())?;
        let reserved = Instant::now();
        let terms =
            SponsorshipTerms { valid_until: 1_000_300, valid_after: 999_940, id: reservation.id };
        signer.paymaster_data(&op, 31337, Address::repeat_byte(0x99), &terms)?;
        steps.check += checked - started;
        steps.reserve += reserved - checked;
        steps.sign += reserved.elapsed();
    }
    Ok(steps)
}

fn in_process(count: u64) -> TestResult<()> {
    let policy = SponsorshipPolicy {
        max_ops_per_sender: Some(10),
        max_ops_per_customer: Some(u64::MAX),
        allowed_calls: vec![settled_paymaster::AllowedCall {
            target: Address::repeat_byte(0xaa),
            selectors: vec![[0x09, 0x5e, 0xa7, 0xb3].into()],
        }],
        ..SponsorshipPolicy::unlimited("bench")
    };
    let signer = PaymasterSigner::new(PrivateKeySigner::random());
    for threads in [1u64, 2] {
        let dir = tempfile::tempdir()?;
        let db = sled::open(dir.path())?;
        let ledger = Ledger::open(db.open_tree("ledger")?)?;
        let started = Instant::now();
        let steps = std::thread::scope(|scope| -> TestResult<Steps> {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (ledger, signer, policy) = (&ledger, &signer, &policy);
                    scope.spawn(move || {
                        sign_loop(ledger, signer, policy, count / threads, t as u8 + 1)
                            .map_err(|e| e.to_string())
                    })
                })
                .collect();
            let mut total = Steps::default();
            for handle in handles {
                let steps = handle.join().map_err(|_| "bench thread panicked")??;
                total.check += steps.check;
                total.reserve += steps.reserve;
                total.sign += steps.sign;
            }
            Ok(total)
        })?;
        let elapsed = started.elapsed();
        let per = |d: Duration| d.as_secs_f64() * 1e6 / count as f64;
        println!(
            "in-process  policy check + reservation + signature: {count} in {:.2} s on {threads} thread(s) = {:.0} signatures/s (per op: check {:.1} us, reservation {:.1} us, signature {:.1} us)",
            elapsed.as_secs_f64(),
            count as f64 / elapsed.as_secs_f64(),
            per(steps.check),
            per(steps.reserve),
            per(steps.sign),
        );
    }
    Ok(())
}

async fn over_rpc(total: usize, clients: usize) -> TestResult<()> {
    let node = TestNode::spawn().await?;
    let chain = node.chain();
    let url = node.node()?.rpc_url();
    let usdc = chain.deployment().usdc;
    let policy = SponsorshipPolicy {
        allowed_calls: vec![settled_paymaster::AllowedCall {
            target: usdc,
            selectors: vec![[0x09, 0x5e, 0xa7, 0xb3].into()],
        }],
        ..SponsorshipPolicy::unlimited("bench")
    };
    call_url(&url, "paymaster_setPolicy", json!([policy])).await?.map_err(|e| format!("{e:?}"))?;
    let version = EntryPointVersion::V07;
    let chain_id = format!("{:#x}", chain.provider().get_chain_id().await?);
    let paymaster = chain.deployment().paymaster(version);

    // N new accounts (counterfactual: each op deploys its account and approves USDC).
    let mut params = Vec::with_capacity(total);
    for _ in 0..total {
        let owner = PrivateKeySigner::random();
        let (sender, init_code) = chain.simple_account(version, owner.address()).await?;
        let approve =
            MockUSDC::approveCall { spender: Address::repeat_byte(0x55), value: U256::from(1) };
        let call = v07::SimpleAccount::executeCall {
            dest: usdc,
            value: U256::ZERO,
            func: approve.abi_encode().into(),
        };
        let mut op = unestimated_op(sender, 0, init_code, call.abi_encode().into());
        op.set_account_gas_limits(400_000, 100_000);
        op.preVerificationGas = U256::from(100_000);
        let mut data = paymaster.to_vec();
        data.extend_from_slice(pack_u128s(60_000, 40_000).as_slice());
        op.paymasterAndData = data.into();
        params.push(json!([UserOperation::unpack(&op, None), version.canonical_address(), chain_id, { "policyId": "bench" }]));
    }

    let queue = std::sync::Arc::new(tokio::sync::Mutex::new(params));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (queue, url) = (queue.clone(), url.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            loop {
                let Some(params) = queue.lock().await.pop() else { break };
                let sent = Instant::now();
                match call_url(&url, "pm_getPaymasterData", params).await {
                    Ok(Ok(_)) => latencies.push(sent.elapsed()),
                    _ => failures += 1,
                }
            }
            (latencies, failures)
        });
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(total);
    let mut failures = 0;
    for (mut part, failed) in tasks.join_all().await {
        latencies.append(&mut part);
        failures += failed;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "pm_getPaymasterData over HTTP (policy, reservation, signature, revm guard): {} signed, {failures} failed, {clients} clients, {:.2} s = {:.0} req/s; latency p50 {:.1} ms, p99 {:.1} ms",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
    node.shutdown().await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> TestResult {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2_000);
    let clients: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(4);
    tokio::task::spawn_blocking(|| in_process(20_000).map_err(|e| e.to_string())).await??;
    over_rpc(total, clients).await
}
