//! The contract every [`IndexStore`] backend keeps, run against each: sled in this crate's
//! tests, PostgreSQL in the workspace's `store` tests. Each scenario gets a store of its own
//! vault (a shared database keeps every vault apart).

use std::sync::Arc;

use alloy::{
    primitives::{Address, B256, U256, aliases::U96},
    rpc::types::Log,
    sol_types::SolEvent,
};
use settled_contracts::{BlockRef, NewBlock, StreamVault as vault};

use super::{IndexError, IndexStore, StreamId, StreamIndex, StreamSelector};
use crate::accrual::StreamState;

/// A contract check's outcome.
pub type Outcome = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const PAYER: Address = Address::repeat_byte(1);
const TOKEN: Address = Address::repeat_byte(3);

/// A log of the vault at `at`.
fn log(at: Address, data: alloy::primitives::LogData) -> Log {
    Log { inner: alloy::primitives::Log { address: at, data }, ..Default::default() }
}

/// `StreamOpened` of stream `id` to `payee`, 1 base unit per second.
pub fn opened(at: Address, id: u64, payee: Address) -> Log {
    let event = vault::StreamOpened {
        streamId: U256::from(id),
        payer: PAYER,
        payee,
        token: TOKEN,
        decimals: 6,
        operator: Address::repeat_byte(4),
        ratePerSecond: U96::from(10u64.pow(12)),
        maxRate: U96::ZERO,
        maxTotal: U96::ZERO,
    };
    log(at, event.encode_log_data())
}

/// `Deposited` of `amount` into stream `id`.
pub fn deposited(at: Address, id: u64, amount: u128) -> Log {
    log(at, vault::Deposited { streamId: U256::from(id), funder: PAYER, amount }.encode_log_data())
}

/// Block `number` at second `timestamp`, child of block `number - 1`.
pub fn block(number: u64, timestamp: u64, logs: Vec<Log>) -> NewBlock {
    NewBlock {
        block: BlockRef { number, hash: B256::from(U256::from(number)) },
        parent_hash: B256::from(U256::from(number - 1)),
        timestamp,
        logs,
    }
}

/// Every scenario, each on `store_for(its vault)`.
pub async fn keeps_the_contract(store_for: impl Fn(Address) -> Arc<dyn IndexStore>) -> Outcome {
    history_answers_for_any_past_second(&store_for).await?;
    a_block_that_does_not_follow_the_cursor_is_refused(&store_for).await?;
    a_batch_withdrawal_pays_each_stream_it_lists(&store_for).await?;
    party_indexes_and_history_follow_reorgs(&store_for).await?;
    Ok(())
}

async fn index(
    store_for: &impl Fn(Address) -> Arc<dyn IndexStore>,
    vault: u8,
) -> Result<(Address, StreamIndex), IndexError> {
    let vault = Address::repeat_byte(vault);
    Ok((vault, StreamIndex::on_store(store_for(vault), vault, 16, Default::default()).await?))
}

/// A balance at a past second uses the state of then: a later deposit, which leaves the
/// accrual snapshot alone, does not leak into earlier seconds.
async fn history_answers_for_any_past_second(
    store_for: &impl Fn(Address) -> Arc<dyn IndexStore>,
) -> Outcome {
    let (at, index) = index(store_for, 0x51).await?;
    let payee = Address::repeat_byte(2);
    index.apply_block(&block(1, 1_000, vec![opened(at, 1, payee), deposited(at, 1, 100)])).await?;
    index.apply_block(&block(2, 1_050, vec![deposited(at, 1, 40)])).await?;
    assert!(index.get_at(1, 999).await?.is_none(), "not open yet");
    let then = index.get_at(1, 1_049).await?.ok_or("no state at 1049")?;
    assert_eq!(then.balance, 100);
    assert_eq!(then.covered_debt(1_049), 49);
    let now = index.get_at(1, 1_200).await?.ok_or("no state at 1200")?;
    assert_eq!(now.balance, 140);
    assert_eq!(now.covered_debt(1_200), 140);
    assert_eq!(Some(now.clone()), index.get(1).await?);
    assert_eq!(index.store.get_many(&[1, 99]).await?, vec![(1, now)], "only the known ones");
    let changes = index.changes_between(1, 1_000, 1_200).await?;
    assert_eq!(changes.iter().map(|(t, s)| (*t, s.balance)).collect::<Vec<_>>(), [(1_050, 140)]);
    Ok(())
}

