//! The stream index on the shared store fails over (issue #21): two `settled run --storage.url`
//! nodes on one Anvil (1 s blocks) and one PostgreSQL; one writes the index (lease
//! `stream-index:<vault>`), both read it. Billing calls alternate between the nodes and, right
//! after each answer, both nodes show it; the writer is killed -9 at chosen offsets into a
//! block, the other takes over from the shared cursor, a fresh node joins. At the end the index
//! equals the vault on the chain, and holds a history entry for exactly the blocks that changed
//! the stream: none skipped, none applied twice.

use std::time::Duration;

use alloy::{
    primitives::U256,
    providers::Provider,
    rpc::types::{Filter, Topic},
};
use serde_json::{Value, json};
use settled_tests::{
    TestResult,
    cluster::{Cluster, TOKEN},
    rpc::call_with_key,
};
use sqlx::Row as _;
use tokio::time::Instant;

/// `stream_get` of the cluster's stream at `url`.
async fn stream_at(cluster: &Cluster, url: &str) -> TestResult<Value> {
    let answer = call_with_key(url, TOKEN, "stream_get", json!([cluster.stream])).await?;
    answer.map_err(|(code, message)| format!("stream_get: {code} {message}").into())
}

/// A base-unit amount of a view.
fn amount(view: &Value, field: &str) -> TestResult<u128> {
    Ok(view[field].as_str().ok_or(format!("no {field} in {view}"))?.parse()?)
}

/// Waits for the next block, then `offset` more: where in the block's second the kill falls.
async fn into_next_block(cluster: &Cluster, offset: Duration) -> TestResult {
    let provider = cluster.chain.provider();
    let now = provider.get_block_number().await?;
    while provider.get_block_number().await? == now {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(offset).await;
    Ok(())
}

/// Waits until the shared index has applied the chain's head; how long it took.
async fn caught_up(cluster: &Cluster) -> TestResult<Duration> {
    let started = Instant::now();
    let head = cluster.chain.provider().get_block_number().await?;
    while cluster.index_cursor().await?.is_none_or(|c| c < head) {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("the shared index did not reach block {head} within 30 s").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_index_fails_over_without_skipping_or_repeating_a_block() -> TestResult {
    let cluster = Cluster::start().await?;
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let mut nodes = vec![cluster.node(dirs[0].path()).await?, cluster.node(dirs[1].path()).await?];
    let funded = amount(&stream_at(&cluster, nodes[0].rpc_url()).await?, "balance")?;
    let (mut calls, mut reads) = (0u128, 0);
    let mut figures = Vec::new();
    for (round, offset) in [0u64, 300, 600].into_iter().enumerate() {
        // Calls alternate between the nodes; right after each answer, both nodes show it.
        for i in 0..4 {
            let key = format!("round-{round}-{i}");
            cluster.withdraw(nodes[i % 2].rpc_url(), &key).await?;
            calls += 1;
            for node in &nodes {
                let view = stream_at(&cluster, node.rpc_url()).await?;
                assert_eq!(amount(&view, "withdrawn")?, calls, "{key} shown by {}", node.pid());
                assert_eq!(amount(&view, "balance")?, funded - calls, "{key}: {view}");
                reads += 1;
            }
        }
        // The writer killed `offset` into a block, a call in flight on the other node.
        let (writer, epoch) = cluster.index_writer().await?.ok_or("no index writer")?;
        let killed = nodes.iter().position(|n| n.pid() == writer).ok_or("writer not ours")?;
        let survivor = nodes[1 - killed].rpc_url().to_owned();
        into_next_block(&cluster, Duration::from_millis(offset)).await?;
        let in_flight = tokio::spawn(settled_tests::cluster::withdraw(
            survivor.clone(),
            cluster.stream.clone(),
            format!("in-flight-{round}"),
        ));
        let killed_at = Instant::now();
        nodes.remove(killed).kill()?;
        let next = cluster.index_written_by(nodes[0].pid(), Duration::from_secs(10)).await?;
        let takeover = killed_at.elapsed();
        assert!(next > epoch, "a takeover is a new epoch");
        let behind = caught_up(&cluster).await?;
        in_flight.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        calls += 1;
        let view = stream_at(&cluster, &survivor).await?;
        assert_eq!(amount(&view, "withdrawn")?, calls, "the in-flight call shown at once");
        figures.push(format!(
            "killed {offset} ms into a block: writer taken over (epoch {epoch} → {next}) after \
             {} ms, the shared cursor at the head {} ms after that",
            takeover.as_millis(),
            behind.as_millis()
        ));
        nodes.push(cluster.node(dirs[round + 2].path()).await?);
    }

    // The index equals the vault at its cursor, block for block.
    caught_up(&cluster).await?;
    let cursor = cluster.index_cursor().await?.ok_or("no cursor")?;
    let provider = cluster.chain.provider();
    let vault =
        settled_contracts::StreamVault::new(cluster.chain.deployment().stream_vault, provider);
    let id: U256 = cluster.stream.parse()?;
    let on_chain = vault.getStream(id).block(cursor.into()).call().await?;
    let row = sqlx::query("SELECT state FROM settled_streams WHERE id = $1")
        .bind(i64::try_from(id.to::<u64>())?)
        .fetch_one(cluster.store.pool())
        .await?;
    let state: settled_streams::StreamState =
        serde_json::from_str(&row.try_get::<String, _>("state")?)?;
    assert_eq!(state.balance, on_chain.balance.to::<u128>(), "balance at block {cursor}");
    assert_eq!(state.snapshot_time, u64::from(on_chain.snapshotTime));
    assert_eq!(state.withdrawn, calls, "every call withdrew once");
    let logs = provider
        .get_logs(
            &Filter::new()
                .address(cluster.chain.deployment().stream_vault)
                .topic1(Topic::from(alloy::primitives::B256::from(id)))
                .from_block(0)
                .to_block(cursor),
        )
        .await?;
    let mut changed: Vec<i64> =
        logs.iter().filter_map(|l| l.block_number).map(|b| b as i64).collect();
    changed.dedup();
    let history: Vec<i64> =
        sqlx::query("SELECT block FROM settled_stream_history WHERE id = $1 ORDER BY block")
            .bind(i64::try_from(id.to::<u64>())?)
            .fetch_all(cluster.store.pool())
            .await?
            .iter()
            .map(|r| r.try_get("block"))
            .collect::<Result<_, _>>()?;
    assert_eq!(history, changed, "a history entry per block that changed the stream");
    for line in &figures {
        eprintln!("index failover: {line}");
    }
    eprintln!(
        "index failover: {calls} billing calls, {reads} reads right after an answer (both nodes \
         equal), {} blocks that changed the stream up to block {cursor}, each applied once; \
         skipped = 0, applied twice = 0",
        history.len()
    );
    Ok(())
}
