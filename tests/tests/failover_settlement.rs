//! Settlement on two nodes sharing one PostgreSQL (issue #21): the operator key's leader runs the
//! rounds and is killed -9 in the middle of one — in its withdrawals, its batch, its blob
//! commit —; the other node takes over and finishes the period from the shared store, each of
//! its writes fenced by the lease and each send committed as an intent first. Every batch is
//! committed once and paid once; PO alerts reach every node's subscribers.

use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, ext::AnvilApi as _};
use serde_json::{Value, json};
use settled_contracts::SettlementAnchor;
use settled_settlement::{PgSettlement, SettlementStore as _};
use settled_store::PgStore;
use settled_tests::{
    SettledProcess, TestChain, TestResult,
    cluster::{Cluster, TOKEN},
    rpc::{call_url, call_with_key},
};
use sqlx::Row as _;
use tokio::time::Instant;

/// Two nodes (`--roles billing,settlement`): the operator key's leader runs each round
/// (`settlement_runNow`) and is killed -9 at a chosen moment in it; the other node takes over
/// and finishes the period. A PO alert the leader raises reaches a subscriber of the other node (LISTEN/
/// NOTIFY), receipts are served by any node, a follower refuses to run a round. The chain
/// judges: every batch id committed once, no operator transaction reverted, each acknowledged
/// batch committed, the anchor's totals are what the payee received to the base unit, and every
/// operator transaction was journaled as an intent first (one per nonce, no gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_fails_over_mid_batch_and_pays_each_batch_once() -> TestResult {
    const KILL_AFTER_MS: [u64; 3] = [400, 1_300, 2_400];
    let cluster = Cluster::start().await?;
    let (chain, deployment) = (&cluster.chain, cluster.chain.deployment());
    let usdc = settled_contracts::MockUSDC::new(deployment.usdc, chain.provider());
    let (payer, payee) = (chain.account(3)?, chain.account(4)?);
    let (paid_before, sent_before) = (usdc.balanceOf(payee).call().await?, cluster.sent().await?);
    let first_block = chain.provider().get_block_number().await?;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let args =
        ["--roles", "billing,settlement", "--rpc.admin", "--settlement.interval-secs", "3600"];
    // Each node with the index of its datadir (a killed node restarts on its own).
    let mut nodes = vec![
        (cluster.node_with(dirs[0].path(), &args, &[]).await?, 0),
        (cluster.node_with(dirs[1].path(), &args, &[]).await?, 1),
    ];
    let leader = |nodes: &[(SettledProcess, usize)], pid: u32| {
        nodes.iter().position(|(n, _)| n.pid() == pid).ok_or("the leader is not one of ours")
    };
    let (pid, _) = cluster.leader().await?.ok_or("no leader")?;
    let follower = &nodes[1 - leader(&nodes, pid)?].0;
    let refused = call_url(follower.rpc_url(), "settlement_runNow", json!([])).await?;
    let (code, message) = refused.err().ok_or("a follower ran a round")?;
    assert!(code == -32603 && message.contains("not leading"), "{code} {message}");
    let (_client, mut alerts) = po_alerts(follower, payer, &cluster.stream).await?;

    let (mut acknowledged, mut takeovers, mut stages) = (Vec::new(), Vec::new(), Vec::new());
    for (round, delay) in KILL_AFTER_MS.into_iter().enumerate() {
        let (pid, _) = cluster.leader().await?.ok_or("no leader")?;
        let at = leader(&nodes, pid)?;
        let url = nodes[at].0.rpc_url().to_owned();
        let running =
            tokio::spawn(async move { call_url(&url, "settlement_runNow", json!([])).await });
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let killed = Instant::now();
        let (dead, dir) = nodes.remove(at);
        dead.kill()?;
        stages.push(settlement_stage(&cluster.store).await?);
        if let Ok(Ok(Ok(answer))) = running.await {
            acknowledged.extend(answer["committed"].as_array().cloned().unwrap_or_default());
        }
        cluster.led_by(nodes[0].0.pid(), Duration::from_secs(10)).await?;
        takeovers.push(killed.elapsed().as_millis());
        let answer = run_now(nodes[0].0.rpc_url()).await;
        let answer = answer.map_err(|e| format!("round {round} (kill after {delay} ms): {e}"))?;
        assert_eq!(answer["waiting"], json!([]), "round {round}: {answer}");
        acknowledged.extend(answer["committed"].as_array().cloned().unwrap_or_default());
        // The killed node comes back, as the follower.
        nodes.push((cluster.node_with(dirs[dir].path(), &args, &[]).await?, dir));
    }
    let alert =
        tokio::time::timeout(Duration::from_secs(10), alerts.next()).await?.ok_or("closed")??;
    assert_eq!((&alert["poNumber"], &alert["state"]), (&json!("PO-F"), &json!("over")), "{alert}");

    let commits = commits_since(&cluster, first_block).await?;
    let mut ids: Vec<u64> = commits.iter().map(|(e, _)| e.batchId.to::<u64>()).collect();
    ids.sort_unstable();
    let committed_total: u128 = commits.iter().map(|(e, _)| e.totalAmount).sum();
    let received = usdc.balanceOf(payee).call().await? - paid_before;
    let reverted = reverted_since(chain, cluster.operator, first_block).await?;
    let lost =
        acknowledged.iter().filter(|id| !ids.contains(&id.as_u64().unwrap_or_default())).count();
    let duplicated = usize::from(ids.windows(2).any(|w| w[0] == w[1])) + reverted;
    for (node, _) in &nodes {
        let receipt =
            call_url(node.rpc_url(), "settlement_getReceipt", json!([cluster.stream, ids[0]]))
                .await?;
        assert_eq!(receipt.map_err(|e| format!("{e:?}"))?["committed"], json!(true));
    }
    let sent = cluster.sent().await?;
    let row = sqlx::query(
        "SELECT count(*) AS n, min(nonce) AS low, max(nonce) AS high FROM settled_intents",
    )
    .fetch_one(cluster.store.pool())
    .await?;
    let (n, low, high): (i64, i64, i64) =
        (row.try_get("n")?, row.try_get("low")?, row.try_get("high")?);
    eprintln!(
        "settlement failover: kills after {KILL_AFTER_MS:?} ms, left {stages:?}, taken over in \
         {takeovers:?} ms; batches {ids:?} committed, acknowledged {}, lost = {lost}, duplicated = {duplicated}; \
         anchored {committed_total} = paid {received}; {} operator transactions, {n} intents at \
         nonces {low}..={high}",
        acknowledged.len(),
        sent - sent_before
    );
    assert_eq!((lost, duplicated), (0, 0), "batch ids {ids:?}");
    assert_eq!(U256::from(committed_total), received, "the anchor's totals are what was paid");
    assert!(received > U256::ZERO && ids.len() >= KILL_AFTER_MS.len());
    assert_eq!(
        (low as u64, high as u64 + 1, n as u64),
        (sent_before, sent, sent - sent_before),
        "one intent per transaction, no gap"
    );
    Ok(())
}

