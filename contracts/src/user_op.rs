//! Field access for the packed user operation: EntryPoint v0.7/v0.8 pack two 128-bit values per
//! word (`accountGasLimits`, `gasFees`) and the paymaster's gas limits into `paymasterAndData`.
//! One place reads and writes those layouts, so nothing else slices bytes by hand.

use alloy::{
    primitives::{Address, B256, Bytes, U256, address, keccak256},
    sol_types::SolValue,
};

use crate::{EntryPointVersion, PackedUserOperation};

/// A well-formed ECDSA signature by a fixed throwaway key over a fixed digest, for ops the
/// account has not signed yet (estimation, sponsorship checks): ECDSA accounts such as
/// SimpleAccount report it as a failed signature instead of reverting (a malformed one, or one
/// that recovers to no address, makes OpenZeppelin's `ECDSA.recover` revert), and it costs the
/// gas of a real signature.
pub fn stub_account_signature() -> Bytes {
    static SIGNATURE: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    SIGNATURE
        .get_or_init(|| {
            use alloy::signers::{SignerSync, local::PrivateKeySigner};
            PrivateKeySigner::from_bytes(&B256::repeat_byte(0x11))
                .ok()
                .and_then(|key| key.sign_hash_sync(&B256::repeat_byte(0x5a)).ok())
                .map(|signature| Bytes::from(signature.as_bytes().to_vec()))
                // Unreachable for this constant key; a same-length fallback keeps the shape.
                .unwrap_or_else(|| Bytes::from(vec![0x5a; 65]))
        })
        .clone()
}

/// EntryPoint v0.8's EIP-712 type of a packed user operation.
const PACKED_USER_OP_TYPE: &[u8] = b"PackedUserOperation(address sender,uint256 nonce,bytes initCode,bytes callData,bytes32 accountGasLimits,uint256 preVerificationGas,bytes32 gasFees,bytes paymasterAndData)";
/// EntryPoint v0.8's EIP-712 domain type.
const DOMAIN_TYPE: &[u8] =
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)";

/// `paymasterAndData` = paymaster (20) ‖ validation gas (16) ‖ postOp gas (16) ‖ paymaster data.
const PAYMASTER_GAS_END: usize = 20 + 16 + 16;

/// The `initCode` prefix that marks a v0.8 EIP-7702 op: `bytes20(bytes2(0x7702))`, i.e. the
/// marker left-aligned and zero-padded (`Eip7702Support.INITCODE_EIP7702_MARKER`).
pub const EIP7702_INIT_CODE_MARKER: Address =
    address!("0x7702000000000000000000000000000000000000");

/// `high << 128 | low`, as the EntryPoint packs two 128-bit values into one word.
pub fn pack_u128s(high: u128, low: u128) -> B256 {
    let mut word = [0u8; 32];
    word[..16].copy_from_slice(&high.to_be_bytes());
    word[16..].copy_from_slice(&low.to_be_bytes());
    B256::from(word)
}

/// The two 128-bit halves of `word`, high first.
pub fn unpack_u128s(word: B256) -> (u128, u128) {
    let mut high = [0u8; 16];
    let mut low = [0u8; 16];
    high.copy_from_slice(&word[..16]);
    low.copy_from_slice(&word[16..]);
    (u128::from_be_bytes(high), u128::from_be_bytes(low))
}

fn leading_address(data: &Bytes) -> Option<Address> {
    (data.len() >= 20).then(|| Address::from_slice(&data[..20]))
}

impl PackedUserOperation {
    /// Gas for the account's (and factory's) validation.
    pub fn verification_gas_limit(&self) -> u128 {
        unpack_u128s(self.accountGasLimits).0
    }

    /// Gas for the account's execution of `callData`.
    pub fn call_gas_limit(&self) -> u128 {
        unpack_u128s(self.accountGasLimits).1
    }

    /// Sets `verificationGasLimit` and `callGasLimit`.
    pub fn set_account_gas_limits(&mut self, verification: u128, call: u128) {
        self.accountGasLimits = pack_u128s(verification, call);
    }

