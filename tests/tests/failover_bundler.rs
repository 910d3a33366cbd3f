//! The bundler on two nodes sharing one PostgreSQL (#21): the node leading the bundler key holds
//! the pool and bundles; the other hands its clients' ops over and answers what the leader
//! answered. The leader is killed -9 right after acceptance, while bundling, and after a bundle
//! was sent; the other takes over from the store. Then PostgreSQL is killed: clean refusals,
//! both nodes keep running. The chain is the judge: every acknowledged op is included exactly
//! once, no bundle reverts, the bundle nonces have no gap.

use std::time::Duration;

use alloy::{
    primitives::{Address, B256},
    providers::Provider,
    rpc::types::Filter,
    signers::local::PrivateKeySigner,
    sol_types::SolEvent,
};
use serde_json::{Value, json};
use settled_contracts::EntryPointVersion;
use settled_tests::{
    BUNDLER_ACCOUNT, SettledProcess, TestResult,
    cluster::{Cluster, signal},
    rpc::{call_url, creation_op, send_at},
};
use tokio::time::Instant;

const VERSION: EntryPointVersion = EntryPointVersion::V08;
/// How long after the round's last acknowledgement the leader is killed (ms): right after
/// acceptance, while the bundle is built or sent, after it was sent (1 s blocks).
const KILL_AFTER_MS: [u64; 4] = [0, 150, 400, 1_300];
/// Ops per round: two sent to the leader, one to the other node (handed over).
const OPS_PER_ROUND: usize = 3;

/// A node of the cluster running the bundler (and billing, which the harness waits on), in
/// auto bundling mode.
async fn bundler_node(cluster: &Cluster, dir: &std::path::Path) -> TestResult<SettledProcess> {
    let node = cluster.node_with(dir, &["--roles", "bundler,billing"], &[]).await?;
    let mode = call_url(node.rpc_url(), "debug_bundler_setBundlingMode", json!(["auto"])).await?;
    mode.map_err(|e| format!("auto mode: {e:?}"))?;
    Ok(node)
}

/// The `UserOperationEvent`s of `hash` on the chain.
async fn inclusions(cluster: &Cluster, hash: B256) -> TestResult<Vec<alloy::rpc::types::Log>> {
    let filter = Filter::new()
        .address(VERSION.canonical_address())
        .event_signature(settled_contracts::v07::EntryPoint::UserOperationEvent::SIGNATURE_HASH)
        .topic1(hash)
        .from_block(0);
    Ok(cluster.chain.provider().get_logs(&filter).await?)
}

/// Waits until `hash` has a receipt at `url` (auto bundling on the leader includes it).
async fn receipt_at(url: &str, hash: B256, within: Duration) -> TestResult<Value> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match call_url(url, "eth_getUserOperationReceipt", json!([hash])).await? {
            Ok(Value::Null) | Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(receipt) => return Ok(receipt),
        }
    }
    Err(format!("op {hash} has no receipt at {url} within {within:?}").into())
}

/// Which of `nodes` holds the bundler key's lease.
async fn leading(cluster: &Cluster, nodes: &[Option<SettledProcess>; 2]) -> TestResult<usize> {
    for _ in 0..100 {
        if let Some((pid, _)) = cluster.bundler_leader().await?
            && let Some(index) =
                nodes.iter().position(|n| n.as_ref().is_some_and(|n| n.pid() == pid))
        {
            return Ok(index);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("no node leads the bundler key".into())
}

/// Sends a new account's creation op through `url`; its hash once acknowledged.
async fn send_new_op(cluster: &Cluster, url: &str, funder: usize) -> TestResult<B256> {
    let op = creation_op(&cluster.chain, url, VERSION, funder).await?;
    let hash = cluster.chain.op_hash(VERSION, &op).await?;
    let answer = send_at(url, VERSION, &op).await?.map_err(|e| format!("send: {e:?}"))?;
    assert_eq!(answer, json!(hash), "the op's hash, whichever node took it");
    Ok(hash)
}

/// The other node hands ops to the leader and answers as the leader does, refusals included;
/// it serves lookups from the shared store and refuses what only the leader may do.
async fn the_follower_answers_as_the_leader(
    cluster: &Cluster,
    leader: &str,
    follower: &str,
) -> TestResult {
    let mut op = creation_op(&cluster.chain, follower, VERSION, 1).await?;
    op.signature = cluster.chain.sign_op(VERSION, &PrivateKeySigner::random(), &op).await?;
    let from_leader = send_at(leader, VERSION, &op).await?;
    let from_follower = send_at(follower, VERSION, &op).await?;
    assert!(matches!(from_leader, Err((-32507, _))), "{from_leader:?}");
    assert_eq!(from_follower, from_leader, "the leader's refusal, relayed as it is");
    let now = call_url(follower, "debug_bundler_sendBundleNow", json!([])).await?;
    assert!(matches!(&now, Err((-32603, m)) if m.contains("not leading")), "{now:?}");
    Ok(())
}

/// Two bundler nodes, each restarted on its own datadir after it is killed.
struct Pair {
    dirs: [tempfile::TempDir; 2],
    nodes: [Option<SettledProcess>; 2],
}

impl Pair {
    async fn start(cluster: &Cluster) -> TestResult<Self> {
        let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
        let first = bundler_node(cluster, dirs[0].path()).await?;
        let second = bundler_node(cluster, dirs[1].path()).await?;
        Ok(Self { dirs, nodes: [Some(first), Some(second)] })
    }

    fn url(&self, index: usize) -> TestResult<String> {
        Ok(self.nodes[index].as_ref().ok_or("a running node")?.rpc_url().to_owned())
    }
}

/// What a killed leader left in the store: ops pooled, bundles recorded as (perhaps) sent.
async fn left_behind(cluster: &Cluster) -> TestResult<(i64, i64)> {
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM settled_bundler_pool), \
                (SELECT count(*) FROM settled_bundler_sent)",
    )
    .fetch_one(cluster.store.pool())
    .await?;
    Ok((sqlx::Row::try_get(&row, 0)?, sqlx::Row::try_get(&row, 1)?))
}

