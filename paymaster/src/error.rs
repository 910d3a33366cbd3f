//! What can go wrong in the paymaster; mapped to JSON-RPC codes in `rpc.rs` only.

use alloy::primitives::{Address, U256};
use settled_contracts::InvalidUserOperation;
use settled_sim::SimError;

use crate::{ledger::LedgerError, policy::Rejection};

/// A paymaster request that could not be served.
#[derive(Debug, thiserror::Error)]
pub enum PaymasterError {
    /// The op's fields are malformed.
    #[error(transparent)]
    InvalidOp(#[from] InvalidUserOperation),
    /// A parameter other than the op is malformed.
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// The request names another chain.
    #[error("unsupported chain {requested}: this paymaster serves chain {served}")]
    UnsupportedChain {
        /// The chain id in the request.
        requested: u64,
        /// The chain this node serves.
        served: u64,
    },
    /// No paymaster of ours serves this EntryPoint.
    #[error("unsupported EntryPoint {0}")]
    UnsupportedEntryPoint(Address),
    /// The `context` does not name a policy and no default policy is configured.
    #[error(
        "context must name a policy: {{\"policyId\": \"...\"}} (optionally \"customer\"); this node has no default policy"
    )]
    MissingContext,
    /// No such policy.
    #[error("unknown policy {0:?}")]
    UnknownPolicy(String),
    /// A policy rule refused the op.
    #[error("sponsorship refused by policy {policy:?}: {rejection}")]
    Rejected {
        /// The policy.
        policy: String,
        /// The rule and why.
        rejection: Rejection,
    },
    /// The denial-of-wallet guard: the op failed simulation with our signature.
    #[error("sponsorship refused: the op fails simulation: {0}")]
    Simulation(SimError),
    /// The op's execution reverts in simulation.
    #[error("sponsorship refused: the op's execution reverts ({reason})")]
    ExecutionReverts {
        /// The revert data, hex.
        reason: String,
    },
    /// OP stack: the op's preVerificationGas cannot pay its L1 data fee, so the worst case the
    /// paymaster reserves would leave the fee out (and bundlers refuse the op).
    #[error(
        "preVerificationGas {pre_verification_gas} cannot pay the op's L1 data fee of {l1_fee_wei} wei: at least {needed} needed; estimate the op's gas (eth_estimateUserOperationGas) before asking for paymaster data"
    )]
    L1FeeNotCovered {
        /// The op's.
        pre_verification_gas: U256,
        /// What it must be at least.
        needed: u64,
        /// The L1 data fee of the op's share of a bundle.
        l1_fee_wei: u128,
    },
    /// Our deposit at the EntryPoint cannot cover the op's worst case (`AA31`).
    #[error("paymaster {paymaster} deposit cannot cover this op's worst case of {needed} wei")]
    DepositTooLow {
        /// The paymaster.
        paymaster: Address,
        /// The op's worst-case cost.
        needed: U256,
    },
    /// The chain could not be read to simulate the op (an outage of the node's RPC endpoint):
    /// the op is not to blame, and nothing was reserved.
    #[error("the chain cannot be read right now, try again: {0}")]
    ChainUnavailable(String),
    /// The ledger's store failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Anything else the node could not do (RPC, signing).
    #[error("internal error: {0}")]
    Internal(String),
}

impl PaymasterError {
    /// The policy rule behind a refusal (metrics label), if it was one.
    pub fn rule(&self) -> Option<&'static str> {
        match self {
            Self::Rejected { rejection, .. } => Some(rejection.rule.as_str()),
            Self::Simulation(_) | Self::ExecutionReverts { .. } => Some("simulation"),
            Self::DepositTooLow { .. } => Some("deposit"),
            _ => None,
        }
    }
}
