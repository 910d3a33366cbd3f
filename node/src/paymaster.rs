//! The node's side of the paymaster: its key and policies from the settings, and the one-shot
//! `settled paymaster status|deposit|withdraw` commands for operators.

use std::path::Path;

use alloy::{
    network::EthereumWallet,
    primitives::{B256, U256},
    providers::ProviderBuilder,
    signers::local::PrivateKeySigner,
};
use serde::{Deserialize, Serialize};
use settled_contracts::{Deployment, EntryPointVersion};
use settled_paymaster::{
    PaymasterReport, SponsorshipPolicy, TreasuryError, deposit, paymaster_reports, withdraw,
};

use settled_config::{NodeConfig, PaymasterAction, PaymasterCommandConfig, SecretKey};

use crate::{error::NodeError, launch::connect};

/// A key from a flag/environment value or a file; `None` when neither is given.
pub(crate) fn load_key(
    key: Option<&SecretKey>,
    file: Option<&Path>,
    what: &'static str,
) -> Result<Option<PrivateKeySigner>, NodeError> {
    let parse = |hex: &str| {
        hex.trim()
            .parse::<PrivateKeySigner>()
            .map(Some)
            .map_err(|e| NodeError::Key { what, reason: format!("not a private key: {e}") })
    };
    if let Some(key) = key {
        return parse(&key.0);
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| NodeError::Key { what, reason: format!("{}: {e}", path.display()) })?;
        return parse(&text);
    }
    Ok(None)
}

/// The paymaster's signing key: the configured one, else the dev chain's.
pub(crate) fn paymaster_signer(
    config: &NodeConfig,
    dev_key: Option<PrivateKeySigner>,
) -> Result<Option<PrivateKeySigner>, NodeError> {
    let settings = &config.paymaster;
    Ok(load_key(settings.key.as_ref(), settings.key_file.as_deref(), "paymaster key")?.or(dev_key))
}

/// The configured policies: those given directly plus the policies file's.
pub(crate) fn policies(config: &NodeConfig) -> Result<Vec<SponsorshipPolicy>, NodeError> {
    let mut policies = config.paymaster.policies.clone();
    if let Some(path) = &config.paymaster.policies_file {
        let loaded = SponsorshipPolicy::load_file(path)
            .map_err(|reason| NodeError::Policies { path: path.clone(), reason })?;
        policies.extend(loaded);
    }
    Ok(policies)
}

/// The policy `settled dev` serves when none is configured: any call, 1,000 ops per sender per
/// day, 0.1 ETH worst case per op.
pub(crate) fn dev_policy() -> SponsorshipPolicy {
    SponsorshipPolicy {
        sponsor_name: Some("settled dev".into()),
        max_ops_per_sender: Some(1_000),
        max_cost_per_op: Some(U256::from(10u128.pow(17))),
        ..SponsorshipPolicy::unlimited("default")
    }
}

/// What a paymaster command printed: every paymaster's state after it ran, and its transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymasterCommandOutput {
    /// The transaction sent, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction: Option<B256>,
    /// Each paymaster.
    pub paymasters: Vec<PaymasterReport>,
}

/// Runs a `settled paymaster` command; its output is printed as JSON by the binary.
pub async fn run_paymaster_command(
    command: PaymasterCommandConfig,
) -> Result<PaymasterCommandOutput, NodeError> {
    let deployment = Deployment::load(&command.deployment)?;
    let provider = connect(&command.rpc_url, std::time::Duration::from_secs(5)).await?;
    deployment.verify(&provider).await?;
    let failed = |e: TreasuryError| NodeError::PaymasterCommand(e.to_string());
    let transaction = match &command.action {
        PaymasterAction::Status => None,
        PaymasterAction::Deposit { version, amount, key, key_file }
        | PaymasterAction::Withdraw { version, amount, key, key_file, .. } => {
            let signer = load_key(key.as_ref(), key_file.as_deref(), "paymaster owner key")?
                .ok_or_else(|| {
                    NodeError::PaymasterCommand(
                        "a key is needed: --key-file or SETTLED_PAYMASTER_OWNER_KEY".into(),
                    )
                })?;
            let from = signer.address();
            let wallet = ProviderBuilder::new()
                .wallet(EthereumWallet::from(signer))
                .connect_provider(provider.clone());
            let paymaster = deployment.paymaster(*version);
            let hash = match &command.action {
                PaymasterAction::Withdraw { to, .. } => {
                    withdraw(&wallet, paymaster, to.unwrap_or(from), *amount).await
                }
                _ => deposit(&wallet, paymaster, *amount).await,
            };
            Some(hash.map_err(failed)?)
        }
    };
    let versions = EntryPointVersion::ALL.map(|v| (v, deployment.paymaster(v)));
    let paymasters = paymaster_reports(&provider, &versions).await.map_err(failed)?;
    Ok(PaymasterCommandOutput { transaction, paymasters })
}

/// Warns when the paymaster contracts accept another signer than our key: every sponsorship
/// would then fail the EntryPoint's check (the denial-of-wallet guard refuses to hand them out).
pub(crate) async fn check_paymaster_signer(
    provider: &alloy::providers::DynProvider,
    deployment: &Deployment,
    ours: alloy::primitives::Address,
) {
    for version in EntryPointVersion::ALL {
        let address = deployment.paymaster(version);
        match settled_contracts::SponsorPaymaster::new(address, provider).signer().call().await {
            Ok(accepted) if accepted == ours => {}
            Ok(accepted) => tracing::warn!(
                paymaster = %address,
                %accepted,
                key = %ours,
                "the paymaster contract accepts another signer than this node's key: sponsorships will be refused"
            ),
            Err(error) => {
                tracing::warn!(paymaster = %address, %error, "could not read the paymaster's signer")
            }
        }
    }
}
