//! The UserOperation as ERC-7769 clients send it (unpacked fields, hex quantities, optional
//! factory/paymaster groups and `eip7702Auth`), and its conversion to the packed form the
//! EntryPoint takes. Every malformed field is an [`InvalidUserOperation`], never a panic.

use crate::{EIP7702_INIT_CODE_MARKER, PackedUserOperation, pack_u128s};
use alloy::{
    eips::eip7702::SignedAuthorization,
    primitives::{Address, Bytes, U256},
};
use serde::{Deserialize, Serialize};

/// A UserOperation for EntryPoint v0.7/v0.8 in ERC-7769's JSON shape.
///
/// Gas limits and fees default to zero (estimation takes them as optional); `factory` is an
/// address or the EIP-7702 marker `0x7702`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserOperation {
    /// The account.
    pub sender: Address,
    /// Key (192 bits) and sequence (64 bits).
    #[serde(with = "quantity")]
    pub nonce: U256,
    /// Factory address, or `0x7702` for an EIP-7702 account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factory: Option<Bytes>,
    /// Calldata for the factory (or, for EIP-7702, for the sender's initialization).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factory_data: Option<Bytes>,
    /// The account's execution calldata.
    pub call_data: Bytes,
    /// Gas for the execution.
    #[serde(default)]
    #[serde(with = "quantity")]
    pub call_gas_limit: U256,
    /// Gas for validation (and deployment).
    #[serde(default)]
    #[serde(with = "quantity")]
    pub verification_gas_limit: U256,
    /// Gas paid for what the EntryPoint does not meter.
    #[serde(default)]
    #[serde(with = "quantity")]
    pub pre_verification_gas: U256,
    /// EIP-1559 max fee.
    #[serde(default)]
    #[serde(with = "quantity")]
    pub max_fee_per_gas: U256,
    /// EIP-1559 priority fee.
    #[serde(default)]
    #[serde(with = "quantity")]
    pub max_priority_fee_per_gas: U256,
    /// The paymaster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paymaster: Option<Address>,
    /// Gas for the paymaster's validation.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "quantity::option")]
    pub paymaster_verification_gas_limit: Option<U256>,
    /// Gas for the paymaster's postOp.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "quantity::option")]
    pub paymaster_post_op_gas_limit: Option<U256>,
    /// Data for the paymaster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paymaster_data: Option<Bytes>,
    /// The account's signature.
    #[serde(default)]
    pub signature: Bytes,
    /// An EIP-7702 authorization to install with the bundle (v0.8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eip7702_auth: Option<SignedAuthorization>,
}

