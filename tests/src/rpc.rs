//! JSON-RPC as a wallet SDK speaks it to a settled node: raw calls with the error's code,
//! estimation, submission, receipts.

use std::time::Duration;

use alloy::primitives::{Address, B256, Bytes, U256};
use serde_json::{Value, json};
use settled_contracts::{EntryPointVersion, PackedUserOperation, UserOperation};

use alloy::signers::local::PrivateKeySigner;

use crate::{TestChain, TestResult, unestimated_op};

/// A JSON-RPC answer: the result, or the error's code and message.
pub type RpcAnswer = Result<Value, (i64, String)>;

/// Calls `method` at `url`.
pub async fn call_url(url: &str, method: &str, params: Value) -> TestResult<RpcAnswer> {
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    let client = alloy::transports::http::reqwest::Client::new();
    let response: Value = client.post(url).json(&body).send().await?.json().await?;
    if let Some(error) = response.get("error") {
        let code = error["code"].as_i64().unwrap_or_default();
        let message = error["message"].as_str().unwrap_or_default().to_string();
        return Ok(Err((code, message)));
    }
    Ok(Ok(response["result"].clone()))
}

/// Mines a block on `miner` every 100 ms (up to 30 s) until the node at `url` reports batch
/// `batch` committed; its last `settlement_getBatch` stage either way.
pub async fn mine_until_committed(
    url: &str,
    miner: &alloy::providers::DynProvider,
    batch: u64,
) -> TestResult<Value> {
    use alloy::providers::ext::AnvilApi;
    let mut stage = Value::Null;
    for _ in 0..300 {
        miner.anvil_mine(Some(1), None).await?;
        if let Ok(answer) = call_url(url, "settlement_getBatch", json!([batch])).await? {
            stage = answer["stage"].clone();
            if stage["stage"] == json!("committed") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(stage)
}

/// Calls `method` at `url` with the billing API key `token` (`Authorization: Bearer`).
pub async fn call_with_key(
    url: &str,
    token: &str,
    method: &str,
    params: Value,
) -> TestResult<RpcAnswer> {
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    let client = alloy::transports::http::reqwest::Client::new();
    let response: Value =
        client.post(url).bearer_auth(token).json(&body).send().await?.json().await?;
    if let Some(error) = response.get("error") {
        let code = error["code"].as_i64().unwrap_or_default();
        let message = error["message"].as_str().unwrap_or_default().to_string();
        return Ok(Err((code, message)));
    }
    Ok(Ok(response["result"].clone()))
}

/// A billing API key named `vendor` for bearer `token`, seeing every payee.
pub fn vendor_key(token: &str) -> settled_streams::ApiKey {
    settled_streams::ApiKey {
        name: "vendor".into(),
        keccak256: alloy::primitives::keccak256(token.as_bytes()),
        payees: vec![],
        all: true,
    }
}

/// `op` with the gas limits the node estimates for it (`eth_estimateUserOperationGas`), the
/// paymaster's too when it has one.
pub async fn with_estimated_limits(
    url: &str,
    version: EntryPointVersion,
    mut op: PackedUserOperation,
) -> TestResult<PackedUserOperation> {
    let estimate = call_url(
        url,
        "eth_estimateUserOperationGas",
        json!([UserOperation::unpack(&op, None), version.canonical_address()]),
    )
    .await?
    .map_err(|e| format!("estimate failed: {e:?}"))?;
    let gas = |name: &str| -> TestResult<u128> {
        let value: U256 = serde_json::from_value(estimate[name].clone())
            .map_err(|e| format!("{name} in {estimate}: {e}"))?;
        Ok(value.to())
    };
    op.set_account_gas_limits(gas("verificationGasLimit")?, gas("callGasLimit")?);
    op.preVerificationGas = U256::from(gas("preVerificationGas")?);
    if op.paymaster().is_some() {
        op.set_paymaster_gas_limits(
            gas("paymasterVerificationGasLimit")?,
            gas("paymasterPostOpGasLimit")?,
        );
    }
    Ok(op)
}

/// `eth_sendUserOperation` of `op` to `version`'s EntryPoint.
pub async fn send_at(
    url: &str,
    version: EntryPointVersion,
    op: &PackedUserOperation,
) -> TestResult<RpcAnswer> {
    call_url(
        url,
        "eth_sendUserOperation",
        json!([UserOperation::unpack(op, None), version.canonical_address()]),
    )
    .await
}

/// Polls `eth_getUserOperationReceipt` for up to 10 s.
pub async fn wait_for_receipt_at(url: &str, hash: B256) -> TestResult<Value> {
    for _ in 0..100 {
        let receipt = call_url(url, "eth_getUserOperationReceipt", json!([hash])).await?;
        match receipt {
            Ok(Value::Null) => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(receipt) => return Ok(receipt),
            Err(error) => return Err(format!("receipt: {error:?}").into()),
        }
    }
    Err(format!("no receipt for {hash} within 10 s").into())
}

/// An address in a JSON answer.
pub fn address(value: &Value) -> TestResult<Address> {
    Ok(serde_json::from_value(value.clone())?)
}

/// A hex quantity in a JSON answer.
pub fn quantity(value: &Value) -> TestResult<u128> {
    let value: U256 = serde_json::from_value(value.clone())?;
    Ok(value.to())
}

/// Puts `pm_getPaymasterStubData`'s answer (paymaster, its gas limits, stub paymasterData) into
/// `op`.
pub fn apply_paymaster_stub(op: &mut PackedUserOperation, stub: &Value) -> TestResult {
    let mut data = address(&stub["paymaster"])?.to_vec();
    data.extend_from_slice(&[0; 32]);
    op.paymasterAndData = data.into();
    op.set_paymaster_gas_limits(
        quantity(&stub["paymasterVerificationGasLimit"])?,
        quantity(&stub["paymasterPostOpGasLimit"])?,
    );
    let stub_data: Bytes = serde_json::from_value(stub["paymasterData"].clone())?;
    let mut data = op.paymasterAndData[..52].to_vec();
    data.extend_from_slice(&stub_data);
    op.paymasterAndData = data.into();
    Ok(())
}

/// Replaces `op`'s paymasterData with the signed one from `pm_getPaymasterData`.
pub fn apply_paymaster_data(op: &mut PackedUserOperation, signed: &Value) -> TestResult {
    let data: Bytes = serde_json::from_value(signed["paymasterData"].clone())?;
    assert_eq!(address(&signed["paymaster"])?, op.paymaster().ok_or("no paymaster")?);
    let mut full = op.paymasterAndData[..52].to_vec();
    full.extend_from_slice(&data);
    op.paymasterAndData = full.into();
    Ok(())
}

/// The ERC-7677 flow a wallet SDK runs for `op` under sponsorship `policy` at the node `url`:
/// stub data, `eth_estimateUserOperationGas`, then the signed paymaster data. The op still needs
/// the account's signature.
pub async fn sponsor(
    url: &str,
    chain_id: u64,
    version: EntryPointVersion,
    mut op: PackedUserOperation,
    policy: &str,
) -> TestResult<PackedUserOperation> {
    let params = |op: &PackedUserOperation| {
        json!([
            UserOperation::unpack(op, None),
            version.canonical_address(),
            format!("{chain_id:#x}"),
            { "policyId": policy },
        ])
    };
    let stub = call_url(url, "pm_getPaymasterStubData", params(&op))
        .await?
        .map_err(|e| format!("pm_getPaymasterStubData: {e:?}"))?;
    apply_paymaster_stub(&mut op, &stub)?;
    let mut op = with_estimated_limits(url, version, op).await?;
    let signed = call_url(url, "pm_getPaymasterData", params(&op))
        .await?
        .map_err(|e| format!("pm_getPaymasterData: {e:?}"))?;
    apply_paymaster_data(&mut op, &signed)?;
    Ok(op)
}

/// The creation of `owner`'s brand-new account, sponsored by `paymaster` (one that pays for
/// anything), estimated through the node at `url` and signed.
pub async fn sponsored_creation_op(
    url: &str,
    chain: &TestChain,
    version: EntryPointVersion,
    paymaster: Address,
    owner: &PrivateKeySigner,
) -> TestResult<PackedUserOperation> {
    let (sender, init_code) = chain.simple_account(version, owner.address()).await?;
    let mut op = unestimated_op(sender, 0, init_code, Bytes::new());
    op.paymasterAndData = paymaster.to_vec().into();
    op.set_paymaster_gas_limits(0, 0);
    let mut op = with_estimated_limits(url, version, op).await?;
    op.signature = chain.sign_op(version, owner, &op).await?;
    Ok(op)
}

/// `address`'s entry in `debug_bundler_dumpReputation` at `url` (null: not tracked).
pub async fn reputation_at(
    url: &str,
    version: EntryPointVersion,
    address: Address,
) -> TestResult<Value> {
    let dump = call_url(url, "debug_bundler_dumpReputation", json!([version.canonical_address()]))
        .await?
        .map_err(|e| format!("{e:?}"))?;
    let found = dump.as_array().and_then(|entries| {
        entries
            .iter()
            .find(|e| serde_json::from_value::<Address>(e["address"].clone()).ok() == Some(address))
    });
    Ok(found.cloned().unwrap_or(Value::Null))
}

/// A new SimpleAccount funded with 0.1 ETH by dev account `funder` for its prefund, and its
/// creation op (a zero USDC transfer to itself) estimated through the node at `url` and signed.
pub async fn creation_op(
    chain: &TestChain,
    url: &str,
    version: EntryPointVersion,
    funder: usize,
) -> TestResult<PackedUserOperation> {
    let owner = PrivateKeySigner::random();
    let (sender, init_code) = chain.simple_account(version, owner.address()).await?;
    let fund = alloy::rpc::types::TransactionRequest::default()
        .to(sender)
        .value(U256::from(10u128.pow(17)))
        .from(chain.account(funder)?);
    alloy::providers::Provider::send_transaction(chain.provider(), fund)
        .await?
        .get_receipt()
        .await?;
    let call_data = crate::usdc_transfer(version, chain.deployment().usdc, sender, 0);
    let op = crate::unestimated_op(sender, 0, init_code, call_data);
    let mut op = with_estimated_limits(url, version, op).await?;
    op.signature = chain.sign_op(version, &owner, &op).await?;
    Ok(op)
}