/// A PO on the payer with a cap its stream passes in the first period, stored on `node`, and a
/// subscription to its alerts there.
async fn po_alerts(
    node: &SettledProcess,
    payer: Address,
    stream: &str,
) -> TestResult<(jsonrpsee::ws_client::WsClient, jsonrpsee::core::client::Subscription<Value>)> {
    use jsonrpsee::core::client::SubscriptionClientT as _;
    use jsonrpsee::ws_client::{HeaderMap, HeaderValue, WsClientBuilder};
    let po = json!([{
        "payer": payer, "poNumber": "PO-F", "currency": "USD", "tolerancePercent": 5,
        "validFrom": 0, "validTo": 4_000_000_000u64, "buyerReference": "AP-1",
        "lines": [{ "lineId": "1", "streamIds": [stream], "description": "api", "unitCode": "SEC", "amountCap": "100" }],
    }]);
    let stored = call_with_key(node.rpc_url(), TOKEN, "billing_setPurchaseOrder", po).await?;
    assert_eq!(stored.map_err(|e| format!("{e:?}"))?["stored"], json!(true));
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_str(&format!("Bearer {TOKEN}"))?);
    let ws_url = node.rpc_url().replacen("http://", "ws://", 1);
    let client = WsClientBuilder::default().set_headers(headers).build(&ws_url).await?;
    let unsubscribe = "billing_unsubscribePurchaseOrderAlerts";
    let subscribe = "billing_subscribePurchaseOrderAlerts";
    let subscription = client.subscribe(subscribe, jsonrpsee::rpc_params![], unsubscribe).await?;
    Ok((client, subscription))
}

/// How many of `from`'s transactions since `from_block` reverted.
async fn reverted_since(chain: &TestChain, from: Address, from_block: u64) -> TestResult<usize> {
    let provider = chain.provider();
    let mut reverted = 0;
    for number in from_block..=provider.get_block_number().await? {
        let Some(receipts) = provider.get_block_receipts(number.into()).await? else { continue };
        reverted += receipts.iter().filter(|r| r.from == from && !r.status()).count();
    }
    Ok(reverted)
}

