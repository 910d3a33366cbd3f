//! Purchase orders and invoice documents over the billing RPC (issue #19): POs stored per payer,
//! refused when malformed, for an unknown payer, in another currency or overlapping another PO;
//! each line's consumption is what its streams paid in the settled batches, and a line past its
//! cap plus tolerance is flagged; the period's UBL (Peppol BIS 3) and cXML documents total what
//! the payees received on chain and pass the official rules; `settled invoice` writes the same.

use std::time::Duration;

use alloy::{
    primitives::U256,
    providers::{Provider, ext::AnvilApi},
};
use serde_json::{Value, json};
use settled_tests::{
    OPERATOR_ACCOUNT, SettledProcess, TestNode, TestResult,
    invoice_rules::validate_invoice,
    rpc::{RpcAnswer, call_with_key, vendor_key},
};

const TOKEN: &str = "vendor-token";

async fn call(node: &TestNode, method: &str, params: Value) -> TestResult<RpcAnswer> {
    call_with_key(&node.node()?.rpc_url(), TOKEN, method, params).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_orders_are_checked_and_consumed_line_by_line() -> TestResult {
    let node = TestNode::spawn_operator(|config| {
        config.billing.api_keys = vec![vendor_key(TOKEN)];
        config.billing.seller = Some(settled_settlement::Party {
            name: "Vendor GmbH".into(),
            country: "DE".into(),
            endpoint_scheme: "0088".into(),
            endpoint_id: "7300010000001".into(),
            vat_id: Some("DE123456789".into()),
        });
    })
    .await?;
    let chain = node.chain();
    let (payer, compute, storage) = (chain.account(3)?, chain.account(4)?, chain.account(6)?);
    let operator = chain.account(OPERATOR_ACCOUNT)?;
    chain.fund_payer(payer, U256::from(10u128.pow(12))).await?;
    let first = chain.open_stream(payer, compute, operator, 10u128.pow(16), 100_000_000).await?;
    chain.open_stream(payer, storage, operator, 2 * 10u128.pow(15), 100_000_000).await?;
    let usdc = settled_contracts::MockUSDC::new(chain.deployment().usdc, chain.provider());
    let held_before =
        usdc.balanceOf(compute).call().await? + usdc.balanceOf(storage).call().await?;
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
                { "lineId": "20", "payee": storage, "description": "storage", "unitCode": "HUR" }
            ],
            "tolerancePercent": 5, "validFrom": from, "validTo": to, "buyerReference": "AP-42",
            "taxCategory": "S", "taxPercent": "19",
            "buyer": { "name": "Buyer AG", "country": "DE", "endpointScheme": "0088",
                       "endpointId": "4000001000005", "vatId": "DE987654321" }
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

    // PO alerts arrive over WebSocket, like lowBalance.
    use jsonrpsee::{
        core::client::{Subscription, SubscriptionClientT},
        rpc_params,
        ws_client::{HeaderMap, HeaderValue, WsClientBuilder},
    };
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_str(&format!("Bearer {TOKEN}"))?);
    let ws_url = format!("ws://{}", node.node()?.rpc_addr());
    let client = WsClientBuilder::default().set_headers(headers).build(&ws_url).await?;
    let mut alerts: Subscription<Value> = client
        .subscribe(
            "billing_subscribePurchaseOrderAlerts",
            rpc_params![],
            "billing_unsubscribePurchaseOrderAlerts",
        )
        .await?;

    // A period settles: each line consumed what its streams paid; the compute line (0.01/s for
    // 600 s = 6 USDC against a 5 USDC cap + 5%) is over.
    chain.provider().anvil_increase_time(600).await?;
    chain.provider().anvil_mine(Some(1), None).await?;
    let head = chain.provider().get_block_number().await?;
    node.wait_for_head(head, Duration::from_secs(10)).await?;
    let settler = node.node()?.settler().ok_or("no settlement")?;
    settler.settle().await?;
    let alert = tokio::time::timeout(Duration::from_secs(10), alerts.next())
        .await?
        .ok_or("the alert subscription closed")??;
    println!("alert: {alert}");
    assert_eq!((&alert["poNumber"], &alert["lineId"]), (&json!("PO-1"), &json!("10")));
    assert_eq!(alert["state"], json!("over"), "ok to over in one period: the higher alert only");
    assert!(settler.check_order_alerts().await?.is_empty(), "once per crossing");
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

    // The period as AP documents: each totals what the payees received on chain, flags the
    // compute line, and passes the official rules.
    let held_after = usdc.balanceOf(compute).call().await? + usdc.balanceOf(storage).call().await?;
    let received = held_after - held_before;
    assert_eq!(U256::from(paid), received, "the invoice is what the chain paid");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
    std::fs::create_dir_all(&dir)?;
    let mut documents = Vec::new();
    for format in ["ubl", "cxml"] {
        let params = json!([{ "payer": payer, "from": 0, "to": u64::MAX, "format": format }]);
        let answer = call(&node, "billing_invoice", params).await?.map_err(|e| format!("{e:?}"))?;
        assert_eq!(answer["total"], json!(received.to_string()), "{format}");
        assert_eq!(answer["overTolerance"], json!(["10"]), "{format}");
        let document = answer["document"].as_str().ok_or("no document")?.to_string();
        assert!(document.contains("OVER TOLERANCE"), "{format}: the over line is flagged");
        let file = dir.join(format!("procurement-invoice.{format}.xml"));
        std::fs::write(&file, &document)?;
        println!("{format}: {}", validate_invoice(format, &file)?);
        documents.push((format, document));
    }

    // `settled invoice` writes the same document.
    let out = dir.join("procurement-invoice.cli.xml");
    let run = std::process::Command::new(SettledProcess::binary()?)
        .args(["invoice", "--node-url", &node.node()?.rpc_url(), "--format", "cxml"])
        .args(["--payer", &payer.to_string(), "--out"])
        .arg(&out)
        .env("SETTLED_BILLING_API_KEY", TOKEN)
        .output()?;
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(std::fs::read_to_string(&out)?, documents[1].1);

    // A period with no settlement: a clear -32602 (and exit 1 from the command).
    let empty = json!([{ "payer": payer, "from": u64::MAX - 1, "to": u64::MAX, "format": "ubl" }]);
    let (code, message) =
        call(&node, "billing_invoice", empty).await?.err().ok_or("an empty period answered")?;
    assert_eq!(code, -32602, "{message}");
    assert!(message.contains("no settled batch"), "{message}");
    let run = std::process::Command::new(SettledProcess::binary()?)
        .args(["invoice", "--node-url", &node.node()?.rpc_url(), "--api-key", TOKEN])
        .args(["--payer", &payer.to_string(), "--from", "18446744073709551614"])
        .output()?;
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("-32602"));
    Ok(())
}

/// The golden documents of the settlement crate's fixed scenario pass the official rules too.
#[test]
fn golden_documents_pass_the_official_rules() -> TestResult {
    let golden =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/settlement/tests/golden");
    for (format, file) in [("ubl", "invoice.ubl.xml"), ("cxml", "invoice.cxml.xml")] {
        println!("{file}: {}", validate_invoice(format, &golden.join(file))?);
    }
    Ok(())
}
