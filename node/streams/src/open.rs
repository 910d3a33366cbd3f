//! `stream_open`: the billing backend asks the node to prepare the customer's UserOperation —
//! `approve(vault, deposit)` and `vault.open(...)` in one `executeBatch` of the customer's
//! SimpleAccount — with gas estimated by settled's bundler and paid by settled's paymaster, for
//! the wallet to sign and send. The customer's account never needs ETH.
//!
//! The idempotency key binds the prepared op: a retry returns the same op (same nonce), so at
//! most one stream results however often the backend retries.
//!
//! With `signedTerms` (see [`super::permit`]) the payer is any address holding the token: the
//! node sends `openFor` itself, once per idempotency key, and answers with the stream.

use std::sync::Arc;

use alloy::{
    primitives::{Address, B256, Bytes, U256, aliases::U96, keccak256},
    providers::DynProvider,
    sol_types::SolCall,
};
use jsonrpsee::{Extensions, RpcModule, types::Params};
use serde::{Deserialize, Serialize};
use settled_bundler::Bundler;
use settled_contracts::{EntryPointVersion, MockUSDC, StreamVault, UserOperation, v07};
use settled_paymaster::Paymaster;

use super::rpc::{Billing, decimal};
use crate::BillingError;

/// A prepared, sponsored UserOperation: sign `userOpHash` with the account's key, put the
/// signature in `userOperation.signature`, send it with `eth_sendUserOperation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedOpen {
    /// The op (ERC-7769 JSON), signature empty.
    pub user_operation: UserOperation,
    /// Its EntryPoint.
    pub entry_point: Address,
    /// What the account signs (the EntryPoint's op hash).
    pub user_op_hash: B256,
}

/// `stream_open`'s answer: the prepared op, or with `signedTerms` the opened stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OpenOutcome {
    /// For the wallet to sign and send.
    Prepared(Box<PreparedOpen>),
    /// Opened by the node.
    Opened(super::permit::OpenedStream),
}

/// `stream_open`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OpenRequest {
    /// The customer's SimpleAccount (the stream's payer), or with `signed_terms` any signer.
    payer: Address,
    payee: Address,
    token: Address,
    /// Decimal, scaled to 18 decimals.
    rate_per_second: String,
    /// Decimal base units.
    deposit: String,
    #[serde(default)]
    max_rate: Option<String>,
    #[serde(default)]
    max_total: Option<String>,
    /// EntryPoint v0.7 or v0.8 (the account's); not with `signed_terms`.
    #[serde(default)]
    entry_point: Option<Address>,
    /// For an account not yet deployed: its factory and factory data.
    #[serde(default)]
    factory: Option<Bytes>,
    #[serde(default)]
    factory_data: Option<Bytes>,
    /// The paymaster policy that sponsors the op; not with `signed_terms`.
    #[serde(default)]
    sponsorship_policy: Option<String>,
    /// The payer's signatures: the node opens the stream itself.
    #[serde(default)]
    signed_terms: Option<super::permit::SignedTerms>,
    idempotency_key: String,
}

/// `stream_openTerms`'s parameters: the terms of `stream_open`, and a deadline.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TermsRequest {
    payer: Address,
    payee: Address,
    token: Address,
    rate_per_second: String,
    deposit: String,
    #[serde(default)]
    max_rate: Option<String>,
    #[serde(default)]
    max_total: Option<String>,
    deadline: u64,
}

/// Opens streams for billing backends: a sponsored UserOperation for a smart-account payer
/// (`stream_open`, `stream_topUp`), or the payer's signed terms relayed by the operator.
pub struct Opener {
    /// The chain.
    pub provider: DynProvider,
    /// Estimates the ops and takes them in.
    pub bundler: Bundler,
    /// Sponsors them.
    pub paymaster: Paymaster,
    /// Our paymaster contract per EntryPoint version.
    pub paymasters: Vec<(EntryPointVersion, Address)>,
    /// The `StreamVault`.
    pub vault: Address,
    /// Relays signed terms (`openFor`).
    pub operator: Arc<super::operator::Operator>,
    /// The chain's id (op hashes, typed data).
    pub chain_id: u64,
    /// Prepared opens by idempotency key.
    pub records: sled::Tree,
}