/// What a killed leader left in the store: its period still open (withdrawals under way), and
/// the batches not yet committed with their stage.
async fn settlement_stage(store: &PgStore) -> TestResult<String> {
    let meta = sqlx::query("SELECT open_period IS NOT NULL AS open FROM settled_settlement_meta")
        .fetch_one(store.pool())
        .await?;
    let open: bool = meta.try_get("open")?;
    let mut unfinished = Vec::new();
    for row in sqlx::query("SELECT id, body FROM settled_batches ORDER BY id")
        .fetch_all(store.pool())
        .await?
    {
        let (id, body): (i64, Vec<u8>) = (row.try_get("id")?, row.try_get("body")?);
        let stage = serde_json::from_slice::<Value>(&body)?["stage"]["stage"].clone();
        if stage != json!("committed") {
            unfinished.push(format!("batch {id} {}", stage.as_str().unwrap_or("?")));
        }
    }
    Ok(match (open, unfinished.is_empty()) {
        (true, _) => "withdrawing".into(),
        (false, true) => "nothing open".into(),
        (false, false) => unfinished.join(", "),
    })
}

/// The leader killed right after committing its batch's blob commit as an intent, before the
/// broadcast — left by the test exactly as that leader leaves it: the batch built and stored (a
/// blob fee bound of 0 holds it back), the commit signed at the key's next nonce and committed
/// under the leader's lease and epoch. The next leader sends those bytes again and follows them:
/// the batch is committed by that very transaction, once, and no second commit is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_signed_by_a_dead_leader_is_followed_not_repeated() -> TestResult {
    let cluster = Cluster::start().await?;
    let chain = &cluster.chain;
    let first_block = chain.provider().get_block_number().await?;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let mut args = vec!["--roles", "billing,settlement", "--rpc.admin"];
    args.extend(["--settlement.interval-secs", "3600"]);
    let held_back = [args.clone(), vec!["--settlement.max-blob-fee-wei", "0"]].concat();
    let node = cluster.node_with(dirs[0].path(), &held_back, &[]).await?;
    cluster.led_by(node.pid(), Duration::from_secs(10)).await?;
    let answer = call_url(node.rpc_url(), "settlement_runNow", json!([])).await?;
    let answer = answer.map_err(|e| format!("{e:?}"))?;
    assert_eq!(answer["waiting"], json!([1]), "built and held back: {answer}");
    let (holder, epoch) = cluster.leader_lease().await?;
    let (nonce, hash) = leave_signed_commit(&cluster, (&holder, epoch), node).await?;
    let killed = Instant::now();

    // No blocks until the next leader has taken over and begun its round: the commit it sends
    // again is still pending when the round looks at batch 1.
    chain.provider().anvil_set_interval_mining(0).await?;
    chain.provider().anvil_set_auto_mine(false).await?;
    let stopped_at = chain.provider().get_block_number().await?;
    let node = cluster.node_with(dirs[1].path(), &args, &[]).await?;
    cluster.led_by(node.pid(), Duration::from_secs(10)).await?;
    let url = node.rpc_url().to_owned();
    let round = tokio::spawn(async move { run_now(&url).await.map_err(|e| e.to_string()) });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(chain.provider().get_block_number().await?, stopped_at, "no block meanwhile");
    chain.provider().anvil_set_interval_mining(1).await?;
    let answer = round.await??;
    assert!(answer["committed"].as_array().is_some_and(|c| c.contains(&json!(1))), "{answer}");
    let commits = commits_since(&cluster, first_block).await?;
    let batch_1: Vec<_> = commits.iter().filter(|(e, _)| e.batchId == U256::from(1)).collect();
    let stage = call_url(node.rpc_url(), "settlement_getBatch", json!([1])).await?;
    let stage = stage.map_err(|e| format!("{e:?}"))?["stage"].clone();
    eprintln!(
        "dead leader's commit: intent at nonce {nonce} ({hash}); the next leader committed batch \
         1 {:.1} s after the kill; stage {stage}; {} commit(s) of batch 1, {} reverted operator \
         transaction(s)",
        killed.elapsed().as_secs_f64(),
        batch_1.len(),
        reverted_since(chain, cluster.operator, first_block).await?
    );
    assert_eq!(batch_1.len(), 1, "batch 1 committed once");
    assert_eq!(batch_1[0].1.transaction_hash, Some(hash), "by the dead leader's transaction");
    assert_eq!(stage["transaction"], json!(hash), "followed, not found after the fact");
    assert_eq!(reverted_since(chain, cluster.operator, first_block).await?, 0, "no second commit");
    Ok(())
}