    /// `maxPriorityFeePerGas`.
    pub fn max_priority_fee_per_gas(&self) -> u128 {
        unpack_u128s(self.gasFees).0
    }

    /// `maxFeePerGas`.
    pub fn max_fee_per_gas(&self) -> u128 {
        unpack_u128s(self.gasFees).1
    }

    /// Sets `maxPriorityFeePerGas` and `maxFeePerGas`.
    pub fn set_fees(&mut self, max_priority_fee_per_gas: u128, max_fee_per_gas: u128) {
        self.gasFees = pack_u128s(max_priority_fee_per_gas, max_fee_per_gas);
    }

    /// The factory named by `initCode`, if any. An EIP-7702 op has none: its `initCode` starts
    /// with [`EIP7702_INIT_CODE_MARKER`] (see [`Self::is_eip7702`]).
    pub fn factory(&self) -> Option<Address> {
        leading_address(&self.initCode).filter(|a| *a != EIP7702_INIT_CODE_MARKER)
    }

    /// Whether this is a v0.8 op of an EIP-7702 account (`initCode` starts with the marker; the
    /// EntryPoint then reads the sender's delegation instead of calling a factory).
    pub fn is_eip7702(&self) -> bool {
        leading_address(&self.initCode) == Some(EIP7702_INIT_CODE_MARKER)
    }

    /// The paymaster, if any.
    pub fn paymaster(&self) -> Option<Address> {
        leading_address(&self.paymasterAndData)
    }

    /// The paymaster's validation and postOp gas limits, if `paymasterAndData` carries them.
    pub fn paymaster_gas_limits(&self) -> Option<(u128, u128)> {
        let data = self.paymasterAndData.get(20..PAYMASTER_GAS_END)?;
        Some(unpack_u128s(B256::from_slice(data)))
    }

    /// Every gas limit of the op plus its `preVerificationGas`: the most gas it can take in a
    /// bundle (and, times `maxFeePerGas`, the most it can cost).
    pub fn total_gas_limit(&self) -> u128 {
        let (pm_verification, post_op) = self.paymaster_gas_limits().unwrap_or_default();
        self.verification_gas_limit()
            .saturating_add(self.call_gas_limit())
            .saturating_add(self.preVerificationGas.saturating_to::<u128>())
            .saturating_add(pm_verification)
            .saturating_add(post_op)
    }

    /// The worst case the EntryPoint reserves for the op (its required prefund, from the
    /// paymaster's deposit when there is one): every gas limit times `maxFeePerGas`.
    pub fn max_cost(&self) -> U256 {
        U256::from(self.total_gas_limit()) * U256::from(self.max_fee_per_gas())
    }

    /// Sets the paymaster's validation and postOp gas limits, keeping its address and data.
    /// Returns false (and changes nothing) when the op has no paymaster.
    pub fn set_paymaster_gas_limits(&mut self, verification: u128, post_op: u128) -> bool {
        if self.paymasterAndData.len() < 20 {
            return false;
        }
        let mut data = self.paymasterAndData.to_vec();
        if data.len() < PAYMASTER_GAS_END {
            data.resize(PAYMASTER_GAS_END, 0);
        }
        data[20..PAYMASTER_GAS_END].copy_from_slice(pack_u128s(verification, post_op).as_slice());
        self.paymasterAndData = data.into();
        true
    }
}

