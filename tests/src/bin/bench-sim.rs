//! Benchmark of `simulate_validation` (issue #3). Prints:
//! - warm validations per second on one thread (state of the block already cached),
//! - cold latency: the first validation after a new block (every read goes to the node), and the
//!   same with the view derived from the previous block's (`BlockState::successor`),
//! - the same op validated by Anvil's `eth_call` with the simulations code override,
//! - warm `simulateHandleOp` runs per second and warm gas estimations per second (each a probe,
//!   four searches and a final run).
//!
//! Run: `cargo run --release -p settled-tests --bin bench-sim [-- WARM_ITERATIONS]`.

use std::time::{Duration, Instant};

use alloy::{
    eips::BlockId,
    providers::{Provider, ext::AnvilApi},
    signers::local::PrivateKeySigner,
};
use settled_contracts::EntryPointVersion;
use settled_sim::{BlockContext, BlockState, SimOverrides, Simulator};
use settled_tests::{TestChain, TestResult, percentile, simulate_validation_request};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> TestResult {
    let warm_iterations: usize =
        std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(20_000);
    let chain = TestChain::spawn().await?;
    println!(
        "bench-sim: SimpleAccount creation op (initCode + ECDSA signature), Anvil {}",
        chain.anvil().endpoint()
    );

    for version in EntryPointVersion::ALL {
        let owner = PrivateKeySigner::random();
        let op = chain.account_creation_op(version, &owner, 10u128.pow(18)).await?;
        let provider = chain.provider().clone();

        // Cold: a new block, a new BlockState, the first validation reads everything remotely.
        // Successor: a new block's view from the previous one (unchanged storage roots reuse
        // their slots; code is kept by hash), the way the node moves from block to block.
        let mut cold = Vec::new();
        let mut successor = Vec::new();
        let mut previous: Option<BlockState> = None;
        for _ in 0..10 {
            provider.anvil_mine(Some(1), None).await?;
            let block = BlockId::number(provider.get_block_number().await?);
            let context = BlockContext::fetch(&provider, block).await?;
            let fresh = BlockState::new(provider.clone(), block, tokio::runtime::Handle::current());
            let next = match &previous {
                Some(view) => view.successor(block),
                None => fresh.clone(),
            };
            let op = op.clone();
            let (fresh_time, next_time, next) = tokio::task::spawn_blocking(move || {
                let simulator = Simulator::default();
                let none = SimOverrides::none();
                let started = Instant::now();
                let outcome =
                    simulator.simulate_validation(&fresh, &context, version, &op, none)?;
                let fresh_time = started.elapsed();
                assert!(!outcome.account.signature_failed);
                let started = Instant::now();
                simulator.simulate_validation(&next, &context, version, &op, none)?;
                Ok::<_, settled_sim::SimError>((fresh_time, started.elapsed(), next))
            })
            .await??;
            cold.push(fresh_time);
            if previous.is_some() {
                successor.push(next_time);
            }
            previous = Some(next);
        }
        cold.sort();
        successor.sort();

        // Warm: one thread, the same block's cached state.
        let block = BlockId::number(provider.get_block_number().await?);
        let context = BlockContext::fetch(&provider, block).await?;
        let state = BlockState::new(provider.clone(), block, tokio::runtime::Handle::current());
        let warm_op = op.clone();
        let (elapsed, accounts, slots, rates) = tokio::task::spawn_blocking(move || {
            let simulator = Simulator::default();
            simulator.simulate_validation(
                &state,
                &context,
                version,
                &warm_op,
                SimOverrides::none(),
            )?;
            // Ten batches: the host is shared, so report the median batch and the spread.
            let batch = (warm_iterations / 10).max(1);
            let mut rates = Vec::new();
            let started = Instant::now();
            for _ in 0..10 {
                let batch_started = Instant::now();
                for _ in 0..batch {
                    let outcome = simulator.simulate_validation(
                        &state,
                        &context,
                        version,
                        &warm_op,
                        SimOverrides::none(),
                    )?;
                    std::hint::black_box(outcome);
                }
                rates.push(batch as f64 / batch_started.elapsed().as_secs_f64());
            }
            rates.sort_by(f64::total_cmp);
            let (accounts, slots) = state.cached();
            Ok::<_, settled_sim::SimError>((started.elapsed(), accounts, slots, rates))
        })
        .await??;
        let warm_runs = (warm_iterations / 10).max(1) * 10;
        let per_second = warm_runs as f64 / elapsed.as_secs_f64();
        let median = rates.get(rates.len() / 2).copied().unwrap_or_default();
        let (slowest, fastest) =
            (rates.first().copied().unwrap_or_default(), rates.last().copied().unwrap_or_default());

        // Warm simulateHandleOp and estimate_gas on the same cached state.
        let block_state =
            BlockState::new(provider.clone(), block, tokio::runtime::Handle::current());
        let handle_op = op.clone();
        let handle_op_runs = (warm_iterations / 4).max(1);
        let estimate_runs = (warm_iterations / 100).max(1);
        let (handle_op_elapsed, estimate_elapsed, estimate) =
            tokio::task::spawn_blocking(move || {
                let simulator = Simulator::default();
                let none = SimOverrides::none();
                simulator.simulate_handle_op(&block_state, &context, version, &handle_op, none)?;
                let started = Instant::now();
                for _ in 0..handle_op_runs {
                    let outcome = simulator.simulate_handle_op(
                        &block_state,
                        &context,
                        version,
                        &handle_op,
                        none,
                    )?;
                    std::hint::black_box(outcome);
                }
                let handle_op_elapsed = started.elapsed();
                let estimate =
                    simulator.estimate_gas(&block_state, &context, version, &handle_op, none)?;
                let started = Instant::now();
                for _ in 0..estimate_runs {
                    let outcome = simulator.estimate_gas(
                        &block_state,
                        &context,
                        version,
                        &handle_op,
                        none,
                    )?;
                    std::hint::black_box(outcome);
                }
                Ok::<_, settled_sim::SimError>((handle_op_elapsed, started.elapsed(), estimate))
            })
            .await??;

        // Anvil: eth_call with the same override, sequentially.
        let (tx, overrides) = simulate_validation_request(version, &op)?;
        let mut anvil = Vec::new();
        for _ in 0..200 {
            let started = Instant::now();
            provider.call(tx.clone()).block(block).overrides(overrides.clone()).await?;
            anvil.push(started.elapsed());
        }
        anvil.sort();
        let anvil_mean = anvil.iter().sum::<Duration>() / anvil.len() as u32;
        let warm_mean = elapsed / warm_runs as u32;

        println!("{version:?}:");
        println!(
            "  warm  revm   {per_second:>10.0} validations/s on one thread ({warm_runs} runs, mean {warm_mean:?}; batches of a tenth: median {median:.0}/s, slowest {slowest:.0}/s, fastest {fastest:.0}/s); cache {accounts} accounts, {slots} slots"
        );
        println!(
            "  cold  revm   p50 {:?}  max {:?}  (first validation after a new block, 10 blocks)",
            percentile(&cold, 0.5),
            percentile(&cold, 1.0)
        );
        println!(
            "  next  revm   p50 {:?}  max {:?}  (first validation after a new block, successor view, 9 blocks)",
            percentile(&successor, 0.5),
            percentile(&successor, 1.0)
        );
        println!(
            "  anvil eth_call p50 {:?}  p99 {:?}  mean {anvil_mean:?}  (200 calls)",
            percentile(&anvil, 0.5),
            percentile(&anvil, 0.99)
        );
        println!(
            "  ratio anvil eth_call mean / warm revm mean: {:.2}x",
            anvil_mean.as_secs_f64() / warm_mean.as_secs_f64()
        );
        println!(
            "  warm  revm   {:>10.0} simulateHandleOp/s on one thread ({handle_op_runs} runs)",
            handle_op_runs as f64 / handle_op_elapsed.as_secs_f64()
        );
        println!(
            "  warm  revm   {:>10.1} gas estimations/s on one thread ({estimate_runs} runs, mean {:?}): {estimate:?}",
            estimate_runs as f64 / estimate_elapsed.as_secs_f64(),
            estimate_elapsed / estimate_runs as u32
        );
    }
    Ok(())
}
