//! Sponsored ops through failovers (issue #21): two nodes with the bundler, the paymaster and
//! billing on one PostgreSQL. Wallets get `pm_getPaymasterStubData` and `pm_getPaymasterData`
//! from either node and send their ops to either; the bundler key's leader is killed -9 right
//! after a round's last acknowledgement and restarted. The paymaster's ledger is shared and
//! settled by every node from the chain's `UserOperationEvent`s: at the end both nodes' ledgers
//! equal the chain's `actualGasCost` sum to the wei, every op included once, none left reserved.

use std::time::Duration;

use alloy::{
    primitives::{B256, U256},
    providers::Provider,
    rpc::types::Filter,
    signers::local::PrivateKeySigner,
    sol_types::SolEvent,
};
use serde_json::{Value, json};
use settled_contracts::{EntryPointVersion, UserOperation, v07};
use settled_tests::{
    PAYMASTER_SIGNER_ACCOUNT, SettledProcess, TestResult,
    cluster::Cluster,
    rpc::{apply_paymaster_data, apply_paymaster_stub, call_url, send_at},
    unestimated_op, usdc_transfer,
};
use tokio::time::Instant;

const VERSION: EntryPointVersion = EntryPointVersion::V08;
const ROUNDS: usize = 2;
const OPS_PER_ROUND: usize = 4;

/// A node with every role that ops and sponsorships need, bundling on its own.
async fn node(cluster: &Cluster, dir: &std::path::Path) -> TestResult<SettledProcess> {
    let policies = dir.join("policies.toml");
    std::fs::write(&policies, "[[policies]]\nid = \"gas\"\nmaxOpsPerCustomer = 100\n")?;
    let policies = policies.to_string_lossy().into_owned();
    let key = cluster.chain.signer(PAYMASTER_SIGNER_ACCOUNT)?.to_bytes().to_string();
    let args = ["--roles", "bundler,paymaster,billing", "--paymaster.policies-file", &policies];
    let node = cluster
        .node_with(dir, &[&args[..], &["--rpc.admin"]].concat(), &[("SETTLED_PAYMASTER_KEY", key)])
        .await?;
    let mode = call_url(node.rpc_url(), "debug_bundler_setBundlingMode", json!(["auto"])).await?;
    mode.map_err(|e| format!("auto mode: {e:?}"))?;
    Ok(node)
}

/// `pm_<method>` of `op` at `url`.
async fn pm(
    cluster: &Cluster,
    url: &str,
    method: &str,
    op: &v07::PackedUserOperation,
) -> TestResult<Value> {
    let chain_id = format!("{:#x}", cluster.chain.provider().get_chain_id().await?);
    let params = json!([
        UserOperation::unpack(op, None),
        VERSION.canonical_address(),
        chain_id,
        { "policyId": "gas", "customer": "acme" },
    ]);
    let answer = call_url(url, &format!("pm_{method}"), params).await?;
    answer.map_err(|e| format!("pm_{method}: {e:?}").into())
}

/// A brand-new account's creation op, sponsored by the node at `sponsor` (stub, then data, as
/// a wallet does) and sent to the node at `to`; its hash once acknowledged.
async fn sponsored_op(cluster: &Cluster, sponsor: &str, to: &str) -> TestResult<B256> {
    let owner = PrivateKeySigner::random();
    let (sender, init_code) = cluster.chain.simple_account(VERSION, owner.address()).await?;
    let call_data = usdc_transfer(VERSION, cluster.chain.deployment().usdc, sender, 0);
    let mut op = unestimated_op(sender, 0, init_code, call_data);
    let stub = pm(cluster, sponsor, "getPaymasterStubData", &op).await?;
    apply_paymaster_stub(&mut op, &stub)?;
    op.set_account_gas_limits(400_000, 100_000);
    op.preVerificationGas = U256::from(100_000);
    op.signature = Default::default();
    let data = pm(cluster, sponsor, "getPaymasterData", &op).await?;
    apply_paymaster_data(&mut op, &data)?;
    op.signature = cluster.chain.sign_op(VERSION, &owner, &op).await?;
    let hash = cluster.chain.op_hash(VERSION, &op).await?;
    let answer = send_at(to, VERSION, &op).await?.map_err(|e| format!("send: {e:?}"))?;
    assert_eq!(answer, json!(hash));
    Ok(hash)
}

