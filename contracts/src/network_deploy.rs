//! Deploying settled's contracts to a real network (`settled deploy`): a plan first — what is
//! there already and what would be deployed, at which CREATE2 address, for how much gas — then,
//! when asked, the missing contracts, one transaction each. The ERC-4337 EntryPoints are only
//! checked at their canonical addresses: every public chain has them, and settled never deploys
//! over (or in place of) them. A real network's USDC is given, not deployed (`MockUSDC` is for
//! dev chains).

use alloy::{
    network::TransactionBuilder,
    primitives::{Address, Bytes},
    providers::Provider,
    rpc::types::TransactionRequest,
};
use serde::Serialize;
use tracing::info;

use crate::{
    bindings::create2,
    deploy::{DeployError, plans},
    deployment::Deployment,
};

/// What `settled deploy` puts on a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployScope {
    /// Everything a node serves from (the EntryPoints checked, not deployed).
    All,
    /// Only `SettlementAnchor` (on a chain that only anchors settlement batches).
    SettlementAnchor,
}

/// What happens to one contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanAction {
    /// Its code is in place: left alone.
    Present,
    /// Missing: deployed with `--send`.
    Deploy,
    /// A canonical EntryPoint that is missing: settled does not deploy it; the plan cannot run.
    MissingCanonical,
    /// Given by the operator (a real USDC): not ours to deploy.
    External,
}

/// One contract of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedContract {
    /// Which.
    pub name: &'static str,
    /// Where it is or will be.
    pub address: Address,
    /// What happens to it.
    pub action: PlanAction,
    /// Gas the deployment transaction is estimated at (deployments whose constructor can run
    /// now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_gas: Option<u64>,
    #[serde(skip)]
    init_code: Option<(alloy::primitives::B256, Bytes)>,
}

/// A deployment plan for one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentPlan {
    /// The chain.
    pub chain_id: u64,
    /// Who sends the transactions.
    pub deployer: Address,
    /// Who owns the paymasters (and `MockUSDC`, if deployed).
    pub owner: Address,
    /// Every contract in scope.
    pub contracts: Vec<PlannedContract>,
    /// The sum of the deployments' estimated gas.
    pub estimated_gas: u64,
    /// The deployment file the plan leads to.
    pub deployment: Deployment,
}

impl DeploymentPlan {
    /// The canonical EntryPoints the chain lacks (the plan cannot run while any is missing).
    pub fn missing_entry_points(&self) -> Vec<&'static str> {
        let missing = |c: &&PlannedContract| c.action == PlanAction::MissingCanonical;
        self.contracts.iter().filter(missing).map(|c| c.name).collect()
    }
}

/// The plan for `scope` on `provider`'s chain, sent by `deployer`, paymasters owned by `owner`,
/// with the given `usdc` (none: `MockUSDC` is deployed, as on a dev chain).
pub async fn plan_deployment<P: Provider>(
    provider: &P,
    deployer: Address,
    owner: Address,
    usdc: Option<Address>,
    scope: DeployScope,
) -> Result<DeploymentPlan, DeployError> {
    if provider.get_code_at(create2::DETERMINISTIC_DEPLOYER).await?.is_empty() {
        return Err(DeployError::NoDeterministicDeployer(create2::DETERMINISTIC_DEPLOYER));
    }
    let chain_id = provider.get_chain_id().await?;
    let mut deployment = crate::expected_deployment(chain_id, owner);
    if let Some(usdc) = usdc {
        deployment.usdc = usdc;
    }
    deployment.start_block = provider.get_block_number().await?;
    let mut contracts = Vec::new();
    for (index, plan) in plans(owner).into_iter().enumerate() {
        let in_scope = scope == DeployScope::All || plan.name == "SettlementAnchor";
        if !in_scope {
            continue;
        }
        let address = plan.address();
        let present = !provider.get_code_at(address).await?.is_empty();
        let (action, init_code) = match (present, index) {
            // MockUSDC, when a real token is given.
            (_, 5) if usdc.is_some() => (PlanAction::External, None),
            (true, _) => (PlanAction::Present, None),
            // The canonical EntryPoints come first in `plans`.
            (false, 0 | 1) => (PlanAction::MissingCanonical, None),
            (false, _) => (PlanAction::Deploy, Some((plan.salt, plan.init_code.clone()))),
        };
        // A constructor that calls a missing EntryPoint (the paymasters') cannot be estimated:
        // no figure then (the plan cannot run until the EntryPoint is there anyway).
        let estimated_gas = match &init_code {
            Some((salt, code)) => {
                let tx = create2_transaction(deployer, *salt, code);
                provider.estimate_gas(tx).await.ok()
            }
            None => None,
        };
        let address = if index == 5 { deployment.usdc } else { address };
        contracts.push(PlannedContract {
            name: plan.name,
            address,
            action,
            estimated_gas,
            init_code,
        });
    }
    let estimated_gas = contracts.iter().filter_map(|c| c.estimated_gas).sum();
    Ok(DeploymentPlan { chain_id, deployer, owner, contracts, estimated_gas, deployment })
}

fn create2_transaction(
    from: Address,
    salt: alloy::primitives::B256,
    code: &Bytes,
) -> TransactionRequest {
    TransactionRequest::default()
        .with_from(from)
        .with_to(create2::DETERMINISTIC_DEPLOYER)
        .with_input(create2::calldata(salt, code))
}

/// Runs `plan` from its deployer (the provider signs for it): each missing contract, in order,
/// checked in place after its transaction. Refused while a canonical EntryPoint is missing.
pub async fn execute_plan<P: Provider>(
    provider: &P,
    plan: &DeploymentPlan,
) -> Result<Deployment, DeployError> {
    if let Some(name) = plan.missing_entry_points().first() {
        return Err(DeployError::EntryPointMissing(name));
    }
    for contract in &plan.contracts {
        let Some((salt, code)) = &contract.init_code else { continue };
        let (name, expected) = (contract.name, contract.address);
        if !provider.get_code_at(expected).await?.is_empty() {
            continue; // deployed since the plan was made
        }
        let tx = create2_transaction(plan.deployer, *salt, code);
        let receipt = provider.send_transaction(tx).await?.get_receipt().await?;
        let tx = receipt.transaction_hash;
        if !receipt.status() || provider.get_code_at(expected).await?.is_empty() {
            return Err(DeployError::Failed { name, expected, tx });
        }
        info!(name, address = %expected, gas = receipt.gas_used, "deployed");
    }
    Ok(plan.deployment.clone())
}