/// One round: ops acknowledged by both nodes, the leader killed `delay` ms after the last, the
/// other node leading again, the killed one restarted. The takeover's time.
async fn kill_round(
    cluster: &Cluster,
    pair: &mut Pair,
    round: usize,
    delay: u64,
    acknowledged: &mut Vec<B256>,
) -> TestResult<Duration> {
    let lead = leading(cluster, &pair.nodes).await?;
    let (leader, follower) = (pair.url(lead)?, pair.url(1 - lead)?);
    if round == 0 {
        the_follower_answers_as_the_leader(cluster, &leader, &follower).await?;
    }
    for i in 0..OPS_PER_ROUND {
        let url = if i + 1 == OPS_PER_ROUND { &follower } else { &leader };
        acknowledged.push(send_new_op(cluster, url, i % 2).await?);
    }
    let pending = json!([acknowledged.last()]);
    let pending = call_url(&follower, "eth_getUserOperationByHash", pending).await?;
    assert!(matches!(&pending, Ok(Value::Object(_))), "the other node finds it: {pending:?}");
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let killed = Instant::now();
    pair.nodes[lead].take().ok_or("the leader")?.kill()?;
    let (pooled, recorded) = left_behind(cluster).await?;
    let follower_pid = pair.nodes[1 - lead].as_ref().ok_or("the other node")?.pid();
    cluster.bundling_led_by(follower_pid, Duration::from_secs(15)).await?;
    let takeover = killed.elapsed();
    eprintln!(
        "round {round}: leader killed {delay} ms after the last acknowledgement, leaving \
         {pooled} pooled ops and {recorded} recorded bundles; taken over in {takeover:?}"
    );
    pair.nodes[lead] = Some(bundler_node(cluster, pair.dirs[lead].path()).await?);
    Ok(takeover)
}

/// The leader paused (SIGSTOP) past its lease while the other takes over, then resumed: an op
/// sent to it at once is either handed to the new leader or refused (its fenced write fails),
/// never acknowledged and lost.
async fn paused_leader_round(
    cluster: &Cluster,
    pair: &Pair,
    acknowledged: &mut Vec<B256>,
) -> TestResult {
    let lead = leading(cluster, &pair.nodes).await?;
    let (paused, other) = (&pair.nodes[lead], &pair.nodes[1 - lead]);
    let (paused, other) = (paused.as_ref().ok_or("leader")?, other.as_ref().ok_or("other")?);
    let op = creation_op(&cluster.chain, paused.rpc_url(), VERSION, 0).await?;
    signal(paused.pid(), "-STOP")?;
    cluster.bundling_led_by(other.pid(), Duration::from_secs(15)).await?;
    signal(paused.pid(), "-CONT")?;
    match send_at(paused.rpc_url(), VERSION, &op).await? {
        Ok(hash) => acknowledged.push(serde_json::from_value(hash)?),
        Err((code, message)) => {
            assert_eq!(code, -32603, "{message}");
            eprintln!("paused leader resumed: refused {message}");
            // The wallet sends it again, to the node that leads now.
            let hash =
                send_at(other.rpc_url(), VERSION, &op).await?.map_err(|e| format!("{e:?}"))?;
            acknowledged.push(serde_json::from_value(hash)?);
        }
    }
    Ok(())
}

