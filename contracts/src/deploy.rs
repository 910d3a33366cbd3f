//! Puts settled's contracts on a chain: the ERC-4337 EntryPoints at their canonical addresses
//! (through the deterministic CREATE2 deployer, with the published salts and the npm artifacts'
//! creation code, so each EntryPoint's constructor deploys its own SenderCreator), then the
//! account factories and our own contracts, also by CREATE2 so every address is predictable.
//! Deploying is idempotent: a contract whose code is already in place is left alone.

use alloy::{
    network::TransactionBuilder,
    primitives::{Address, B256, Bytes, U256, b256},
    providers::Provider,
    rpc::types::TransactionRequest,
    sol_types::SolConstructor,
};
use tracing::{debug, info};

use crate::{
    EntryPointVersion,
    bindings::{
        create2,
        settled::{MockUSDC, SettlementAnchor, SponsorPaymaster, StreamVault},
        v07, v08,
    },
    deployment::Deployment,
};

/// Salt of the canonical EntryPoint v0.7 deployment.
const SALT_V07: B256 = b256!("0x90d8084deab30c2a37c45e8d47f49f2f7965183cb6990a98943ef94940681de3");
/// Salt of the canonical EntryPoint v0.8 deployment.
const SALT_V08: B256 = b256!("0x0a59dbff790c23c976a548690c27297883cc66b4c67024f9117b0238995e35e9");
/// Salt of settled's own deterministic deployments.
const SALT_SETTLED: B256 = B256::ZERO;

