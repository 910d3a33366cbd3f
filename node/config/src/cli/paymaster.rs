//! `--paymaster.*`: the sponsoring paymaster (key, policies, budget).

use super::*;

/// The sponsoring paymaster (key, policies, budget).
#[derive(Debug, Clone, Args)]
pub struct PaymasterArgs {
    /// Do not run the paymaster.
    #[arg(long = "paymaster.disable", id = "paymaster.disable", env = "SETTLED_PAYMASTER_DISABLE")]
    pub disable: bool,

    /// The paymaster's signing key, hex (prefer the environment or a key file to a flag).
    #[arg(
        long = "paymaster.key",
        id = "paymaster.key",
        env = "SETTLED_PAYMASTER_KEY",
        hide_env_values = true
    )]
    pub key: Option<String>,

    /// File holding the paymaster's signing key, hex.
    #[arg(
        long = "paymaster.key-file",
        id = "paymaster.key-file",
        env = "SETTLED_PAYMASTER_KEY_FILE"
    )]
    pub key_file: Option<PathBuf>,

    /// TOML file of sponsorship policies (`[[policies]]` tables).
    #[arg(
        long = "paymaster.policies-file",
        id = "paymaster.policies-file",
        env = "SETTLED_PAYMASTER_POLICIES_FILE"
    )]
    pub policies_file: Option<PathBuf>,

    /// Seconds a sponsorship signature stays valid.
    #[arg(long = "paymaster.validity-secs", id = "paymaster.validity-secs", env = "SETTLED_PAYMASTER_VALIDITY_SECS", default_value_t = PaymasterSettings::default().validity_secs)]
    pub validity_secs: u64,

    /// Wei the paymaster sponsors per day across all policies (default: no global budget).
    #[arg(
        long = "paymaster.daily-budget-wei",
        id = "paymaster.daily-budget-wei",
        env = "SETTLED_PAYMASTER_DAILY_BUDGET_WEI"
    )]
    pub daily_budget_wei: Option<alloy::primitives::U256>,

    /// Warn when a paymaster deposit falls below this many wei.
    #[arg(long = "paymaster.low-deposit-wei", id = "paymaster.low-deposit-wei", env = "SETTLED_PAYMASTER_LOW_DEPOSIT_WEI", default_value_t = PaymasterSettings::default().low_deposit_wei)]
    pub low_deposit_wei: alloy::primitives::U256,

    /// The policy a `pm_*` request without `context.policyId` is judged by (`settled dev`:
    /// `default`; elsewhere none, and such a request is refused).
    #[arg(
        long = "paymaster.default-policy",
        id = "paymaster.default-policy",
        env = "SETTLED_PAYMASTER_DEFAULT_POLICY"
    )]
    pub default_policy: Option<String>,
}

impl PaymasterArgs {
    /// The paymaster's settings (policies from the file are read at start).
    pub fn into_settings(self) -> PaymasterSettings {
        PaymasterSettings {
            enabled: !self.disable,
            key: self.key.map(SecretKey),
            key_file: self.key_file,
            policies_file: self.policies_file,
            policies: Vec::new(),
            validity_secs: self.validity_secs.max(1),
            daily_budget_wei: self.daily_budget_wei,
            low_deposit_wei: self.low_deposit_wei,
            default_policy: self.default_policy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No flag: the configuration's own defaults.
    #[test]
    fn no_flags_give_the_defaults() -> Result<(), clap::Error> {
        let args = super::super::tests::Only::<PaymasterArgs>::try_parse_from(["settled"])?;
        assert_eq!(args.group.into_settings(), PaymasterSettings::default());
        Ok(())
    }
}
