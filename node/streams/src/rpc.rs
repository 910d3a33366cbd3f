//! The billing JSON-RPC (`stream_*`), read side: streams as the node's index mirrors them, with
//! exact balances at any second. Every call needs an API key (`Authorization: Bearer <token>`);
//! keys are configured by their keccak-256 hash, each with the payees it may see.
//!
//! Amounts are decimal strings in the token's base units; `ratePerSecond` is a decimal string
//! scaled to 18 decimals (`rateScale: 18`).

use std::{collections::HashMap, path::Path, sync::Arc};

use alloy::primitives::{Address, B256, keccak256};
use jsonrpsee::{
    Extensions, RpcModule,
    types::{ErrorObject, ErrorObjectOwned, Params},
};
use serde::{Deserialize, Serialize};

use crate::BillingError;

use super::{
    accrual::StreamState,
    index::{IndexError, StreamId, StreamIndex, StreamSelector},
};

/// JSON-RPC error codes of the billing namespace.
pub mod codes {
    /// Malformed parameters, unknown stream, a time before the stream was opened.
    pub const INVALID_PARAMS: i32 = -32602;
    /// No API key, or one the node does not know.
    pub const UNAUTHORIZED: i32 = -32001;
    /// The key may not see this stream (its payee is outside the key's scope).
    pub const FORBIDDEN: i32 = -32003;
    /// A call with the same idempotency key is in progress, or its transaction is not mined
    /// yet: retry.
    pub const CONFLICT: i32 = -32004;
    /// The node failed.
    pub const INTERNAL: i32 = -32603;
}

/// One configured API key: a name, the keccak-256 of its token, the payees it may see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKey {
    /// For logs and operators.
    pub name: String,
    /// keccak-256 of the bearer token (the token itself is never stored).
    pub keccak256: B256,
    /// Payees whose streams the key may see; empty means none, `all = true` means every payee.
    #[serde(default)]
    pub payees: Vec<Address>,
    /// Every payee.
    #[serde(default)]
    pub all: bool,
}

impl ApiKey {
    /// Whether the key may see streams paying `payee`.
    pub fn may_see(&self, payee: Address) -> bool {
        self.all || self.payees.contains(&payee)
    }

    /// The `[[keys]]` of a TOML file.
    pub fn load_file(path: &Path) -> Result<Vec<Self>, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct KeysFile {
            #[serde(default)]
            keys: Vec<ApiKey>,
        }
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let file: KeysFile = toml::from_str(&text).map_err(|e| e.to_string())?;
        Ok(file.keys)
    }
}

/// A stream as the billing RPC shows it, with its balances at `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamView {
    /// The stream id.
    pub id: String,
    /// Funds it.
    pub payer: Address,
    /// Earns from it.
    pub payee: Address,
    /// The token.
    pub token: Address,
    /// The vendor's node.
    pub operator: Address,
    /// Token decimals.
    pub decimals: u8,
    /// Rate, scaled by 10^`rateScale`, per second.
    pub rate_per_second: String,
    /// Always 18.
    pub rate_scale: u8,
    /// `active`, `paused` or `closed`.
    pub status: String,
    /// Base units held for the stream.
    pub balance: String,
    /// Base units paid out so far.
    pub withdrawn: String,
    /// Second the balances below are computed at.
    pub at: u64,
    /// Everything owed at `at`.
    pub total_debt: String,
    /// What the balance covers (withdrawable).
    pub covered_debt: String,
    /// What it does not.
    pub uncovered_debt: String,
    /// What the payer could take back.
    pub refundable: String,
    /// First second the debt exceeds the balance (0: already; null: never).
    pub depletion_time: Option<u64>,
}

impl StreamView {
    /// Stream `id` in state `s`, its balances at second `at`.
    pub fn new(id: StreamId, s: &StreamState, at: u64) -> Self {
        let status = s.status();
        let depletion = s.depletion_time(at);
        Self {
            id: id.to_string(),
            payer: s.payer,
            payee: s.payee,
            token: s.token,
            operator: s.operator,
            decimals: s.decimals,
            rate_per_second: s.rate_per_second.to_string(),
            rate_scale: 18,
            status: status.into(),
            balance: s.balance.to_string(),
            withdrawn: s.withdrawn.to_string(),
            at,
            total_debt: s.total_debt(at).to_string(),
            covered_debt: s.covered_debt(at).to_string(),
            uncovered_debt: s.uncovered_debt(at).to_string(),
            refundable: s.refundable(at).to_string(),
            depletion_time: (depletion != super::NEVER_DEPLETES).then_some(depletion),
        }
    }
}

