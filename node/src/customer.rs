//! The customer page on the JSON-RPC port, and `billing_customerLink` beside the `stream_*`
//! methods.

use std::sync::{Arc, OnceLock};

use jsonrpsee::RpcModule;
use settled_customer::{CustomerPages, register_customer_link};
use settled_server::Pages;
use settled_settlement::Settler;
use settled_streams::Billing;

use crate::{NodeConfig, NodeError};

/// The customer pages over `billing`'s index and keys (and `settler`'s batches), their link
/// method registered on `module`; links name `public_url`, set once the server is bound.
pub(crate) fn customer_pages(
    config: &NodeConfig,
    module: &mut RpcModule<()>,
    billing: Arc<Billing>,
    settler: Option<Arc<Settler>>,
    public_url: Arc<OnceLock<String>>,
) -> Result<Arc<dyn Pages>, NodeError> {
    let low_balance_secs = config.billing.alerts.low_balance_secs;
    let (pages, links) = CustomerPages::open(&config.datadir, &billing, settler, low_balance_secs)
        .map_err(|e| NodeError::Storage { path: config.datadir.clone(), reason: e.to_string() })?;
    register_customer_link(module, billing, links, public_url, config.rpc.admin);
    Ok(Arc::new(pages))
}
