//! The L1 data fee on an OP-stack chain: every transaction pays, besides its gas, a fee for the
//! L1 data its bytes take, priced by the `GasPriceOracle` predeploy. A bundle pays it for all its
//! ops, so each op's `preVerificationGas` must carry its share, converted to gas at the op's own
//! price. The share priced is the op's bundle of one — `handleOps([op])` as an unsigned
//! transaction — which covers the op alone and overstates its share of a larger bundle slightly
//! (the transaction's own bytes are counted for each op).
//!
//! The oracle runs in revm over the same forked state as every simulation, so the fee is the
//! block's, and no node call beyond plain state reads is needed.

use alloy::{
    consensus::{SignableTransaction, TxEip1559},
    primitives::{Address, Bytes, TxKind, U256, keccak256},
    sol_types::SolCall,
};
use revm::{
    ExecuteEvm, MainBuilder, context::TxEnv, context_interface::result::ExecutionResult,
    database::CacheDB,
};
use settled_contracts::{
    ChainKind, EntryPointVersion, GasPriceOracle, OP_GAS_PRICE_ORACLE, PackedUserOperation, v07,
};

use crate::{
    error::SimError,
    estimate::pre_verification_gas,
    evm::{Overlay, sim_context},
    fork::BlockState,
    validation::{BlockContext, Simulator},
};

/// Gas the oracle call may use (FastLZ over a few kB stays far below).
const ORACLE_GAS: u64 = 5_000_000;

/// What an op's `preVerificationGas` must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequiredPreVerification {
    /// The op's calldata cost and per-op overhead (and an EIP-7702 authorization's cost).
    pub calldata_gas: u64,
    /// The L1 data fee of the op's bundle of one (wei; 0 off OP stack).
    pub l1_fee_wei: u128,
    /// The price per gas the fee is converted at (the op's).
    pub gas_price: u128,
    /// `l1_fee_wei` in gas at `gas_price`, rounded up.
    pub l1_gas: u64,
}

impl RequiredPreVerification {
    /// The whole requirement.
    pub fn total(&self) -> u64 {
        self.calldata_gas.saturating_add(self.l1_gas)
    }

    /// The requirement with the L1 part reduced by `tolerance_percent` (fees drift between an
    /// estimate and its op's arrival): below this an op is refused.
    pub fn with_tolerance(&self, tolerance_percent: u64) -> u64 {
        let kept = u128::from(self.l1_gas) * u128::from(100u64.saturating_sub(tolerance_percent));
        let l1_gas = u64::try_from(kept.div_ceil(100)).unwrap_or(u64::MAX);
        self.calldata_gas.saturating_add(l1_gas)
    }
}

/// `fee_wei` in gas at `gas_price`, rounded up (a price of 0 counts as 1 wei).
pub fn l1_fee_gas(fee_wei: u128, gas_price: u128) -> u64 {
    u64::try_from(fee_wei.div_ceil(gas_price.max(1))).unwrap_or(u64::MAX)
}

/// What `op` pays per gas in a block of `base_fee`: `min(maxFeePerGas, base fee +
/// maxPriorityFeePerGas)`, as the EntryPoint charges. An op with no fees (an estimate before
/// the wallet priced it) is priced at the base fee, at least 1 wei: the lowest price, so the
/// most gas.
pub fn op_gas_price(op: &PackedUserOperation, base_fee: u64) -> u128 {
    let base = u128::from(base_fee);
    let price = op.max_fee_per_gas().min(base.saturating_add(op.max_priority_fee_per_gas()));
    if op.max_fee_per_gas() == 0 { base.max(1) } else { price.max(1) }
}

/// The bytes an op's L1 fee is charged on: the unsigned EIP-1559 transaction of `handleOps([op],
/// beneficiary)` to `entry_point` (wide nonce, gas and fee fields: the most bytes they take).
pub fn op_transaction_bytes(
    op: &PackedUserOperation,
    entry_point: Address,
    chain_id: u64,
) -> Vec<u8> {
    let input = v07::IEntryPoint::handleOpsCall {
        ops: vec![op.clone()],
        beneficiary: Address::repeat_byte(0xbe),
    }
    .abi_encode();
    transaction_bytes(entry_point, input.into(), chain_id)
}

/// The unsigned EIP-1559 transaction calling `to` with `input` (wide nonce, gas and fee fields:
/// the most bytes they take), as the L1 fee prices it.
pub fn transaction_bytes(to: Address, input: Bytes, chain_id: u64) -> Vec<u8> {
    let tx = TxEip1559 {
        chain_id,
        nonce: u64::from(u32::MAX),
        gas_limit: 30_000_000,
        max_fee_per_gas: u128::from(u64::MAX),
        max_priority_fee_per_gas: u128::from(u64::MAX),
        to: TxKind::Call(to),
        value: U256::ZERO,
        access_list: Default::default(),
        input,
    };
    let mut out = Vec::new();
    tx.encode_for_signing(&mut out);
    out
}

/// `op` with its signature replaced by incompressible bytes of the same length: an estimate
/// is made with a stub signature (often a repeated byte, which compresses to almost nothing),
/// and the real one, random to a compressor, must not cost more L1 data.
pub fn with_incompressible_signature(op: &PackedUserOperation) -> PackedUserOperation {
    let mut priced = op.clone();
    let mut bytes = Vec::with_capacity(op.signature.len() + 32);
    let mut seed = keccak256(op.sender);
    while bytes.len() < op.signature.len() {
        seed = keccak256(seed);
        bytes.extend_from_slice(seed.as_slice());
    }
    bytes.truncate(op.signature.len());
    priced.signature = Bytes::from(bytes);
    priced
}

