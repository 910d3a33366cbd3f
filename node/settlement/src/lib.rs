//! Settlement: what each stream paid in a period, as records committed on chain by a
//! Merkle root and carried in an EIP-4844 blob, so that any customer or auditor can check a
//! receipt for its stream.
//!
//! [`SettlementRecord`] has a fixed leaf encoding and a compact blob payload; [`MerkleTree`] is
//! built as `SettlementAnchor.verify` checks it; [`split_into_blobs`], [`sidecar`] and
//! [`payload_of`] carry batches in blobs; [`Settler`] runs the periods (withdraw, record,
//! commit; crash-safe) and answers receipts, served by the `settlement_*` RPC; it keeps its state
//! in a [`SettlementStore`] (sled on one node, PostgreSQL shared by several).

mod blob;
mod documents;
#[cfg(any(test, feature = "testing"))]
#[cfg_attr(not(test), allow(dead_code))]
mod fixtures;
mod metrics;
mod orders_rpc;
mod procurement;
mod record;
mod rpc;
mod scheduler;
mod store;
mod tree;
mod usage;
mod verify;

pub use blob::{BLOB_GAS_PER_BLOB, BLOB_PAYLOAD_CAPACITY, payload_of, sidecar, split_into_blobs};
pub use documents::{
    DocumentError, DocumentFormat, Party, PeriodInvoice, PeriodLine, RollUp, TokenCurrency, money,
    render_cxml, render_ubl, unit_seconds,
};
pub use metrics::describe_metrics;
pub use procurement::{LineConsumption, PoError, PoLine, PurchaseOrder, consumption};
pub use record::{
    BatchContext, PAYLOAD_HEADER_LEN, RECORD_LEN, SettlementRecord, decode_payload, encode_payload,
    leaf_of,
};
pub use rpc::codes as settlement_codes;
pub use rpc::{register_billing, settlement_module};
pub use scheduler::SettlementChain;
pub use scheduler::{
    AnchorChain, AnchorMode, BatchCosts, BatchStage, Invoice, InvoiceDocument, InvoiceLine,
    InvoiceTotal, OrderAlert, OrderError, SchedulerError, SettlementReceipt, SettlementRound,
    SettlementSettings, Settler, StoredBatch, overhead_ppm,
};
#[cfg(any(test, feature = "testing"))]
pub use store::contract as store_contract;
pub use store::{
    OpenPeriod, PeriodCursor, PgSettlement, SettlementFuture, SettlementStore, SledSettlement,
};
pub use tree::{MerkleTree, verify_proof};
pub use usage::{UsageError, fold_usage};
pub use verify::{ReceiptError, VerifiedReceipt, verify_receipt};

/// Why a settlement step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettlementError {
    /// Bytes that are not what they claim to be (a record, a payload).
    #[error("malformed: {0}")]
    Malformed(String),
    /// The KZG library failed.
    #[error("kzg: {0}")]
    Kzg(String),
    /// A blob that does not match its commitment or versioned hash.
    #[error("the blob does not match its commitment: {0}")]
    BlobMismatch(String),
}