/// Why a deployment failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The chain has no deterministic CREATE2 deployer, so canonical addresses are impossible.
    #[error("no deterministic deployer at {0} on this chain")]
    NoDeterministicDeployer(Address),
    /// A deployment transaction reverted or put no code at the expected address.
    #[error("deploying {name} to {expected} failed (transaction {tx})")]
    Failed {
        /// Which contract.
        name: &'static str,
        /// Where it should have landed.
        expected: Address,
        /// The transaction.
        tx: B256,
    },
    /// The chain could not be queried or a transaction could not be sent.
    #[error("rpc: {0}")]
    Rpc(#[from] alloy::transports::TransportError),
    /// A transaction was sent but its receipt could not be obtained.
    #[error("waiting for a deployment transaction: {0}")]
    Pending(#[from] alloy::providers::PendingTransactionError),
    /// A contract call or transaction failed.
    #[error("contract call: {0}")]
    Contract(#[from] alloy::contract::Error),
    /// A canonical EntryPoint is not on the chain; settled never deploys one on a network.
    #[error(
        "{0} is not at its canonical address on this chain; settled does not deploy EntryPoints on a network (every public chain has them)"
    )]
    EntryPointMissing(&'static str),
    /// A setup transaction reverted.
    #[error("{what} reverted (transaction {tx})")]
    Reverted {
        /// What was being done.
        what: &'static str,
        /// The transaction.
        tx: B256,
    },
}

/// One contract to deploy through the deterministic deployer.
pub(crate) struct Create2Plan {
    pub(crate) name: &'static str,
    pub(crate) salt: B256,
    pub(crate) init_code: Bytes,
}

impl Create2Plan {
    fn new(name: &'static str, salt: B256, creation: &[u8], ctor_args: &[u8]) -> Self {
        let mut init_code = Vec::with_capacity(creation.len() + ctor_args.len());
        init_code.extend_from_slice(creation);
        init_code.extend_from_slice(ctor_args);
        Self { name, salt, init_code: init_code.into() }
    }

    pub(crate) fn address(&self) -> Address {
        create2::address_of(self.salt, &self.init_code)
    }
}

/// The address each contract of a settled deployment gets, given the owner (of USDC and of the
/// paymasters).
///
/// Pure: lets tooling know the addresses before (or without) deploying.
pub fn expected_deployment(chain_id: u64, usdc_owner: Address) -> Deployment {
    let plans = plans(usdc_owner);
    Deployment {
        chain_id,
        entry_point_v07: plans[0].address(),
        entry_point_v08: plans[1].address(),
        simple_account_factory_v07: plans[2].address(),
        simple_account_factory_v08: plans[3].address(),
        simple_7702_account_v08: plans[4].address(),
        usdc: plans[5].address(),
        paymaster_v07: plans[6].address(),
        paymaster_v08: plans[7].address(),
        stream_vault: plans[8].address(),
        settlement_anchor: plans[9].address(),
        start_block: 0,
    }
}

/// Every contract, in deployment order: the canonical EntryPoints first, `MockUSDC` sixth.
pub(crate) fn plans(usdc_owner: Address) -> [Create2Plan; 10] {
    let paymaster = |name, entry_point| {
        Create2Plan::new(
            name,
            SALT_SETTLED,
            &SponsorPaymaster::BYTECODE,
            &SponsorPaymaster::constructorCall { entryPoint_: entry_point, owner_: usdc_owner }
                .abi_encode(),
        )
    };
    let ep07 = EntryPointVersion::V07.canonical_address();
    let ep08 = EntryPointVersion::V08.canonical_address();
    [
        Create2Plan::new("EntryPoint v0.7", SALT_V07, &v07::EntryPoint::BYTECODE, &[]),
        Create2Plan::new("EntryPoint v0.8", SALT_V08, &v08::EntryPoint::BYTECODE, &[]),
        Create2Plan::new(
            "SimpleAccountFactory v0.7",
            SALT_SETTLED,
            &v07::SimpleAccountFactory::BYTECODE,
            &v07::SimpleAccountFactory::constructorCall { _entryPoint: ep07 }.abi_encode(),
        ),
        Create2Plan::new(
            "SimpleAccountFactory v0.8",
            SALT_SETTLED,
            &v08::SimpleAccountFactory::BYTECODE,
            &v08::SimpleAccountFactory::constructorCall { _entryPoint: ep08 }.abi_encode(),
        ),
        Create2Plan::new(
            "Simple7702Account v0.8",
            SALT_SETTLED,
            &v08::Simple7702Account::BYTECODE,
            &[],
        ),
        Create2Plan::new(
            "MockUSDC",
            SALT_SETTLED,
            &MockUSDC::BYTECODE,
            &MockUSDC::constructorCall { initialOwner: usdc_owner }.abi_encode(),
        ),
        paymaster("SponsorPaymaster v0.7", ep07),
        paymaster("SponsorPaymaster v0.8", ep08),
        Create2Plan::new("StreamVault", SALT_SETTLED, &StreamVault::BYTECODE, &[]),
        Create2Plan::new("SettlementAnchor", SALT_SETTLED, &SettlementAnchor::BYTECODE, &[]),
    ]
}

/// How a paymaster is readied for sponsoring: who signs, how much deposit it keeps at least,
/// and its stake (ERC-7562 lets only a staked paymaster read its own storage and use postOp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymasterFunding {
    /// The key whose signatures the paymaster accepts.
    pub signer: Address,
    /// Deposit at the EntryPoint to top up to.
    pub min_deposit: U256,
    /// Stake at the EntryPoint to top up to.
    pub stake: U256,
    /// Unstake delay of the stake, in seconds.
    pub unstake_delay_sec: u32,
}