/// `stream_list`'s filter and page.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListQuery {
    /// Only this payer's streams.
    #[serde(default)]
    pub payer: Option<Address>,
    /// Only this payee's streams.
    #[serde(default)]
    pub payee: Option<Address>,
    /// `active`, `paused` or `closed`.
    #[serde(default)]
    pub status: Option<String>,
    /// The `nextCursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size (1–1,000; default 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `stream_list`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamPage {
    /// The streams.
    pub streams: Vec<StreamView>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// The billing RPC's shared state: the index it reads and the API keys it admits.
pub struct Billing {
    index: Arc<StreamIndex>,
    keys: HashMap<B256, ApiKey>,
}

/// The billing edge's one table: each [`BillingError`] with its JSON-RPC code (the bundler's
/// and the paymaster's refusals keep their own ERC-7769 codes and data).
impl From<BillingError> for ErrorObjectOwned {
    fn from(error: BillingError) -> Self {
        let code = match error {
            BillingError::Bundler(e) => return e.into(),
            BillingError::Paymaster(e) => return e.into(),
            BillingError::InvalidParams(_) => codes::INVALID_PARAMS,
            BillingError::Unauthorized(_) => codes::UNAUTHORIZED,
            BillingError::Forbidden(_) => codes::FORBIDDEN,
            BillingError::Busy(_) => codes::CONFLICT,
            BillingError::Internal(_) => codes::INTERNAL,
        };
        ErrorObject::owned(code, error.to_string(), None::<()>)
    }
}

fn internal(e: IndexError) -> BillingError {
    BillingError::Internal(e.to_string())
}

/// A stream id as the billing API takes it: a decimal string.
pub fn parse_stream_id(text: &str) -> Result<StreamId, BillingError> {
    text.parse::<StreamId>().map_err(|_| {
        BillingError::InvalidParams(format!("stream id {text:?} is not a decimal integer"))
    })
}

impl Billing {
    /// The caller's API key (-32001 without a known one).
    pub fn key(&self, extensions: &Extensions) -> Result<&ApiKey, BillingError> {
        let token = extensions.get::<settled_server::BearerToken>().ok_or_else(|| {
            BillingError::Unauthorized(
                "missing API key: send `Authorization: Bearer <token>`".into(),
            )
        })?;
        self.keys
            .get(&keccak256(token.as_str().as_bytes()))
            .ok_or_else(|| BillingError::Unauthorized("unknown API key".into()))
    }

    /// Stream `id`'s state, if `key` may see it.
    pub async fn visible(&self, key: &ApiKey, id: StreamId) -> Result<StreamState, BillingError> {
        let state = self.index.get(id).await.map_err(internal)?;
        match state {
            Some(s) if key.may_see(s.payee) => Ok(s),
            Some(_) => {
                Err(BillingError::Forbidden(format!("stream {id} is outside this key's payees")))
            }
            None => Err(BillingError::InvalidParams(format!("unknown stream {id}"))),
        }
    }

    /// Waits (up to 10 s) until the index has applied `block`.
    pub(crate) async fn wait_for_block(&self, block: u64) {
        self.index.wait_for_block(block, std::time::Duration::from_secs(10)).await;
    }

    /// The index the billing RPC reads.
    pub fn index(&self) -> &Arc<StreamIndex> {
        &self.index
    }

    /// The configured API keys.
    pub fn keys(&self) -> impl Iterator<Item = &ApiKey> {
        self.keys.values()
    }

    /// The second of the newest block the index applied (0 before any).
    pub async fn now(&self) -> Result<u64, BillingError> {
        Ok(self.index.cursor().await.map_err(internal)?.map_or(0, |c| c.timestamp))
    }
}