fn invalid(message: impl Into<String>) -> BillingError {
    BillingError::InvalidParams(message.into())
}

fn fits<const BITS: usize, const LIMBS: usize>(
    name: &str,
    value: U256,
) -> Result<alloy::primitives::Uint<BITS, LIMBS>, BillingError> {
    alloy::primitives::Uint::<BITS, LIMBS>::checked_from_limbs_slice(value.as_limbs())
        .ok_or_else(|| invalid(format!("{name} {value} does not fit {BITS} bits")))
}

/// v0.8 SimpleAccount's `executeBatch(Call[])` (the binding names its struct after the ABI's
/// internal type, which `sol!` does not expose by path).
mod v08_batch {
    alloy::sol! {
        struct Call { address target; uint256 value; bytes data; }
        function executeBatch(Call[] calls);
    }
}

/// The account's `executeBatch` of `calls` for `version`'s SimpleAccount.
fn execute_batch(version: EntryPointVersion, calls: Vec<(Address, Bytes)>) -> Bytes {
    match version {
        EntryPointVersion::V07 => {
            let (dest, func): (Vec<Address>, Vec<Bytes>) = calls.into_iter().unzip();
            v07::SimpleAccount::executeBatchCall { dest, value: vec![], func }.abi_encode()
        }
        EntryPointVersion::V08 => v08_batch::executeBatchCall {
            calls: calls
                .into_iter()
                .map(|(target, data)| v08_batch::Call { target, value: U256::ZERO, data })
                .collect(),
        }
        .abi_encode(),
    }
    .into()
}

/// The [`TermsText`] of a request with the terms' fields (`stream_open`, `stream_openTerms`).
macro_rules! terms_text {
    ($request:expr) => {
        TermsText {
            payer: $request.payer,
            payee: $request.payee,
            token: $request.token,
            rate_per_second: &$request.rate_per_second,
            deposit: &$request.deposit,
            max_rate: $request.max_rate.as_deref(),
            max_total: $request.max_total.as_deref(),
        }
    };
}

/// A new stream's terms as a request gives them.
struct TermsText<'a> {
    payer: Address,
    payee: Address,
    token: Address,
    rate_per_second: &'a str,
    deposit: &'a str,
    max_rate: Option<&'a str>,
    max_total: Option<&'a str>,
}

/// Checked terms of a new stream (shared by every way of opening one), operated by `operator`.
fn checked_terms(
    text: TermsText<'_>,
    operator: Address,
) -> Result<super::permit::Terms, BillingError> {
    let TermsText { payer, payee, token, rate_per_second, deposit, max_rate, max_total } = text;
    let rate: U96 = fits("ratePerSecond", decimal("ratePerSecond", rate_per_second)?)?;
    if rate > U96::from(super::accrual::MAX_RATE_PER_SECOND) {
        return Err(invalid(format!(
            "ratePerSecond {rate} is above the vault's limit {}",
            super::accrual::MAX_RATE_PER_SECOND
        )));
    }
    // The vault keeps balances in 96 bits.
    let amount: u128 = fits::<96, 2>("deposit", decimal("deposit", deposit)?)?.to();
    let max_rate: U96 = match max_rate {
        Some(text) => fits("maxRate", decimal("maxRate", text)?)?,
        None => U96::ZERO,
    };
    let max_total: U96 = match max_total {
        Some(text) => fits("maxTotal", decimal("maxTotal", text)?)?,
        None => U96::ZERO,
    };
    if rate.is_zero() {
        return Err(invalid("ratePerSecond must be positive"));
    }
    if !max_rate.is_zero() && rate > max_rate {
        return Err(invalid("ratePerSecond is above maxRate"));
    }
    if payee.is_zero() || token.is_zero() || payer.is_zero() {
        return Err(invalid("payer, payee and token must be addresses"));
    }
    Ok(super::permit::Terms { payer, payee, token, rate, operator, max_rate, max_total, amount })
}