/// Signs batch 1's commit (as the leader's `commit_request`, at the operator key's next nonce),
/// kills the leader `node`, and commits the commit as an intent under its lease (`holder` at
/// `epoch`, still live) without broadcasting it: its nonce and hash.
async fn leave_signed_commit(
    cluster: &Cluster,
    (holder, epoch): (&str, u64),
    node: SettledProcess,
) -> TestResult<(u64, alloy::primitives::B256)> {
    use alloy::eips::eip2718::Encodable2718 as _;
    use alloy::network::{EthereumWallet, NetworkTransactionBuilder as _, TransactionBuilder as _};
    use alloy::primitives::aliases::U48;
    use settled_store::{Fence, Intent, Lease, SendStore as _};
    let provider = cluster.chain.provider();
    let batch = PgSettlement::new(cluster.store.clone()).batch(1).await?.ok_or("no batch 1")?;
    let anchor = SettlementAnchor::new(cluster.chain.deployment().settlement_anchor, provider);
    let (context, count) = (&batch.context, u32::try_from(batch.records.len())?);
    let (start, end) = (U48::from(context.period_start), U48::from(context.period_end));
    let request = anchor
        .commit(U256::from(1), batch.root, count, batch.total, start, end)
        .sidecar(batch.sidecar()?)
        .into_transaction_request();
    let carries = settled_contracts::carries_of(&request);
    let nonce = provider.get_transaction_count(cluster.operator).pending().await?;
    let fees = provider.estimate_eip1559_fees().await?;
    let envelope = request
        .from(cluster.operator)
        .nonce(nonce)
        .with_chain_id(provider.get_chain_id().await?)
        .gas_limit(300_000)
        .max_fee_per_gas(fees.max_fee_per_gas)
        .max_priority_fee_per_gas(fees.max_priority_fee_per_gas)
        .max_fee_per_blob_gas(1_000)
        .build(&EthereumWallet::from(cluster.chain.signer(5)?))
        .await?;
    let hash = *envelope.tx_hash();
    let intent = Intent {
        signer: cluster.operator,
        nonce,
        carries,
        raw: envelope.encoded_2718().into(),
        hashes: vec![hash],
    };
    let lease = Lease {
        name: format!("operator:{}", cluster.operator),
        holder: holder.into(),
        epoch,
        deadline: Instant::now() + Duration::from_secs(1),
    };
    node.kill()?;
    cluster.store.commit_intent(&Fence::Lease(lease), &intent, None).await?;
    Ok((nonce, hash))
}

/// `settlement_runNow` on a node that has just taken the operator key's lease: it runs rounds
/// once it has sent its predecessor's unfinished intents again (until then: "not leading").
async fn run_now(url: &str) -> TestResult<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call_url(url, "settlement_runNow", json!([])).await? {
            Ok(answer) => return Ok(answer),
            Err((_, message)) if message.contains("not leading") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(refused) => return Err(format!("settlement_runNow: {refused:?}").into()),
        }
    }
}

/// Settlement anchored on a separate chain cannot share the store yet: refused at start with
/// one line and exit code 1, before the store is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_on_a_separate_anchor_chain_is_refused_on_a_shared_store() -> TestResult {
    let chain = TestChain::spawn().await?;
    let datadir = tempfile::tempdir()?;
    let deployment = datadir.path().join("deployment.json");
    chain.deployment().save(&deployment)?;
    let endpoint = chain.anvil().endpoint();
    let output = std::process::Command::new("timeout")
        .arg("30")
        .arg(SettledProcess::binary()?)
        .args(["run", "--eth.rpc-url", &endpoint, "--eth.deployment"])
        .arg(&deployment)
        .arg("--datadir")
        .arg(datadir.path())
        .args(["--rpc.port", "0", "--metrics.disable"])
        .args(["--storage.url", "postgres://settled@127.0.0.1:1/settled"])
        .args(["--settlement.anchor-rpc-url", &endpoint])
        .stdin(std::process::Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("separate anchor chain"), "{stderr}");
    Ok(())
}

/// The anchor's `BatchCommitted` events of the operator since `from_block`, with their logs.
async fn commits_since(
    cluster: &Cluster,
    from_block: u64,
) -> TestResult<Vec<(SettlementAnchor::BatchCommitted, alloy::rpc::types::Log)>> {
    let provider = cluster.chain.provider();
    let anchor = SettlementAnchor::new(cluster.chain.deployment().settlement_anchor, provider);
    let filter = anchor.BatchCommitted_filter().topic1(cluster.operator).from_block(from_block);
    Ok(filter.query().await?)
}
