//! An Anvil made to look like an OP-stack L2 for fees: the `GasPriceOracle` and `L1Block`
//! predeploys (runtime code from the pinned npm package `@eth-optimism/contracts-bedrock`) at
//! their addresses, Ecotone and Fjord active, and L1 fee parameters set in `L1Block`'s storage.
//! Anvil itself charges no L1 fee; the oracle prices it exactly as on Base.

use std::path::PathBuf;

use alloy::{
    primitives::{Address, B256, Bytes, U256},
    providers::{DynProvider, Provider},
};
use serde_json::Value;
use settled_contracts::{GasPriceOracle, OP_GAS_PRICE_ORACLE, OP_L1_BLOCK};

use crate::TestResult;

/// Where `scripts/install-toolchain.sh` puts the OP-stack artifacts.
const ARTIFACTS: &str = "node_modules/@eth-optimism/contracts-bedrock/forge-artifacts";

/// The L1 fee parameters `L1Block` holds (set by the sequencer each L2 block on a real chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L1FeeParams {
    /// L1 base fee (wei).
    pub base_fee: u128,
    /// L1 blob base fee (wei).
    pub blob_base_fee: u128,
    /// Ecotone `baseFeeScalar`.
    pub base_fee_scalar: u32,
    /// Ecotone `blobBaseFeeScalar`.
    pub blob_base_fee_scalar: u32,
}

impl L1FeeParams {
    /// Base mainnet's scalars with an L1 at `base_fee` wei and blobs at 1 wei.
    pub fn base(base_fee: u128) -> Self {
        Self { base_fee, blob_base_fee: 1, base_fee_scalar: 2_269, blob_base_fee_scalar: 1_055_762 }
    }
}

fn artifact_code(name: &str) -> TestResult<Bytes> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(ARTIFACTS);
    let path = root.join(format!("{name}.sol")).join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (run scripts/install-toolchain.sh)", path.display()))?;
    let json: Value = serde_json::from_str(&text)?;
    let code = json["deployedBytecode"]["object"].as_str().ok_or("no deployedBytecode")?;
    Ok(code.parse()?)
}

/// Installs the fee predeploys on the Anvil behind `provider` with `params`, Fjord active.
pub async fn install_op_predeploys(provider: &DynProvider, params: L1FeeParams) -> TestResult {
    for (address, name) in [(OP_GAS_PRICE_ORACLE, "GasPriceOracle"), (OP_L1_BLOCK, "L1Block")] {
        let code = artifact_code(name)?;
        let _: Value = provider.raw_request("anvil_setCode".into(), (address, code)).await?;
    }
    // GasPriceOracle slot 0: isEcotone (byte 0) and isFjord (byte 1).
    set_slot(provider, OP_GAS_PRICE_ORACLE, 0, U256::from(0x0101)).await?;
    set_l1_fees(provider, params).await
}

/// Sets `L1Block`'s fee parameters (slots 1, 3 and 7 of its storage layout).
pub async fn set_l1_fees(provider: &DynProvider, params: L1FeeParams) -> TestResult {
    set_slot(provider, OP_L1_BLOCK, 1, U256::from(params.base_fee)).await?;
    // Slot 3: sequenceNumber (u64, bytes 0..8), blobBaseFeeScalar (u32, 8..12), baseFeeScalar
    // (u32, 12..16), counted from the low end.
    let packed = (U256::from(params.base_fee_scalar) << 96)
        | (U256::from(params.blob_base_fee_scalar) << 64)
        | U256::from(1u64);
    set_slot(provider, OP_L1_BLOCK, 3, packed).await?;
    set_slot(provider, OP_L1_BLOCK, 7, U256::from(params.blob_base_fee)).await
}

async fn set_slot(provider: &DynProvider, address: Address, slot: u64, value: U256) -> TestResult {
    let slot = B256::from(U256::from(slot));
    let value = B256::from(value);
    let _: Value =
        provider.raw_request("anvil_setStorageAt".into(), (address, slot, value)).await?;
    Ok(())
}

/// The oracle's L1 fee (wei) for a transaction whose unsigned encoding is `tx`.
pub async fn oracle_l1_fee(provider: &DynProvider, tx: &[u8]) -> TestResult<u128> {
    let oracle = GasPriceOracle::new(OP_GAS_PRICE_ORACLE, provider);
    let fee = oracle.getL1Fee(tx.to_vec().into()).call().await?;
    Ok(fee.to())
}
