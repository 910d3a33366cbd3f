//! Opening a stream for a payer who has tokens and no ETH and no smart account: the payer signs
//! the stream's terms (EIP-712, `StreamVault.openFor`) and an EIP-2612 permit of the deposit;
//! the node, as relayer, sends `openFor` and pays the gas.
//!
//! `stream_openTerms` gives the billing backend what the payer signs — the terms with the node's
//! operator and the payer's next nonce filled in, as EIP-712 typed data (for
//! `eth_signTypedData_v4`) and as digests (for raw signers) — and `stream_open` with
//! `signedTerms` sends them, once per idempotency key.

use std::borrow::Cow;

use alloy::{
    primitives::{Address, B256, Bytes, U256, aliases::U96},
    rpc::types::TransactionReceipt,
    sol,
    sol_types::{Eip712Domain, SolEvent, SolStruct},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use settled_contracts::{MockUSDC, StreamVault};

use crate::BillingError;

sol! {
    /// EIP-2612's permit, as tokens hash it.
    struct Permit {
        address owner;
        address spender;
        uint256 value;
        uint256 nonce;
        uint256 deadline;
    }
}

/// The payer's signatures over terms [`terms`] described (`stream_open`'s `signedTerms`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SignedTerms {
    /// The nonce signed (`stream_openTerms` gives the payer's next).
    pub(crate) nonce: String,
    /// Unix seconds after which neither signature is valid.
    pub(crate) deadline: u64,
    /// The payer's signature of the terms' digest (65 bytes; ERC-1271 bytes for a contract).
    pub(crate) signature: Bytes,
    /// The payer's EIP-2612 permit signature of the deposit (65 bytes), unless it approved the
    /// vault already.
    #[serde(default)]
    pub(crate) permit_signature: Option<Bytes>,
}

/// What a stream opened through `signedTerms` resulted in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenedStream {
    /// The new stream.
    pub stream_id: String,
    /// The node's `openFor` transaction.
    pub transaction_hash: B256,
    /// Its block.
    pub block_number: u64,
}

/// The stream terms a payer agrees to, before the nonce and deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Terms {
    pub(crate) payer: Address,
    pub(crate) payee: Address,
    pub(crate) token: Address,
    pub(crate) rate: U96,
    pub(crate) operator: Address,
    pub(crate) max_rate: U96,
    pub(crate) max_total: U96,
    pub(crate) amount: u128,
}

impl Terms {
    /// The vault's `OpenTerms` for these terms.
    pub(crate) fn open_terms(&self, nonce: U256, deadline: u64) -> StreamVault::OpenTerms {
        StreamVault::OpenTerms {
            payee: self.payee,
            token: self.token,
            ratePerSecond: self.rate,
            operator: self.operator,
            maxRate: self.max_rate,
            maxTotal: self.max_total,
            amount: self.amount,
            nonce,
            deadline: U256::from(deadline),
        }
    }
}

fn vault_domain(chain_id: u64, vault: Address) -> Eip712Domain {
    Eip712Domain::new(
        Some(Cow::Borrowed("StreamVault")),
        Some(Cow::Borrowed("1")),
        Some(U256::from(chain_id)),
        Some(vault),
        None,
    )
}

/// EIP-712 typed data as `eth_signTypedData_v4` takes it.
fn typed_data(
    domain: &Eip712Domain,
    primary: &str,
    fields: &[(&str, &str)],
    message: Value,
) -> Value {
    let mut domain_fields = Vec::new();
    let mut domain_values = serde_json::Map::new();
    if let Some(name) = &domain.name {
        domain_fields.push(json!({ "name": "name", "type": "string" }));
        domain_values.insert("name".into(), json!(name));
    }
    if let Some(version) = &domain.version {
        domain_fields.push(json!({ "name": "version", "type": "string" }));
        domain_values.insert("version".into(), json!(version));
    }
    if let Some(chain_id) = domain.chain_id {
        domain_fields.push(json!({ "name": "chainId", "type": "uint256" }));
        domain_values.insert("chainId".into(), json!(chain_id.to::<u64>()));
    }
    if let Some(contract) = domain.verifying_contract {
        domain_fields.push(json!({ "name": "verifyingContract", "type": "address" }));
        domain_values.insert("verifyingContract".into(), json!(contract));
    }
    if let Some(salt) = domain.salt {
        domain_fields.push(json!({ "name": "salt", "type": "bytes32" }));
        domain_values.insert("salt".into(), json!(salt));
    }
    let fields: Vec<Value> =
        fields.iter().map(|(name, ty)| json!({ "name": name, "type": ty })).collect();
    json!({
        "types": { "EIP712Domain": domain_fields, primary: fields },
        "primaryType": primary,
        "domain": domain_values,
        "message": message,
    })
}

