use std::sync::Arc;

use super::{contract, *};

fn sled_store(dir: &tempfile::TempDir) -> impl Fn(Address) -> Arc<dyn IndexStore> + use<'_> {
    move |vault| {
        let path = dir.path().join(vault.to_string());
        let db = sled::open(path).expect("a sled database in a temporary directory");
        Arc::new(SledIndex::open(&db).expect("the index's trees")) as Arc<dyn IndexStore>
    }
}

/// The store contract on sled (PostgreSQL's runs in the workspace's `store` tests).
#[tokio::test]
async fn sled_keeps_the_index_contract() -> contract::Outcome {
    let dir = tempfile::tempdir()?;
    contract::keeps_the_contract(sled_store(&dir)).await
}

/// A reader waiting for a block wakes when the index applies it (no polling), and gives up
/// at its timeout; the block's notices reach this node's subscribers.
#[tokio::test]
async fn waiting_for_a_block_wakes_when_it_is_applied() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = sled::open(dir.path())?;
    let vault = Address::repeat_byte(0x5a);
    let index = Arc::new(StreamIndex::open(&db, vault, 16, AlertThresholds::default()).await?);
    let mut notices = index.subscribe();
    let short = std::time::Duration::from_millis(50);
    assert!(!index.wait_for_block(1, short).await, "nothing applied yet");
    let waiter = {
        let index = index.clone();
        tokio::spawn(
            async move { index.wait_for_block(2, std::time::Duration::from_secs(10)).await },
        )
    };
    let opened = contract::opened(vault, 1, Address::repeat_byte(2));
    index.apply_block(&contract::block(1, 1_000, vec![opened])).await?;
    index.apply_block(&contract::block(2, 1_001, Vec::new())).await?;
    assert!(waiter.await?, "woken by block 2");
    assert!(index.wait_for_block(2, short).await, "already there");
    let notice = notices.try_recv()?;
    assert_eq!(
        (notice.kind, notice.block, notice.stream.id.as_str()),
        (NoticeKind::Changed, 1, "1")
    );
    Ok(())
}