/// ERC-7769 quantities: `0x`-prefixed hex strings. A JSON number (rounded by JavaScript above
/// 2^53) or an unprefixed string (`"12"`: decimal or hex?) is refused, not guessed at.
mod quantity {
    use alloy::primitives::U256;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(value: &U256, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(value, serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<U256, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let text = value.as_str().ok_or_else(|| {
            D::Error::custom(format!("a quantity must be a 0x-prefixed hex string, not {value}"))
        })?;
        let digits =
            text.strip_prefix("0x").filter(|d| !d.is_empty() && d.len() <= 64).ok_or_else(
                || D::Error::custom(format!("{text:?} is not a 0x-prefixed hex quantity")),
            )?;
        U256::from_str_radix(digits, 16)
            .map_err(|_| D::Error::custom(format!("{text:?} is not a 0x-prefixed hex quantity")))
    }

    pub(super) mod option {
        use alloy::primitives::U256;
        use serde::{Deserialize, Deserializer, Serializer};

        pub(in super::super) fn serialize<S: Serializer>(
            value: &Option<U256>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            serde::Serialize::serialize(value, serializer)
        }

        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<U256>, D::Error> {
            #[derive(Deserialize)]
            struct Quantity(#[serde(deserialize_with = "super::deserialize")] U256);
            Ok(Option::<Quantity>::deserialize(deserializer)?.map(|q| q.0))
        }
    }
}

/// Why a UserOperation's fields do not form a valid op (ERC-7769 -32602).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid UserOperation: {0}")]
pub struct InvalidUserOperation(pub String);

fn u128_field(name: &str, value: U256) -> Result<u128, InvalidUserOperation> {
    u128::try_from(value)
        .map_err(|_| InvalidUserOperation(format!("{name} {value} exceeds 128 bits")))
}

impl UserOperation {
    /// The factory, when it is an address (not absent, not the EIP-7702 marker).
    pub fn factory_address(&self) -> Option<Address> {
        self.factory.as_ref().filter(|f| f.len() == 20).map(|f| Address::from_slice(f))
    }

    /// The packed form (`initCode`, `accountGasLimits`, `gasFees`, `paymasterAndData`).
    pub fn pack(&self) -> Result<PackedUserOperation, InvalidUserOperation> {
        let init_code = match (&self.factory, &self.factory_data) {
            (None, None) => Bytes::new(),
            (None, Some(data)) if data.is_empty() => Bytes::new(),
            (None, Some(_)) => {
                return Err(InvalidUserOperation("factoryData without factory".into()));
            }
            (Some(factory), data) => {
                let factory = match factory.len() {
                    20 => Address::from_slice(factory),
                    2 if factory[..] == [0x77, 0x02] => EIP7702_INIT_CODE_MARKER,
                    _ => {
                        return Err(InvalidUserOperation(format!(
                            "factory must be an address or 0x7702, got {factory}"
                        )));
                    }
                };
                let mut init_code = factory.to_vec();
                init_code.extend_from_slice(data.as_ref().map_or(&[][..], |d| &d[..]));
                init_code.into()
            }
        };
        let paymaster_and_data = match self.paymaster {
            None => {
                let stray = self.paymaster_data.as_ref().is_some_and(|d| !d.is_empty())
                    || self.paymaster_verification_gas_limit.is_some_and(|g| !g.is_zero())
                    || self.paymaster_post_op_gas_limit.is_some_and(|g| !g.is_zero());
                if stray {
                    return Err(InvalidUserOperation("paymaster fields without paymaster".into()));
                }
                Bytes::new()
            }
            Some(paymaster) => {
                let verification = u128_field(
                    "paymasterVerificationGasLimit",
                    self.paymaster_verification_gas_limit.unwrap_or_default(),
                )?;
                let post_op = u128_field(
                    "paymasterPostOpGasLimit",
                    self.paymaster_post_op_gas_limit.unwrap_or_default(),
                )?;
                let mut data = paymaster.to_vec();
                data.extend_from_slice(pack_u128s(verification, post_op).as_slice());
                data.extend_from_slice(self.paymaster_data.as_ref().map_or(&[][..], |d| &d[..]));
                data.into()
            }
        };
        let op = PackedUserOperation {
            sender: self.sender,
            nonce: self.nonce,
            initCode: init_code,
            callData: self.call_data.clone(),
            accountGasLimits: pack_u128s(
                u128_field("verificationGasLimit", self.verification_gas_limit)?,
                u128_field("callGasLimit", self.call_gas_limit)?,
            ),
            preVerificationGas: self.pre_verification_gas,
            gasFees: pack_u128s(
                u128_field("maxPriorityFeePerGas", self.max_priority_fee_per_gas)?,
                u128_field("maxFeePerGas", self.max_fee_per_gas)?,
            ),
            paymasterAndData: paymaster_and_data,
            signature: self.signature.clone(),
        };
        // v0.8: the `0x7702` marker is optional. An op that only carries the authorization is
        // valid; the marker only asks the EntryPoint to hash the delegate and call the
        // sender's initialization with `factoryData`.
        Ok(op)
    }

    /// The unpacked form of `op` (with `eip7702_auth`, which the packed op does not carry).
    pub fn unpack(op: &PackedUserOperation, eip7702_auth: Option<SignedAuthorization>) -> Self {
        let (factory, factory_data) = if op.initCode.len() >= 20 {
            let factory: Bytes = if op.is_eip7702() {
                Bytes::from_static(&[0x77, 0x02])
            } else {
                op.initCode.slice(..20)
            };
            (Some(factory), Some(op.initCode.slice(20..)))
        } else {
            (None, None)
        };
        let (paymaster_verification_gas_limit, paymaster_post_op_gas_limit) =
            match op.paymaster_gas_limits() {
                Some((v, p)) => (Some(U256::from(v)), Some(U256::from(p))),
                None => (None, None),
            };
        Self {
            sender: op.sender,
            nonce: op.nonce,
            factory,
            factory_data,
            call_data: op.callData.clone(),
            call_gas_limit: U256::from(op.call_gas_limit()),
            verification_gas_limit: U256::from(op.verification_gas_limit()),
            pre_verification_gas: op.preVerificationGas,
            max_fee_per_gas: U256::from(op.max_fee_per_gas()),
            max_priority_fee_per_gas: U256::from(op.max_priority_fee_per_gas()),
            paymaster: op.paymaster(),
            paymaster_verification_gas_limit,
            paymaster_post_op_gas_limit,
            paymaster_data: op
                .paymaster()
                .map(|_| op.paymasterAndData.slice(52.min(op.paymasterAndData.len())..)),
            signature: op.signature.clone(),
            eip7702_auth,
        }
    }
}

/// An address that serializes in its EIP-55 checksummed form, as ERC-4337 clients (and the
/// reference bundler) show EntryPoint addresses in `eth_supportedEntryPoints` and results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChecksummedAddress(pub Address);

impl Serialize for ChecksummedAddress {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_checksum(None))
    }
}

impl<'de> Deserialize<'de> for ChecksummedAddress {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Address::deserialize(deserializer).map(Self)
    }
}

impl From<Address> for ChecksummedAddress {
    fn from(address: Address) -> Self {
        Self(address)
    }
}