/// `stream_openTerms`: the terms with the payer's next nonce, their typed data and digest, and
/// the deposit's permit likewise (when the token implements ERC-5267's `eip712Domain`).
pub(crate) async fn describe(
    provider: &alloy::providers::DynProvider,
    chain_id: u64,
    vault: Address,
    terms: Terms,
    deadline: u64,
) -> Result<Value, BillingError> {
    let internal = |e: alloy::contract::Error| BillingError::Internal(e.to_string());
    let nonce =
        StreamVault::new(vault, provider).nonces(terms.payer).call().await.map_err(internal)?;
    let open = terms.open_terms(nonce, deadline);
    let domain = vault_domain(chain_id, vault);
    let message = json!({
        "payee": open.payee,
        "token": open.token,
        "ratePerSecond": open.ratePerSecond.to_string(),
        "operator": open.operator,
        "maxRate": open.maxRate.to_string(),
        "maxTotal": open.maxTotal.to_string(),
        "amount": open.amount.to_string(),
        "nonce": open.nonce.to_string(),
        "deadline": open.deadline.to_string(),
    });
    let mut answer = json!({
        "terms": message.clone(),
        "termsDigest": open.eip712_signing_hash(&domain),
        "termsTypedData": typed_data(
            &domain,
            "OpenTerms",
            &[
                ("payee", "address"),
                ("token", "address"),
                ("ratePerSecond", "uint96"),
                ("operator", "address"),
                ("maxRate", "uint96"),
                ("maxTotal", "uint96"),
                ("amount", "uint128"),
                ("nonce", "uint256"),
                ("deadline", "uint256"),
            ],
            message,
        ),
    });
    // A token without ERC-5267 gets no permit: the payer approves the vault instead.
    if let Some((digest, typed)) = describe_permit(provider, vault, &terms, deadline).await? {
        answer["permitDigest"] = json!(digest);
        answer["permitTypedData"] = typed;
    }
    Ok(answer)
}

/// The deposit's ERC-2612 permit for `terms`, its digest and typed data, when the token
/// describes its domain (ERC-5267).
async fn describe_permit(
    provider: &alloy::providers::DynProvider,
    vault: Address,
    terms: &Terms,
    deadline: u64,
) -> Result<Option<(alloy::primitives::B256, Value)>, BillingError> {
    let internal = |e: alloy::contract::Error| BillingError::Internal(e.to_string());
    let token = MockUSDC::new(terms.token, provider);
    let Ok(d) = token.eip712Domain().call().await else { return Ok(None) };
    let permit_nonce = token.nonces(terms.payer).call().await.map_err(internal)?;
    // ERC-5267: bit i of `fields` says whether the i-th domain field is used.
    let used = |bit: u8| d.fields.0[0] & (1 << bit) != 0;
    let domain = Eip712Domain::new(
        used(0).then(|| Cow::Owned(d.name.clone())),
        used(1).then(|| Cow::Owned(d.version.clone())),
        used(2).then_some(d.chainId),
        used(3).then_some(d.verifyingContract),
        used(4).then_some(d.salt),
    );
    let permit = Permit {
        owner: terms.payer,
        spender: vault,
        value: U256::from(terms.amount),
        nonce: permit_nonce,
        deadline: U256::from(deadline),
    };
    let typed = typed_data(
        &domain,
        "Permit",
        &[
            ("owner", "address"),
            ("spender", "address"),
            ("value", "uint256"),
            ("nonce", "uint256"),
            ("deadline", "uint256"),
        ],
        json!({
            "owner": permit.owner,
            "spender": permit.spender,
            "value": permit.value.to_string(),
            "nonce": permit.nonce.to_string(),
            "deadline": permit.deadline.to_string(),
        }),
    );
    Ok(Some((permit.eip712_signing_hash(&domain), typed)))
}

/// The vault's `Permit` argument from a 65-byte `r ‖ s ‖ v` signature (none: v = 0).
pub(crate) fn permit_argument(
    signature: Option<&Bytes>,
) -> Result<StreamVault::Permit, BillingError> {
    let Some(signature) = signature else {
        return Ok(StreamVault::Permit { v: 0, r: B256::ZERO, s: B256::ZERO });
    };
    if signature.len() != 65 {
        return Err(BillingError::InvalidParams(
            "permitSignature must be 65 bytes (r ‖ s ‖ v)".into(),
        ));
    }
    let v = match signature[64] {
        v @ (27 | 28) => v,
        v @ (0 | 1) => v + 27,
        v => {
            return Err(BillingError::InvalidParams(format!("permitSignature has v = {v}")));
        }
    };
    Ok(StreamVault::Permit {
        v,
        r: B256::from_slice(&signature[..32]),
        s: B256::from_slice(&signature[32..64]),
    })
}

/// The stream `openFor` opened, from its receipt.
pub(crate) fn opened_stream(receipt: &TransactionReceipt) -> Option<U256> {
    receipt.inner.logs().iter().find_map(|log| {
        StreamVault::StreamOpened::decode_log_data(log.data()).ok().map(|e| e.streamId)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 65-byte signature becomes the vault's `(v, r, s)`, with v as 27/28; anything else is
    /// refused with -32602.
    #[test]
    fn permit_argument_splits_and_normalises() -> Result<(), Box<dyn std::error::Error>> {
        let mut raw = vec![0x11; 32];
        raw.extend([0x22; 32]);
        raw.push(1);
        let permit = permit_argument(Some(&raw.clone().into())).map_err(|e| e.to_string())?;
        assert_eq!(
            (permit.v, permit.r, permit.s),
            (28, B256::repeat_byte(0x11), B256::repeat_byte(0x22))
        );
        assert_eq!(permit_argument(None).map_err(|e| e.to_string())?.v, 0);
        raw.pop();
        let short = permit_argument(Some(&raw.into()));
        assert!(matches!(short, Err(BillingError::InvalidParams(_))), "{short:?}");
        Ok(())
    }
}
