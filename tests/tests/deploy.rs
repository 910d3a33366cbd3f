//! `settled deploy` (the binary) on a fresh Anvil, as on a network: a dry run sends nothing and
//! names the missing canonical EntryPoints; the anchor alone can be deployed; with the
//! EntryPoints in place, `--send` deploys the rest and writes a deployment file a node accepts;
//! a second run finds everything present and sends nothing.

use std::process::Command;

use alloy::{
    network::EthereumWallet,
    providers::{Provider, ProviderBuilder},
};
use serde_json::Value;
use settled_contracts::{
    AnvilOptions, Deployment, LocalAnvil, deploy_entry_points, expected_deployment,
};
use settled_tests::{SettledProcess, TestResult};

/// `settled deploy <args>` against `anvil` with dev account 0's key: exit status and JSON.
fn deploy(anvil: &LocalAnvil, args: &[&str]) -> TestResult<(bool, Value, String)> {
    let key = anvil.signer(0).ok_or("no dev account")?.to_bytes().to_string();
    let output = Command::new(SettledProcess::binary()?)
        .args(["deploy", "--rpc-url", &anvil.endpoint()])
        .args(args)
        .env("SETTLED_DEPLOY_KEY", key)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    // A failed deployment prints no plan.
    let json = match output.stdout.is_empty() {
        true => Value::Null,
        false => serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("{e}: {}\n{stderr}", String::from_utf8_lossy(&output.stdout)))?,
    };
    Ok((output.status.success(), json, stderr))
}

fn actions(plan: &Value) -> Vec<(String, String)> {
    plan["plan"]["contracts"]
        .as_array()
        .map(|contracts| {
            contracts
                .iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or("").into(),
                        c["action"].as_str().unwrap_or("").into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_plans_checks_the_entry_points_and_deploys_once() -> TestResult {
    let anvil =
        tokio::task::spawn_blocking(|| LocalAnvil::spawn(&AnvilOptions::default())).await??;
    let deployer = anvil.signer(0).ok_or("no dev account")?;
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(deployer.clone()))
        .connect_http(anvil.endpoint().parse()?)
        .erased();
    let expected = expected_deployment(anvil.chain_id(), deployer.address());

    // A dry run on a chain without EntryPoints: the plan, nothing sent, a clear refusal.
    let (ok, plan, stderr) = deploy(&anvil, &[])?;
    assert!(!ok, "a plan that cannot run exits non-zero");
    assert!(stderr.contains("EntryPoint v0.7") && stderr.contains("does not deploy"), "{stderr}");
    assert_eq!(plan["sent"], Value::Bool(false));
    let planned = actions(&plan);
    assert!(
        planned.contains(&("EntryPoint v0.8".into(), "missing-canonical".into())),
        "{planned:?}"
    );
    assert!(planned.contains(&("StreamVault".into(), "deploy".into())), "{planned:?}");
    assert!(plan["plan"]["estimatedGas"].as_u64().unwrap_or(0) > 1_000_000, "{plan}");
    assert_eq!(provider.get_transaction_count(deployer.address()).await?, 0, "nothing sent");
    let (ok, _, stderr) = deploy(&anvil, &["--send"])?;
    assert!(!ok && stderr.contains("EntryPoint"), "sending is refused too: {stderr}");
    assert!(provider.get_code_at(expected.stream_vault).await?.is_empty());

    // The anchor alone (a chain that only anchors settlement batches).
    let (ok, plan, stderr) = deploy(&anvil, &["--only", "settlement-anchor", "--send"])?;
    assert!(ok, "{stderr}");
    assert_eq!(actions(&plan), vec![("SettlementAnchor".into(), "deploy".into())]);
    assert!(!provider.get_code_at(expected.settlement_anchor).await?.is_empty());

    // With the EntryPoints in place (as on every public chain): the rest, and the file.
    deploy_entry_points(&provider, deployer.address()).await?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("deployment.json");
    let out_arg = out.to_string_lossy().to_string();
    let (ok, plan, stderr) = deploy(&anvil, &["--send", "--out", &out_arg])?;
    assert!(ok, "{stderr}");
    let planned = actions(&plan);
    assert!(planned.contains(&("EntryPoint v0.7".into(), "present".into())), "{planned:?}");
    assert!(planned.contains(&("SettlementAnchor".into(), "present".into())), "{planned:?}");
    let written = Deployment::load(&out)?;
    assert_eq!(Deployment { start_block: 0, ..written.clone() }, expected);
    written.verify(&provider).await?;

    // Again: everything present, nothing sent.
    let nonce = provider.get_transaction_count(deployer.address()).await?;
    let (ok, plan, stderr) = deploy(&anvil, &["--send", "--out", &out_arg])?;
    assert!(ok, "{stderr}");
    assert!(actions(&plan).iter().all(|(_, action)| action == "present"), "{plan}");
    assert_eq!(provider.get_transaction_count(deployer.address()).await?, nonce);
    Ok(())
}
