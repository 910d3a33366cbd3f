//! Two billing nodes on one PostgreSQL (issue #21): two `settled run --storage.url …` processes
//! with a 2 s lease on the operator key, one Anvil, one PostgreSQL. Billing calls go to both;
//! the leader signs every one (a follower queues its calls). The same idempotency key sent to
//! both at once gives one transaction; the leader killed with calls in flight is replaced and
//! every call is answered once; a leader stopped (SIGSTOP) past its lease is replaced and,
//! continued, writes nothing under its old epoch; the leader killed right after committing a
//! call's intent (nothing broadcast), and right after the broadcast: the standby sends the same
//! transaction again and the retry is answered from it; committed underpriced: the standby
//! fee-bumps the same nonce and calldata; PostgreSQL stopped abruptly gives clean
//! refusals and a node not ready, and nothing is lost once it is back. At the end: one
//! transaction per key, no nonce gap, every intent finished, and the payee paid exactly what
//! the calls asked.

use std::time::Duration;

use alloy::primitives::U256;
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use serde_json::{Value, json};
use settled_contracts::{EntryPointVersion, UserOperation};
use settled_store::SendStore as _;
use settled_tests::{
    PAYMASTER_SIGNER_ACCOUNT, TestResult,
    cluster::{Cluster, KillPoint, TOKEN, signal, withdraw},
    rpc::{call_url, call_with_key},
    unestimated_op,
};
use sqlx::Row as _;
use tokio::time::Instant;