/// JSON-RPC error codes of ERC-7769, used by the bundler's and the paymaster's RPC.
pub mod rpc_codes {
    /// Invalid fields, unsupported EntryPoint, mempool rules.
    pub const INVALID_PARAMS: i32 = -32602;
    /// Rejected by the EntryPoint (`AAxx`).
    pub const REJECTED_BY_ENTRY_POINT: i32 = -32500;
    /// Rejected by the paymaster.
    pub const REJECTED_BY_PAYMASTER: i32 = -32501;
    /// ERC-7562 opcode or storage rule broken.
    pub const BANNED_OPCODE_OR_STORAGE: i32 = -32502;
    /// Out of time range.
    pub const OUT_OF_TIME_RANGE: i32 = -32503;
    /// An entity is throttled or banned.
    pub const THROTTLED_OR_BANNED: i32 = -32504;
    /// An entity's stake is too low.
    pub const STAKE_TOO_LOW: i32 = -32505;
    /// The account's signature failed.
    pub const INVALID_SIGNATURE: i32 = -32507;
    /// The paymaster's deposit cannot cover its pending ops.
    pub const PAYMASTER_DEPOSIT_TOO_LOW: i32 = -32508;
    /// The op's execution reverted (estimation).
    pub const EXECUTION_REVERTED: i32 = -32521;
    /// The node failed.
    pub const INTERNAL: i32 = -32603;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EntryPointVersion;
    use alloy::{eips::eip7702::Authorization, primitives::Signature};

    fn authorized(factory: Option<Bytes>) -> UserOperation {
        let auth = Authorization {
            chain_id: U256::from(1337),
            address: Address::repeat_byte(0xde),
            nonce: 0,
        };
        let minimal = serde_json::json!({ "sender": Address::repeat_byte(1), "nonce": "0x0", "callData": "0x" });
        let mut op: UserOperation =
            serde_json::from_value(minimal).unwrap_or_else(|e| panic!("minimal op: {e}"));
        op.factory = factory;
        op.eip7702_auth = Some(auth.into_signed(Signature::test_signature()));
        op
    }

    /// Quantities are 0x-prefixed hex strings (ERC-7769): a JSON number, an unprefixed string
    /// (`"12"`), an empty `0x` and more than 256 bits are refused; every accepted form round-trips.
    #[test]
    fn quantities_are_strict_hex_strings() {
        let op = |nonce: serde_json::Value, limit: serde_json::Value| {
            serde_json::from_value::<UserOperation>(serde_json::json!({
                "sender": Address::repeat_byte(1),
                "nonce": nonce,
                "callData": "0x",
                "paymasterPostOpGasLimit": limit,
            }))
        };
        let good = op("0x12".into(), "0x0".into()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(good.nonce, U256::from(0x12));
        assert_eq!(good.paymaster_post_op_gas_limit, Some(U256::ZERO));
        let json = serde_json::to_value(&good).unwrap_or_default();
        assert_eq!(serde_json::from_value::<UserOperation>(json).ok(), Some(good));
        for bad in [
            serde_json::json!(12),
            "12".into(),
            "0x".into(),
            "0xzz".into(),
            format!("0x1{}", "0".repeat(64)).into(),
        ] {
            let error =
                op(bad.clone(), "0x0".into()).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains("quantity"), "nonce {bad} accepted or unclear: {error}");
            assert!(
                op("0x0".into(), bad.clone()).is_err(),
                "paymasterPostOpGasLimit {bad} accepted"
            );
        }
        assert!(
            op("0x0".into(), serde_json::Value::Null)
                .is_ok_and(|o| o.paymaster_post_op_gas_limit.is_none())
        );
    }

    #[test]
    fn checksummed_addresses_round_trip() -> Result<(), serde_json::Error> {
        let address = crate::ENTRY_POINT_V08;
        let json = serde_json::to_string(&ChecksummedAddress(address))?;
        assert_eq!(json, "\"0x4337084D9E255Ff0702461CF8895CE9E3b5Ff108\"");
        assert_eq!(serde_json::from_str::<ChecksummedAddress>(&json)?.0, address);
        Ok(())
    }

    /// v0.8: `eip7702Auth` without the `0x7702` marker is a valid op (what permissionless'
    /// `to7702SimpleSmartAccount` sends); its hash is the plain one, with the marker the
    /// delegate's.
    #[test]
    fn authorization_without_the_marker_packs() -> Result<(), InvalidUserOperation> {
        let plain = authorized(None).pack()?;
        assert!(plain.initCode.is_empty());
        let delegate = Some(Address::repeat_byte(0xde));
        let marked = authorized(Some(Bytes::from_static(&[0x77, 0x02]))).pack()?;
        assert!(marked.is_eip7702());
        let v08 = EntryPointVersion::V08;
        assert_eq!(plain.hash(v08, 1337, delegate), plain.hash(v08, 1337, None));
        assert_ne!(marked.hash(v08, 1337, delegate), marked.hash(v08, 1337, None));
        Ok(())
    }
}
