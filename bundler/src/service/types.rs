//! The bundler's answers: stake status, mined ops, gas prices, op lookups and receipts.

use super::*;

/// `debug_bundler_getStakeStatus`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StakeStatus {
    /// The entity's stake.
    pub stake_info: StakeInfo,
    /// Whether it meets the staking thresholds.
    pub is_staked: bool,
}

/// An entity's stake at the EntryPoint. Stake and delay are decimal strings, as the reference
/// bundler answers (a wei amount does not fit a JSON number's 2^53).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StakeInfo {
    /// The entity.
    pub addr: Address,
    /// Wei staked.
    #[serde(serialize_with = "decimal")]
    pub stake: U256,
    /// Unstake delay in seconds.
    #[serde(serialize_with = "decimal")]
    pub unstake_delay_sec: U256,
}

fn decimal<S: serde::Serializer>(value: &U256, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&value.to_string())
}

/// A mined op as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MinedOp {
    /// `userOpHash`.
    pub hash: B256,
    /// The EntryPoint.
    pub entry_point: Address,
    /// The op, when it went through this bundler.
    pub op: Option<UserOperation>,
    /// `UserOperationEvent` fields.
    pub sender: Address,
    /// The op's nonce.
    pub nonce: U256,
    /// The paymaster (zero: none).
    pub paymaster: Address,
    /// What it paid.
    pub actual_gas_cost: U256,
    /// Gas it was charged for.
    pub actual_gas_used: U256,
    /// Whether its call succeeded.
    pub success: bool,
    /// Where it was mined.
    pub block_number: u64,
    /// Where it was mined.
    pub block_hash: B256,
    /// The bundle.
    pub transaction_hash: B256,
    /// Index of its `UserOperationEvent` in the block.
    pub log_index: u64,
}

impl MinedOp {
    /// The pool entry this op becomes again when a reorg removes its block: only an op this
    /// bundler carried (its full op is known), judged again before bundling.
    pub fn requeued(&self) -> Option<PoolEntry> {
        Some(PoolEntry {
            hash: self.hash,
            entry_point: EntryPointVersion::from_address(self.entry_point)?,
            op: self.op.clone()?,
            staked: StakedEntities::default(),
            code_hashes: Default::default(),
            valid_until: u64::MAX,
            accepted_at_block: self.block_number,
        })
    }
}

/// One fee level of `settled_getUserOperationGasPrice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GasPrice {
    /// `maxFeePerGas` for the op.
    pub max_fee_per_gas: U256,
    /// `maxPriorityFeePerGas` for the op.
    pub max_priority_fee_per_gas: U256,
}

/// `settled_getUserOperationGasPrice`'s answer: fees that get an op into the next bundles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GasPrices {
    /// The node's suggested priority fee.
    pub slow: GasPrice,
    /// A quarter above it.
    pub standard: GasPrice,
    /// Half above it.
    pub fast: GasPrice,
}

/// `eth_getUserOperationByHash`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserOperationByHash {
    /// The op.
    pub user_operation: UserOperation,
    /// Its EntryPoint.
    pub entry_point: ChecksummedAddress,
    /// Block, when mined.
    pub block_number: Option<U256>,
    /// Block, when mined.
    pub block_hash: Option<B256>,
    /// Bundle, when mined.
    pub transaction_hash: Option<B256>,
}

/// `eth_getUserOperationReceipt`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserOperationReceipt {
    /// The request hash.
    pub user_op_hash: B256,
    /// The EntryPoint.
    pub entry_point: ChecksummedAddress,
    /// The sender.
    pub sender: Address,
    /// The nonce.
    pub nonce: U256,
    /// The paymaster (zero address: none).
    pub paymaster: Address,
    /// What it paid.
    pub actual_gas_cost: U256,
    /// Gas it was charged for.
    pub actual_gas_used: U256,
    /// Whether the call succeeded.
    pub success: bool,
    /// The revert data, when it failed with some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Bytes>,
    /// The op's own logs.
    pub logs: Vec<Log>,
    /// The bundle's receipt.
    pub receipt: TransactionReceipt,
}
