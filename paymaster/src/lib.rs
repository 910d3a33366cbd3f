//! The gas-sponsoring paymaster: policy, signer, accounting and ERC-7677 RPC.
//!
//! Not built yet: issue #5. The crate exists now so the workspace has its final shape.
