//! ERC-7562's per-chain mempool parameters, in one place. The defaults are the spec's values
//! (mainnet); a chain or a test profile (the bundler-spec-tests suite stakes for 2 seconds and
//! sends 1,000,000 `verificationGasLimit`) sets its own through the node's `--mempool.*` flags.

use alloy::primitives::U256;
use settled_sim::{PRE_VERIFICATION_OVERHEAD_GAS, ValidationRules};

/// ERC-7562 `SAME_SENDER_MEMPOOL_COUNT`.
pub const SAME_SENDER_MEMPOOL_COUNT: usize = 4;
/// ERC-7562 `SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT`.
pub const SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT: usize = 10;
/// A replacement must raise both fees by this percentage (ERC-4337).
pub const REPLACEMENT_FEE_BUMP_PERCENT: u128 = 10;
/// ERC-7562 `MIN_INCLUSION_RATE_DENOMINATOR`.
pub const MIN_INCLUSION_RATE_DENOMINATOR: u64 = 10;
/// ERC-7562 `THROTTLING_SLACK`.
pub const THROTTLING_SLACK: u64 = 10;
/// ERC-7562 `BAN_SLACK`.
pub const BAN_SLACK: u64 = 50;
/// ERC-7562 `THROTTLED_ENTITY_MEMPOOL_COUNT` (GREP-020).
pub const THROTTLED_ENTITY_MEMPOOL_COUNT: usize = 4;
/// ERC-4337 `MAX_VERIFICATION_GAS`.
pub const MAX_VERIFICATION_GAS: u64 = 500_000;

/// The mempool parameters a chain's bundlers agree on (ERC-7562 "Mempool parameters").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MempoolParams {
    /// `MIN_STAKE_VALUE` in wei.
    pub min_stake: U256,
    /// `MIN_UNSTAKE_DELAY` in seconds.
    pub min_unstake_delay: u64,
    /// `MAX_VERIFICATION_GAS`: the most `verificationGasLimit` (and
    /// `paymasterVerificationGasLimit`) an op may ask for.
    pub max_verification_gas: u64,
    /// Per-op gas `preVerificationGas` must cover beyond the op's calldata.
    pub pre_verification_overhead_gas: u64,
    /// `SAME_SENDER_MEMPOOL_COUNT`: pending ops of one unstaked sender.
    pub same_sender_mempool_count: usize,
    /// `SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT`: pending ops using one unstaked factory or paymaster.
    pub same_unstaked_entity_mempool_count: usize,
    /// `THROTTLED_ENTITY_MEMPOOL_COUNT`: pending ops using one throttled entity.
    pub throttled_entity_mempool_count: usize,
    /// `MIN_INCLUSION_RATE_DENOMINATOR`.
    pub min_inclusion_rate_denominator: u64,
    /// `THROTTLING_SLACK`.
    pub throttling_slack: u64,
    /// `BAN_SLACK`.
    pub ban_slack: u64,
    /// A replacement raises both fees by at least this percentage.
    pub replacement_fee_bump_percent: u128,
}

impl Default for MempoolParams {
    fn default() -> Self {
        let rules = ValidationRules::default();
        Self {
            min_stake: rules.min_stake,
            min_unstake_delay: rules.min_unstake_delay,
            max_verification_gas: MAX_VERIFICATION_GAS,
            pre_verification_overhead_gas: PRE_VERIFICATION_OVERHEAD_GAS,
            same_sender_mempool_count: SAME_SENDER_MEMPOOL_COUNT,
            same_unstaked_entity_mempool_count: SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT,
            throttled_entity_mempool_count: THROTTLED_ENTITY_MEMPOOL_COUNT,
            min_inclusion_rate_denominator: MIN_INCLUSION_RATE_DENOMINATOR,
            throttling_slack: THROTTLING_SLACK,
            ban_slack: BAN_SLACK,
            replacement_fee_bump_percent: REPLACEMENT_FEE_BUMP_PERCENT,
        }
    }
}

impl MempoolParams {
    /// The staking thresholds the simulator judges entities by.
    pub fn rules(&self) -> ValidationRules {
        ValidationRules { min_stake: self.min_stake, min_unstake_delay: self.min_unstake_delay }
    }

    /// Whether `stake` wei locked for `delay` seconds makes an entity staked.
    pub fn is_staked(&self, stake: U256, delay: U256) -> bool {
        self.rules().is_staked(stake, delay)
    }

    /// `old` raised by the replacement bump, rounded up (a fee of 1 must become at least 2).
    pub fn bumped(&self, old: U256) -> U256 {
        old + (old * U256::from(self.replacement_fee_bump_percent)).div_ceil(U256::from(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults are mainnet's: a 1,000,000 `verificationGasLimit` is over the limit and a 2 s
    /// unstake delay is not a stake.
    #[test]
    fn defaults_are_the_specs() {
        let params = MempoolParams::default();
        assert_eq!(params.max_verification_gas, 500_000);
        assert!(1_000_000 > params.max_verification_gas);
        assert_eq!(params.min_unstake_delay, 86_400);
        let one_eth = U256::from(10u128.pow(18));
        assert!(!params.is_staked(one_eth, U256::from(2)));
        assert!(params.is_staked(one_eth, U256::from(86_400)));
        assert_eq!(params.pre_verification_overhead_gas, 50_000);
        assert_eq!(params.bumped(U256::from(1)), U256::from(2));
        assert_eq!(params.bumped(U256::from(100)), U256::from(110));
    }
}