/// Sets `paymaster`'s signer and tops its deposit and stake up to `funding`, sending from its
/// owner `owner`. Idempotent: does nothing that is already done.
pub async fn fund_paymaster<P: Provider>(
    provider: &P,
    owner: Address,
    paymaster: Address,
    funding: &PaymasterFunding,
) -> Result<(), DeployError> {
    let contract = SponsorPaymaster::new(paymaster, provider);
    let sent = |what: &'static str, receipt: alloy::rpc::types::TransactionReceipt| {
        if receipt.status() {
            Ok(())
        } else {
            Err(DeployError::Reverted { what, tx: receipt.transaction_hash })
        }
    };
    if contract.signer().call().await? != funding.signer {
        let receipt =
            contract.setSigner(funding.signer).from(owner).send().await?.get_receipt().await?;
        sent("setSigner", receipt)?;
    }
    let deposit = contract.getDeposit().call().await?;
    if deposit < funding.min_deposit {
        let receipt = contract
            .deposit()
            .value(funding.min_deposit - deposit)
            .from(owner)
            .send()
            .await?
            .get_receipt()
            .await?;
        sent("deposit", receipt)?;
    }
    let entry_point = v07::IEntryPoint::new(contract.entryPoint().call().await?, provider);
    let info = entry_point.getDepositInfo(paymaster).call().await?;
    if U256::from(info.stake) < funding.stake {
        let receipt = contract
            .addStake(funding.unstake_delay_sec)
            .value(funding.stake - U256::from(info.stake))
            .from(owner)
            .send()
            .await?
            .get_receipt()
            .await?;
        sent("addStake", receipt)?;
    }
    info!(%paymaster, signer = %funding.signer, "paymaster funded and staked");
    Ok(())
}

/// Deploys everything settled needs on a dev chain, sending from the provider's default signer
/// `from`, which also becomes the owner of `MockUSDC`. Returns the resulting [`Deployment`].
pub async fn deploy_all<P: Provider>(
    provider: &P,
    from: Address,
) -> Result<Deployment, DeployError> {
    let chain_id = provider.get_chain_id().await?;
    let start_block = provider.get_block_number().await?;
    deploy_missing(provider, from, plans(from)).await?;
    Ok(Deployment { start_block, ..expected_deployment(chain_id, from) })
}

/// Deploys the two canonical EntryPoints where they are missing: what every public chain has,
/// for dev chains and tests (`settled deploy` only checks them).
pub async fn deploy_entry_points<P: Provider>(
    provider: &P,
    from: Address,
) -> Result<(), DeployError> {
    deploy_missing(provider, from, plans(from).into_iter().take(2)).await
}

async fn deploy_missing<P: Provider>(
    provider: &P,
    from: Address,
    plans: impl IntoIterator<Item = Create2Plan>,
) -> Result<(), DeployError> {
    if provider.get_code_at(create2::DETERMINISTIC_DEPLOYER).await?.is_empty() {
        return Err(DeployError::NoDeterministicDeployer(create2::DETERMINISTIC_DEPLOYER));
    }
    for plan in plans {
        let expected = plan.address();
        if !provider.get_code_at(expected).await?.is_empty() {
            debug!(name = plan.name, %expected, "already deployed");
            continue;
        }
        let tx = TransactionRequest::default()
            .with_from(from)
            .with_to(create2::DETERMINISTIC_DEPLOYER)
            .with_input(create2::calldata(plan.salt, &plan.init_code));
        let receipt = provider.send_transaction(tx).await?.get_receipt().await?;
        let tx = receipt.transaction_hash;
        if !receipt.status() || provider.get_code_at(expected).await?.is_empty() {
            return Err(DeployError::Failed { name: plan.name, expected, tx });
        }
        info!(name = plan.name, address = %expected, gas = receipt.gas_used, "deployed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_entry_point_addresses() {
        let d = expected_deployment(1, Address::ZERO);
        assert_eq!(d.entry_point_v07, EntryPointVersion::V07.canonical_address());
        assert_eq!(d.entry_point_v08, EntryPointVersion::V08.canonical_address());
    }

    #[test]
    fn usdc_address_depends_on_owner_only() {
        let a = expected_deployment(1, Address::repeat_byte(1));
        let b = expected_deployment(2, Address::repeat_byte(2));
        assert_ne!(a.usdc, b.usdc);
        assert_eq!(a.simple_account_factory_v07, b.simple_account_factory_v07);
    }
}
