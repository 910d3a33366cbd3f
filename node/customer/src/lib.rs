//! The customer page: what a vendor's customer sees of its own bill, live.
//!
//! * [`CustomerLinks`]: signed, expiring, payer-scoped link tokens (HMAC-SHA256 with a secret
//!   kept in the datadir; rotating it revokes every link). Issued by `billing_customerLink`
//!   behind a billing API key ([`register_customer_link`]).
//! * [`CustomerPages`]: `GET /customer/<token>` on the node's JSON-RPC port — the page (embedded;
//!   nothing fetched from elsewhere), its data (the payer's streams with the accrual state the
//!   browser ticks the balance from, and its bill period by period), the burn-down chart as SVG
//!   (`plotters`), each stream's settlement receipt, and a relay of exactly the two anchor calls
//!   the browser's Verify makes (`getBatch`, `verify`) on the anchor chain.

mod chart;
mod data;
mod link;
mod pages;
mod rpc;

use std::{path::Path, sync::Arc};

pub use chart::Range;
pub use link::{CustomerLinks, LinkClaims, LinkError, key_tag};
pub use pages::{CustomerPages, PREFIX};
pub use rpc::{MAX_LINK_SECS, register_customer_link};

use settled_settlement::Settler;
use settled_streams::Billing;

impl CustomerPages {
    /// The pages of a node whose datadir is `datadir`, reading what `billing` reads (its index
    /// and keys) and, when it settles, `settler`'s batches. The links are shared with
    /// [`register_customer_link`].
    pub fn open(
        datadir: &Path,
        billing: &Billing,
        settler: Option<Arc<Settler>>,
        low_balance_secs: u64,
    ) -> Result<(Self, Arc<CustomerLinks>), LinkError> {
        let links = Arc::new(CustomerLinks::open(datadir)?);
        let data = data::PageData {
            index: billing.index().clone(),
            settler,
            keys: billing.keys().cloned().collect(),
            low_balance_secs,
        };
        Ok((Self { links: links.clone(), data: Arc::new(data) }, links))
    }
}
