//! Why the bundler refused or could not handle a UserOperation. The RPC edge
//! ([`crate::rpc`]) maps each to its ERC-7769 code; nothing else knows the codes.

use alloy::primitives::{Address, U256};
use settled_sim::{RuleViolation, SimError};

use settled_contracts::InvalidUserOperation;

/// Everything `eth_sendUserOperation` / `eth_estimateUserOperationGas` can answer instead of a
/// result.
#[derive(Debug, thiserror::Error)]
pub enum BundlerError {
    /// Malformed fields (-32602).
    #[error(transparent)]
    InvalidOp(#[from] InvalidUserOperation),
    /// A well-formed op the bundler will not take as is (-32602): gas limits, fees, sizes.
    #[error("{0}")]
    InvalidField(String),
    /// The EntryPoint is not one this node serves (-32602).
    #[error("unsupported EntryPoint {0}")]
    UnsupportedEntryPoint(Address),
    /// The EntryPoint rejected the op in validation (-32500; AA3x: -32501; AA31: -32508).
    #[error("{reason}")]
    EntryPointRejected {
        /// `AAxx …`.
        reason: String,
        /// The paymaster, for AA3x.
        paymaster: Option<Address>,
    },
    /// ERC-7562 rules broken (-32502).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    RuleViolations(Vec<RuleViolation>),
    /// Expired or not yet valid (-32503).
    #[error("UserOperation out of time range: valid from {valid_after} until {valid_until}")]
    OutOfTimeRange {
        /// validAfter.
        valid_after: u64,
        /// validUntil.
        valid_until: u64,
        /// The paymaster, when its range is the one out of bounds.
        paymaster: Option<Address>,
    },
    /// An entity is throttled or banned (-32504).
    #[error("{entity} {address} is {status} by reputation")]
    Reputation {
        /// `paymaster`, `factory`, `account`.
        entity: &'static str,
        /// Its address.
        address: Address,
        /// `throttled` or `banned`.
        status: &'static str,
    },
    /// An entity needs a stake it does not have (-32505): an unstaked sender, factory or
    /// paymaster at its mempool limit (UREP-010, UREP-020).
    #[error(
        "{reason}: stake {entity} {address} (at least {minimum_stake} wei, unstake delay {minimum_unstake_delay} s) to send more"
    )]
    StakeTooLow {
        /// What the missing stake would allow.
        reason: String,
        /// `paymaster`, `factory`, `sender`.
        entity: &'static str,
        /// Its address.
        address: Address,
        /// MIN_STAKE_VALUE.
        minimum_stake: U256,
        /// MIN_UNSTAKE_DELAY.
        minimum_unstake_delay: u64,
    },
    /// The account's signature did not verify (-32507).
    #[error("invalid UserOperation signature")]
    InvalidSignature,
    /// The paymaster's deposit cannot cover its pending ops (-32508).
    #[error("paymaster {0} deposit too low for its pending UserOperations")]
    PaymasterDepositTooLow(Address),
    /// The op's execution (or postOp) reverted (-32521).
    #[error("execution reverted: {}", revert_reason(.reason))]
    ExecutionReverted {
        /// The revert data.
        reason: alloy::primitives::Bytes,
    },
    /// Mempool rules (replacement, limits, duplicates: -32602; STO-040: -32502).
    #[error(transparent)]
    Mempool(#[from] crate::pool::PoolError),
    /// The node itself failed (state reads, storage) (-32603).
    #[error("internal error: {0}")]
    Internal(String),
    /// Only the bundler key's leader may do this, and this node does not lead it (-32603).
    #[error("not leading the bundler key: {0}")]
    NotLeading(String),
    /// The leader's answer to an op this node handed it: the leader's code, message and data,
    /// answered as they are.
    #[error("{message}")]
    Relayed {
        /// The leader's ERC-7769 code.
        code: i32,
        /// Its message.
        message: String,
        /// Its data.
        data: Option<serde_json::Value>,
    },
}

