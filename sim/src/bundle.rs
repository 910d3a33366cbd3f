//! A whole bundle — the `handleOps` transaction the bundler is about to send — run in revm over
//! forked state, with the EntryPoint's real code: the last check before a bundle goes out, and
//! the gas the transaction needs.

use alloy::{
    eips::eip7702::SignedAuthorization,
    primitives::{Address, Bytes, TxKind},
    sol_types::{SolCall, SolInterface},
};
use revm::{
    DatabaseRef, ExecuteEvm, MainBuilder, context::TxEnv,
    context_interface::result::ExecutionResult, database::CacheDB,
};
use settled_contracts::{EntryPointVersion, PackedUserOperation, v07};

use crate::{
    error::SimError,
    evm::{Overlay, sim_context},
    fork::BlockState,
    overrides::SimOverrides,
    validation::{BlockContext, Simulator},
};

/// What a bundle's `handleOps` did in revm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleOutcome {
    /// The transaction succeeds.
    Included {
        /// Gas consumed before refunds: what the transaction's gas limit must cover.
        gas_spent: u64,
        /// Gas charged (after refunds).
        gas_used: u64,
        /// What the beneficiary receives from the ops (wei), at the block's base fee.
        earned: u128,
    },
    /// The EntryPoint rejected one op (`FailedOp`/`FailedOpWithRevert`): drop it and try the rest.
    OpFailed {
        /// The op's position in the bundle.
        index: usize,
        /// The EntryPoint's `AAxx` reason.
        reason: String,
    },
    /// The transaction reverted (or halted) for another reason.
    Reverted(Bytes),
}

/// A bundle to run: `ops` for `version`'s EntryPoint, sent by `bundler` paying `beneficiary`,
/// with the EIP-7702 authorizations of its v0.8 ops as `(sender, authorization)`.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The EntryPoint the ops are for.
    pub version: EntryPointVersion,
    /// The ops, in bundle order.
    pub ops: Vec<PackedUserOperation>,
    /// Who the EntryPoint pays the ops' gas to.
    pub beneficiary: Address,
    /// The transaction's sender.
    pub bundler: Address,
    /// `(sender, authorization)` of each op with an EIP-7702 authorization.
    pub authorizations: Vec<(Address, SignedAuthorization)>,
}

impl Bundle {
    /// The `handleOps(ops, beneficiary)` calldata (the same selector and layout in both versions).
    pub fn calldata(&self) -> Bytes {
        v07::IEntryPoint::handleOpsCall { ops: self.ops.clone(), beneficiary: self.beneficiary }
            .abi_encode()
            .into()
    }
}

impl Simulator {
    /// Runs `bundle` as one transaction against `state` at the next block's timestamp. Blocking.
    pub fn simulate_bundle(
        &self,
        state: &BlockState,
        block: &BlockContext,
        bundle: &Bundle,
    ) -> Result<BundleOutcome, SimError> {
        let entry_point = bundle.version.canonical_address();
        if state.basic_ref(entry_point)?.is_none_or(|info| info.is_empty_code_hash()) {
            return Err(SimError::NoEntryPoint(entry_point));
        }
        let mut db: Overlay<'_> = CacheDB::new(state);
        for (sender, authorization) in &bundle.authorizations {
            SimOverrides::with_authorization(authorization.clone()).apply(
                &mut db,
                block.chain_id,
                entry_point,
                *sender,
            )?;
        }
        let gas_limit = block.gas_limit.max(self.limits.gas_cap);
        let before = state.basic_ref(bundle.beneficiary)?.map(|a| a.balance).unwrap_or_default();
        // The real base fee, so the EntryPoint charges each op what it will (its price is
        // `min(maxFee, basefee + tip)`); the bundler's own transaction pays 0 here.
        let mut evm = sim_context(db, &block.next(), gas_limit)
            .modify_block_chained(|env| env.basefee = block.base_fee)
            .modify_cfg_chained(|cfg| cfg.disable_base_fee = true)
            .build_mainnet();
        let tx = TxEnv::builder()
            .caller(bundle.bundler)
            .kind(TxKind::Call(entry_point))
            .data(bundle.calldata())
            .gas_limit(gas_limit)
            .gas_price(0)
            .chain_id(Some(block.chain_id))
            .build_fill();
        let result = evm.transact(tx).map_err(|e| SimError::Evm(e.to_string()))?;
        Ok(match result.result {
            ExecutionResult::Success { gas, .. } => {
                let after =
                    result.state.get(&bundle.beneficiary).map_or(before, |a| a.info.balance);
                let earned = after.saturating_sub(before);
                BundleOutcome::Included {
                    gas_spent: gas.total_gas_spent().max(gas.floor_gas()),
                    gas_used: gas.tx_gas_used(),
                    earned: u128::try_from(earned).unwrap_or(u128::MAX),
                }
            }
            ExecutionResult::Revert { output, .. } => decode_failed_op(&output),
            ExecutionResult::Halt { reason, .. } => {
                BundleOutcome::Reverted(Bytes::from(format!("{reason:?}").into_bytes()))
            }
        })
    }
}

/// `FailedOp`/`FailedOpWithRevert` (declared alike in both versions) with the op's index.
fn decode_failed_op(output: &Bytes) -> BundleOutcome {
    use v07::IEntryPoint::IEntryPointErrors as E;
    match E::abi_decode(output) {
        Ok(E::FailedOp(e)) => {
            BundleOutcome::OpFailed { index: e.opIndex.saturating_to(), reason: e.reason }
        }
        Ok(E::FailedOpWithRevert(e)) => {
            BundleOutcome::OpFailed { index: e.opIndex.saturating_to(), reason: e.reason }
        }
        _ => BundleOutcome::Reverted(output.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::{primitives::U256, sol_types::SolError};

    #[test]
    fn failed_op_reverts_name_the_op() {
        let failed = v07::IEntryPoint::FailedOp {
            opIndex: U256::from(3),
            reason: "AA25 invalid account nonce".into(),
        };
        assert_eq!(
            decode_failed_op(&failed.abi_encode().into()),
            BundleOutcome::OpFailed { index: 3, reason: "AA25 invalid account nonce".into() }
        );
        let other = Bytes::from_static(&[0xde, 0xad]);
        assert_eq!(decode_failed_op(&other), BundleOutcome::Reverted(other.clone()));
    }
}