/// The chain's `UserOperationEvent`s of the paymaster: how many, and their `actualGasCost`
/// sum; each acknowledged op among them exactly once.
async fn chain_spend(cluster: &Cluster, acknowledged: &[B256]) -> TestResult<(u64, U256)> {
    let paymaster = cluster.chain.deployment().paymaster(VERSION);
    let filter = Filter::new()
        .address(VERSION.canonical_address())
        .event_signature(v07::EntryPoint::UserOperationEvent::SIGNATURE_HASH)
        .topic3(paymaster.into_word())
        .from_block(0);
    let logs = cluster.chain.provider().get_logs(&filter).await?;
    let mut total = U256::ZERO;
    for hash in acknowledged {
        let count = logs.iter().filter(|l| l.topics().get(1) == Some(hash)).count();
        assert_eq!(count, 1, "{hash} included once");
    }
    for log in &logs {
        let event = v07::EntryPoint::UserOperationEvent::decode_log_data(log.data())?;
        assert!(event.success, "a sponsored op reverted");
        total += event.actualGasCost;
    }
    Ok((logs.len() as u64, total))
}

/// Waits until every acknowledged op is on the chain.
async fn all_included(cluster: &Cluster, acknowledged: &[B256]) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let filter = Filter::new()
            .address(VERSION.canonical_address())
            .event_signature(v07::EntryPoint::UserOperationEvent::SIGNATURE_HASH)
            .from_block(0);
        let logs = cluster.chain.provider().get_logs(&filter).await?;
        let mined = |hash: &B256| logs.iter().any(|l| l.topics().get(1) == Some(hash));
        if acknowledged.iter().all(mined) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err("not every acknowledged op was included within 60 s".into())
}

/// The node's ledger once it has settled `ops`: its settled wei and open reservations.
async fn ledger(url: &str, ops: u64) -> TestResult<(U256, Value)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = call_url(url, "paymaster_status", json!([])).await?;
        let status = status.map_err(|e| format!("paymaster_status: {e:?}"))?;
        let ledger = &status["ledger"];
        if ledger["totals"]["settledOps"].as_u64() == Some(ops) || Instant::now() > deadline {
            let wei = serde_json::from_value(ledger["totals"]["settledWei"].clone())?;
            return Ok((wei, ledger.clone()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sponsored_ops_through_failovers_settle_to_the_wei() -> TestResult {
    let cluster = Cluster::start().await?;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let mut nodes =
        vec![node(&cluster, dirs[0].path()).await?, node(&cluster, dirs[1].path()).await?];
    let mut acknowledged = Vec::new();
    for round in 0..ROUNDS {
        // Sponsored by one node, sent to the other, and the other way round.
        for i in 0..OPS_PER_ROUND {
            let (sponsor, to) = (nodes[i % 2].rpc_url(), nodes[1 - i % 2].rpc_url());
            acknowledged.push(sponsored_op(&cluster, sponsor, to).await?);
        }
        let (pid, _) = cluster.bundler_leader().await?.ok_or("no bundler leader")?;
        let lead = nodes.iter().position(|n| n.pid() == pid).ok_or("leader not ours")?;
        let killed = Instant::now();
        nodes.remove(lead).kill()?;
        cluster.bundling_led_by(nodes[0].pid(), Duration::from_secs(15)).await?;
        eprintln!(
            "sponsorship failover: round {round}: the bundler leader killed right after the \
             last acknowledgement, taken over in {:?}",
            killed.elapsed()
        );
        nodes.insert(lead, node(&cluster, dirs[lead].path()).await?);
    }
    all_included(&cluster, &acknowledged).await?;
    let (ops, wei) = chain_spend(&cluster, &acknowledged).await?;
    assert_eq!(ops, acknowledged.len() as u64, "only our ops used the paymaster");
    for node in &nodes {
        let (settled, ledger) = ledger(node.rpc_url(), ops).await?;
        assert_eq!(ledger["totals"]["settledOps"], json!(ops), "{ledger}");
        assert_eq!(settled, wei, "the ledger's spend is the chain's actualGasCost sum: {ledger}");
        assert_eq!(ledger["openReservations"], json!(0), "{ledger}");
        assert_eq!(ledger["totals"]["unreservedOps"], json!(0), "{ledger}");
    }
    eprintln!(
        "sponsorship failover: {ops} sponsored ops, each included once; both ledgers settled \
         {wei} wei = the chain's actualGasCost sum; 0 open reservations, 0 unreserved"
    );
    Ok(())
}
