//! JSON-RPC as a wallet SDK speaks it to a settled node: raw calls with the error's code,
//! estimation, submission, receipts.

use std::time::Duration;

use alloy::primitives::{B256, U256};
use serde_json::{Value, json};
use settled_contracts::{EntryPointVersion, PackedUserOperation, UserOperation};

use crate::TestResult;

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