/// How long until the node's `GET /ready` answers `ready` (2xx) or not (at most 10 s).
async fn ready_becomes(url: &str, ready: bool) -> TestResult<Duration> {
    let started = Instant::now();
    let client = alloy::transports::http::reqwest::Client::new();
    while started.elapsed() < Duration::from_secs(10) {
        let response = client.get(format!("{url}/ready")).send().await?;
        if response.status().is_success() == ready {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{url}/ready did not become {ready} within 10 s").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_fail_over_without_losing_or_repeating_a_call() -> TestResult {
    let mut cluster = Cluster::start().await?;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let sent_before = cluster.sent().await?;
    let usdc =
        settled_contracts::MockUSDC::new(cluster.chain.deployment().usdc, cluster.chain.provider());
    let payee = cluster.chain.account(4)?;
    let paid_before = usdc.balanceOf(payee).call().await?;
    let mut nodes = vec![cluster.node(dirs[0].path()).await?, cluster.node(dirs[1].path()).await?];
    let mut answers: Vec<(String, Value)> = Vec::new();

    // One key sent to both nodes at once: one transaction, one answer.
    let (first, second) = tokio::join!(
        cluster.withdraw(nodes[0].rpc_url(), "same"),
        cluster.withdraw(nodes[1].rpc_url(), "same")
    );
    let (first, second) = (first?.0, second?.0);
    assert_eq!(first, second, "one answer per key");
    assert_eq!(cluster.sent().await? - sent_before, 1, "one transaction for one key");
    answers.push(("same".into(), first));

    // Ten keys spread over both nodes at once: the leader signs them all (a call on the other
    // node is queued for it). How long each took, to inclusion on 1 s blocks, by where it came.
    let (leader_pid, _) = cluster.leader().await?.ok_or("no leader")?;
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let node = &nodes[i % 2];
            let (url, key) = (node.rpc_url().to_owned(), format!("spread-{i}"));
            let call = withdraw(url, cluster.stream.clone(), key.clone());
            let timed = async move {
                let started = Instant::now();
                call.await.map(|(answer, _)| (answer, started.elapsed()))
            };
            (key, node.pid() == leader_pid, tokio::spawn(timed))
        })
        .collect();
    let (mut direct, mut queued) = (Vec::new(), Vec::new());
    for (key, on_leader, call) in calls {
        let (answer, took) = call.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        if on_leader { &mut direct } else { &mut queued }.push(took.as_millis());
        answers.push((key, answer));
    }
    assert_eq!(cluster.sent().await? - sent_before, 11);
    direct.sort_unstable();
    queued.sort_unstable();
    eprintln!(
        "failover: 10 concurrent calls to inclusion (1 s blocks): on the leader {direct:?} ms, \
         queued from the other node {queued:?} ms"
    );

    // The leader killed with calls in flight on both nodes; the other takes over.
    let (leader_pid, old_epoch) = cluster.leader().await?.ok_or("no leader")?;
    let leader = nodes.iter().position(|n| n.pid() == leader_pid).ok_or("leader not ours")?;
    let follower = 1 - leader;
    let in_flight = ["inflight-leader", "inflight-follower"].map(|key| {
        let url =
            nodes[if key.ends_with("leader") { leader } else { follower }].rpc_url().to_owned();
        let params = json!([{ "streamId": cluster.stream, "idempotencyKey": key, "amount": "1" }]);
        tokio::spawn(
            async move { call_with_key(&url, TOKEN, "stream_withdraw", params).await.ok() },
        )
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let killed_at = Instant::now();
    nodes.remove(leader).kill()?;
    let survivor = nodes.pop().ok_or("no survivor")?;
    let new_epoch = cluster.led_by(survivor.pid(), Duration::from_secs(10)).await?;
    let takeover = killed_at.elapsed();
    assert!(new_epoch > old_epoch, "a takeover is a new epoch");
    for call in in_flight {
        let _ = call.await; // answered or cut off by the kill: the retry below decides
    }
    for key in ["inflight-leader", "inflight-follower"] {
        let (answer, _) = cluster.withdraw(survivor.rpc_url(), key).await?;
        answers.push((key.into(), answer));
    }
    let served_after = killed_at.elapsed();
    eprintln!(
        "failover: leader killed; takeover (epoch {old_epoch} → {new_epoch}) after {} ms, \
         its in-flight calls answered {} ms after the kill",
        takeover.as_millis(),
        served_after.as_millis()
    );

    // The survivor stopped past its lease; a restarted node takes over; continued, the stopped
    // one writes nothing under its old epoch.
    let restarted = cluster.node(dirs[2].path()).await?;
    let stopped_epoch = new_epoch;
    let before_stop = cluster.intents_of_epoch(stopped_epoch).await?;
    signal(survivor.pid(), "-STOP")?;
    let stopped_at = Instant::now();
    let third_epoch = cluster.led_by(restarted.pid(), Duration::from_secs(10)).await?;
    let stop_takeover = stopped_at.elapsed();
    answers.push((
        "while-stopped".into(),
        cluster.withdraw(restarted.rpc_url(), "while-stopped").await?.0,
    ));
    signal(survivor.pid(), "-CONT")?;
    let (answer, refusals) = cluster.withdraw(survivor.rpc_url(), "after-continue").await?;
    answers.push(("after-continue".into(), answer));
    assert_eq!(
        cluster.intents_of_epoch(stopped_epoch).await?,
        before_stop,
        "nothing written under the stopped leader's epoch"
    );
    eprintln!(
        "failover: leader stopped; takeover (epoch {stopped_epoch} → {third_epoch}) after {} ms; \
         continued, it answered its next call after {refusals} refusals, via the new leader",
        stop_takeover.as_millis()
    );

    // The leader killed at chosen points of a call; the standby takes over, sends the
    // committed transaction again, and the retry is answered from it; a fresh node joins.
    let (mut leading, mut standby) = (restarted, survivor);
    let extra = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let points = [KillPoint::AfterIntentCommit, KillPoint::AfterBroadcast, KillPoint::Underpriced];
    for (point, dir) in points.iter().zip(&extra) {
        let (holder, epoch) = cluster.leader_lease().await?;
        assert!(holder.contains(&format!("/{}/", leading.pid())), "{holder} leads");
        let key = format!("killed-{point:?}");
        cluster.leave_as_leader((&holder, epoch), &key, *point).await?;
        let killed_at = Instant::now();
        leading.kill()?;
        let next_epoch = cluster.led_by(standby.pid(), Duration::from_secs(10)).await?;
        let takeover = killed_at.elapsed();
        let (answer, refusals) = cluster.withdraw(standby.rpc_url(), &key).await?;
        eprintln!(
            "failover: leader killed {point:?}; takeover (epoch {epoch} → {next_epoch}) after {} \
             ms, the retry answered {} ms after the kill ({refusals} refusals first)",
            takeover.as_millis(),
            killed_at.elapsed().as_millis()
        );
        if let KillPoint::Underpriced = point {
            let nonce = cluster.sent().await? - 1;
            let intent = cluster.store.intent(cluster.operator, nonce).await?.ok_or("intent")?;
            assert_eq!(intent.hashes.len(), 2, "the new leader bumped the committed transaction");
            assert_eq!(
                answer["transactionHash"],
                json!(intent.hashes[1]),
                "answered from the bump"
            );
        }
        answers.push((key, answer));
        leading = standby;
        standby = cluster.node(dir.path()).await?;
    }
    let restarted = leading;

    // PostgreSQL stopped abruptly: clean refusals; once back, the call goes through once.
    cluster.postgres.kill()?;
    let params =
        json!([{ "streamId": cluster.stream, "idempotencyKey": "store-down", "amount": "1" }]);
    let down = call_with_key(restarted.rpc_url(), TOKEN, "stream_withdraw", params).await?;
    let (code, message) = down.err().ok_or("a billing call succeeded without its store")?;
    assert!(matches!(code, -32004 | -32603), "{code} {message}");
    let unready = ready_becomes(restarted.rpc_url(), false).await?;
    cluster.postgres.run()?;
    let ready = ready_becomes(restarted.rpc_url(), true).await?;
    eprintln!(
        "failover: PostgreSQL killed: not ready after {} ms; back: ready after {} ms",
        unready.as_millis(),
        ready.as_millis()
    );
    answers
        .push(("store-down".into(), cluster.withdraw(restarted.rpc_url(), "store-down").await?.0));

    // Every key answered once, one transaction each, no nonce gap, every intent finished.
    for (key, answer) in &answers {
        let (again, _) = cluster.withdraw(restarted.rpc_url(), key).await?;
        assert_eq!(&again, answer, "{key}: one answer per key");
    }
    let calls = answers.len() as u64;
    let sent = cluster.sent().await? - sent_before;
    let rows = sqlx::query(
        "SELECT count(*) AS n, min(nonce) AS low, max(nonce) AS high, \
         count(*) FILTER (WHERE NOT finished) AS open FROM settled_intents",
    )
    .fetch_one(cluster.store.pool())
    .await?;
    let (n, low, high, open): (i64, i64, i64, i64) =
        (rows.try_get("n")?, rows.try_get("low")?, rows.try_get("high")?, rows.try_get("open")?);
    let paid = usdc.balanceOf(payee).call().await? - paid_before;
    eprintln!(
        "failover: {calls} keys, {sent} transactions, {n} intents (nonces {low}..={high}, \
         {open} unfinished), payee paid {paid} base units; lost = {}, duplicated = {}",
        calls.saturating_sub(sent),
        sent.saturating_sub(calls)
    );
    assert_eq!(sent, calls, "one transaction per key");
    assert_eq!((n, high - low + 1), (calls as i64, calls as i64), "one intent per nonce, no gap");
    assert_eq!(low as u64, sent_before, "the intents start at the operator's first nonce");
    assert_eq!(open, 0, "every intent finished");
    assert_eq!(paid, U256::from(calls), "the payee got exactly what was asked");
    Ok(())
}

/// Two nodes sponsoring from one ledger: 50 `pm_getPaymasterData` at once, 25 on each node,
/// under a policy of 20 ops per customer: exactly 20 signed, 30 refused by the cap, and both
/// nodes report the same 20 open reservations; policies cannot be changed on one node alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_sponsorship_caps() -> TestResult {
    let cluster = Cluster::start().await?;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let policies = dirs[0].path().join("policies.toml");
    std::fs::write(&policies, "[[policies]]\nid = \"burst\"\nmaxOpsPerCustomer = 20\n")?;
    let policies = policies.to_string_lossy().into_owned();
    let key = cluster.chain.signer(PAYMASTER_SIGNER_ACCOUNT)?.to_bytes().to_string();
    let env = [("SETTLED_PAYMASTER_KEY", key)];
    let args = ["--paymaster.policies-file", policies.as_str(), "--rpc.admin"];
    let nodes = [
        cluster.node_with(dirs[0].path(), &args, &env).await?,
        cluster.node_with(dirs[1].path(), &args, &env).await?,
    ];
    let version = EntryPointVersion::V08;
    let chain_id = cluster.chain.provider().get_chain_id().await?;
    let mut asks = Vec::new();
    for i in 0..50 {
        let owner = PrivateKeySigner::random();
        let (sender, init_code) = cluster.chain.simple_account(version, owner.address()).await?;
        let mut op = unestimated_op(sender, 0, init_code, Default::default());
        op.set_account_gas_limits(1_000_000, 100_000);
        op.preVerificationGas = U256::from(100_000);
        let params = json!([
            UserOperation::unpack(&op, None),
            version.canonical_address(),
            format!("{chain_id:#x}"),
            { "policyId": "burst", "customer": "acme" },
        ]);
        asks.push((nodes[i % 2].rpc_url().to_owned(), params));
    }
    let ask = asks[0].1.clone();
    let started = Instant::now();
    let calls: Vec<_> = asks
        .into_iter()
        .map(|(url, params)| {
            tokio::spawn(async move { call_url(&url, "pm_getPaymasterData", params).await })
        })
        .collect();
    let (mut signed, mut capped) = (0, 0);
    for call in calls {
        match call.await.map_err(|e| e.to_string())?? {
            Ok(_) => signed += 1,
            Err((_, message)) if message.contains("sponsored ops used") => capped += 1,
            Err(other) => return Err(format!("pm_getPaymasterData: {other:?}").into()),
        }
    }
    eprintln!(
        "sponsorship: 50 concurrent pm_getPaymasterData on two nodes in {} ms: {signed} signed, \
         {capped} refused by the cap of 20",
        started.elapsed().as_millis()
    );
    assert_eq!((signed, capped), (20, 30), "a cap of 20 ops admits exactly 20 across nodes");
    let policy = json!([{ "id": "burst", "maxOpsPerCustomer": 1000 }]);
    let refused = call_url(nodes[0].rpc_url(), "paymaster_setPolicy", policy).await?;
    let (code, message) = refused.err().ok_or("a runtime policy change on a shared store")?;
    assert!(code == -32602 && message.contains("policies-file"), "{code} {message}");
    for node in &nodes {
        let status = call_url(node.rpc_url(), "paymaster_status", json!([])).await?;
        let status = status.map_err(|e| format!("paymaster_status: {e:?}"))?;
        assert_eq!(status["ledger"]["openReservations"], json!(20), "{status}");
    }

    // PostgreSQL killed while blocks (1 s) come: a sponsorship is refused, and each node's
    // paymaster waits for the store to settle its blocks instead of stopping the node; once the
    // store is back both answer with the same 20 reservations.
    let (mut cluster, params) = (cluster, ask.clone());
    cluster.postgres.kill()?;
    let refused = call_url(nodes[0].rpc_url(), "pm_getPaymasterData", params).await?;
    assert!(refused.is_err(), "a sponsorship without its ledger: {refused:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.postgres.run()?;
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            match call_url(node.rpc_url(), "paymaster_status", json!([])).await {
                Ok(Ok(status)) => break status,
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                other => return Err(format!("after the store came back: {other:?}").into()),
            }
        };
        assert_eq!(status["ledger"]["openReservations"], json!(20), "{status}");
    }
    Ok(())
}
