//! The paymaster's answers: ERC-7677 stub and signed data, its accounts and status.

use super::*;

/// ERC-7677 `sponsor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sponsor {
    /// Who pays.
    pub name: String,
}

/// `pm_getPaymasterStubData`'s answer (EntryPoint v0.7/v0.8 fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StubData {
    /// Sponsor shown to the user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sponsor: Option<Sponsor>,
    /// Our paymaster.
    pub paymaster: Address,
    /// Stub `paymasterData` of the real length.
    pub paymaster_data: Bytes,
    /// Gas for our validation.
    pub paymaster_verification_gas_limit: U256,
    /// Gas for our postOp.
    pub paymaster_post_op_gas_limit: U256,
    /// Always false: the signature covers the final gas values, so `pm_getPaymasterData` follows.
    pub is_final: bool,
}

/// `pm_getPaymasterData`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymasterData {
    /// Our paymaster.
    pub paymaster: Address,
    /// Signed `paymasterData`.
    pub paymaster_data: Bytes,
}

/// What the ERC-7677 `context` says: the policy (default: the node's default policy), and the
/// customer to charge (default: the sender).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SponsorshipContext {
    /// The policy (`sponsorshipPolicyId`, as Pimlico's clients name it, is read too).
    #[serde(default, alias = "sponsorshipPolicyId")]
    pub policy_id: Option<String>,
    /// The customer (billing account) the sponsorship is charged to.
    #[serde(default)]
    pub customer: Option<String>,
}

/// One paymaster's standing at its EntryPoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymasterAccount {
    /// The EntryPoint.
    pub entry_point: Address,
    /// Our paymaster there.
    pub paymaster: Address,
    /// Deposit (wei).
    pub deposit: U256,
    /// Staked.
    pub staked: bool,
    /// Stake (wei).
    pub stake: U256,
    /// Unstake delay (seconds).
    pub unstake_delay_sec: u32,
    /// When an unlocked stake can be withdrawn (0: locked).
    pub withdraw_time: u64,
}

/// `paymaster_status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymasterStatus {
    /// The key that signs.
    pub signer: Address,
    /// The chain.
    pub chain_id: u64,
    /// Each paymaster's deposit and stake.
    pub accounts: Vec<PaymasterAccount>,
    /// Reservations and settled totals.
    pub ledger: LedgerStatus,
    /// Sponsored today (chain time), against `dailyBudget`.
    pub today: Usage,
    /// The daily budget.
    pub daily_budget: Option<U256>,
}
