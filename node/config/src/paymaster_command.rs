//! `settled paymaster ...`: the operator's one-shot commands on the paymaster contracts.

use std::path::PathBuf;

use alloy::primitives::{Address, U256};
use settled_contracts::EntryPointVersion;

use crate::SecretKey;

/// What a `settled paymaster` command does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymasterAction {
    /// Print each paymaster's deposit, stake and signer.
    Status,
    /// Add `amount` wei to `version`'s paymaster deposit, paid by the key's account.
    Deposit {
        /// Which paymaster.
        version: EntryPointVersion,
        /// Wei.
        amount: U256,
        /// Paying key.
        key: Option<SecretKey>,
        /// Paying key, from a file.
        key_file: Option<PathBuf>,
    },
    /// Withdraw `amount` wei of `version`'s paymaster deposit to `to` (owner only).
    Withdraw {
        /// Which paymaster.
        version: EntryPointVersion,
        /// Wei.
        amount: U256,
        /// Recipient (default: the owner).
        to: Option<Address>,
        /// Owner key.
        key: Option<SecretKey>,
        /// Owner key, from a file.
        key_file: Option<PathBuf>,
    },
}

/// A `settled paymaster` command with its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymasterCommandConfig {
    /// Ethereum JSON-RPC endpoint.
    pub rpc_url: String,
    /// Deployment file.
    pub deployment: PathBuf,
    /// What to do.
    pub action: PaymasterAction,
}
