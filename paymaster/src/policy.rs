//! Sponsorship policies: what the paymaster agrees to pay for, and the rule that refused an op.
//!
//! A policy's static checks ([`SponsorshipPolicy::check`]) look at the op alone: its gas limits,
//! its worst-case cost and the calls it makes. Caps that depend on what was already sponsored
//! (ops and wei per period, the global daily budget) are the ledger's.

use alloy::{
    primitives::{Address, Bytes, FixedBytes, U256},
    sol,
    sol_types::SolCall,
};
use serde::{Deserialize, Serialize};
use settled_contracts::PackedUserOperation;

/// A four-byte function selector.
pub type Selector = FixedBytes<4>;

/// One allowlisted call target and the functions that may be called on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedCall {
    /// The contract the account may call.
    pub target: Address,
    /// Functions allowed on it; empty allows any.
    #[serde(default)]
    pub selectors: Vec<Selector>,
}

/// What one named policy sponsors. Every limit is optional (absent: unlimited), except that an
/// op's calls must match `allowedCalls` when it is not empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SponsorshipPolicy {
    /// The id wallets name in the ERC-7677 `context` (`{"policyId": ...}`).
    pub id: String,
    /// Sponsor name shown to wallets (ERC-7677 `sponsor.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sponsor_name: Option<String>,
    /// Length of the cap period in seconds (chain time); default one day.
    #[serde(default = "default_period")]
    pub period_secs: u64,
    /// Ops one sender may have sponsored per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ops_per_sender: Option<u64>,
    /// Wei one sender may have sponsored per period (open reservations count at their maximum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wei_per_sender: Option<U256>,
    /// Ops one customer may have sponsored per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ops_per_customer: Option<u64>,
    /// Wei one customer may have sponsored per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wei_per_customer: Option<U256>,
    /// Largest worst-case cost (the EntryPoint's prefund) of one op, in wei.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_per_op: Option<U256>,
    /// Largest `verificationGasLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_verification_gas: Option<u64>,
    /// Largest `callGasLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_call_gas: Option<u64>,
    /// Largest `preVerificationGas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pre_verification_gas: Option<u64>,
    /// Calls the op may make; empty allows any.
    #[serde(default)]
    pub allowed_calls: Vec<AllowedCall>,
}

fn default_period() -> u64 {
    86_400
}

/// The rule that refused a sponsorship: a metric label and part of every rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PolicyRule {
    /// `maxCostPerOp`.
    MaxCostPerOp,
    /// `maxVerificationGas`.
    MaxVerificationGas,
    /// `maxCallGas`.
    MaxCallGas,
    /// `maxPreVerificationGas`.
    MaxPreVerificationGas,
    /// The paymaster's own gas limits (postOp too low, validation too high).
    PaymasterGas,
    /// `allowedCalls`: a target not listed.
    CallTarget,
    /// `allowedCalls`: a function not listed for its target.
    CallSelector,
    /// `allowedCalls`: the account's call data is not a call the node can read.
    CallData,
    /// `maxOpsPerSender`.
    SenderOps,
    /// `maxWeiPerSender`.
    SenderWei,
    /// `maxOpsPerCustomer`.
    CustomerOps,
    /// `maxWeiPerCustomer`.
    CustomerWei,
    /// The paymaster's global daily budget.
    DailyBudget,
    /// The denial-of-wallet guard: the op fails validation or its execution reverts.
    Simulation,
}

impl PolicyRule {
    /// The rule's name, as in the config and in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxCostPerOp => "maxCostPerOp",
            Self::MaxVerificationGas => "maxVerificationGas",
            Self::MaxCallGas => "maxCallGas",
            Self::MaxPreVerificationGas => "maxPreVerificationGas",
            Self::PaymasterGas => "paymasterGas",
            Self::CallTarget => "allowedCalls.target",
            Self::CallSelector => "allowedCalls.selectors",
            Self::CallData => "allowedCalls.callData",
            Self::SenderOps => "maxOpsPerSender",
            Self::SenderWei => "maxWeiPerSender",
            Self::CustomerOps => "maxOpsPerCustomer",
            Self::CustomerWei => "maxWeiPerCustomer",
            Self::DailyBudget => "dailyBudget",
            Self::Simulation => "simulation",
        }
    }

    /// Whether the rule is a cap on what was already sponsored (as opposed to the op itself).
    pub fn is_cap(self) -> bool {
        matches!(
            self,
            Self::SenderOps
                | Self::SenderWei
                | Self::CustomerOps
                | Self::CustomerWei
                | Self::DailyBudget
        )
    }
}

