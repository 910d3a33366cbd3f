//! `--bundler.*`: the ERC-4337 bundler (its mempool parameters are `--mempool.*`).

use super::*;

/// The ERC-4337 bundler (its mempool parameters are `--mempool.*`).
#[derive(Debug, Clone, Args)]
pub struct BundlerArgs {
    /// Do not run the ERC-4337 bundler.
    #[arg(long = "bundler.disable", id = "bundler.disable", env = "SETTLED_BUNDLER_DISABLE")]
    pub disable: bool,

    /// The bundler's signing key, hex (prefer the environment or a key file to a flag).
    #[arg(
        long = "bundler.key",
        id = "bundler.key",
        env = "SETTLED_BUNDLER_KEY",
        hide_env_values = true
    )]
    pub key: Option<String>,

    /// File holding the bundler's signing key, hex.
    #[arg(long = "bundler.key-file", id = "bundler.key-file", env = "SETTLED_BUNDLER_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Address receiving the bundles' fees (default: the bundler's own).
    #[arg(
        long = "bundler.beneficiary",
        id = "bundler.beneficiary",
        env = "SETTLED_BUNDLER_BENEFICIARY"
    )]
    pub beneficiary: Option<alloy::primitives::Address>,

    /// `auto`: a bundle after each block with ops pending; `manual`: only on
    /// `debug_bundler_sendBundleNow`.
    #[arg(long = "bundler.mode", id = "bundler.mode", env = "SETTLED_BUNDLER_MODE", default_value = "auto", value_parser = parse_mode)]
    pub mode: settled_bundler::BundlingMode,

    /// In auto mode, milliseconds between bundle attempts (besides one per new block).
    #[arg(
        long = "bundler.interval-ms",
        id = "bundler.interval-ms",
        env = "SETTLED_BUNDLER_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub interval_ms: u64,

    /// Sum of the ops' gas limits one bundle may hold.
    #[arg(
        long = "bundler.max-bundle-gas",
        id = "bundler.max-bundle-gas",
        env = "SETTLED_BUNDLER_MAX_BUNDLE_GAS",
        default_value_t = 10_000_000
    )]
    pub max_bundle_gas: u64,

    /// OP stack: percent added to the L1 data fee an estimated preVerificationGas carries.
    #[arg(
        long = "bundler.l1-fee-margin-percent",
        id = "bundler.l1-fee-margin-percent",
        env = "SETTLED_BUNDLER_L1_FEE_MARGIN_PERCENT",
        default_value_t = 3
    )]
    pub l1_fee_margin_percent: u64,

    /// OP stack: how far below its L1 data fee (percent) an op's preVerificationGas may fall
    /// before the op is refused (bundler and paymaster).
    #[arg(
        long = "bundler.l1-fee-tolerance-percent",
        id = "bundler.l1-fee-tolerance-percent",
        env = "SETTLED_BUNDLER_L1_FEE_TOLERANCE_PERCENT",
        default_value_t = 10
    )]
    pub l1_fee_tolerance_percent: u64,

    /// Ops per bundle.
    #[arg(
        long = "bundler.max-bundle-ops",
        id = "bundler.max-bundle-ops",
        env = "SETTLED_BUNDLER_MAX_BUNDLE_OPS",
        default_value_t = 64
    )]
    pub max_bundle_ops: usize,

    /// A bundle not mined after this many blocks is resent with fees raised by at least 10%.
    #[arg(
        long = "bundler.fee-bump-blocks",
        id = "bundler.fee-bump-blocks",
        env = "SETTLED_BUNDLER_FEE_BUMP_BLOCKS",
        default_value_t = 3
    )]
    pub fee_bump_blocks: u64,

    /// The highest maxFeePerGas (wei) a bundle is sent or re-priced at; fee bumps stop there.
    #[arg(
        long = "bundler.max-fee-wei", id = "bundler.max-fee-wei",
        env = "SETTLED_BUNDLER_MAX_FEE_WEI",
        default_value_t = settled_bundler::DEFAULT_MAX_FEE_PER_GAS
    )]
    pub max_fee_wei: u128,

    /// Entities (sender, factory, paymaster addresses) always in good standing, whatever their
    /// ERC-7562 reputation; comma-separated.
    #[arg(
        long = "bundler.allowlist",
        id = "bundler.allowlist",
        env = "SETTLED_BUNDLER_ALLOWLIST",
        value_delimiter = ','
    )]
    pub allowlist: Vec<alloy::primitives::Address>,

    /// Entities always banned from the mempool; comma-separated.
    #[arg(
        long = "bundler.blocklist",
        id = "bundler.blocklist",
        env = "SETTLED_BUNDLER_BLOCKLIST",
        value_delimiter = ','
    )]
    pub blocklist: Vec<alloy::primitives::Address>,

    /// EntryPoints served, the preferred first (0.7, 0.8).
    #[arg(long = "bundler.entry-points", id = "bundler.entry-points", env = "SETTLED_BUNDLER_ENTRY_POINTS", value_delimiter = ',', default_values = ["0.8", "0.7"], value_parser = parse_version)]
    pub entry_points: Vec<settled_contracts::EntryPointVersion>,
}

impl BundlerArgs {
    /// The bundler's settings, with the mempool's `params`.
    pub fn into_settings(self, params: settled_bundler::MempoolParams) -> BundlerSettings {
        BundlerSettings {
            enabled: !self.disable,
            key: self.key.map(SecretKey),
            key_file: self.key_file,
            beneficiary: self.beneficiary,
            mode: self.mode,
            interval: Duration::from_millis(self.interval_ms.max(10)),
            max_bundle_gas: self.max_bundle_gas,
            max_bundle_ops: self.max_bundle_ops.max(1),
            fee_bump_after_blocks: self.fee_bump_blocks.max(1),
            max_fee_per_gas: self.max_fee_wei,
            reputation: settled_bundler::ReputationLists {
                allowlist: self.allowlist.into_iter().collect(),
                blocklist: self.blocklist.into_iter().collect(),
            },
            entry_points: dedup(self.entry_points),
            params,
            l1_fee_margin_percent: self.l1_fee_margin_percent,
            l1_fee_tolerance_percent: self.l1_fee_tolerance_percent,
        }
    }
}

/// `list` without repeats, first occurrence kept (the first is the preferred one).
fn dedup<T: PartialEq>(list: Vec<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn parse_mode(value: &str) -> Result<settled_bundler::BundlingMode, String> {
    match value {
        "auto" => Ok(settled_bundler::BundlingMode::Auto),
        "manual" => Ok(settled_bundler::BundlingMode::Manual),
        other => Err(format!("`{other}` is not a bundling mode (auto, manual)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No flag: the configuration's own defaults.
    #[test]
    fn no_flags_give_the_defaults() -> Result<(), clap::Error> {
        let args = super::super::tests::Only::<BundlerArgs>::try_parse_from(["settled"])?;
        assert_eq!(args.group.into_settings(Default::default()), BundlerSettings::default());
        Ok(())
    }
}
