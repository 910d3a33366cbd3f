//! `--mempool.*`: ERC-7562's per-chain mempool parameters. The defaults are the spec's
//! (mainnet); a chain or a test profile sets its own (`scripts/spec-tests.toml` is the
//! compatibility suite's).

use alloy::primitives::U256;
use clap::Args;
use settled_bundler::MempoolParams;

/// The mempool parameters, each with the spec's value as its default.
#[derive(Debug, Clone, Args)]
pub struct MempoolArgs {
    /// MIN_STAKE_VALUE: wei an entity must stake to count as staked.
    #[arg(long = "mempool.min-stake-wei", env = "SETTLED_MEMPOOL_MIN_STAKE_WEI", default_value_t = MempoolParams::default().min_stake)]
    pub min_stake_wei: U256,

    /// MIN_UNSTAKE_DELAY: seconds a stake must be locked to count.
    #[arg(long = "mempool.min-unstake-delay-secs", env = "SETTLED_MEMPOOL_MIN_UNSTAKE_DELAY_SECS", default_value_t = MempoolParams::default().min_unstake_delay)]
    pub min_unstake_delay_secs: u64,

    /// MAX_VERIFICATION_GAS: the most verificationGasLimit (and paymasterVerificationGasLimit)
    /// an op may ask for.
    #[arg(long = "mempool.max-verification-gas", env = "SETTLED_MEMPOOL_MAX_VERIFICATION_GAS", default_value_t = MempoolParams::default().max_verification_gas)]
    pub max_verification_gas: u64,

    /// Per-op gas preVerificationGas must cover beyond the op's calldata.
    #[arg(long = "mempool.pre-verification-overhead-gas", env = "SETTLED_MEMPOOL_PRE_VERIFICATION_OVERHEAD_GAS", default_value_t = MempoolParams::default().pre_verification_overhead_gas)]
    pub pre_verification_overhead_gas: u64,

    /// SAME_SENDER_MEMPOOL_COUNT: pending ops of one unstaked sender.
    #[arg(long = "mempool.same-sender-count", env = "SETTLED_MEMPOOL_SAME_SENDER_COUNT", default_value_t = MempoolParams::default().same_sender_mempool_count)]
    pub same_sender_count: usize,

    /// SAME_UNSTAKED_ENTITY_MEMPOOL_COUNT: pending ops using one unstaked factory or paymaster.
    #[arg(long = "mempool.same-unstaked-entity-count", env = "SETTLED_MEMPOOL_SAME_UNSTAKED_ENTITY_COUNT", default_value_t = MempoolParams::default().same_unstaked_entity_mempool_count)]
    pub same_unstaked_entity_count: usize,

    /// THROTTLED_ENTITY_MEMPOOL_COUNT: pending ops using one throttled entity.
    #[arg(long = "mempool.throttled-entity-count", env = "SETTLED_MEMPOOL_THROTTLED_ENTITY_COUNT", default_value_t = MempoolParams::default().throttled_entity_mempool_count)]
    pub throttled_entity_count: usize,

    /// MIN_INCLUSION_RATE_DENOMINATOR of the reputation formula.
    #[arg(long = "mempool.min-inclusion-rate-denominator", env = "SETTLED_MEMPOOL_MIN_INCLUSION_RATE_DENOMINATOR", default_value_t = MempoolParams::default().min_inclusion_rate_denominator, value_parser = clap::value_parser!(u64).range(1..))]
    pub min_inclusion_rate_denominator: u64,

    /// THROTTLING_SLACK of the reputation formula.
    #[arg(long = "mempool.throttling-slack", env = "SETTLED_MEMPOOL_THROTTLING_SLACK", default_value_t = MempoolParams::default().throttling_slack)]
    pub throttling_slack: u64,

    /// BAN_SLACK of the reputation formula.
    #[arg(long = "mempool.ban-slack", env = "SETTLED_MEMPOOL_BAN_SLACK", default_value_t = MempoolParams::default().ban_slack)]
    pub ban_slack: u64,

    /// Percent a replacement op must raise both fees by.
    #[arg(long = "mempool.replacement-fee-bump-percent", env = "SETTLED_MEMPOOL_REPLACEMENT_FEE_BUMP_PERCENT", default_value_t = MempoolParams::default().replacement_fee_bump_percent)]
    pub replacement_fee_bump_percent: u128,
}

impl MempoolArgs {
    /// The bundler's (and the paymaster's) mempool parameters.
    pub fn into_params(self) -> MempoolParams {
        MempoolParams {
            min_stake: self.min_stake_wei,
            min_unstake_delay: self.min_unstake_delay_secs,
            max_verification_gas: self.max_verification_gas,
            pre_verification_overhead_gas: self.pre_verification_overhead_gas,
            same_sender_mempool_count: self.same_sender_count,
            same_unstaked_entity_mempool_count: self.same_unstaked_entity_count,
            throttled_entity_mempool_count: self.throttled_entity_count,
            min_inclusion_rate_denominator: self.min_inclusion_rate_denominator,
            throttling_slack: self.throttling_slack,
            ban_slack: self.ban_slack,
            replacement_fee_bump_percent: self.replacement_fee_bump_percent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Only {
        #[command(flatten)]
        mempool: MempoolArgs,
    }

    /// No flag: the spec's parameters, so a mainnet node refuses what the suite's profile allows.
    #[test]
    fn defaults_are_the_specs() {
        let params = Only::parse_from(["settled"]).mempool.into_params();
        assert_eq!(params, MempoolParams::default());
        assert_eq!(params.max_verification_gas, 500_000);
        assert_eq!(params.min_unstake_delay, 86_400);
    }

    #[test]
    fn flags_set_each_parameter() {
        let params = Only::parse_from([
            "settled",
            "--mempool.min-unstake-delay-secs",
            "2",
            "--mempool.max-verification-gas",
            "5000000",
            "--mempool.min-stake-wei",
            "1",
            "--mempool.ban-slack",
            "7",
        ])
        .mempool
        .into_params();
        assert_eq!(params.min_unstake_delay, 2);
        assert_eq!(params.max_verification_gas, 5_000_000);
        assert_eq!(params.min_stake, U256::from(1));
        assert_eq!(params.ban_slack, 7);
        assert_eq!(params.same_sender_mempool_count, 4, "the rest stay the spec's");
        assert!(
            Only::try_parse_from(["s", "--mempool.min-inclusion-rate-denominator", "0"]).is_err()
        );
    }
}
