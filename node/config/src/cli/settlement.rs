//! `--settlement.*`: settlement periods, batches and commit fees.

use super::*;

/// Settlement periods, batches and commit fees.
#[derive(Debug, Clone, Args)]
pub struct SettlementArgs {
    /// Do not settle on a timer (batches are built and committed only when asked:
    /// `settlement_runNow`, served with `--rpc.admin`).
    #[arg(
        long = "settlement.disable",
        id = "settlement.disable",
        env = "SETTLED_SETTLEMENT_DISABLE"
    )]
    pub disable: bool,

    /// Seconds between settlement periods.
    #[arg(
        long = "settlement.interval-secs",
        id = "settlement.interval-secs",
        env = "SETTLED_SETTLEMENT_INTERVAL_SECS",
        default_value_t = 600
    )]
    pub interval_secs: u64,

    /// Streams per `withdrawBatch` transaction.
    #[arg(
        long = "settlement.withdraw-batch",
        id = "settlement.withdraw-batch",
        env = "SETTLED_SETTLEMENT_WITHDRAW_BATCH",
        default_value_t = 100
    )]
    pub withdraw_batch: usize,

    /// The highest blob base fee (wei) a commit pays; above it the batch waits for the next
    /// period.
    #[arg(
        long = "settlement.max-blob-fee-wei",
        id = "settlement.max-blob-fee-wei",
        env = "SETTLED_SETTLEMENT_MAX_BLOB_FEE_WEI",
        default_value_t = 50_000_000_000
    )]
    pub max_blob_fee_wei: u128,

    /// Seconds a settlement transaction may stay unmined before it is sent again at the same
    /// nonce with higher fees (blob fee included, within the bound).
    #[arg(
        long = "settlement.reprice-after-secs",
        id = "settlement.reprice-after-secs",
        env = "SETTLED_SETTLEMENT_REPRICE_AFTER_SECS",
        default_value_t = 60
    )]
    pub reprice_after_secs: u64,

    /// Endpoint of the chain settlement batches are anchored on (an L1 that takes blobs, when
    /// the streams live on an L2 that does not); default: the streams' chain.
    #[arg(
        long = "settlement.anchor-rpc-url",
        id = "settlement.anchor-rpc-url",
        env = "SETTLED_SETTLEMENT_ANCHOR_RPC_URL"
    )]
    pub anchor_rpc_url: Option<String>,

    /// The key commits are signed with on the anchor chain, hex (default: the operator key).
    #[arg(
        long = "settlement.anchor-key",
        id = "settlement.anchor-key",
        env = "SETTLED_SETTLEMENT_ANCHOR_KEY",
        hide_env_values = true
    )]
    pub anchor_key: Option<String>,

    /// File holding the anchor chain's key, hex.
    #[arg(
        long = "settlement.anchor-key-file",
        id = "settlement.anchor-key-file",
        env = "SETTLED_SETTLEMENT_ANCHOR_KEY_FILE"
    )]
    pub anchor_key_file: Option<PathBuf>,

    /// How batches reach the anchor: `blob` (EIP-4844; the chain must take type-3
    /// transactions) or `calldata` (any chain).
    #[arg(
        long = "settlement.anchor-mode",
        id = "settlement.anchor-mode",
        env = "SETTLED_SETTLEMENT_ANCHOR_MODE",
        default_value = "blob"
    )]
    pub anchor_mode: settled_settlement::AnchorMode,

    /// The ETH price in dollars (e.g. `3150.25`), to report settlement costs as a share of the
    /// amount settled (USD tokens of 6 decimals).
    #[arg(
        long = "settlement.eth-price-usd",
        id = "settlement.eth-price-usd",
        env = "SETTLED_SETTLEMENT_ETH_PRICE_USD",
        value_parser = parse_micro_usd
    )]
    pub eth_price_usd: Option<u128>,
}

/// A dollar amount with up to 6 decimals, in micro-dollars (exact: no float).
fn parse_micro_usd(s: &str) -> Result<u128, String> {
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    let (whole, fraction) = match s.split_once('.') {
        Some((whole, fraction)) if digits(fraction) => (whole, fraction),
        Some(_) => return Err(format!("{s:?} is not a dollar amount with at most 6 decimals")),
        None => (s, ""),
    };
    if !digits(whole) || fraction.len() > 6 {
        return Err(format!("{s:?} is not a dollar amount with at most 6 decimals"));
    }
    let padded = format!("{fraction:0<6}");
    let whole: u128 = whole.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let fraction: u128 = padded.parse().map_err(|e| format!("{s:?}: {e}"))?;
    whole.checked_mul(1_000_000).and_then(|w| w.checked_add(fraction)).ok_or("too large".into())
}

impl SettlementArgs {
    /// The settlement scheduler's settings.
    pub fn into_settings(self) -> settled_settlement::SettlementSettings {
        settled_settlement::SettlementSettings {
            enabled: !self.disable,
            interval: Duration::from_secs(self.interval_secs.max(1)),
            withdraw_batch: self.withdraw_batch.max(1),
            max_blob_fee_wei: self.max_blob_fee_wei,
            reprice_after: Duration::from_secs(self.reprice_after_secs.max(1)),
            eth_price_micro_usd: self.eth_price_usd,
        }
    }

    /// Where batches are anchored.
    pub fn anchor(&self) -> AnchorSettings {
        AnchorSettings {
            rpc_url: self.anchor_rpc_url.clone(),
            key: self.anchor_key.clone().map(SecretKey),
            key_file: self.anchor_key_file.clone(),
            mode: self.anchor_mode,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No flag: the configuration's own defaults.
    #[test]
    fn no_flags_give_the_defaults() -> Result<(), clap::Error> {
        let args = super::super::tests::Only::<SettlementArgs>::try_parse_from(["settled"])?;
        assert_eq!(args.group.anchor(), AnchorSettings::default());
        assert_eq!(args.group.into_settings(), settled_settlement::SettlementSettings::default());
        Ok(())
    }

    #[test]
    fn an_anchor_chain_and_an_eth_price() -> Result<(), clap::Error> {
        let args = [
            "settled",
            "--settlement.anchor-rpc-url",
            "http://l1:8545",
            "--settlement.anchor-mode",
            "calldata",
            "--settlement.eth-price-usd",
            "3150.25",
        ];
        let args = super::super::tests::Only::<SettlementArgs>::try_parse_from(args)?;
        let anchor = args.group.anchor();
        assert_eq!(anchor.rpc_url.as_deref(), Some("http://l1:8545"));
        assert_eq!(anchor.mode, settled_settlement::AnchorMode::Calldata);
        assert_eq!(args.group.into_settings().eth_price_micro_usd, Some(3_150_250_000));
        Ok(())
    }

    #[test]
    fn dollar_amounts_are_exact() {
        assert_eq!(parse_micro_usd("3000"), Ok(3_000_000_000));
        assert_eq!(parse_micro_usd("0.000001"), Ok(1));
        for bad in ["", "1.", "1.0000001", "-3", "3e3", "1,5"] {
            assert!(parse_micro_usd(bad).is_err(), "{bad}");
        }
    }
}
