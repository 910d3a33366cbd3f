//! The addresses of everything settled talks to on one chain, as a value that can be written to
//! and read from JSON (`settled dev` writes it; `settled run --deployment` reads it).

use std::path::{Path, PathBuf};

use alloy::{
    primitives::{Address, address},
    providers::Provider,
};
use serde::{Deserialize, Serialize};

/// Canonical address of ERC-4337 EntryPoint v0.7 on every chain.
pub const ENTRY_POINT_V07: Address = address!("0x0000000071727De22E5E9d8BAf0edAc6f37da032");
/// Canonical address of ERC-4337 EntryPoint v0.8 on every chain.
pub const ENTRY_POINT_V08: Address = address!("0x4337084D9E255Ff0702461CF8895CE9E3b5Ff108");

/// The EntryPoint versions settled serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EntryPointVersion {
    /// EntryPoint v0.7 (`PackedUserOperation`, ERC-4337 as of 2024).
    #[serde(rename = "0.7")]
    V07,
    /// EntryPoint v0.8 (EIP-712 op hash, EIP-7702 `eip7702Auth`).
    #[serde(rename = "0.8")]
    V08,
}

impl EntryPointVersion {
    /// Every supported version, oldest first.
    pub const ALL: [Self; 2] = [Self::V07, Self::V08];

    /// The canonical address of this version's EntryPoint.
    pub const fn canonical_address(self) -> Address {
        match self {
            Self::V07 => ENTRY_POINT_V07,
            Self::V08 => ENTRY_POINT_V08,
        }
    }

    /// The version whose canonical EntryPoint lives at `address`, if any.
    pub fn from_address(address: Address) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.canonical_address() == address)
    }
}

/// Addresses of the contracts settled uses on one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deployment {
    /// Chain these addresses are valid on.
    pub chain_id: u64,
    /// ERC-4337 EntryPoint v0.7.
    pub entry_point_v07: Address,
    /// ERC-4337 EntryPoint v0.8.
    pub entry_point_v08: Address,
    /// `SimpleAccountFactory` bound to EntryPoint v0.7.
    pub simple_account_factory_v07: Address,
    /// `SimpleAccountFactory` bound to EntryPoint v0.8.
    pub simple_account_factory_v08: Address,
    /// `Simple7702Account` (EIP-7702 delegation target) for EntryPoint v0.8.
    pub simple_7702_account_v08: Address,
    /// The settlement token (USDC; `MockUSDC` on dev chains).
    pub usdc: Address,
    /// settled's `SponsorPaymaster` at EntryPoint v0.7.
    pub paymaster_v07: Address,
    /// settled's `SponsorPaymaster` at EntryPoint v0.8.
    pub paymaster_v08: Address,
    /// settled's `StreamVault` (per-second streams).
    pub stream_vault: Address,
    /// settled's `SettlementAnchor` (settlement batches: Merkle roots and blob hashes).
    pub settlement_anchor: Address,
    /// First block that can hold logs of these contracts: where the chain follower starts.
    pub start_block: u64,
}

/// Why a deployment file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// The file could not be read or written.
    #[error("deployment file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid deployment.
    #[error("deployment file {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The chain the deployment names is not the chain we are connected to.
    #[error("deployment is for chain {expected} but the RPC endpoint serves chain {actual}")]
    WrongChain {
        /// Chain id in the deployment.
        expected: u64,
        /// Chain id reported by the endpoint.
        actual: u64,
    },
    /// A contract the deployment names has no code on the chain.
    #[error("no contract code at {address} ({name}) on chain {chain_id}")]
    MissingCode {
        /// Which contract.
        name: &'static str,
        /// Where it should be.
        address: Address,
        /// The chain.
        chain_id: u64,
    },
    /// The chain could not be queried.
    #[error("querying the chain: {0}")]
    Rpc(#[from] alloy::transports::TransportError),
}

