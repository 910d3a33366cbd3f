//! The paymaster's JSON-RPC: ERC-7677 `pm_*` (public) and `paymaster_*` (admin). Errors become
//! JSON-RPC codes here and nowhere else.

use alloy::primitives::{Address, U64};
use jsonrpsee::{
    RpcModule,
    core::{RpcResult, async_trait},
    proc_macros::rpc,
    types::{ErrorObject, ErrorObjectOwned},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use settled_contracts::{UserOperation, rpc_codes as codes};

use crate::{
    error::PaymasterError,
    ledger::Usage,
    policy::SponsorshipPolicy,
    service::{Paymaster, PaymasterData, PaymasterStatus, StubData},
};

/// The JSON-RPC code and data of `error`.
pub(crate) fn code_and_data(error: &PaymasterError) -> (i32, Option<serde_json::Value>) {
    use PaymasterError as E;
    match error {
        E::InvalidOp(_) | E::InvalidParams(_) | E::MissingContext | E::UnknownPolicy(_) => {
            (codes::INVALID_PARAMS, None)
        }
        E::L1FeeNotCovered { needed, l1_fee_wei, .. } => (
            codes::INVALID_PARAMS,
            Some(
                json!({ "preVerificationGasNeeded": U64::from(*needed), "l1FeeWei": l1_fee_wei.to_string() }),
            ),
        ),
        E::UnsupportedChain { requested, served } => (
            codes::INVALID_PARAMS,
            Some(
                json!({ "chainId": U64::from(*requested), "supportedChainId": U64::from(*served) }),
            ),
        ),
        E::UnsupportedEntryPoint(entry_point) => {
            (codes::INVALID_PARAMS, Some(json!({ "entryPoint": entry_point })))
        }
        E::Rejected { policy, rejection } => (
            codes::REJECTED_BY_PAYMASTER,
            Some(json!({
                "policyId": policy,
                "rule": rejection.rule.as_str(),
                "capExhausted": rejection.rule.is_cap(),
                "detail": rejection.detail,
            })),
        ),
        E::Simulation(settled_sim::SimError::RuleViolations(violations)) => (
            codes::BANNED_OPCODE_OR_STORAGE,
            Some(json!(
                violations
                    .iter()
                    .map(|v| json!({
                        "rule": v.rule.id(),
                        "entity": v.entity.to_string(),
                        "address": v.address,
                        "detail": v.detail,
                    }))
                    .collect::<Vec<_>>()
            )),
        ),
        E::Simulation(_) => (codes::REJECTED_BY_ENTRY_POINT, None),
        E::ExecutionReverts { reason } => {
            (codes::EXECUTION_REVERTED, Some(json!({ "reason": reason })))
        }
        E::DepositTooLow { paymaster, .. } => {
            (codes::PAYMASTER_DEPOSIT_TOO_LOW, Some(json!({ "paymaster": paymaster })))
        }
        E::ChainUnavailable(_) | E::Ledger(_) | E::Internal(_) => (codes::INTERNAL, None),
    }
}

impl From<PaymasterError> for ErrorObjectOwned {
    fn from(error: PaymasterError) -> Self {
        let (code, data) = code_and_data(&error);
        ErrorObject::owned(code, error.to_string(), data)
    }
}

/// ERC-7677: the paymaster web service wallets call.
#[rpc(server, namespace = "pm")]
pub trait PaymasterServiceApi {
    /// Stub paymaster fields for gas estimation.
    #[method(name = "getPaymasterStubData")]
    async fn get_paymaster_stub_data(
        &self,
        op: UserOperation,
        entry_point: Address,
        chain_id: U64,
        sponsorship: Option<serde_json::Value>,
    ) -> RpcResult<StubData>;

    /// Signed paymaster fields for submission.
    #[method(name = "getPaymasterData")]
    async fn get_paymaster_data(
        &self,
        op: UserOperation,
        entry_point: Address,
        chain_id: U64,
        sponsorship: Option<serde_json::Value>,
    ) -> RpcResult<PaymasterData>;
}

/// `paymaster_usage`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    /// The sender's usage this period, if a sender was named.
    pub sender: Option<Usage>,
    /// The customer's usage this period, if a customer was named.
    pub customer: Option<Usage>,
}

/// The operator's controls: policies at run time, status, usage.
#[rpc(server, namespace = "paymaster")]
pub trait PaymasterAdminApi {
    /// Adds or replaces a policy.
    #[method(name = "setPolicy")]
    fn set_policy(&self, policy: SponsorshipPolicy) -> RpcResult<bool>;
    /// Removes a policy; whether it existed.
    #[method(name = "removePolicy")]
    fn remove_policy(&self, id: String) -> RpcResult<bool>;
    /// Every policy in force.
    #[method(name = "policies")]
    fn policies(&self) -> RpcResult<Vec<SponsorshipPolicy>>;
    /// Deposits, stakes, reservations, totals.
    #[method(name = "status")]
    async fn status(&self) -> RpcResult<PaymasterStatus>;
    /// A sender's and/or customer's usage under a policy this period.
    #[method(name = "usage")]
    async fn usage(
        &self,
        policy_id: String,
        sender: Option<Address>,
        customer: Option<String>,
    ) -> RpcResult<UsageReport>;
}

