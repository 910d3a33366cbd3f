//! JSON-RPC 2.0 request ids: a string, a number or null. jsonrpsee answers a request whose id is
//! anything else (`{"id": {}}`, `[1]`, `1.5`) with a bare `null`, which no client can match to
//! its call (#20 item 8); such a request gets `-32600 Invalid Request` with a null id instead.

use serde_json::{Value, json};

/// JSON-RPC's code for a request that is not a valid request object.
pub(crate) const INVALID_REQUEST: i64 = -32600;

/// Bodies up to this size are checked before jsonrpsee parses them; larger ones (rare, and
/// bounded by the body budget) pass unchecked.
pub(crate) const CHECKED_BODY_BYTES: usize = 64 * 1024;

/// The answer for `body` if one of its requests has an id JSON-RPC does not allow; `None` when
/// every id is fine (or the body is not JSON: jsonrpsee's parse error says so).
pub(crate) fn invalid_id_answer(body: &[u8]) -> Option<Value> {
    let parsed: Value = serde_json::from_slice(body).ok()?;
    let requests = match &parsed {
        Value::Array(batch) => batch.iter().collect::<Vec<_>>(),
        single => vec![single],
    };
    let bad = requests.iter().filter_map(|r| r.get("id")).find(|id| !allowed(id))?;
    Some(json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": INVALID_REQUEST,
            "message": format!("Invalid request: the id must be a string, an integer or null, not {bad}"),
        },
    }))
}

fn allowed(id: &Value) -> bool {
    match id {
        Value::Null | Value::String(_) => true,
        Value::Number(n) => n.is_i64() || n.is_u64(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_strings_integers_or_null() {
        let request = |id: &str| format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_chainId"}}"#);
        for good in ["1", "\"a\"", "null", "18446744073709551615"] {
            assert_eq!(invalid_id_answer(request(good).as_bytes()), None, "{good}");
        }
        assert_eq!(invalid_id_answer(br#"{"jsonrpc":"2.0","method":"eth_chainId"}"#), None);
        assert_eq!(invalid_id_answer(b"not json"), None, "jsonrpsee's parse error answers it");
        for bad in ["{}", "[1]", "1.5", "true"] {
            let answer = invalid_id_answer(request(bad).as_bytes());
            let answer = answer.unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(answer["error"]["code"], json!(INVALID_REQUEST));
            assert_eq!(answer["id"], Value::Null);
        }
        let batch = format!("[{},{}]", request("1"), request("{}"));
        assert!(invalid_id_answer(batch.as_bytes()).is_some(), "one bad id in a batch");
    }
}
