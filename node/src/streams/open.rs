//! `stream_open`: the billing backend asks the node to prepare the customer's UserOperation —
//! `approve(vault, deposit)` and `vault.open(...)` in one `executeBatch` of the customer's
//! SimpleAccount — with gas estimated by settled's bundler and paid by settled's paymaster, for
//! the wallet to sign and send. The customer's account never needs ETH.
//!
//! The idempotency key binds the prepared op: a retry returns the same op (same nonce), so at
//! most one stream results however often the backend retries.

use std::sync::Arc;

use alloy::{
    primitives::{Address, B256, Bytes, U256, aliases::U96, keccak256},
    providers::DynProvider,
    sol_types::SolCall,
};
use jsonrpsee::{
    Extensions, RpcModule,
    types::{ErrorObjectOwned, Params},
};
use serde::{Deserialize, Serialize};
use settled_bundler::Bundler;
use settled_contracts::{EntryPointVersion, MockUSDC, StreamVault, UserOperation, v07};
use settled_paymaster::Paymaster;

use super::rpc::{Billing, codes, decimal, error};

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

/// `stream_open`'s parameters.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OpenRequest {
    /// The customer's SimpleAccount (the stream's payer).
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
    /// EntryPoint v0.7 or v0.8 (the account's).
    entry_point: Address,
    /// For an account not yet deployed: its factory and factory data.
    #[serde(default)]
    factory: Option<Bytes>,
    #[serde(default)]
    factory_data: Option<Bytes>,
    /// The paymaster policy that sponsors the op.
    sponsorship_policy: String,
    idempotency_key: String,
}

pub(crate) struct Opener {
    pub(crate) provider: DynProvider,
    pub(crate) bundler: Bundler,
    pub(crate) paymaster: Paymaster,
    pub(crate) paymasters: Vec<(EntryPointVersion, Address)>,
    pub(crate) vault: Address,
    pub(crate) operator: Address,
    pub(crate) chain_id: u64,
    pub(crate) records: sled::Tree,
}

fn invalid(message: impl Into<String>) -> ErrorObjectOwned {
    error(codes::INVALID_PARAMS, message)
}