impl Opener {
    async fn prepare(
        &self,
        billing: &Billing,
        params: Params<'static>,
        extensions: &Extensions,
    ) -> Result<OpenOutcome, BillingError> {
        let key = billing.key(extensions)?;
        let (request,): (OpenRequest,) = params.parse()?;
        if request.idempotency_key.is_empty() || request.idempotency_key.len() > 128 {
            return Err(invalid("idempotencyKey must be 1 to 128 characters"));
        }
        let terms = self.checked(key, terms_text!(request)).await?;
        if let Some(signed) = &request.signed_terms {
            if request.entry_point.is_some()
                || request.sponsorship_policy.is_some()
                || request.factory.is_some()
            {
                return Err(invalid(
                    "signedTerms opens the stream directly: entryPoint, sponsorshipPolicy and factory do not apply",
                ));
            }
            return self
                .open_signed(billing, &key.name, &request.idempotency_key, terms, signed)
                .await
                .map(OpenOutcome::Opened);
        }
        self.prepare_sponsored(&key.name, &request, terms).await.map(OpenOutcome::Prepared)
    }

    /// `stream_open` for a smart-account payer: its op approving the deposit and opening the
    /// stream, sponsored under `sponsorshipPolicy` (the same op again for a retry).
    async fn prepare_sponsored(
        &self,
        key_name: &str,
        request: &OpenRequest,
        terms: super::permit::Terms,
    ) -> Result<Box<PreparedOpen>, BillingError> {
        let (Some(entry_point), Some(policy)) =
            (request.entry_point, request.sponsorship_policy.as_deref())
        else {
            return Err(invalid(
                "entryPoint and sponsorshipPolicy are required (or signedTerms, to open directly)",
            ));
        };
        let (rate, deposit, max_rate, max_total) =
            (terms.rate, terms.amount, terms.max_rate, terms.max_total);
        let version = EntryPointVersion::from_address(entry_point)
            .ok_or_else(|| invalid(format!("unsupported EntryPoint {entry_point}")))?;
        let paymaster = self.paymaster_for(version)?;

        // The record binds everything the op is built from.
        let params_hash = keccak256(
            serde_json::to_vec(&(
                request.payer,
                request.payee,
                request.token,
                rate,
                deposit,
                max_rate,
                max_total,
                entry_point,
                &request.factory,
                &request.factory_data,
                policy,
            ))
            .map_err(|e| BillingError::Internal(e.to_string()))?,
        );
        let record_id = record_id(key_name, "open", &request.idempotency_key);
        if let Some(prepared) = self.replay(record_id, params_hash)? {
            return Ok(Box::new(prepared));
        }
        let approve =
            MockUSDC::approveCall { spender: self.vault, value: U256::from(deposit) }.abi_encode();
        let open = StreamVault::openCall {
            payee: request.payee,
            token: request.token,
            ratePerSecond: rate,
            operator: self.operator.address,
            maxRate: max_rate,
            maxTotal: max_total,
            amount: deposit,
        }
        .abi_encode();
        let call_data = execute_batch(
            version,
            vec![(request.token, approve.into()), (self.vault, open.into())],
        );
        let target = Target {
            version,
            entry_point,
            paymaster,
            sender: request.payer,
            factory: request.factory.clone(),
            factory_data: request.factory_data.clone(),
        };
        let prepared = self.sponsored(target, call_data, policy, key_name).await?;
        self.store(record_id, params_hash, &prepared)?;
        Ok(Box::new(prepared))
    }

