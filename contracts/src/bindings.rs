//! Typed alloy bindings generated from the committed artifacts in `contracts/artifacts/`.
//!
//! The ERC-4337 contracts are bound per EntryPoint version (`v07`, `v08`) because their ABIs and
//! bytecode differ; our own contracts are bound once.
#![allow(missing_docs, unreachable_pub, clippy::too_many_arguments, clippy::all)]

/// Declares one binding per artifact, each in its own module: a JSON ABI's struct namespaces
/// (`IEntryPoint.UserOpInfo`, `IStakeManager.DepositInfo`, ...) become modules, and several
/// artifacts share them.
macro_rules! bind {
    ($($module:ident => $name:ident, $path:literal;)*) => {
        $(
            #[doc = concat!("Generated from `", $path, "`.")]
            pub mod $module {
                alloy::sol!(#[sol(rpc)] #[derive(Debug, PartialEq, Eq)] $name, $path);
            }
            pub use $module::$name;
        )*
    };
}

/// ERC-4337 EntryPoint v0.7 and its companion contracts, from `@account-abstraction/contracts@0.7.0`.
pub mod v07 {
    bind! {
        entry_point => EntryPoint, "artifacts/v07/EntryPoint.json";
        i_entry_point => IEntryPoint, "artifacts/v07/IEntryPoint.json";
        entry_point_simulations => EntryPointSimulations, "artifacts/v07/EntryPointSimulations.json";
        simple_account => SimpleAccount, "artifacts/v07/SimpleAccount.json";
        simple_account_factory => SimpleAccountFactory, "artifacts/v07/SimpleAccountFactory.json";
    }
    /// The v0.7 user operation as the EntryPoint takes it.
    pub use i_entry_point::IEntryPoint::PackedUserOperation;
}

/// ERC-4337 EntryPoint v0.8 and its companion contracts, from `@account-abstraction/contracts@0.8.0`.
pub mod v08 {
    bind! {
        entry_point => EntryPoint, "artifacts/v08/EntryPoint.json";
        i_entry_point => IEntryPoint, "artifacts/v08/IEntryPoint.json";
        entry_point_simulations => EntryPointSimulations, "artifacts/v08/EntryPointSimulations.json";
        simple_account => SimpleAccount, "artifacts/v08/SimpleAccount.json";
        simple_account_factory => SimpleAccountFactory, "artifacts/v08/SimpleAccountFactory.json";
        simple_7702_account => Simple7702Account, "artifacts/v08/Simple7702Account.json";
    }
    /// The v0.8 user operation as the EntryPoint takes it.
    pub use i_entry_point::IEntryPoint::PackedUserOperation;
}

/// settled's own contracts.
pub mod settled {
    bind! {
        mock_usdc => MockUSDC, "artifacts/settled/MockUSDC.json";
        sponsor_paymaster => SponsorPaymaster, "artifacts/settled/SponsorPaymaster.json";
        stream_vault => StreamVault, "artifacts/settled/StreamVault.json";
        settlement_anchor => SettlementAnchor, "artifacts/settled/SettlementAnchor.json";
    }
}

/// The deterministic CREATE2 deployer's calling convention: `salt ++ initCode` as calldata.
pub(crate) mod create2 {
    use alloy::primitives::{Address, B256, Bytes, address};

    /// The deterministic deployment proxy present on Anvil (and most chains).
    pub const DETERMINISTIC_DEPLOYER: Address =
        address!("0x4e59b44847b379578588920ca78fbf26c0b4956c");

    pub fn calldata(salt: B256, init_code: &[u8]) -> Bytes {
        let mut data = Vec::with_capacity(32 + init_code.len());
        data.extend_from_slice(salt.as_slice());
        data.extend_from_slice(init_code);
        data.into()
    }

    pub fn address_of(salt: B256, init_code: &[u8]) -> Address {
        DETERMINISTIC_DEPLOYER.create2_from_code(salt, init_code)
    }
}