fn fits<const BITS: usize, const LIMBS: usize>(
    name: &str,
    value: U256,
) -> Result<alloy::primitives::Uint<BITS, LIMBS>, ErrorObjectOwned> {
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

impl Opener {
    async fn prepare(
        &self,
        billing: &Billing,
        params: Params<'static>,
        extensions: &Extensions,
    ) -> Result<PreparedOpen, ErrorObjectOwned> {
        let key = billing.key(extensions)?;
        let (request,): (OpenRequest,) = params.parse()?;
        if !key.may_see(request.payee) {
            return Err(error(
                codes::FORBIDDEN,
                format!("payee {} is outside this key's payees", request.payee),
            ));
        }
        if request.idempotency_key.is_empty() || request.idempotency_key.len() > 128 {
            return Err(invalid("idempotencyKey must be 1 to 128 characters"));
        }
        let rate: U96 = fits("ratePerSecond", decimal("ratePerSecond", &request.rate_per_second)?)?;
        let deposit: u128 = fits::<128, 2>("deposit", decimal("deposit", &request.deposit)?)?.to();
        let max_rate: U96 = match &request.max_rate {
            Some(text) => fits("maxRate", decimal("maxRate", text)?)?,
            None => U96::ZERO,
        };
        let max_total: U96 = match &request.max_total {
            Some(text) => fits("maxTotal", decimal("maxTotal", text)?)?,
            None => U96::ZERO,
        };
        if rate.is_zero() {
            return Err(invalid("ratePerSecond must be positive"));
        }
        if !max_rate.is_zero() && rate > max_rate {
            return Err(invalid("ratePerSecond is above maxRate"));
        }
        if request.payee.is_zero() || request.token.is_zero() {
            return Err(invalid("payee and token must be addresses"));
        }
        let version = EntryPointVersion::from_address(request.entry_point)
            .ok_or_else(|| invalid(format!("unsupported EntryPoint {}", request.entry_point)))?;
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
                request.entry_point,
                &request.factory,
                &request.factory_data,
                &request.sponsorship_policy,
            ))
            .map_err(|e| error(codes::INTERNAL, e.to_string()))?,
        );
        let record_id = record_id(&key.name, "open", &request.idempotency_key);
        if let Some(prepared) = self.replay(record_id, params_hash)? {
            return Ok(prepared);
        }

        let decimals = MockUSDC::new(request.token, &self.provider)
            .decimals()
            .call()
            .await
            .map_err(|e| invalid(format!("token {} has no decimals(): {e}", request.token)))?;
        if decimals > 18 {
            return Err(invalid(format!(
                "tokens with {decimals} decimals (above 18) are not supported"
            )));
        }
        let approve =
            MockUSDC::approveCall { spender: self.vault, value: U256::from(deposit) }.abi_encode();
        let open = StreamVault::openCall {
            payee: request.payee,
            token: request.token,
            ratePerSecond: rate,
            operator: self.operator,
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
            entry_point: request.entry_point,
            paymaster,
            sender: request.payer,
            factory: request.factory,
            factory_data: request.factory_data,
        };
        let prepared =
            self.sponsored(target, call_data, &request.sponsorship_policy, &key.name).await?;
        self.store(record_id, params_hash, &prepared)?;
        Ok(prepared)
    }

    /// `stream_topUp`: the payer's op that approves and deposits `amount` into its stream.
    async fn prepare_top_up(
        &self,
        billing: &Billing,
        params: Params<'static>,
        extensions: &Extensions,
    ) -> Result<PreparedOpen, ErrorObjectOwned> {
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
        let state = billing.visible(key, id)?;
        if state.closed {
            return Err(invalid(format!("stream {id} is closed")));
        }
        let amount: u128 = fits::<128, 2>("amount", decimal("amount", &request.amount)?)?.to();
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
                .map_err(|e| error(codes::INTERNAL, e.to_string()))?,
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

    fn paymaster_for(&self, version: EntryPointVersion) -> Result<Address, ErrorObjectOwned> {
        self.paymasters
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, p)| *p)
            .ok_or_else(|| invalid("no paymaster for this EntryPoint"))
    }

    /// The op prepared earlier under this record, if any (other parameters: refused).
    fn replay(&self, record: B256, params: B256) -> Result<Option<PreparedOpen>, ErrorObjectOwned> {
        let Some(stored) =
            self.records.get(record).map_err(|e| error(codes::INTERNAL, e.to_string()))?
        else {
            return Ok(None);
        };
        let (hash, prepared): (B256, PreparedOpen) =
            serde_json::from_slice(&stored).map_err(|e| error(codes::INTERNAL, e.to_string()))?;
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
    ) -> Result<(), ErrorObjectOwned> {
        let value = serde_json::to_vec(&(params, prepared))
            .map_err(|e| error(codes::INTERNAL, e.to_string()))?;
        self.records.insert(record, value).map_err(|e| error(codes::INTERNAL, e.to_string()))?;
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
    ) -> Result<PreparedOpen, ErrorObjectOwned> {
        let nonce = v07::IEntryPoint::new(target.entry_point, &self.provider)
            .getNonce(target.sender, alloy::primitives::aliases::U192::ZERO)
            .call()
            .await
            .map_err(|e| error(codes::INTERNAL, e.to_string()))?;
        let fees =
            self.bundler.gas_prices().await.map_err(|e| error(codes::INTERNAL, e.to_string()))?;
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
        let refuse = |e: settled_paymaster::PaymasterError| ErrorObjectOwned::from(e);
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
            .map_err(ErrorObjectOwned::from)?;
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

/// Adds `stream_open` and `stream_topUp` to `module`.
pub(crate) fn register_open(
    module: &mut RpcModule<()>,
    billing: Arc<Billing>,
    opener: Arc<Opener>,
) {
    let (top_up_billing, top_up_opener) = (billing.clone(), opener.clone());
    // The names are distinct constants: registration cannot collide.
    let _ = module.register_async_method("stream_open", move |params, _, extensions| {
        let (billing, opener) = (billing.clone(), opener.clone());
        async move { opener.prepare(&billing, params, &extensions).await }
    });
    let _ = module.register_async_method("stream_topUp", move |params, _, extensions| {
        let (billing, opener) = (top_up_billing.clone(), top_up_opener.clone());
        async move { opener.prepare_top_up(&billing, params, &extensions).await }
    });
}