/// The `stream_*` methods over `index`, for the holders of `keys`; with an `operator`, the
/// mutating ones too. The [`Billing`] it serves with, for namespaces that share its keys
/// (settlement's `billing_*`).
pub fn billing_module(
    index: Arc<StreamIndex>,
    keys: Vec<ApiKey>,
    operator: Option<Arc<super::operator::Operator>>,
    opener: Option<Arc<super::open::Opener>>,
) -> (RpcModule<()>, Arc<Billing>) {
    let billing =
        Arc::new(Billing { index, keys: keys.into_iter().map(|k| (k.keccak256, k)).collect() });
    let mut module = RpcModule::new(());
    register_reads(&mut module, &billing);

    register_subscription(&mut module, billing.clone());
    if let Some(opener) = opener {
        super::open::register_open(&mut module, billing.clone(), opener);
    }
    if let Some(operator) = operator {
        super::operator::register_mutations(&mut module, billing.clone(), operator);
    }
    (module, billing)
}

/// `stream_get`, `stream_balanceAt`, `stream_list`.
fn register_reads(module: &mut RpcModule<()>, billing: &Arc<Billing>) {
    for name in ["stream_get", "stream_balanceAt", "stream_list"] {
        let billing = billing.clone();
        // The names are distinct constants: registration cannot collide.
        let _ = module.register_async_method(name, move |params, _, extensions| {
            let billing = billing.clone();
            async move {
                match name {
                    "stream_get" => get_stream(&billing, params, &extensions).await,
                    "stream_balanceAt" => balance_at(&billing, params, &extensions).await,
                    _ => list_streams(&billing, params, &extensions).await,
                }
            }
        });
    }
}

/// `stream_get`: the stream now (at the index's newest second).
async fn get_stream(
    b: &Billing,
    params: Params<'static>,
    ext: &Extensions,
) -> Result<serde_json::Value, BillingError> {
    let key = b.key(ext)?;
    let (id,): (String,) = params.parse()?;
    let id = parse_stream_id(&id)?;
    let state = b.visible(key, id).await?;
    to_value(StreamView::new(id, &state, b.now().await?))
}

/// `stream_balanceAt`: the stream at a past second.
async fn balance_at(
    b: &Billing,
    params: Params<'static>,
    ext: &Extensions,
) -> Result<serde_json::Value, BillingError> {
    let key = b.key(ext)?;
    let (id, timestamp): (String, u64) = params.parse()?;
    let id = parse_stream_id(&id)?;
    b.visible(key, id).await?;
    let state = b.index.get_at(id, timestamp).await.map_err(internal)?.ok_or_else(|| {
        BillingError::InvalidParams(format!("stream {id} was not open yet at {timestamp}"))
    })?;
    to_value(StreamView::new(id, &state, timestamp))
}

/// `stream_list`: a page of the streams the key may see, filtered by party and status.
async fn list_streams(
    b: &Billing,
    params: Params<'static>,
    ext: &Extensions,
) -> Result<serde_json::Value, BillingError> {
    let key = b.key(ext)?;
    let mut sequence = params.sequence();
    let query: ListQuery = sequence.optional_next()?.unwrap_or_default();
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > 1_000 {
        return Err(BillingError::InvalidParams("limit must be 1 to 1000".into()));
    }
    if let Some(status) = &query.status
        && !["active", "paused", "closed"].contains(&status.as_str())
    {
        return Err(BillingError::InvalidParams(format!("unknown status {status:?}")));
    }
    let after = query.cursor.as_deref().map(parse_stream_id).transpose()?;
    let now = b.now().await?;
    // A party's own index when the query names one (or the key sees one payee only).
    let selector = match (query.payer, query.payee) {
        (Some(payer), _) => StreamSelector::Payer(payer),
        (None, Some(payee)) => StreamSelector::Payee(payee),
        (None, None) if !key.all && key.payees.len() == 1 => StreamSelector::Payee(key.payees[0]),
        (None, None) => StreamSelector::All,
    };
    let page = b
        .index
        .list(selector, after, limit + 1, |s| {
            let status = s.status();
            key.may_see(s.payee)
                && query.payer.is_none_or(|p| p == s.payer)
                && query.payee.is_none_or(|p| p == s.payee)
                && query.status.as_deref().is_none_or(|want| want == status)
        })
        .await
        .map_err(internal)?;
    let more = page.len() > limit;
    let streams: Vec<StreamView> =
        page.iter().take(limit).map(|(id, s)| StreamView::new(*id, s, now)).collect();
    let next_cursor = more.then(|| streams.last().map(|s| s.id.clone())).flatten();
    to_value(StreamPage { streams, next_cursor })
}

