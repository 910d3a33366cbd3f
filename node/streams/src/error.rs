//! Why a billing call failed. Domain code says what went wrong; the billing RPC edge
//! (`rpc.rs`, one table) says which JSON-RPC code that is.

use jsonrpsee::types::ErrorObjectOwned;

/// A billing call's failure.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// Malformed parameters, an unknown stream, a call the stream's state does not allow, a
    /// reused idempotency key with other parameters.
    #[error("{0}")]
    InvalidParams(String),
    /// No API key, or one the node does not know.
    #[error("{0}")]
    Unauthorized(String),
    /// The key may not act on this stream.
    #[error("{0}")]
    Forbidden(String),
    /// The same idempotency key is in progress, or its transaction is not mined yet: retry.
    #[error("{0}")]
    Busy(String),
    /// The node (its chain or its database) failed.
    #[error("{0}")]
    Internal(String),
    /// The bundler refused the op prepared for a sponsored open (its own ERC-7769 code).
    #[error(transparent)]
    Bundler(#[from] settled_bundler::BundlerError),
    /// The paymaster refused to sponsor it (its own code).
    #[error(transparent)]
    Paymaster(#[from] settled_paymaster::PaymasterError),
}

/// Parameters jsonrpsee could not parse: invalid params.
impl From<ErrorObjectOwned> for BillingError {
    fn from(error: ErrorObjectOwned) -> Self {
        Self::InvalidParams(error.message().to_owned())
    }
}