impl Simulator {
    /// The same simulator on a chain of `kind` (OP stack: preVerificationGas covers the L1 fee).
    pub fn with_chain(mut self, kind: ChainKind) -> Self {
        self.chain = kind;
        self
    }

    /// The chain's kind.
    pub fn chain_kind(&self) -> ChainKind {
        self.chain
    }

    /// The L1 data fee (wei) of a transaction whose unsigned encoding is `tx`, at `state`; 0
    /// unless the chain is OP stack. Blocking.
    pub fn l1_data_fee(
        &self,
        state: &BlockState,
        block: &BlockContext,
        tx: &[u8],
    ) -> Result<u128, SimError> {
        if !self.chain.has_l1_data_fee() {
            return Ok(0);
        }
        let db: Overlay<'_> = CacheDB::new(state);
        let mut evm = sim_context(db, block, ORACLE_GAS.max(block.gas_limit)).build_mainnet();
        let call = GasPriceOracle::getL1FeeCall { data: tx.to_vec().into() };
        let request = TxEnv::builder()
            .caller(Address::ZERO)
            .kind(TxKind::Call(OP_GAS_PRICE_ORACLE))
            .data(call.abi_encode().into())
            .gas_limit(ORACLE_GAS)
            .gas_price(0)
            .chain_id(Some(block.chain_id))
            .build_fill();
        let result = evm.transact(request).map_err(|e| SimError::Evm(e.to_string()))?;
        let output = match result.result {
            ExecutionResult::Success { output, .. } => output.into_data(),
            other => {
                return Err(SimError::Evm(format!("GasPriceOracle.getL1Fee failed: {other:?}")));
            }
        };
        let fee = GasPriceOracle::getL1FeeCall::abi_decode_returns(&output)
            .map_err(|e| SimError::Evm(format!("GasPriceOracle.getL1Fee answer: {e}")))?;
        Ok(u128::try_from(fee).unwrap_or(u128::MAX))
    }

    /// What `op`'s `preVerificationGas` must hold at `state` (see [`RequiredPreVerification`]),
    /// `overhead` being the chain's per-op overhead. Blocking.
    pub fn required_pre_verification(
        &self,
        state: &BlockState,
        block: &BlockContext,
        version: EntryPointVersion,
        op: &PackedUserOperation,
        has_authorization: bool,
        overhead: u64,
    ) -> Result<RequiredPreVerification, SimError> {
        let calldata_gas = pre_verification_gas(op, has_authorization, overhead);
        let gas_price = op_gas_price(op, block.base_fee);
        if !self.chain.has_l1_data_fee() {
            return Ok(RequiredPreVerification { calldata_gas, gas_price, ..Default::default() });
        }
        let tx = op_transaction_bytes(op, version.canonical_address(), block.chain_id);
        let l1_fee_wei = self.l1_data_fee(state, block, &tx)?;
        let l1_gas = l1_fee_gas(l1_fee_wei, gas_price);
        Ok(RequiredPreVerification { calldata_gas, l1_fee_wei, gas_price, l1_gas })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op() -> PackedUserOperation {
        PackedUserOperation {
            sender: Address::repeat_byte(1),
            nonce: U256::ZERO,
            initCode: Bytes::new(),
            callData: Bytes::new(),
            accountGasLimits: Default::default(),
            preVerificationGas: U256::ZERO,
            gasFees: Default::default(),
            paymasterAndData: Bytes::new(),
            signature: Bytes::new(),
        }
    }

    #[test]
    fn fee_gas_rounds_up() {
        assert_eq!(l1_fee_gas(0, 7), 0);
        assert_eq!(l1_fee_gas(7, 7), 1);
        assert_eq!(l1_fee_gas(8, 7), 2);
        assert_eq!(l1_fee_gas(5, 0), 5, "a zero price counts as 1 wei");
        assert_eq!(l1_fee_gas(u128::MAX, 1), u64::MAX);
    }

    #[test]
    fn an_op_pays_the_lower_of_its_cap_and_base_plus_tip() {
        let mut op = op();
        op.set_fees(2, 100);
        assert_eq!(op_gas_price(&op, 50), 52);
        assert_eq!(op_gas_price(&op, 99), 100);
        op.set_fees(0, 0);
        assert_eq!(op_gas_price(&op, 30), 30, "unpriced: the base fee");
        assert_eq!(op_gas_price(&op, 0), 1);
    }

    #[test]
    fn tolerance_lowers_only_the_l1_part() {
        let required =
            RequiredPreVerification { calldata_gas: 50_000, l1_gas: 1_000, ..Default::default() };
        assert_eq!(required.total(), 51_000);
        assert_eq!(required.with_tolerance(10), 50_900);
        assert_eq!(required.with_tolerance(0), 51_000);
        assert_eq!(required.with_tolerance(200), 50_000);
    }

    #[test]
    fn the_priced_signature_is_incompressible_and_the_same_length() {
        let mut op = op();
        op.signature = Bytes::from(vec![0xff; 65]);
        let priced = with_incompressible_signature(&op);
        assert_eq!(priced.signature.len(), 65);
        let distinct: std::collections::HashSet<u8> = priced.signature.iter().copied().collect();
        assert!(distinct.len() > 40, "random-looking bytes");
        assert_eq!(op_transaction_bytes(&op, Address::ZERO, 1)[0], 0x02, "an EIP-1559 payload");
    }
}
