//! Benchmark of the streams domain (issue #6), in-process (no chain needed):
//!
//! 1. Exact balances of N streams at one timestamp: every view (total, covered, uncovered debt,
//!    refundable, depletion time) of N mirrored streams, time and resident memory.
//! 2. Indexer throughput: N `StreamOpened` + `Deposited` event pairs applied block by block
//!    (1,000 streams per block), events/s.
//! 3. `stream_list` with N streams: a page of 100 unfiltered, a page of one payee that
//!    owns 1 stream in 1,000 through the payee index, and the same by a scan with a filter (what
//!    a key seeing several payees costs), p50/p99.
//! 4. A stream's state at a past second from its history (`stream_balanceAt`), p50/p99.
//!
//! Run: `cargo run --release -p settled-tests --bin bench-streams [-- N [postgres]]` (default
//! 1,000,000 streams in sled; `postgres`: the shared index, in a PostgreSQL the benchmark starts,
//! written under a lease as a node that holds it writes).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use alloy::{
    primitives::{Address, B256, U256, aliases::U96},
    rpc::types::Log,
    sol_types::SolEvent,
};
use settled_contracts::{BlockRef, NewBlock, StreamVault};
use settled_streams::{IndexStore, PgIndex, SledIndex, StreamIndex, StreamSelector, StreamState};
use settled_tests::{TestResult, percentile};

const VAULT: Address = Address::repeat_byte(0x5a);
const T0: u64 = 1_700_000_000;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn payee_of(i: u64) -> Address {
    // 1,000 payees, so one payee owns 1 stream in 1,000.
    let mut bytes = [0x77u8; 20];
    bytes[12..].copy_from_slice(&(i % 1_000).to_be_bytes());
    Address::from(bytes)
}

fn rate_of(i: u64) -> u128 {
    // Slow, odd rates: fractions of a base unit accrue.
    1_000_000_000_000 + u128::from(i % 997) * 7_919
}

fn balances(n: u64) -> TestResult {
    let before = rss_mib();
    let mut streams = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut s = StreamState::opened(
            Address::repeat_byte(1),
            payee_of(i),
            Address::repeat_byte(3),
            Address::repeat_byte(4),
            6,
            rate_of(i),
            0,
            0,
            T0 + i % 86_400,
        )?;
        s.deposit(1_000_000 + u128::from(i))?;
        streams.push(s);
    }
    let built = rss_mib();
    let at = T0 + 90_000;
    let started = Instant::now();
    let mut checksum = U256::ZERO;
    for s in &streams {
        checksum += s.total_debt(at)
            + U256::from(s.covered_debt(at))
            + s.uncovered_debt(at)
            + U256::from(s.refundable(at))
            + U256::from(s.depletion_time(at));
    }
    let elapsed = started.elapsed();
    println!(
        "balances: {n} streams, every view at one timestamp in {:.3} s ({:.0} ns/stream); RSS {:.0} MiB before, {:.0} MiB with the streams (checksum {checksum})",
        elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / n as f64,
        before,
        built
    );
    Ok(())
}

fn log(data: alloy::primitives::LogData) -> Log {
    Log { inner: alloy::primitives::Log { address: VAULT, data }, ..Default::default() }
}