    /// `text` checked: the payee in the key's scope, the numbers in the vault's ranges, the
    /// token's decimals; operated by this node.
    async fn checked(
        &self,
        key: &super::ApiKey,
        text: TermsText<'_>,
    ) -> Result<super::permit::Terms, BillingError> {
        if !key.may_see(text.payee) {
            return Err(BillingError::Forbidden(format!(
                "payee {} is outside this key's payees",
                text.payee
            )));
        }
        let token = text.token;
        let terms = checked_terms(text, self.operator.address)?;
        self.check_token(token).await?;
        Ok(terms)
    }

    /// The token must answer `decimals()` with at most 18.
    async fn check_token(&self, token: Address) -> Result<(), BillingError> {
        let decimals = MockUSDC::new(token, &self.provider)
            .decimals()
            .call()
            .await
            .map_err(|e| invalid(format!("token {token} has no decimals(): {e}")))?;
        if decimals > 18 {
            return Err(invalid(format!(
                "tokens with {decimals} decimals (above 18) are not supported"
            )));
        }
        Ok(())
    }

    /// `stream_open` with `signedTerms`: the node sends `openFor` (once per idempotency key) and
    /// answers with the stream once its block is indexed.
    async fn open_signed(
        &self,
        billing: &Billing,
        key_name: &str,
        idempotency_key: &str,
        terms: super::permit::Terms,
        signed: &super::permit::SignedTerms,
    ) -> Result<super::permit::OpenedStream, BillingError> {
        let nonce = decimal("signedTerms.nonce", &signed.nonce)?;
        let permit = super::permit::permit_argument(signed.permit_signature.as_ref())?;
        let call = StreamVault::openForCall {
            payer: terms.payer,
            terms: terms.open_terms(nonce, signed.deadline),
            signature: signed.signature.clone(),
            permit,
        };
        // The record binds the exact call.
        let params_hash = keccak256(call.abi_encode());
        let record = record_id(key_name, "openFor", idempotency_key);
        let receipt = match self.operator.replay(record, params_hash).await? {
            Some(receipt) => receipt,
            None => {
                let tx = alloy::rpc::types::TransactionRequest::default()
                    .to(self.vault)
                    .input(Bytes::from(call.abi_encode()).into());
                self.operator.send_once(record, params_hash, tx).await?
            }
        };
        use alloy::providers::Provider as _;
        let mined = self
            .operator
            .sender
            .provider()
            .get_transaction_receipt(receipt.transaction_hash)
            .await
            .map_err(|e| BillingError::Internal(e.to_string()))?
            .ok_or_else(|| BillingError::Busy("the opening transaction is not mined yet".into()))?;
        let stream_id = super::permit::opened_stream(&mined)
            .ok_or_else(|| BillingError::Internal("openFor emitted no StreamOpened".into()))?;
        billing.wait_for_block(receipt.block_number).await;
        Ok(super::permit::OpenedStream {
            stream_id: stream_id.to_string(),
            transaction_hash: receipt.transaction_hash,
            block_number: receipt.block_number,
        })
    }

    /// `stream_openTerms`: what the payer signs for `stream_open` with `signedTerms`.
    async fn terms(
        &self,
        billing: &Billing,
        params: Params<'static>,
        extensions: &Extensions,
    ) -> Result<serde_json::Value, BillingError> {
        let key = billing.key(extensions)?;
        let (request,): (TermsRequest,) = params.parse()?;
        let terms = self.checked(key, terms_text!(request)).await?;
        super::permit::describe(&self.provider, self.chain_id, self.vault, terms, request.deadline)
            .await
    }

