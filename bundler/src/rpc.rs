//! The ERC-7769 RPC edge: `eth_*` UserOperation methods, the `debug_bundler_*` namespace, and
//! the one place [`BundlerError`]s become JSON-RPC error codes.

use alloy::{
    primitives::{Address, B256, U64, U256},
    rpc::types::state::StateOverride,
};
use jsonrpsee::{
    RpcModule,
    core::{RpcResult, async_trait},
    proc_macros::rpc,
    types::{ErrorObject, ErrorObjectOwned},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use settled_sim::GasEstimate;

use crate::{
    error::BundlerError,
    pool::PoolError,
    reputation::{ReputationCounts, ReputationStatus},
    service::{
        Bundler, BundlingMode, GasPrices, StakeStatus, UserOperationByHash, UserOperationReceipt,
    },
};
use settled_contracts::{ChecksummedAddress, UserOperation};

/// ERC-7769 error codes (shared with the paymaster's RPC).
pub use settled_contracts::rpc_codes as codes;

/// The ERC-7769 code of `error` (for metrics labels).
pub(crate) fn error_code(error: &BundlerError) -> i32 {
    code_and_data(error).0
}

fn code_and_data(error: &BundlerError) -> (i32, Option<serde_json::Value>) {
    use BundlerError as E;
    match error {
        E::Mempool(PoolError::SenderIsEntity(_) | PoolError::EntityIsSender { .. }) => {
            (codes::BANNED_OPCODE_OR_STORAGE, Some(json!({ "rule": "STO-040" })))
        }
        E::InvalidOp(_) | E::InvalidField(_) | E::UnsupportedEntryPoint(_) | E::Mempool(_) => {
            (codes::INVALID_PARAMS, None)
        }
        E::EntryPointRejected { paymaster: Some(paymaster), .. } => {
            (codes::REJECTED_BY_PAYMASTER, Some(json!({ "paymaster": paymaster })))
        }
        E::EntryPointRejected { paymaster: None, .. } => (codes::REJECTED_BY_ENTRY_POINT, None),
        E::RuleViolations(violations) => (
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
        E::OutOfTimeRange { valid_after, valid_until, paymaster } => (
            codes::OUT_OF_TIME_RANGE,
            Some(json!({
                "validAfter": U256::from(*valid_after),
                "validUntil": U256::from(*valid_until),
                "paymaster": paymaster,
            })),
        ),
        E::Reputation { entity, address, .. } => {
            (codes::THROTTLED_OR_BANNED, Some(json!({ *entity: address })))
        }
        E::StakeTooLow { entity, address, minimum_stake, minimum_unstake_delay, .. } => (
            codes::STAKE_TOO_LOW,
            Some(json!({
                *entity: address,
                "minimumStake": minimum_stake,
                "minimumUnstakeDelay": U256::from(*minimum_unstake_delay),
            })),
        ),
        E::InvalidSignature => (codes::INVALID_SIGNATURE, None),
        E::PaymasterDepositTooLow(paymaster) => {
            (codes::PAYMASTER_DEPOSIT_TOO_LOW, Some(json!({ "paymaster": paymaster })))
        }
        E::ExecutionReverted { reason } => {
            (codes::EXECUTION_REVERTED, Some(json!({ "reason": reason })))
        }
        E::Internal(_) | E::NotLeading(_) => (codes::INTERNAL, None),
        E::Relayed { code, data, .. } => (*code, data.clone()),
    }
}

/// What the node that took `error`'s op answers its client: the leader's refusal as its own
/// edge would give it.
pub(crate) fn verdict_of(error: &BundlerError) -> crate::store::Verdict {
    let (code, data) = code_and_data(error);
    crate::store::Verdict::Refused { code, message: error.to_string(), data }
}

impl From<BundlerError> for ErrorObjectOwned {
    fn from(error: BundlerError) -> Self {
        let (code, data) = code_and_data(&error);
        ErrorObject::owned(code, error.to_string(), data)
    }
}

/// `eth_estimateUserOperationGas`'s answer (ERC-7769; `paymasterPostOpGasLimit` too, when the
/// op has a paymaster).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GasEstimateResponse {
    /// `preVerificationGas`.
    pub pre_verification_gas: U256,
    /// `verificationGasLimit`.
    pub verification_gas_limit: U256,
    /// `callGasLimit`.
    pub call_gas_limit: U256,
    /// `paymasterVerificationGasLimit` (ops with a paymaster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paymaster_verification_gas_limit: Option<U256>,
    /// `paymasterPostOpGasLimit` (ops with a paymaster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paymaster_post_op_gas_limit: Option<U256>,
}

impl From<GasEstimate> for GasEstimateResponse {
    fn from(e: GasEstimate) -> Self {
        Self {
            pre_verification_gas: U256::from(e.pre_verification_gas),
            verification_gas_limit: U256::from(e.verification_gas_limit),
            call_gas_limit: U256::from(e.call_gas_limit),
            paymaster_verification_gas_limit: e.paymaster_verification_gas_limit.map(U256::from),
            paymaster_post_op_gas_limit: e.paymaster_post_op_gas_limit.map(U256::from),
        }
    }
}

/// A `userOpHash` parameter: 32 bytes of hex. Anything else is -32602 in the reference
/// bundler's words (clients match on them).
fn user_op_hash(text: &str) -> Result<B256, BundlerError> {
    let hex = text.strip_prefix("0x").filter(|h| h.len() == 64);
    hex.and_then(|h| h.parse().ok())
        .ok_or_else(|| BundlerError::InvalidField("Missing/invalid userOpHash".into()))
}

/// The ERC-7769 `eth` methods (`eth_chainId` is the node's).
#[rpc(server, namespace = "eth")]
pub trait UserOperationApi {
    /// Validates `op` and adds it to the mempool; its `userOpHash`.
    #[method(name = "sendUserOperation")]
    async fn send_user_operation(&self, op: UserOperation, entry_point: Address)
    -> RpcResult<B256>;

    /// Gas limits for `op`.
    #[method(name = "estimateUserOperationGas")]
    async fn estimate_user_operation_gas(
        &self,
        op: UserOperation,
        entry_point: Address,
        state_override: Option<StateOverride>,
    ) -> RpcResult<GasEstimateResponse>;

    /// The op with `hash`, pending or mined.
    #[method(name = "getUserOperationByHash")]
    async fn get_user_operation_by_hash(
        &self,
        hash: String,
    ) -> RpcResult<Option<UserOperationByHash>>;

    /// The receipt of the mined op with `hash`.
    #[method(name = "getUserOperationReceipt")]
    async fn get_user_operation_receipt(
        &self,
        hash: String,
    ) -> RpcResult<Option<UserOperationReceipt>>;

    /// EntryPoints served, the preferred first (EIP-55 checksummed).
    #[method(name = "supportedEntryPoints")]
    fn supported_entry_points(&self) -> RpcResult<Vec<ChecksummedAddress>>;
}

/// settled's own bundler helpers.
#[rpc(server, namespace = "settled")]
pub trait BundlerExtrasApi {
    /// Fees for a UserOperation: slow, standard, fast. Also served as
    /// `pimlico_getUserOperationGasPrice`, the name permissionless' `createPimlicoClient` asks
    /// for (same answer shape), so it works unchanged against settled.
    #[method(name = "getUserOperationGasPrice", aliases = ["pimlico_getUserOperationGasPrice"])]
    async fn get_user_operation_gas_price(&self) -> RpcResult<GasPrices>;
}

#[async_trait]
impl BundlerExtrasApiServer for Bundler {
    async fn get_user_operation_gas_price(&self) -> RpcResult<GasPrices> {
        Ok(self.gas_prices().await?)
    }
}

/// One entity's reputation as `debug_bundler_setReputation` takes it and `dumpReputation`
/// returns it (`status` only in the latter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReputationEntry {
    /// The entity.
    pub address: Address,
    /// `opsSeen`.
    pub ops_seen: U64,
    /// `opsIncluded`.
    pub ops_included: U64,
    /// `ok`, `throttled` or `banned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ReputationStatus>,
}

