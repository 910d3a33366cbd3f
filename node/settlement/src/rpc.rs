//! The settlement namespace (`settlement_*`), public like the blobs it describes: any customer or
//! auditor may fetch a stream's receipt or a whole batch and check them against the chain.

use std::sync::Arc;

use jsonrpsee::{
    Extensions, RpcModule,
    types::{ErrorObject, ErrorObjectOwned, Params},
};
use serde_json::json;
use settled_streams::BillingError;

use super::scheduler::Settler;

/// JSON-RPC error codes of the settlement namespace.
pub mod codes {
    /// Malformed parameters, an unknown batch, a stream without a record in the batch.
    pub const INVALID_PARAMS: i32 = -32602;
    /// The node failed.
    pub const INTERNAL: i32 = -32603;
}

fn error(code: i32, message: impl Into<String>) -> ErrorObjectOwned {
    ErrorObject::owned(code, message.into(), None::<()>)
}

fn internal(e: impl std::fmt::Display) -> ErrorObjectOwned {
    error(codes::INTERNAL, e.to_string())
}

/// `settlement_getReceipt(streamId, batchId)` and `settlement_getBatch(batchId)`; with `admin`
/// also `settlement_runNow()`, the operator's "settle now" (one round, as the timer runs it;
/// rounds never overlap). Admin methods are served only with `--rpc.admin`.
pub fn settlement_module(settler: Arc<Settler>, admin: bool) -> RpcModule<Arc<Settler>> {
    let mut module = RpcModule::new(settler);
    if admin {
        let _ = module.register_async_method("settlement_runNow", |_, settler, _| async move {
            let round = settler.settle().await.map_err(internal)?;
            serde_json::to_value(round).map_err(internal)
        });
    }
    // The names are distinct constants: registration cannot collide.
    let _ =
        module.register_async_method("settlement_getReceipt", |params, settler, _| async move {
            let (stream, batch): (String, u64) = params.parse()?;
            let stream: u64 = stream.parse().map_err(|_| {
                error(
                    codes::INVALID_PARAMS,
                    format!("stream id {stream:?} is not a decimal integer"),
                )
            })?;
            match settler.receipt(stream, batch).await.map_err(internal)? {
                Some(receipt) => serde_json::to_value(receipt).map_err(internal),
                None => Err(error(
                    codes::INVALID_PARAMS,
                    format!("batch {batch} is unknown or has no record of stream {stream}"),
                )),
            }
        });
    let _ = module.register_async_method("settlement_getBatch", |params, settler, _| async move {
        let (id,): (u64,) = params.parse()?;
        let batch = settler
            .batch(id)
            .await
            .map_err(internal)?
            .ok_or_else(|| error(codes::INVALID_PARAMS, format!("unknown batch {id}")))?;
        let mut value = serde_json::to_value(&batch).map_err(internal)?;
        if batch.mode == crate::AnchorMode::Blob {
            // The blob itself, so anyone can recompute the commitment and the versioned hash.
            // KZG on a blocking thread: it takes long enough to starve the runtime.
            let blob_of = batch.clone();
            let sidecar = tokio::task::spawn_blocking(move || blob_of.sidecar())
                .await
                .map_err(internal)?
                .map_err(internal)?;
            value["blob"] =
                json!(alloy::primitives::Bytes::copy_from_slice(sidecar.blobs[0].as_slice()));
        }
        let anchor = settler.anchor_chain();
        value["anchor"] = json!(anchor.anchor);
        value["operator"] = json!(anchor.committer());
        value["streamsOperator"] = json!(settler.operator());
        value["anchorChainId"] = json!(anchor.chain_id);
        let costs = batch.costs.l2_wei().saturating_add(batch.costs.anchor_wei());
        value["costs"]["totalWei"] = json!(costs.to_string());
        if let Some(price) = settler.eth_price_micro_usd() {
            // Of the amount settled, in a USD token of 6 decimals: parts per million.
            let ppm = crate::overhead_ppm(costs, batch.total, price);
            value["costs"]["overheadPpm"] = json!(ppm.map(|p| p.to_string()));
        }
        Ok::<_, ErrorObjectOwned>(value)
    });
    module
}

/// The billing methods settlement serves, behind the billing API keys:
/// `billing_invoice({payer, from, to})` with the lines of the key's payees only, and
/// `stream_recordUsage({streamId, digest, at?})` for the key's streams. Their errors are
/// [`BillingError`]s, coded by the billing edge's one table.
pub fn register_billing(
    module: &mut RpcModule<()>,
    billing: Arc<settled_streams::Billing>,
    settler: Arc<Settler>,
) {
    let (invoice_billing, invoice_settler) = (billing.clone(), settler.clone());
    // The names are distinct constants: registration cannot collide.
    let _ = module.register_async_method("billing_invoice", move |params, _, extensions| {
        let (billing, settler) = (invoice_billing.clone(), invoice_settler.clone());
        async move {
            invoice(&billing, &settler, params, &extensions).await.map_err(ErrorObjectOwned::from)
        }
    });
    let (usage_billing, usage_settler) = (billing.clone(), settler.clone());
    let _ = module.register_async_method("stream_recordUsage", move |params, _, extensions| {
        let (billing, settler) = (usage_billing.clone(), usage_settler.clone());
        async move {
            record_usage(&billing, &settler, params, &extensions)
                .await
                .map_err(ErrorObjectOwned::from)
        }
    });
    crate::orders_rpc::register_orders(module, billing, settler);
}

