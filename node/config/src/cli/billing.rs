//! `--billing.*`: the billing API (keys, the operator key, alerts).

use super::*;

/// The billing API (keys, the operator key, alerts).
#[derive(Debug, Clone, Args)]
pub struct BillingArgs {
    /// TOML file of billing API keys (`[[keys]]`: name, keccak256 of the token, payees or
    /// `all = true`) for the `stream_*` JSON-RPC.
    #[arg(
        long = "billing.api-keys-file",
        id = "billing.api-keys-file",
        env = "SETTLED_BILLING_API_KEYS_FILE"
    )]
    pub api_keys_file: Option<PathBuf>,

    /// The key the node signs stream operator transactions with, hex (prefer the environment
    /// or a key file to a flag).
    #[arg(
        long = "billing.operator-key",
        id = "billing.operator-key",
        env = "SETTLED_BILLING_OPERATOR_KEY",
        hide_env_values = true
    )]
    pub operator_key: Option<String>,

    /// File holding the stream operator's key, hex.
    #[arg(
        long = "billing.operator-key-file",
        id = "billing.operator-key-file",
        env = "SETTLED_BILLING_OPERATOR_KEY_FILE"
    )]
    pub operator_key_file: Option<PathBuf>,

    /// Alert `lowBalance` when a stream will run out within this many seconds.
    #[arg(
        long = "billing.low-balance-secs",
        id = "billing.low-balance-secs",
        env = "SETTLED_BILLING_LOW_BALANCE_SECS",
        default_value_t = 3_600
    )]
    pub low_balance_secs: u64,

    /// The node's URL as customers reach it (a proxy's, e.g. `https://billing.example.com`), for
    /// customer page links (default: `http://` and the JSON-RPC address).
    #[arg(
        long = "billing.public-url",
        id = "billing.public-url",
        env = "SETTLED_BILLING_PUBLIC_URL"
    )]
    pub public_url: Option<String>,

    /// A token's ISO 4217 currency, `0xTOKEN=USD` (repeatable; the deployment's USDC is USD
    /// unless set).
    #[arg(
        long = "billing.token-currency",
        id = "billing.token-currency",
        env = "SETTLED_BILLING_TOKEN_CURRENCY",
        value_delimiter = ',',
        value_parser = parse_token_currency
    )]
    pub token_currency: Vec<(alloy::primitives::Address, String)>,
}

fn parse_token_currency(s: &str) -> Result<(alloy::primitives::Address, String), String> {
    let (token, code) = s.split_once('=').ok_or("expected 0xTOKEN=CODE")?;
    let token = token.trim().parse().map_err(|e| format!("token {token:?}: {e}"))?;
    let code = code.trim();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!("{code:?} is not an ISO 4217 code"));
    }
    Ok((token, code.to_string()))
}

impl BillingArgs {
    /// The billing API's settings (keys from the file are read at start).
    pub fn into_settings(self) -> BillingSettings {
        BillingSettings {
            api_keys_file: self.api_keys_file,
            api_keys: Vec::new(),
            operator_key: self.operator_key.map(SecretKey),
            operator_key_file: self.operator_key_file,
            alerts: settled_streams::AlertThresholds { low_balance_secs: self.low_balance_secs },
            public_url: self.public_url,
            currencies: self.token_currency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No flag: the configuration's own defaults.
    #[test]
    fn no_flags_give_the_defaults() -> Result<(), clap::Error> {
        let args = super::super::tests::Only::<BillingArgs>::try_parse_from(["settled"])?;
        assert_eq!(args.group.into_settings(), BillingSettings::default());
        Ok(())
    }
}
