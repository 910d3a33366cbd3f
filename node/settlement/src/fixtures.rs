//! Test fixtures shared by the settlement crate's unit tests: records, committed batches, a
//! purchase order with a buyer, a seller, and a settler over a chain it never calls.

use alloy::primitives::{Address, B256, Bytes};

use crate::procurement::{PoLine, PurchaseOrder};
use crate::scheduler::{BatchStage, StoredBatch};
use crate::{AnchorMode, BatchContext, BatchCosts, Party, SettlementRecord};

pub(crate) const JAN_1_2026: u64 = 1_767_225_600;

pub(crate) fn payer() -> Address {
    Address::repeat_byte(0x11)
}
pub(crate) fn usdc() -> Address {
    Address::repeat_byte(0xa0)
}

pub(crate) fn record(
    stream: u64,
    payer: Address,
    payee: Address,
    seconds: u64,
    amount: u128,
) -> SettlementRecord {
    SettlementRecord {
        stream_id: stream,
        payer,
        payee,
        token: usdc(),
        seconds_billed: seconds,
        amount,
        cumulative_amount: amount,
        usage_digest: B256::ZERO,
    }
}

pub(crate) fn batch(id: u64, start: u64, end: u64, records: Vec<SettlementRecord>) -> StoredBatch {
    StoredBatch {
        context: BatchContext {
            chain_id: 31_337,
            vault: Address::repeat_byte(0x7a),
            batch_id: id,
            period_start: start,
            period_end: end,
        },
        total: records.iter().map(|r| r.amount).sum(),
        records,
        root: B256::ZERO,
        payload: Bytes::new(),
        commitment: Bytes::new(),
        proof: Bytes::new(),
        versioned_hash: B256::ZERO,
        withdrawals: Vec::new(),
        stage: BatchStage::Committed { transaction: B256::repeat_byte(id as u8), block: id },
        mode: AnchorMode::Blob,
        anchor_chain_id: 31_337,
        costs: BatchCosts::default(),
    }
}

pub(crate) fn seller() -> Party {
    Party {
        name: "Vendor GmbH".into(),
        country: "DE".into(),
        endpoint_scheme: "0088".into(),
        endpoint_id: "7300010000001".into(),
        vat_id: Some("DE123456789".into()),
    }
}

pub(crate) fn po(cap: Option<u128>) -> PurchaseOrder {
    let line = |id: &str,
                payee: Option<Address>,
                streams: Option<Vec<String>>,
                unit: &str,
                cap: Option<u128>| PoLine {
        line_id: id.into(),
        payee,
        stream_ids: streams,
        description: format!("line {id}"),
        unit_code: unit.into(),
        unit_price: None,
        quantity: None,
        amount_cap: cap.map(|c| c.to_string()),
    };
    PurchaseOrder {
        payer: payer(),
        po_number: "PO-4711".into(),
        currency: "USD".into(),
        lines: vec![
            line("10", None, Some(vec!["1".into()]), "SEC", cap),
            line("20", Some(Address::repeat_byte(0x33)), None, "HUR", None),
        ],
        tolerance_percent: 5,
        valid_from: JAN_1_2026,
        valid_to: JAN_1_2026 + 31 * 86_400 - 1,
        buyer_reference: "AP-42".into(),
        tax_category: Some("S".into()),
        tax_percent: Some("19".into()),
        buyer: Some(Party {
            name: "Buyer AG".into(),
            country: "DE".into(),
            endpoint_scheme: "0088".into(),
            endpoint_id: "4000001000005".into(),
            vat_id: Some("DE987654321".into()),
        }),
    }
}

/// A scheduler over `db` whose provider is never called (what the unit tests need of it).
pub(crate) async fn settler(db: &sled::Db) -> Result<crate::Settler, Box<dyn std::error::Error>> {
    use alloy::providers::Provider as _;
    let index = std::sync::Arc::new(
        settled_streams::StreamIndex::open(db, Address::ZERO, 8, Default::default()).await?,
    );
    let provider = alloy::providers::ProviderBuilder::new()
        .connect_http("http://127.0.0.1:1".parse()?)
        .erased();
    let key = alloy::signers::local::PrivateKeySigner::random();
    let sender = std::sync::Arc::new(settled_contracts::TransactionSender::new(provider, key));
    let anchor = crate::AnchorChain {
        sender: sender.clone(),
        anchor: Address::ZERO,
        chain_id: 1,
        mode: AnchorMode::Blob,
    };
    let chain = crate::SettlementChain {
        sender,
        vault: Address::ZERO,
        chain_id: 1,
        kind: settled_contracts::ChainKind::Ethereum,
        anchor,
        currencies: Default::default(),
        seller: None,
    };
    Ok(crate::Settler::new(chain, index, db, Default::default())?)
}