#[async_trait]
impl PaymasterServiceApiServer for Paymaster {
    async fn get_paymaster_stub_data(
        &self,
        op: UserOperation,
        entry_point: Address,
        chain_id: U64,
        sponsorship: Option<serde_json::Value>,
    ) -> RpcResult<StubData> {
        Ok(self.stub_data(op, entry_point, chain_id.to(), sponsorship).await?)
    }

    async fn get_paymaster_data(
        &self,
        op: UserOperation,
        entry_point: Address,
        chain_id: U64,
        sponsorship: Option<serde_json::Value>,
    ) -> RpcResult<PaymasterData> {
        Ok(self.paymaster_data(op, entry_point, chain_id.to(), sponsorship).await?)
    }
}

#[async_trait]
impl PaymasterAdminApiServer for Paymaster {
    fn set_policy(&self, policy: SponsorshipPolicy) -> RpcResult<bool> {
        self.set_policy(policy)?;
        Ok(true)
    }

    fn remove_policy(&self, id: String) -> RpcResult<bool> {
        Ok(Paymaster::remove_policy(self, &id)?)
    }

    fn policies(&self) -> RpcResult<Vec<SponsorshipPolicy>> {
        Ok(Paymaster::policies(self)?)
    }

    async fn status(&self) -> RpcResult<PaymasterStatus> {
        Ok(Paymaster::status(self).await?)
    }

    async fn usage(
        &self,
        policy_id: String,
        sender: Option<Address>,
        customer: Option<String>,
    ) -> RpcResult<UsageReport> {
        let (sender, customer) =
            Paymaster::usage(self, &policy_id, sender, customer.as_deref()).await?;
        Ok(UsageReport { sender, customer })
    }
}

/// The paymaster's RPC methods: `pm_*` always, `paymaster_*` when `admin`.
pub fn paymaster_module(
    paymaster: Paymaster,
    admin: bool,
) -> Result<RpcModule<()>, PaymasterError> {
    let mut module = RpcModule::new(());
    let merge = |e: jsonrpsee::core::RegisterMethodError| PaymasterError::Internal(e.to_string());
    module.merge(PaymasterServiceApiServer::into_rpc(paymaster.clone())).map_err(merge)?;
    if admin {
        module.merge(PaymasterAdminApiServer::into_rpc(paymaster)).map_err(merge)?;
    }
    Ok(module)
}

#[cfg(test)]
mod tests {
    use alloy::primitives::{Bytes, U256};
    use settled_contracts::InvalidUserOperation;
    use settled_sim::SimError;

    use super::*;
    use crate::policy::{PolicyRule, Rejection};

    /// Every error variant and the code a client sees.
    #[test]
    fn error_codes_table() {
        let rejected = |rule| PaymasterError::Rejected {
            policy: "p".into(),
            rejection: Rejection::new(rule, "x"),
        };
        let cases: Vec<(PaymasterError, i32)> = vec![
            (InvalidUserOperation("x".into()).into(), codes::INVALID_PARAMS),
            (PaymasterError::InvalidParams("x".into()), codes::INVALID_PARAMS),
            (PaymasterError::UnsupportedChain { requested: 1, served: 2 }, codes::INVALID_PARAMS),
            (PaymasterError::UnsupportedEntryPoint(Address::ZERO), codes::INVALID_PARAMS),
            (PaymasterError::MissingContext, codes::INVALID_PARAMS),
            (
                PaymasterError::L1FeeNotCovered {
                    pre_verification_gas: U256::from(1),
                    needed: 2,
                    l1_fee_wei: 3,
                },
                codes::INVALID_PARAMS,
            ),
            (PaymasterError::UnknownPolicy("p".into()), codes::INVALID_PARAMS),
            (rejected(PolicyRule::SenderOps), codes::REJECTED_BY_PAYMASTER),
            (rejected(PolicyRule::CallTarget), codes::REJECTED_BY_PAYMASTER),
            (
                PaymasterError::Simulation(SimError::RuleViolations(vec![])),
                codes::BANNED_OPCODE_OR_STORAGE,
            ),
            (
                PaymasterError::Simulation(SimError::Rejected {
                    reason: "AA23".into(),
                    inner: None,
                }),
                codes::REJECTED_BY_ENTRY_POINT,
            ),
            (PaymasterError::ExecutionReverts { reason: "0x".into() }, codes::EXECUTION_REVERTED),
            (
                PaymasterError::DepositTooLow { paymaster: Address::ZERO, needed: U256::from(1) },
                codes::PAYMASTER_DEPOSIT_TOO_LOW,
            ),
            (crate::ledger::LedgerError("x".into()).into(), codes::INTERNAL),
            (PaymasterError::Internal("x".into()), codes::INTERNAL),
            (PaymasterError::ChainUnavailable("connection refused".into()), codes::INTERNAL),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let object = ErrorObjectOwned::from(error);
            assert_eq!(object.code(), code, "{message}");
            assert_eq!(object.message(), message);
        }
        let cap = ErrorObjectOwned::from(rejected(PolicyRule::CustomerWei));
        let data: serde_json::Value =
            serde_json::from_str(cap.data().map(|d| d.get()).unwrap_or("null")).unwrap_or_default();
        assert_eq!(data["rule"], "maxWeiPerCustomer");
        assert_eq!(data["capExhausted"], true);
        let _ = Bytes::new();
    }
}
