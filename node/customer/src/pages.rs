//! The routes under `/customer/<token>`: the page, its data, the chart, a stream's receipt, and a
//! read-only relay of the two anchor calls the browser's Verify makes.

use std::{future::Future, pin::Pin, sync::Arc};

use alloy::{
    primitives::{Address, Bytes},
    providers::Provider,
    rpc::types::TransactionRequest,
    sol_types::SolCall,
};
use serde_json::{Value, json};
use settled_contracts::SettlementAnchor;
use settled_server::{PageRequest, PageResponse, Pages};

use crate::{
    chart::{Range, burn_down, render},
    data::PageData,
    link::{CustomerLinks, LinkClaims, LinkError},
};

/// The page, embedded in the binary (markup, style and script in one file: nothing is fetched
/// from elsewhere).
const PAGE: &str = include_str!("../assets/page.html");
/// The path prefix.
pub const PREFIX: &str = "/customer/";

/// The customer pages of one node.
#[derive(Debug)]
pub struct CustomerPages {
    pub(crate) links: Arc<CustomerLinks>,
    pub(crate) data: Arc<PageData>,
}

impl Pages for CustomerPages {
    fn prefix(&self) -> &'static str {
        PREFIX
    }

    fn answer(&self, request: PageRequest) -> Pin<Box<dyn Future<Output = PageResponse> + Send>> {
        let (links, data) = (self.links.clone(), self.data.clone());
        Box::pin(async move { route(&links, &data, request).await })
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn route(links: &CustomerLinks, data: &Arc<PageData>, request: PageRequest) -> PageResponse {
    let rest = request.path.trim_start_matches(PREFIX);
    let (token, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let claims = match links.verify(token, unix_now()) {
        Ok(claims) if data.key(&claims).is_some() => claims,
        refused => return refusal(refused.err(), tail.is_empty()),
    };
    let query = |name: &str| query_value(&request.query, name);
    match (request.method.as_str(), tail) {
        ("GET", "") => PageResponse::ok("text/html; charset=utf-8", PAGE),
        ("GET", "data") => match data.overview(&claims).await {
            Ok(value) => PageResponse::json(&value),
            Err(error) => PageResponse::error(500, error),
        },
        ("GET", "chart.svg") => chart(data, &claims, query("stream"), query("range")).await,
        ("GET", "invoice.csv" | "invoice.json") => invoice(data, &claims, tail).await,
        ("GET", "receipt") => receipt(data, &claims, query("stream"), query("batch")).await,
        ("POST", "chain") => relay(data, &request.body).await,
        _ => PageResponse::error(404, "not found"),
    }
}

/// A refused link: a short page for a person (the page's own URL), JSON for its requests.
fn refusal(error: Option<LinkError>, page: bool) -> PageResponse {
    let (status, message) = match &error {
        Some(expired @ LinkError::Expired(_)) => (410, expired.to_string()),
        Some(LinkError::Storage(_)) => (500, "this page cannot be shown right now".into()),
        // A forged or altered token, or one whose billing key is gone.
        _ => (403, "this link is not valid; ask the vendor for a new one".to_string()),
    };
    if !page {
        return PageResponse::error(status, message);
    }
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width, initial-scale=1\"><title>Link not valid</title></head>\
         <body style=\"font:16px system-ui,sans-serif;max-width:640px;margin:40px auto;padding:0 16px\">\
         <h1>This page cannot be shown</h1><p>{message}.</p></body></html>"
    );
    PageResponse { status, content_type: "text/html; charset=utf-8", body: html.into_bytes() }
}

/// The payer's invoice over every settled period (`billing_invoice`'s JSON, or its CSV).
async fn invoice(data: &PageData, claims: &LinkClaims, file: &str) -> PageResponse {
    let (Some(settler), Some(key)) = (&data.settler, data.key(claims)) else {
        return PageResponse::error(404, "this node does not settle");
    };
    match settler.invoice(claims.payer, 0, u64::MAX, |payee| key.may_see(*payee)).await {
        Ok(invoice) if file == "invoice.csv" => {
            PageResponse::ok("text/csv; charset=utf-8", invoice.csv)
        }
        Ok(invoice) => match serde_json::to_value(invoice) {
            Ok(value) => PageResponse::json(&value),
            Err(error) => PageResponse::error(500, error),
        },
        Err(error) => PageResponse::error(500, error),
    }
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.to_string())
    })
}