/// ERC-7769's `debug_bundler_*` methods (served only with `--rpc.debug`).
#[rpc(server, namespace = "debug")]
pub trait BundlerDebugApi {
    /// Clears the mempool and reputation.
    #[method(name = "bundler_clearState")]
    async fn clear_state(&self) -> RpcResult<&'static str>;

    /// Clears the mempool.
    #[method(name = "bundler_clearMempool")]
    async fn clear_mempool(&self) -> RpcResult<&'static str>;

    /// The mempool of `entry_point`.
    #[method(name = "bundler_dumpMempool")]
    fn dump_mempool(&self, entry_point: Address) -> RpcResult<Vec<UserOperation>>;

    /// Sends a bundle now and waits for it; its transaction hash, or `0x` (empty data, as
    /// `eth_getCode` answers for no code) when the mempool had nothing to bundle.
    #[method(name = "bundler_sendBundleNow")]
    async fn send_bundle_now(&self) -> RpcResult<String>;

    /// `auto` or `manual`.
    #[method(name = "bundler_setBundlingMode")]
    fn set_bundling_mode(&self, mode: BundlingMode) -> RpcResult<&'static str>;

    /// Puts ops in the mempool without validating them (for `entry_point`, by default the
    /// preferred one).
    #[method(name = "bundler_addUserOps")]
    async fn add_user_ops(
        &self,
        ops: Vec<UserOperation>,
        entry_point: Option<Address>,
    ) -> RpcResult<&'static str>;