impl Deployment {
    /// Reads a deployment from a JSON file.
    pub fn load(path: &Path) -> Result<Self, DeploymentError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| DeploymentError::Io { path: path.to_path_buf(), source })?;
        serde_json::from_str(&text)
            .map_err(|source| DeploymentError::Parse { path: path.to_path_buf(), source })
    }

    /// Writes the deployment as pretty JSON, replacing the file atomically.
    pub fn save(&self, path: &Path) -> Result<(), DeploymentError> {
        let io = |source| DeploymentError::Io { path: path.to_path_buf(), source };
        let mut text = serde_json::to_string_pretty(self).map_err(|e| io(e.into()))?;
        text.push('\n');
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The EntryPoint address of `version`.
    pub const fn entry_point(&self, version: EntryPointVersion) -> Address {
        match version {
            EntryPointVersion::V07 => self.entry_point_v07,
            EntryPointVersion::V08 => self.entry_point_v08,
        }
    }

    /// settled's paymaster at `version`'s EntryPoint.
    pub const fn paymaster(&self, version: EntryPointVersion) -> Address {
        match version {
            EntryPointVersion::V07 => self.paymaster_v07,
            EntryPointVersion::V08 => self.paymaster_v08,
        }
    }

    /// Every named contract with its address.
    pub fn contracts(&self) -> [(&'static str, Address); 10] {
        [
            ("EntryPoint v0.7", self.entry_point_v07),
            ("EntryPoint v0.8", self.entry_point_v08),
            ("SimpleAccountFactory v0.7", self.simple_account_factory_v07),
            ("SimpleAccountFactory v0.8", self.simple_account_factory_v08),
            ("Simple7702Account v0.8", self.simple_7702_account_v08),
            ("USDC", self.usdc),
            ("SponsorPaymaster v0.7", self.paymaster_v07),
            ("SponsorPaymaster v0.8", self.paymaster_v08),
            ("StreamVault", self.stream_vault),
            ("SettlementAnchor", self.settlement_anchor),
        ]
    }

    /// Checks that `provider` serves this deployment's chain and that every contract has code.
    pub async fn verify<P: Provider>(&self, provider: &P) -> Result<(), DeploymentError> {
        let actual = provider.get_chain_id().await?;
        if actual != self.chain_id {
            return Err(DeploymentError::WrongChain { expected: self.chain_id, actual });
        }
        for (name, address) in self.contracts() {
            if provider.get_code_at(address).await?.is_empty() {
                return Err(DeploymentError::MissingCode { name, address, chain_id: actual });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Deployment {
        Deployment {
            chain_id: 31337,
            entry_point_v07: ENTRY_POINT_V07,
            entry_point_v08: ENTRY_POINT_V08,
            simple_account_factory_v07: Address::repeat_byte(1),
            simple_account_factory_v08: Address::repeat_byte(2),
            simple_7702_account_v08: Address::repeat_byte(3),
            usdc: Address::repeat_byte(4),
            paymaster_v07: Address::repeat_byte(5),
            paymaster_v08: Address::repeat_byte(6),
            stream_vault: Address::repeat_byte(7),
            settlement_anchor: Address::repeat_byte(8),
            start_block: 7,
        }
    }

    #[test]
    fn json_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("deployment.json");
        sample().save(&path)?;
        assert_eq!(Deployment::load(&path)?, sample());
        Ok(())
    }

    #[test]
    fn unknown_fields_and_missing_files_are_errors() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("nope.json");
        assert!(matches!(Deployment::load(&missing), Err(DeploymentError::Io { .. })));

        let bad = dir.path().join("bad.json");
        let mut value = serde_json::to_value(sample())?;
        value["surprise"] = serde_json::json!(1);
        std::fs::write(&bad, value.to_string())?;
        let err = Deployment::load(&bad).err().ok_or("accepted an unknown field")?;
        assert!(err.to_string().contains("surprise"), "{err}");
        Ok(())
    }

    #[test]
    fn entry_point_versions_map_to_canonical_addresses() {
        for v in EntryPointVersion::ALL {
            assert_eq!(EntryPointVersion::from_address(v.canonical_address()), Some(v));
            assert_eq!(sample().entry_point(v), v.canonical_address());
        }
        assert_eq!(EntryPointVersion::from_address(Address::ZERO), None);
    }
}