fn billing_internal(e: impl std::fmt::Display) -> BillingError {
    BillingError::Internal(e.to_string())
}

/// `billing_invoice`: the payer's lines for the key's payees, as JSON (default), CSV, or a UBL
/// (Peppol BIS 3) or cXML document rolled up per purchase-order line.
async fn invoice(
    billing: &settled_streams::Billing,
    settler: &Settler,
    params: Params<'static>,
    extensions: &Extensions,
) -> Result<serde_json::Value, BillingError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct InvoiceRequest {
        payer: alloy::primitives::Address,
        from: u64,
        to: u64,
        #[serde(default)]
        format: crate::DocumentFormat,
    }
    let key = billing.key(extensions)?;
    let (request,): (InvoiceRequest,) = params.parse()?;
    if request.to < request.from {
        return Err(BillingError::InvalidParams("`to` is before `from`".into()));
    }
    let (payer, from, to) = (request.payer, request.from, request.to);
    let visible = |payee: &alloy::primitives::Address| key.may_see(*payee);
    match request.format {
        crate::DocumentFormat::Json | crate::DocumentFormat::Csv => {
            let invoice =
                settler.invoice(payer, from, to, visible).await.map_err(billing_internal)?;
            if request.format == crate::DocumentFormat::Json {
                return serde_json::to_value(invoice).map_err(billing_internal);
            }
            Ok(json!({ "format": "csv", "contentType": "text/csv", "document": invoice.csv }))
        }
        format => {
            let document =
                settler.invoice_document(format, payer, from, to, visible).await.map_err(|e| {
                    if e.is_internal() {
                        billing_internal(e)
                    } else {
                        BillingError::InvalidParams(e.to_string())
                    }
                })?;
            serde_json::to_value(document).map_err(billing_internal)
        }
    }
}

/// `stream_recordUsage`: a usage digest for one of the key's streams, at a second not yet
/// settled.
async fn record_usage(
    billing: &settled_streams::Billing,
    settler: &Settler,
    params: Params<'_>,
    extensions: &Extensions,
) -> Result<serde_json::Value, BillingError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct UsageRequest {
        stream_id: String,
        digest: alloy::primitives::B256,
        at: Option<u64>,
    }
    /// How far past the chain's clock a report may be (a millisecond timestamp is refused).
    const MAX_AHEAD_SECS: u64 = 86_400;
    let key = billing.key(extensions)?;
    let (request,): (UsageRequest,) = params.parse()?;
    let stream = settled_streams::parse_stream_id(&request.stream_id)?;
    billing.visible(key, stream).await?;
    let now = billing.now().await?;
    let at = request.at.unwrap_or(now);
    if at > now.saturating_add(MAX_AHEAD_SECS) {
        return Err(BillingError::InvalidParams(format!(
            "at {at} is more than a day after the chain's clock ({now}): seconds?"
        )));
    }
    settler.record_usage(stream, at, request.digest).await.map_err(|e| match e {
        super::UsageError::Settled { .. } => BillingError::InvalidParams(e.to_string()),
        super::UsageError::Storage(_) => billing_internal(e),
    })?;
    Ok(json!({ "streamId": stream.to_string(), "at": at, "digest": request.digest }))
}

#[cfg(test)]
mod tests {
    /// The published OpenRPC document names exactly the methods served, with their codes.
    #[tokio::test]
    async fn openrpc_document_lists_every_method() -> Result<(), Box<dyn std::error::Error>> {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../openrpc/settlement.json"))?;
        let mut documented: Vec<&str> = doc["methods"]
            .as_array()
            .ok_or("no methods")?
            .iter()
            .filter_map(|m| m["name"].as_str())
            .collect();
        documented.sort_unstable();
        // A scheduler over a provider that is never called (registration needs no chain).
        let dir = tempfile::tempdir()?;
        let db = sled::open(dir.path())?;
        let settler = std::sync::Arc::new(crate::fixtures::settler(&db).await?);
        let index = std::sync::Arc::new(
            settled_streams::StreamIndex::open(
                &db,
                alloy::primitives::Address::ZERO,
                8,
                Default::default(),
            )
            .await?,
        );
        let module = super::settlement_module(settler.clone(), true);
        let mut served: Vec<&str> = module.method_names().collect();
        served.sort_unstable();
        assert_eq!(documented, served);
        // The billing methods settlement serves are in the billing API's document.
        let billing_doc: serde_json::Value =
            serde_json::from_str(include_str!("../../streams/openrpc/stream.json"))?;
        let billing_documented: Vec<&str> = billing_doc["methods"]
            .as_array()
            .ok_or("no methods")?
            .iter()
            .filter_map(|m| m["name"].as_str())
            .collect();
        let (_, billing) = settled_streams::billing_module(index, Vec::new(), None, None);
        let mut billing_module = jsonrpsee::RpcModule::new(());
        super::register_billing(&mut billing_module, billing, settler);
        let names: Vec<&str> = billing_module.method_names().collect();
        assert_eq!(names.len(), 6, "{names:?}");
        for name in names.into_iter().filter(|n| !n.starts_with("billing_unsubscribe")) {
            assert!(billing_documented.contains(&name), "{name} is not in stream.json");
        }
        assert_eq!(
            doc["components"]["errors"]["InvalidParams"]["code"].as_i64(),
            Some(i64::from(super::codes::INVALID_PARAMS))
        );
        Ok(())
    }
}