    /// Sets entities' reputation counters for `entry_point`.
    #[method(name = "bundler_setReputation")]
    async fn set_reputation(
        &self,
        entries: Vec<ReputationEntry>,
        entry_point: Address,
    ) -> RpcResult<&'static str>;

    /// Every entity's reputation for `entry_point`.
    #[method(name = "bundler_dumpReputation")]
    fn dump_reputation(&self, entry_point: Address) -> RpcResult<Vec<ReputationEntry>>;

    /// Forgets every reputation counter.
    #[method(name = "bundler_clearReputation")]
    async fn clear_reputation(&self) -> RpcResult<&'static str>;

    /// `address`'s stake at `entry_point`.
    #[method(name = "bundler_getStakeStatus")]
    async fn get_stake_status(
        &self,
        address: Address,
        entry_point: Address,
    ) -> RpcResult<StakeStatus>;
}

#[async_trait]
impl UserOperationApiServer for Bundler {
    async fn send_user_operation(
        &self,
        op: UserOperation,
        entry_point: Address,
    ) -> RpcResult<B256> {
        Ok(self.send(op, entry_point).await?)
    }

    async fn estimate_user_operation_gas(
        &self,
        op: UserOperation,
        entry_point: Address,
        state_override: Option<StateOverride>,
    ) -> RpcResult<GasEstimateResponse> {
        Ok(self.estimate(op, entry_point, state_override).await?.into())
    }

    async fn get_user_operation_by_hash(
        &self,
        hash: String,
    ) -> RpcResult<Option<UserOperationByHash>> {
        Ok(self.op_by_hash(user_op_hash(&hash)?).await?)
    }

    async fn get_user_operation_receipt(
        &self,
        hash: String,
    ) -> RpcResult<Option<UserOperationReceipt>> {
        Ok(self.receipt(user_op_hash(&hash)?).await?)
    }

    fn supported_entry_points(&self) -> RpcResult<Vec<ChecksummedAddress>> {
        Ok(Bundler::supported_entry_points(self).into_iter().map(ChecksummedAddress).collect())
    }
}

