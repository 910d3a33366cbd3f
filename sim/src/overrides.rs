//! What a caller changes in the simulated state: ERC-7769 state overrides (the third parameter of
//! `eth_estimateUserOperationGas`) and a v0.8 op's EIP-7702 authorization, whose delegation the
//! bundle transaction would install before the EntryPoint runs.

use alloy::{
    eips::eip7702::SignedAuthorization,
    primitives::{Address, U256},
    rpc::types::state::StateOverride,
};
use revm::state::Bytecode;

use crate::{error::SimError, evm::Overlay};

/// Changes to the forked state for one simulation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimOverrides {
    /// Per-account overrides (balance, nonce, code, full or partial storage).
    pub state: StateOverride,
    /// The op's `eip7702Auth`: the sender's code becomes a delegation to its address.
    pub eip7702_auth: Option<SignedAuthorization>,
    /// Estimation evaluates the authorization as if the sender signed it (ERC-7769): no
    /// signature or nonce check.
    pub(crate) trust_authorization: bool,
}

impl SimOverrides {
    /// No overrides.
    pub fn none() -> &'static Self {
        static NONE: std::sync::OnceLock<SimOverrides> = std::sync::OnceLock::new();
        NONE.get_or_init(Self::default)
    }

    /// Overrides with `state` only.
    pub fn with_state(state: StateOverride) -> Self {
        Self { state, ..Self::default() }
    }

    /// Overrides with the op's EIP-7702 authorization only.
    pub fn with_authorization(authorization: SignedAuthorization) -> Self {
        Self { eip7702_auth: Some(authorization), ..Self::default() }
    }

    /// The op's EIP-7702 authorization as its sender will sign it: a paymaster sees the op before
    /// the wallet signs (viem signs the authorization last), so its signature and nonce are not
    /// checked; the bundler checks them when the op is sent.
    pub fn with_authorization_to_be_signed(authorization: SignedAuthorization) -> Self {
        Self { eip7702_auth: Some(authorization), trust_authorization: true, ..Self::default() }
    }

    /// Writes the overrides into `db`: the authorization first (as the bundle transaction applies
    /// it before executing), then the caller's state, which may override the result.
    pub(crate) fn apply(
        &self,
        db: &mut Overlay<'_>,
        chain_id: u64,
        entry_point: Address,
        sender: Address,
    ) -> Result<(), SimError> {
        if let Some(authorization) = &self.eip7702_auth {
            apply_authorization(db, chain_id, sender, authorization, self.trust_authorization)?;
        }
        for (&address, account) in &self.state {
            let invalid = |what: &str| SimError::InvalidOverride(format!("{address}: {what}"));
            if account.move_precompile_to.is_some() {
                return Err(invalid("movePrecompileToAddress is not supported"));
            }
            if account.state.is_some() && account.state_diff.is_some() {
                return Err(invalid("both state and stateDiff given"));
            }
            if address == entry_point
                && (account.code.is_some()
                    || account.state.is_some()
                    || account.state_diff.is_some())
            {
                // The simulation is only meaningful against the real EntryPoint.
                return Err(invalid("the EntryPoint's code and storage cannot be overridden"));
            }
            let loaded = db.load_account(address)?;
            if let Some(balance) = account.balance {
                loaded.info.balance = balance;
            }
            if let Some(nonce) = account.nonce {
                loaded.info.nonce = nonce;
            }
            if let Some(code) = &account.code {
                let code = Bytecode::new_raw_checked(code.clone())
                    .map_err(|e| invalid(&format!("bad code: {e}")))?;
                loaded.info.code_hash = code.hash_slow();
                loaded.info.code = Some(code);
            }
            if let Some(storage) = &account.state {
                let slots = storage.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
                db.replace_account_storage(address, slots)?;
            }
            if let Some(diff) = &account.state_diff {
                for (slot, value) in diff {
                    db.insert_account_storage(address, (*slot).into(), (*value).into())?;
                }
            }
        }
        Ok(())
    }
}

/// Installs `authorization`'s delegation on `sender` as EIP-7702 would, after the checks a block
/// builder makes: signed by the sender, for this chain (or any), at the sender's current nonce,
/// and the sender has no code other than a delegation. `trusted` skips the signature and nonce.
fn apply_authorization(
    db: &mut Overlay<'_>,
    chain_id: u64,
    sender: Address,
    authorization: &SignedAuthorization,
    trusted: bool,
) -> Result<(), SimError> {
    let invalid = |what: String| SimError::InvalidAuthorization(what);
    if !trusted {
        let authority = authorization
            .recover_authority()
            .map_err(|e| invalid(format!("signature does not recover: {e}")))?;
        if authority != sender {
            return Err(invalid(format!("signed by {authority}, not by the sender {sender}")));
        }
    }
    if authorization.chain_id != U256::ZERO && authorization.chain_id != U256::from(chain_id) {
        return Err(invalid(format!(
            "Invalid chainId {} in eip7702Auth: this chain is {chain_id}",
            authorization.chain_id
        )));
    }
    let account = db.load_account(sender)?;
    if !trusted && authorization.nonce != account.info.nonce {
        // The chain skips such an authorization, so the EntryPoint would find no account.
        return Err(SimError::Rejected {
            reason: format!(
                "AA20 account not deployed: eip7702Auth nonce {} is not the sender's nonce {}",
                authorization.nonce, account.info.nonce
            ),
            inner: None,
        });
    }
    let delegated_or_empty = match &account.info.code {
        Some(code) => code.is_empty() || code.is_eip7702(),
        None => account.info.is_empty_code_hash(),
    };
    if !delegated_or_empty {
        return Err(invalid(format!("the sender {sender} is a contract")));
    }
    // Delegating to the zero address clears the delegation (EIP-7702).
    let code = if authorization.address == Address::ZERO {
        Bytecode::new()
    } else {
        Bytecode::new_eip7702(authorization.address)
    };
    account.info.code_hash = code.hash_slow();
    account.info.code = Some(code);
    account.info.nonce = account.info.nonce.saturating_add(1);
    Ok(())
}
