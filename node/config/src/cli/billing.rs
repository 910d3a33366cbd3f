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

    /// A token's ISO 4217 currency and decimals, `0xTOKEN=EUR:6` (repeatable; the
    /// deployment's USDC is USD:6 unless set).
    #[arg(
        long = "billing.token-currency",
        id = "billing.token-currency",
        env = "SETTLED_BILLING_TOKEN_CURRENCY",
        value_delimiter = ',',
        value_parser = parse_token_currency
    )]
    pub token_currency: Vec<TokenCurrencyArg>,

    /// The seller's legal name on invoice documents (UBL/Peppol, cXML).
    #[arg(
        long = "billing.seller-name",
        id = "billing.seller-name",
        env = "SETTLED_BILLING_SELLER_NAME",
        requires_all = ["billing.seller-country", "billing.seller-endpoint"]
    )]
    pub seller_name: Option<String>,

    /// The seller's country, ISO 3166-1 alpha-2 (e.g. `DE`).
    #[arg(
        long = "billing.seller-country",
        id = "billing.seller-country",
        env = "SETTLED_BILLING_SELLER_COUNTRY",
        requires = "billing.seller-name",
        value_parser = parse_country
    )]
    pub seller_country: Option<String>,

    /// The seller's Peppol electronic address, `SCHEME:ID` (e.g. `0088:7300010000001`); its ID is
    /// also the cXML network identity.
    #[arg(
        long = "billing.seller-endpoint",
        id = "billing.seller-endpoint",
        env = "SETTLED_BILLING_SELLER_ENDPOINT",
        requires = "billing.seller-name",
        value_parser = parse_endpoint
    )]
    pub seller_endpoint: Option<EndpointArg>,

    /// The seller's VAT identifier with its country prefix (needed for taxed invoices).
    #[arg(
        long = "billing.seller-vat-id",
        id = "billing.seller-vat-id",
        env = "SETTLED_BILLING_SELLER_VAT_ID",
        requires = "billing.seller-name"
    )]
    pub seller_vat_id: Option<String>,
}

/// `0xTOKEN=CODE:DECIMALS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCurrencyArg(alloy::primitives::Address, settled_settlement::TokenCurrency);

fn parse_token_currency(s: &str) -> Result<TokenCurrencyArg, String> {
    let (token, currency) = s.split_once('=').ok_or("expected 0xTOKEN=CODE:DECIMALS")?;
    let token = token.trim().parse().map_err(|e| format!("token {token:?}: {e}"))?;
    let (code, decimals) =
        currency.trim().split_once(':').ok_or("expected 0xTOKEN=CODE:DECIMALS")?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!("{code:?} is not an ISO 4217 code"));
    }
    let decimals: u8 = decimals
        .parse()
        .ok()
        .filter(|d| *d <= 36)
        .ok_or(format!("{decimals:?} is not a token's decimals (0..=36)"))?;
    Ok(TokenCurrencyArg(token, settled_settlement::TokenCurrency { code: code.into(), decimals }))
}

/// A Peppol electronic address, `SCHEME:ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointArg {
    scheme: String,
    id: String,
}

fn parse_endpoint(s: &str) -> Result<EndpointArg, String> {
    let (scheme, id) = s.split_once(':').ok_or("expected SCHEME:ID (e.g. 0088:7300010000001)")?;
    if scheme.is_empty() || scheme.len() > 4 || !scheme.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!("{scheme:?} is not a Peppol EAS code"));
    }
    if id.trim().is_empty() {
        return Err("the endpoint id is empty".into());
    }
    Ok(EndpointArg { scheme: scheme.into(), id: id.into() })
}

fn parse_country(s: &str) -> Result<String, String> {
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(s.into())
    } else {
        Err(format!("{s:?} is not an ISO 3166-1 alpha-2 code"))
    }
}

impl BillingArgs {
    /// The billing API's settings (keys from the file are read at start).
    pub fn into_settings(self) -> BillingSettings {
        // clap requires the name, country and endpoint together.
        let seller = match (self.seller_name, self.seller_country, self.seller_endpoint) {
            (Some(name), Some(country), Some(endpoint)) => Some(settled_settlement::Party {
                name,
                country,
                endpoint_scheme: endpoint.scheme,
                endpoint_id: endpoint.id,
                vat_id: self.seller_vat_id,
            }),
            _ => None,
        };
        BillingSettings {
            api_keys_file: self.api_keys_file,
            api_keys: Vec::new(),
            operator_key: self.operator_key.map(SecretKey),
            operator_key_file: self.operator_key_file,
            alerts: settled_streams::AlertThresholds { low_balance_secs: self.low_balance_secs },
            public_url: self.public_url,
            currencies: self
                .token_currency
                .into_iter()
                .map(|TokenCurrencyArg(t, c)| (t, c))
                .collect(),
            seller,
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

    /// Token currencies carry decimals; the seller's flags go together.
    #[test]
    fn currencies_and_the_seller_parse() -> Result<(), Box<dyn std::error::Error>> {
        let token = "0x00000000000000000000000000000000000000aa";
        let args = super::super::tests::Only::<BillingArgs>::try_parse_from([
            "settled".to_string(),
            format!("--billing.token-currency={token}=EUR:6"),
            "--billing.seller-name=Vendor GmbH".into(),
            "--billing.seller-country=DE".into(),
            "--billing.seller-endpoint=0088:7300010000001".into(),
        ])?;
        let settings = args.group.into_settings();
        assert_eq!(settings.currencies[0].1.code, "EUR");
        assert_eq!(settings.currencies[0].1.decimals, 6);
        let seller = settings.seller.ok_or("no seller")?;
        assert_eq!(
            (seller.endpoint_scheme.as_str(), seller.endpoint_id.as_str()),
            ("0088", "7300010000001")
        );
        for bad in [
            format!("--billing.token-currency={token}=EUR"),
            format!("--billing.token-currency={token}=eur:6"),
        ] {
            assert!(
                super::super::tests::Only::<BillingArgs>::try_parse_from([
                    "settled".to_string(),
                    bad
                ])
                .is_err()
            );
        }
        let half = super::super::tests::Only::<BillingArgs>::try_parse_from([
            "settled",
            "--billing.seller-name=V",
        ]);
        assert!(half.is_err(), "a name without country and endpoint");
        Ok(())
    }
}
