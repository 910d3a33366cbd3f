//! `settled invoice`: asks a running node for a payer's invoice (`billing_invoice`) and writes
//! the document.

use settled_config::InvoiceCommandConfig;

/// The document's text (UBL/cXML XML, CSV, or the JSON answer), or why not: the node's
/// JSON-RPC error with its code, or the transport's.
pub async fn run_invoice_command(command: &InvoiceCommandConfig) -> Result<String, String> {
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "billing_invoice",
        "params": [{
            "payer": command.payer, "from": command.from, "to": command.to,
            "format": command.format,
        }],
    });
    let client = alloy::transports::http::reqwest::Client::new();
    let response = client
        .post(&command.node_url)
        .bearer_auth(&command.api_key)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("{}: {e}", command.node_url))?;
    let status = response.status();
    let answer: serde_json::Value =
        response.json().await.map_err(|e| format!("{}: HTTP {status}: {e}", command.node_url))?;
    if let Some(error) = answer.get("error") {
        return Err(format!("billing_invoice: {} ({})", error["message"], error["code"]));
    }
    let result = &answer["result"];
    match result["document"].as_str() {
        Some(document) => Ok(document.to_string()),
        None => serde_json::to_string_pretty(result).map_err(|e| e.to_string()),
    }
}