impl PackedUserOperation {
    /// The `userOpHash` `version`'s EntryPoint computes on `chain_id`, as `getUserOpHash` returns
    /// it: v0.7 hashes the packed fields with the EntryPoint and chain id; v0.8 is EIP-712 (domain
    /// `ERC4337`/`1`), and for an EIP-7702 op hashes the sender's delegate (`eip7702_delegate`:
    /// the authorization's address, or the delegation already on chain) in place of `initCode`.
    pub fn hash(
        &self,
        version: EntryPointVersion,
        chain_id: u64,
        eip7702_delegate: Option<Address>,
    ) -> B256 {
        let entry_point = version.canonical_address();
        let init_code_hash = match (version, self.is_eip7702(), eip7702_delegate) {
            (EntryPointVersion::V08, true, Some(delegate)) => {
                let mut preimage = delegate.to_vec();
                preimage.extend_from_slice(self.initCode.get(20..).unwrap_or_default());
                keccak256(preimage)
            }
            _ => keccak256(&self.initCode),
        };
        let fields = (
            self.sender,
            self.nonce,
            init_code_hash,
            keccak256(&self.callData),
            self.accountGasLimits,
            self.preVerificationGas,
            self.gasFees,
            keccak256(&self.paymasterAndData),
        );
        match version {
            EntryPointVersion::V07 => {
                let packed = keccak256(fields.abi_encode_params());
                keccak256((packed, entry_point, U256::from(chain_id)).abi_encode_params())
            }
            EntryPointVersion::V08 => {
                let (a, b, c, d, e, f, g, h) = fields;
                let struct_hash = keccak256(
                    (keccak256(PACKED_USER_OP_TYPE), a, b, c, d, e, f, g, h).abi_encode_params(),
                );
                let domain = keccak256(
                    (
                        keccak256(DOMAIN_TYPE),
                        keccak256(b"ERC4337"),
                        keccak256(b"1"),
                        U256::from(chain_id),
                        entry_point,
                    )
                        .abi_encode_params(),
                );
                let mut preimage = Vec::with_capacity(66);
                preimage.extend_from_slice(&[0x19, 0x01]);
                preimage.extend_from_slice(domain.as_slice());
                preimage.extend_from_slice(struct_hash.as_slice());
                keccak256(preimage)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::U256;

    fn op() -> PackedUserOperation {
        PackedUserOperation {
            sender: Address::repeat_byte(1),
            nonce: U256::ZERO,
            initCode: Bytes::new(),
            callData: Bytes::new(),
            accountGasLimits: pack_u128s(7, 9),
            preVerificationGas: U256::ZERO,
            gasFees: pack_u128s(1, 2),
            paymasterAndData: Bytes::new(),
            signature: Bytes::new(),
        }
    }

    #[test]
    fn first_value_goes_high() {
        let word = pack_u128s(1, 2);
        assert_eq!(U256::from_be_bytes(word.0), (U256::from(1) << 128) | U256::from(2));
    }

    #[test]
    fn words_round_trip() {
        for (high, low) in [(0, 0), (1, 2), (u128::MAX, 0), (0, u128::MAX), (u128::MAX, u128::MAX)]
        {
            assert_eq!(unpack_u128s(pack_u128s(high, low)), (high, low));
        }
        let op = op();
        assert_eq!((op.verification_gas_limit(), op.call_gas_limit()), (7, 9));
        assert_eq!((op.max_priority_fee_per_gas(), op.max_fee_per_gas()), (1, 2));
    }

    #[test]
    fn eip7702_marker_is_not_a_factory() {
        let mut op = op();
        op.initCode = EIP7702_INIT_CODE_MARKER.to_vec().into();
        assert!(op.is_eip7702());
        assert_eq!(op.factory(), None);
        op.initCode = Address::repeat_byte(7).to_vec().into();
        assert!(!op.is_eip7702());
        assert_eq!(op.factory(), Some(Address::repeat_byte(7)));
    }

    #[test]
    fn paymaster_fields() {
        let mut op = op();
        assert_eq!(op.paymaster(), None);
        assert_eq!(op.paymaster_gas_limits(), None);
        assert!(!op.set_paymaster_gas_limits(1, 2), "no paymaster, nothing to set");

        // Address only: the gas words are appended.
        op.paymasterAndData = Address::repeat_byte(0xaa).to_vec().into();
        assert!(op.set_paymaster_gas_limits(50_000, 60_000));
        assert_eq!(op.paymaster(), Some(Address::repeat_byte(0xaa)));
        assert_eq!(op.paymaster_gas_limits(), Some((50_000, 60_000)));

        // Paymaster data after the gas words survives a change of limits.
        let mut data = op.paymasterAndData.to_vec();
        data.extend_from_slice(b"signature");
        op.paymasterAndData = data.into();
        assert!(op.set_paymaster_gas_limits(1, 2));
        assert_eq!(op.paymaster_gas_limits(), Some((1, 2)));
        assert!(op.paymasterAndData.ends_with(b"signature"));
    }
}