async fn chart(
    data: &PageData,
    claims: &LinkClaims,
    stream: Option<String>,
    range: Option<String>,
) -> PageResponse {
    let Some(id) = stream.and_then(|s| s.parse::<u64>().ok()) else {
        return PageResponse::error(400, "stream=<id> is required");
    };
    let Some(range) = Range::parse(range.as_deref().unwrap_or("day")) else {
        return PageResponse::error(400, "range is day, week or month");
    };
    let Some(state) = data.stream(claims, id).await else {
        return PageResponse::error(404, format!("no stream {id} of this payer"));
    };
    let title = format!("stream {id}: remaining balance");
    match burn_down(&data.index, id, data.now().await, range)
        .await
        .and_then(|c| render(&c, state.decimals, &title))
    {
        Ok(svg) => PageResponse::ok("image/svg+xml", svg),
        Err(error) => PageResponse::error(500, error),
    }
}

async fn receipt(
    data: &PageData,
    claims: &LinkClaims,
    stream: Option<String>,
    batch: Option<String>,
) -> PageResponse {
    let (Some(stream), Some(batch)) =
        (stream.and_then(|s| s.parse::<u64>().ok()), batch.and_then(|b| b.parse::<u64>().ok()))
    else {
        return PageResponse::error(400, "stream=<id>&batch=<id> are required");
    };
    let (Some(settler), Some(_)) = (&data.settler, data.stream(claims, stream).await) else {
        return PageResponse::error(404, format!("no stream {stream} of this payer"));
    };
    match settler.receipt(stream, batch).await {
        Ok(Some(receipt)) => match serde_json::to_value(receipt) {
            Ok(value) => PageResponse::json(&value),
            Err(error) => PageResponse::error(500, error),
        },
        Ok(None) => {
            PageResponse::error(404, format!("batch {batch} has no record of stream {stream}"))
        }
        Err(error) => PageResponse::error(500, error),
    }
}

/// `{"method": "eth_call", "params": [{"to", "data"}]}` for `SettlementAnchor.getBatch` or
/// `.verify` at the anchor, on the anchor chain; nothing else is relayed.
async fn relay(data: &PageData, body: &[u8]) -> PageResponse {
    let Some(settler) = &data.settler else {
        return PageResponse::error(404, "this node does not settle");
    };
    let anchor = settler.anchor_chain();
    let Ok(call) = serde_json::from_slice::<Value>(body) else {
        return PageResponse::error(400, "a JSON body is required");
    };
    let to: Option<Address> = serde_json::from_value(call["params"][0]["to"].clone()).ok();
    let input: Option<Bytes> = serde_json::from_value(call["params"][0]["data"].clone()).ok();
    let (Some(to), Some(input)) = (to, input) else {
        return PageResponse::error(400, "params[0] needs `to` and `data`");
    };
    let selector = input.get(..4).unwrap_or_default();
    let allowed = [
        SettlementAnchor::getBatchCall::SELECTOR.as_slice(),
        SettlementAnchor::verifyCall::SELECTOR.as_slice(),
    ];
    if call["method"] != "eth_call" || to != anchor.anchor || !allowed.contains(&selector) {
        return PageResponse::error(403, "only the anchor's getBatch and verify are relayed");
    }
    let request = TransactionRequest::default().to(to).input(input.into());
    match anchor.provider().call(request).await {
        Ok(output) => PageResponse::json(&json!({
            "result": output,
            "chainId": anchor.chain_id,
        })),
        Err(error) => PageResponse::error(502, error),
    }
}
