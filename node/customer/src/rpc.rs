//! `billing_customerLink` (behind a billing API key) and `customer_rotateLinkKey` (admin).

use std::sync::Arc;

use alloy::primitives::Address;
use jsonrpsee::{RpcModule, types::ErrorObjectOwned};
use serde_json::json;
use settled_streams::{Billing, BillingError};

use crate::{link::CustomerLinks, pages::PREFIX};

/// The longest a link may live: a year.
pub const MAX_LINK_SECS: u64 = 366 * 86_400;

/// Registers `billing_customerLink({payer, expiresAt})` → `{url, token, expiresAt}` (a read-only
/// link to the payer's page, scoped to the calling key's payees; `url` starts with
/// `public_url` once it is known) on `module`, and with `admin` `customer_rotateLinkKey()`,
/// which revokes every link issued so far.
pub fn register_customer_link(
    module: &mut RpcModule<()>,
    billing: Arc<Billing>,
    links: Arc<CustomerLinks>,
    public_url: Arc<std::sync::OnceLock<String>>,
    admin: bool,
) {
    let (issuing, billing_for_links) = (links.clone(), billing.clone());
    // The names are distinct constants: registration cannot collide.
    let _ = module.register_blocking_method("billing_customerLink", move |params, _, ext| {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct LinkRequest {
            payer: Address,
            expires_at: u64,
        }
        let key = billing_for_links.key(&ext)?;
        let (request,): (LinkRequest,) = params.parse().map_err(BillingError::from)?;
        let now = unix_now();
        if request.expires_at <= now || request.expires_at > now + MAX_LINK_SECS {
            return Err(BillingError::InvalidParams(format!(
                "expiresAt must be a unix second after now ({now}) and within a year"
            ))
            .into());
        }
        let token = issuing
            .issue(request.payer, request.expires_at, &key.name)
            .map_err(|e| BillingError::Internal(e.to_string()))?;
        let origin = public_url.get().map_or("", |u| u.trim_end_matches('/'));
        let url = format!("{origin}{PREFIX}{token}");
        Ok::<_, ErrorObjectOwned>(
            json!({ "url": url, "token": token, "expiresAt": request.expires_at }),
        )
    });
    register_notices(module, billing.clone(), links.clone());
    if admin {
        let _ = module.register_blocking_method("customer_rotateLinkKey", move |_, _, _| {
            links
                .rotate()
                .map_err(|e| ErrorObjectOwned::from(BillingError::Internal(e.to_string())))?;
            Ok::<_, ErrorObjectOwned>(json!("rotated"))
        });
    }
}

/// `customer_subscribe(token)` → `customer_notice`s: the stream notices (`StreamNotice`, as
/// `stream_subscribe` sends them) of the link's payer and key, until the link expires — what the
/// page resyncs its ticking balances on.
fn register_notices(module: &mut RpcModule<()>, billing: Arc<Billing>, links: Arc<CustomerLinks>) {
    // The names are distinct constants: registration cannot collide.
    let _ = module.register_subscription(
        "customer_subscribe",
        "customer_notice",
        "customer_unsubscribe",
        move |params, pending, _, _| {
            let (billing, links) = (billing.clone(), links.clone());
            async move {
                let token: String = match params.one() {
                    Ok(token) => token,
                    Err(e) => {
                        pending.reject(e).await;
                        return Ok(());
                    }
                };
                let claims = links.verify(&token, unix_now()).ok();
                let key = claims.and_then(|c| {
                    billing.keys().find(|k| crate::key_tag(&k.name) == c.key_tag).cloned()
                });
                let (Some(claims), Some(key)) = (claims, key) else {
                    pending
                        .reject(BillingError::Unauthorized("invalid or expired link".into()))
                        .await;
                    return Ok(());
                };
                let notices = billing.index().subscribe();
                let sink = pending.accept().await?;
                settled_streams::forward(sink, notices, |notice: &settled_streams::StreamNotice| {
                    let stream = &notice.stream;
                    if unix_now() > claims.expires_at {
                        settled_streams::Relay::Stop
                    } else if stream.payer != claims.payer || !key.may_see(stream.payee) {
                        settled_streams::Relay::Skip
                    } else {
                        settled_streams::Relay::Send
                    }
                })
                .await
            }
        },
    );
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenRPC document lists exactly the methods served (with `--rpc.admin`), and every
    /// error it names has the billing edge's code.
    #[tokio::test]
    async fn openrpc_document_lists_every_method() -> Result<(), Box<dyn std::error::Error>> {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../openrpc/customer.json"))?;
        let mut documented: Vec<&str> = doc["methods"]
            .as_array()
            .ok_or("no methods")?
            .iter()
            .filter_map(|m| m["name"].as_str())
            .collect();
        documented.sort_unstable();
        let dir = tempfile::tempdir()?;
        let db = sled::open(dir.path().join("db"))?;
        let index = Arc::new(
            settled_streams::StreamIndex::open(&db, Address::ZERO, 8, Default::default()).await?,
        );
        let (_, billing) = settled_streams::billing_module(index, Vec::new(), None, None);
        let links = Arc::new(CustomerLinks::open(dir.path())?);
        let mut module = RpcModule::new(());
        let url = Arc::new(std::sync::OnceLock::new());
        register_customer_link(&mut module, billing, links, url, true);
        let mut served: Vec<&str> = module.method_names().collect();
        // A subscription registers its unsubscribe method too; the document lists it with the
        // subscription.
        served.retain(|m| *m != "customer_unsubscribe");
        served.sort_unstable();
        assert_eq!(documented, served);
        let codes = &doc["components"]["errors"];
        let billing_codes = [
            ("InvalidParams", settled_streams::billing_codes::INVALID_PARAMS),
            ("Unauthorized", settled_streams::billing_codes::UNAUTHORIZED),
            ("Internal", settled_streams::billing_codes::INTERNAL),
        ];
        for (name, code) in billing_codes {
            assert_eq!(codes[name]["code"].as_i64(), Some(i64::from(code)), "{name}");
        }
        Ok(())
    }
}
