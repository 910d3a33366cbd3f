//! The paymaster's signing key and the `paymasterData` it produces.
//!
//! `paymasterData` (after the EntryPoint's 52 bytes of address and gas limits) is
//! `validUntil (6) ‖ validAfter (6) ‖ sponsorshipId (8) ‖ signature (65)`, the signature over
//! `SponsorPaymaster.sponsorshipHash` computed here exactly as the contract does.

use alloy::{
    primitives::{Address, B256, Bytes, U256, keccak256},
    signers::{SignerSync, local::PrivateKeySigner},
    sol_types::SolValue,
};
use settled_contracts::PackedUserOperation;

use crate::ledger::SponsorshipId;

/// Length of `paymasterData` (the part after address and gas limits).
pub const PAYMASTER_DATA_LENGTH: usize = 6 + 6 + 8 + 65;

/// A signature-shaped stub, so gas measured with it equals gas with a real signature: 65 bytes,
/// no zero bytes to discount, `s` exactly half the curve order (the largest OpenZeppelin's ECDSA
/// accepts, so it runs `ecrecover` as for a real one), `v` 28. It recovers to no one.
const STUB_SIGNATURE: [u8; 65] = {
    let mut sig = [0xff_u8; 65];
    let half_order =
        alloy::primitives::hex!("7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0");
    let mut i = 0;
    while i < 32 {
        sig[32 + i] = half_order[i];
        i += 1;
    }
    sig[64] = 0x1c;
    sig
};

/// The key that approves sponsorships. Its `Debug` shows the address only: the key is never
/// logged.
#[derive(Clone)]
pub struct PaymasterSigner {
    key: PrivateKeySigner,
}

impl std::fmt::Debug for PaymasterSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymasterSigner")
            .field("address", &self.key.address())
            .finish_non_exhaustive()
    }
}

/// The window and id a signature is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SponsorshipTerms {
    /// Last second the EntryPoint accepts it.
    pub valid_until: u64,
    /// First second the EntryPoint accepts it.
    pub valid_after: u64,
    /// The ledger reservation it draws on.
    pub id: SponsorshipId,
}

impl SponsorshipTerms {
    fn encode_prefix(&self) -> Vec<u8> {
        let mut data = Vec::with_capacity(PAYMASTER_DATA_LENGTH);
        data.extend_from_slice(&self.valid_until.to_be_bytes()[2..]);
        data.extend_from_slice(&self.valid_after.to_be_bytes()[2..]);
        data.extend_from_slice(&self.id.to_be_bytes());
        data
    }
}

/// `paymasterData` with a stub signature: right length and gas, for estimation.
pub fn stub_paymaster_data() -> Bytes {
    let terms = SponsorshipTerms { valid_until: 0xffff_ffff_ffff, valid_after: 0, id: u64::MAX };
    let mut data = terms.encode_prefix();
    data.extend_from_slice(&STUB_SIGNATURE);
    data.into()
}

/// `SponsorPaymaster.sponsorshipHash(op, validUntil, validAfter, sponsorshipId)` on `chain_id`
/// for the paymaster at `paymaster`. `op.paymasterAndData` must hold at least address and gas
/// limits.
pub fn sponsorship_hash(
    op: &PackedUserOperation,
    chain_id: u64,
    paymaster: Address,
    terms: &SponsorshipTerms,
) -> B256 {
    let gas_limits = op.paymasterAndData.get(20..52).map(B256::from_slice).unwrap_or_default();
    let op_fields = keccak256(
        (
            op.sender,
            op.nonce,
            keccak256(&op.initCode),
            keccak256(&op.callData),
            op.accountGasLimits,
            gas_limits,
            op.preVerificationGas,
            op.gasFees,
        )
            .abi_encode_params(),
    );
    keccak256(
        (
            op_fields,
            U256::from(chain_id),
            paymaster,
            U256::from(terms.valid_until),
            U256::from(terms.valid_after),
            U256::from(terms.id),
        )
            .abi_encode_params(),
    )
}

impl PaymasterSigner {
    /// A signer with `key`.
    pub fn new(key: PrivateKeySigner) -> Self {
        Self { key }
    }

    /// The address the paymaster contract must name as its `signer`.
    pub fn address(&self) -> Address {
        self.key.address()
    }

    /// The signed `paymasterData` for `op` (whose `paymasterAndData` holds our address and the
    /// gas limits) under `terms`.
    pub fn paymaster_data(
        &self,
        op: &PackedUserOperation,
        chain_id: u64,
        paymaster: Address,
        terms: &SponsorshipTerms,
    ) -> Result<Bytes, alloy::signers::Error> {
        let digest = sponsorship_hash(op, chain_id, paymaster, terms);
        let signature = self.key.sign_hash_sync(&digest)?;
        let mut data = terms.encode_prefix();
        data.extend_from_slice(&signature.as_bytes());
        Ok(data.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_layout_and_recovery() -> Result<(), Box<dyn std::error::Error>> {
        let signer = PaymasterSigner::new(PrivateKeySigner::random());
        let paymaster = Address::repeat_byte(9);
        let mut pad = paymaster.to_vec();
        pad.extend_from_slice(&[0u8; 32]);
        let op = PackedUserOperation {
            sender: Address::repeat_byte(1),
            nonce: U256::from(3),
            initCode: Bytes::new(),
            callData: Bytes::from_static(b"call"),
            accountGasLimits: B256::ZERO,
            preVerificationGas: U256::from(50_000),
            gasFees: B256::ZERO,
            paymasterAndData: pad.into(),
            signature: Bytes::new(),
        };
        let terms = SponsorshipTerms { valid_until: 0x0102_0304_0506, valid_after: 7, id: 42 };
        let data = signer.paymaster_data(&op, 31337, paymaster, &terms)?;
        assert_eq!(data.len(), PAYMASTER_DATA_LENGTH);
        assert_eq!(stub_paymaster_data().len(), PAYMASTER_DATA_LENGTH);
        assert_eq!(&data[..6], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&data[12..20], &42u64.to_be_bytes());
        let signature = alloy::primitives::Signature::try_from(&data[20..])?;
        let digest = sponsorship_hash(&op, 31337, paymaster, &terms);
        assert_eq!(signature.recover_address_from_prehash(&digest)?, signer.address());
        let other_chain = sponsorship_hash(&op, 1, paymaster, &terms);
        assert_ne!(signature.recover_address_from_prehash(&other_chain)?, signer.address());
        assert!(
            !format!("{signer:?}").contains(&format!("{:x}", signer.key.credential().to_bytes()))
        );
        Ok(())
    }
}
