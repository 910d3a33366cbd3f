//! Settlement anchored on its own chain: the streams live on an "L2" Anvil (chain 8453, the
//! OP-stack fee predeploys installed), the commits land on an "L1" Anvil (chain 31337) that takes
//! blobs — in a blob, or in calldata. Receipts verify against both chains; each batch records
//! what it cost on each; a kill -9 between a commit's send and its inclusion on the L1 commits
//! the batch once.

use alloy::{
    primitives::{Address, U256},
    providers::{Provider, ext::AnvilApi},
};
use serde_json::{Value, json};
use settled_contracts::{AnvilOptions, SettlementAnchor};
use settled_settlement::{AnchorMode, BatchStage, verify_receipt};
use settled_tests::{
    OPERATOR_ACCOUNT, OPERATOR_KEY, SettledProcess, TestChain, TestNode, TestResult,
    op_stack::{L1FeeParams, install_op_predeploys},
    rpc::{call_url, mine_until_committed},
};

const GWEI: u128 = 1_000_000_000;
const L2_CHAIN_ID: u64 = 8453;

/// An L2 with `streams` streams of one payer, ten minutes accrued, and an L1 beside it.
async fn two_chains(streams: u128) -> TestResult<(TestChain, TestChain, Address)> {
    let l2 =
        TestChain::spawn_with(AnvilOptions { chain_id: Some(L2_CHAIN_ID), ..Default::default() })
            .await?;
    install_op_predeploys(l2.provider(), L1FeeParams::base(30 * GWEI)).await?;
    let l1 = TestChain::spawn().await?;
    assert_eq!(
        l1.deployment().settlement_anchor,
        l2.deployment().settlement_anchor,
        "SettlementAnchor has one address on every chain"
    );
    let (payer, payee) = (l2.account(3)?, l2.account(4)?);
    let operator = l2.account(OPERATOR_ACCOUNT)?;
    l2.fund_payer(payer, U256::from(10u128.pow(15))).await?;
    for i in 0..streams {
        l2.open_stream(payer, payee, operator, 10u128.pow(16) * (i + 1), 10u128.pow(10)).await?;
    }
    l2.provider().anvil_increase_time(600).await?;
    l2.provider().anvil_mine(Some(1), None).await?;
    Ok((l2, l1, payer))
}

/// One settlement round on the L2, committed on the L1 in `mode`: the batch, its receipt
/// checked against both chains, its costs, the payer's invoice.
async fn settles_on_the_l1(mode: AnchorMode) -> TestResult {
    let (l2, l1, payer) = two_chains(3).await?;
    let l1_url = l1.anvil().endpoint();
    let l2_provider = l2.provider().clone();
    let node = TestNode::spawn_on(l2, |config| {
        config.billing.operator_key = Some(settled_node::SecretKey(OPERATOR_KEY.into()));
        config.anchor.rpc_url = Some(l1_url);
        config.anchor.mode = mode;
        config.settlement.eth_price_micro_usd = Some(3_000_000_000);
    })
    .await?;
    let settler = node.node()?.settler().ok_or("no settlement")?;
    let round = settler.settle().await?;
    assert_eq!(round.committed, vec![1], "{round:?}");
    let batch = settler.batch(1).await?.ok_or("no batch 1")?;
    let BatchStage::Committed { transaction, .. } = batch.stage else {
        return Err(format!("not committed: {:?}", batch.stage).into());
    };
    assert_eq!(
        (batch.mode, batch.anchor_chain_id, batch.context.chain_id),
        (mode, 31337, L2_CHAIN_ID)
    );

    // On the L1's anchor, not the L2's.
    let committer = settler.anchor_chain().committer();
    let on_l1 = SettlementAnchor::new(batch_anchor(&node), l1.provider());
    assert_eq!(on_l1.getBatch(committer, U256::from(1)).call().await?.root, batch.root);
    let on_l2 = SettlementAnchor::new(batch_anchor(&node), &l2_provider);
    assert!(on_l2.getBatch(committer, U256::from(1)).call().await?.root.is_zero());
    let commit = l1.provider().get_transaction_receipt(transaction).await?.ok_or("no receipt")?;
    assert_eq!(commit.blob_gas_used.is_some(), mode == AnchorMode::Blob, "{mode:?}");

    // Every record's receipt verifies against both chains, and not against the L2 alone.
    for record in &batch.records {
        let receipt = settler.receipt(record.stream_id, 1).await?.ok_or("no receipt")?;
        assert_eq!((receipt.anchor_chain_id, receipt.anchor_mode), (31337, mode));
        let verified = verify_receipt(&l2_provider, l1.provider(), &receipt).await?;
        assert!(verified.valid && verified.checks.len() >= 8, "{verified:?}");
        assert!(verify_receipt(&l2_provider, &l2_provider, &receipt).await.is_err());
    }

    // What it cost, on each chain; the payer's invoice carries its share.
    let costs = batch.costs;
    assert!(costs.withdrawal_gas_wei > 0 && costs.withdrawal_l1_fee_wei > 0, "{costs:?}");
    assert!(costs.anchor_gas_wei > 0, "{costs:?}");
    assert_eq!(costs.anchor_blob_wei > 0, mode == AnchorMode::Blob, "{costs:?}");
    println!(
        "{mode:?}: {} records, {} settled; L2 gas {} wei + L1 fee {} wei; anchor gas {} ({} wei) + blob {} ({} wei)",
        batch.records.len(),
        batch.total,
        costs.withdrawal_gas_wei,
        costs.withdrawal_l1_fee_wei,
        commit.gas_used,
        costs.anchor_gas_wei,
        commit.blob_gas_used.unwrap_or_default(),
        costs.anchor_blob_wei,
    );
    let invoice = settler.invoice(payer, 0, u64::MAX, |_| true).await?;
    let shared = invoice.settlement_costs;
    let whole = costs.l2_wei() + costs.anchor_wei();
    let lines: u128 = invoice
        .lines
        .iter()
        .map(|l| l.settlement_cost_wei.parse::<u128>())
        .sum::<Result<_, _>>()?;
    assert_eq!(lines, shared.l2_wei() + shared.anchor_wei(), "lines add up");
    assert!(
        lines <= whole && lines + 4 >= whole,
        "the payer's share of its only batch: {lines} of {whole}"
    );
    let answer = call_url(&node.node()?.rpc_url(), "settlement_getBatch", json!([1])).await?;
    let answer: Value = answer.map_err(|e| format!("{e:?}"))?;
    assert_eq!(answer["anchorChainId"], json!(31337));
    assert_eq!(answer["costs"]["totalWei"], json!(whole.to_string()));
    assert!(answer["costs"]["overheadPpm"].is_string(), "{answer}");
    Ok(())
}

