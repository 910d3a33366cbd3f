//! `settled deploy`: the plan for a network, and with `--send` the deployment and its file.

use alloy::{
    network::EthereumWallet,
    providers::{Provider, ProviderBuilder},
};
use serde::Serialize;
use settled_contracts::{DeployScope, DeploymentPlan, execute_plan, plan_deployment};

use crate::{DeployCommandConfig, NodeError, connect, paymaster::load_key};

/// What `settled deploy` printed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployOutput {
    /// Whether transactions were sent (false: a dry run).
    pub sent: bool,
    /// The plan, as found before sending.
    pub plan: DeploymentPlan,
    /// The deployment file written (scope `all`, after sending).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_file: Option<std::path::PathBuf>,
}

/// Runs `settled deploy`. A dry run that finds a canonical EntryPoint missing still prints its
/// plan; sending is refused then.
pub async fn run_deploy_command(command: DeployCommandConfig) -> Result<DeployOutput, NodeError> {
    let failed = |e: settled_contracts::DeployError| NodeError::Deploy(e);
    let signer = load_key(command.key.as_ref(), command.key_file.as_deref(), "deploy key")?
        .ok_or_else(|| NodeError::Key {
            what: "deploy key",
            reason: "a key is needed: --key-file or SETTLED_DEPLOY_KEY".into(),
        })?;
    let deployer = signer.address();
    let provider = connect(&command.rpc_url, std::time::Duration::from_secs(5)).await?;
    let owner = command.owner.unwrap_or(deployer);
    let plan = plan_deployment(&provider, deployer, owner, command.usdc, command.scope)
        .await
        .map_err(failed)?;
    if !command.send {
        return Ok(DeployOutput { sent: false, plan, deployment_file: None });
    }
    let wallet =
        ProviderBuilder::new().wallet(EthereumWallet::from(signer)).connect_provider(provider);
    let deployment = execute_plan(&wallet, &plan).await.map_err(failed)?;
    let deployment_file = match command.scope {
        DeployScope::All => {
            deployment.verify(&wallet.erased()).await?;
            deployment.save(&command.out)?;
            Some(command.out)
        }
        DeployScope::SettlementAnchor => None,
    };
    Ok(DeployOutput { sent: true, plan, deployment_file })
}
