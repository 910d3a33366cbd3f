//! What kind of chain the node runs on: Ethereum (or a chain that behaves like it), an OP-stack
//! rollup (Base, OP Mainnet: every transaction also pays an L1 data fee, priced by the
//! `GasPriceOracle` predeploy), or Arbitrum. Detected from the chain's predeploys at start, or
//! set by the operator.

use alloy::{
    primitives::{Address, address},
    providers::{DynProvider, Provider},
    transports::TransportError,
};
use serde::{Deserialize, Serialize};

/// OP stack's `GasPriceOracle` predeploy: `getL1Fee(bytes)` prices a transaction's L1 data.
pub const OP_GAS_PRICE_ORACLE: Address = address!("0x420000000000000000000000000000000000000F");
/// OP stack's `L1Block` predeploy: the L1 fee parameters the oracle reads.
pub const OP_L1_BLOCK: Address = address!("0x4200000000000000000000000000000000000015");
/// Arbitrum's `NodeInterface` (virtual) contract.
pub const ARBITRUM_NODE_INTERFACE: Address = address!("0x00000000000000000000000000000000000000C8");
/// Arbitrum's `ArbSys` precompile (has code `0xfe` on every Arbitrum chain).
pub const ARBITRUM_SYS: Address = address!("0x0000000000000000000000000000000000000064");

alloy::sol! {
    /// The parts of OP stack's `GasPriceOracle` settled reads.
    #[sol(rpc)]
    interface GasPriceOracle {
        /// The L1 fee (wei) of a transaction whose unsigned RLP encoding is `data`.
        function getL1Fee(bytes data) external view returns (uint256);
        /// Whether the Fjord fee formula (FastLZ-compressed size) is active.
        function isFjord() external view returns (bool);
    }
}

/// The kind of chain, as far as fees go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChainKind {
    /// Ethereum or any chain whose transactions pay only gas.
    #[default]
    Ethereum,
    /// An OP-stack rollup: each transaction also pays an L1 data fee.
    OpStack,
    /// Arbitrum: the L1 cost is charged as L2 gas (`eth_estimateGas` includes it).
    Arbitrum,
}

impl ChainKind {
    /// The chain's kind from its predeploys: the `GasPriceOracle` code at
    /// [`OP_GAS_PRICE_ORACLE`] makes it OP stack; code at [`ARBITRUM_NODE_INTERFACE`] or
    /// [`ARBITRUM_SYS`], Arbitrum; else Ethereum.
    pub async fn detect(provider: &DynProvider) -> Result<Self, TransportError> {
        if !provider.get_code_at(OP_GAS_PRICE_ORACLE).await?.is_empty() {
            return Ok(Self::OpStack);
        }
        for arbitrum in [ARBITRUM_NODE_INTERFACE, ARBITRUM_SYS] {
            if !provider.get_code_at(arbitrum).await?.is_empty() {
                return Ok(Self::Arbitrum);
            }
        }
        Ok(Self::Ethereum)
    }

    /// Whether a transaction pays an L1 data fee apart from its gas, which preVerificationGas
    /// must cover (OP stack only: Arbitrum folds its L1 cost into the gas it charges).
    pub fn has_l1_data_fee(self) -> bool {
        self == Self::OpStack
    }

    /// The name used in flags, logs and `settled_info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ethereum => "ethereum",
            Self::OpStack => "op-stack",
            Self::Arbitrum => "arbitrum",
        }
    }
}

impl std::fmt::Display for ChainKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ChainKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ethereum" => Ok(Self::Ethereum),
            "op-stack" | "optimism" => Ok(Self::OpStack),
            "arbitrum" => Ok(Self::Arbitrum),
            other => Err(format!("unknown chain kind {other:?} (ethereum, op-stack, arbitrum)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in [ChainKind::Ethereum, ChainKind::OpStack, ChainKind::Arbitrum] {
            assert_eq!(kind.as_str().parse::<ChainKind>(), Ok(kind));
            let json = serde_json::to_string(&kind).expect("serializes");
            assert_eq!(json, format!("\"{kind}\""));
        }
        assert!("base".parse::<ChainKind>().is_err());
        assert!(ChainKind::OpStack.has_l1_data_fee());
        assert!(!ChainKind::Arbitrum.has_l1_data_fee());
    }
}
