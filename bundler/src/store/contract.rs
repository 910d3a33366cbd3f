//! The contract every [`BundlerStore`] backend keeps, run against each: sled in this crate's
//! tests, PostgreSQL in `settled-store`'s. `shared` runs the parts only a shared store has
//! (submissions and their answers).

use alloy::primitives::{Address, B256, Bytes, U256};
use settled_contracts::{EntryPointVersion, UserOperation};

use super::{BundlerStore, SentOps, Verdict};
use crate::{
    pool::{PoolEntry, StakedEntities},
    reputation::ReputationCounts,
    service::MinedOp,
};

/// A contract check's outcome.
pub type Outcome = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// An op of `sender` at `nonce`.
pub fn op(sender: u8, nonce: u64) -> UserOperation {
    UserOperation {
        sender: Address::repeat_byte(sender),
        nonce: U256::from(nonce),
        factory: None,
        factory_data: None,
        call_data: Bytes::from_static(b"call"),
        call_gas_limit: U256::from(100_000),
        verification_gas_limit: U256::from(100_000),
        pre_verification_gas: U256::from(50_000),
        max_fee_per_gas: U256::from(1_000_000_000u64),
        max_priority_fee_per_gas: U256::from(1_000_000_000u64),
        paymaster: None,
        paymaster_verification_gas_limit: None,
        paymaster_post_op_gas_limit: None,
        paymaster_data: None,
        signature: Bytes::from_static(b"sig"),
        eip7702_auth: None,
    }
}

fn entry(n: u8) -> PoolEntry {
    PoolEntry {
        hash: B256::repeat_byte(n),
        entry_point: EntryPointVersion::V08,
        op: op(n, 0),
        staked: StakedEntities::default(),
        code_hashes: Default::default(),
        valid_until: u64::MAX,
        accepted_at_block: 7,
    }
}

fn mined(entry: &PoolEntry, block: u8) -> MinedOp {
    MinedOp {
        hash: entry.hash,
        entry_point: entry.entry_point.canonical_address(),
        op: Some(entry.op.clone()),
        sender: entry.op.sender,
        nonce: entry.op.nonce,
        paymaster: Address::ZERO,
        actual_gas_cost: U256::from(21),
        actual_gas_used: U256::from(7),
        success: true,
        block_number: u64::from(block),
        block_hash: B256::repeat_byte(block),
        transaction_hash: B256::repeat_byte(0xee),
        log_index: 3,
    }
}

fn hashes(mut entries: Vec<PoolEntry>) -> Vec<B256> {
    entries.sort_by_key(|e| e.hash);
    entries.into_iter().map(|e| e.hash).collect()
}

