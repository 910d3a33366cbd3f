//! `settled deploy`: settled's contracts onto a network, dry run by default.

use super::*;

/// `settled deploy`.
#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    /// Ethereum JSON-RPC endpoint of the chain.
    #[arg(long = "eth.rpc-url", visible_alias = "rpc-url", env = "SETTLED_ETH_RPC_URL")]
    pub rpc_url: String,
    /// The deploying key, hex (prefer the environment or a key file to a flag).
    #[arg(long = "key", env = "SETTLED_DEPLOY_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// File holding the deploying key, hex.
    #[arg(long = "key-file", env = "SETTLED_DEPLOY_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Owner of the paymasters (default: the deployer).
    #[arg(long = "owner")]
    pub owner: Option<alloy::primitives::Address>,
    /// The network's USDC (default: deploy `MockUSDC`, as on a dev chain).
    #[arg(long = "usdc")]
    pub usdc: Option<alloy::primitives::Address>,
    /// `all`, or `settlement-anchor` (a chain that only anchors settlement batches).
    #[arg(long = "only", default_value = "all", value_parser = parse_scope)]
    pub only: DeployScope,
    /// Send the transactions (without it: print the plan, send nothing).
    #[arg(long = "send")]
    pub send: bool,
    /// Where the deployment file is written after `--send` (scope `all`).
    #[arg(long = "out", default_value = "deployment.json")]
    pub out: PathBuf,
}

use settled_contracts::DeployScope;

fn parse_scope(s: &str) -> Result<DeployScope, String> {
    match s {
        "all" => Ok(DeployScope::All),
        "settlement-anchor" => Ok(DeployScope::SettlementAnchor),
        other => Err(format!("unknown scope {other:?} (all, settlement-anchor)")),
    }
}

/// `settled deploy`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployCommandConfig {
    /// The chain.
    pub rpc_url: String,
    /// The deploying key.
    pub key: Option<SecretKey>,
    /// The deploying key, from a file.
    pub key_file: Option<PathBuf>,
    /// Owner of the paymasters.
    pub owner: Option<alloy::primitives::Address>,
    /// The network's USDC.
    pub usdc: Option<alloy::primitives::Address>,
    /// What is deployed.
    pub scope: DeployScope,
    /// Send, or only plan.
    pub send: bool,
    /// The deployment file written after sending.
    pub out: PathBuf,
}

impl DeployArgs {
    /// The command's configuration.
    pub fn into_config(self) -> DeployCommandConfig {
        DeployCommandConfig {
            rpc_url: self.rpc_url,
            key: self.key.map(SecretKey),
            key_file: self.key_file,
            owner: self.owner,
            usdc: self.usdc,
            scope: self.only,
            send: self.send,
            out: self.out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_unless_sent() -> Result<(), clap::Error> {
        let args = ["settled", "--rpc-url", "http://x", "--only", "settlement-anchor"];
        let config = super::super::tests::Only::<DeployArgs>::try_parse_from(args)?.group;
        let config = config.into_config();
        assert!(!config.send);
        assert_eq!(config.scope, DeployScope::SettlementAnchor);
        assert_eq!(config.out, PathBuf::from("deployment.json"));
        let args = ["settled", "--rpc-url", "http://x", "--only", "everything"];
        assert!(super::super::tests::Only::<DeployArgs>::try_parse_from(args).is_err());
        Ok(())
    }
}