async fn index(n: u64, store: Arc<dyn IndexStore>) -> TestResult<Arc<StreamIndex>> {
    let index = Arc::new(StreamIndex::on_store(store, VAULT, 64, Default::default()).await?);
    let per_block = 1_000u64;
    let started = Instant::now();
    let mut events = 0u64;
    for (number, first) in (0..n).step_by(per_block as usize).enumerate() {
        let mut logs = Vec::with_capacity(2 * per_block as usize);
        for i in first..(first + per_block).min(n) {
            let id = U256::from(i + 1);
            logs.push(log(StreamVault::StreamOpened {
                streamId: id,
                payer: Address::repeat_byte(1),
                payee: payee_of(i),
                token: Address::repeat_byte(3),
                decimals: 6,
                operator: Address::repeat_byte(4),
                ratePerSecond: U96::from(rate_of(i)),
                maxRate: U96::ZERO,
                maxTotal: U96::ZERO,
            }
            .encode_log_data()));
            logs.push(log(StreamVault::Deposited {
                streamId: id,
                funder: Address::repeat_byte(1),
                amount: 1_000_000,
            }
            .encode_log_data()));
        }
        events += logs.len() as u64;
        let block = NewBlock {
            block: BlockRef { number: number as u64 + 1, hash: B256::from(U256::from(number + 1)) },
            parent_hash: B256::from(U256::from(number)),
            timestamp: T0 + number as u64,
            logs,
        };
        index.apply_block(&block).await?;
    }
    let elapsed = started.elapsed();
    println!(
        "indexer: {events} events ({n} streams opened and funded, {per_block} per block) in {:.1} s = {:.0} events/s",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
    Ok(index)
}

async fn list(index: &StreamIndex, n: u64) -> TestResult {
    let mut unfiltered = Vec::new();
    let mut by_payee = Vec::new();
    let mut scanned = Vec::new();
    let mut past = Vec::new();
    for round in 0..50u64 {
        let after = (round * 7_919) % n;
        let started = Instant::now();
        let page = index.list(StreamSelector::All, Some(after), 100, |_| true).await?;
        unfiltered.push(started.elapsed());
        assert!(!page.is_empty() || after + 100 > n);
        let payee = payee_of(round);
        let started = Instant::now();
        let page = index.list(StreamSelector::Payee(payee), None, 100, |_| true).await?;
        by_payee.push(started.elapsed());
        assert_eq!(page.len(), 100.min((n / 1_000) as usize));
        let started = Instant::now();
        let page = index.list(StreamSelector::All, None, 100, |s| s.payee == payee).await?;
        scanned.push(started.elapsed());
        assert_eq!(page.len(), 100.min((n / 1_000) as usize));
        let id = 1 + (round * 15_485_863) % n;
        let started = Instant::now();
        let state = index.get_at(id, T0 + n).await?.ok_or("no history")?;
        past.push(started.elapsed());
        assert_eq!(state.balance, 1_000_000);
    }
    for samples in [&mut unfiltered, &mut by_payee, &mut scanned, &mut past] {
        samples.sort();
    }
    let started = Instant::now();
    let all = index.list(StreamSelector::All, None, usize::MAX, |_| true).await?;
    println!(
        "full scan of {} streams (once at start-up, to schedule alerts): {:.2} s",
        all.len(),
        started.elapsed().as_secs_f64()
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "stream_list with {n} streams, page of 100: from a cursor p50 {:.2} ms p99 {:.2} ms; one payee (1 in 1,000) by its index p50 {:.2} ms p99 {:.2} ms, by a scan p50 {:.1} ms p99 {:.1} ms",
        ms(percentile(&unfiltered, 0.5)),
        ms(percentile(&unfiltered, 0.99)),
        ms(percentile(&by_payee, 0.5)),
        ms(percentile(&by_payee, 0.99)),
        ms(percentile(&scanned, 0.5)),
        ms(percentile(&scanned, 0.99)),
    );
    println!(
        "a stream's state at a past second from its history: p50 {:.3} ms p99 {:.3} ms",
        ms(percentile(&past, 0.5)),
        ms(percentile(&past, 0.99)),
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> TestResult {
    let n: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    balances(n)?;
    let dir = tempfile::tempdir()?;
    let (store, _postgres): (Arc<dyn IndexStore>, _) = match std::env::args().nth(2).as_deref() {
        Some("postgres") => {
            let postgres = settled_tests::postgres::TestPostgres::start()?;
            let pg =
                settled_store::PgStore::connect(&postgres.url(), Duration::from_secs(5)).await?;
            let ttl = Duration::from_secs(3_600);
            let lease = settled_store::LeaseStore::acquire(&pg, "stream-index:bench", "bench", ttl)
                .await?
                .ok_or("the lease")?;
            let fence = tokio::sync::watch::channel(Some(settled_store::Fence::Lease(lease))).1;
            println!("store: PostgreSQL (the shared index; each block one fenced transaction)");
            (Arc::new(PgIndex::new(pg, VAULT, fence)), Some(postgres))
        }
        _ => (Arc::new(SledIndex::open(&sled::open(dir.path())?)?), None),
    };
    let index = index(n, store).await?;
    list(&index, n).await?;
    println!("RSS at the end: {:.0} MiB", rss_mib());
    Ok(())
}