/// `data` as a person reads it: an `Error(string)`'s message, a `Panic`'s code, else the hex.
pub(crate) fn revert_reason(data: &[u8]) -> String {
    use alloy::sol_types::{Revert, SolError};
    if let Ok(revert) = Revert::abi_decode(data) {
        return revert.reason().to_owned();
    }
    alloy::sol_types::decode_revert_reason(data)
        .unwrap_or_else(|| alloy::primitives::hex::encode_prefixed(data))
}

impl BundlerError {
    /// The bundler's verdict on a mempool refusal: the limits of unstaked entities are a stake
    /// too low (-32505, with the stake that lifts them), the rest invalid input.
    pub fn from_pool(error: crate::pool::PoolError, params: &crate::MempoolParams) -> Self {
        use crate::pool::PoolError as P;
        let (entity, address) = match &error {
            P::SenderLimit { sender, .. } => ("sender", *sender),
            P::EntityLimit { entity, address, .. } => (*entity, *address),
            _ => return Self::Mempool(error),
        };
        Self::StakeTooLow {
            reason: error.to_string(),
            entity,
            address,
            minimum_stake: params.min_stake,
            minimum_unstake_delay: params.min_unstake_delay,
        }
    }

    /// The bundler's verdict on a simulation failure of the op whose paymaster is `paymaster`.
    pub fn from_sim(error: SimError, paymaster: Option<Address>) -> Self {
        // `FailedOpWithRevert`: the entity's own revert reason belongs in the message.
        let error = match error {
            SimError::Rejected { reason, inner: Some(inner) } => SimError::Rejected {
                reason: format!("{reason}: {}", revert_reason(&inner)),
                inner: None,
            },
            other => other,
        };
        match error {
            SimError::Rejected { reason, .. } if reason.starts_with("AA24") => {
                Self::InvalidSignature
            }
            SimError::Rejected { reason, .. }
                if reason.starts_with("AA22") || reason.starts_with("AA32") =>
            {
                Self::OutOfTimeRange {
                    valid_after: 0,
                    valid_until: 0,
                    paymaster: if reason.starts_with("AA32") { paymaster } else { None },
                }
            }
            SimError::Rejected { reason, .. } if reason.starts_with("AA31") => paymaster
                .map_or(Self::EntryPointRejected { reason, paymaster }, |p| {
                    Self::PaymasterDepositTooLow(p)
                }),
            SimError::Rejected { reason, .. } => Self::EntryPointRejected {
                paymaster: if reason.starts_with("AA3") { paymaster } else { None },
                reason,
            },
            SimError::RuleViolations(violations) => Self::RuleViolations(violations),
            SimError::ExecutionReverted { reason } | SimError::PostOpReverted { reason } => {
                Self::ExecutionReverted { reason }
            }
            SimError::InvalidOp(message)
            | SimError::InvalidOverride(message)
            | SimError::InvalidAuthorization(message) => Self::InvalidField(message),
            SimError::NoEntryPoint(address) => Self::UnsupportedEntryPoint(address),
            SimError::Timeout(limit) => Self::EntryPointRejected {
                reason: format!("validation exceeded the simulation time limit of {limit:?}"),
                paymaster: None,
            },
            SimError::Reverted(data) => Self::EntryPointRejected {
                reason: format!("simulation reverted: {data}"),
                paymaster: None,
            },
            SimError::Halted(reason) => Self::EntryPointRejected {
                reason: format!("simulation halted: {reason}"),
                paymaster: None,
            },
            SimError::Evm(message) => Self::Internal(message),
            SimError::Fork(error) => Self::Internal(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::sol_types::{Revert, SolError};

    /// AA23 with the account's own reason (`FailedOpWithRevert`): the message carries it.
    #[test]
    fn inner_revert_reasons_are_kept() {
        let inner = Revert::from("testWallet: dead signature").abi_encode();
        let error = BundlerError::from_sim(
            SimError::Rejected { reason: "AA23 reverted".into(), inner: Some(inner.into()) },
            None,
        );
        assert_eq!(error.to_string(), "AA23 reverted: testWallet: dead signature");
        let reverted = BundlerError::ExecutionReverted {
            reason: Revert::from("test revert").abi_encode().into(),
        };
        assert_eq!(reverted.to_string(), "execution reverted: test revert");
    }
}