/// `stream_subscribe` (WebSocket): `stream_notice` notifications — every change of a stream the
/// key may see and its `lowBalance`/`depleted` alerts — optionally for one `{"streamId"}` only.
fn register_subscription(module: &mut RpcModule<()>, billing: Arc<Billing>) {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Filter {
        stream_id: Option<String>,
    }
    // The names are distinct constants: registration cannot collide.
    let _ = module.register_subscription(
        "stream_subscribe",
        "stream_notice",
        "stream_unsubscribe",
        move |params, pending, _, extensions| {
            let billing = billing.clone();
            async move {
                let key = match billing.key(&extensions) {
                    Ok(key) => key.clone(),
                    Err(e) => {
                        pending.reject(e).await;
                        return Ok(());
                    }
                };
                let mut sequence = params.sequence();
                let filter: Option<Filter> = match sequence.optional_next() {
                    Ok(filter) => filter,
                    Err(e) => {
                        pending.reject(e).await;
                        return Ok(());
                    }
                };
                let only = filter.and_then(|f| f.stream_id);
                let notices = billing.index.subscribe();
                let sink = pending.accept().await?;
                crate::forward(sink, notices, |notice: &crate::StreamNotice| {
                    let theirs = key.may_see(notice.stream.payee)
                        && only.as_ref().is_none_or(|id| *id == notice.stream.id);
                    if theirs { crate::Relay::Send } else { crate::Relay::Skip }
                })
                .await
            }
        },
    );
}

/// A non-negative decimal string (amounts, rates) as a number.
pub(crate) fn decimal(name: &str, text: &str) -> Result<alloy::primitives::U256, BillingError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BillingError::InvalidParams(format!("{name} must be a decimal string")));
    }
    alloy::primitives::U256::from_str_radix(text, 10)
        .map_err(|_| BillingError::InvalidParams(format!("{name} overflows 256 bits")))
}

fn to_value(value: impl Serialize) -> Result<serde_json::Value, BillingError> {
    serde_json::to_value(value).map_err(|e| BillingError::Internal(e.to_string()))
}

