//! The operator's worst day (#20): restarts onto a chain that moved on while the node was down.
//! Each test runs the real binary (`settled run`, [`SettledProcess`]) on its own Anvil.

use std::time::Duration;

use alloy::{
    primitives::U256,
    providers::{Provider, ext::AnvilApi},
    signers::local::PrivateKeySigner,
};
use serde_json::json;
use settled_contracts::EntryPointVersion;
use settled_tests::{
    SettledProcess, TestChain, TestResult,
    rpc::{call_url, send_at, with_estimated_limits},
    unestimated_op, usdc_transfer,
};

/// Lines of the node's log (every start appends to `settled.log` in its datadir) containing
/// `what`.
fn log_lines(datadir: &std::path::Path, what: &str) -> TestResult<usize> {
    let log = std::fs::read_to_string(datadir.join("settled.log"))?;
    Ok(log.lines().filter(|l| l.contains(what)).count())
}

/// #20 item 3: after a restart the follower replays the blocks since the deployment; each used
/// to count as a new head for fee bumping, so a bundle sent during the replay was replaced every
/// three replayed blocks (47 times in 0.35 s, fees ×51). Bumps now count from the chain's real
/// head: while no real block passes, the bundle is never re-priced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_restart_does_not_re_price_a_pending_bundle() -> TestResult {
    let chain = TestChain::spawn().await?;
    let provider = chain.provider();
    let datadir = tempfile::tempdir()?;
    let version = EntryPointVersion::V08;

    // An op estimated and signed against a first run of the node.
    let first = SettledProcess::start(&chain, datadir.path()).await?;
    let owner = PrivateKeySigner::random();
    let (sender, init_code) = chain.simple_account(version, owner.address()).await?;
    let fund = alloy::rpc::types::TransactionRequest::default()
        .to(sender)
        .value(U256::from(10u128.pow(18)));
    provider.send_transaction(fund).await?.get_receipt().await?;
    let call_data = usdc_transfer(version, chain.deployment().usdc, sender, 0);
    let op = unestimated_op(sender, 0, init_code, call_data);
    let mut op = with_estimated_limits(first.rpc_url(), version, op).await?;
    op.signature = chain.sign_op(version, &owner, &op).await?;
    first.kill()?;

    // The chain moves on while the node is down; then nothing is mined until the test says so.
    provider.anvil_mine(Some(3_000), None).await?;
    provider.anvil_set_auto_mine(false).await?;
    let head = provider.get_block_number().await?;

    let second = SettledProcess::start(&chain, datadir.path()).await?;
    send_at(second.rpc_url(), version, &op).await?.map_err(|e| format!("send: {e:?}"))?;
    let url = second.rpc_url().to_owned();
    let bundle =
        tokio::spawn(async move { call_url(&url, "debug_bundler_sendBundleNow", json!([])).await });
    // The bundle waits in Anvil's pool while the follower replays the 3,000 blocks.
    for _ in 0..100 {
        if log_lines(datadir.path(), "bundle sent")? > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log_lines(datadir.path(), "bundle sent")? > 0, "no bundle sent");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(provider.get_block_number().await?, head, "nothing mined meanwhile");
    let replaced = log_lines(datadir.path(), "replacing it with higher fees")?;
    assert_eq!(replaced, 0, "the replayed blocks re-priced the pending bundle {replaced} times");

    // A real block includes it.
    provider.anvil_mine(Some(1), None).await?;
    let answer = tokio::time::timeout(Duration::from_secs(30), bundle).await???;
    answer.map_err(|e| format!("sendBundleNow: {e:?}"))?;
    assert_eq!(log_lines(datadir.path(), "bundle sent")?, 1, "and only that one");
    Ok(())
}