#[async_trait]
impl BundlerDebugApiServer for Bundler {
    async fn clear_state(&self) -> RpcResult<&'static str> {
        Bundler::clear_mempool(self).await?;
        Bundler::clear_reputation(self).await?;
        Ok("ok")
    }

    async fn clear_mempool(&self) -> RpcResult<&'static str> {
        Bundler::clear_mempool(self).await?;
        Ok("ok")
    }

    fn dump_mempool(&self, entry_point: Address) -> RpcResult<Vec<UserOperation>> {
        Ok(Bundler::dump_mempool(self, entry_point)?)
    }

    async fn send_bundle_now(&self) -> RpcResult<String> {
        let sent = self.send_bundles().await?.last().copied();
        Ok(sent.map_or_else(|| "0x".to_owned(), |hash| hash.to_string()))
    }

    fn set_bundling_mode(&self, mode: BundlingMode) -> RpcResult<&'static str> {
        self.set_mode(mode);
        Ok("ok")
    }

    async fn add_user_ops(
        &self,
        ops: Vec<UserOperation>,
        entry_point: Option<Address>,
    ) -> RpcResult<&'static str> {
        let entry_point = entry_point
            .or_else(|| self.supported_entry_points().first().copied())
            .unwrap_or_default();
        self.add_unvalidated(ops, entry_point).await?;
        Ok("ok")
    }

    async fn set_reputation(
        &self,
        entries: Vec<ReputationEntry>,
        entry_point: Address,
    ) -> RpcResult<&'static str> {
        let entries: Vec<_> = entries
            .iter()
            .map(|e| {
                let counts = ReputationCounts {
                    ops_seen: e.ops_seen.to(),
                    ops_included: e.ops_included.to(),
                };
                (e.address, counts)
            })
            .collect();
        Bundler::set_reputation(self, &entries, entry_point).await?;
        Ok("ok")
    }

    fn dump_reputation(&self, entry_point: Address) -> RpcResult<Vec<ReputationEntry>> {
        Ok(Bundler::dump_reputation(self, entry_point)?
            .into_iter()
            .map(|(address, counts, status)| ReputationEntry {
                address,
                ops_seen: U64::from(counts.ops_seen),
                ops_included: U64::from(counts.ops_included),
                status: Some(status),
            })
            .collect())
    }

    async fn clear_reputation(&self) -> RpcResult<&'static str> {
        Bundler::clear_reputation(self).await?;
        Ok("ok")
    }

    async fn get_stake_status(
        &self,
        address: Address,
        entry_point: Address,
    ) -> RpcResult<StakeStatus> {
        Ok(self.stake_status(address, entry_point).await?)
    }
}