    /// `stream_topUp`: the payer's op that approves and deposits `amount` into its stream.
    async fn prepare_top_up(
        &self,
        billing: &Billing,
        params: Params<'static>,
        extensions: &Extensions,
    ) -> Result<PreparedOpen, BillingError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct TopUpRequest {
            stream_id: String,
            amount: String,
            entry_point: Address,
            sponsorship_policy: String,
            idempotency_key: String,
        }
        let key = billing.key(extensions)?;
        let (request,): (TopUpRequest,) = params.parse()?;
        let id: super::StreamId = request.stream_id.parse().map_err(|_| {
            invalid(format!("stream id {:?} is not a decimal integer", request.stream_id))
        })?;
        let state = billing.visible(key, id).await?;
        if state.closed {
            return Err(invalid(format!("stream {id} is closed")));
        }
        let amount: u128 = fits::<96, 2>("amount", decimal("amount", &request.amount)?)?.to();
        if amount == 0 {
            return Err(invalid("amount must be positive"));
        }
        if request.idempotency_key.is_empty() || request.idempotency_key.len() > 128 {
            return Err(invalid("idempotencyKey must be 1 to 128 characters"));
        }
        let version = EntryPointVersion::from_address(request.entry_point)
            .ok_or_else(|| invalid(format!("unsupported EntryPoint {}", request.entry_point)))?;
        let paymaster = self.paymaster_for(version)?;
        let params_hash = keccak256(
            serde_json::to_vec(&(id, amount, request.entry_point, &request.sponsorship_policy))
                .map_err(|e| BillingError::Internal(e.to_string()))?,
        );
        let record_id = record_id(&key.name, "topUp", &request.idempotency_key);
        if let Some(prepared) = self.replay(record_id, params_hash)? {
            return Ok(prepared);
        }
        let approve =
            MockUSDC::approveCall { spender: self.vault, value: U256::from(amount) }.abi_encode();
        let deposit = StreamVault::depositCall { streamId: U256::from(id), amount }.abi_encode();
        let call_data = execute_batch(
            version,
            vec![(state.token, approve.into()), (self.vault, deposit.into())],
        );
        let target = Target {
            version,
            entry_point: request.entry_point,
            paymaster,
            sender: state.payer,
            factory: None,
            factory_data: None,
        };
        let prepared =
            self.sponsored(target, call_data, &request.sponsorship_policy, &key.name).await?;
        self.store(record_id, params_hash, &prepared)?;
        Ok(prepared)
    }

    fn paymaster_for(&self, version: EntryPointVersion) -> Result<Address, BillingError> {
        self.paymasters
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, p)| *p)
            .ok_or_else(|| invalid("no paymaster for this EntryPoint"))
    }

    /// The op prepared earlier under this record, if any (other parameters: refused).
    fn replay(&self, record: B256, params: B256) -> Result<Option<PreparedOpen>, BillingError> {
        let Some(stored) =
            self.records.get(record).map_err(|e| BillingError::Internal(e.to_string()))?
        else {
            return Ok(None);
        };
        let (hash, prepared): (B256, PreparedOpen) =
            serde_json::from_slice(&stored).map_err(|e| BillingError::Internal(e.to_string()))?;
        if hash != params {
            return Err(invalid("idempotencyKey was already used with different parameters"));
        }
        Ok(Some(prepared))
    }

    fn store(
        &self,
        record: B256,
        params: B256,
        prepared: &PreparedOpen,
    ) -> Result<(), BillingError> {
        let value = serde_json::to_vec(&(params, prepared))
            .map_err(|e| BillingError::Internal(e.to_string()))?;
        self.records.insert(record, value).map_err(|e| BillingError::Internal(e.to_string()))?;
        Ok(())
    }

    /// `call_data` from `target.sender` as a sponsored op: nonce, fees from the bundler, the
    /// paymaster's stub, the bundler's estimate, the paymaster's signature.
    async fn sponsored(
        &self,
        target: Target,
        call_data: Bytes,
        policy: &str,
        customer: &str,
    ) -> Result<PreparedOpen, BillingError> {
        let nonce = v07::IEntryPoint::new(target.entry_point, &self.provider)
            .getNonce(target.sender, alloy::primitives::aliases::U192::ZERO)
            .call()
            .await
            .map_err(|e| BillingError::Internal(e.to_string()))?;
        let fees =
            self.bundler.gas_prices().await.map_err(|e| BillingError::Internal(e.to_string()))?;
        let context = serde_json::json!({ "policyId": policy, "customer": customer });
        let mut op = UserOperation {
            sender: target.sender,
            nonce,
            factory: target.factory,
            factory_data: target.factory_data,
            call_data,
            call_gas_limit: U256::ZERO,
            verification_gas_limit: U256::ZERO,
            pre_verification_gas: U256::ZERO,
            max_fee_per_gas: fees.standard.max_fee_per_gas,
            max_priority_fee_per_gas: fees.standard.max_priority_fee_per_gas,
            paymaster: Some(target.paymaster),
            paymaster_verification_gas_limit: None,
            paymaster_post_op_gas_limit: None,
            paymaster_data: None,
            signature: settled_contracts::stub_account_signature(),
            eip7702_auth: None,
        };
        let refuse = |e: settled_paymaster::PaymasterError| BillingError::from(e);
        let stub = self
            .paymaster
            .stub_data(op.clone(), target.entry_point, self.chain_id, Some(context.clone()))
            .await
            .map_err(refuse)?;
        op.paymaster_verification_gas_limit = Some(stub.paymaster_verification_gas_limit);
        op.paymaster_post_op_gas_limit = Some(stub.paymaster_post_op_gas_limit);
        op.paymaster_data = Some(stub.paymaster_data);
        let estimate = self
            .bundler
            .estimate(op.clone(), target.entry_point, None)
            .await
            .map_err(BillingError::from)?;
        let packed = op.pack().map_err(|e| invalid(e.to_string()))?;
        op = UserOperation {
            signature: op.signature.clone(),
            ..UserOperation::unpack(&estimate.apply(&packed), None)
        };
        let signed = self
            .paymaster
            .paymaster_data(op.clone(), target.entry_point, self.chain_id, Some(context))
            .await
            .map_err(refuse)?;
        op.paymaster_data = Some(signed.paymaster_data);
        op.signature = Bytes::new();
        let user_op_hash = op.pack().map_err(|e| invalid(e.to_string()))?.hash(
            target.version,
            self.chain_id,
            None,
        );
        Ok(PreparedOpen { user_operation: op, entry_point: target.entry_point, user_op_hash })
    }
}

