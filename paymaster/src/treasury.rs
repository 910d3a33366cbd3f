//! The paymaster's money at its EntryPoints, for operators: each paymaster's deposit, stake,
//! signer and owner, and the deposit and withdraw transactions.

use alloy::{
    primitives::{Address, B256, U256},
    providers::Provider,
};
use serde::{Deserialize, Serialize};
use settled_contracts::{EntryPointVersion, SponsorPaymaster, v07};

use crate::service::PaymasterAccount;

/// A treasury operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TreasuryError {
    /// A call or transaction could not be made.
    #[error(transparent)]
    Contract(#[from] alloy::contract::Error),
    /// The transaction was sent but its receipt could not be had.
    #[error(transparent)]
    Pending(#[from] alloy::providers::PendingTransactionError),
    /// The transaction reverted.
    #[error("transaction {0} reverted (is the sender the paymaster's owner, with enough ETH?)")]
    Reverted(B256),
    /// The paymaster contract refuses the call, with its decoded error (nothing was sent).
    #[error("the paymaster refuses: {0}")]
    Refused(String),
}

/// A refusal the node reported at estimation, as the paymaster's own error when it is one
/// (`OwnableUnauthorizedAccount { account: 0x… }` rather than `custom error 0x118cdaa7`).
fn refusal(error: alloy::transports::TransportError) -> TreasuryError {
    let decoded = error
        .as_error_resp()
        .and_then(|payload| {
            payload.as_decoded_interface_error::<SponsorPaymaster::SponsorPaymasterErrors>()
        })
        .map(|decoded| match decoded {
            SponsorPaymaster::SponsorPaymasterErrors::OwnableUnauthorizedAccount(e) => {
                format!(
                    "OwnableUnauthorizedAccount({}): only the paymaster's owner may do this",
                    e.account
                )
            }
            other => format!("{other:?}"),
        });
    match decoded {
        Some(reason) => TreasuryError::Refused(reason),
        None => TreasuryError::Contract(error.into()),
    }
}

/// One paymaster as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymasterReport {
    /// Deposit and stake.
    #[serde(flatten)]
    pub account: PaymasterAccount,
    /// The signer the contract accepts.
    pub signer: Address,
    /// The contract's owner.
    pub owner: Address,
}

/// The deposit and stake of each paymaster at its EntryPoint.
pub async fn paymaster_accounts<P: Provider>(
    provider: &P,
    paymasters: &[(EntryPointVersion, Address)],
) -> Result<Vec<PaymasterAccount>, alloy::contract::Error> {
    let mut accounts = Vec::with_capacity(paymasters.len());
    for (version, paymaster) in paymasters {
        let entry_point = version.canonical_address();
        let info =
            v07::IEntryPoint::new(entry_point, provider).getDepositInfo(*paymaster).call().await?;
        accounts.push(PaymasterAccount {
            entry_point,
            paymaster: *paymaster,
            deposit: info.deposit,
            staked: info.staked,
            stake: U256::from(info.stake),
            unstake_delay_sec: info.unstakeDelaySec,
            withdraw_time: info.withdrawTime.to::<u64>(),
        })
    }
    Ok(accounts)
}

/// Deposit, stake, signer and owner of each paymaster.
pub async fn paymaster_reports<P: Provider>(
    provider: &P,
    paymasters: &[(EntryPointVersion, Address)],
) -> Result<Vec<PaymasterReport>, TreasuryError> {
    let mut reports = Vec::with_capacity(paymasters.len());
    for account in paymaster_accounts(provider, paymasters).await? {
        let contract = SponsorPaymaster::new(account.paymaster, provider);
        let signer = contract.signer().call().await?;
        let owner = contract.owner().call().await?;
        reports.push(PaymasterReport { account, signer, owner });
    }
    Ok(reports)
}

async fn confirm<P: Provider>(
    provider: &P,
    tx: alloy::rpc::types::TransactionRequest,
) -> Result<B256, TreasuryError> {
    let receipt = provider.send_transaction(tx).await.map_err(refusal)?.get_receipt().await?;
    if receipt.status() {
        Ok(receipt.transaction_hash)
    } else {
        Err(TreasuryError::Reverted(receipt.transaction_hash))
    }
}

/// Adds `amount` wei to `paymaster`'s deposit, paid by `provider`'s signer.
pub async fn deposit<P: Provider>(
    provider: &P,
    paymaster: Address,
    amount: U256,
) -> Result<B256, TreasuryError> {
    let tx = SponsorPaymaster::new(paymaster, provider)
        .deposit()
        .value(amount)
        .into_transaction_request();
    confirm(provider, tx).await
}

/// Withdraws `amount` wei of `paymaster`'s deposit to `to` (`provider`'s signer must own it).
pub async fn withdraw<P: Provider>(
    provider: &P,
    paymaster: Address,
    to: Address,
    amount: U256,
) -> Result<B256, TreasuryError> {
    let tx = SponsorPaymaster::new(paymaster, provider)
        .withdrawTo(to, amount)
        .into_transaction_request();
    confirm(provider, tx).await
}