fn batch_anchor(node: &TestNode) -> Address {
    node.chain().deployment().settlement_anchor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_on_the_l2_commit_in_a_blob_on_the_l1() -> TestResult {
    settles_on_the_l1(AnchorMode::Blob).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_on_the_l2_commit_in_calldata_on_the_l1() -> TestResult {
    settles_on_the_l1(AnchorMode::Calldata).await
}

/// `settled` (the binary) on the L2 is killed with SIGKILL while its commit is in the L1's
/// mempool, unmined; restarted, it finishes the batch: each batch id is committed exactly once
/// on the L1, none on the L2.
async fn a_kill_between_send_and_inclusion_on_the_l1(mode: &str) -> TestResult {
    let (l2, l1, _) = two_chains(5).await?;
    let l1_provider = l1.provider();
    l1_provider.anvil_set_auto_mine(false).await?;
    let datadir = tempfile::tempdir()?;
    let l1_url = l1.anvil().endpoint();
    let args = [
        "--settlement.interval-secs",
        "2",
        "--settlement.anchor-rpc-url",
        l1_url.as_str(),
        "--settlement.anchor-mode",
        mode,
    ];
    let env = [("SETTLED_BILLING_OPERATOR_KEY", OPERATOR_KEY.to_string())];
    let first = SettledProcess::start_with(&l2, datadir.path(), &args, &env).await?;
    let anchor = l2.deployment().settlement_anchor.to_string().to_lowercase();
    let mut found = false;
    for _ in 0..300 {
        let pool: Value = l1_provider.raw_request("txpool_content".into(), ()).await?;
        if pool["pending"].to_string().to_lowercase().contains(&anchor) {
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(found, "no commit transaction reached the L1");
    first.kill()?;
    l1_provider.anvil_mine(Some(1), None).await?;

    let second = SettledProcess::start_with(&l2, datadir.path(), &args, &env).await?;
    let stage = mine_until_committed(second.rpc_url(), l1_provider, 1).await?;
    let log = std::fs::read_to_string(datadir.path().join("settled.log")).unwrap_or_default();
    assert_eq!(stage["stage"], json!("committed"), "{stage}\n{log}");
    for _ in 0..20 {
        l1_provider.anvil_mine(Some(1), None).await?;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    second.kill()?;
    l1_provider.anvil_mine(Some(1), None).await?;

    let operator = l2.account(OPERATOR_ACCOUNT)?;
    let committed = |chain: &TestChain| {
        let anchor =
            SettlementAnchor::new(l2.deployment().settlement_anchor, chain.provider().clone());
        async move {
            let events =
                anchor.BatchCommitted_filter().topic1(operator).from_block(0).query().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                events.into_iter().map(|(event, _)| event.batchId.to::<u64>()).collect::<Vec<_>>(),
            )
        }
    };
    let on_l1 = committed(&l1).await?;
    let mut unique = on_l1.clone();
    unique.sort_unstable();
    unique.dedup();
    println!("{mode}: batches committed on the L1 {on_l1:?}");
    assert!(!on_l1.is_empty() && on_l1.contains(&1), "{on_l1:?}");
    assert_eq!(unique.len(), on_l1.len(), "a batch committed twice: {on_l1:?}");
    assert!(committed(&l2).await?.is_empty(), "nothing committed on the L2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_between_a_blob_commit_and_its_inclusion_on_the_l1_commits_once() -> TestResult {
    a_kill_between_send_and_inclusion_on_the_l1("blob").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_between_a_calldata_commit_and_its_inclusion_on_the_l1_commits_once() -> TestResult
{
    a_kill_between_send_and_inclusion_on_the_l1("calldata").await
}