/// PostgreSQL killed: an op sent to either node is refused (-32603), neither node stops (their
/// chain loops wait for the store instead of skipping a block); once it is back a node leads
/// the key again and the op the wallet sends again goes through. The outage's length.
async fn store_down_round(
    cluster: &mut Cluster,
    pair: &Pair,
    acknowledged: &mut Vec<B256>,
) -> TestResult<Duration> {
    let url = pair.url(leading(cluster, &pair.nodes).await?)?;
    let op = creation_op(&cluster.chain, &url, VERSION, 1).await?;
    let down = Instant::now();
    cluster.postgres.kill()?;
    for node in [pair.url(0)?, pair.url(1)?] {
        let refused = send_at(&node, VERSION, &op).await?;
        assert!(matches!(&refused, Err((-32603, _))), "store down: {refused:?}");
    }
    // Blocks (1 s) keep coming while the store is away.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.postgres.run()?;
    let outage = down.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    let hash = loop {
        match send_at(&url, VERSION, &op).await? {
            Ok(hash) => break serde_json::from_value(hash)?,
            Err((-32603, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(refused) => return Err(format!("after the store came back: {refused:?}").into()),
        }
    };
    acknowledged.push(hash);
    for node in pair.nodes.iter().flatten() {
        let health = call_url(node.rpc_url(), "eth_supportedEntryPoints", json!([])).await?;
        assert!(health.is_ok(), "both nodes still serve after the outage");
    }
    Ok(outage)
}

/// Every acknowledged op included exactly once, with a receipt on both nodes; the bundle
/// transactions that included them, and how many reverted.
async fn check_inclusions(
    cluster: &Cluster,
    pair: &Pair,
    acknowledged: &[B256],
) -> TestResult<(usize, usize)> {
    let urls = [pair.url(0)?, pair.url(1)?];
    let mut bundles = std::collections::BTreeSet::new();
    for hash in acknowledged {
        let receipt = receipt_at(&urls[0], *hash, Duration::from_secs(30)).await?;
        assert_eq!(receipt["success"], json!(true), "{hash}: {receipt}");
        let elsewhere = receipt_at(&urls[1], *hash, Duration::from_secs(5)).await?;
        assert_eq!(elsewhere["receipt"], receipt["receipt"], "every node answers receipts");
        let events = inclusions(cluster, *hash).await?;
        assert_eq!(events.len(), 1, "{hash} included once");
        bundles.extend(events.iter().filter_map(|e| e.transaction_hash));
    }
    let mut reverted = 0;
    for bundle in &bundles {
        let receipt = cluster.chain.provider().get_transaction_receipt(*bundle).await?;
        reverted += usize::from(!receipt.ok_or("a bundle's receipt")?.status());
    }
    Ok((bundles.len(), reverted))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundler_fails_over_and_includes_every_op_once() -> TestResult {
    let mut cluster = Cluster::start().await?;
    let bundler: Address = cluster.chain.account(BUNDLER_ACCOUNT)?;
    let provider = cluster.chain.provider().clone();
    let bundles_before = provider.get_transaction_count(bundler).await?;
    let mut pair = Pair::start(&cluster).await?;
    let (mut acknowledged, mut takeovers) = (Vec::new(), Vec::new());
    for (round, delay) in KILL_AFTER_MS.into_iter().enumerate() {
        takeovers.push(kill_round(&cluster, &mut pair, round, delay, &mut acknowledged).await?);
    }
    paused_leader_round(&cluster, &pair, &mut acknowledged).await?;
    let outage = store_down_round(&mut cluster, &pair, &mut acknowledged).await?;
    eprintln!("PostgreSQL killed for {outage:?}: ops refused -32603, both nodes kept running");
    let (bundles, reverted) = check_inclusions(&cluster, &pair, &acknowledged).await?;
    let sent = provider.get_transaction_count(bundler).await? - bundles_before;
    // Every handed-over op answered and its answer taken: no row left behind.
    let waiting = "SELECT count(*) FROM settled_bundler_submissions";
    let waiting = sqlx::query(waiting).fetch_one(cluster.store.pool()).await?;
    let waiting: i64 = sqlx::Row::try_get(&waiting, 0)?;
    takeovers.sort();
    let mut resent = 0;
    for dir in &pair.dirs {
        let log = std::fs::read_to_string(dir.path().join("settled.log")).unwrap_or_default();
        resent += log.matches("a recorded bundle: broadcast again").count();
    }
    eprintln!("recorded bundles a new leader broadcast again: {resent}");
    eprintln!(
        "bundler failover: {} ops acknowledged, each included once, by {bundles} bundles ({sent} \
         bundle transactions, {reverted} reverted); takeover {:?}..{:?}; submissions left {waiting}",
        acknowledged.len(),
        takeovers.first(),
        takeovers.last(),
    );
    assert_eq!(sent, bundles as u64, "every bundle transaction carried ops that were included");
    assert_eq!((reverted, waiting), (0, 0));
    Ok(())
}

/// What a leader killed right after recording a bundle, before its broadcast, leaves: the op
/// pooled, the bundle signed with the bundler key at its next nonce and recorded under the
/// dead leader's lease. The next leader sends those very bytes at that nonce: the op is included
/// by that transaction, and by no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_recorded_by_a_dead_leader_is_sent_by_the_next() -> TestResult {
    use alloy::{network::TransactionBuilder as _, sol_types::SolCall as _};
    use settled_bundler::{BundlerStore as _, SentOps};
    let cluster = Cluster::start().await?;
    let provider = cluster.chain.provider().clone();
    let bundler = cluster.chain.account(BUNDLER_ACCOUNT)?;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    // Manual bundling: nothing is bundled but the recorded bundle.
    let mut nodes = Vec::new();
    for dir in &dirs {
        nodes
            .push(Some(cluster.node_with(dir.path(), &["--roles", "bundler,billing"], &[]).await?));
    }
    let nodes: [Option<SettledProcess>; 2] = [nodes[0].take(), nodes[1].take()];
    let lead = leading(&cluster, &nodes).await?;
    let leader = nodes[lead].as_ref().ok_or("leader")?;
    let op = creation_op(&cluster.chain, leader.rpc_url(), VERSION, 0).await?;
    let hash = cluster.chain.op_hash(VERSION, &op).await?;
    send_at(leader.rpc_url(), VERSION, &op).await?.map_err(|e| format!("send: {e:?}"))?;
    let lease =
        sqlx::query("SELECT name, holder, epoch FROM settled_leases WHERE name LIKE 'bundler:%'")
            .fetch_one(cluster.store.pool())
            .await?;
    let (mut nodes, killed) = (nodes, Instant::now());
    nodes[lead].take().ok_or("leader")?.kill()?;

    // The dead leader's bundle: signed at the key's next nonce, recorded under its lease.
    let nonce = provider.get_transaction_count(bundler).pending().await?;
    let fees = provider.estimate_eip1559_fees().await?;
    let input = settled_contracts::v07::IEntryPoint::handleOpsCall {
        ops: vec![op.clone()],
        beneficiary: bundler,
    }
    .abi_encode();
    let tx = alloy::rpc::types::TransactionRequest::default()
        .with_to(VERSION.canonical_address())
        .with_input(input)
        .with_nonce(nonce)
        .with_gas_limit(3_000_000)
        .with_max_fee_per_gas(fees.max_fee_per_gas)
        .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas);
    let sender = settled_contracts::TransactionSender::new(
        provider.clone(),
        cluster.chain.signer(BUNDLER_ACCOUNT)?,
    );
    let (bundle, raw) = sender.sign_exact(tx).await?;
    let dead = settled_store::Lease {
        name: sqlx::Row::try_get(&lease, "name")?,
        holder: sqlx::Row::try_get(&lease, "holder")?,
        epoch: u64::try_from(sqlx::Row::try_get::<i64, _>(&lease, "epoch")?)?,
        deadline: Instant::now() + Duration::from_secs(1),
    };
    let (_fence, fence) = tokio::sync::watch::channel(Some(settled_store::Fence::Lease(dead)));
    let store = settled_store::PgBundler::new(cluster.store.clone(), fence);
    store.record_sent(nonce, &SentOps { ops: vec![(hash, op.sender)], raw: Some(raw) }).await?;

    let other = nodes[1 - lead].as_ref().ok_or("the other node")?;
    cluster.bundling_led_by(other.pid(), Duration::from_secs(15)).await?;
    let receipt = receipt_at(other.rpc_url(), hash, Duration::from_secs(30)).await?;
    let included_by: B256 = serde_json::from_value(receipt["receipt"]["transactionHash"].clone())?;
    eprintln!(
        "the recorded bundle {bundle} was sent by the next leader; op included {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(included_by, bundle, "included by the dead leader's recorded bundle");
    assert_eq!(inclusions(&cluster, hash).await?.len(), 1);
    assert_eq!(provider.get_transaction_count(bundler).await?, nonce + 1, "one bundle transaction");
    Ok(())
}
