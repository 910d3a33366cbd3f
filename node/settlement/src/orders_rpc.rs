//! `billing_setPurchaseOrder` and `billing_getPurchaseOrder`, behind the billing API keys: a
//! key stores and reads POs only for payers it sees streams of, and only lines whose payees and
//! streams it may see. Errors are `BillingError`s, coded by the billing edge's one table.

use std::sync::Arc;

use alloy::primitives::Address;
use jsonrpsee::{Extensions, RpcModule, types::ErrorObjectOwned, types::Params};
use serde_json::{Value, json};
use settled_streams::{ApiKey, Billing, BillingError, StreamSelector, parse_stream_id};

use crate::{OrderError, PurchaseOrder, Settler};

fn internal(e: impl std::fmt::Display) -> BillingError {
    BillingError::Internal(e.to_string())
}

/// Registers the two methods on `module`.
pub(crate) fn register_orders(
    module: &mut RpcModule<()>,
    billing: Arc<settled_streams::Billing>,
    settler: Arc<Settler>,
) {
    let (set_billing, set_settler) = (billing.clone(), settler.clone());
    // The names are distinct constants: registration cannot collide.
    let _ =
        module.register_async_method("billing_setPurchaseOrder", move |params, _, ext| {
            let (billing, settler) = (set_billing.clone(), set_settler.clone());
            async move {
                set_order(&billing, &settler, params, &ext).await.map_err(ErrorObjectOwned::from)
            }
        });
    let (get_billing, get_settler) = (billing.clone(), settler.clone());
    let _ =
        module.register_async_method("billing_getPurchaseOrder", move |params, _, ext| {
            let (billing, settler) = (get_billing.clone(), get_settler.clone());
            async move {
                get_order(&billing, &settler, params, &ext).await.map_err(ErrorObjectOwned::from)
            }
        });
    register_alerts(module, billing, settler);
}

/// `billing_subscribePurchaseOrderAlerts` (WebSocket): `billing_purchaseOrderAlert`
/// notifications — a PO line of a payee the key may see crossing into 80%, 100% or over.
fn register_alerts(module: &mut RpcModule<()>, billing: Arc<Billing>, settler: Arc<Settler>) {
    let _ = module.register_subscription(
        "billing_subscribePurchaseOrderAlerts",
        "billing_purchaseOrderAlert",
        "billing_unsubscribePurchaseOrderAlerts",
        move |_, pending, _, extensions| {
            let (billing, settler) = (billing.clone(), settler.clone());
            async move {
                let key = match billing.key(&extensions) {
                    Ok(key) => key.clone(),
                    Err(e) => {
                        pending.reject(e).await;
                        return Ok(());
                    }
                };
                let alerts = settler.subscribe_order_alerts();
                let sink = pending.accept().await?;
                settled_streams::forward(sink, alerts, |alert: &crate::OrderAlert| {
                    if alert.payees.iter().any(|p| key.may_see(*p)) {
                        settled_streams::Relay::Send
                    } else {
                        settled_streams::Relay::Skip
                    }
                })
                .await
            }
        },
    );
}

/// The tokens of `payer`'s streams `key` may see; an unknown payer (none) is refused.
async fn payer_tokens(
    billing: &Billing,
    key: &ApiKey,
    payer: Address,
) -> Result<Vec<Address>, BillingError> {
    let streams = billing
        .index()
        .list(StreamSelector::Payer(payer), None, usize::MAX, |s| key.may_see(s.payee))
        .await
        .map_err(internal)?;
    if streams.is_empty() {
        return Err(BillingError::InvalidParams(format!("unknown payer {payer}: no stream of it")));
    }
    let mut tokens: Vec<Address> = streams.into_iter().map(|(_, s)| s.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    Ok(tokens)
}

async fn set_order(
    billing: &Billing,
    settler: &Settler,
    params: Params<'static>,
    ext: &Extensions,
) -> Result<Value, BillingError> {
    let key = billing.key(ext)?;
    let (po,): (PurchaseOrder,) = params.parse()?;
    let tokens = payer_tokens(billing, key, po.payer).await?;
    for line in &po.lines {
        if let Some(payee) = line.payee
            && !key.may_see(payee)
        {
            return Err(BillingError::Forbidden(format!(
                "payee {payee} is outside this key's payees"
            )));
        }
        for id in line.stream_ids.iter().flatten() {
            let stream = billing.visible(key, parse_stream_id(id)?).await?;
            if stream.payer != po.payer {
                return Err(BillingError::InvalidParams(format!(
                    "stream {id} is not paid by {}",
                    po.payer
                )));
            }
        }
    }
    settler.set_purchase_order(&po, &tokens).await.map_err(|e| match e {
        OrderError::Scheduler(e) => internal(e),
        refused => BillingError::InvalidParams(refused.to_string()),
    })?;
    Ok(json!({ "payer": po.payer, "poNumber": po.po_number, "stored": true }))
}

async fn get_order(
    billing: &Billing,
    settler: &Settler,
    params: Params<'static>,
    ext: &Extensions,
) -> Result<Value, BillingError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct OrderRequest {
        payer: Address,
        po_number: Option<String>,
    }
    let key = billing.key(ext)?;
    let (request,): (OrderRequest,) = params.parse()?;
    payer_tokens(billing, key, request.payer).await?;
    let orders = match &request.po_number {
        Some(number) => settler
            .purchase_order(request.payer, number)
            .await
            .map_err(internal)?
            .into_iter()
            .collect(),
        None => settler.purchase_orders(request.payer).await.map_err(internal)?,
    };
    if orders.is_empty() {
        return Err(BillingError::InvalidParams(format!("no purchase order of {}", request.payer)));
    }
    let mut answers = Vec::with_capacity(orders.len());
    for po in orders {
        let consumption = settler.consumption(&po).await.map_err(internal)?;
        answers.push(json!({ "purchaseOrder": po, "consumption": consumption }));
    }
    Ok(Value::Array(answers))
}