/// A block that skips ahead of the cursor, or whose parent is not the cursor's block, is
/// refused and changes nothing: the index never applies past a hole. A write folded on a
/// cursor the store no longer has (another writer moved it) is refused by the store itself.
async fn a_block_that_does_not_follow_the_cursor_is_refused(
    store_for: &impl Fn(Address) -> Arc<dyn IndexStore>,
) -> Outcome {
    let (at, index) = index(store_for, 0x52).await?;
    let payee = Address::repeat_byte(2);
    index.apply_block(&block(1, 1_000, vec![opened(at, 1, payee), deposited(at, 1, 100)])).await?;
    let skipped = index.apply_block(&block(3, 1_100, vec![deposited(at, 1, 5)])).await;
    assert!(matches!(skipped, Err(IndexError::Gap { cursor: 1, block: 3, .. })), "{skipped:?}");
    let mut forked = block(2, 1_050, vec![deposited(at, 1, 5)]);
    forked.parent_hash = B256::repeat_byte(9);
    let forked = index.apply_block(&forked).await;
    assert!(matches!(forked, Err(IndexError::Gap { cursor: 1, block: 2, .. })), "{forked:?}");
    let stale = super::BlockWrite {
        cursor: super::IndexCursor { number: 2, hash: B256::repeat_byte(2), timestamp: 1_050 },
        previous: None,
        touched: Vec::new(),
        notices: Vec::new(),
    };
    let stale = index.store.commit(&stale).await;
    assert!(matches!(stale, Err(IndexError::Gap { block: 2, .. })), "{stale:?}");
    assert_eq!(index.get(1).await?.map(|s| s.balance), Some(100));
    assert_eq!(index.cursor().await?.map(|c| c.number), Some(1));
    index.apply_block(&block(2, 1_050, vec![deposited(at, 1, 5)])).await?;
    assert_eq!(index.get(1).await?.map(|s| s.balance), Some(105));
    Ok(())
}

/// One `BatchWithdrawn` pays each listed stream its own amount, at the block's second, and
/// leaves the streams it does not list alone.
async fn a_batch_withdrawal_pays_each_stream_it_lists(
    store_for: &impl Fn(Address) -> Arc<dyn IndexStore>,
) -> Outcome {
    let (at, index) = index(store_for, 0x53).await?;
    let payee = Address::repeat_byte(2);
    let opens = (1..=3).flat_map(|id| [opened(at, id, payee), deposited(at, id, 100)]).collect();
    index.apply_block(&block(1, 1_000, opens)).await?;
    let entry = |id: u64, amount: u64| U256::from(id) << 128 | U256::from(amount);
    let paid = vault::BatchWithdrawn { paid: vec![entry(1, 30), entry(3, 25)] };
    let touched =
        index.apply_block(&block(2, 1_030, vec![log(at, paid.encode_log_data())])).await?;
    assert_eq!(touched, vec![1, 3]);
    let one = index.get(1).await?.ok_or("no stream 1")?;
    assert_eq!((one.withdrawn, one.balance, one.covered_debt(1_030)), (30, 70, 0));
    let three = index.get(3).await?.ok_or("no stream 3")?;
    assert_eq!((three.withdrawn, three.balance, three.covered_debt(1_030)), (25, 75, 5));
    let two = index.get(2).await?.ok_or("no stream 2")?;
    assert_eq!((two.withdrawn, two.covered_debt(1_030)), (0, 30), "not listed: untouched");
    Ok(())
}

fn ids(page: Vec<(StreamId, StreamState)>) -> Vec<StreamId> {
    page.into_iter().map(|(id, _)| id).collect()
}

/// Party indexes select exactly a payer's or payee's streams, page by page; a reorg removes
/// the history and index entries its blocks added.
async fn party_indexes_and_history_follow_reorgs(
    store_for: &impl Fn(Address) -> Arc<dyn IndexStore>,
) -> Outcome {
    let (at, index) = index(store_for, 0x54).await?;
    let (a, b) = (Address::repeat_byte(0xa), Address::repeat_byte(0xb));
    let logs = (1..=6).map(|id| opened(at, id, if id % 2 == 0 { a } else { b })).collect();
    index.apply_block(&block(1, 1_000, logs)).await?;
    let all = |_: &StreamState| true;
    assert_eq!(ids(index.list(StreamSelector::Payee(a), None, 10, all).await?), [2, 4, 6]);
    assert_eq!(ids(index.list(StreamSelector::Payee(a), Some(2), 1, all).await?), [4]);
    assert_eq!(ids(index.list(StreamSelector::Payer(PAYER), Some(4), 10, all).await?), [5, 6]);
    let odd = |s: &StreamState| s.payee == b;
    assert_eq!(ids(index.list(StreamSelector::All, Some(1), 2, odd).await?), [3, 5]);
    assert!(index.list(StreamSelector::Payer(a), None, 10, all).await?.is_empty());

    index.apply_block(&block(2, 1_010, vec![opened(at, 7, a), deposited(at, 2, 5)])).await?;
    assert_eq!(index.get_at(2, 1_010).await?.map(|s| s.balance), Some(5));
    let removed = [BlockRef { number: 2, hash: B256::from(U256::from(2)) }];
    assert_eq!(index.unwind(&removed).await?, 1);
    assert_eq!(index.cursor().await?.map(|c| c.number), Some(1));
    assert!(index.get(7).await?.is_none());
    assert!(index.get_at(7, 2_000).await?.is_none(), "the reorged-out open left no history");
    assert_eq!(index.get_at(2, 2_000).await?.map(|s| s.balance), Some(0));
    let of_a = ids(index.list(StreamSelector::Payee(a), None, 10, all).await?);
    assert_eq!(of_a, [2, 4, 6], "the reorged-out stream left the payee index");
    assert_eq!(index.unwind(&removed).await?, 0, "undone once");
    Ok(())
}
