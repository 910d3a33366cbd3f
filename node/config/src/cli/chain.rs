//! `--chain.*`: how the node follows the chain.

use super::*;

/// How the node follows the chain.
#[derive(Debug, Clone, Args)]
pub struct ChainArgs {
    /// Milliseconds between polls for a new block.
    #[arg(
        long = "chain.poll-interval-ms",
        id = "chain.poll-interval-ms",
        env = "SETTLED_CHAIN_POLL_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub poll_interval_ms: u64,

    /// Deepest chain reorganisation the node unwinds.
    #[arg(
        long = "chain.reorg-depth",
        id = "chain.reorg-depth",
        env = "SETTLED_CHAIN_REORG_DEPTH",
        default_value_t = 64
    )]
    pub reorg_depth: u64,

    /// Seconds to wait for the chain's RPC endpoint at start-up.
    #[arg(
        long = "chain.connect-timeout-secs",
        id = "chain.connect-timeout-secs",
        env = "SETTLED_CHAIN_CONNECT_TIMEOUT_SECS",
        default_value_t = 5
    )]
    pub connect_timeout_secs: u64,

    /// The chain's kind: `auto` (detected from its predeploys), `ethereum`, `op-stack` (an L1
    /// data fee on every transaction: Base, OP Mainnet) or `arbitrum`.
    #[arg(
        long = "chain.kind",
        id = "chain.kind",
        env = "SETTLED_CHAIN_KIND",
        default_value = "auto",
        value_parser = parse_kind
    )]
    pub kind: KindChoice,
}

/// `--chain.kind`: a kind, or `auto` (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindChoice(pub Option<settled_contracts::ChainKind>);

fn parse_kind(s: &str) -> Result<KindChoice, String> {
    if s == "auto" { Ok(KindChoice(None)) } else { s.parse().map(|k| KindChoice(Some(k))) }
}

impl ChainArgs {
    /// The chain follower's configuration.
    pub fn into_config(self) -> ChainConfig {
        ChainConfig {
            poll_interval: Duration::from_millis(self.poll_interval_ms.max(1)),
            reorg_depth: self.reorg_depth,
            connect_timeout: Duration::from_secs(self.connect_timeout_secs.max(1)),
            kind: self.kind.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No flag: the configuration's own defaults.
    #[test]
    fn no_flags_give_the_defaults() -> Result<(), clap::Error> {
        let args = super::super::tests::Only::<ChainArgs>::try_parse_from(["settled"])?;
        assert_eq!(args.group.into_config(), ChainConfig::default());
        Ok(())
    }

    #[test]
    fn the_kind_is_detected_unless_named() -> Result<(), clap::Error> {
        let args = ["settled", "--chain.kind", "op-stack"];
        let args = super::super::tests::Only::<ChainArgs>::try_parse_from(args)?;
        assert_eq!(args.group.kind.0, Some(settled_contracts::ChainKind::OpStack));
        let args = ["settled", "--chain.kind", "solana"];
        assert!(super::super::tests::Only::<ChainArgs>::try_parse_from(args).is_err());
        Ok(())
    }
}
