//! Purchase orders over the billing RPC (issue #19, part): stored per payer, refused when
//! malformed, for an unknown payer, in another currency or overlapping another PO; each line's
//! consumption is what its streams paid in the settled batches — the invoice's total, to the
//! base unit — and a line past its cap plus tolerance is flagged.

use std::time::Duration;

use alloy::{
    primitives::U256,
    providers::{Provider, ext::AnvilApi},
};
use serde_json::{Value, json};
use settled_tests::{
    OPERATOR_ACCOUNT, TestNode, TestResult,
    rpc::{RpcAnswer, call_with_key, vendor_key},
};

const TOKEN: &str = "vendor-token";

async fn call(node: &TestNode, method: &str, params: Value) -> TestResult<RpcAnswer> {
    call_with_key(&node.node()?.rpc_url(), TOKEN, method, params).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_orders_are_checked_and_consumed_line_by_line() -> TestResult {
    let node = TestNode::spawn_operator(|config| config.billing.api_keys = vec![vendor_key(TOKEN)])
        .await?;
    let chain = node.chain();
    let (payer, compute, storage) = (chain.account(3)?, chain.account(4)?, chain.account(6)?);
    let operator = chain.account(OPERATOR_ACCOUNT)?;
    chain.fund_payer(payer, U256::from(10u128.pow(12))).await?;
    let first = chain.open_stream(payer, compute, operator, 10u128.pow(16), 100_000_000).await?;
    chain.open_stream(payer, storage, operator, 2 * 10u128.pow(15), 100_000_000).await?;
    let now = chain
        .provider()
        .get_block(alloy::eips::BlockId::latest())
        .await?
        .ok_or("no block")?
        .header
        .timestamp;

    let po = |number: &str, from: u64, to: u64, currency: &str| {
        json!({
            "payer": payer, "poNumber": number, "currency": currency,
            "lines": [
                { "lineId": "10", "streamIds": [first.to_string()], "description": "compute", "unitCode": "SEC", "amountCap": "5000000" },
                { "lineId": "20", "payee": storage, "description": "storage", "unitCode": "SEC" }
            ],
            "tolerancePercent": 5, "validFrom": from, "validTo": to, "buyerReference": "AP-42",
            "taxCategory": "S", "taxPercent": "19"
        })
    };
    // Until the node's index has the streams, the payer is unknown to it.
    let first_po = json!([po("PO-1", now - 10, now + 86_400, "USD")]);
    let mut stored = Err((0, String::new()));
    for _ in 0..50 {
        stored = call(&node, "billing_setPurchaseOrder", first_po.clone()).await?;
        if stored.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored.map_err(|e| format!("{e:?}"))?["stored"], json!(true));

    // Bad input, each with a clear -32602.
    let mut stranger = po("PO-9", now, now + 10, "USD");
    stranger["payer"] = json!(operator);
    for (case, params, needle) in [
        ("unknown payer", stranger, "unknown payer"),
        ("currency", po("PO-2", now + 200_000, now + 300_000, "EUR"), "currency EUR"),
        ("overlap", po("PO-3", now + 3_600, now + 7_200, "USD"), "overlaps PO PO-1"),
        ("window", po("PO-4", now + 10, now, "USD"), "validTo"),
    ] {
        let answer = call(&node, "billing_setPurchaseOrder", json!([params])).await?;
        let (code, message) = answer.err().ok_or(format!("{case}: accepted"))?;
        assert_eq!(code, -32602, "{case}: {message}");
        assert!(message.contains(needle), "{case}: {message}");
    }

    // A period settles: each line consumed what its streams paid; the compute line (0.01/s for
    // 600 s = 6 USDC against a 5 USDC cap + 5%) is over.
    chain.provider().anvil_increase_time(600).await?;
    chain.provider().anvil_mine(Some(1), None).await?;
    let head = chain.provider().get_block_number().await?;
    node.wait_for_head(head, Duration::from_secs(10)).await?;
    node.node()?.settler().ok_or("no settlement")?.settle().await?;
    let orders =
        call(&node, "billing_getPurchaseOrder", json!([{ "payer": payer, "poNumber": "PO-1" }]))
            .await?;
    let orders = orders.map_err(|e| format!("{e:?}"))?;
    let lines = &orders[0]["consumption"];
    let invoice =
        call(&node, "billing_invoice", json!([{ "payer": payer, "from": 0, "to": u64::MAX }]))
            .await?;
    let invoice = invoice.map_err(|e| format!("{e:?}"))?;
    let paid: u128 = invoice["totals"][0]["amount"].as_str().ok_or("no total")?.parse()?;
    let consumed: u128 = lines
        .as_array()
        .ok_or("no lines")?
        .iter()
        .map(|l| l["consumed"].as_str().unwrap_or("0").parse::<u128>())
        .sum::<Result<_, _>>()?;
    println!("PO-1: {lines}; invoice total {paid}");
    assert_eq!(consumed, paid, "every paid base unit is on a PO line");
    assert_eq!(lines[0]["state"], json!("over"), "{lines}");
    assert_eq!(lines[1]["state"], json!("ok"), "uncapped");
    Ok(())
}