/// The pool's durable copy, the mined index with reorgs, recorded bundles and reputation, on a
/// store the caller leads.
pub async fn pool_index_and_records(store: &dyn BundlerStore) -> Outcome {
    let (a, b, c) = (entry(1), entry(2), entry(3));
    store.admit(&a, &[], None).await?;
    store.admit(&b, &[], None).await?;
    // c replaces b in the same step.
    store.admit(&c, &[b.hash], None).await?;
    assert_eq!(hashes(store.pool().await?), vec![a.hash, c.hash]);
    assert_eq!(store.pool_entry(a.hash).await?, Some(a.clone()));
    assert_eq!(store.pool_entry(b.hash).await?, None);

    // Mined in block 9: indexed (twice, as two nodes would) and out of the pool.
    let mined_a = mined(&a, 9);
    store.index_mined(std::slice::from_ref(&mined_a)).await?;
    store.index_mined(std::slice::from_ref(&mined_a)).await?;
    assert_eq!(store.mined(a.hash).await?, Some(mined_a.clone()));
    assert_eq!(hashes(store.pool().await?), vec![c.hash]);

    // A reorg removes block 9: a is back in the pool, out of the index; a second node's
    // unindexing of the same block moves nothing.
    let moved = store.unindex_blocks(&[B256::repeat_byte(9)]).await?;
    assert_eq!(moved, vec![mined_a.clone()]);
    assert!(store.unindex_blocks(&[B256::repeat_byte(9)]).await?.is_empty());
    assert_eq!(store.mined(a.hash).await?, None);
    let requeued = store.pool_entry(a.hash).await?.ok_or("a requeued")?;
    assert_eq!((requeued.op, requeued.accepted_at_block), (a.op.clone(), 9));
    store.remove(&[a.hash, B256::repeat_byte(0x77)]).await?;
    assert_eq!(hashes(store.pool().await?), vec![c.hash]);
    store.clear_pool().await?;
    assert!(store.pool().await?.is_empty());

    // Bundles recorded before the broadcast; a watcher of an older record at a nonce sent
    // again leaves the new one.
    let ops = vec![(a.hash, a.op.sender)];
    let other = vec![(c.hash, c.op.sender)];
    let sent = |ops: &[(B256, Address)], raw: &'static [u8]| SentOps {
        ops: ops.to_vec(),
        raw: Some(Bytes::from_static(raw)),
    };
    store.record_sent(7, &sent(&ops, b"first")).await?;
    store.record_sent(8, &sent(&ops, b"first")).await?;
    store.remove_sent(8, &ops).await?;
    store.record_sent(7, &sent(&other, b"other")).await?;
    // A fee bump replaces the raw bytes; the record still carries the same ops.
    store.record_sent(7, &sent(&other, b"bumped")).await?;
    store.remove_sent(7, &ops).await?;
    assert_eq!(store.sent().await?, vec![(7, sent(&other, b"bumped"))]);
    store.remove_sent(7, &other).await?;
    assert!(store.sent().await?.is_empty());
    // A record of an earlier version, without its bytes, reads as one.
    store.record_sent(9, &SentOps { ops: ops.clone(), raw: None }).await?;
    assert_eq!(store.sent().await?, vec![(9, SentOps { ops: ops.clone(), raw: None })]);
    store.remove_sent(9, &ops).await?;

    // Reputation: stored, a zero forgotten, cleared.
    let (v07, v08) = (EntryPointVersion::V07, EntryPointVersion::V08);
    let counts = ReputationCounts { ops_seen: 5, ops_included: 2 };
    let zero = ReputationCounts::default();
    let paymaster = Address::repeat_byte(0xba);
    store.put_reputation(&[(v07, paymaster, counts), (v08, paymaster, counts)]).await?;
    store.put_reputation(&[(v08, paymaster, zero)]).await?;
    assert_eq!(store.reputation().await?, vec![(v07, paymaster, counts)]);
    store.clear_reputation().await?;
    assert!(store.reputation().await?.is_empty());
    Ok(())
}

#[cfg_attr(test, allow(dead_code))] // sled has no submissions: run by the shared backend's tests
/// Submissions on a shared store: answered once (an acceptance in the step that pools the op),
/// withdrawn when their node stops waiting, listed oldest first while unanswered.
pub async fn submissions(store: &dyn BundlerStore) -> Outcome {
    let entry_point = EntryPointVersion::V08.canonical_address();
    let (first, second, third) = (op(0x31, 0), op(0x32, 0), op(0x33, 0));
    let one = store.submit(entry_point, &first).await?;
    let two = store.submit(entry_point, &second).await?;
    let three = store.submit(entry_point, &third).await?;
    let waiting = store.submissions().await?;
    assert_eq!(waiting.iter().map(|s| s.id).collect::<Vec<_>>(), vec![one, two, three]);
    assert_eq!((waiting[0].entry_point, &waiting[0].op), (entry_point, &first));

    let accepted = PoolEntry { op: first, ..entry(0x31) };
    store.admit(&accepted, &[], Some(one)).await?;
    assert_eq!(store.verdict(one, false).await?, Some(Verdict::Accepted(accepted.hash)));
    assert_eq!(store.verdict(one, false).await?, None, "taken when read");
    assert!(store.pool_entry(accepted.hash).await?.is_some(), "pooled in the same step");
    let refused = Verdict::Refused { code: -32507, message: "bad signature".into(), data: None };
    store.answer(two, &refused).await?;
    assert_eq!(store.verdict(two, true).await?, Some(refused));
    assert_eq!(store.verdict(three, false).await?, None);
    assert_eq!(store.submissions().await?.iter().map(|s| s.id).collect::<Vec<_>>(), vec![three]);
    // Withdrawn: no verdict, and no leader sees it any more.
    assert_eq!(store.verdict(three, true).await?, None);
    assert!(store.submissions().await?.is_empty());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn sled_keeps_the_contract() -> super::Outcome {
        let dir = tempfile::tempdir()?;
        let db = sled::open(dir.path())?;
        super::pool_index_and_records(&crate::SledBundler::open(&db)?).await
    }
}
