//! The chain follower on a real Anvil: every block in order with the watched contracts' logs,
//! and reorgs (Anvil's `anvil_reorg`) reported with the removed blocks, then the new ones.

use std::time::Duration;

use alloy::{
    primitives::U256,
    providers::{Provider, ext::AnvilApi},
};
use settled_contracts::{ChainEvent, ChainFollower, FollowerConfig, MockUSDC};
use settled_tests::{TestChain, TestResult};
use tokio::sync::broadcast::Receiver;
use tokio_util::sync::CancellationToken;

async fn next_event(events: &mut Receiver<ChainEvent>) -> TestResult<ChainEvent> {
    Ok(tokio::time::timeout(Duration::from_secs(10), events.recv()).await??)
}

async fn next_block(
    events: &mut Receiver<ChainEvent>,
) -> TestResult<std::sync::Arc<settled_contracts::NewBlock>> {
    match next_event(events).await? {
        ChainEvent::Block(block) => Ok(block),
        ChainEvent::Reorg(reorg) => Err(format!("unexpected reorg {reorg:?}").into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_blocks_logs_and_reorgs() -> TestResult {
    let chain = TestChain::spawn().await?;
    let provider = chain.provider().clone();
    let usdc = MockUSDC::new(chain.deployment().usdc, &provider);
    let start = provider.get_block_number().await? + 1;

    let follower = ChainFollower::new(
        provider.clone(),
        FollowerConfig {
            poll_interval: Duration::from_millis(50),
            reorg_depth: 8,
            addresses: vec![chain.deployment().usdc],
            start_block: Some(start),
            ..Default::default()
        },
    );
    let mut events = follower.subscribe();
    let cancel = CancellationToken::new();
    let handle = follower.spawn(cancel.clone());

    // Block `start`: a mint, whose Transfer log must arrive with it.
    let receiver = chain.account(3)?;
    usdc.mint(receiver, U256::from(42)).send().await?.get_receipt().await?;
    let block = next_block(&mut events).await?;
    assert_eq!(block.block.number, start);
    assert_eq!(block.logs.len(), 1, "{:?}", block.logs);
    let transfer = block.logs[0].log_decode::<MockUSDC::Transfer>()?;
    assert_eq!(transfer.inner.to, receiver);
    assert_eq!(transfer.inner.value, U256::from(42));

    // Empty blocks arrive in order, with no logs.
    provider.anvil_mine(Some(3), None).await?;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let block = next_block(&mut events).await?;
        assert!(block.logs.is_empty());
        seen.push(block.block);
    }
    assert_eq!(
        seen.iter().map(|b| b.number).collect::<Vec<_>>(),
        vec![start + 1, start + 2, start + 3]
    );
    assert_eq!(handle.head(), seen.last().copied());

    // Replace the newest two blocks: the follower reports exactly those as removed.
    provider.raw_request::<_, ()>("anvil_reorg".into(), (2u64, Vec::<()>::new())).await?;
    let ChainEvent::Reorg(reorg) = next_event(&mut events).await? else {
        return Err("expected a reorg".into());
    };
    assert_eq!(reorg.removed, vec![seen[2], seen[1]], "newest first");
    assert_eq!(reorg.ancestor, seen[0]);
    assert!(!reorg.deeper_than_tracked);

    // The replacement blocks follow, with new hashes, then the chain goes on.
    provider.anvil_mine(Some(1), None).await?;
    for number in [start + 2, start + 3, start + 4] {
        let block = next_block(&mut events).await?;
        assert_eq!(block.block.number, number);
        assert!(!reorg.removed.contains(&block.block), "a removed block came back");
    }

    cancel.cancel();
    handle.join().await;
    Ok(())
}

/// A consumer that falls far behind (more blocks than its channel and the observers' channel
/// hold) gets every block, in order: the follower waits for it instead of skipping. An observer
/// on a small channel is told it lagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_loses_no_block() -> TestResult {
    let chain = TestChain::spawn().await?;
    let provider = chain.provider().clone();
    let start = provider.get_block_number().await? + 1;
    provider.anvil_mine(Some(1_500), None).await?;
    let mut follower = ChainFollower::new(
        provider.clone(),
        FollowerConfig {
            poll_interval: Duration::from_millis(50),
            start_block: Some(start),
            channel_capacity: 16,
            ..Default::default()
        },
    );
    let mut consumer = follower.consumer();
    let mut observer = follower.subscribe();
    let cancel = CancellationToken::new();
    let _handle = follower.spawn(cancel.clone());
    // The consumer sleeps while the follower could deliver everything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for expected in start..start + 1_500 {
        let event = tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await?;
        let Some(ChainEvent::Block(block)) = event else {
            return Err(format!("expected block {expected}, got {event:?}").into());
        };
        assert_eq!(block.block.number, expected, "blocks in order, none skipped");
    }
    let lagged = loop {
        match observer.try_recv() {
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => break n,
            Ok(_) => continue,
            Err(other) => return Err(format!("the observer did not lag: {other:?}").into()),
        }
    };
    assert!(lagged > 0);
    cancel.cancel();
    Ok(())
}

/// A node restarted after its newest applied block was reorged out while it was down resumes
/// after that block (its cursor): the follower reports the reorg first, then the new blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_after_a_reorged_cursor_reports_the_reorg() -> TestResult {
    let chain = TestChain::spawn().await?;
    let provider = chain.provider().clone();
    provider.anvil_mine(Some(3), None).await?;
    let head = provider.get_block_number().await?;
    let block = provider.get_block_by_number(head.into()).await?.ok_or("no head block")?;
    let cursor = settled_contracts::BlockRef { number: head, hash: block.header.hash };
    // While "down": the cursor's block is replaced, and the chain grows by one more.
    provider.raw_request::<_, ()>("anvil_reorg".into(), (1u64, Vec::<()>::new())).await?;
    provider.anvil_mine(Some(1), None).await?;

    let mut follower = ChainFollower::new(
        provider.clone(),
        FollowerConfig { poll_interval: Duration::from_millis(50), ..Default::default() },
    );
    follower.resume_after(Some(cursor));
    let mut consumer = follower.consumer();
    let cancel = CancellationToken::new();
    let _handle = follower.spawn(cancel.clone());
    let first = tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await?;
    let Some(ChainEvent::Reorg(reorg)) = first else {
        return Err(format!("expected the reorg first, got {first:?}").into());
    };
    assert_eq!(reorg.removed, vec![cursor]);
    assert_eq!(reorg.ancestor.number, head - 1);
    for expected in head..=head + 1 {
        let event = tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await?;
        let Some(ChainEvent::Block(block)) = event else {
            return Err(format!("expected block {expected}, got {event:?}").into());
        };
        assert_eq!(block.block.number, expected);
    }
    cancel.cancel();
    Ok(())
}
