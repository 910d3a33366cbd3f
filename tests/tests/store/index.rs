//! The stream index on PostgreSQL, and what the shared store forgets.

use super::*;

/// The stream index's contract on PostgreSQL (sled's runs in the streams crate's unit tests);
/// a reader node sees what the writer wrote and gets its notices through the relay; a writer
/// whose lease was taken over writes nothing.
#[tokio::test]
async fn postgres_keeps_the_stream_index_contract_and_fences_the_writer() -> TestResult {
    use settled_streams::{IndexError, IndexStore, PgIndex, StreamIndex, index_contract};
    let postgres = TestPostgres::start()?;
    let store = PgStore::connect(&postgres.url(), Duration::from_secs(5)).await?;
    let name = "stream-index:0x61";
    let lease = store.acquire(name, "node-a", Duration::from_millis(500)).await?.ok_or("free")?;
    let (_fence_tx, fence) = tokio::sync::watch::channel(Some(Fence::Lease(lease)));
    let on = |vault, fence| Arc::new(PgIndex::new(store.clone(), vault, fence));
    let shared = |vault| on(vault, fence.clone()) as Arc<dyn IndexStore>;
    index_contract::keeps_the_contract(shared).await.map_err(|e| e.to_string())?;

    let vault = Address::repeat_byte(0x61);
    let writer =
        StreamIndex::on_store(on(vault, fence.clone()), vault, 16, Default::default()).await?;
    let (_, none) = tokio::sync::watch::channel(None);
    let reader =
        StreamIndex::on_store(on(vault, none.clone()), vault, 16, Default::default()).await?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let mut notices = reader.subscribe();
    tokio::spawn(
        PgIndex::new(store.clone(), vault, none).relay(reader.notice_sender(), cancel.clone()),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let payee = Address::repeat_byte(2);
    let opened = index_contract::opened(vault, 1, payee);
    writer.apply_block(&index_contract::block(1, 1_000, vec![opened])).await?;
    let notice = tokio::time::timeout(Duration::from_secs(5), notices.recv()).await??;
    assert_eq!((notice.block, notice.stream.id.as_str()), (1, "1"), "relayed to the reader");
    assert!(reader.wait_for_block(1, Duration::from_millis(100)).await, "the shared cursor");
    assert_eq!(reader.get(1).await?, writer.get(1).await?);
    let refused = reader.apply_block(&index_contract::block(2, 1_001, Vec::new())).await;
    assert!(matches!(refused, Err(IndexError::NotLeading(_))), "{refused:?}");

    // Taken over by node b after the lease lapsed: node a's writes are refused.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let taken = store.acquire(name, "node-b", Duration::from_secs(30)).await?;
    assert_eq!(taken.map(|l| l.epoch), Some(2));
    let deposit = index_contract::deposited(vault, 1, 50);
    let stale = writer.apply_block(&index_contract::block(2, 1_001, vec![deposit])).await;
    assert!(matches!(stale, Err(IndexError::NotLeading(_))), "{stale:?}");
    assert_eq!(reader.cursor().await?.map(|c| c.number), Some(1), "nothing written");
    assert_eq!(reader.get(1).await?.map(|s| s.balance), Some(0));
    Ok(())
}

/// Notices and submissions past their retention are deleted, younger ones kept; a second pass
/// finds nothing more.
#[tokio::test]
async fn old_notices_and_submissions_are_forgotten() -> TestResult {
    use settled_bundler::BundlerStore as _;
    let postgres = TestPostgres::start()?;
    let store = PgStore::connect(&postgres.url(), Duration::from_secs(5)).await?;
    store.publish("retention", &json!({ "n": 1 })).await?;
    store.publish("retention", &json!({ "n": 2 })).await?;
    let (_, none) = tokio::sync::watch::channel(None);
    let bundler = settled_store::PgBundler::new(store.clone(), none);
    let op = settled_bundler::store_contract::op(0x42, 0);
    bundler.submit(settled_contracts::EntryPointVersion::V08.canonical_address(), &op).await?;
    let hour = Duration::from_secs(3_600);
    assert_eq!(store.forget_old(hour, hour).await?, settled_store::Forgotten::default());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let forgotten = store.forget_old(Duration::from_millis(10), Duration::from_millis(10)).await?;
    assert_eq!((forgotten.notices, forgotten.submissions), (2, 1));
    assert_eq!(store.latest_notice("retention").await?, 0, "none left");
    let again = store.forget_old(Duration::ZERO, Duration::ZERO).await?;
    assert_eq!(again, settled_store::Forgotten::default());
    Ok(())
}