/// Keys from the settings: those given directly plus the keys file's.
pub fn api_keys(direct: &[ApiKey], file: Option<&Path>) -> Result<Vec<ApiKey>, String> {
    let mut keys = direct.to_vec();
    if let Some(path) = file {
        keys.extend(ApiKey::load_file(path)?);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published OpenRPC document names exactly the methods served (with an operator).
    #[tokio::test]
    async fn openrpc_document_lists_every_method() -> Result<(), Box<dyn std::error::Error>> {
        let doc: serde_json::Value = serde_json::from_str(include_str!("../openrpc/stream.json"))?;
        let mut documented: Vec<String> = doc["methods"]
            .as_array()
            .ok_or("no methods")?
            .iter()
            .filter_map(|m| m["name"].as_str().map(str::to_owned))
            .collect();
        documented.sort();
        let dir = tempfile::tempdir()?;
        let db = sled::open(dir.path())?;
        let index = Arc::new(StreamIndex::open(&db, Address::ZERO, 8, Default::default()).await?);
        // An operator over a provider that is never called (registration needs no chain).
        use alloy::providers::Provider as _;
        let provider = alloy::providers::ProviderBuilder::new()
            .connect_http("http://127.0.0.1:1".parse()?)
            .erased();
        let key = alloy::signers::local::PrivateKeySigner::random();
        let sender = Arc::new(settled_contracts::TransactionSender::new(provider, key));
        let sends = settled_store::Sends::embedded(&db)?;
        let operator = Arc::new(crate::operator::Operator::new(sender, Address::ZERO, sends));
        let (module, _) = billing_module(index, Vec::new(), Some(operator), None);
        let mut served: Vec<String> = module.method_names().map(str::to_owned).collect();
        // stream_open, stream_openTerms and stream_topUp also need a bundler and a paymaster,
        // billing_invoice the settlement scheduler; the e2e suites call them.
        served.extend(
            [
                "stream_open",
                "stream_openTerms",
                "stream_topUp",
                "billing_invoice",
                "stream_recordUsage",
                "billing_setPurchaseOrder",
                "billing_getPurchaseOrder",
                "billing_subscribePurchaseOrderAlerts",
            ]
            .map(String::from),
        );
        served.retain(|m| m != "stream_unsubscribe");
        served.sort();
        assert_eq!(documented, served);
        for (name, code) in [
            ("InvalidParams", codes::INVALID_PARAMS),
            ("Unauthorized", codes::UNAUTHORIZED),
            ("Forbidden", codes::FORBIDDEN),
            ("Conflict", codes::CONFLICT),
            ("Internal", codes::INTERNAL),
        ] {
            assert_eq!(doc["components"]["errors"][name]["code"].as_i64(), Some(i64::from(code)));
        }
        Ok(())
    }

    /// The billing edge's table: every [`BillingError`] with its code, the bundler's and the
    /// paymaster's refusals with theirs.
    #[test]
    fn every_billing_error_has_its_code() {
        use settled_contracts::rpc_codes as erc7769;
        let paymaster = || settled_paymaster::PaymasterError::UnknownPolicy("gold".into());
        let paymaster_code = ErrorObjectOwned::from(paymaster()).code();
        let table: Vec<(BillingError, i32)> = vec![
            (BillingError::InvalidParams("x".into()), codes::INVALID_PARAMS),
            (BillingError::Unauthorized("x".into()), codes::UNAUTHORIZED),
            (BillingError::Forbidden("x".into()), codes::FORBIDDEN),
            (BillingError::Busy("x".into()), codes::CONFLICT),
            (BillingError::Internal("x".into()), codes::INTERNAL),
            (settled_bundler::BundlerError::InvalidSignature.into(), erc7769::INVALID_SIGNATURE),
            (paymaster().into(), paymaster_code),
        ];
        for (error, code) in table {
            let message = error.to_string();
            let object = ErrorObjectOwned::from(error);
            assert_eq!((object.code(), object.message()), (code, message.as_str()));
        }
        let parse = BillingError::from(ErrorObjectOwned::owned(-32602, "bad", None::<()>));
        assert!(matches!(parse, BillingError::InvalidParams(m) if m == "bad"));
    }

    /// The codes each method declares, its `$ref`s resolved (a dangling one fails).
    fn declared_codes(doc: &serde_json::Value, method: &str) -> Vec<i64> {
        let mut methods = doc["methods"].as_array().into_iter().flatten();
        let method = methods.find(|m| m["name"] == method);
        let refs = method.and_then(|m| m["errors"].as_array()).into_iter().flatten();
        refs.map(|r| {
            let name = r["$ref"].as_str().and_then(|r| r.rsplit('/').next()).unwrap_or_default();
            let code = doc["components"]["errors"][name]["code"].as_i64();
            code.unwrap_or_else(|| panic!("{method:?}: dangling error {r}"))
        })
        .collect()
    }

    /// `stream_open` and `stream_topUp` answer the bundler's and the paymaster's ERC-7769 codes
    /// as they are (the op they prepare is theirs to judge): the document declares every one.
    #[test]
    fn openrpc_declares_the_codes_sponsored_calls_pass_through() -> Result<(), serde_json::Error> {
        use settled_contracts::rpc_codes as erc7769;
        let doc: serde_json::Value = serde_json::from_str(include_str!("../openrpc/stream.json"))?;
        for method in ["stream_open", "stream_topUp"] {
            let declared = declared_codes(&doc, method);
            for code in [
                erc7769::INVALID_PARAMS,
                erc7769::REJECTED_BY_ENTRY_POINT,
                erc7769::REJECTED_BY_PAYMASTER,
                erc7769::BANNED_OPCODE_OR_STORAGE,
                erc7769::OUT_OF_TIME_RANGE,
                erc7769::THROTTLED_OR_BANNED,
                erc7769::STAKE_TOO_LOW,
                erc7769::INVALID_SIGNATURE,
                erc7769::PAYMASTER_DEPOSIT_TOO_LOW,
                erc7769::EXECUTION_REVERTED,
                erc7769::INTERNAL,
                codes::UNAUTHORIZED,
                codes::FORBIDDEN,
            ] {
                assert!(declared.contains(&i64::from(code)), "{method} does not declare {code}");
            }
        }
        for method in doc["methods"].as_array().into_iter().flatten() {
            let name = method["name"].as_str().unwrap_or_default();
            assert!(declared_codes(&doc, name).contains(&i64::from(codes::INTERNAL)), "{name}");
        }
        Ok(())
    }
}
