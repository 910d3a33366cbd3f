//! The gas-sponsoring paymaster: policy, signer, accounting and ERC-7677 RPC.
//!
//! * [`SponsorshipPolicy`]: what a named policy sponsors (gas and cost limits, allowlisted calls)
//!   and its caps (ops and wei per sender and customer per period); the refusing
//!   [`PolicyRule`] is named in every [`Rejection`].
//! * [`Ledger`]: every sponsorship as a sled-persisted [`Reservation`] — reserved at its worst
//!   case under one lock (so caps hold under concurrency), settled to the EntryPoint's
//!   `actualGasCost`, released on expiry, reopened on reorg; behind [`LedgerStore`], which a
//!   ledger shared by several nodes implements too (`settled-store`'s PostgreSQL one).
//! * [`PaymasterSigner`]: the key and the `paymasterData` layout of `SponsorPaymaster`.
//! * [`Paymaster`]: ERC-7677 requests → checks → reservation → signature → denial-of-wallet
//!   guard (revm validation and execution), plus the chain-following [`Paymaster::run`].
//! * Treasury: [`paymaster_reports`], [`deposit`], [`withdraw`] for operators.
//! * [`paymaster_module`]: `pm_getPaymasterStubData`, `pm_getPaymasterData` and the admin
//!   `paymaster_*` methods; [`PaymasterError`] → JSON-RPC codes at this edge only.

mod error;
mod ledger;
mod ledger_store;
mod metrics;
mod policy;
mod rpc;
mod service;
mod signer;
mod treasury;

pub use error::PaymasterError;
pub use ledger::{
    DAY_SECS, Ledger, LedgerError, LedgerStatus, LedgerTotals, RETENTION_SECS, Reservation,
    ReservationRequest, ReservationState, SponsorshipId, Usage,
};
pub use ledger_store::{
    LedgerFuture, LedgerStore, SettledOp, UsageSlot, customer_slot, daily_slot, over_caps,
    sender_slot,
};
pub use metrics::describe_metrics;
pub use policy::{
    AllowedCall, PolicyRule, Rejection, Selector, SponsorshipPolicy, account_calls, max_cost,
};
pub use rpc::{UsageReport, paymaster_module};
pub use service::{
    Paymaster, PaymasterAccount, PaymasterConfig, PaymasterData, PaymasterStatus, Sponsor,
    SponsorshipContext, StubData,
};
pub use signer::{
    PAYMASTER_DATA_LENGTH, PaymasterSigner, SponsorshipTerms, sponsorship_hash, stub_paymaster_data,
};
pub use treasury::{
    PaymasterReport, TreasuryError, deposit, paymaster_accounts, paymaster_reports, withdraw,
};