impl std::fmt::Display for PolicyRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: the rule and what about the op broke it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule}: {detail}")]
pub struct Rejection {
    /// The rule.
    pub rule: PolicyRule,
    /// Human-readable detail.
    pub detail: String,
}

impl Rejection {
    pub(crate) fn new(rule: PolicyRule, detail: impl Into<String>) -> Self {
        Self { rule, detail: detail.into() }
    }
}

/// The worst case the EntryPoint reserves for `op` from the paymaster's deposit: every gas limit
/// times `maxFeePerGas`.
pub fn max_cost(op: &PackedUserOperation) -> U256 {
    op.max_cost()
}

// The account call shapes the allowlist can read: SimpleAccount's (v0.7 and v0.8) and
// Simple7702Account's `execute`, and both versions' `executeBatch`.
sol! {
    function execute(address dest, uint256 value, bytes func);
    function executeBatch(address[] dest, uint256[] value, bytes[] func);
    struct Call { address target; uint256 value; bytes data; }
    function executeBatch(Call[] calls);
}

/// The `(target, call data)` pairs an account's `callData` makes, or `None` when it is not one
/// of the shapes above.
pub fn account_calls(call_data: &[u8]) -> Option<Vec<(Address, Bytes)>> {
    if let Ok(call) = executeCall::abi_decode(call_data) {
        return Some(vec![(call.dest, call.func)]);
    }
    if let Ok(batch) = executeBatch_0Call::abi_decode(call_data) {
        if batch.dest.len() != batch.func.len()
            || (!batch.value.is_empty() && batch.value.len() != batch.dest.len())
        {
            return None;
        }
        return Some(batch.dest.into_iter().zip(batch.func).collect());
    }
    if let Ok(batch) = executeBatch_1Call::abi_decode(call_data) {
        return Some(batch.calls.into_iter().map(|c| (c.target, c.data)).collect());
    }
    None
}

impl SponsorshipPolicy {
    /// A policy named `id` with no limits.
    pub fn unlimited(id: impl Into<String>) -> Self {
        Self { id: id.into(), period_secs: default_period(), ..Self::default() }
    }

    /// Checks what the policy says about `op` on its own (caps on past spending excepted).
    pub fn check(&self, op: &PackedUserOperation) -> Result<(), Rejection> {
        let over = |limit: Option<u64>, value: u128| limit.is_some_and(|l| value > u128::from(l));
        if over(self.max_verification_gas, op.verification_gas_limit()) {
            return Err(Rejection::new(
                PolicyRule::MaxVerificationGas,
                format!(
                    "verificationGasLimit {} above {:?}",
                    op.verification_gas_limit(),
                    self.max_verification_gas
                ),
            ));
        }
        if over(self.max_call_gas, op.call_gas_limit()) {
            return Err(Rejection::new(
                PolicyRule::MaxCallGas,
                format!("callGasLimit {} above {:?}", op.call_gas_limit(), self.max_call_gas),
            ));
        }
        let pvg = u128::try_from(op.preVerificationGas).unwrap_or(u128::MAX);
        if over(self.max_pre_verification_gas, pvg) {
            return Err(Rejection::new(
                PolicyRule::MaxPreVerificationGas,
                format!("preVerificationGas {pvg} above {:?}", self.max_pre_verification_gas),
            ));
        }
        let cost = max_cost(op);
        if let Some(limit) = self.max_cost_per_op
            && cost > limit
        {
            return Err(Rejection::new(
                PolicyRule::MaxCostPerOp,
                format!("worst-case cost {cost} wei above {limit}"),
            ));
        }
        self.check_calls(&op.callData)
    }

