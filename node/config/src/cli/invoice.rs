//! `settled invoice`: a payer's invoice document from a running node's billing API.

use super::*;

/// `settled invoice`.
#[derive(Debug, Args)]
pub struct InvoiceArgs {
    /// The settled node's JSON-RPC endpoint.
    #[arg(long = "node-url", env = "SETTLED_NODE_URL", default_value_t = format!("http://127.0.0.1:{}", crate::DEFAULT_RPC_PORT))]
    pub node_url: String,
    /// A billing API key's bearer token (prefer the environment to a flag).
    #[arg(long = "api-key", env = "SETTLED_BILLING_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Who pays.
    #[arg(long)]
    pub payer: alloy::primitives::Address,
    /// Batches whose period ends after this second are included.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// ... and at or before this one (default: all).
    #[arg(long, default_value_t = u64::MAX)]
    pub to: u64,
    /// `ubl` (Peppol BIS Billing 3.0), `cxml`, `csv` or `json`.
    #[arg(long, default_value = "ubl", value_parser = ["ubl", "cxml", "csv", "json"])]
    pub format: String,
    /// Write the document here (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What `settled invoice` asks the node for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceCommandConfig {
    /// The node's endpoint.
    pub node_url: String,
    /// The bearer token.
    pub api_key: String,
    /// Who pays.
    pub payer: alloy::primitives::Address,
    /// The window `(from, to]`.
    pub from: u64,
    /// See `from`.
    pub to: u64,
    /// `ubl`, `cxml`, `csv` or `json`.
    pub format: String,
    /// Where the document goes (none: standard output).
    pub out: Option<PathBuf>,
}

impl InvoiceArgs {
    /// The command's configuration.
    pub fn into_config(self) -> InvoiceCommandConfig {
        InvoiceCommandConfig {
            node_url: self.node_url,
            api_key: self.api_key,
            payer: self.payer,
            from: self.from,
            to: self.to,
            format: self.format,
            out: self.out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_carries_the_period_and_format() -> Result<(), clap::Error> {
        let payer = "0x00000000000000000000000000000000000000aa";
        let args = super::super::tests::Only::<InvoiceArgs>::try_parse_from([
            "settled",
            "--api-key",
            "t",
            "--payer",
            payer,
            "--to",
            "99",
            "--format",
            "cxml",
        ])?;
        let config = args.group.into_config();
        assert_eq!((config.format.as_str(), config.from, config.to), ("cxml", 0, 99));
        let bad = super::super::tests::Only::<InvoiceArgs>::try_parse_from([
            "settled",
            "--api-key",
            "t",
            "--payer",
            payer,
            "--format",
            "pdf",
        ]);
        assert!(bad.is_err());
        Ok(())
    }
}