/// Who sends a prepared op, through which EntryPoint and paymaster.
struct Target {
    version: EntryPointVersion,
    entry_point: Address,
    paymaster: Address,
    sender: Address,
    factory: Option<Bytes>,
    factory_data: Option<Bytes>,
}

/// The idempotency record of `(API key, method, idempotency key)`.
fn record_id(key_name: &str, method: &str, idempotency_key: &str) -> B256 {
    keccak256(
        [key_name.as_bytes(), b"\0", method.as_bytes(), b"\0", idempotency_key.as_bytes()].concat(),
    )
}

/// Adds `stream_open`, `stream_openTerms` and `stream_topUp` to `module`.
pub(crate) fn register_open(
    module: &mut RpcModule<()>,
    billing: Arc<Billing>,
    opener: Arc<Opener>,
) {
    let (top_up_billing, top_up_opener) = (billing.clone(), opener.clone());
    let (terms_billing, terms_opener) = (billing.clone(), opener.clone());
    // The names are distinct constants: registration cannot collide.
    let _ = module.register_async_method("stream_open", move |params, _, extensions| {
        let (billing, opener) = (billing.clone(), opener.clone());
        async move { opener.prepare(&billing, params, &extensions).await }
    });
    let _ = module.register_async_method("stream_openTerms", move |params, _, extensions| {
        let (billing, opener) = (terms_billing.clone(), terms_opener.clone());
        async move { opener.terms(&billing, params, &extensions).await }
    });
    let _ = module.register_async_method("stream_topUp", move |params, _, extensions| {
        let (billing, opener) = (top_up_billing.clone(), top_up_opener.clone());
        async move { opener.prepare_top_up(&billing, params, &extensions).await }
    });
}