    fn check_calls(&self, call_data: &[u8]) -> Result<(), Rejection> {
        if self.allowed_calls.is_empty() {
            return Ok(());
        }
        let calls = account_calls(call_data).ok_or_else(|| {
            Rejection::new(
                PolicyRule::CallData,
                "callData is not execute/executeBatch, so its calls cannot be checked",
            )
        })?;
        for (target, data) in calls {
            let Some(allowed) = self.allowed_calls.iter().find(|a| a.target == target) else {
                return Err(Rejection::new(
                    PolicyRule::CallTarget,
                    format!("calls to {target} are not sponsored"),
                ));
            };
            if allowed.selectors.is_empty() {
                continue;
            }
            let selector = data.get(..4).map(Selector::from_slice);
            if !selector.is_some_and(|s| allowed.selectors.contains(&s)) {
                return Err(Rejection::new(
                    PolicyRule::CallSelector,
                    format!(
                        "function {} on {target} is not sponsored",
                        selector.map_or_else(|| "(none)".to_string(), |s| s.to_string())
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The `[[policies]]` of a TOML file, each validated.
    pub fn load_file(path: &std::path::Path) -> Result<Vec<Self>, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct PoliciesFile {
            #[serde(default)]
            policies: Vec<SponsorshipPolicy>,
        }
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let file: PoliciesFile = toml::from_str(&text).map_err(|e| e.to_string())?;
        for policy in &file.policies {
            policy.validate().map_err(|e| format!("policy {:?}: {e}", policy.id))?;
        }
        Ok(file.policies)
    }

    /// Checks the policy itself (used before a policy set over RPC takes effect).
    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty() || self.id.len() > 128 {
            return Err("policy id must be 1 to 128 characters".into());
        }
        if self.period_secs == 0 {
            return Err("periodSecs must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::{address, bytes};
    use settled_contracts::pack_u128s;

    use super::*;

    const USDC: Address = address!("0x00000000000000000000000000000000000000aa");
    const VAULT: Address = address!("0x00000000000000000000000000000000000000bb");
    const APPROVE: Selector = FixedBytes([0x09, 0x5e, 0xa7, 0xb3]);

    fn op(call_data: Bytes) -> PackedUserOperation {
        PackedUserOperation {
            sender: Address::repeat_byte(1),
            nonce: U256::ZERO,
            initCode: Bytes::new(),
            callData: call_data,
            accountGasLimits: pack_u128s(100_000, 50_000),
            preVerificationGas: U256::from(40_000),
            gasFees: pack_u128s(1, 10),
            paymasterAndData: {
                let mut d = Address::repeat_byte(9).to_vec();
                d.extend_from_slice(pack_u128s(60_000, 40_000).as_slice());
                d.into()
            },
            signature: Bytes::new(),
        }
    }

    fn execute(target: Address, func: Bytes) -> Bytes {
        executeCall { dest: target, value: U256::ZERO, func }.abi_encode().into()
    }

    #[test]
    fn max_cost_is_every_limit_times_max_fee() {
        assert_eq!(max_cost(&op(Bytes::new())), U256::from(290_000u64 * 10));
    }

    #[test]
    fn allowlist_rules_table() {
        let policy = SponsorshipPolicy {
            allowed_calls: vec![
                AllowedCall { target: USDC, selectors: vec![APPROVE] },
                AllowedCall { target: VAULT, selectors: vec![] },
            ],
            ..SponsorshipPolicy::unlimited("p")
        };
        let approve = bytes!("095ea7b30000");
        let transfer = bytes!("a9059cbb0000");
        let batch_v08 = executeBatch_1Call {
            calls: vec![
                Call { target: USDC, value: U256::ZERO, data: approve.clone() },
                Call { target: VAULT, value: U256::ZERO, data: bytes!("12345678") },
            ],
        }
        .abi_encode();
        let batch_v07_bad = executeBatch_0Call {
            dest: vec![USDC, USDC],
            value: vec![],
            func: vec![approve.clone(), transfer.clone()],
        }
        .abi_encode();
        let cases: Vec<(&str, Bytes, Option<PolicyRule>)> = vec![
            ("approve on USDC", execute(USDC, approve.clone()), None),
            ("anything on the vault", execute(VAULT, bytes!("deadbeef")), None),
            ("transfer on USDC", execute(USDC, transfer), Some(PolicyRule::CallSelector)),
            ("empty call on USDC", execute(USDC, Bytes::new()), Some(PolicyRule::CallSelector)),
            ("other target", execute(Address::ZERO, approve), Some(PolicyRule::CallTarget)),
            ("v0.8 batch", batch_v08.into(), None),
            ("v0.7 batch with transfer", batch_v07_bad.into(), Some(PolicyRule::CallSelector)),
            ("unreadable call data", bytes!("ffffffff"), Some(PolicyRule::CallData)),
        ];
        for (name, call_data, want) in cases {
            let got = policy.check(&op(call_data)).err().map(|r| r.rule);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn gas_and_cost_limits_table() {
        let base = SponsorshipPolicy::unlimited("p");
        let cases = [
            (
                SponsorshipPolicy { max_verification_gas: Some(99_999), ..base.clone() },
                Some(PolicyRule::MaxVerificationGas),
            ),
            (SponsorshipPolicy { max_verification_gas: Some(100_000), ..base.clone() }, None),
            (
                SponsorshipPolicy { max_call_gas: Some(49_999), ..base.clone() },
                Some(PolicyRule::MaxCallGas),
            ),
            (
                SponsorshipPolicy { max_pre_verification_gas: Some(39_999), ..base.clone() },
                Some(PolicyRule::MaxPreVerificationGas),
            ),
            (
                SponsorshipPolicy { max_cost_per_op: Some(U256::from(2_899_999)), ..base.clone() },
                Some(PolicyRule::MaxCostPerOp),
            ),
            (
                SponsorshipPolicy { max_cost_per_op: Some(U256::from(2_900_000)), ..base.clone() },
                None,
            ),
        ];
        for (policy, want) in cases {
            assert_eq!(policy.check(&op(Bytes::new())).err().map(|r| r.rule), want, "{policy:?}");
        }
    }

    #[test]
    fn policies_parse_from_toml() -> Result<(), Box<dyn std::error::Error>> {
        let text = r#"
            id = "streams"
            periodSecs = 3600
            maxOpsPerSender = 5
            maxWeiPerCustomer = "0x2386f26fc10000"
            allowedCalls = [{ target = "0x00000000000000000000000000000000000000aa", selectors = ["0x095ea7b3"] }]
        "#;
        let policy: SponsorshipPolicy = toml::from_str(text)?;
        assert_eq!(policy.max_ops_per_sender, Some(5));
        assert_eq!(policy.max_wei_per_customer, Some(U256::from(10_000_000_000_000_000u64)));
        assert_eq!(policy.allowed_calls[0].selectors, vec![APPROVE]);
        assert!(policy.validate().is_ok());
        assert!(SponsorshipPolicy { period_secs: 0, ..policy }.validate().is_err());
        Ok(())
    }

    #[test]
    fn policies_files_load_or_say_what_is_wrong() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("policies.toml");
        std::fs::write(
            &path,
            "[[policies]]\nid = \"a\"\n[[policies]]\nid = \"b\"\nmaxOpsPerSender = 3\n",
        )?;
        let loaded = SponsorshipPolicy::load_file(&path)?;
        assert_eq!(loaded.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        for (text, expect) in [
            ("[[policies]]\nid = \"a\"\nmaxOps = 1\n", "unknown field"),
            ("[[policies]]\nid = \"a\"\nperiodSecs = 0\n", "periodSecs must be positive"),
            ("[[policy]]\nid = \"a\"\n", "unknown field"),
        ] {
            std::fs::write(&path, text)?;
            let err = SponsorshipPolicy::load_file(&path).err().ok_or("accepted a bad file")?;
            assert!(err.contains(expect), "{err} should mention {expect}");
        }
        assert!(SponsorshipPolicy::load_file(&dir.path().join("missing.toml")).is_err());
        Ok(())
    }
}