/// The bundler's RPC methods: the `eth` ones, and the `debug_bundler_*` ones when `debug`.
pub fn bundler_module(bundler: Bundler, debug: bool) -> Result<RpcModule<()>, BundlerError> {
    let mut module = RpcModule::new(());
    let merge = |e: jsonrpsee::core::RegisterMethodError| BundlerError::Internal(e.to_string());
    module.merge(UserOperationApiServer::into_rpc(bundler.clone())).map_err(merge)?;
    module.merge(BundlerExtrasApiServer::into_rpc(bundler.clone())).map_err(merge)?;
    if debug {
        module.merge(BundlerDebugApiServer::into_rpc(bundler)).map_err(merge)?;
    }
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::*;
    use settled_sim::{Entity, Rule, RuleViolation};

    /// Every error the bundler can answer, with its ERC-7769 code.
    #[test]
    fn every_error_has_its_code() {
        let a = Address::repeat_byte(0xaa);
        let table: Vec<(BundlerError, i32)> = vec![
            (settled_contracts::InvalidUserOperation("x".into()).into(), codes::INVALID_PARAMS),
            (BundlerError::InvalidField("x".into()), codes::INVALID_PARAMS),
            (BundlerError::UnsupportedEntryPoint(a), codes::INVALID_PARAMS),
            (PoolError::Duplicate(B256::ZERO).into(), codes::INVALID_PARAMS),
            (PoolError::SenderLimit { sender: a, allowed: 4 }.into(), codes::INVALID_PARAMS),
            (
                BundlerError::from_pool(
                    PoolError::SenderLimit { sender: a, allowed: 4 },
                    &Default::default(),
                ),
                codes::STAKE_TOO_LOW,
            ),
            (
                BundlerError::from_pool(
                    PoolError::EntityLimit { entity: "factory", address: a, allowed: 10 },
                    &Default::default(),
                ),
                codes::STAKE_TOO_LOW,
            ),
            (PoolError::SenderIsEntity(a).into(), codes::BANNED_OPCODE_OR_STORAGE),
            (
                PoolError::EntityIsSender { entity: "Paymaster", address: a }.into(),
                codes::BANNED_OPCODE_OR_STORAGE,
            ),
            (
                BundlerError::EntryPointRejected { reason: "AA21".into(), paymaster: None },
                codes::REJECTED_BY_ENTRY_POINT,
            ),
            (
                BundlerError::EntryPointRejected { reason: "AA33".into(), paymaster: Some(a) },
                codes::REJECTED_BY_PAYMASTER,
            ),
            (
                BundlerError::RuleViolations(vec![RuleViolation {
                    rule: Rule::Op011,
                    entity: Entity::Account,
                    address: a,
                    detail: "x".into(),
                }]),
                codes::BANNED_OPCODE_OR_STORAGE,
            ),
            (
                BundlerError::OutOfTimeRange { valid_after: 1, valid_until: 2, paymaster: None },
                codes::OUT_OF_TIME_RANGE,
            ),
            (
                BundlerError::Reputation { entity: "paymaster", address: a, status: "banned" },
                codes::THROTTLED_OR_BANNED,
            ),
            (
                BundlerError::StakeTooLow {
                    reason: "x".into(),
                    entity: "paymaster",
                    address: a,
                    minimum_stake: U256::from(1),
                    minimum_unstake_delay: 1,
                },
                codes::STAKE_TOO_LOW,
            ),
            (BundlerError::InvalidSignature, codes::INVALID_SIGNATURE),
            (BundlerError::PaymasterDepositTooLow(a), codes::PAYMASTER_DEPOSIT_TOO_LOW),
            (
                BundlerError::ExecutionReverted { reason: Default::default() },
                codes::EXECUTION_REVERTED,
            ),
            (BundlerError::Internal("x".into()), codes::INTERNAL),
            (BundlerError::NotLeading("x".into()), codes::INTERNAL),
            (
                BundlerError::Relayed {
                    code: codes::INVALID_SIGNATURE,
                    message: "x".into(),
                    data: None,
                },
                codes::INVALID_SIGNATURE,
            ),
        ];
        for (error, code) in table {
            // The leader's refusal of a handed-over op reads the same on the node that took it.
            let relayed = match verdict_of(&error) {
                crate::store::Verdict::Refused { code, message, data } => {
                    BundlerError::Relayed { code, message, data }
                }
                crate::store::Verdict::Accepted(_) => BundlerError::Internal("accepted".into()),
            };
            let shown = format!("{error:?}");
            let object = ErrorObjectOwned::from(error);
            assert_eq!(object.code(), code, "{shown}");
            assert!(!object.message().is_empty());
            assert_eq!(ErrorObjectOwned::from(relayed), object, "{shown}: relayed as answered");
        }
    }

    #[test]
    fn user_op_hashes_are_32_bytes_of_hex() {
        let hash = format!("0x{}", "ab".repeat(32));
        assert_eq!(user_op_hash(&hash).ok(), Some(B256::repeat_byte(0xab)));
        for bad in
            ["", "0x", "ab", &hash[2..], &format!("{hash}00"), &format!("0x{}", "zz".repeat(32))]
        {
            let error = user_op_hash(bad).err().map(ErrorObjectOwned::from);
            let error = error.unwrap_or_else(|| panic!("accepted {bad:?}"));
            assert_eq!(
                (error.code(), error.message()),
                (codes::INVALID_PARAMS, "Missing/invalid userOpHash")
            );
        }
    }

    #[test]
    fn paymaster_errors_name_the_paymaster() {
        let a = Address::repeat_byte(0xaa);
        let object = ErrorObjectOwned::from(BundlerError::PaymasterDepositTooLow(a));
        let data = object.data().map(|d| d.get().to_string()).unwrap_or_default();
        assert!(data.contains("0xaaaaaaaa"), "{data}");
    }
}
